//! The search service: what the search API does, without HTTP. Searching by an image, a URL or
//! an indexed image ([`SearchService::search`]), near-duplicates (`duplicates`), listing,
//! uploads, deletes, reading an indexed image back, loading a folder and dropping a collection,
//! each with the limits that keep a shared server healthy (a bounded inference queue, one load
//! at a time, uploads never racing deletes). The HTTP handlers (`api/`) parse requests, make one
//! call here and map its [`SearchError`]s to status codes in one place (api/error.rs).

pub mod duplicates;

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::catalog::{CatalogError, CollectionCounts, ImageRecord, ImageStatus, ListFilter, NewImage};
use crate::embed::batcher::{BatchError, BatchSettings, QueryBatcher};
use crate::embed::{EmbedError, EmbeddingModel, ImageError, preprocess};
use crate::index::{ImageIndex, IndexError};
use crate::ingest::{IngestError, IngestOptions, IngestReport};
use crate::progress::Progress;
use crate::source::{ReadError, SourceError, SourceImage};
use crate::store::grouped::GroupedSearches;
use crate::store::{Hit, SearchConsistency, SearchFilter, StoreError};

/// How long readiness waits for each of Milvus and the catalog. Under the search pod's probe
/// timeout (5 s), so the kubelet records the 503 and its reason rather than a probe timeout;
/// far under a working call's patience (20 s), which a health check must not inherit.
pub const READINESS_PATIENCE: Duration = Duration::from_secs(3);

/// What the search service may do, and how much of it at once.
#[derive(Debug, Clone)]
pub struct SearchSettings {
    /// Folders a load may read; anything else is refused. Stored canonicalised.
    pub load_roots: Vec<PathBuf>,
    /// Where uploads are stored, named by content hash.
    pub upload_dir: PathBuf,
    /// Query images decoded at once (decoding runs beside the model, on the blocking pool).
    pub query_decoders: usize,
    /// How queries share the model: largest batch, longest queue.
    pub batching: BatchSettings,
    /// Longest a query waits for a decoder and for room in the model's queue; then it is
    /// refused as busy (503 with `Retry-After`).
    pub queue_timeout: Duration,
    /// Images per batch and decoded at once during a load.
    pub batch_size: usize,
    pub decode_workers: usize,
    /// Where images catalogued as `s3://…` are read from, when the collection came from a bucket.
    pub image_bucket: Option<Arc<crate::source::s3::Bucket>>,
    /// Fetches query images for searches by URL; `None`: searching by URL is refused.
    pub url_fetcher: Option<Arc<crate::source::urls::Fetcher>>,
    /// How fresh searches must be. Strong unless settings say otherwise: a service opened
    /// beside a writer (a test, a benchmark) reads what was just written elsewhere; `serve`
    /// (by its flag) and `standalone` resolve it to Session.
    pub consistency: SearchConsistency,
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            load_roots: Vec::new(),
            upload_dir: PathBuf::from("data/uploads"),
            query_decoders: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            batching: BatchSettings::default(),
            queue_timeout: Duration::from_secs(10),
            batch_size: 8,
            decode_workers: 1,
            image_bucket: None,
            url_fetcher: None,
            consistency: SearchConsistency::Strong,
        }
    }
}

