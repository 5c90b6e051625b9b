//! Ingest a folder into the real Milvus Lite and SQLite with the real model, then search it.

#[path = "../common/mod.rs"]
mod common;
// One test binary for ingest (fewer binaries link faster): each kind of run in its module.
mod backends;
mod resume;

use common::copy_photos;
use image::ImageFormat;
use imgsearch::catalog::ImageStatus;
use imgsearch::progress::Progress;

async fn search_top(
    index: &imgsearch::index::ImageIndex,
    collection: &str,
    bytes: &[u8],
) -> Vec<imgsearch::store::Hit> {
    let (_, vector) = index.model().embed_bytes(bytes, index.limits()).expect("query image embeds");
    index.store().search(collection, vector, 3, index.index_spec()).await.expect("search")
}

#[tokio::test]
async fn ingesting_a_folder_indexes_every_image_and_counts_match() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(images.join("nested")).unwrap();
    copy_photos(&["astronaut.jpg", "coffee.jpg", "rocket.jpg"], &images);
    std::fs::copy(common::photo("chelsea.jpg"), images.join("nested/chelsea.jpg")).unwrap();
    let index = common::index(work.path()).await;
    let collection = common::unique_collection("count");

    let report = imgsearch::ingest::run_directory(&index, &images, &common::options(&collection), &Progress::silent())
        .await
        .expect("ingest");

    assert_eq!((report.discovered, report.indexed, report.skipped, report.failed), (4, 4, 0, 0), "{report:?}");
    assert_eq!(index.store().count(&collection).await.unwrap(), 4);
    assert_eq!(index.catalog().count(&collection, ImageStatus::Indexed).await.unwrap(), 4);
}

#[tokio::test]
async fn a_flipped_cropped_or_reencoded_copy_finds_its_original_first() {
    let work = tempfile::tempdir().unwrap();
    // Every sample photo but the near-identical stereo pair motorcycle_left/right.
    let names: Vec<String> = std::fs::read_dir(common::sample_dir().join("photos"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with("motorcycle"))
        .collect();
    assert!(names.len() >= 12, "expected the sample photos, found {names:?}");
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    copy_photos(&names.iter().map(String::as_str).collect::<Vec<_>>(), &images);
    let index = common::index(work.path()).await;
    let collection = common::unique_collection("variants");
    imgsearch::ingest::run_directory(&index, &images, &common::options(&collection), &Progress::silent())
        .await
        .expect("ingest");

    let mut misses = Vec::new();
    for name in names.iter().map(String::as_str) {
        let original = image::open(common::photo(name)).expect("open sample photo");
        let (w, h) = (original.width(), original.height());
        let variants = [
            ("flipped", common::encode(&original.fliph(), ImageFormat::Png)),
            ("cropped", common::encode(&original.crop_imm(w / 10, h / 10, w * 8 / 10, h * 8 / 10), ImageFormat::Png)),
            ("re-encoded", common::encode_jpeg(&original, 40)),
        ];
        for (variant, bytes) in variants {
            let hits = search_top(&index, &collection, &bytes).await;
            let top = hits.first().expect("at least one hit");
            // Known miss, kept visible here and in the README: an 80 % crop of brick.jpg, a
            // uniform texture with no object, ranks another texture (cell.jpg) first.
            if (variant, name) == ("cropped", "brick.jpg") {
                continue;
            }
            if !top.uri.ends_with(&format!("/{name}")) {
                misses.push(format!("{variant} {name}: top hit was {} ({:.3})", top.uri, top.score));
            }
        }
    }
    assert!(misses.is_empty(), "{misses:#?}");
}

#[tokio::test]
async fn bad_files_are_recorded_as_failed_and_good_ones_still_indexed() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    copy_photos(&["coffee.jpg", "rocket.jpg"], &images);
    std::fs::write(images.join("corrupt.jpg"), common::corrupt_jpeg()).unwrap();
    std::fs::write(images.join("empty.jpg"), b"").unwrap();
    std::fs::write(images.join("notes.jpg"), b"shopping list: milk, eggs\n").unwrap();
    std::fs::write(images.join("bomb.png"), common::png_claiming(100_000, 100_000)).unwrap();
    // A CMYK JPEG that panics zune-jpeg (found by `make fuzz`): before, it stopped the whole run.
    std::fs::copy(common::fuzz_regression("decode", "zune-upsampler-panic.jpg"), images.join("cmyk.jpg")).unwrap();
    let index = common::index(work.path()).await;
    let collection = common::unique_collection("bad");

    let report = imgsearch::ingest::run_directory(&index, &images, &common::options(&collection), &Progress::silent())
        .await
        .expect("a run with bad files still succeeds");

    assert_eq!((report.indexed, report.failed), (2, 5), "{}", report.summary());
    let reason = |file: &str| {
        report
            .failures
            .iter()
            .find(|f| f.uri.ends_with(file))
            .map(|f| f.reason.clone())
            .unwrap_or_else(|| panic!("{file} not reported"))
    };
    assert!(reason("corrupt.jpg").contains("corrupt or truncated JPEG"), "{}", reason("corrupt.jpg"));
    assert_eq!(reason("empty.jpg"), "the file is empty");
    assert!(reason("notes.jpg").starts_with("not a supported image"), "{}", reason("notes.jpg"));
    assert!(reason("bomb.png").contains("100000×100000"), "{}", reason("bomb.png"));
    assert!(reason("cmyk.jpg").contains("the decoder failed"), "{}", reason("cmyk.jpg"));
    // The catalog keeps each failure with its reason; Milvus only holds the good images.
    let failures = index.catalog().failures(&collection).await.unwrap();
    assert_eq!(failures.len(), 5);
    assert!(failures.iter().all(|f| f.error.as_deref().is_some_and(|e| !e.is_empty())));
    assert_eq!(index.store().count(&collection).await.unwrap(), 2);
    assert!(report.summary().contains("failed: "), "{}", report.summary());
}

