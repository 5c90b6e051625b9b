//! `kill -9` at any point, then run again: the real `imgsearch ingest` binary is killed at
//! several moments of a run (one of them between the catalog reservation and its `indexed`
//! mark, the window the write order exists for), rerun each time, and finally run to the end.
//! The collection must then hold exactly one vector per image and the catalog agree with it.
//! Likewise when Milvus goes away mid-run: the run fails within its retry budget, names the
//! server, keeps what it wrote, and a rerun finishes the job.

use crate::common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use imgsearch::catalog::{Catalog, ImageStatus};
use imgsearch::store::MilvusStore;
use tokio::process::{Child, Command};

const IMAGES: usize = 150;

fn ingest(folder: &Path, collection: &str, catalog_url: &str) -> Child {
    ingest_via(&common::milvus_uri(), folder, collection, catalog_url, Stdio::null())
}

fn ingest_via(milvus: &str, folder: &Path, collection: &str, catalog_url: &str, stderr: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_imgsearch"))
        .arg("ingest")
        .arg(folder)
        .args(["--collection", collection, "--batch-size", "16", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MILVUS_URI", milvus)
        .env("DATABASE_URL", catalog_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("start imgsearch ingest")
}

struct Counts {
    indexed: i64,
    pending: i64,
    vectors: u64,
}

async fn counts(catalog: &Catalog, milvus: &MilvusStore, collection: &str) -> Counts {
    Counts {
        indexed: catalog.count(collection, ImageStatus::Indexed).await.expect("count indexed"),
        pending: catalog.count(collection, ImageStatus::Pending).await.expect("count pending"),
        vectors: if milvus.has_collection(collection).await.expect("has collection") {
            milvus.count(collection).await.expect("count vectors")
        } else {
            0
        },
    }
}

/// Runs ingest and SIGKILLs it as soon as `when` holds for the catalog; returns whether it was
/// killed (false: the run ended first).
async fn kill_when(
    folder: &Path,
    collection: &str,
    catalog_url: &str,
    catalog: &Catalog,
    when: impl Fn(i64, i64) -> bool,
) -> bool {
    let mut child = ingest(folder, collection, catalog_url);
    // The run either ends or reaches the point; neither within two minutes means it is stuck.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("poll the child").is_some() {
            return false;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ingest neither finished nor reached the point to kill it within 120 s"
        );
        let indexed = catalog.count(collection, ImageStatus::Indexed).await.unwrap_or(0);
        let pending = catalog.count(collection, ImageStatus::Pending).await.unwrap_or(0);
        if when(indexed, pending) {
            child.start_kill().expect("SIGKILL");
            child.wait().await.expect("reap the child");
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `IMAGES` distinct Fashion-MNIST images in `work/images`.
fn fashion_folder(work: &Path) -> std::path::PathBuf {
    let folder = work.join("images");
    std::fs::create_dir_all(&folder).unwrap();
    let images = common::fashion_images(IMAGES / 10);
    assert_eq!(images.len(), IMAGES);
    for (name, file) in images {
        std::fs::copy(&file, folder.join(name)).unwrap();
    }
    folder
}

/// On every catalog backend: each commits its own way (SQLite's file lock, PostgreSQL's and
/// MariaDB's transactions on a server that outlives the killed client).
#[tokio::test]
async fn killed_at_any_point_and_rerun_it_ends_with_one_vector_per_image_on_every_catalog() {
    for backend in common::databases::BACKENDS {
        let database = common::databases::fresh_database(backend, "resume").await;
        killed_and_rerun(&database.url).await;
    }
}

async fn killed_and_rerun(catalog_url: &str) {
    let catalog_url = catalog_url.to_string();
    let work = tempfile::tempdir().unwrap();
    let folder = fashion_folder(work.path());
    let collection = common::unique_collection("resume");
    let catalog = Catalog::open(&catalog_url).await.unwrap();
    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.unwrap();
    let total = IMAGES as i64;

    // 1. Between reserving a batch and marking it indexed: the vectors may or may not be in
    //    Milvus. A kill can just miss the window, so up to three runs try to hit it.
    let mut hit_the_window = false;
    for _ in 0..3 {
        let killed = kill_when(&folder, &collection, &catalog_url, &catalog, |_, pending| pending > 0).await;
        let now = counts(&catalog, &milvus, &collection).await;
        assert!(killed && now.indexed < total, "the run ended before it could be killed");
        assert!(now.vectors >= now.indexed as u64 && now.vectors <= (now.indexed + now.pending) as u64);
        if now.pending > 0 {
            hit_the_window = true;
            break;
        }
    }
    assert!(hit_the_window, "{catalog_url}: no kill landed between a reservation and its indexed mark");

    // 2. and 3. Later in the run, wherever the process happens to be.
    for fraction in [3, 2] {
        let killed =
            kill_when(&folder, &collection, &catalog_url, &catalog, |indexed, _| indexed >= total / fraction).await;
        let now = counts(&catalog, &milvus, &collection).await;
        assert!(killed && now.indexed < total, "the run ended before it could be killed");
        assert!(now.vectors >= now.indexed as u64 && now.vectors <= (now.indexed + now.pending) as u64);
    }

    // The last run finishes what is left and redoes what was pending.
    let output =
        common::wait_within(ingest(&folder, &collection, &catalog_url), Duration::from_secs(300), "the final run")
            .await;
    assert!(output.status.success(), "the final run failed");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(report["discovered"], IMAGES);
    assert_eq!(report["failed"], 0);
    let skipped = report["skipped"].as_u64().unwrap();
    assert!(skipped > 0 && skipped < IMAGES as u64, "earlier runs' work was kept: {report}");
    assert_eq!(report["indexed"].as_u64().unwrap() + skipped, IMAGES as u64);

    let end = counts(&catalog, &milvus, &collection).await;
    assert_eq!(
        (end.indexed, end.pending, end.vectors),
        (total, 0, IMAGES as u64),
        "{catalog_url}: one vector per image"
    );
    milvus.drop_collection(&collection).await.unwrap();
}

#[tokio::test]
async fn milvus_going_away_mid_run_fails_clearly_and_a_rerun_finishes_the_job() {
    let work = tempfile::tempdir().unwrap();
    let folder = fashion_folder(work.path());
    let collection = common::unique_collection("outage");
    let catalog_url = format!("sqlite://{}", work.path().join("catalog.db").display());
    let catalog = Catalog::open(&catalog_url).await.unwrap();
    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.unwrap();
    let outage = common::outage::Outage::forward_to(common::milvus_uri().trim_start_matches("http://").into()).await;

    let mut child = ingest_via(&outage.uri(), &folder, &collection, &catalog_url, Stdio::piped());
    common::wait_for_first_indexed(&mut child, &catalog, &collection).await;
    outage.cut();
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the run hung after Milvus went away")
        .unwrap();
    let waited = started.elapsed();
    assert!(!output.status.success(), "the run cannot succeed without Milvus");
    // Bounded by one call's patience (the default 20 s, plus the outer timeout's 2 s of
    // slack) and the batch in flight, not minutes: 8 s of room for that batch and the exit.
    let bound = imgsearch::store::DEFAULT_PATIENCE + Duration::from_secs(2 + 8);
    assert!(waited < bound, "gave up only after {waited:?}, over one call's bound of {bound:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&outage.address.to_string()), "the error names the Milvus address: {stderr}");
    let partial = counts(&catalog, &milvus, &collection).await;
    assert!(partial.indexed > 0 && partial.indexed < IMAGES as i64, "work done before the outage is kept");
    assert!(partial.vectors >= partial.indexed as u64 && partial.vectors <= (partial.indexed + partial.pending) as u64);

    outage.restore();
    let output = common::wait_within(
        ingest_via(&outage.uri(), &folder, &collection, &catalog_url, Stdio::piped()),
        Duration::from_secs(300),
        "the rerun after Milvus came back",
    )
    .await;
    assert!(output.status.success(), "the rerun failed: {}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(report["skipped"].as_i64().unwrap(), partial.indexed, "the rerun keeps the earlier work: {report}");
    let end = counts(&catalog, &milvus, &collection).await;
    assert_eq!((end.indexed, end.pending, end.vectors), (IMAGES as i64, 0, IMAGES as u64));
    milvus.drop_collection(&collection).await.unwrap();
}
