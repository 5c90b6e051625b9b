//! A collection's lifecycle on Milvus: made with its schema and owner (or, made by someone else,
//! checked for both), its HNSW index built and loaded, described, dropped.

use std::collections::HashMap;
use std::time::Duration;

use milvus::v2::prelude::*;
use milvus::v2::{CollectionSchema, DataType, FieldSchema};

use super::{
    CollectionOwner, HASH_FIELD, ID_FIELD, IndexSpec, MAX_URI_LENGTH, MilvusStore, OWNER_PROPERTY, OWNER_UID_PROPERTY,
    Result, StoreError, URI_FIELD, VECTOR_FIELD,
};

impl MilvusStore {
    /// (indexed rows, total rows) of the vector index, as Milvus reports them.
    pub async fn index_progress(&self, collection: &str) -> Result<(i64, i64)> {
        Ok(self.vector_index(collection).await?.map(|i| (i.get_indexed_rows(), i.get_total_rows())).unwrap_or((0, 0)))
    }

    pub async fn has_collection(&self, collection: &str) -> Result<bool> {
        let op = "has_collection";
        let request = HasCollectionRequest::builder().collection_name(collection).build();
        let response = self.call(op, collection, request, |request| self.client.has_collection(request)).await?;
        Ok(response.exists())
    }

    /// Creates the collection and its index when missing, checks the dimension when present,
    /// and loads it. Safe to call on every start and every ingest. With an `owner`, a new
    /// collection records it, and an existing one must belong to it (or to nobody yet, and then
    /// is claimed) before anything touches it.
    pub async fn ensure_collection(
        &self,
        collection: &str,
        dimension: usize,
        index: &IndexSpec,
        owner: Option<&CollectionOwner>,
    ) -> Result<()> {
        let made_here = if self.has_collection(collection).await? {
            false
        } else if let Err(error) = self.create_collection(collection, dimension, owner).await {
            // Shards of one Job start together: another may be creating it at this moment, so
            // the failed create is only an error if the collection does not appear shortly.
            if !self.appears(collection).await? {
                return Err(error);
            }
            false
        } else {
            true
        };
        // One made by someone else (before, or at this moment) must be the owner's and of this
        // dimension; one made here has both by construction.
        if !made_here {
            let described = self.describe(collection).await?;
            if let Some(owner) = owner {
                self.claim(collection, &described, owner).await?;
            }
            check_dimension(collection, &described, dimension)?;
        }
        self.ensure_index(collection, index).await?;
        self.load(collection).await
    }

    /// The ImageCollection (`<namespace>/<name>`) recorded as the collection's owner; `None`
    /// when none is (made off-cluster, or before owners were recorded).
    pub async fn owner(&self, collection: &str) -> Result<Option<String>> {
        Ok(self.describe(collection).await?.get_properties().get(OWNER_PROPERTY).cloned())
    }

    /// Makes `collection` `owner`'s: refused when another object is recorded, recorded when
    /// nobody is (or the uid is another incarnation's).
    async fn claim(&self, collection: &str, described: &CollectionDesc, owner: &CollectionOwner) -> Result<()> {
        let properties = described.get_properties();
        match properties.get(OWNER_PROPERTY) {
            Some(recorded) if *recorded != owner.object => {
                return Err(StoreError::OwnedElsewhere { collection: collection.to_string(), owner: recorded.clone() });
            }
            Some(_) if owner.uid.is_none() || properties.get(OWNER_UID_PROPERTY) == owner.uid.as_ref() => {
                return Ok(());
            }
            _ => {}
        }
        let op = "alter collection properties";
        let request = AlterCollectionPropertiesRequest::builder()
            .collection_name(collection)
            .properties(owner.properties())
            .build();
        self.call(op, collection, request, |request| self.client.alter_collection_properties(request)).await?;
        tracing::info!(collection, owner = owner.object, "recorded the collection's owner");
        Ok(())
    }