#[tokio::test]
async fn running_ingest_again_adds_nothing_and_says_so() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    copy_photos(&["astronaut.jpg", "coffee.jpg", "rocket.jpg"], &images);
    std::fs::write(images.join("empty.jpg"), b"").unwrap();
    let index = common::index(work.path()).await;
    let collection = common::unique_collection("rerun");
    imgsearch::ingest::run_directory(&index, &images, &common::options(&collection), &Progress::silent())
        .await
        .expect("first run");

    let again = imgsearch::ingest::run_directory(&index, &images, &common::options(&collection), &Progress::silent())
        .await
        .expect("second run");

    assert_eq!((again.discovered, again.indexed, again.skipped, again.failed), (4, 0, 4, 0), "{again:?}");
    assert!(again.summary().contains("nothing new to add"), "{}", again.summary());
    assert_eq!(index.store().count(&collection).await.unwrap(), 3);
}

#[tokio::test]
async fn a_changed_image_replaces_its_vector_instead_of_adding_one() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    copy_photos(&["astronaut.jpg", "coffee.jpg"], &images);
    let index = common::index(work.path()).await;
    let collection = common::unique_collection("changed");
    imgsearch::ingest::run_directory(&index, &images, &common::options(&collection), &Progress::silent())
        .await
        .expect("first run");

    // Same name, new picture: coffee.jpg now holds the rocket.
    std::fs::copy(common::photo("rocket.jpg"), images.join("coffee.jpg")).unwrap();
    let again = imgsearch::ingest::run_directory(&index, &images, &common::options(&collection), &Progress::silent())
        .await
        .expect("second run");

    assert_eq!((again.indexed, again.skipped), (1, 1), "{again:?}");
    assert_eq!(index.store().count(&collection).await.unwrap(), 2);
    let rocket = std::fs::read(common::photo("rocket.jpg")).unwrap();
    let top = &search_top(&index, &collection, &rocket).await[0];
    assert!(top.uri.ends_with("/coffee.jpg") && top.score > 0.99, "{top:?}");
}

#[tokio::test]
async fn an_invalid_collection_name_is_refused_before_anything_is_written() {
    let work = tempfile::tempdir().unwrap();
    let index = common::index(work.path()).await;
    let err = imgsearch::ingest::run_directory(&index, work.path(), &common::options("../../etc"), &Progress::silent())
        .await
        .expect_err("invalid name");
    assert!(err.to_string().contains("invalid collection name"), "{err}");
}

