//! The catalog on every backend it supports, one suite: SQLite (a temp file), PostgreSQL and
//! MariaDB (real servers started by scripts/test-databases.sh, which `make test` runs). Each
//! scenario runs on all three, each time in a database of its own.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::databases::{BACKENDS, fresh_database};
use common::outage::Outage;
use imgsearch::catalog::{Backend, Catalog, CatalogError, ImageStatus, ListFilter, NewImage};

async fn open(backend: Backend, purpose: &str) -> (common::databases::TestDatabase, Catalog) {
    let database = fresh_database(backend, purpose).await;
    let catalog =
        Catalog::open(&database.url).await.unwrap_or_else(|e| panic!("{backend:?}: open {}: {e}", database.url));
    assert_eq!(catalog.backend(), Some(backend));
    (database, catalog)
}

fn image(uri: &str, hash: &str) -> NewImage {
    NewImage { uri: uri.into(), content_hash: hash.into(), size_bytes: 10, width: 2, height: 3 }
}

#[tokio::test]
async fn reserving_a_known_uri_keeps_its_id_and_resets_it_to_pending() {
    for backend in BACKENDS {
        let (_db, catalog) = open(backend, "reserve").await;
        let ids = catalog.reserve("c", &[image("/a.jpg", "h1"), image("/b.jpg", "h2")]).await.unwrap();
        assert_ne!(ids[0], ids[1], "{backend:?}");
        catalog.mark_indexed(&ids).await.unwrap();
        assert_eq!(catalog.count("c", ImageStatus::Indexed).await.unwrap(), 2, "{backend:?}");
        let again = catalog.reserve("c", &[image("/b.jpg", "h3")]).await.unwrap();
        assert_eq!(again, vec![ids[1]], "{backend:?}: a known URI keeps its id");
        let b = catalog.get(ids[1]).await.unwrap().expect("row");
        assert_eq!((b.status, b.content_hash.as_deref()), (ImageStatus::Pending, Some("h3")), "{backend:?}");
        assert_eq!((b.width, b.height, b.size_bytes), (Some(2), Some(3), Some(10)), "{backend:?}");
        assert_eq!(catalog.count("c", ImageStatus::Indexed).await.unwrap(), 1, "{backend:?}");
        let known = catalog.known_images("c").await.unwrap();
        assert_eq!(known.len(), 2, "{backend:?}");
        assert_eq!(known["/a.jpg"].status, ImageStatus::Indexed, "{backend:?}");
    }
}

#[tokio::test]
async fn the_same_uri_in_two_collections_is_two_images() {
    for backend in BACKENDS {
        let (_db, catalog) = open(backend, "collections").await;
        let a = catalog.reserve("one", &[image("/a.jpg", "h")]).await.unwrap();
        let b = catalog.reserve("two", &[image("/a.jpg", "h")]).await.unwrap();
        assert_ne!(a, b, "{backend:?}");
        assert_eq!(catalog.find("two", "/a.jpg").await.unwrap().map(|r| r.id), Some(b[0]), "{backend:?}");
        assert_eq!(catalog.find_by_uri("/a.jpg").await.unwrap().map(|r| r.id), Some(a[0]), "{backend:?}");
        assert_eq!(catalog.delete_collection("one").await.unwrap(), 1, "{backend:?}");
        assert!(catalog.get(a[0]).await.unwrap().is_none(), "{backend:?}");
        assert!(catalog.get(b[0]).await.unwrap().is_some(), "{backend:?}");
        assert_eq!(catalog.delete_images(&b).await.unwrap(), 1, "{backend:?}");
        assert!(catalog.get(b[0]).await.unwrap().is_none(), "{backend:?}");
    }
}

#[tokio::test]
async fn failures_keep_their_reason_and_a_fixed_image_is_reserved_again() {
    for backend in BACKENDS {
        let (_db, catalog) = open(backend, "failures").await;
        let id = catalog.record_failure("c", "/bad.jpg", Some("h"), Some(0), "the file is empty").await.unwrap();
        let row = catalog.get(id).await.unwrap().expect("row");
        assert_eq!((row.status, row.error.as_deref()), (ImageStatus::Failed, Some("the file is empty")), "{backend:?}");
        assert_eq!((row.width, row.height), (None, None), "{backend:?}");
        assert_eq!(catalog.failures("c").await.unwrap().len(), 1, "{backend:?}");
        assert_eq!(catalog.known_images("c").await.unwrap()["/bad.jpg"].status, ImageStatus::Failed, "{backend:?}");
        // Failing again keeps the id; fixing the file makes it pending with the error gone.
        assert_eq!(catalog.record_failure("c", "/bad.jpg", None, None, "unreadable").await.unwrap(), id);
        assert_eq!(catalog.reserve("c", &[image("/bad.jpg", "h2")]).await.unwrap(), vec![id], "{backend:?}");
        let row = catalog.get(id).await.unwrap().expect("row");
        assert_eq!((row.status, row.error), (ImageStatus::Pending, None), "{backend:?}");
        assert!(catalog.failures("c").await.unwrap().is_empty(), "{backend:?}");
    }
}

