//! The vector store: Milvus through milvus-sdk-rust's V2 client.
//!
//! One Milvus collection per imgsearch collection, with the schema
//! `id INT64 (primary, = catalog row id) | vector FLOAT_VECTOR(dim) | uri VARCHAR | content_hash VARCHAR`.
//! The catalog row id is the primary key, so a crash between writing Milvus and the catalog is
//! healed by re-upserting the same id rather than leaving a duplicate vector.
//!
//! Here: the connection, its patience, and the one way every Milvus call is made (built,
//! bounded, its errors named: `MilvusStore::call`). A collection's lifecycle is in
//! `collections.rs`, its rows (writes, reads, searches) in `rows.rs`, the filter grammar in
//! `filter.rs`, and searches arriving together sent as one in [`grouped`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use milvus::v2::prelude::*;

mod collections;
mod filter;
pub mod grouped;
mod rows;

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
