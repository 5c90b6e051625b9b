//! Ingest end to end with the catalog on each backend (SQLite, PostgreSQL, MariaDB), as an
//! Indexed Job's pods share it: shards at once, a rerun, a prune; Milvus and the catalog agree.

use crate::common;

use common::databases::{BACKENDS, fresh_database};
use imgsearch::catalog::{Catalog, ImageStatus};
use imgsearch::ingest::IngestOptions;
use imgsearch::progress::Progress;
use imgsearch::source::Shard;

#[tokio::test]
async fn shards_rerun_and_prune_agree_with_milvus_on_every_catalog_backend() {
    let work = tempfile::tempdir().unwrap();
    let fashion = common::fashion_images(4);
    let total = fashion.len() as u64;
    for backend in BACKENDS {
        let images = work.path().join(format!("{backend:?}"));
        std::fs::create_dir_all(&images).unwrap();
        for (name, path) in &fashion {
            std::fs::copy(path, images.join(name)).unwrap();
        }
        let database = fresh_database(backend, "ingest").await;
        let catalog = Catalog::open(&database.url).await.expect("open the catalog");
        let base = common::index(work.path()).await;
        let index = base.with_catalog(catalog);
        let collection = common::unique_collection("backend");
        let shard = |index: u32, prune: bool| IngestOptions {
            shard: Shard::new(index, 2).expect("shard"),
            prune,
            ..common::options(&collection)
        };
        let run = |options: IngestOptions| {
            let (index, images) = (index.clone(), images.clone());
            async move {
                imgsearch::ingest::run_directory(&index, &images, &options, &Progress::silent()).await.expect("ingest")
            }
        };

        let (first, second) = tokio::join!(run(shard(0, false)), run(shard(1, false)));
        assert_eq!(first.indexed + second.indexed, total, "{backend:?}: {first:?} {second:?}");
        let rerun = run(shard(0, false)).await;
        assert_eq!((rerun.indexed, rerun.skipped), (0, first.indexed), "{backend:?}: a rerun skips its shard");

        let gone: Vec<_> = std::fs::read_dir(&images).unwrap().take(3).map(|e| e.unwrap().path()).collect();
        for path in &gone {
            std::fs::remove_file(path).unwrap();
        }
        let (first, second) = tokio::join!(run(shard(0, true)), run(shard(1, true)));
        assert_eq!(first.pruned + second.pruned, 3, "{backend:?}");
        assert_eq!(index.store().count(&collection).await.unwrap(), total - 3, "{backend:?}: Milvus");
        assert_eq!(
            index.catalog().count(&collection, ImageStatus::Indexed).await.unwrap(),
            (total - 3) as i64,
            "{backend:?}: the catalog agrees"
        );
        index.store().drop_collection(&collection).await.expect("drop the test collection");
    }
}