/// Why the service could not do what was asked. Each says what went wrong in the service's own
/// terms; the API turns them into status codes and adds what a client or an operator can do
/// about it in the API's terms (a route, a flag: api/error.rs).
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("collection {0:?} does not exist; load or upload images first")]
    NoCollection(String),
    /// `what` names the image as the client did: `with id 3`, `at "/photos/a.jpg"`.
    #[error("no indexed image {0}")]
    NoIndexedImage(String),
    #[error("no image with id {0}")]
    NoImage(i64),
    #[error(
        "image {id} is catalogued as indexed in {collection:?} but Milvus has no vector for it; run the ingest again"
    )]
    VectorMissing { id: i64, collection: String },
    #[error("image {what} is in a bucket ({uri}) this server was not given")]
    BucketNotGiven { what: String, uri: String },
    #[error("image {what} cannot be read from its bucket: {reason}")]
    BucketObjectUnreadable { what: String, reason: String },
    #[error("the image bucket is unreachable; try again shortly")]
    BucketUnreachable(#[source] SourceError),
    #[error("image {0} is catalogued but its file is no longer readable")]
    FileGone(String),
    #[error("the server is busy embedding other images; retry shortly")]
    Busy,
    #[error("searching by URL is disabled on this server")]
    UrlSearchDisabled,
    #[error("cannot search by url {url:?}: {reason}")]
    UrlUnusable { url: String, reason: String },
    #[error("loading folders is disabled on this server")]
    LoadingDisabled,
    #[error("folder {folder:?} is not under an allowed load root ({roots})")]
    OutsideLoadRoots { folder: String, roots: String },
    #[error("{0:?} is not a folder")]
    NotAFolder(String),
    #[error("folder {0:?} does not exist")]
    NoFolder(String),
    #[error("another load is running")]
    LoadRunning,
    #[error("a load is running; drop the collection after it finishes")]
    DropDuringLoad,
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// A bug or an unexpected state (a task that panicked, a path that is not UTF-8).
    #[error("{0}")]
    Internal(String),
}

impl From<EmbedError> for SearchError {
    fn from(error: EmbedError) -> Self {
        Self::Index(IndexError::Embed(error))
    }
}

impl From<BatchError> for SearchError {
    fn from(error: BatchError) -> Self {
        match error {
            BatchError::Full => Self::Busy,
            BatchError::Stopped => Self::Internal(error.to_string()),
            BatchError::Embed(error) => error.into(),
        }
    }
}

pub type Result<T, E = SearchError> = std::result::Result<T, E>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `milvus_check` (does the collection exist), `decode` (a query image decoded, resized
    /// and normalised), `queue` (waiting for a decoder and for the model's batch),
    /// `embed` (the forward pass of the query's batch), `fetch_url` (a search by URL's
    /// download), `milvus_search`, `catalog_lookup`. Recorded whatever the outcome.
    pub stage: &'static str,
}

/// What the search service measures (the server publishes it at `/metrics`): how long each
/// stage of a search took, and how many queries each forward pass of the model carried.
#[derive(Clone, Debug)]
pub struct SearchMetrics {
    stages: Family<StageLabels, Histogram>,
    batch_sizes: Histogram,
    search_group_sizes: Histogram,
}

impl Default for SearchMetrics {
    fn default() -> Self {
        // 1 ms … 30 s: a cached probe to a large upload queued behind others.
        fn buckets() -> Histogram {
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        }
        Self {
            stages: Family::new_with_constructor(buckets as fn() -> Histogram),
            // 1, 2, 4 … 128 queries.
            batch_sizes: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            search_group_sizes: Histogram::new(exponential_buckets(1.0, 2.0, 5)),
        }
    }
}

impl SearchMetrics {
    pub fn record(&self, stage: &'static str, took: Duration) {
        self.stages.get_or_create(&StageLabels { stage }).observe(took.as_secs_f64());
    }

    /// One query embedded in a forward pass of `size` queries (counted per query, so the
    /// histogram says how many queries saw which batch size).
    pub fn record_batch(&self, size: usize) {
        self.batch_sizes.observe(size as f64);
    }

    /// One search sent to Milvus in a request of `size` query vectors.
    pub fn record_search_group(&self, size: usize) {
        self.search_group_sizes.observe(size as f64);
    }

    /// The metrics, for a Prometheus registry.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("search_stage_duration_seconds", "Time spent in each stage of a search", self.stages.clone());
        registry.register(
            "query_batch_size",
            "Queries in the model's forward pass that embedded each query",
            self.batch_sizes.clone(),
        );
        registry.register(
            "milvus_search_group_size",
            "Query vectors in the Milvus search request that answered each search",
            self.search_group_sizes.clone(),
        );
    }
}

