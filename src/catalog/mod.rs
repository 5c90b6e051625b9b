//! The catalog: what is known about each image of a collection (where it came from, what it
//! contained, whether it is searchable and, if not, why), and the source of image ids.
//!
//! Two kinds, one interface:
//! - [`SqlCatalog`] (SQLite, PostgreSQL, MySQL/MariaDB): one row per image, failures included,
//!   ids from the database's sequence, shared by every ingest pod and search pod given its URL.
//! - [`MilvusCatalog`], for a collection given no database (`DATABASE_URL=none`, what the
//!   operator sets when `spec.catalog` is absent): Milvus's own rows (id, URI, content hash)
//!   are the record of what is indexed, and an image's id is derived from its collection and
//!   URI ([`uri_id`]), so every pod of every run computes the same id for the same image with
//!   no shared state. What it cannot keep: why an image failed (failed images are tried again
//!   on every run and reported in that run's summary), sizes and times.

mod milvus;
mod sql;

use std::collections::HashMap;

use sha2::{Digest, Sha256};

pub use milvus::MilvusCatalog;
pub use sql::SqlCatalog;

use crate::store::MilvusStore;

/// The `DATABASE_URL` that means "no SQL catalog: Milvus is the record" (see [`MilvusCatalog`]).
pub const NO_DATABASE: &str = "none";

/// Whether a catalog URL (a flag, an environment variable, a Secret's value) says "no SQL
/// catalog".
pub fn names_no_database(url: &str) -> bool {
    url.trim() == NO_DATABASE
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "unsupported catalog URL {0:?}: use sqlite://PATH, postgres://USER:PASSWORD@HOST/DB, mysql://USER:PASSWORD@HOST/DB (MariaDB too), or none to keep no SQL catalog (Milvus then holds the record of what is indexed)"
    )]
    UnsupportedUrl(String),
    #[error("cannot open catalog {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("catalog migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("catalog query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("catalog {what} failed after {attempts} attempts: {source}")]
    GaveUp { what: &'static str, attempts: u32, source: sqlx::Error },
    #[error("the catalog's {what} got no answer within {seconds} s")]
    Unanswered { what: &'static str, seconds: u64 },
    #[error("catalog holds an unknown status {0:?}")]
    BadStatus(String),
    #[error("the catalog did not return the id of {0}")]
    NoId(String),
    /// Without a SQL catalog an image's id is derived from its URI, and another URI of the
    /// collection already holds this one: refused rather than overwrite that image's vector.
    #[error(
        "{uri:?} cannot be indexed: its id {id} (derived from its URI, as there is no SQL catalog) is already held by {holder:?}; rename one of the two files, or give the collection a SQL catalog"
    )]
    IdTaken { id: i64, uri: String, holder: String },
    /// Without a SQL catalog Milvus is the record, and its errors are the catalog's.
    /// (Boxed: a Milvus error is several times the size of the others.)
    #[error(transparent)]
    Milvus(Box<crate::store::StoreError>),
}

impl From<crate::store::StoreError> for CatalogError {
    fn from(error: crate::store::StoreError) -> Self {
        Self::Milvus(Box::new(error))
    }
}

type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// The SQL dialects the catalog speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

impl Backend {
    pub fn from_url(url: &str) -> Option<Self> {
        let scheme = url.split(':').next()?;
        match scheme {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            "mysql" | "mariadb" => Some(Self::MySql),
            _ => None,
        }
    }
}

