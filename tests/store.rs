//! The Milvus store on both servers imgsearch is tested against: Milvus Lite 3.2.2 (the
//! embedded default, scripts/milvus-lite.sh) and the real Milvus 2.3.5 standalone server
//! (scripts/milvus-server.sh), which is what many existing clusters run. `make test` starts
//! both; each scenario runs on each.

mod common;

use imgsearch::store::{IndexSpec, MilvusStore, SearchFilter, StoreError, VectorRow};

/// (name, address) of each server; the run fails, not skips, without one.
fn servers() -> Vec<(&'static str, String)> {
    let server = std::env::var("IMGSEARCH_TEST_MILVUS_SERVER_URI").unwrap_or_else(|_| {
        panic!("IMGSEARCH_TEST_MILVUS_SERVER_URI is not set: run the tests with `make test` (it starts Milvus 2.3.5)")
    });
    vec![("Milvus Lite 3.2.2", common::milvus_uri()), ("Milvus 2.3.5", server)]
}

const DIMENSION: usize = 32;

/// A deterministic unit vector per seed, far from the others.
fn vector(seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let raw: Vec<f32> = (0..DIMENSION)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    imgsearch::embed::l2_normalised(&raw)
}

fn row(id: i64, seed: u64) -> VectorRow {
    VectorRow { id, vector: vector(seed), uri: format!("/images/{id}.jpg"), content_hash: format!("hash-{seed}") }
}

#[tokio::test]
async fn create_write_search_replace_delete_and_drop_on_every_server() {
    for (name, uri) in servers() {
        let store = MilvusStore::connect(&uri, None).await.unwrap_or_else(|e| panic!("{name}: connect: {e}"));
        let collection = common::unique_collection("store");
        let index = IndexSpec::default();
        store.ensure_collection(&collection, DIMENSION, &index).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        store.ensure_collection(&collection, DIMENSION, &index).await.unwrap_or_else(|e| panic!("{name}: again: {e}"));
        assert!(store.has_collection(&collection).await.unwrap(), "{name}");

        let rows: Vec<VectorRow> = (1..=20).map(|id| row(id, id as u64)).collect();
        store.upsert(&collection, &rows).await.unwrap_or_else(|e| panic!("{name}: upsert: {e}"));
        assert_eq!(store.count(&collection).await.unwrap(), 20, "{name}");

        let hits =
            store.search(&collection, vector(7), 5, &index).await.unwrap_or_else(|e| panic!("{name}: search: {e}"));
        assert_eq!(hits.len(), 5, "{name}: {hits:?}");
        assert_eq!((hits[0].id, hits[0].uri.as_str()), (7, "/images/7.jpg"), "{name}: {hits:?}");
        assert!((hits[0].score - 1.0).abs() < 1e-3, "{name}: cosine of a vector with itself: {hits:?}");
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "{name}: best first: {hits:?}");

        // Upsert replaces: id 7 gets another vector, the count stays.
        store.upsert(&collection, &[row(7, 1007)]).await.unwrap();
        assert_eq!(store.count(&collection).await.unwrap(), 20, "{name}: replaced, not added");
        let hits = store.search(&collection, vector(1007), 1, &index).await.unwrap();
        assert_eq!(hits[0].id, 7, "{name}: {hits:?}");

        store.delete(&collection, &[1, 2, 3]).await.unwrap_or_else(|e| panic!("{name}: delete: {e}"));
        assert_eq!(store.count(&collection).await.unwrap(), 17, "{name}");
        let hits = store.search(&collection, vector(1), 3, &index).await.unwrap();
        assert!(hits.iter().all(|h| ![1, 2, 3].contains(&h.id)), "{name}: deleted rows found: {hits:?}");

        let mismatch = store.ensure_collection(&collection, DIMENSION * 2, &index).await.unwrap_err();
        assert!(
            matches!(mismatch, StoreError::DimensionMismatch { found: 32, expected: 64, .. }),
            "{name}: {mismatch}"
        );

        store.drop_collection(&collection).await.unwrap_or_else(|e| panic!("{name}: drop: {e}"));
        assert!(!store.has_collection(&collection).await.unwrap(), "{name}");
    }
}

