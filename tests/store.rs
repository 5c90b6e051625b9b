//! The Milvus store on both servers imgsearch is tested against: Milvus Lite 3.2.2 (the
//! embedded default, scripts/milvus-lite.sh) and the real Milvus 2.3.5 standalone server
//! (scripts/milvus-server.sh), which is what many existing clusters run. `make test` starts
//! both; each scenario runs on each.

mod common;

use imgsearch::store::{CollectionOwner, IndexSpec, MilvusStore, SearchFilter, StoreError, VectorRow};

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
        store.ensure_collection(&collection, DIMENSION, &index, None).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        store
            .ensure_collection(&collection, DIMENSION, &index, None)
            .await
            .unwrap_or_else(|e| panic!("{name}: again: {e}"));
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

        // The read a delete confirms itself with sees what is there, and then what is gone.
        let mut present = store.present(&collection, &[1, 2, 3, 99]).await.unwrap();
        present.sort();
        assert_eq!(present, [1, 2, 3], "{name}: present before the delete");
        store.delete(&collection, &[1, 2, 3]).await.unwrap_or_else(|e| panic!("{name}: delete: {e}"));
        assert_eq!(store.present(&collection, &[1, 2, 3]).await.unwrap(), Vec::<i64>::new(), "{name}: after");
        assert_eq!(store.count(&collection).await.unwrap(), 17, "{name}");
        let hits = store.search(&collection, vector(1), 3, &index).await.unwrap();
        assert!(hits.iter().all(|h| ![1, 2, 3].contains(&h.id)), "{name}: deleted rows found: {hits:?}");

        let mismatch = store.ensure_collection(&collection, DIMENSION * 2, &index, None).await.unwrap_err();
        assert!(
            matches!(mismatch, StoreError::DimensionMismatch { found: 32, expected: 64, .. }),
            "{name}: {mismatch}"
        );

        store.drop_collection(&collection).await.unwrap_or_else(|e| panic!("{name}: drop: {e}"));
        assert!(!store.has_collection(&collection).await.unwrap(), "{name}");
    }
}

/// The owner recorded in a collection's properties, as the controller and its ingest pods use
/// it: made with one, kept from any other object, claimed when nobody is recorded, and adopted
/// by a later incarnation (another uid) of the same namespace and name.
#[tokio::test]
async fn a_collection_belongs_to_the_object_that_made_or_claimed_it_on_every_server() {
    let owner = |object: &str, uid: Option<&str>| CollectionOwner { object: object.into(), uid: uid.map(Into::into) };
    let index = IndexSpec::default();
    for (name, uri) in servers() {
        let store = MilvusStore::connect(&uri, None).await.unwrap_or_else(|e| panic!("{name}: connect: {e}"));
        let collection = common::unique_collection("owned");
        let first = owner("shop/photos", Some("uid-1"));
        store.ensure_collection(&collection, DIMENSION, &index, Some(&first)).await.unwrap();
        assert_eq!(store.owner(&collection).await.unwrap().as_deref(), Some("shop/photos"), "{name}");
        store.upsert(&collection, &[row(1, 1)]).await.unwrap();

        let other = owner("other/photos", Some("uid-2"));
        let refused = store.ensure_collection(&collection, DIMENSION, &index, Some(&other)).await.unwrap_err();
        match &refused {
            StoreError::OwnedElsewhere { owner, .. } => assert_eq!(owner, "shop/photos", "{name}"),
            other => panic!("{name}: {other}"),
        }
        assert!(refused.to_string().contains("belongs to ImageCollection shop/photos"), "{name}: {refused}");
        assert_eq!(store.owner(&collection).await.unwrap().as_deref(), Some("shop/photos"), "{name}: unchanged");
        assert_eq!(store.count(&collection).await.unwrap(), 1, "{name}: the data untouched");

        // The same namespace and name made again (deletionPolicy: Retain, then a new object).
        store
            .ensure_collection(&collection, DIMENSION, &index, Some(&owner("shop/photos", Some("uid-3"))))
            .await
            .unwrap();
        // Pods know no uid: they never change the recorded one.
        store.ensure_collection(&collection, DIMENSION, &index, Some(&owner("shop/photos", None))).await.unwrap();
        assert_eq!(store.owner(&collection).await.unwrap().as_deref(), Some("shop/photos"), "{name}");
        store.drop_collection(&collection).await.unwrap();

        // Made off-cluster, with no owner: the first object to claim it gets it.
        let unowned = common::unique_collection("unowned");
        store.ensure_collection(&unowned, DIMENSION, &index, None).await.unwrap();
        assert_eq!(store.owner(&unowned).await.unwrap(), None, "{name}");
        store.ensure_collection(&unowned, DIMENSION, &index, Some(&other)).await.unwrap();
        assert_eq!(store.owner(&unowned).await.unwrap().as_deref(), Some("other/photos"), "{name}");
        let late = store.ensure_collection(&unowned, DIMENSION, &index, Some(&first)).await.unwrap_err();
        assert!(matches!(late, StoreError::OwnedElsewhere { .. }), "{name}: {late}");
        store.drop_collection(&unowned).await.unwrap();
    }
}