#[tokio::test]
async fn shards_sharing_a_catalog_cover_every_image_exactly_once() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    // 40 distinct small images: enough for both shards to get some.
    let fashion = common::sample_dir().join("fashion/bag");
    let mut names: Vec<_> = std::fs::read_dir(&fashion).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for path in names.iter().take(40) {
        std::fs::copy(path, images.join(path.file_name().unwrap())).unwrap();
    }
    let index = common::index(work.path()).await;
    let collection = common::unique_collection("shards");
    let run = |shard: u32| {
        let options = imgsearch::ingest::IngestOptions {
            shard: imgsearch::source::Shard::new(shard, 2).unwrap(),
            ..common::options(&collection)
        };
        let (index, images) = (index.clone(), images.clone());
        async move {
            imgsearch::ingest::run_directory(&index, &images, &options, &Progress::silent())
                .await
                .expect("ingest shard")
        }
    };
    // Both shards at once, as an Indexed Job's pods would run.
    let (first, second) = tokio::join!(run(0), run(1));

    assert_eq!(first.discovered + second.discovered, 40, "{first:?} {second:?}");
    assert!(first.discovered > 0 && second.discovered > 0, "both shards had work");
    assert_eq!((first.indexed + second.indexed, first.failed + second.failed), (40, 0));
    assert_eq!(index.store().count(&collection).await.unwrap(), 40);
    assert_eq!(index.catalog().count(&collection, ImageStatus::Indexed).await.unwrap(), 40);
}

#[tokio::test]
async fn prune_removes_only_images_gone_from_the_folder() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    // A name the folder's is a prefix of: a prune by string prefix would reach into it.
    let elsewhere = work.path().join("images-elsewhere");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    copy_photos(&["astronaut.jpg", "coffee.jpg", "rocket.jpg", "chelsea.jpg"], &images);
    copy_photos(&["camera.jpg"], &elsewhere);
    let index = common::index(work.path()).await;
    let collection = common::unique_collection("prune");
    let pruning = imgsearch::ingest::IngestOptions { prune: true, ..common::options(&collection) };
    imgsearch::ingest::run_directory(&index, &images, &pruning, &Progress::silent()).await.expect("ingest");
    // Another folder in the same collection: not this folder's to prune.
    imgsearch::ingest::run_directory(&index, &elsewhere, &pruning, &Progress::silent())
        .await
        .expect("ingest elsewhere");
    // An upload, stored as the search API stores one (a row of its own, in the upload folder),
    // here too under a name the folder's is a prefix of.
    let upload_bytes = std::fs::read(common::photo("rocket.jpg")).unwrap();
    let (prepared, vector) = index.model().embed_bytes(&upload_bytes, index.limits()).expect("the upload embeds");
    let upload_uri = work.path().canonicalize().unwrap().join("images-uploads/upload.jpg").display().to_string();
    let upload = imgsearch::catalog::NewImage {
        uri: upload_uri.clone(),
        content_hash: "upload".into(),
        size_bytes: upload_bytes.len() as i64,
        width: i64::from(prepared.width),
        height: i64::from(prepared.height),
    };
    index.add_embedded(&collection, upload, vector).await.expect("the upload is indexed");
    assert_eq!(index.store().count(&collection).await.unwrap(), 6);

    std::fs::remove_file(images.join("coffee.jpg")).unwrap();
    std::fs::remove_file(images.join("rocket.jpg")).unwrap();
    let without_prune =
        imgsearch::ingest::run_directory(&index, &images, &common::options(&collection), &Progress::silent())
            .await
            .expect("rerun");
    assert_eq!(without_prune.pruned, 0);
    assert_eq!(index.store().count(&collection).await.unwrap(), 6, "nothing removed without --prune");

    let report = imgsearch::ingest::run_directory(&index, &images, &pruning, &Progress::silent()).await.expect("prune");
    assert_eq!((report.pruned, report.skipped, report.indexed), (2, 2, 0), "{}", report.summary());
    assert!(report.summary().contains("2 gone from the source removed"), "{}", report.summary());
    assert_eq!(index.store().count(&collection).await.unwrap(), 4);
    assert_eq!(index.catalog().count(&collection, ImageStatus::Indexed).await.unwrap(), 4);
    assert!(index.catalog().find(&collection, &upload_uri).await.unwrap().is_some(), "the upload is kept");
    let coffee = images.canonicalize().unwrap().join("coffee.jpg");
    assert!(index.catalog().find(&collection, &coffee.to_string_lossy()).await.unwrap().is_none());
    let camera = elsewhere.canonicalize().unwrap().join("camera.jpg");
    assert!(index.catalog().find(&collection, &camera.to_string_lossy()).await.unwrap().is_some(), "kept");
    // The removed photo no longer matches its own picture.
    let hits = search_top(&index, &collection, &std::fs::read(common::photo("coffee.jpg")).unwrap()).await;
    assert!(hits.iter().all(|h| !h.uri.ends_with("coffee.jpg")), "{hits:?}");
}