/// A URL fit for logs and error messages: the password (in the user part or a `password=`
/// parameter) replaced by `***`.
pub fn redacted(url: &str) -> String {
    let (address, query) = match url.split_once('?') {
        Some((address, query)) => (address, Some(query)),
        None => (url, None),
    };
    let mut out = match address.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?))) {
        Some((scheme, (userinfo, host))) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => address.to_string(),
        },
        None => address.to_string(),
    };
    if let Some(query) = query {
        let parameters: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
                _ => p.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&parameters.join("&"));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageStatus {
    /// Between the catalog and Milvus: an id reserved whose vector may not have reached Milvus
    /// yet, or a row being deleted whose vector may already be gone. The next ingest embeds it
    /// again (or prunes it); never skipped as done.
    Pending,
    Indexed,
    Failed,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Indexed => "indexed",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text {
            "pending" => Ok(Self::Pending),
            "indexed" => Ok(Self::Indexed),
            "failed" => Ok(Self::Failed),
            other => Err(CatalogError::BadStatus(other.to_string())),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub id: i64,
    pub collection: String,
    pub uri: String,
    pub content_hash: Option<String>,
    pub size_bytes: Option<i64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub status: ImageStatus,
    pub error: Option<String>,
    /// When the row was made and last changed; `None` without a SQL catalog (Milvus keeps no times).
    pub created_at_ms: Option<i64>,
    pub updated_at_ms: Option<i64>,
}

/// Which rows a listing returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListFilter {
    pub status: Option<ImageStatus>,
    /// Only URIs starting with this (a folder, a bucket prefix).
    pub uri_prefix: Option<String>,
}

/// A collection's images by status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectionCounts {
    pub name: String,
    pub indexed: i64,
    pub pending: i64,
    pub failed: i64,
}

/// What ingest knows about an image before it is embedded.
#[derive(Debug, Clone, PartialEq)]
pub struct NewImage {
    pub uri: String,
    pub content_hash: String,
    pub size_bytes: i64,
    pub width: i64,
    pub height: i64,
}

/// The part of a row ingest needs to decide whether an image must be (re)embedded.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownImage {
    pub id: i64,
    pub content_hash: Option<String>,
    pub status: ImageStatus,
}

/// Ids derived from URIs stay below 2^53, the largest integer JavaScript (the web page, most
/// JSON clients) holds exactly: an id a browser rounds would fetch another image.
const URI_ID_BITS: u32 = 53;

/// The id of `uri` in `collection` when there is no SQL catalog to hand ids out: the first 53
/// bits of SHA-256(collection, NUL, URI), never 0. Any pod of any run gets the same id for the
/// same image, so shards need no coordination and a rescan keeps every image's id. Two URIs of
/// one collection share an id with probability about n²/2^54 (one in 18,000 at a million
/// images); ingest refuses the second rather than overwrite the first (see ingest.rs).
pub fn uri_id(collection: &str, uri: &str) -> i64 {
    let mut digest = Sha256::new();
    digest.update(collection.as_bytes());
    digest.update([0u8]);
    digest.update(uri.as_bytes());
    let digest = digest.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let id = u64::from_be_bytes(first) >> (64 - URI_ID_BITS);
    // Exact: the value is below 2^53.
    id.max(1) as i64
}

/// The catalog a process uses: a SQL database, or Milvus itself (see the module docs).
#[derive(Debug, Clone)]
pub enum Catalog {
    Sql(SqlCatalog),
    Milvus(MilvusCatalog),
}

