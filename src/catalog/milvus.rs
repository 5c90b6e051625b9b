//! The catalog of a collection given no database: Milvus's own rows (id, URI, content hash)
//! are the record of what is indexed. Every pod reads the same rows, so the search pods list
//! and serve what any ingest pod wrote, and a rescan skips what an earlier run indexed.

use std::collections::HashMap;

use super::{CollectionCounts, ImageRecord, ImageStatus, KnownImage, ListFilter, Result};
use crate::store::{MilvusStore, STORED_PER_QUERY, SearchFilter, StoreError, StoredImage, URI_FIELD};

#[derive(Debug, Clone)]
pub struct MilvusCatalog {
    store: MilvusStore,
    /// Where lookups by id or URI alone look (a search server's collections).
    collections: Vec<String>,
}

impl MilvusCatalog {
    pub fn new(store: MilvusStore, collections: Vec<String>) -> Self {
        Self { store, collections }
    }

    /// Every stored image of the collection; none when the collection does not exist yet.
    pub async fn known_images(&self, collection: &str) -> Result<HashMap<String, KnownImage>> {
        let mut known = HashMap::new();
        let mut walk = IdWalk::new(&self.store, collection, None, 0);
        while let Some(range) = absent_is_empty(walk.next().await)? {
            for image in range {
                known.insert(
                    image.uri,
                    KnownImage { id: image.id, content_hash: Some(image.content_hash), status: ImageStatus::Indexed },
                );
            }
        }
        Ok(known)
    }

    pub async fn get(&self, id: i64) -> Result<Option<ImageRecord>> {
        self.first_in_any(&format!("{} == {id}", crate::store::ID_FIELD)).await
    }

    pub async fn find_by_uri(&self, uri: &str) -> Result<Option<ImageRecord>> {
        self.first_in_any(&uri_equals(uri)).await
    }

    /// The URI stored under `id` in `collection`, if any.
    pub async fn uri_of(&self, collection: &str, id: i64) -> Result<Option<String>> {
        Ok(self.first_in(collection, &format!("{} == {id}", crate::store::ID_FIELD)).await?.map(|record| record.uri))
    }

    pub async fn find(&self, collection: &str, uri: &str) -> Result<Option<ImageRecord>> {
        self.first_in(collection, &uri_equals(uri)).await
    }

    pub async fn count(&self, collection: &str, status: ImageStatus) -> Result<i64> {
        if status != ImageStatus::Indexed {
            return Ok(0); // nothing pending or failed is kept
        }
        match self.store.count(collection).await {
            Ok(count) => Ok(i64::try_from(count).unwrap_or(i64::MAX)),
            Err(StoreError::CollectionNotFound { .. }) => Ok(0),
            Err(error) => Err(error.into()),
        }
    }