/// The picture a search compares with.
#[derive(Debug)]
pub enum QueryImage {
    /// Image bytes (an upload), compared with the images of `collection`.
    Bytes { collection: String, bytes: Bytes },
    /// The image at a URL, fetched through the guarded fetcher when searching by URL is
    /// enabled; nothing is fetched for a collection that does not exist.
    Url { collection: String, url: String },
    /// An image already indexed ("more like this"), compared with the other images of its own
    /// collection; it is never among its own results.
    Stored { id: i64 },
}

/// A search: what to compare with, and which results to keep.
#[derive(Debug)]
pub struct SearchRequest {
    pub query: QueryImage,
    /// Results wanted (bounded by the caller: the server's `max_top_k`).
    pub top_k: usize,
    /// Results farther than this cosine distance are dropped.
    pub max_distance: Option<f32>,
    /// Only images whose URI starts with this (a folder, a bucket prefix).
    pub uri_prefix: Option<String>,
}

/// The nearest images, best first, and the collection searched.
#[derive(Debug)]
pub struct SearchResults {
    pub collection: String,
    pub hits: Vec<Hit>,
    /// The catalog row of a [`QueryImage::Stored`] query.
    pub stored_query: Option<ImageRecord>,
}

/// An indexed image to hand back: its bytes, or where it lives (an image of a URL list).
#[derive(Debug)]
pub enum ImageContent {
    Bytes { bytes: Vec<u8>, mime: &'static str },
    Elsewhere(String),
}

pub struct SearchService {
    index: ImageIndex,
    settings: SearchSettings,
    metrics: SearchMetrics,
    /// Progress of the current or last load.
    progress: Progress,
    /// Query images being decoded at once.
    decoders: Semaphore,
    batcher: QueryBatcher,
    /// Searches arriving together (a model batch's queries) go to Milvus in one request.
    searches: GroupedSearches,
    /// One load at a time: two loads of one collection would race on the same rows.
    load: tokio::sync::Mutex<()>,
    /// Uploads and deletes one at a time: an upload of bytes already stored reuses the file, so
    /// a delete removing it "because no row names it" must not run between the two steps.
    uploads: tokio::sync::Mutex<()>,
    /// Collections seen to exist in Milvus, so a search skips the existence check's round
    /// trip (1–8 ms measured). Only presence is remembered, and a call that finds a remembered
    /// collection gone (dropped by another server or the controller) forgets it: that call
    /// answers "not found" as the check would have, and the next one checks again.
    known_collections: std::sync::Mutex<HashSet<String>>,
}

impl SearchService {
    /// Starts the service's model batcher (its own threads) and Milvus search grouping (a task
    /// on the current Tokio runtime, so this is called inside one).
    pub fn new(index: ImageIndex, settings: SearchSettings) -> Self {
        let index = index.with_search_consistency(settings.consistency);
        Self {
            decoders: Semaphore::new(settings.query_decoders.max(1)),
            batcher: QueryBatcher::start(Arc::clone(index.model()), settings.batching),
            searches: GroupedSearches::start(index.store().clone(), index.index_spec().clone()),
            index,
            settings,
            metrics: SearchMetrics::default(),
            progress: Progress::silent(),
            load: Default::default(),
            uploads: Default::default(),
            known_collections: Default::default(),
        }
    }

    /// The model queries and uploads are embedded with.
    pub fn model(&self) -> &EmbeddingModel {
        self.index.model()
    }

    /// What the service measures, for the server's `/metrics`.
    pub fn metrics(&self) -> &SearchMetrics {
        &self.metrics
    }

    /// Images done and images found by the current or last load.
    pub fn load_progress(&self) -> (u64, u64) {
        self.progress.snapshot()
    }

    fn known_collections(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Poisoning cannot leave the set half-changed (each use is one insert or remove).
        self.known_collections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Passes a Milvus result through, forgetting the collection if Milvus no longer has it.
    fn forget_if_missing<T>(&self, collection: &str, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::CollectionNotFound { .. }) = &result {
            self.known_collections().remove(collection);
        }
        result
    }