/// Prune marks the rows pending, deletes from Milvus, then from the catalog. A process killed
/// between the two deletes leaves catalog rows whose vectors are gone; the next prune must find
/// those rows again and finish, and a file that came back meanwhile must be embedded again, not
/// skipped as indexed (which is what the soak caught: a row `indexed` with no vector, never
/// searchable again). The catalog here refuses the delete (a trigger in the test's own SQLite
/// file), which leaves exactly the state such a kill leaves, at a known point instead of a
/// raced one.
/// An ingest Job's run names the ImageCollection it works for; a collection recorded as another
/// object's is refused before anything is listed, written or pruned.
#[tokio::test]
async fn an_ingest_for_one_object_never_prunes_a_collection_another_object_owns() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    copy_photos(&["astronaut.jpg", "coffee.jpg", "rocket.jpg"], &images);
    let index = common::index(work.path()).await;
    let collection = common::unique_collection("owned");
    let owner = |object: &str| Some(imgsearch::store::CollectionOwner { object: object.into(), uid: None });
    let owners =
        imgsearch::ingest::IngestOptions { prune: true, owner: owner("a-b/c"), ..common::options(&collection) };
    imgsearch::ingest::run_directory(&index, &images, &owners, &Progress::silent()).await.expect("ingest");
    assert_eq!(index.store().count(&collection).await.unwrap(), 3);

    std::fs::remove_file(images.join("coffee.jpg")).unwrap();
    let other = imgsearch::ingest::IngestOptions { owner: owner("a/b-c"), ..owners.clone() };
    let refused = imgsearch::ingest::run_directory(&index, &images, &other, &Progress::silent())
        .await
        .expect_err("another owner");
    assert!(format!("{refused:#}").contains("belongs to ImageCollection a-b/c"), "{refused:#}");
    assert_eq!(index.store().count(&collection).await.unwrap(), 3, "nothing pruned");
    assert_eq!(index.catalog().count(&collection, ImageStatus::Indexed).await.unwrap(), 3, "no catalog row deleted");
    let report = imgsearch::ingest::run_directory(&index, &images, &owners, &Progress::silent())
        .await
        .expect("the owner's prune");
    assert_eq!(report.pruned, 1, "{}", report.summary());
}

#[tokio::test]
async fn a_prune_stopped_between_the_milvus_and_the_catalog_delete_is_finished_by_the_next_one() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    copy_photos(&["astronaut.jpg", "coffee.jpg", "rocket.jpg", "chelsea.jpg", "camera.jpg"], &images);
    let index = common::index(work.path()).await;
    let collection = common::unique_collection("prune_cut");
    let pruning = imgsearch::ingest::IngestOptions { prune: true, ..common::options(&collection) };
    imgsearch::ingest::run_directory(&index, &images, &pruning, &Progress::silent()).await.expect("ingest");
    assert_eq!(index.store().count(&collection).await.unwrap(), 5);

    let catalog_file = format!("sqlite://{}", work.path().join("catalog.db").display());
    let mut sql = <sqlx::SqliteConnection as sqlx::Connection>::connect(&catalog_file).await.expect("open the catalog");
    let refuse = "CREATE TRIGGER refuse_deletes BEFORE DELETE ON images BEGIN SELECT RAISE(ABORT, 'stopped here'); END";
    sqlx::query(refuse).execute(&mut sql).await.expect("add the trigger");
    std::fs::remove_file(images.join("coffee.jpg")).unwrap();
    std::fs::remove_file(images.join("rocket.jpg")).unwrap();
    let stopped = imgsearch::ingest::run_directory(&index, &images, &pruning, &Progress::silent()).await;
    let error = stopped.expect_err("the catalog refused the delete, so the prune must not report success");
    assert!(format!("{error:#}").contains("stopped here"), "the catalog's refusal is reported: {error:#}");
    assert_eq!(index.store().count(&collection).await.unwrap(), 3, "the vectors went first");
    assert_eq!(index.catalog().count(&collection, ImageStatus::Pending).await.unwrap(), 2, "the rows stayed, pending");
    assert_eq!(
        index.catalog().count(&collection, ImageStatus::Indexed).await.unwrap(),
        3,
        "no row claims a lost vector"
    );

    // One of the two comes back, unchanged, before the next run.
    copy_photos(&["coffee.jpg"], &images);
    sqlx::query("DROP TRIGGER refuse_deletes").execute(&mut sql).await.expect("drop the trigger");
    let report =
        imgsearch::ingest::run_directory(&index, &images, &pruning, &Progress::silent()).await.expect("the next prune");
    assert_eq!(
        (report.pruned, report.indexed, report.skipped),
        (1, 1, 3),
        "rocket pruned, coffee embedded again: {}",
        report.summary()
    );
    assert_eq!(index.store().count(&collection).await.unwrap(), 4);
    assert_eq!(index.catalog().count(&collection, ImageStatus::Indexed).await.unwrap(), 4, "Milvus and catalog agree");
    let rocket = images.canonicalize().unwrap().join("rocket.jpg");
    assert!(index.catalog().find(&collection, &rocket.to_string_lossy()).await.unwrap().is_none());
    let hits = search_top(&index, &collection, &std::fs::read(common::photo("coffee.jpg")).unwrap()).await;
    assert!(hits[0].uri.ends_with("coffee.jpg"), "the file that came back is searchable again: {hits:?}");
}

