//! The vector store: Milvus through milvus-sdk-rust's V2 client.
//!
//! One Milvus collection per imgsearch collection, with the schema
//! `id INT64 (primary, = catalog row id) | vector FLOAT_VECTOR(dim) | uri VARCHAR | content_hash VARCHAR`.
//! The catalog row id is the primary key, so a crash between writing Milvus and the catalog is
//! healed by re-upserting the same id rather than leaving a duplicate vector.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use milvus::v2::prelude::*;
use milvus::v2::{CollectionSchema, DataType, FieldSchema};

mod filter;
pub mod grouped;

pub use filter::SearchFilter;
pub(crate) use filter::{prefix_successor, string_literal};

pub const ID_FIELD: &str = "id";
pub const VECTOR_FIELD: &str = "vector";
pub const URI_FIELD: &str = "uri";
pub const HASH_FIELD: &str = "content_hash";
/// The name Milvus gives a search hit's similarity.
const SCORE_FIELD: &str = "score";
/// Long enough for deep object-store keys and URLs; longer URIs are refused at ingest.
pub const MAX_URI_LENGTH: u32 = 4096;

/// Ids per query when reading vectors back (see [`MilvusStore::vectors`]).
const VECTORS_PER_QUERY: usize = 128;

/// Rows per query when reading what is stored besides the vectors: 900 rows of the longest
/// URI (4,096 bytes), a hash and an id stay under the 4 MiB answer the SDK accepts.
pub const STORED_PER_QUERY: usize = 900;

/// How long one Milvus call may take, retries included, unless [`MilvusStore::set_patience`]
/// says otherwise.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach Milvus at {uri}: {detail}")]
    Connect { uri: String, detail: String },
    #[error(
        "Milvus collection {collection:?} has vector dimension {found}, but the model produces {expected}; use another collection name or drop this one"
    )]
    DimensionMismatch { collection: String, found: i64, expected: usize },
    #[error("Milvus at {uri} reports itself unhealthy: {reasons}")]
    Unhealthy { uri: String, reasons: String },
    #[error("Milvus collection {collection:?} does not exist")]
    CollectionNotFound { collection: String },
    #[error("building the index of {collection:?} failed: {reason}")]
    IndexFailed { collection: String, reason: String },
    #[error("Milvus at {uri}: {operation} on {collection:?} failed: {source}")]
    Milvus {
        uri: String,
        operation: &'static str,
        collection: String,
        /// Boxed: the SDK's error is over 200 bytes, and every `Result` of the store carries it.
        #[source]
        source: Box<milvus::v2::error::Error>,
    },
    #[error("Milvus at {uri} did not answer {operation} on {collection:?} within {seconds} s")]
    Unanswered { uri: String, operation: &'static str, collection: String, seconds: u64 },
    #[error("timed out after {seconds} s waiting for {what} of {collection:?}")]
    Timeout { what: &'static str, collection: String, seconds: u64 },
    /// A delete Milvus accepted without removing everything (measured: a Milvus Lite killed
    /// and restarted can answer a delete during its recovery and keep the vectors).
    #[error(
        "Milvus at {uri} accepted a delete on {collection:?} but {remaining} of its vectors are still there; retry"
    )]
    DeleteUnconfirmed { uri: String, collection: String, remaining: usize },
    /// The collection's properties name another ImageCollection: two objects sharing one
    /// collection would prune and drop each other's images.
    #[error(
        "Milvus collection {collection:?} belongs to ImageCollection {owner} (its {OWNER_PROPERTY} property): \
         imgsearch does not write to, prune or drop another object's collection"
    )]
    OwnedElsewhere { collection: String, owner: String },
}

/// The Milvus collection property naming the ImageCollection (`<namespace>/<name>`) that a
/// collection belongs to, written when the collection is made or first claimed.
pub const OWNER_PROPERTY: &str = "imgsearch.io/owner";
/// The uid of the object that made or last adopted the collection: which incarnation of the
/// name it was, for people reading it. Ownership goes by namespace and name, so that an object
/// made again after `deletionPolicy: Retain` adopts its data.
pub const OWNER_UID_PROPERTY: &str = "imgsearch.io/owner-uid";

