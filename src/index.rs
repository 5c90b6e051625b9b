//! The image index: Milvus's vectors, the catalog's rows and the model that turns images into
//! vectors, held together as one handle that ingest ([`crate::ingest::run`]) and the search
//! service both write and read through. Its parts are private: every write goes through the
//! methods here, so the write order lives here, and every writer keeps it:
//!
//! 1. catalog: reserve the image's id, status `pending` (an existing URI keeps its id);
//! 2. Milvus: upsert the vector under that id (a retry replaces rather than duplicates);
//! 3. catalog: mark `indexed`.
//!
//! Deletes go the other way: the catalog marks the rows `pending` again, Milvus deletes the
//! vectors, then the catalog deletes the rows. A process killed in between leaves rows that the
//! next delete or prune finds again (deleting an absent vector is a no-op), never a vector that
//! nothing lists, and never a row that says `indexed` without its vector: had the row kept
//! `indexed`, the same file coming back (or the same picture uploaded again) would be skipped as
//! done and stay unsearchable for good. Without a SQL catalog (`DATABASE_URL=none`) steps 1 and 3
//! fall away: the id derives from the URI ([`crate::catalog::uri_id`]) and the Milvus upsert is
//! the record.

use std::sync::Arc;

use crate::catalog::{Catalog, CatalogError, ImageStatus, KnownImage, NewImage};
use crate::embed::preprocess::{DecodeLimits, PreparedImage};
use crate::embed::{EmbedError, EmbeddingModel, ModelSettings, Workload};
use crate::store::{CollectionOwner, IndexSpec, MilvusStore, SearchConsistency, StoreError, VectorRow};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("{0}")]
    InvalidCollection(String),
    #[error("an embedding task stopped unexpectedly: {0}")]
    Worker(String),
    /// A write that stored the image but whose catalog gave back no id for it.
    #[error("the catalog gave back no id for the image written")]
    NoIdReturned,
}

/// Where the vectors and the catalog are.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub milvus_uri: String,
    /// `user:password` or an API key; none for Milvus Lite.
    pub milvus_token: Option<String>,
    /// The Milvus database (`None`: the server's default).
    pub milvus_database: Option<String>,
    /// `sqlite://…`, `postgres://…`, `mysql://…`, or `none` for Milvus's own rows.
    pub database_url: String,
}

/// The store, the catalog and the model every reader and writer of a collection shares.
#[derive(Clone, Debug)]
pub struct ImageIndex {
    store: MilvusStore,
    catalog: Catalog,
    model: Arc<EmbeddingModel>,
    index: IndexSpec,
    limits: DecodeLimits,
}

impl ImageIndex {
    /// An index of parts already connected and loaded (tests and benchmarks put one together
    /// around their own servers; the roles use [`ImageIndex::open`]).
    pub fn new(
        store: MilvusStore,
        catalog: Catalog,
        model: Arc<EmbeddingModel>,
        index: IndexSpec,
        limits: DecodeLimits,
    ) -> Self {
        Self { store, catalog, model, index, limits }
    }

    /// The same index reaching Milvus through `store` instead (another address, another patience).
    pub fn with_store(self, store: MilvusStore) -> Self {
        Self { store, ..self }
    }

    /// The same index writing its rows to `catalog` instead.
    pub fn with_catalog(self, catalog: Catalog) -> Self {
        Self { catalog, ..self }
    }

    /// The same index, its searches as fresh as `consistency` asks.
    pub fn with_search_consistency(self, consistency: SearchConsistency) -> Self {
        Self { store: self.store.with_search_consistency(consistency), ..self }
    }

    /// Milvus, for reads (counts, vectors, searches). Writes go through the index's methods.
    pub fn store(&self) -> &MilvusStore {
        &self.store
    }

    /// The catalog, for reads (lookups, listings, counts). Writes go through the index's methods.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The model images are embedded with.
    pub fn model(&self) -> &Arc<EmbeddingModel> {
        &self.model
    }

    /// The vector index's parameters (HNSW `M`, `efConstruction`, search `ef`).
    pub fn index_spec(&self) -> &IndexSpec {
        &self.index
    }

    /// What a decoder may be asked to do.
    pub fn limits(&self) -> DecodeLimits {
        self.limits
    }