/// URIs are compared exactly (MySQL's default collation would make these one image) and may be
/// long and incompressible (an InnoDB index cannot hold a whole TEXT column; a PostgreSQL
/// B-tree entry must stay under 2.7 kB).
#[tokio::test]
async fn uris_are_exact_and_may_be_long() {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let random: String = (0..4000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(ALPHABET[(state % 64) as usize])
        })
        .collect();
    let long = format!("s3://bucket/{random}.jpg");
    let uris = ["/A.jpg", "/a.jpg", "/a.jpg ", "/café.jpg", "/cafe\u{301}.jpg", long.as_str()];
    for backend in BACKENDS {
        let (_db, catalog) = open(backend, "uris").await;
        let images: Vec<NewImage> = uris.iter().map(|u| image(u, "h")).collect();
        let ids = catalog.reserve("c", &images).await.unwrap();
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), uris.len(), "{backend:?}: every URI is its own image");
        for (uri, id) in uris.iter().zip(&ids) {
            let found =
                catalog.find("c", uri).await.unwrap().unwrap_or_else(|| panic!("{backend:?}: {uri:?} not found"));
            assert_eq!((found.id, found.uri.as_str()), (*id, *uri), "{backend:?}");
        }
    }
}

#[tokio::test]
async fn several_processes_may_open_a_fresh_catalog_at_once() {
    for backend in BACKENDS {
        let database = fresh_database(backend, "concurrent_open").await;
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = database.url.clone();
                tokio::spawn(async move { Catalog::open(&url).await.map(|_| ()) })
            })
            .collect();
        for open in opens {
            open.await.expect("task").unwrap_or_else(|e| panic!("{backend:?}: a concurrent open failed: {e}"));
        }
    }
}

/// As an Indexed Job's pods do: writers reserving at once, their URI sets overlapping. Every
/// URI ends up exactly once, every writer got the same id for it, and no row is lost.
#[tokio::test]
async fn parallel_writers_produce_no_duplicates_and_lose_no_rows() {
    const WRITERS: usize = 4;
    const OWN: usize = 60;
    const SHARED: usize = 40;
    for backend in [Backend::Postgres, Backend::MySql, Backend::Sqlite] {
        let (db, _) = open(backend, "parallel").await;
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let url = db.url.clone();
                tokio::spawn(async move {
                    // Each writer is a process of its own in a cluster: its own pool.
                    let catalog = Catalog::open(&url).await.expect("open");
                    let mut uris: Vec<String> = (0..OWN).map(|i| format!("/w{writer}/{i}.jpg")).collect();
                    uris.extend((0..SHARED).map(|i| format!("/shared/{i}.jpg")));
                    // Writers go through the shared URIs in different orders: the deadlock-prone case.
                    uris.rotate_left(writer * 7);
                    let mut ids = HashMap::new();
                    for batch in uris.chunks(8) {
                        let images: Vec<NewImage> = batch.iter().map(|u| image(u, "h")).collect();
                        let reserved = catalog.reserve("c", &images).await.expect("reserve");
                        catalog.mark_indexed(&reserved).await.expect("mark indexed");
                        ids.extend(batch.iter().cloned().zip(reserved));
                    }
                    ids
                })
            })
            .collect();
        let mut seen: HashMap<String, i64> = HashMap::new();
        for writer in writers {
            for (uri, id) in writer.await.expect("writer task") {
                let first = *seen.entry(uri.clone()).or_insert(id);
                assert_eq!(first, id, "{backend:?}: {uri} got two ids");
            }
        }
        let expected = WRITERS * OWN + SHARED;
        assert_eq!(seen.len(), expected);
        assert_eq!(seen.values().collect::<HashSet<_>>().len(), expected, "{backend:?}: ids are unique");
        let catalog = Catalog::open(&db.url).await.expect("open");
        let known = catalog.known_images("c").await.unwrap();
        assert_eq!(known.len(), expected, "{backend:?}: one row per URI");
        assert_eq!(catalog.count("c", ImageStatus::Indexed).await.unwrap(), expected as i64, "{backend:?}");
        for (uri, id) in &seen {
            assert_eq!(known[uri].id, *id, "{backend:?}: {uri}");
        }
    }
}