    /// A page in id order, filled from as many Milvus queries as it takes, so a short page
    /// still means the last one.
    pub async fn list(
        &self,
        collection: &str,
        filter: &ListFilter,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ImageRecord>> {
        if filter.status.is_some_and(|status| status != ImageStatus::Indexed) {
            return Ok(Vec::new());
        }
        let expression = SearchFilter { uri_prefix: filter.uri_prefix.clone(), ..SearchFilter::default() }.expression();
        let limit = limit as usize;
        let mut records: Vec<ImageRecord> = Vec::new();
        let mut walk = IdWalk::new(&self.store, collection, expression, after);
        while records.len() < limit {
            let Some(range) = absent_is_empty(walk.next().await)? else { break };
            records.extend(range.into_iter().map(|image| record(collection, image)));
        }
        // The rest of the last range is the next page's start: it begins after the last id here.
        records.truncate(limit);
        Ok(records)
    }

    /// The collections this catalog covers that exist in Milvus, with their vector counts.
    pub async fn collections(&self) -> Result<Vec<CollectionCounts>> {
        let mut counts = Vec::new();
        for name in &self.collections {
            if self.store.has_collection(name).await? {
                let indexed = self.count(name, ImageStatus::Indexed).await?;
                counts.push(CollectionCounts { name: name.clone(), indexed, ..CollectionCounts::default() });
            }
        }
        counts.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(counts)
    }

    pub async fn ping(&self, within: std::time::Duration) -> Result<()> {
        Ok(self.store.ping(within).await?)
    }

    async fn first_in_any(&self, expression: &str) -> Result<Option<ImageRecord>> {
        for collection in &self.collections {
            if let Some(found) = self.first_in(collection, expression).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    async fn first_in(&self, collection: &str, expression: &str) -> Result<Option<ImageRecord>> {
        match self.store.stored_images(collection, 0, i64::MAX, Some(expression), 1).await {
            Ok(page) => Ok(page.into_iter().next().map(|image| record(collection, image))),
            Err(StoreError::CollectionNotFound { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

/// Rows a walk takes from one range of ids; ranges are queried for one more, so a full answer
/// says the range holds more than that.
const RANGE_ROWS: usize = STORED_PER_QUERY - 1;

/// A walk over a collection's stored images in id order, one range of ids at a time. Milvus
/// does not say which rows a limited query answers when more match (see
/// [`MilvusStore::stored_images`]), so each range is asked for whole: a range that holds more
/// than [`RANGE_ROWS`] is narrowed and asked again, the next range is sized from how full the
/// last one was, and an empty one is followed by the whole remainder (which ends most walks in
/// one query). Measured on 2,000 rows (tests/store.rs): 6 queries on Milvus Lite, 7 on
/// Milvus 2.3.5, against the 3 a walk would take if limited queries answered the lowest ids.
struct IdWalk<'a> {
    store: &'a MilvusStore,
    collection: &'a str,
    filter: Option<String>,
    /// Every row with an id up to here has been returned.
    done_up_to: i64,
    width: i64,
}

impl<'a> IdWalk<'a> {
    fn new(store: &'a MilvusStore, collection: &'a str, filter: Option<String>, after: i64) -> Self {
        // Ids are positive; a negative start (a forged page token) starts at the beginning.
        Self { store, collection, filter, done_up_to: after.max(0), width: i64::MAX }
    }

    /// The rows of the next range that has any, in id order; `None` past the last id.
    async fn next(&mut self) -> std::result::Result<Option<Vec<StoredImage>>, StoreError> {
        while self.done_up_to < i64::MAX {
            let up_to = self.done_up_to.saturating_add(self.width);
            let span = up_to - self.done_up_to;
            let rows = self
                .store
                .stored_images(self.collection, self.done_up_to, up_to, self.filter.as_deref(), RANGE_ROWS + 1)
                .await?;
            if rows.len() > RANGE_ROWS && span > 1 {
                // At least half as wide; narrower still where the rows answered suggest (ids
                // that derive from URIs are spread evenly, so this usually lands in one step).
                let quarter = rows[RANGE_ROWS / 4].id - self.done_up_to;
                self.width = (span / 2).min(quarter).max(1);
                continue;
            }
            self.done_up_to = up_to;
            self.width = match rows.len() {
                0 => i64::MAX,
                // Scaled so the next range holds about three quarters of a query's worth (at
                // most 8 times as wide): ids spread evenly keep ranges full and never over.
                n => {
                    let scaled = i128::from(span) * (RANGE_ROWS as i128 * 3 / 4) / n as i128;
                    i64::try_from(scaled.min(i128::from(span) * 8)).unwrap_or(i64::MAX).max(1)
                }
            };
            if !rows.is_empty() {
                return Ok(Some(rows));
            }
        }
        Ok(None)
    }
}

/// A collection that does not exist (yet) holds no images.
fn absent_is_empty<T>(result: std::result::Result<Option<T>, StoreError>) -> Result<Option<T>> {
    match result {
        Err(StoreError::CollectionNotFound { .. }) => Ok(None),
        other => Ok(other?),
    }
}

/// `uri == "…"` with the URI as a safely quoted literal.
fn uri_equals(uri: &str) -> String {
    format!("{URI_FIELD} == {}", crate::store::string_literal(uri))
}

/// A stored image as a catalog record: indexed (it has a vector), with what Milvus does not
/// keep left unknown.
fn record(collection: &str, image: StoredImage) -> ImageRecord {
    ImageRecord {
        id: image.id,
        collection: collection.to_string(),
        uri: image.uri,
        content_hash: Some(image.content_hash),
        size_bytes: None,
        width: None,
        height: None,
        status: ImageStatus::Indexed,
        error: None,
        created_at_ms: None,
        updated_at_ms: None,
    }
}