    /// Fails unless Milvus has the collection (asked once; see `known_collections`).
    pub async fn require_collection(&self, collection: &str) -> Result<()> {
        if self.known_collections().contains(collection) {
            return Ok(());
        }
        let started = Instant::now();
        let exists = self.index.store().has_collection(collection).await;
        self.metrics.record("milvus_check", started.elapsed());
        if !exists? {
            return Err(SearchError::NoCollection(collection.to_string()));
        }
        self.known_collections().insert(collection.to_string());
        Ok(())
    }

    /// The images nearest to a query image, best first: the one search every route makes.
    pub async fn search(&self, request: SearchRequest) -> Result<SearchResults> {
        let SearchRequest { query, top_k, max_distance, uri_prefix } = request;
        let mut filter = SearchFilter { uri_prefix, ..SearchFilter::default() };
        let mut stored_query = None;
        let (collection, vector) = match query {
            QueryImage::Bytes { collection, bytes } => {
                self.require_collection(&collection).await?;
                let vector = self.embed_query(bytes).await?;
                (collection, vector)
            }
            QueryImage::Url { collection, url } => {
                // Before any download: a search of a collection that does not exist fetches nothing.
                self.require_collection(&collection).await?;
                let bytes = self.fetch_query_image(&url).await?;
                (collection, self.embed_query(bytes).await?)
            }
            QueryImage::Stored { id } => {
                let (record, vector) = self.indexed_vector(id).await?;
                filter.exclude_ids.push(id);
                (stored_query.insert(record).collection.clone(), vector)
            }
        };
        let hits = self.search_by_vector(&collection, vector, top_k, &filter).await?;
        let hits = hits.into_iter().filter(|hit| max_distance.is_none_or(|max| hit.distance() <= max)).collect();
        Ok(SearchResults { collection, hits, stored_query })
    }

    async fn search_by_vector(
        &self,
        collection: &str,
        vector: Vec<f32>,
        top_k: usize,
        filter: &SearchFilter,
    ) -> Result<Vec<Hit>> {
        // Timed whatever the outcome: a slow failure is exactly what the histogram is for.
        let started = Instant::now();
        let searched = self.searches.search(collection, vector, top_k, filter).await;
        self.metrics.record("milvus_search", started.elapsed());
        let searched = self.forget_if_missing(collection, searched)?;
        self.metrics.record_search_group(searched.group_size);
        Ok(searched.hits)
    }

    /// The embedding of a query image: decoded here, beside the model, then embedded in the
    /// next batch the model takes. [`SearchError::Busy`] when no decoder or no room in the
    /// model's queue frees within the queue wait.
    async fn embed_query(&self, bytes: Bytes) -> Result<Vec<f32>> {
        let queued = Instant::now();
        let prepared = self.prepare_query(bytes).await;
        let waited_for_decoder = prepared.as_ref().map_or(Duration::ZERO, |(_, waited)| *waited);
        let (prepared, _) = prepared?;
        let room = self.settings.queue_timeout.saturating_sub(queued.elapsed());
        match self.batcher.embed(prepared, room).await {
            Ok(embedded) => {
                self.metrics.record("queue", waited_for_decoder + embedded.waited);
                self.metrics.record("embed", embedded.inference);
                self.metrics.record_batch(embedded.batch_size);
                Ok(embedded.vector)
            }
            Err(error) => {
                if let BatchError::Full = error {
                    // Refused waits are the ones the histogram is for.
                    self.metrics.record("queue", queued.elapsed());
                }
                Err(error.into())
            }
        }
    }

    /// A query image decoded for the model (by one of the query decoders), and how long it
    /// waited for one.
    async fn prepare_query(&self, bytes: Bytes) -> Result<(preprocess::PreparedImage, Duration)> {
        let queued = Instant::now();
        let slot = tokio::time::timeout(self.settings.queue_timeout, self.decoders.acquire()).await;
        let waited = queued.elapsed();
        let Ok(slot) = slot else {
            self.metrics.record("queue", waited);
            return Err(SearchError::Busy);
        };
        let _slot = slot.map_err(|e| SearchError::Internal(e.to_string()))?;
        let (limits, input) = (self.index.limits(), self.index.model().input());
        let started = Instant::now();
        let prepared = tokio::task::spawn_blocking(move || preprocess::prepare(&bytes, limits, input))
            .await
            .map_err(|e| SearchError::Internal(e.to_string()))?;
        self.metrics.record("decode", started.elapsed());
        Ok((prepared?, waited))
    }