#[tokio::test]
async fn stored_vectors_read_back_and_filtered_multi_vector_searches_on_every_server() {
    for (name, uri) in servers() {
        let store = MilvusStore::connect(&uri, None).await.unwrap_or_else(|e| panic!("{name}: connect: {e}"));
        let collection = common::unique_collection("filter");
        let index = IndexSpec::default();
        store.ensure_collection(&collection, DIMENSION, &index, None).await.unwrap();
        // URIs with the characters a filter expression or LIKE pattern could trip on; a file
        // name may hold a line break (Linux allows every byte but `/` and NUL), which Milvus's
        // grammar refuses raw inside a literal (found by the prefix_filter fuzz target).
        let uris = [
            "/p/a_b/1.jpg",
            "/p/axb/2.jpg",
            "/p/a%b/3.jpg",
            "/p/a\"b/4.jpg",
            "/p/a\\b/5.jpg",
            "/p/é/6.jpg",
            "/p/line\nbreak/7.jpg",
            "/p/cr\rtab\t/8.jpg",
        ];
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
            ("/p/line\nbreak/", vec![7]),
            ("/p/cr\rtab\t/", vec![8]),
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
        assert_eq!(found, vec![4, 5, 6, 7, 8], "{name}: ids from 4 up");
        // Written rows can be sealed for indexing.
        store.flush(&collection).await.unwrap_or_else(|e| panic!("{name}: flush: {e}"));
        assert_eq!(store.count(&collection).await.unwrap(), 8, "{name}");
        assert_eq!(results[1][0].id, 3, "{name}: {results:?}");
        assert_eq!(results[2][0].id, 6, "{name}: {results:?}");
        store.drop_collection(&collection).await.unwrap();
    }
}