/// The ImageCollection a Milvus collection belongs to, as recorded in the collection's
/// properties. Whoever writes to a collection for an ImageCollection (the controller, its
/// ingest and search pods) claims it first, and is refused one that another object owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionOwner {
    /// `<namespace>/<name>`.
    pub object: String,
    pub uid: Option<String>,
}

impl CollectionOwner {
    fn properties(&self) -> HashMap<String, String> {
        let mut properties = HashMap::from([(OWNER_PROPERTY.to_string(), self.object.clone())]);
        if let Some(uid) = &self.uid {
            properties.insert(OWNER_UID_PROPERTY.to_string(), uid.clone());
        }
        properties
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How vectors are compared and indexed. COSINE + HNSW is the default: embeddings are
/// L2-normalised, and HNSW gives millisecond searches without a training step.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    pub m: u32,
    pub ef_construction: u32,
    /// Search-time breadth; must be ≥ top_k, raised to it automatically.
    pub ef: u32,
}

impl Default for IndexSpec {
    fn default() -> Self {
        Self { m: 16, ef_construction: 200, ef: 64 }
    }
}

/// One image's row in Milvus.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorRow {
    pub id: i64,
    pub vector: Vec<f32>,
    pub uri: String,
    pub content_hash: String,
}

/// What Milvus holds about an image besides its vector.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredImage {
    pub id: i64,
    pub uri: String,
    pub content_hash: String,
}

/// One search result: cosine similarity in [-1, 1], higher is closer.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: i64,
    pub score: f32,
    pub uri: String,
}

impl Hit {
    /// Cosine distance: 0 identical, 2 opposite.
    pub fn distance(&self) -> f32 {
        1.0 - self.score
    }
}

/// How fresh a search's view must be. `Strong` waits for everything written anywhere before the
/// search (on Milvus 2.3 that is a wait for the next time tick, ≈ 200 ms a search); `Session`
/// sees this client's own writes at once and others' within Milvus's staleness bound (well
/// under a second), without the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchConsistency {
    Strong,
    Session,
}

#[derive(Clone)]
pub struct MilvusStore {
    client: ClientV2,
    search_consistency: SearchConsistency,
    /// Shared by clones, like the client's own settings.
    patience_ms: Arc<AtomicU64>,
    uri: String,
}

impl std::fmt::Debug for MilvusStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilvusStore").field("uri", &self.uri).finish()
    }
}

impl MilvusStore {
    /// `token` is `user:password` or an API key; Milvus Lite and auth-less servers need none.
    pub async fn connect(uri: &str, token: Option<&str>) -> Result<Self> {
        Self::connect_to(uri, token, None).await
    }