    /// The query image of a search by URL, through the SSRF-guarded fetcher (no private,
    /// loopback or link-local addresses unless allowed, http(s) only, size and time limits,
    /// redirects checked again).
    async fn fetch_query_image(&self, url: &str) -> Result<Bytes> {
        let fetcher = self.settings.url_fetcher.as_ref().ok_or(SearchError::UrlSearchDisabled)?;
        let started = Instant::now();
        let fetched = fetcher.fetch(url).await;
        self.metrics.record("fetch_url", started.elapsed());
        // Whatever went wrong over there (refused address, 404, a down or slow host) is the
        // URL's problem, not this server's.
        fetched
            .map(Bytes::from)
            .map_err(|error| SearchError::UrlUnusable { url: url.to_string(), reason: error.to_string() })
    }

    /// An indexed image's catalog row and its vector as Milvus holds it.
    async fn indexed_vector(&self, id: i64) -> Result<(ImageRecord, Vec<f32>)> {
        let record = self
            .index
            .catalog()
            .get(id)
            .await?
            .filter(|r| r.status == ImageStatus::Indexed)
            .ok_or_else(|| SearchError::NoIndexedImage(format!("with id {id}")))?;
        let mut vectors = self.index.store().vectors(&record.collection, &[id]).await?;
        let vector = vectors
            .remove(&id)
            .ok_or_else(|| SearchError::VectorMissing { id, collection: record.collection.clone() })?;
        Ok((record, vector))
    }

    /// Stored vectors by id; ids without one are left out.
    async fn vectors(&self, collection: &str, ids: &[i64]) -> Result<HashMap<i64, Vec<f32>>> {
        Ok(self.forget_if_missing(collection, self.index.store().vectors(collection, ids).await)?)
    }