/// Without a SQL catalog, listings and reruns walk Milvus by ranges of ids, narrowing a range
/// that holds more than one query answers (Milvus does not say which rows a limited query
/// returns: measured, Milvus Lite answers in insertion order and Milvus 2.3.5 skips ids). Here
/// 2,000 rows arrive in three writes with interleaved ids, highest first, two sealed and one
/// still growing, on both servers: every walk must see every row once, in id order.
#[tokio::test]
async fn range_walks_and_the_milvus_catalog_see_every_row_once_on_every_server() {
    use imgsearch::catalog::{Catalog, CatalogError, ImageStatus, ListFilter, NO_DATABASE, uri_id};
    const ROWS: i64 = 2_000;

    for (name, uri) in servers() {
        let store = MilvusStore::connect(&uri, None).await.unwrap_or_else(|e| panic!("{name}: connect: {e}"));
        let collection = common::unique_collection("ranges");
        store.ensure_collection(&collection, DIMENSION, &IndexSpec::default(), None).await.unwrap();
        // Ids spread evenly but not densely; even rows under /a/, odd ones under /b/.
        let id_of = |n: i64| n * 1_000_003 + 17;
        let stored = |n: i64| VectorRow {
            id: id_of(n),
            vector: vector(n as u64),
            uri: format!("/{}/{n:04}.jpg", if n % 2 == 0 { "a" } else { "b" }),
            content_hash: format!("hash-{n}"),
        };
        for part in 0..3 {
            let rows: Vec<VectorRow> = (1..=ROWS).rev().filter(|n| n % 3 == part).map(stored).collect();
            store.upsert(&collection, &rows).await.unwrap_or_else(|e| panic!("{name}: upsert: {e}"));
            if part < 2 {
                store.flush(&collection).await.unwrap_or_else(|e| panic!("{name}: flush: {e}"));
            }
        }

        // Vectors read back by id in chunks of 128 (what the duplicates report and "similar" do):
        // 300 ids take three queries and come back whole.
        let wanted: Vec<i64> = (1..=300).map(id_of).collect();
        let vectors = store.vectors(&collection, &wanted).await.unwrap_or_else(|e| panic!("{name}: vectors: {e}"));
        assert_eq!(vectors.len(), 300, "{name}");
        assert!((1..=300).all(|n| vectors[&id_of(n)] == vector(n as u64)), "{name}: a vector misread");

        // A range query answers exactly the range, in id order.
        let range = store.stored_images(&collection, id_of(10), id_of(20), None, 900).await.unwrap();
        let ids: Vec<i64> = range.iter().map(|image| image.id).collect();
        assert_eq!(ids, (11..=20).map(id_of).collect::<Vec<_>>(), "{name}");
        assert_eq!((range[0].uri.as_str(), range[0].content_hash.as_str()), ("/b/0011.jpg", "hash-11"), "{name}");

        let catalog = Catalog::open_or_milvus(NO_DATABASE, &store, std::slice::from_ref(&collection)).await.unwrap();
        assert_eq!(catalog.backend(), None, "{name}");
        let known = catalog.known_images(&collection).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(known.len(), ROWS as usize, "{name}");
        assert!((1..=ROWS).all(|n| known[&stored(n).uri].id == id_of(n)), "{name}: a row missing or misread");
        assert_eq!(known["/a/0004.jpg"].content_hash.as_deref(), Some("hash-4"), "{name}");
        assert_eq!(catalog.count(&collection, ImageStatus::Indexed).await.unwrap(), ROWS, "{name}");
        assert_eq!(catalog.count(&collection, ImageStatus::Failed).await.unwrap(), 0, "{name}");

        // Pages of a prefix listing, 130 at a time: the 1,000 even rows, in id order, once each.
        let under_a = ListFilter { uri_prefix: Some("/a/".into()), ..ListFilter::default() };
        let mut listed = Vec::new();
        let mut after = 0;
        loop {
            let page = catalog.list(&collection, &under_a, after, 130).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(page.iter().all(|r| r.uri.starts_with("/a/") && r.status == ImageStatus::Indexed), "{name}");
            listed.extend(page.iter().map(|r| r.id));
            match page.last() {
                Some(last) if page.len() == 130 => after = last.id,
                _ => break,
            }
        }
        let even: Vec<i64> = (1..=ROWS).filter(|n| n % 2 == 0).map(id_of).collect();
        assert_eq!(listed, even, "{name}");
        let all = catalog.list(&collection, &ListFilter::default(), 0, 1000).await.unwrap();
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), (1..=1000).map(id_of).collect::<Vec<_>>(), "{name}");
        let pending = ListFilter { status: Some(ImageStatus::Pending), ..ListFilter::default() };
        assert!(catalog.list(&collection, &pending, 0, 100).await.unwrap().is_empty(), "{name}: nothing is pending");

        let found = catalog.get(id_of(7)).await.unwrap().unwrap_or_else(|| panic!("{name}: id of row 7"));
        assert_eq!((found.uri.as_str(), found.collection.as_str()), ("/b/0007.jpg", collection.as_str()), "{name}");
        assert_eq!(found.created_at_ms, None, "{name}: Milvus keeps no times");
        assert!(catalog.get(id_of(7) + 1).await.unwrap().is_none(), "{name}");
        let by_uri = catalog.find_by_uri("/b/0007.jpg").await.unwrap().expect("found by path");
        assert_eq!(by_uri.id, id_of(7), "{name}");
        // A quote in a path is a literal, not the end of the expression.
        assert!(catalog.find(&collection, "/b/0007.jpg\" or id > \"0").await.unwrap().is_none(), "{name}");
        // A line break in a path (a legal file name) is looked up, not a refused expression.
        let odd = VectorRow { id: 5, vector: vector(5), uri: "/c/line\nbreak.jpg".into(), content_hash: "odd".into() };
        store.upsert(&collection, &[odd]).await.unwrap();
        let found_odd = catalog.find(&collection, "/c/line\nbreak.jpg").await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(found_odd.map(|r| r.id), Some(5), "{name}");
        let counts = catalog.collections().await.unwrap();
        assert_eq!((counts.len(), counts[0].indexed), (1, ROWS + 1), "{name}: {counts:?}");

        // A path whose derived id is free passes; one whose id a row of another path holds
        // does not (planted: the row's id is the one "/c/clash.jpg" derives to).
        catalog.check_id_free(&collection, "/c/free.jpg").await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let clash_id = uri_id(&collection, "/c/clash.jpg");
        let holder =
            VectorRow { id: clash_id, vector: vector(999), uri: "/c/holder.jpg".into(), content_hash: "h".into() };
        store.upsert(&collection, &[holder]).await.unwrap();
        let refused = catalog.check_id_free(&collection, "/c/clash.jpg").await.unwrap_err();
        assert!(
            matches!(&refused, CatalogError::IdTaken { id, holder, .. } if *id == clash_id && holder == "/c/holder.jpg"),
            "{name}: {refused}"
        );

        // A collection that does not exist yet is empty, not an error (a first ingest).
        let missing = common::unique_collection("missing");
        assert!(catalog.known_images(&missing).await.unwrap().is_empty(), "{name}");
        assert!(catalog.list(&missing, &ListFilter::default(), 0, 10).await.unwrap().is_empty(), "{name}");

        store.drop_collection(&collection).await.unwrap();
    }
}