impl Catalog {
    /// Opens a SQL catalog (creating a SQLite file if needed) and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self> {
        Ok(Self::Sql(SqlCatalog::open(url).await?))
    }

    /// The catalog `url` names: [`NO_DATABASE`] for Milvus's own rows, scoped to `collections`
    /// (the ones whose images lookups by id or URI search), else a SQL database.
    pub async fn open_or_milvus(url: &str, store: &MilvusStore, collections: &[String]) -> Result<Self> {
        if names_no_database(url) {
            Ok(Self::Milvus(MilvusCatalog::new(store.clone(), collections.to_vec())))
        } else {
            Self::open(url).await
        }
    }

    /// The SQL dialect, `None` for Milvus.
    pub fn backend(&self) -> Option<Backend> {
        match self {
            Self::Sql(sql) => Some(sql.backend()),
            Self::Milvus(_) => None,
        }
    }

    /// Whether image ids derive from URIs (no SQL catalog) rather than come from a database.
    pub fn derives_ids(&self) -> bool {
        matches!(self, Self::Milvus(_))
    }

    /// The id an image will get, when it follows from its URI (no SQL catalog); `None` when the
    /// database hands ids out.
    pub fn derived_id(&self, collection: &str, uri: &str) -> Option<i64> {
        self.derives_ids().then(|| uri_id(collection, uri))
    }

    /// Refuses `uri` when the id derived from it already belongs to another image of the
    /// collection ([`CatalogError::IdTaken`]); a SQL catalog hands out fresh ids, so never there.
    pub async fn check_id_free(&self, collection: &str, uri: &str) -> Result<()> {
        let Self::Milvus(milvus) = self else { return Ok(()) };
        let id = uri_id(collection, uri);
        match milvus.uri_of(collection, id).await? {
            Some(holder) if holder != uri => Err(CatalogError::IdTaken { id, uri: uri.to_string(), holder }),
            _ => Ok(()),
        }
    }

    /// Every image of a collection by URI, loaded once per ingest run.
    pub async fn known_images(&self, collection: &str) -> Result<HashMap<String, KnownImage>> {
        match self {
            Self::Sql(sql) => sql.known_images(collection).await,
            Self::Milvus(milvus) => milvus.known_images(collection).await,
        }
    }

    /// Gives each image an id (its existing one when the URI is known) and marks it pending.
    /// Returns ids in input order.
    pub async fn reserve(&self, collection: &str, images: &[NewImage]) -> Result<Vec<i64>> {
        match self {
            Self::Sql(sql) => sql.reserve(collection, images).await,
            Self::Milvus(_) => Ok(images.iter().map(|image| uri_id(collection, &image.uri)).collect()),
        }
    }

    /// Called once the vectors of `ids` are in Milvus (for Milvus, that write was the record).
    pub async fn mark_indexed(&self, ids: &[i64]) -> Result<()> {
        match self {
            Self::Sql(sql) => sql.mark_indexed(ids).await,
            Self::Milvus(_) => Ok(()),
        }
    }

    /// Called before the vectors of `ids` are deleted from Milvus: until the rows are gone too,
    /// they no longer claim a vector (for Milvus, the delete is the record).
    pub async fn mark_pending(&self, ids: &[i64]) -> Result<()> {
        match self {
            Self::Sql(sql) => sql.mark_pending(ids).await,
            Self::Milvus(_) => Ok(()),
        }
    }

    /// Records why an image cannot be indexed (Milvus keeps no failures). Returns the image's
    /// id, so a formerly indexed image that turned bad can have its stale vector removed.
    pub async fn record_failure(
        &self,
        collection: &str,
        uri: &str,
        content_hash: Option<&str>,
        size_bytes: Option<i64>,
        reason: &str,
    ) -> Result<i64> {
        match self {
            Self::Sql(sql) => sql.record_failure(collection, uri, content_hash, size_bytes, reason).await,
            Self::Milvus(_) => Ok(uri_id(collection, uri)),
        }
    }

    pub async fn get(&self, id: i64) -> Result<Option<ImageRecord>> {
        match self {
            Self::Sql(sql) => sql.get(id).await,
            Self::Milvus(milvus) => milvus.get(id).await,
        }
    }

    /// Finds an image by URI in any collection (the bootcamp's `/data?image_path=`).
    pub async fn find_by_uri(&self, uri: &str) -> Result<Option<ImageRecord>> {
        match self {
            Self::Sql(sql) => sql.find_by_uri(uri).await,
            Self::Milvus(milvus) => milvus.find_by_uri(uri).await,
        }
    }

    pub async fn find(&self, collection: &str, uri: &str) -> Result<Option<ImageRecord>> {
        match self {
            Self::Sql(sql) => sql.find(collection, uri).await,
            Self::Milvus(milvus) => milvus.find(collection, uri).await,
        }
    }

    /// The images that could not be indexed, with the reasons (none kept without a SQL catalog).
    pub async fn failures(&self, collection: &str) -> Result<Vec<ImageRecord>> {
        match self {
            Self::Sql(sql) => sql.failures(collection).await,
            Self::Milvus(_) => Ok(Vec::new()),
        }
    }

    pub async fn count(&self, collection: &str, status: ImageStatus) -> Result<i64> {
        match self {
            Self::Sql(sql) => sql.count(collection, status).await,
            Self::Milvus(milvus) => milvus.count(collection, status).await,
        }
    }

    /// One page of a collection's images in id order: those after `after` (0 for the first
    /// page) that pass `filter`, at most `limit`.
    pub async fn list(
        &self,
        collection: &str,
        filter: &ListFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ImageRecord>> {
        match self {
            Self::Sql(sql) => sql.list(collection, filter, after, limit).await,
            Self::Milvus(milvus) => milvus.list(collection, filter, after, limit).await,
        }
    }

    /// Every collection the catalog knows, with its images counted by status, by name.
    pub async fn collections(&self) -> Result<Vec<CollectionCounts>> {
        match self {
            Self::Sql(sql) => sql.collections().await,
            Self::Milvus(milvus) => milvus.collections().await,
        }
    }

    /// Removes these rows (images gone from their source, deleted images); returns how many.
    /// Without a SQL catalog there are no rows besides Milvus's, which the caller deletes.
    pub async fn delete_images(&self, ids: &[i64]) -> Result<u64> {
        match self {
            Self::Sql(sql) => sql.delete_images(ids).await,
            Self::Milvus(_) => Ok(0),
        }
    }

    /// Removes every row of a collection; returns how many (none without a SQL catalog).
    pub async fn delete_collection(&self, collection: &str) -> Result<u64> {
        match self {
            Self::Sql(sql) => sql.delete_collection(collection).await,
            Self::Milvus(_) => Ok(0),
        }
    }

    /// The catalog answers `within` (a probe's deadline: a SQL catalog would otherwise wait
    /// its pool's 30 s for a connection).
    pub async fn ping(&self, within: std::time::Duration) -> Result<()> {
        match self {
            Self::Sql(sql) => tokio::time::timeout(within, sql.ping())
                .await
                .map_err(|_| CatalogError::Unanswered { what: "health check", seconds: within.as_secs() })?,
            Self::Milvus(milvus) => milvus.ping(within).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_comes_from_the_url_scheme() {
        assert_eq!(Backend::from_url("sqlite://data/catalog.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::from_url("postgresql://u:p@db/images"), Some(Backend::Postgres));
        assert_eq!(Backend::from_url("mariadb://u:p@db/images"), Some(Backend::MySql));
        assert_eq!(Backend::from_url("mongodb://x"), None);
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redacted("postgres://app:s3cr@t@db:5432/images"), "postgres://app:***@db:5432/images");
        assert_eq!(redacted("mysql://app@db/images"), "mysql://app@db/images");
        assert_eq!(redacted("sqlite://data/catalog.db"), "sqlite://data/catalog.db");
        assert_eq!(
            redacted("mysql://db/images?user=app&password=x&ssl-mode=required"),
            "mysql://db/images?user=app&password=***&ssl-mode=required"
        );
    }

    #[test]
    fn uri_ids_are_stable_distinct_per_collection_and_exact_in_javascript() {
        // The same image has the same id in every pod and every run: pinned, so a change of
        // the derivation (which would re-id every stored image) cannot pass unnoticed.
        assert_eq!(uri_id("photos", "/images/a.jpg"), uri_id("photos", "/images/a.jpg"));
        assert_ne!(uri_id("photos", "/images/a.jpg"), uri_id("other", "/images/a.jpg"));
        // The NUL keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(uri_id("ab", "c"), uri_id("a", "bc"));
        // Computed apart: SHA-256("photos\0/images/a.jpg"), first 8 bytes big-endian, >> 11.
        assert_eq!(uri_id("photos", "/images/a.jpg"), 3_450_451_933_885_842);
        let mut seen = std::collections::HashSet::new();
        for n in 0..20_000 {
            let id = uri_id("photos", &format!("/images/{n:05}.jpg"));
            assert!((1..1 << 53).contains(&id), "{id} is not a positive integer below 2^53");
            assert!(seen.insert(id), "two of 20,000 URIs share id {id}");
        }
    }
}