    /// A page of a collection's catalogued images, by id, after `after`.
    pub async fn list_images(
        &self,
        collection: &str,
        filter: &ListFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ImageRecord>> {
        Ok(self.index.catalog().list(collection, filter, after, limit).await?)
    }

    /// An image's catalog row, whatever its state.
    pub async fn image_info(&self, id: i64) -> Result<ImageRecord> {
        self.index.catalog().get(id).await?.ok_or(SearchError::NoImage(id))
    }

    /// The collections the catalog holds, with their images counted by state.
    pub async fn collections(&self) -> Result<Vec<CollectionCounts>> {
        Ok(self.index.catalog().collections().await?)
    }

    /// Vectors searchable in the collection.
    pub async fn count(&self, collection: &str) -> Result<u64> {
        self.require_collection(collection).await?;
        Ok(self.forget_if_missing(collection, self.index.store().count(collection).await)?)
    }

    /// Vectors in the collection, 0 for one not created yet (the bootcamp's count), asked of
    /// Milvus each time.
    pub async fn count_or_zero(&self, collection: &str) -> Result<u64> {
        if !self.index.store().has_collection(collection).await? {
            return Ok(0);
        }
        Ok(self.index.store().count(collection).await?)
    }

    /// The catalog row of an image, by id, timed as `catalog_lookup`.
    pub async fn image_by_id(&self, id: i64) -> Result<Option<ImageRecord>> {
        let started = Instant::now();
        let record = self.index.catalog().get(id).await;
        self.metrics.record("catalog_lookup", started.elapsed());
        Ok(record?)
    }

    /// The catalog row of an image, by URI, timed as `catalog_lookup`.
    pub async fn image_by_uri(&self, uri: &str) -> Result<Option<ImageRecord>> {
        let started = Instant::now();
        let record = self.index.catalog().find_by_uri(uri).await;
        self.metrics.record("catalog_lookup", started.elapsed());
        Ok(record?)
    }

    /// Validates, stores (under its content hash, never a client-chosen name) and indexes an
    /// upload; returns its id. The upload is embedded through the same queue as searches, so
    /// uploads and searches share the model's limits.
    pub async fn add_upload(&self, collection: &str, bytes: Bytes) -> Result<i64> {
        let queued = Instant::now();
        let (prepared, _) = self.prepare_query(bytes.clone()).await?;
        let content_hash = hex::encode(Sha256::digest(&bytes));
        let extension = prepared.format.extensions_str().first().copied().unwrap_or("img");
        let path = self.settings.upload_dir.join(format!("{content_hash}.{extension}"));
        let uri = path
            .to_str()
            .ok_or_else(|| SearchError::Internal("upload directory is not valid UTF-8".into()))?
            .to_string();
        let image = NewImage {
            uri,
            content_hash,
            size_bytes: bytes.len() as i64,
            width: i64::from(prepared.width),
            height: i64::from(prepared.height),
        };
        let _no_delete_meanwhile = self.uploads.lock().await;
        store_upload(&path, &bytes).await?;
        if let Some(id) = self.index.already_indexed(collection, &image).await? {
            return Ok(id);
        }
        let room = self.settings.queue_timeout.saturating_sub(queued.elapsed());
        let embedded = self.batcher.embed(prepared, room).await?;
        self.metrics.record_batch(embedded.batch_size);
        Ok(self.index.add_embedded(collection, image, embedded.vector).await?)
    }

    /// Removes an image from search and the catalog (in the index's delete order: if Milvus
    /// fails nothing changed; if the catalog fails after, the row is still there and a retry
    /// finishes the job). An uploaded file goes too once no catalog row names it; an image of
    /// a folder, bucket or URL list stays where it is.
    pub async fn delete_image(&self, id: i64) -> Result<()> {
        let record = self.index.catalog().get(id).await?.ok_or(SearchError::NoImage(id))?;
        let _no_upload_meanwhile = self.uploads.lock().await;
        self.index.delete(&record.collection, &[record.id]).await?;
        // The image is deleted; the file is tidying-up, and its failure is logged, not answered.
        let path = Path::new(&record.uri);
        if path.starts_with(&self.settings.upload_dir) {
            match self.index.catalog().find_by_uri(&record.uri).await {
                Ok(None) => {
                    if let Err(error) = tokio::fs::remove_file(path).await {
                        tracing::warn!(path = %path.display(), %error, "deleted image's upload file could not be removed");
                    }
                }
                Ok(Some(_)) => {} // another collection holds the same upload
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "deleted image's upload file left: catalog lookup failed");
                }
            }
        }
        tracing::info!(id = record.id, collection = %record.collection, uri = %record.uri, "deleted image");
        Ok(())
    }

    /// A catalogued, indexed image's content. Only images the catalog lists are ever read;
    /// `what` names the image in errors (`with id 3`).
    pub async fn read_image(&self, record: Option<ImageRecord>, what: &str) -> Result<ImageContent> {
        let record = record
            .filter(|r| r.status == ImageStatus::Indexed)
            .ok_or_else(|| SearchError::NoIndexedImage(what.to_string()))?;
        // Images of a URL list are the listed URLs: the client fetches them from their origin, so
        // this server never fetches arbitrary addresses on a client's behalf.
        if record.uri.starts_with("https://") || record.uri.starts_with("http://") {
            return Ok(ImageContent::Elsewhere(record.uri));
        }
        let bytes =
            if record.uri.starts_with("s3://") {
                let bucket =
                    self.settings.image_bucket.as_ref().filter(|bucket| bucket.owns(&record.uri)).ok_or_else(|| {
                        SearchError::BucketNotGiven { what: what.to_string(), uri: record.uri.clone() }
                    })?;
                let object = SourceImage { uri: record.uri.clone(), size: None };
                bucket.read(&object).await.map_err(|error| match error {
                    ReadError::Source(error) => SearchError::BucketUnreachable(error),
                    other => SearchError::BucketObjectUnreadable { what: what.to_string(), reason: other.to_string() },
                })?
            } else {
                tokio::fs::read(&record.uri).await.map_err(|_| SearchError::FileGone(what.to_string()))?
            };
        let mime = preprocess::sniff_format(&bytes).map(preprocess::mime_type).unwrap_or("application/octet-stream");
        Ok(ImageContent::Bytes { bytes, mime })
    }