/// A Milvus that stops answering without closing anything (a hung server, packets dropped by a
/// firewall) must cost a call its patience, not forever: every call is bounded, and the error
/// names the server, the call and the collection.
#[tokio::test]
async fn a_milvus_that_silently_stops_answering_fails_each_call_within_its_patience_on_every_server() {
    for (name, uri) in servers() {
        let upstream = uri.trim_start_matches("http://").to_string();
        let hole = common::outage::Outage::forward_to(upstream).await;
        let store = MilvusStore::connect(&hole.uri(), None).await.unwrap_or_else(|e| panic!("{name}: connect: {e}"));
        store.set_patience(std::time::Duration::from_secs(2));
        let collection = common::unique_collection("hole");
        store.ensure_collection(&collection, DIMENSION, &IndexSpec::default(), None).await.unwrap();
        store.upsert(&collection, &[row(1, 1)]).await.unwrap();
        assert_eq!(store.count(&collection).await.unwrap(), 1, "{name}");

        hole.black_hole();
        for call in ["count", "search", "upsert"] {
            let started = std::time::Instant::now();
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), async {
                match call {
                    "count" => store.count(&collection).await.map(|_| ()),
                    "search" => store.search(&collection, vector(1), 1, &IndexSpec::default()).await.map(|_| ()),
                    _ => store.upsert(&collection, &[row(2, 2)]).await,
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{name}: {call} against a black hole was still waiting after 60 s"));
            let error = outcome.expect_err("nothing answers, so the call cannot succeed");
            let elapsed = started.elapsed();
            let message = error.to_string();
            assert!(
                matches!(error, StoreError::Unanswered { .. } | StoreError::Milvus { .. }),
                "{name}: {call}: {error:?}"
            );
            assert!(message.contains(&hole.uri()) && message.contains(&collection), "{name}: {call}: {message}");
            // The bound is the patience (2 s) plus the outer timeout's 2 s of slack; 1.5 s more
            // for a loaded 2-core machine. The SDK alone would wait minutes.
            let bound = std::time::Duration::from_millis(2_000 + 2_000 + 1_500);
            assert!(elapsed < bound, "{name}: {call} took {elapsed:?}, over its patience's bound of {bound:?}");
        }

        // Back: a new connection works again, and nothing was written meanwhile.
        hole.restore();
        let fresh = MilvusStore::connect(&uri, None).await.unwrap();
        assert_eq!(fresh.count(&collection).await.unwrap(), 1, "{name}: the swallowed upsert must not have landed");
        fresh.drop_collection(&collection).await.unwrap();
    }
}

/// Searches sent at the same moment go to Milvus together (issue 21) and each still gets its own
/// answer: 12 vectors searched at once each find their own row first, while searches with a
/// filter that matches nothing, or another `top_k`, in the same burst get theirs (empty, or
/// shorter), not a neighbour's. Bursts repeat until a request carried more than one vector, so
/// the check is made on grouped requests.
#[tokio::test]
async fn searches_sent_together_are_grouped_and_each_gets_its_own_hits_on_every_server() {
    use imgsearch::store::grouped::GroupedSearches;
    for (name, uri) in servers() {
        let store = MilvusStore::connect(&uri, None).await.unwrap_or_else(|e| panic!("{name}: connect: {e}"));
        let collection = common::unique_collection("grouped");
        let index = IndexSpec::default();
        store.ensure_collection(&collection, DIMENSION, &index, None).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let rows: Vec<VectorRow> = (1..=30).map(|id| row(id, id as u64)).collect();
        store.upsert(&collection, &rows).await.unwrap_or_else(|e| panic!("{name}: upsert: {e}"));
        let searches = GroupedSearches::start(store.clone(), index.clone());
        let nothing = SearchFilter { uri_prefix: Some("/nowhere/".into()), ..Default::default() };
        let everything = SearchFilter::default();
        let mut largest_group = 0;
        for burst in 0..5 {
            let own = (1..=12).map(|id| searches.search(&collection, vector(id), 3, &everything));
            let unmatched = (13..=14).map(|id| searches.search(&collection, vector(id), 3, &nothing));
            let shorter = (15..=16).map(|id| searches.search(&collection, vector(id), 1, &everything));
            let (own, unmatched, shorter) = tokio::join!(
                futures::future::join_all(own),
                futures::future::join_all(unmatched),
                futures::future::join_all(shorter)
            );
            for (id, answer) in (1..=12).zip(own) {
                let answer = answer.unwrap_or_else(|e| panic!("{name}, burst {burst}: search {id}: {e}"));
                largest_group = largest_group.max(answer.group_size);
                assert_eq!(answer.hits.len(), 3, "{name}, burst {burst}: search {id}: {answer:?}");
                assert_eq!(answer.hits[0].id, id as i64, "{name}, burst {burst}: search {id} got {answer:?}");
            }
            for answer in unmatched {
                let answer = answer.unwrap_or_else(|e| panic!("{name}, burst {burst}: a filtered search: {e}"));
                assert!(answer.hits.is_empty(), "{name}, burst {burst}: the filter matches nothing: {answer:?}");
            }
            for (id, answer) in (15..=16).zip(shorter) {
                let answer = answer.unwrap_or_else(|e| panic!("{name}, burst {burst}: search {id}: {e}"));
                assert_eq!(answer.hits.iter().map(|h| h.id).collect::<Vec<_>>(), [id as i64], "{name}, burst {burst}");
            }
            if largest_group > 1 {
                break;
            }
        }
        assert!(largest_group > 1, "{name}: in 5 bursts of 16 searches sent at once none shared a request");
        let gone = searches.search("t_no_such_collection_grouped", vector(1), 3, &everything).await;
        assert!(matches!(gone, Err(StoreError::CollectionNotFound { .. })), "{name}: {gone:?}");
        store.drop_collection(&collection).await.ok();
    }
}