#[tokio::test]
async fn stored_vectors_read_back_and_filtered_multi_vector_searches_on_every_server() {
    for (name, uri) in servers() {
        let store = MilvusStore::connect(&uri, None).await.unwrap_or_else(|e| panic!("{name}: connect: {e}"));
        let collection = common::unique_collection("filter");
        let index = IndexSpec::default();
        store.ensure_collection(&collection, DIMENSION, &index).await.unwrap();
        // URIs with the characters a filter expression or LIKE pattern could trip on.
        let uris = ["/p/a_b/1.jpg", "/p/axb/2.jpg", "/p/a%b/3.jpg", "/p/a\"b/4.jpg", "/p/a\\b/5.jpg", "/p/é/6.jpg"];
        let rows: Vec<VectorRow> = uris
            .iter()
            .enumerate()
            .map(|(i, uri)| VectorRow { uri: uri.to_string(), ..row(i as i64 + 1, i as u64 + 1) })
            .collect();
        store.upsert(&collection, &rows).await.unwrap();

        let vectors = store.vectors(&collection, &[2, 5, 99]).await.unwrap_or_else(|e| panic!("{name}: vectors: {e}"));
        assert_eq!(vectors.len(), 2, "{name}: the missing id is absent, not an error");
        for id in [2, 5] {
            let expected = &rows[id as usize - 1].vector;
            assert!(vectors[&id].iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{name}: id {id}");
        }

        for (prefix, expected) in [
            ("/p/a_b/", vec![1]),
            ("/p/a%b/", vec![3]),
            ("/p/a\"b/", vec![4]),
            ("/p/a\\b/", vec![5]),
            ("/p/é/", vec![6]),
            ("/p/a", vec![1, 2, 3, 4, 5]),
        ] {
            let filter = SearchFilter { uri_prefix: Some(prefix.into()), ..SearchFilter::default() };
            let hits = store
                .search_many(&collection, vec![vector(1)], 10, &filter, &index)
                .await
                .unwrap_or_else(|e| panic!("{name}: {prefix:?}: {e}"));
            let mut found: Vec<i64> = hits[0].iter().map(|h| h.id).collect();
            found.sort();
            assert_eq!(found, expected, "{name}: prefix {prefix:?}");
        }

        // Several query vectors in one request: one result list each, in order; exclusions hold.
        let filter = SearchFilter { exclude_ids: vec![1], ..SearchFilter::default() };
        let results =
            store.search_many(&collection, vec![vector(1), vector(3), vector(6)], 2, &filter, &index).await.unwrap();
        assert_eq!(results.len(), 3, "{name}");
        assert_eq!(results[0].len(), 2, "{name}: {results:?}");
        assert!(results[0].iter().all(|h| h.id != 1), "{name}: {results:?}");
        let forward = SearchFilter { min_id: Some(4), ..SearchFilter::default() };
        let onward = store.search_many(&collection, vec![vector(1)], 10, &forward, &index).await.unwrap();
        let mut found: Vec<i64> = onward[0].iter().map(|h| h.id).collect();
        found.sort();
        assert_eq!(found, vec![4, 5, 6], "{name}: ids from 4 up");
        // Written rows can be sealed for indexing.
        store.flush(&collection).await.unwrap_or_else(|e| panic!("{name}: flush: {e}"));
        assert_eq!(store.count(&collection).await.unwrap(), 6, "{name}");
        assert_eq!(results[1][0].id, 3, "{name}: {results:?}");
        assert_eq!(results[2][0].id, 6, "{name}: {results:?}");
        store.drop_collection(&collection).await.unwrap();
    }
}
