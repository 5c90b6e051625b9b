//! The SQL catalog: one row per image (where it came from, what it contained, whether it is
//! searchable and, if not, why). SQLite today; the queries stick to SQL that PostgreSQL shares
//! (`$n` placeholders, `ON CONFLICT`, `RETURNING`) so a second backend adds a pool, not a rewrite.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("unsupported catalog URL {0:?}: this build supports sqlite: URLs (e.g. sqlite://data/catalog.db)")]
    UnsupportedUrl(String),
    #[error("cannot open catalog {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("catalog migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("catalog query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("catalog holds an unknown status {0:?}")]
    BadStatus(String),
}

type Result<T, E = CatalogError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageStatus {
    /// Reserved an id; its vector may or may not have reached Milvus yet.
    Pending,
    Indexed,
    Failed,
}

impl ImageStatus {
    fn as_str(self) -> &'static str {
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
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
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

#[derive(Debug, Clone)]
pub struct Catalog {
    pool: SqlitePool,
}

impl Catalog {
    /// Opens (creating if needed) the catalog and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self> {
        if !url.starts_with("sqlite:") {
            return Err(CatalogError::UnsupportedUrl(url.to_string()));
        }
        let open_error = |source| CatalogError::Open { url: url.to_string(), source };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(open_error)?
            .create_if_missing(true)
            // WAL lets the search server read while an ingest writes.
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(open_error)?;
        // SQLite has no migration lock: when two processes open a fresh catalog at once (an
        // ingest Job and a search pod sharing a file), one loses the race to create the tables.
        // Its transaction rolled back, so it tries again and finds the migration applied.
        let mut attempt = 0u32;
        loop {
            match sqlx::migrate!("migrations/sqlite").run(&pool).await {
                Ok(()) => break,
                Err(error) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(%error, attempt, "catalog migration raced another process; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Self { pool })
    }

    /// Every image of a collection by URI, loaded once per ingest run.
    pub async fn known_images(&self, collection: &str) -> Result<HashMap<String, KnownImage>> {
        let rows = sqlx::query("SELECT id, uri, content_hash, status FROM images WHERE collection = $1")
            .bind(collection)
            .fetch_all(&self.pool)
            .await?;
        let mut known = HashMap::with_capacity(rows.len());
        for row in rows {
            known.insert(
                row.try_get::<String, _>("uri")?,
                KnownImage {
                    id: row.try_get("id")?,
                    content_hash: row.try_get("content_hash")?,
                    status: ImageStatus::parse(row.try_get::<&str, _>("status")?)?,
                },
            );
        }
        Ok(known)
    }

    /// Gives each image an id (its existing one when the URI is known) and marks it pending.
    /// Returns ids in input order. One transaction for the whole batch.
    pub async fn reserve(&self, collection: &str, images: &[NewImage]) -> Result<Vec<i64>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(images.len());
        for image in images {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO images (collection, uri, content_hash, size_bytes, width, height, status, error, created_at_ms, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', NULL, $7, $7)
                 ON CONFLICT (collection, uri) DO UPDATE SET
                     content_hash = excluded.content_hash, size_bytes = excluded.size_bytes,
                     width = excluded.width, height = excluded.height,
                     status = 'pending', error = NULL, updated_at_ms = excluded.updated_at_ms
                 RETURNING id",
            )
            .bind(collection)
            .bind(&image.uri)
            .bind(&image.content_hash)
            .bind(image.size_bytes)
            .bind(image.width)
            .bind(image.height)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Called once the vectors of `ids` are in Milvus.
    pub async fn mark_indexed(&self, ids: &[i64]) -> Result<()> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query("UPDATE images SET status = 'indexed', error = NULL, updated_at_ms = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records why an image cannot be indexed. Returns the row id, so a formerly indexed image
    /// that turned bad can have its stale vector removed by the caller.
    pub async fn record_failure(
        &self,
        collection: &str,
        uri: &str,
        content_hash: Option<&str>,
        size_bytes: Option<i64>,
        reason: &str,
    ) -> Result<i64> {
        let now = now_ms();
        let id = sqlx::query_scalar(
            "INSERT INTO images (collection, uri, content_hash, size_bytes, width, height, status, error, created_at_ms, updated_at_ms)
             VALUES ($1, $2, $3, $4, NULL, NULL, 'failed', $5, $6, $6)
             ON CONFLICT (collection, uri) DO UPDATE SET
                 content_hash = excluded.content_hash, size_bytes = excluded.size_bytes, width = NULL, height = NULL,
                 status = 'failed', error = excluded.error, updated_at_ms = excluded.updated_at_ms
             RETURNING id",
        )
        .bind(collection)
        .bind(uri)
        .bind(content_hash)
        .bind(size_bytes)
        .bind(reason)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    pub async fn get(&self, id: i64) -> Result<Option<ImageRecord>> {
        let row = sqlx::query(&format!("{SELECT_RECORD} WHERE id = $1")).bind(id).fetch_optional(&self.pool).await?;
        row.map(|r| record(&r)).transpose()
    }

    /// Finds an image by URI in any collection (the bootcamp's `/data?image_path=`).
    pub async fn find_by_uri(&self, uri: &str) -> Result<Option<ImageRecord>> {
        let row = sqlx::query(&format!("{SELECT_RECORD} WHERE uri = $1 ORDER BY id LIMIT 1"))
            .bind(uri)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| record(&r)).transpose()
    }

    pub async fn find(&self, collection: &str, uri: &str) -> Result<Option<ImageRecord>> {
        let row = sqlx::query(&format!("{SELECT_RECORD} WHERE collection = $1 AND uri = $2"))
            .bind(collection)
            .bind(uri)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| record(&r)).transpose()
    }

    pub async fn failures(&self, collection: &str) -> Result<Vec<ImageRecord>> {
        let rows = sqlx::query(&format!("{SELECT_RECORD} WHERE collection = $1 AND status = 'failed' ORDER BY uri"))
            .bind(collection)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(record).collect()
    }

    pub async fn count(&self, collection: &str, status: ImageStatus) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE collection = $1 AND status = $2")
            .bind(collection)
            .bind(status.as_str())
            .fetch_one(&self.pool)
            .await?)
    }

    /// Removes these rows (images gone from their source); returns how many.
    pub async fn delete_images(&self, ids: &[i64]) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let mut deleted = 0;
        for id in ids {
            deleted +=
                sqlx::query("DELETE FROM images WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Removes every row of a collection; returns how many.
    pub async fn delete_collection(&self, collection: &str) -> Result<u64> {
        let done = sqlx::query("DELETE FROM images WHERE collection = $1").bind(collection).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

const SELECT_RECORD: &str = "SELECT id, collection, uri, content_hash, size_bytes, width, height, status, error, created_at_ms, updated_at_ms FROM images";

fn record(row: &sqlx::sqlite::SqliteRow) -> Result<ImageRecord> {
    Ok(ImageRecord {
        id: row.try_get("id")?,
        collection: row.try_get("collection")?,
        uri: row.try_get("uri")?,
        content_hash: row.try_get("content_hash")?,
        size_bytes: row.try_get("size_bytes")?,
        width: row.try_get("width")?,
        height: row.try_get("height")?,
        status: ImageStatus::parse(row.try_get::<&str, _>("status")?)?,
        error: row.try_get("error")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("catalog.db").display());
        let catalog = Catalog::open(&url).await.expect("open catalog");
        (dir, catalog)
    }

    fn image(uri: &str, hash: &str) -> NewImage {
        NewImage { uri: uri.into(), content_hash: hash.into(), size_bytes: 10, width: 2, height: 3 }
    }

    #[tokio::test]
    async fn reserving_a_known_uri_keeps_its_id_and_resets_it_to_pending() {
        let (_dir, catalog) = catalog().await;
        let ids = catalog.reserve("c", &[image("/a.jpg", "h1"), image("/b.jpg", "h2")]).await.unwrap();
        catalog.mark_indexed(&ids).await.unwrap();
        let again = catalog.reserve("c", &[image("/b.jpg", "h3")]).await.unwrap();
        assert_eq!(again, vec![ids[1]]);
        let b = catalog.get(ids[1]).await.unwrap().unwrap();
        assert_eq!((b.status, b.content_hash.as_deref()), (ImageStatus::Pending, Some("h3")));
        assert_eq!(catalog.count("c", ImageStatus::Indexed).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn the_same_uri_in_two_collections_is_two_images() {
        let (_dir, catalog) = catalog().await;
        let a = catalog.reserve("one", &[image("/a.jpg", "h")]).await.unwrap();
        let b = catalog.reserve("two", &[image("/a.jpg", "h")]).await.unwrap();
        assert_ne!(a, b);
        assert_eq!(catalog.delete_collection("one").await.unwrap(), 1);
        assert!(catalog.get(a[0]).await.unwrap().is_none());
        assert!(catalog.get(b[0]).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn failures_keep_their_reason() {
        let (_dir, catalog) = catalog().await;
        let id = catalog.record_failure("c", "/bad.jpg", Some("h"), Some(0), "the file is empty").await.unwrap();
        let row = catalog.get(id).await.unwrap().unwrap();
        assert_eq!((row.status, row.error.as_deref()), (ImageStatus::Failed, Some("the file is empty")));
        assert_eq!(catalog.failures("c").await.unwrap().len(), 1);
        let known = catalog.known_images("c").await.unwrap();
        assert_eq!(known["/bad.jpg"].status, ImageStatus::Failed);
    }

    #[tokio::test]
    async fn several_processes_may_open_a_fresh_catalog_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("shared.db").display());
        let opens: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn({
                    let url = url.clone();
                    async move { Catalog::open(&url).await.map(|_| ()) }
                })
            })
            .collect();
        for open in opens {
            open.await.expect("task").expect("every concurrent open succeeds");
        }
    }

    #[tokio::test]
    async fn refuses_urls_of_other_databases_with_a_clear_message() {
        let err = Catalog::open("mongodb://x").await.unwrap_err();
        assert!(err.to_string().contains("supports sqlite:"), "{err}");
    }
}
