//! The rows of a collection: upserts, deletes confirmed by a strongly consistent read, reads by
//! id, counts, searches (one request for many query vectors), the walk over stored images, and
//! the flush that seals what was written.

use std::collections::HashMap;
use std::time::Duration;

use milvus::v2::prelude::*;

use super::{
    HASH_FIELD, Hit, ID_FIELD, IndexSpec, MilvusStore, Result, SCORE_FIELD, STORED_PER_QUERY, SearchFilter, StoreError,
    StoredImage, URI_FIELD, VECTOR_FIELD, VECTORS_PER_QUERY, VectorRow,
};

impl MilvusStore {
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
}