/// What phones and web pages produce: a photo stored sideways with its EXIF orientation, WebP,
/// GIF, BMP and TIFF copies, and an iPhone HEIC that cannot be read here.
#[tokio::test]
async fn phone_photos_are_indexed_upright_and_every_supported_format_is_ingested() {
    use common::formats::{encode_rgb, exif_orientation, iso_bmff_with_brand, stored_for};
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let upright = |name: &str| image::open(common::photo(name)).expect("open sample photo").to_rgb8();
    let chelsea = upright("chelsea.jpg");
    // Turned a quarter clockwise by the viewer (orientation 6), as most phones store portraits.
    std::fs::write(
        images.join("IMG_0001.jpg"),
        encode_rgb(&stored_for(6, &chelsea), ImageFormat::Jpeg, Some(exif_orientation(6))),
    )
    .unwrap();
    std::fs::write(images.join("coffee.webp"), encode_rgb(&upright("coffee.jpg"), ImageFormat::WebP, None)).unwrap();
    std::fs::write(images.join("rocket.gif"), encode_rgb(&upright("rocket.jpg"), ImageFormat::Gif, None)).unwrap();
    std::fs::write(images.join("astronaut.bmp"), encode_rgb(&upright("astronaut.jpg"), ImageFormat::Bmp, None))
        .unwrap();
    std::fs::write(images.join("camera.TIFF"), encode_rgb(&upright("camera.jpg"), ImageFormat::Tiff, None)).unwrap();
    std::fs::write(images.join("IMG_0002.HEIC"), iso_bmff_with_brand(b"heic")).unwrap();
    let index = common::index(work.path()).await;
    let collection = common::unique_collection("formats");

    let report = imgsearch::ingest::run_directory(&index, &images, &common::options(&collection), &Progress::silent())
        .await
        .expect("ingest");

    assert_eq!((report.discovered, report.indexed, report.failed), (6, 5, 1), "{report:?}");
    let heic = &report.failures[0];
    assert!(heic.uri.ends_with("IMG_0002.HEIC") && heic.reason.contains("HEIC"), "{heic:?}");

    let phone_uri = images.canonicalize().unwrap().join("IMG_0001.jpg").display().to_string();
    let phone = index.catalog().find(&collection, &phone_uri).await.unwrap().expect("catalogued");
    assert_eq!(
        (phone.width, phone.height),
        (Some(i64::from(chelsea.width())), Some(i64::from(chelsea.height()))),
        "the catalog holds the size as displayed"
    );
    // Searching with the upright original finds the sideways-stored copy as (nearly) itself.
    let hits = search_top(&index, &collection, &std::fs::read(common::photo("chelsea.jpg")).unwrap()).await;
    assert_eq!(hits[0].uri, phone_uri, "{hits:?}");
    assert!(hits[0].distance() < 0.02, "the phone photo is {:.3} from its upright original", hits[0].distance());
    for (name, original) in [
        ("coffee.webp", "coffee.jpg"),
        ("rocket.gif", "rocket.jpg"),
        ("astronaut.bmp", "astronaut.jpg"),
        ("camera.TIFF", "camera.jpg"),
    ] {
        let hits = search_top(&index, &collection, &std::fs::read(common::photo(original)).unwrap()).await;
        assert!(hits[0].uri.ends_with(name), "{original} should find {name} first: {hits:?}");
    }
}