    /// Whether `collection` exists within a few seconds (someone else is creating it).
    async fn appears(&self, collection: &str) -> Result<bool> {
        for _ in 0..25 {
            if self.has_collection(collection).await? {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(false)
    }

    async fn create_collection(
        &self,
        collection: &str,
        dimension: usize,
        owner: Option<&CollectionOwner>,
    ) -> Result<()> {
        let op = "create collection";
        let schema = CollectionSchema::new()
            .add_field(FieldSchema::new().name(ID_FIELD).data_type(DataType::Int64).primary_key(true).auto_id(false))
            .add_field(
                FieldSchema::new().name(VECTOR_FIELD).data_type(DataType::FloatVector).dimension(dimension as u32),
            )
            .add_field(FieldSchema::new().name(URI_FIELD).data_type(DataType::VarChar).max_length(MAX_URI_LENGTH))
            .add_field(FieldSchema::new().name(HASH_FIELD).data_type(DataType::VarChar).max_length(64));
        let request = CreateCollectionRequest::builder()
            .collection_name(collection)
            .description("imgsearch image embeddings")
            .properties(owner.map(CollectionOwner::properties).unwrap_or_default())
            .schema(schema)
            .consistency_level(ConsistencyLevel::Strong)
            .build();
        self.call(op, collection, request, |request| self.client.create_collection(request)).await?;
        tracing::info!(collection, dimension, "created Milvus collection");
        Ok(())
    }

    async fn describe(&self, collection: &str) -> Result<CollectionDesc> {
        let op = "describe collection";
        let request = DescribeCollectionRequest::builder().collection_name(collection).build();
        let response =
            self.call_existing(op, collection, request, |request| self.client.describe_collection(request)).await?;
        Ok(response.description().clone())
    }

    /// Milvus Lite does not report completion to a synchronous create_index through this SDK,
    /// so the build is started asynchronously and polled.
    async fn ensure_index(&self, collection: &str, index: &IndexSpec) -> Result<()> {
        if self.index_state(collection).await?.is_none() {
            let op = "create index";
            let params = IndexParam::new()
                .field_name(VECTOR_FIELD)
                .index_name(VECTOR_FIELD)
                .index_type(IndexType::Hnsw)
                .metric_type(MetricType::Cosine)
                .extra_params(HashMap::from([
                    ("M".to_string(), index.m.to_string()),
                    ("efConstruction".to_string(), index.ef_construction.to_string()),
                ]));
            let request =
                CreateIndexRequest::builder().collection_name(collection).index_param(params).sync(false).build();
            let answer =
                self.answer(op, collection, self.patience(), request, |request| self.client.create_index(request));
            if let Err(error) = answer.await? {
                // As with the collection: a concurrent shard may have just created it.
                if self.index_state(collection).await?.is_none() {
                    return Err(self.error(op, collection, error));
                }
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            match self.index_state(collection).await? {
                Some((IndexStateCode::Finished, _)) => return Ok(()),
                Some((IndexStateCode::Failed, reason)) => {
                    return Err(StoreError::IndexFailed { collection: collection.to_string(), reason });
                }
                _ if tokio::time::Instant::now() > deadline => {
                    return Err(StoreError::Timeout {
                        what: "the index build",
                        collection: collection.to_string(),
                        seconds: 120,
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// `None` when the vector field has no index yet.
    async fn index_state(&self, collection: &str) -> Result<Option<(IndexStateCode, String)>> {
        Ok(self.vector_index(collection).await?.map(|i| (i.get_state(), i.get_failure_reason().to_string())))
    }

    /// The vector field's index as Milvus describes it; `None` when there is none yet.
    async fn vector_index(&self, collection: &str) -> Result<Option<IndexDesc>> {
        let op = "describe index";
        let request = DescribeIndexRequest::builder().collection_name(collection).field_name(VECTOR_FIELD).build();
        match self
            .answer(op, collection, self.patience(), request, |request| self.client.describe_index(request))
            .await?
        {
            Ok(response) => Ok(response.indexes().iter().find(|i| i.get_field_name() == VECTOR_FIELD).cloned()),
            // Milvus answers "index not found" as an error status rather than an empty list.
            Err(e) if is_missing_index(&e) => Ok(None),
            Err(e) => Err(self.not_found_or(op, collection, e)),
        }
    }

    async fn load(&self, collection: &str) -> Result<()> {
        let op = "load collection";
        let request = LoadCollectionRequest::builder().collection_name(collection).build();
        self.call(op, collection, request, |request| self.client.load_collection(request)).await
    }

    pub async fn drop_collection(&self, collection: &str) -> Result<()> {
        let op = "drop collection";
        let request = DropCollectionRequest::builder().collection_name(collection).build();
        self.call(op, collection, request, |request| self.client.drop_collection(request)).await
    }
}

/// Refuses a collection whose vectors are not of the model's dimension.
fn check_dimension(collection: &str, described: &CollectionDesc, expected: usize) -> Result<()> {
    let vector = described.get_schema().get_fields().iter().find(|f| f.get_name() == VECTOR_FIELD);
    let found = vector.map(|f| i64::from(f.get_dimension())).unwrap_or(-1);
    if found != expected as i64 {
        return Err(StoreError::DimensionMismatch { collection: collection.to_string(), found, expected });
    }
    Ok(())
}

/// Milvus reports "no index yet" as an error: code 700 ("index not found" on Milvus 2.x,
/// "no index on collection" on Milvus Lite).
fn is_missing_index(error: &milvus::v2::error::Error) -> bool {
    let text = error.to_string().to_lowercase();
    text.contains("index not found") || text.contains("no index on collection") || text.contains("code=700")
}