    /// Makes sure `collection` exists with its index, loaded, and (with an `owner`) is the
    /// owner's, before anything is written to it.
    pub(crate) async fn ensure_collection(
        &self,
        collection: &str,
        owner: Option<&CollectionOwner>,
    ) -> Result<(), IndexError> {
        crate::store::validate_collection_name(collection).map_err(IndexError::InvalidCollection)?;
        self.store.ensure_collection(collection, self.model.dimension(), &self.index, owner).await?;
        Ok(())
    }

    /// Connects to Milvus, opens the catalog, then loads the model for `workload` (so that a
    /// wrong address is reported before the model's seconds of loading). `collection` is the one
    /// this process ingests into or searches by default: without a SQL catalog, lookups by image
    /// id alone look there.
    pub async fn open(
        backend: &BackendConfig,
        collection: &str,
        model: &ModelSettings,
        workload: Workload,
        index: IndexSpec,
    ) -> Result<Self, IndexError> {
        let (store, catalog) = Self::connect(backend, collection).await?;
        Ok(Self { store, catalog, model: model.load(workload).await?, index, limits: model.limits })
    }

    /// Connects to Milvus and opens the catalog around a model already loaded (the search server
    /// loads its model first, then waits for Milvus and the catalog to answer).
    pub async fn with_model(
        backend: &BackendConfig,
        collection: &str,
        model: Arc<EmbeddingModel>,
        limits: DecodeLimits,
        index: IndexSpec,
    ) -> Result<Self, IndexError> {
        let (store, catalog) = Self::connect(backend, collection).await?;
        Ok(Self { store, catalog, model, index, limits })
    }

    async fn connect(backend: &BackendConfig, collection: &str) -> Result<(MilvusStore, Catalog), IndexError> {
        let token = backend.milvus_token.as_deref();
        let store = MilvusStore::connect_to(&backend.milvus_uri, token, backend.milvus_database.as_deref()).await?;
        let catalog = Catalog::open_or_milvus(&backend.database_url, &store, &[collection.to_string()]).await?;
        Ok((store, catalog))
    }

    /// Adds one already decoded image (an upload), embedding it here. Returns its catalog id;
    /// an identical image already indexed under the same URI is not embedded again.
    pub async fn add_prepared(
        &self,
        collection: &str,
        image: NewImage,
        prepared: PreparedImage,
    ) -> Result<i64, IndexError> {
        if let Some(id) = self.already_indexed(collection, &image).await? {
            return Ok(id);
        }
        let (images, vectors) = self.embed(vec![(image, prepared)]).await?;
        let ids = self.write_embedded(collection, images, vectors).await?;
        ids.first().copied().ok_or(IndexError::NoIdReturned)
    }

    /// Before one image is embedded and added: makes sure the collection exists, and gives the
    /// id of an identical image already indexed under the same URI (nothing to do then). Fails
    /// when, without a SQL catalog, another URI holds the id this one derives to.
    pub async fn already_indexed(&self, collection: &str, image: &NewImage) -> Result<Option<i64>, IndexError> {
        self.ensure_collection(collection, None).await?;
        if let Some(existing) = self.catalog.find(collection, &image.uri).await?
            && existing.status == ImageStatus::Indexed
            && existing.content_hash.as_deref() == Some(image.content_hash.as_str())
        {
            return Ok(Some(existing.id));
        }
        self.catalog.check_id_free(collection, &image.uri).await?;
        Ok(None)
    }

    /// Adds one image embedded elsewhere (the search service's batches), after
    /// [`ImageIndex::already_indexed`]; returns its id.
    pub async fn add_embedded(&self, collection: &str, image: NewImage, vector: Vec<f32>) -> Result<i64, IndexError> {
        let ids = self.write_embedded(collection, vec![image], vec![vector]).await?;
        ids.first().copied().ok_or(IndexError::NoIdReturned)
    }

    /// Runs the model over a batch (on the blocking pool: inference is CPU work).
    pub(crate) async fn embed(
        &self,
        batch: Vec<(NewImage, PreparedImage)>,
    ) -> Result<(Vec<NewImage>, Vec<Vec<f32>>), IndexError> {
        let (images, prepared): (Vec<NewImage>, Vec<PreparedImage>) = batch.into_iter().unzip();
        let model = Arc::clone(&self.model);
        let vectors = tokio::task::spawn_blocking(move || model.embed_batch(&prepared))
            .await
            .map_err(|e| IndexError::Worker(e.to_string()))??;
        Ok((images, vectors))
    }

