//! The SQL catalog: one row per image (where it came from, what it contained, whether it is
//! searchable and, if not, why). SQLite, PostgreSQL or MySQL/MariaDB, chosen by the URL's
//! scheme; one set of queries through sqlx's `Any` driver, written in the SQL the three share,
//! with the two statements that differ (the upserts) written once per dialect.
//!
//! Several writers may share one catalog (the pods of an Indexed ingest Job, the search server):
//! the upserts are atomic per row, every multi-row change is one transaction, and a transaction
//! that fails for a passing reason (a deadlock, a serialisation conflict, a dropped connection)
//! is retried whole with backoff before the error is reported.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyQueryResult, AnyRow};

use super::{
    Backend, CatalogError, CollectionCounts, ImageRecord, ImageStatus, KnownImage, ListFilter, NewImage, Result,
    redacted,
};

#[derive(Debug, Clone)]
pub struct SqlCatalog {
    pool: AnyPool,
    backend: Backend,
}

impl SqlCatalog {
    /// Opens the catalog (creating a SQLite file if needed) and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = Backend::from_url(url).ok_or_else(|| CatalogError::UnsupportedUrl(redacted(url)))?;
        let open_error = |source| CatalogError::Open { url: redacted(url), source };
        let url = match backend {
            // Create the file when missing (the default mode only opens existing ones).
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url).map_err(open_error)?;
        let mut pool_options = AnyPoolOptions::new().max_connections(4).acquire_timeout(CALL_PATIENCE);
        if backend == Backend::Sqlite {
            pool_options = pool_options.after_connect(|connection, _| {
                Box::pin(async move {
                    // WAL lets the search server read while an ingest writes; a writer waits up
                    // to 10 s for another's lock instead of failing at once.
                    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *connection).await?;
                    sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *connection).await?;
                    Ok(())
                })
            });
        }
        let pool = pool_options.connect_with(options).await.map_err(open_error)?;
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("migrations/postgres"),
            Backend::MySql => sqlx::migrate!("migrations/mysql"),
        };
        // When several processes open a fresh catalog at once (the pods of an ingest Job, a
        // search pod), one can lose the race to create the tables: SQLite has no migration
        // lock, and on MySQL/MariaDB sqlx's lock still lets two record the same migration
        // (seen in tests/catalog.rs: "Duplicate entry '1'"). The loser's work was rolled back
        // or is already done, so it tries again and finds the migration applied. An error that
        // is not a race (a bad checksum, no permission) fails the same way 5 times, then stops.
        let mut attempt = 0u32;
        loop {
            match migrator.run(&pool).await {
                Ok(()) => break,
                Err(error) if attempt < 5 => {
                    attempt += 1;
                    tracing::debug!(%error, attempt, "catalog migration raced another process; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn sql<'q>(&self, query: &'q str) -> std::borrow::Cow<'q, str> {
        placeholders(self.backend, query)
    }

    /// Every image of a collection by URI, loaded once per ingest run.
    pub async fn known_images(&self, collection: &str) -> Result<HashMap<String, KnownImage>> {
        let query = self.sql("SELECT id, uri, content_hash, status FROM images WHERE collection = $1");
        let rows = self.bounded("known images", sqlx::query(&query).bind(collection).fetch_all(&self.pool)).await?;
        let mut known = HashMap::with_capacity(rows.len());
        for row in rows {
            known.insert(
                text(&row, "uri")?,
                KnownImage {
                    id: row.try_get("id")?,
                    content_hash: optional_text(&row, "content_hash")?,
                    status: ImageStatus::parse(&text(&row, "status")?)?,
                },
            );
        }
        Ok(known)
    }

    /// Gives each image an id (its existing one when the URI is known) and marks it pending.
    /// Returns ids in input order. One transaction for the whole batch.
    pub async fn reserve(&self, collection: &str, images: &[NewImage]) -> Result<Vec<i64>> {
        self.retrying("reserve", || async {
            let now = now_ms();
            let mut tx = self.pool.begin().await?;
            let mut ids = Vec::with_capacity(images.len());
            for image in images {
                let row = Upsert {
                    collection,
                    uri: &image.uri,
                    content_hash: Some(&image.content_hash),
                    size_bytes: Some(image.size_bytes),
                    width: Some(image.width),
                    height: Some(image.height),
                    status: ImageStatus::Pending,
                    error: None,
                    now,
                };
                ids.push(self.upsert(&mut tx, &row).await?);
            }
            tx.commit().await?;
            Ok(ids)
        })
        .await
    }

    /// Inserts or updates one row by (collection, URI) and returns its id, in one statement
    /// (atomic against concurrent writers of the same URI).
    async fn upsert(&self, tx: &mut sqlx::Transaction<'_, sqlx::Any>, row: &Upsert<'_>) -> Result<i64, sqlx::Error> {
        let query = match self.backend {
            Backend::Sqlite => {
                "INSERT INTO images (collection, uri, content_hash, size_bytes, width, height, status, error, created_at_ms, updated_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (collection, uri) DO UPDATE SET
                     content_hash = excluded.content_hash, size_bytes = excluded.size_bytes,
                     width = excluded.width, height = excluded.height, status = excluded.status,
                     error = excluded.error, updated_at_ms = excluded.updated_at_ms
                 RETURNING id"
            }
            // Unique over the URI's hash (see migrations/postgres), bound last.
            Backend::Postgres => {
                "INSERT INTO images (collection, uri, content_hash, size_bytes, width, height, status, error, created_at_ms, updated_at_ms, uri_key)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (collection, uri_key) DO UPDATE SET
                     content_hash = excluded.content_hash, size_bytes = excluded.size_bytes,
                     width = excluded.width, height = excluded.height, status = excluded.status,
                     error = excluded.error, updated_at_ms = excluded.updated_at_ms
                 RETURNING id"
            }
            // No RETURNING with ON DUPLICATE KEY: LAST_INSERT_ID(id) makes the statement report
            // the existing row's id when it updates one.
            Backend::MySql => {
                "INSERT INTO images (collection, uri, content_hash, size_bytes, width, height, status, error, created_at_ms, updated_at_ms)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id),
                     content_hash = VALUES(content_hash), size_bytes = VALUES(size_bytes),
                     width = VALUES(width), height = VALUES(height), status = VALUES(status),
                     error = VALUES(error), updated_at_ms = VALUES(updated_at_ms)"
            }
        };
        let mut statement = sqlx::query(query)
            .bind(row.collection)
            .bind(row.uri)
            .bind(row.content_hash)
            .bind(row.size_bytes)
            .bind(row.width)
            .bind(row.height)
            .bind(row.status.as_str())
            .bind(row.error)
            .bind(row.now)
            .bind(row.now);
        if self.backend == Backend::Postgres {
            statement = statement.bind(hex::encode(Sha256::digest(row.uri.as_bytes())));
        }
        match self.backend {
            Backend::Sqlite | Backend::Postgres => statement.fetch_one(&mut **tx).await?.try_get("id"),
            Backend::MySql => {
                let done: AnyQueryResult = statement.execute(&mut **tx).await?;
                // MySQL reports 0 when the statement set no id.
                done.last_insert_id()
                    .filter(|id| *id > 0)
                    .ok_or_else(|| sqlx::Error::Protocol(format!("no id returned for {}", row.uri)))
            }
        }
    }

    /// Called once the vectors of `ids` are in Milvus.
    pub async fn mark_indexed(&self, ids: &[i64]) -> Result<()> {
        self.update_each(
            "mark indexed",
            "UPDATE images SET status = 'indexed', error = NULL, updated_at_ms = $1 WHERE id = $2",
            ids,
        )
        .await
    }

    /// Marks rows `pending` again before their vectors are deleted (the index's delete order).
    pub async fn mark_pending(&self, ids: &[i64]) -> Result<()> {
        self.update_each("mark pending", "UPDATE images SET status = 'pending', updated_at_ms = $1 WHERE id = $2", ids)
            .await
    }

    /// Runs `statement` (the time bound as $1, the id as $2) for each id in one transaction.
    async fn update_each(&self, what: &'static str, statement: &str, ids: &[i64]) -> Result<()> {
        let statement = self.sql(statement);
        self.retrying(what, || async {
            let now = now_ms();
            let mut tx = self.pool.begin().await?;
            for id in ids {
                sqlx::query(&statement).bind(now).bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
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
        self.retrying("record failure", || async {
            let row = Upsert {
                collection,
                uri,
                content_hash,
                size_bytes,
                width: None,
                height: None,
                status: ImageStatus::Failed,
                error: Some(reason),
                now: now_ms(),
            };
            let mut tx = self.pool.begin().await?;
            let id = self.upsert(&mut tx, &row).await?;
            tx.commit().await?;
            Ok(id)
        })
        .await
    }

    pub async fn get(&self, id: i64) -> Result<Option<ImageRecord>> {
        let query = self.sql(&format!("{SELECT_RECORD} WHERE id = $1")).into_owned();
        let row = self.bounded("get", sqlx::query(&query).bind(id).fetch_optional(&self.pool)).await?;
        row.map(|r| record(&r)).transpose()
    }

    /// Finds an image by URI in any collection (the bootcamp's `/data?image_path=`).
    pub async fn find_by_uri(&self, uri: &str) -> Result<Option<ImageRecord>> {
        let query = self.sql(&format!("{SELECT_RECORD} WHERE uri = $1 ORDER BY id")).into_owned();
        let rows = self.bounded("find by URI", sqlx::query(&query).bind(uri).fetch_all(&self.pool)).await?;
        exact_uri(rows, uri)
    }

    pub async fn find(&self, collection: &str, uri: &str) -> Result<Option<ImageRecord>> {
        let query = self.sql(&format!("{SELECT_RECORD} WHERE collection = $1 AND uri = $2")).into_owned();
        let rows = self.bounded("find", sqlx::query(&query).bind(collection).bind(uri).fetch_all(&self.pool)).await?;
        exact_uri(rows, uri)
    }

    pub async fn failures(&self, collection: &str) -> Result<Vec<ImageRecord>> {
        let query =
            self.sql(&format!("{SELECT_RECORD} WHERE collection = $1 AND status = 'failed' ORDER BY uri")).into_owned();
        let rows = self.bounded("failures", sqlx::query(&query).bind(collection).fetch_all(&self.pool)).await?;
        rows.iter().map(record).collect()
    }

    pub async fn count(&self, collection: &str, status: ImageStatus) -> Result<i64> {
        let query = self.sql("SELECT COUNT(*) AS n FROM images WHERE collection = $1 AND status = $2");
        let row = sqlx::query(&query).bind(collection).bind(status.as_str()).fetch_one(&self.pool);
        let row = self.bounded("count", row).await?;
        Ok(row.try_get("n")?)
    }

    /// One page of a collection's images in id order: those after `after` (0 for the first
    /// page) that pass `filter`, at most `limit`. Paging by id (keyset) stays correct while
    /// images are added or removed between pages, unlike an offset.
    pub async fn list(
        &self,
        collection: &str,
        filter: &ListFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ImageRecord>> {
        let mut sql = format!("{SELECT_RECORD} WHERE collection = $1 AND id > $2");
        let mut next = 3;
        let mut binds: Vec<String> = Vec::new();
        if let Some(status) = filter.status {
            sql += &format!(" AND status = ${next}");
            next += 1;
            binds.push(status.as_str().to_string());
        }
        if let Some(prefix) = filter.uri_prefix.as_deref().filter(|p| !p.is_empty()) {
            // A range, not LIKE: `%` and `_` are common in file names, and LIKE's escaping differs
            // between the three databases. PostgreSQL compares in the database's collation,
            // which need not be byte order, so the comparison names "C" there.
            let uri = if self.backend == Backend::Postgres { "uri COLLATE \"C\"" } else { "uri" };
            sql += &format!(" AND {uri} >= ${next}");
            next += 1;
            binds.push(prefix.to_string());
            if let Some(upper) = crate::store::prefix_successor(prefix) {
                sql += &format!(" AND {uri} < ${next}");
                binds.push(upper);
            }
        }
        sql += &format!(" ORDER BY id LIMIT {limit}");
        let sql = self.sql(&sql).into_owned();
        let mut query = sqlx::query(&sql).bind(collection).bind(after);
        for value in &binds {
            query = query.bind(value.as_str());
        }
        let rows = self.bounded("list", query.fetch_all(&self.pool)).await?;
        rows.iter().map(record).collect()
    }

    /// Every collection the catalog knows, with its images counted by status, by name.
    pub async fn collections(&self) -> Result<Vec<CollectionCounts>> {
        let query = sqlx::query(
            "SELECT collection, status, COUNT(*) AS n FROM images GROUP BY collection, status ORDER BY collection",
        );
        let rows = self.bounded("collections", query.fetch_all(&self.pool)).await?;
        let mut collections: Vec<CollectionCounts> = Vec::new();
        for row in rows {
            let name = text(&row, "collection")?;
            let count: i64 = row.try_get("n")?;
            if collections.last().is_none_or(|c| c.name != name) {
                collections.push(CollectionCounts { name, ..Default::default() });
            }
            let Some(counts) = collections.last_mut() else { continue };
            match ImageStatus::parse(&text(&row, "status")?)? {
                ImageStatus::Indexed => counts.indexed = count,
                ImageStatus::Pending => counts.pending = count,
                ImageStatus::Failed => counts.failed = count,
            }
        }
        Ok(collections)
    }

    /// Removes these rows (images gone from their source); returns how many.
    pub async fn delete_images(&self, ids: &[i64]) -> Result<u64> {
        self.retrying("delete images", || async {
            let mut tx = self.pool.begin().await?;
            let mut deleted = 0;
            for id in ids {
                deleted += sqlx::query(&self.sql("DELETE FROM images WHERE id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok(deleted)
        })
        .await
    }

    /// Removes every row of a collection; returns how many.
    pub async fn delete_collection(&self, collection: &str) -> Result<u64> {
        self.retrying("delete collection", || async {
            let done = sqlx::query(&self.sql("DELETE FROM images WHERE collection = $1"))
                .bind(collection)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Runs a read, failing with [`CatalogError::Unanswered`] past [`CALL_PATIENCE`]: a
    /// connection whose database stopped answering (a firewall dropping packets, a host gone)
    /// would otherwise wait for ever, as no query has a deadline of its own.
    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(CALL_PATIENCE, call).await {
            Ok(outcome) => Ok(outcome?),
            Err(_) => Err(CatalogError::Unanswered { what, seconds: CALL_PATIENCE.as_secs() }),
        }
    }

    /// Runs a write, again from the start when it failed for a passing reason: 5 attempts, about
    /// 0.1, 0.2, 0.4 and 0.8 s apart (each randomly stretched by up to half, so writers that
    /// deadlocked on each other do not retry in step). The transaction of a failed attempt was
    /// rolled back, so nothing is half-written.
    async fn retrying<T, F, Fut>(&self, what: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        const ATTEMPTS: u32 = 5;
        let mut delay = Duration::from_millis(100);
        for number in 1..=ATTEMPTS {
            // An attempt that gets no answer (a database behind a black hole) is not retried:
            // it may have committed, and another would wait as long again.
            let outcome = tokio::time::timeout(CALL_PATIENCE, attempt())
                .await
                .map_err(|_| CatalogError::Unanswered { what, seconds: CALL_PATIENCE.as_secs() })?;
            match outcome {
                Ok(value) => return Ok(value),
                Err(error) if number < ATTEMPTS && is_transient(&error) => {
                    tracing::warn!(what, attempt = number, %error, "catalog write failed; retrying");
                    tokio::time::sleep(delay + jitter(delay / 2)).await;
                    delay *= 2;
                }
                Err(error) if number > 1 => return Err(CatalogError::GaveUp { what, attempts: number, source: error }),
                Err(error) => return Err(error.into()),
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// The query in `backend`'s dialect: MySQL numbers no placeholders, so `$1, $2, …` become `?`
/// (every query binds its values in placeholder order, each once).
fn placeholders(backend: Backend, query: &str) -> std::borrow::Cow<'_, str> {
    if backend != Backend::MySql {
        return query.into();
    }
    let mut out = String::with_capacity(query.len());
    let mut chars = query.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// Up to `max`, varying from call to call (the clock's nanoseconds: spreading retries needs no
/// better randomness).
fn jitter(max: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    max.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// One row to insert or update by (collection, URI).
struct Upsert<'a> {
    collection: &'a str,
    uri: &'a str,
    content_hash: Option<&'a str>,
    size_bytes: Option<i64>,
    width: Option<i64>,
    height: Option<i64>,
    status: ImageStatus,
    error: Option<&'a str>,
    now: i64,
}

/// Errors a retry may cure: the connection went away, or the database chose this transaction
/// as a deadlock victim or serialisation loser. (Not the pool's timeout: it has already waited
/// its 30 s for a connection, and four more waits would hold a request for minutes.)
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(database) => {
            // MySQL/MariaDB: deadlock victim (1213), lock wait timeout (1205), server shutting
            // down (1053), connection killed (MariaDB 1927), idle connection closed (MySQL 4031).
            if let Some(mysql) = database.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                return matches!(mysql.number(), 1053 | 1205 | 1213 | 1927 | 4031);
            }
            matches!(
                database.code().as_deref(),
                // PostgreSQL: serialization_failure, deadlock_detected, shutdowns, connection exceptions.
                Some("40001" | "40P01" | "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006")
                // SQLite: BUSY and LOCKED, with their extended codes.
                | Some("5" | "6" | "261" | "262" | "517" | "773")
            )
        }
        _ => false,
    }
}

/// How long one catalog call, or one attempt of a write, may take, waiting for a connection
/// included: past it the call fails (a 503 for a request) instead of waiting for ever on a
/// database that stopped answering.
const CALL_PATIENCE: Duration = Duration::from_secs(30);

const SELECT_RECORD: &str = "SELECT id, collection, uri, content_hash, size_bytes, width, height, status, error, created_at_ms, updated_at_ms FROM images";

fn record(row: &AnyRow) -> Result<ImageRecord> {
    Ok(ImageRecord {
        id: row.try_get("id")?,
        collection: text(row, "collection")?,
        uri: text(row, "uri")?,
        content_hash: optional_text(row, "content_hash")?,
        size_bytes: row.try_get("size_bytes")?,
        width: row.try_get("width")?,
        height: row.try_get("height")?,
        status: ImageStatus::parse(&text(row, "status")?)?,
        error: optional_text(row, "error")?,
        created_at_ms: Some(row.try_get("created_at_ms")?),
        updated_at_ms: Some(row.try_get("updated_at_ms")?),
    })
}

/// The first row whose URI is exactly `uri`. MySQL's collations ignore trailing spaces in `=`
/// ("/a.jpg" = "/a.jpg "), and those are two images, so the match is settled here.
fn exact_uri(rows: Vec<AnyRow>, uri: &str) -> Result<Option<ImageRecord>> {
    for row in &rows {
        let record = record(row)?;
        if record.uri == uri {
            return Ok(Some(record));
        }
    }
    Ok(None)
}

/// A text column. MySQL reports columns of a binary collation (ours, see migrations/mysql) as
/// BLOB, so their bytes are read and checked as UTF-8 there.
fn optional_text(row: &AnyRow, column: &str) -> Result<Option<String>, sqlx::Error> {
    match row.try_get::<Option<String>, _>(column) {
        Ok(value) => Ok(value),
        Err(sqlx::Error::ColumnDecode { .. }) => row
            .try_get::<Option<Vec<u8>>, _>(column)?
            .map(|bytes| {
                String::from_utf8(bytes)
                    .map_err(|e| sqlx::Error::ColumnDecode { index: column.to_string(), source: Box::new(e) })
            })
            .transpose(),
        Err(error) => Err(error),
    }
}

fn text(row: &AnyRow, column: &str) -> Result<String, sqlx::Error> {
    optional_text(row, column)?.ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: "unexpected NULL in a NOT NULL column".into(),
    })
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_gets_question_mark_placeholders() {
        let query = "UPDATE images SET status = $1 WHERE id = $2 AND uri = '$x'";
        assert_eq!(placeholders(Backend::MySql, query), "UPDATE images SET status = ? WHERE id = ? AND uri = '$x'");
        assert_eq!(placeholders(Backend::Postgres, query), query);
    }

    #[tokio::test]
    async fn refuses_urls_of_other_databases_with_a_clear_message() {
        let err = SqlCatalog::open("mongodb://app:secret@x/db").await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("postgres://") && message.contains("mysql://"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }
}