/// Without a SQL catalog (`DATABASE_URL=none`, what the operator runs when `spec.catalog` is
/// absent) Milvus's rows are the record: two shards at once, a rerun, a changed image, a bad
/// file, prune and a path whose derived id another image already holds, each judged by what
/// Milvus and the catalog interface say afterwards.
#[tokio::test]
async fn without_a_sql_catalog_shards_reruns_and_prune_keep_milvus_exact() {
    use imgsearch::catalog::{CatalogError, NewImage, uri_id};
    use imgsearch::index::IndexError;
    use imgsearch::ingest::IngestOptions;
    use imgsearch::source::Shard;

    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for (name, path) in common::fashion_images(3) {
        std::fs::copy(path, images.join(name)).unwrap();
    }
    copy_photos(&["astronaut.jpg", "coffee.jpg", "rocket.jpg", "chelsea.jpg"], &images);
    std::fs::write(images.join("broken.jpg"), b"\xff\xd8\xff\xe0 not really a JPEG").unwrap();
    let good = std::fs::read_dir(&images).unwrap().count() - 1;
    let images = images.canonicalize().unwrap();
    let uri = |name: &str| images.join(name).to_string_lossy().to_string();
    let collection = common::unique_collection("nocatalog");
    let index = common::index_without_catalog(&collection).await;
    let sharded = |index: u32| IngestOptions {
        shard: Shard::new(index, 2).unwrap(),
        prune: true,
        ..common::options(&collection)
    };
    let run_shards = || async {
        let (zero, one, progress) = (sharded(0), sharded(1), Progress::silent());
        let (first, second) = tokio::join!(
            imgsearch::ingest::run_directory(&index, &images, &zero, &progress),
            imgsearch::ingest::run_directory(&index, &images, &one, &progress),
        );
        (first.expect("shard 0"), second.expect("shard 1"))
    };

    let (first, second) = run_shards().await;
    assert!(first.discovered > 0 && second.discovered > 0, "both shards had work: {first:?} {second:?}");
    assert_eq!((first.indexed + second.indexed, first.failed + second.failed), (good as u64, 1));
    assert_eq!(index.store().count(&collection).await.unwrap(), good as u64, "no shard overwrote another");
    assert_eq!(index.catalog().count(&collection, ImageStatus::Indexed).await.unwrap(), good as i64);
    for entry in std::fs::read_dir(&images).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        let found = index.catalog().find(&collection, &uri(&name)).await.unwrap();
        if name == "broken.jpg" {
            assert!(found.is_none(), "a failed image has no row without a SQL catalog: {found:?}");
            continue;
        }
        let found = found.unwrap_or_else(|| panic!("{name} is not in Milvus"));
        assert_eq!(found.id, uri_id(&collection, &uri(&name)), "{name}: the id derives from the path");
        let by_id = index.catalog().get(found.id).await.unwrap().expect("found by id");
        assert_eq!((by_id.uri, by_id.status), (uri(&name), ImageStatus::Indexed));
    }

    // A rerun reads what is indexed back from Milvus: nothing embedded again, the bad file
    // tried again (nothing remembers it) and refused again.
    let (first, second) = run_shards().await;
    assert_eq!(
        (first.skipped + second.skipped, first.indexed + second.indexed, first.failed + second.failed),
        (good as u64, 0, 1),
        "{first:?} {second:?}"
    );

    // A changed image replaces its vector under the same id; a removed one is pruned.
    let coffee = index.catalog().find(&collection, &uri("coffee.jpg")).await.unwrap().expect("coffee");
    std::fs::copy(common::photo("camera.jpg"), images.join("coffee.jpg")).unwrap();
    std::fs::remove_file(images.join("astronaut.jpg")).unwrap();
    let (first, second) = run_shards().await;
    assert_eq!((first.indexed + second.indexed, first.pruned + second.pruned), (1, 1), "{first:?} {second:?}");
    assert_eq!(index.store().count(&collection).await.unwrap(), good as u64 - 1);
    assert!(index.catalog().find(&collection, &uri("astronaut.jpg")).await.unwrap().is_none());
    let hits = search_top(&index, &collection, &std::fs::read(common::photo("camera.jpg")).unwrap()).await;
    assert_eq!((hits[0].id, hits[0].uri.as_str()), (coffee.id, uri("coffee.jpg").as_str()), "{hits:?}");

    // Another image already holds the id "clash.jpg" derives to (planted: a real clash takes
    // ~2^26 paths): the new file is refused, by ingest and by an upload, and the holder kept.
    let clash = uri("clash.jpg");
    let id = uri_id(&collection, &clash);
    let (_, vector) =
        index.model().embed_bytes(&std::fs::read(common::photo("rocket.jpg")).unwrap(), index.limits()).unwrap();
    let holder =
        imgsearch::store::VectorRow { id, vector, uri: "/elsewhere/holder.jpg".into(), content_hash: "h".into() };
    index.store().upsert(&collection, &[holder]).await.unwrap();
    std::fs::copy(common::photo("chelsea.jpg"), images.join("clash.jpg")).unwrap();
    let report = imgsearch::ingest::run_directory(&index, &images, &common::options(&collection), &Progress::silent())
        .await
        .unwrap();
    let refusal = report.failures.iter().find(|f| f.uri == clash).unwrap_or_else(|| panic!("{report:?}"));
    assert!(refusal.reason.contains("already held by \"/elsewhere/holder.jpg\""), "{}", refusal.reason);
    let bytes = std::fs::read(common::photo("chelsea.jpg")).unwrap();
    let prepared = imgsearch::embed::preprocess::prepare(&bytes, index.limits(), index.model().input()).unwrap();
    let upload = NewImage { uri: clash.clone(), content_hash: "c".into(), size_bytes: 1, width: 1, height: 1 };
    let refused = index.add_prepared(&collection, upload, prepared).await.unwrap_err();
    assert!(matches!(refused, IndexError::Catalog(CatalogError::IdTaken { .. })), "{refused}");
    let kept = index.catalog().get(id).await.unwrap().expect("the holder is still there");
    assert_eq!(kept.uri, "/elsewhere/holder.jpg");
    assert_eq!(index.store().count(&collection).await.unwrap(), good as u64, "the holder, nothing more");
}