    /// Ingests a folder under a load root into `collection`, one load at a time; progress in
    /// [`SearchService::load_progress`].
    pub async fn load_folder(&self, collection: &str, folder: &str) -> Result<IngestReport> {
        let folder = self.allowed_folder(folder)?;
        let _only_load = self.load.try_lock().map_err(|_| SearchError::LoadRunning)?;
        let options = IngestOptions::new(collection, self.settings.batch_size, self.settings.decode_workers);
        Ok(crate::ingest::run_directory(&self.index, &folder, &options, &self.progress).await?)
    }

    /// Drops the collection from Milvus and the catalog (not while a load runs); `false` if
    /// neither had it.
    pub async fn drop_collection(&self, collection: &str) -> Result<bool> {
        let _no_load_meanwhile = self.load.try_lock().map_err(|_| SearchError::DropDuringLoad)?;
        self.known_collections().remove(collection);
        let dropped = self.index.drop_collection(collection).await?;
        let had_any = dropped.vectors || dropped.catalog_rows > 0;
        if had_any {
            tracing::info!(collection, catalog_rows = dropped.catalog_rows, "dropped collection");
        }
        Ok(had_any)
    }

    /// Milvus and the catalog both answer, each within [`READINESS_PATIENCE`]; asked at once,
    /// so the answer comes within that too, not twice it.
    pub async fn ready(&self) -> Result<()> {
        Ok(self.index.ping(READINESS_PATIENCE).await?)
    }

    /// Resolves a folder a client asked to load and checks it lies under an allowed root.
    fn allowed_folder(&self, requested: &str) -> Result<PathBuf> {
        let roots = &self.settings.load_roots;
        let requested_path = Path::new(requested);
        let refuse = || {
            if roots.is_empty() {
                SearchError::LoadingDisabled
            } else {
                let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
                SearchError::OutsideLoadRoots { folder: requested.to_string(), roots: roots.join(", ") }
            }
        };
        if !requested_path.is_absolute() || requested_path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(refuse());
        }
        match requested_path.canonicalize() {
            // Canonical form resolves symlinks, so a link inside a root cannot point outside it.
            Ok(canonical) if roots.iter().any(|root| canonical.starts_with(root)) => {
                if canonical.is_dir() {
                    Ok(canonical)
                } else {
                    Err(SearchError::NotAFolder(requested.to_string()))
                }
            }
            Ok(_) => Err(refuse()),
            Err(_) if roots.iter().any(|root| requested_path.starts_with(root)) => {
                Err(SearchError::NoFolder(requested.to_string()))
            }
            Err(_) => Err(refuse()),
        }
    }
}

/// Writes to a temporary name and renames, so a reader never sees half a file.
async fn store_upload(path: &Path, bytes: &[u8]) -> Result<()> {
    if tokio::fs::try_exists(path).await.unwrap_or(false) {
        return Ok(()); // same content, same name
    }
    let internal = |what: String| SearchError::Internal(what);
    let dir = path.parent().ok_or_else(|| internal("upload path has no parent".into()))?;
    tokio::fs::create_dir_all(dir).await.map_err(|e| internal(format!("creating {}: {e}", dir.display())))?;
    let temporary = path.with_extension(format!("partial-{}", std::process::id()));
    tokio::fs::write(&temporary, bytes).await.map_err(|e| internal(format!("writing {}: {e}", temporary.display())))?;
    tokio::fs::rename(&temporary, path).await.map_err(|e| internal(format!("renaming to {}: {e}", path.display())))?;
    Ok(())
}