/// The server goes away in the middle of a batch: the write is retried with backoff, then fails
/// with a clear error; none of the batch is written (one transaction); back up, writes succeed.
#[tokio::test]
async fn a_lost_connection_is_retried_then_reported_and_nothing_is_half_written() {
    for backend in [Backend::Postgres, Backend::MySql] {
        let database = fresh_database(backend, "outage").await;
        let (scheme_and_user, rest) = database.url.rsplit_once('@').expect("URL with a host");
        let (address, name) = rest.split_once('/').expect("URL with a database");
        let outage = Outage::forward_to(address.to_string()).await;
        let url = format!("{scheme_and_user}@{}/{name}", outage.address);
        let catalog = Catalog::open(&url).await.expect("open through the forwarder");
        let first = catalog.reserve("c", &[image("/before.jpg", "h")]).await.expect("write while up");

        // A batch of about 150 kB of statements, cut once 30 kB of it have gone through: inside
        // its transaction however fast or slow the machine is (a clock would not know).
        let images: Vec<NewImage> = (0..3000).map(|i| image(&format!("/during/{i}.jpg"), "h")).collect();
        let before = outage.sent();
        let cutting = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while outage.sent() < before + 30_000 {
                assert!(tokio::time::Instant::now() < deadline, "{backend:?}: the batch did not send 30 kB in 30 s");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            outage.cut();
        };
        let started = std::time::Instant::now();
        let (result, ()) = tokio::join!(catalog.reserve("c", &images), cutting);
        let error = result.expect_err("the server went away mid-transaction");
        assert!(matches!(error, CatalogError::GaveUp { attempts: 5, .. }), "{backend:?}: {error}");
        assert!(error.to_string().contains("reserve failed after 5 attempts"), "{error}");
        assert!(started.elapsed() > Duration::from_millis(1400), "{backend:?}: retried with backoff");

        outage.restore();
        let catalog = Catalog::open(&url).await.expect("open again");
        let known = catalog.known_images("c").await.unwrap();
        assert_eq!(known.keys().collect::<Vec<_>>(), vec!["/before.jpg"], "{backend:?}: nothing half-written");
        assert_eq!(known["/before.jpg"].id, first[0]);
        assert_eq!(catalog.reserve("c", &images).await.expect("write after the outage").len(), 3000);
    }
}

#[tokio::test]
async fn listings_page_in_id_order_and_filter_by_byte_prefix_and_status() {
    for backend in BACKENDS {
        let (db, catalog) = open(backend, "listing").await;
        if backend == Backend::Postgres {
            // A linguistic collation, as many databases have by default: "/p/A_B/" sorts between
            // "/p/a_b/" and "/p/a_b0" there. Prefixes must still mean bytes.
            let pool = sqlx::postgres::PgPool::connect(&db.url).await.unwrap();
            sqlx::query(r#"ALTER TABLE images ALTER COLUMN uri TYPE TEXT COLLATE "und-x-icu""#)
                .execute(&pool)
                .await
                .expect("PostgreSQL with ICU collations");
        }
        let uris = ["/p/a-b/1.jpg", "/p/ab/2.jpg", "/p/a_b/3.jpg", "/p/A_B/4.jpg", "/p/a%b/5.jpg", "/q/6.jpg"];
        let images: Vec<NewImage> = uris.iter().map(|uri| image(uri, "h")).collect();
        let ids = catalog.reserve("c", &images).await.unwrap();
        catalog.mark_indexed(&ids[..5]).await.unwrap();
        catalog.reserve("other", &[image("/p/a_b/other.jpg", "h")]).await.unwrap();
        let failed = catalog.record_failure("c", "/p/a_b/bad.jpg", None, None, "corrupt").await.unwrap();

        let list = |prefix: Option<&str>, status: Option<ImageStatus>, after: i64, limit: u32| {
            let filter = ListFilter { status, uri_prefix: prefix.map(str::to_string) };
            let catalog = &catalog;
            async move {
                let rows = catalog.list("c", &filter, after, limit).await.unwrap();
                rows.iter().map(|r| r.uri.clone()).collect::<Vec<_>>()
            }
        };
        assert_eq!(list(Some("/p/a_b/"), None, 0, 100).await, vec!["/p/a_b/3.jpg", "/p/a_b/bad.jpg"], "{backend:?}");
        assert_eq!(
            list(Some("/p/a_b/"), Some(ImageStatus::Indexed), 0, 100).await,
            vec!["/p/a_b/3.jpg"],
            "{backend:?}"
        );
        assert_eq!(list(Some("/p/a%b/"), None, 0, 100).await, vec!["/p/a%b/5.jpg"], "{backend:?}");
        assert_eq!(list(Some("/p/a"), None, 0, 100).await.len(), 5, "{backend:?}: not /p/A_B/");
        assert_eq!(list(Some("/p/A"), None, 0, 100).await, vec!["/p/A_B/4.jpg"], "{backend:?}");
        assert_eq!(list(None, Some(ImageStatus::Pending), 0, 100).await, vec!["/q/6.jpg"], "{backend:?}");

        // Pages by id: two at a time, every row once, in id order.
        let mut after = 0;
        let mut paged = Vec::new();
        loop {
            let page = catalog.list("c", &ListFilter::default(), after, 2).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.id;
            paged.extend(page.iter().map(|r| r.id));
        }
        let mut expected = ids.clone();
        expected.push(failed);
        assert_eq!(paged, expected, "{backend:?}");

        let collections = catalog.collections().await.unwrap();
        let summary: Vec<(String, i64, i64, i64)> =
            collections.into_iter().map(|c| (c.name, c.indexed, c.pending, c.failed)).collect();
        assert_eq!(summary, vec![("c".into(), 5, 1, 1), ("other".into(), 0, 1, 0)], "{backend:?}");
    }
}