/// A source that lists nothing is far more often a wrong prefix or an empty mount than emptied
/// on purpose: prune then removes nothing. An image deleted from the index while its file stays
/// comes back on the next ingest (the folder is the source of truth for what it holds).
#[tokio::test]
async fn an_empty_listing_prunes_nothing_and_a_deleted_image_comes_back_on_the_next_ingest() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    copy_photos(&["astronaut.jpg", "coffee.jpg", "rocket.jpg"], &images);
    let index = common::index(work.path()).await;
    let collection = common::unique_collection("emptylisting");
    let pruning = imgsearch::ingest::IngestOptions { prune: true, ..common::options(&collection) };
    imgsearch::ingest::run_directory(&index, &images, &pruning, &Progress::silent()).await.expect("ingest");

    let coffee = images.canonicalize().unwrap().join("coffee.jpg").to_string_lossy().to_string();
    let deleted = index.catalog().find(&collection, &coffee).await.unwrap().expect("coffee indexed");
    index.store().delete(&collection, &[deleted.id]).await.unwrap();
    index.catalog().delete_images(&[deleted.id]).await.unwrap();
    assert_eq!(index.store().count(&collection).await.unwrap(), 2);
    let report = imgsearch::ingest::run_directory(&index, &images, &pruning, &Progress::silent()).await.expect("rerun");
    assert_eq!((report.indexed, report.skipped), (1, 2), "{}", report.summary());
    assert!(index.catalog().find(&collection, &coffee).await.unwrap().is_some(), "coffee is back");
    assert_eq!(index.store().count(&collection).await.unwrap(), 3);

    for entry in std::fs::read_dir(&images).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let report =
        imgsearch::ingest::run_directory(&index, &images, &pruning, &Progress::silent()).await.expect("empty rerun");
    assert_eq!((report.discovered, report.pruned), (0, 0), "{}", report.summary());
    assert_eq!(index.store().count(&collection).await.unwrap(), 3, "nothing pruned on an empty listing");
    assert_eq!(index.catalog().count(&collection, ImageStatus::Indexed).await.unwrap(), 3);
}