    /// Connects to one Milvus database (`None`: the server's default database).
    pub async fn connect_to(uri: &str, token: Option<&str>, database: Option<&str>) -> Result<Self> {
        let mut config = ConnectConfig::new().uri(uri);
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            config = config.token(token);
        }
        if let Some(database) = database.filter(|d| !d.is_empty()) {
            config = config.database(database);
        }
        let client = ClientV2::new(&config)
            .await
            .map_err(|e| StoreError::Connect { uri: uri.to_string(), detail: e.to_string() })?;
        let store = Self {
            client,
            uri: uri.to_string(),
            patience_ms: Arc::default(),
            search_consistency: SearchConsistency::Strong,
        };
        store.set_patience(DEFAULT_PATIENCE);
        Ok(store)
    }

    /// Bounds every call, retries included: past `patience` it fails with an error instead of
    /// retrying on. (The SDK's default retries an unreachable server for minutes, which would
    /// freeze a search request or a reconcile with no word of why.) Applies to every clone.
    pub fn set_patience(&self, patience: Duration) {
        self.patience_ms.store(u64::try_from(patience.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.client.set_rpc_deadline(patience);
        self.client.set_retry_param(
            RetryConfig::new()
                .max_attempts(8)
                .max_retry_timeout(patience)
                .initial_backoff(Duration::from_millis(50))
                .max_backoff(Duration::from_secs(2)),
        );
    }

    /// One Milvus call, its ceremony written once: the request as its builder made it, sent
    /// within the patience, and every failure (the build, no answer, the server's refusal) an
    /// error naming the operation and the collection.
    async fn call<Request, Response, Answer>(
        &self,
        operation: &'static str,
        collection: &str,
        request: std::result::Result<Request, impl Into<milvus::v2::error::Error>>,
        send: impl FnOnce(Request) -> Answer,
    ) -> Result<Response>
    where
        Answer: std::future::Future<Output = std::result::Result<Response, milvus::v2::error::Error>>,
    {
        self.answer(operation, collection, self.patience(), request, send)
            .await?
            .map_err(|e| self.error(operation, collection, e))
    }

    /// [`Self::call`] on a collection that must exist: Milvus's "not found" becomes
    /// [`StoreError::CollectionNotFound`].
    async fn call_existing<Request, Response, Answer>(
        &self,
        operation: &'static str,
        collection: &str,
        request: std::result::Result<Request, impl Into<milvus::v2::error::Error>>,
        send: impl FnOnce(Request) -> Answer,
    ) -> Result<Response>
    where
        Answer: std::future::Future<Output = std::result::Result<Response, milvus::v2::error::Error>>,
    {
        self.answer(operation, collection, self.patience(), request, send)
            .await?
            .map_err(|e| self.not_found_or(operation, collection, e))
    }

    /// The server's answer to one call, its own error left for the caller to read (a missing
    /// index is an error status, not an empty list). The SDK's deadline bounds each attempt
    /// once a connection exists, but a call waiting for a connection that cannot be
    /// re-established (Milvus gone mid-run) waits forever: `bound` holds whatever the SDK does.
    async fn answer<Request, Response, Answer>(
        &self,
        operation: &'static str,
        collection: &str,
        bound: Duration,
        request: std::result::Result<Request, impl Into<milvus::v2::error::Error>>,
        send: impl FnOnce(Request) -> Answer,
    ) -> Result<std::result::Result<Response, milvus::v2::error::Error>>
    where
        Answer: std::future::Future<Output = std::result::Result<Response, milvus::v2::error::Error>>,
    {
        let request = request.map_err(|e| self.error(operation, collection, e))?;
        tokio::time::timeout(bound, send(request)).await.map_err(|_| StoreError::Unanswered {
            uri: self.uri.clone(),
            operation,
            collection: collection.to_string(),
            seconds: bound.as_secs(),
        })
    }

    /// The patience of one call, and 2 s for the SDK's last retry to report.
    fn patience(&self) -> Duration {
        Duration::from_millis(self.patience_ms.load(Ordering::Relaxed)) + Duration::from_secs(2)
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Strong by default (ingest and tests read what they just wrote, from anywhere); the
    /// search server uses `Session`.
    pub fn with_search_consistency(mut self, consistency: SearchConsistency) -> Self {
        self.search_consistency = consistency;
        self
    }

    fn search_level(&self) -> ConsistencyLevel {
        match self.search_consistency {
            SearchConsistency::Strong => ConsistencyLevel::Strong,
            SearchConsistency::Session => ConsistencyLevel::Session,
        }
    }

    /// (indexed rows, total rows) of the vector index, as Milvus reports them.
    pub async fn index_progress(&self, collection: &str) -> Result<(i64, i64)> {
        Ok(self.vector_index(collection).await?.map(|i| (i.get_indexed_rows(), i.get_total_rows())).unwrap_or((0, 0)))
    }

    /// A cheap round trip for readiness probes: the server answers `within` (a probe's own
    /// deadline, not the patience of a call that does work) and says it is healthy.
    /// (Not list_collections: Milvus Lite's answer to it is one this SDK rejects as malformed.)
    pub async fn ping(&self, within: Duration) -> Result<()> {
        let op = "health check";
        let request = CheckHealthRequest::builder().build();
        let health = self
            .answer(op, "", within, request, |request| self.client.check_health(request))
            .await?
            .map_err(|e| self.error(op, "", e))?;
        if !health.is_healthy() {
            return Err(StoreError::Unhealthy { uri: self.uri.clone(), reasons: health.reasons().join("; ") });
        }
        Ok(())
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

    /// Inserts or replaces rows by id.
    pub async fn upsert(&self, collection: &str, rows: &[VectorRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let op = "upsert";
        let rows_request = InsertRequest::builder()
            .collection_name(collection)
            .columns(vec![
                FieldData::int64(ID_FIELD, rows.iter().map(|r| r.id).collect::<Vec<_>>()),
                FieldData::float_vector(VECTOR_FIELD, rows.iter().map(|r| r.vector.clone()).collect::<Vec<_>>()),
                FieldData::varchar(URI_FIELD, rows.iter().map(|r| r.uri.clone()).collect::<Vec<_>>()),
                FieldData::varchar(HASH_FIELD, rows.iter().map(|r| r.content_hash.clone()).collect::<Vec<_>>()),
            ])
            .build()
            .map_err(|e| self.error(op, collection, e))?;
        let request = UpsertRequest::builder().insert(rows_request).build();
        self.call(op, collection, request, |request| self.client.upsert(request)).await?;
        Ok(())
    }

    /// Deletes `ids` and confirms it. A delete is confirmed by a strongly consistent read
    /// before anyone is told the vectors are gone: the catalog row goes after this, and a vector
    /// without its row can never be found or deleted again through the API. Milvus Lite has
    /// been seen to acknowledge a delete and still return the vector while healthy (once in the
    /// soak, on an image upserted seconds before), so what remains is deleted again, as a retry
    /// by the caller would, a few times before the caller is told to retry.
    pub async fn delete(&self, collection: &str, ids: &[i64]) -> Result<()> {
        const ATTEMPTS: u32 = 3;
        let mut remaining = ids.to_vec();
        for attempt in 1..=ATTEMPTS {
            if remaining.is_empty() {
                return Ok(());
            }
            self.delete_once(collection, &remaining).await?;
            let before = remaining.len();
            remaining = self.present(collection, &remaining).await?;
            if !remaining.is_empty() && attempt < ATTEMPTS {
                tracing::warn!(
                    collection,
                    attempt,
                    deleted = before,
                    still_there = remaining.len(),
                    "Milvus acknowledged a delete but a strongly consistent read still finds vectors; deleting them again"
                );
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
        }
        if remaining.is_empty() {
            return Ok(());
        }
        Err(StoreError::DeleteUnconfirmed {
            uri: self.uri.clone(),
            collection: collection.to_string(),
            remaining: remaining.len(),
        })
    }

    /// One delete by a filter expression: Milvus Lite rejects id-list deletes from this SDK.
    async fn delete_once(&self, collection: &str, ids: &[i64]) -> Result<()> {
        let op = "delete";
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let request =
            DeleteRequest::builder().collection_name(collection).filter(format!("{ID_FIELD} in [{list}]")).build();
        self.call_existing(op, collection, request, |request| self.client.delete(request)).await?;
        Ok(())
    }

    /// Which of `ids` a strongly consistent read still finds.
    pub async fn present(&self, collection: &str, ids: &[i64]) -> Result<Vec<i64>> {
        let op = "query ids";
        let mut present = Vec::new();
        for chunk in ids.chunks(VECTORS_PER_QUERY) {
            let response = self.query_ids(op, collection, chunk, &[ID_FIELD], ConsistencyLevel::Strong).await?;
            for row in response.results().rows().map_err(|e| self.error(op, collection, e))? {
                present.push(row.get_i64(ID_FIELD).map_err(|e| self.error(op, collection, e))?);
            }
        }
        Ok(present)
    }

    /// One query for the rows of `ids`, answering `fields` (the callers chunk `ids`).
    async fn query_ids(
        &self,
        op: &'static str,
        collection: &str,
        ids: &[i64],
        fields: &[&str],
        level: ConsistencyLevel,
    ) -> Result<milvus::v2::response::dql::QueryResponse> {
        let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let request = QueryRequest::builder()
            .collection_name(collection)
            .filter(format!("{ID_FIELD} in [{list}]"))
            .output_fields(fields.iter().copied())
            .consistency_level(level)
            .build();
        self.call_existing(op, collection, request, |request| self.client.query(request)).await
    }

    /// Rows visible to a strongly consistent read.
    pub async fn count(&self, collection: &str) -> Result<u64> {
        let op = "count";
        let request = QueryRequest::builder()
            .collection_name(collection)
            .output_fields(["count(*)"])
            .consistency_level(ConsistencyLevel::Strong)
            .build();
        let response = self.call_existing(op, collection, request, |request| self.client.query(request)).await?;
        let rows = response.results().rows().map_err(|e| self.error(op, collection, e))?;
        let mut count = 0;
        for row in rows {
            count = row.get_i64("count(*)").map_err(|e| self.error(op, collection, e))?;
        }
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The `top_k` nearest rows to `vector`, best first.
    pub async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        top_k: usize,
        index: &IndexSpec,
    ) -> Result<Vec<Hit>> {
        let mut results = self.search_many(collection, vec![vector], top_k, &SearchFilter::default(), index).await?;
        Ok(results.pop().unwrap_or_default())
    }

    /// For each vector, the `top_k` nearest rows that pass `filter`, best first; one Milvus
    /// request for all of them.
    pub async fn search_many(
        &self,
        collection: &str,
        vectors: Vec<Vec<f32>>,
        top_k: usize,
        filter: &SearchFilter,
        index: &IndexSpec,
    ) -> Result<Vec<Vec<Hit>>> {
        let op = "search";
        if vectors.is_empty() {
            return Ok(Vec::new());
        }
        let ef = index.ef.max(top_k as u32);
        let mut request = SearchRequest::builder()
            .collection_name(collection)
            .vector_field(VECTOR_FIELD)
            .vectors(SearchVectors::Float(vectors))
            .output_fields([URI_FIELD])
            .limit(top_k as i64)
            .extra_params(HashMap::from([("ef".to_string(), ef.to_string())]))
            .consistency_level(self.search_level());
        if let Some(expression) = filter.expression() {
            request = request.filter(expression);
        }
        let request = request.build();
        let response = self.call_existing(op, collection, request, |request| self.client.search(request)).await?;
        let mut all = Vec::new();
        // One result per query vector, in the order they were sent.
        for result in response.results().iter() {
            // Milvus 2.3 does not name the primary-key and score fields in search results, and the
            // SDK then refuses to read the rows; the names are known, so they are filled in.
            let mut result = result.clone();
            if result.get_primary_field_name().is_empty() {
                result.set_primary_field_name(ID_FIELD);
            }
            if result.get_score_field_name().is_empty() {
                result.set_score_field_name(SCORE_FIELD);
            }
            let mut hits = Vec::new();
            for row in result.rows().map_err(|e| self.error(op, collection, e))? {
                hits.push(Hit {
                    id: row.get_i64(ID_FIELD).map_err(|e| self.error(op, collection, e))?,
                    score: row.get_f32(SCORE_FIELD).map_err(|e| self.error(op, collection, e))?,
                    uri: row.get_str(URI_FIELD).map_err(|e| self.error(op, collection, e))?.to_string(),
                });
            }
            hits.sort_by(|a, b| b.score.total_cmp(&a.score));
            all.push(hits);
        }
        Ok(all)
    }

    /// The stored vectors of these ids (ids not in the collection are absent from the map).
    /// Asked for in chunks: the SDK accepts answers up to gRPC's default 4 MiB, and 128 vectors
    /// stay under 2 MiB up to 4,096 dimensions.
    pub async fn vectors(&self, collection: &str, ids: &[i64]) -> Result<HashMap<i64, Vec<f32>>> {
        let op = "query vectors";
        let mut vectors = HashMap::new();
        for chunk in ids.chunks(VECTORS_PER_QUERY) {
            let response =
                self.query_ids(op, collection, chunk, &[ID_FIELD, VECTOR_FIELD], self.search_level()).await?;
            for row in response.results().rows().map_err(|e| self.error(op, collection, e))? {
                let id = row.get_i64(ID_FIELD).map_err(|e| self.error(op, collection, e))?;
                let vector = row.get_float_vector(VECTOR_FIELD).map_err(|e| self.error(op, collection, e))?;
                vectors.insert(id, vector.to_vec());
            }
        }
        Ok(vectors)
    }

    /// Up to `limit` (at most [`STORED_PER_QUERY`]) stored images with ids in `(above, up_to]`
    /// that match `filter` (a Milvus expression), sorted by id. Which rows a limited query
    /// answers when more match is unspecified (measured: Milvus Lite answers in insertion
    /// order, Milvus 2.3.5 a merge of per-segment firsts that skips ids), so a caller walking
    /// the ids treats a full answer as "this range holds more" and narrows it, never as "the
    /// lowest ids of the range" (see catalog/milvus.rs).
    pub async fn stored_images(
        &self,
        collection: &str,
        above: i64,
        up_to: i64,
        filter: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredImage>> {
        let op = "query stored images";
        let mut expression = format!("{ID_FIELD} > {above} and {ID_FIELD} <= {up_to}");
        if let Some(filter) = filter.filter(|f| !f.is_empty()) {
            expression = format!("{expression} and ({filter})");
        }
        let request = QueryRequest::builder()
            .collection_name(collection)
            .filter(expression)
            .output_fields([ID_FIELD, URI_FIELD, HASH_FIELD])
            .limit(limit.clamp(1, STORED_PER_QUERY) as i64)
            .consistency_level(self.search_level())
            .build();
        let response = self.call_existing(op, collection, request, |request| self.client.query(request)).await?;
        let mut images = Vec::new();
        for row in response.results().rows().map_err(|e| self.error(op, collection, e))? {
            images.push(StoredImage {
                id: row.get_i64(ID_FIELD).map_err(|e| self.error(op, collection, e))?,
                uri: row.get_str(URI_FIELD).map_err(|e| self.error(op, collection, e))?.to_string(),
                content_hash: row.get_str(HASH_FIELD).map_err(|e| self.error(op, collection, e))?.to_string(),
            });
        }
        images.sort_by_key(|image| image.id);
        Ok(images)
    }

    /// Seals what was written so Milvus indexes it: until then new rows sit in a growing
    /// segment that every search scans in full (seconds per search at 100,000 rows of 1,280
    /// dimensions on Milvus Lite, against well under one once flushed and indexed).
    pub async fn flush(&self, collection: &str) -> Result<()> {
        let op = "flush";
        let request = FlushRequest::builder().collection_names([collection]).build();
        self.call_existing(op, collection, request, |request| self.client.flush(request)).await?;
        Ok(())
    }

    pub async fn drop_collection(&self, collection: &str) -> Result<()> {
        let op = "drop collection";
        let request = DropCollectionRequest::builder().collection_name(collection).build();
        self.call(op, collection, request, |request| self.client.drop_collection(request)).await
    }

    fn error(
        &self,
        operation: &'static str,
        collection: &str,
        source: impl Into<milvus::v2::error::Error>,
    ) -> StoreError {
        StoreError::Milvus {
            uri: self.uri.clone(),
            operation,
            collection: collection.to_string(),
            source: Box::new(source.into()),
        }
    }

    fn not_found_or(&self, operation: &'static str, collection: &str, source: milvus::v2::error::Error) -> StoreError {
        let text = source.to_string().to_lowercase();
        if text.contains("collection not found")
            || text.contains("can't find collection")
            || text.contains("does not exist")
        {
            StoreError::CollectionNotFound { collection: collection.to_string() }
        } else {
            self.error(operation, collection, source)
        }
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

/// Milvus collection names: a letter or underscore, then letters, digits and underscores, ≤ 255.
pub fn validate_collection_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || name.len() > 255 || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "invalid collection name {name:?}: use 1-255 letters, digits and underscores, starting with a letter or underscore"
        ));
    }
    Ok(())
}

/// Milvus reports "no index yet" as an error: code 700 ("index not found" on Milvus 2.x,
/// "no index on collection" on Milvus Lite).
fn is_missing_index(error: &milvus::v2::error::Error) -> bool {
    let text = error.to_string().to_lowercase();
    text.contains("index not found") || text.contains("no index on collection") || text.contains("code=700")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_follow_milvus_rules() {
        assert!(validate_collection_name("products_2024").is_ok());
        assert!(validate_collection_name("_private").is_ok());
        for bad in ["", "9lives", "has-dash", "../etc", "a b", &"x".repeat(256)] {
            assert!(validate_collection_name(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