    /// Writes embedded images in the order that makes a kill at any point safe (module docs).
    pub(crate) async fn write_embedded(
        &self,
        collection: &str,
        images: Vec<NewImage>,
        vectors: Vec<Vec<f32>>,
    ) -> Result<Vec<i64>, IndexError> {
        let ids = self.catalog.reserve(collection, &images).await?;
        let rows: Vec<VectorRow> = images
            .into_iter()
            .zip(vectors)
            .zip(&ids)
            .map(|((image, vector), &id)| VectorRow { id, vector, uri: image.uri, content_hash: image.content_hash })
            .collect();
        self.store.upsert(collection, &rows).await?;
        self.catalog.mark_indexed(&ids).await?;
        Ok(ids)
    }

    /// Records why an image could not be indexed; an image that was searchable and is now
    /// broken stops matching searches.
    pub(crate) async fn record_failure(
        &self,
        collection: &str,
        known: Option<&KnownImage>,
        failure: &ImageFailure<'_>,
    ) -> Result<(), IndexError> {
        let ImageFailure { uri, content_hash, size_bytes, reason } = *failure;
        // A formerly searchable image loses its vector first, in the delete order: a kill
        // before the failure is recorded leaves a `pending` row, which the next ingest examines
        // again, rather than a `failed` row whose stale vector still answers searches.
        if let Some(known) = known.filter(|k| k.status != ImageStatus::Failed) {
            self.catalog.mark_pending(&[known.id]).await?;
            self.store.delete(collection, &[known.id]).await?;
        }
        self.catalog.record_failure(collection, uri, content_hash, size_bytes, reason).await?;
        Ok(())
    }

    /// Removes images from Milvus, then from the catalog (module docs: the rows are marked
    /// `pending` first), a thousand at a time.
    /// A collection Milvus no longer has holds no vectors to delete.
    pub async fn delete(&self, collection: &str, ids: &[i64]) -> Result<(), IndexError> {
        for chunk in ids.chunks(1000) {
            self.catalog.mark_pending(chunk).await?;
            match self.store.delete(collection, chunk).await {
                Ok(()) => {}
                // Nothing to delete only if the collection really is gone: a Milvus still
                // recovering from a restart may say "not found" of one it holds.
                Err(StoreError::CollectionNotFound { .. }) if !self.store.has_collection(collection).await? => {}
                Err(StoreError::CollectionNotFound { .. }) => {
                    return Err(StoreError::DeleteUnconfirmed {
                        uri: self.store.uri().to_string(),
                        collection: collection.to_string(),
                        remaining: chunk.len(),
                    }
                    .into());
                }
                Err(error) => return Err(error.into()),
            }
            self.catalog.delete_images(chunk).await?;
        }
        Ok(())
    }

    /// Drops the collection: its vectors first, then its catalog rows (a failure in between
    /// leaves rows the next drop finds, never vectors nothing lists). Says what there was.
    pub async fn drop_collection(&self, collection: &str) -> Result<Dropped, IndexError> {
        let vectors = self.store.has_collection(collection).await?;
        if vectors {
            self.store.drop_collection(collection).await?;
        }
        let catalog_rows = self.catalog.delete_collection(collection).await?;
        Ok(Dropped { vectors, catalog_rows })
    }

    /// Seals what was written so Milvus indexes it (see [`MilvusStore::flush`]).
    pub async fn flush(&self, collection: &str) -> Result<(), IndexError> {
        Ok(self.store.flush(collection).await?)
    }

    /// Milvus and the catalog both answer, each within `within`; asked at once, so the answer
    /// comes within that too, not twice it.
    pub async fn ping(&self, within: std::time::Duration) -> Result<(), IndexError> {
        let (milvus, catalog) = tokio::join!(self.store.ping(within), self.catalog.ping(within));
        milvus?;
        catalog?;
        Ok(())
    }
}

/// What a dropped collection had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Milvus had the collection.
    pub vectors: bool,
    /// Catalog rows deleted.
    pub catalog_rows: u64,
}

/// An image that could not be indexed, as the catalog records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageFailure<'a> {
    pub uri: &'a str,
    pub content_hash: Option<&'a str>,
    pub size_bytes: Option<i64>,
    pub reason: &'a str,
}
