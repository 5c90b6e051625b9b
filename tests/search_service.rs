//! The search service without HTTP, called as another transport would: the one search every
//! route makes (by bytes, by URL, by a stored image), its cut-off and prefix, and the
//! duplicates report. The HTTP mapping of the same calls is tested in tests/api.rs.

mod common;

use bytes::Bytes;
use image::ImageFormat;
use imgsearch::catalog::{ImageStatus, ListFilter};
use imgsearch::progress::Progress;
use imgsearch::search::{QueryImage, SearchError, SearchRequest, SearchResults, SearchService, SearchSettings};

fn file_names(found: &SearchResults) -> Vec<String> {
    let mut names: Vec<String> =
        found.hits.iter().map(|hit| hit.uri.rsplit('/').next().unwrap_or_default().to_string()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn one_search_call_serves_every_kind_of_query_and_the_report_pairs_each_copy_once() {
    let work = tempfile::tempdir().expect("a temporary folder");
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).expect("the images folder");
    common::copy_photos(&["coffee.jpg", "rocket.jpg", "astronaut.jpg", "chelsea.jpg"], &images);
    // A re-saved copy of one photo: its near-duplicate.
    let coffee = image::open(common::photo("coffee.jpg")).expect("the sample photo decodes");
    coffee.save_with_format(images.join("resaved-coffee.jpg"), ImageFormat::Jpeg).expect("write the copy");
    let collection = common::unique_collection("service");
    let index = common::index(work.path()).await;
    let report = imgsearch::ingest::run_directory(&index, &images, &common::options(&collection), &Progress::silent())
        .await
        .expect("the folder is ingested");
    assert_eq!(report.indexed, 5, "{report:?}");
    let service = SearchService::new(index, SearchSettings::default());
    let search = |query: QueryImage, max_distance: Option<f32>, uri_prefix: Option<String>| {
        service.search(SearchRequest { query, top_k: 5, max_distance, uri_prefix })
    };
    let bytes = Bytes::from(std::fs::read(common::photo("coffee.jpg")).expect("read the photo"));
    let by_bytes = || QueryImage::Bytes { collection: collection.clone(), bytes: bytes.clone() };

    let found = search(by_bytes(), None, None).await.expect("a search by bytes");
    assert_eq!(found.collection, collection);
    assert_eq!(found.hits.len(), 5, "top_k results from five images");
    assert!(found.hits[0].uri.ends_with("/coffee.jpg") && found.hits[0].distance() < 0.01, "{:?}", found.hits);
    assert!(found.stored_query.is_none());

    // The cut-off and the prefix are the service's, not a transport's.
    let near = search(by_bytes(), Some(0.1), None).await.expect("a search with a cut-off");
    assert_eq!(file_names(&near), ["coffee.jpg", "resaved-coffee.jpg"], "{:?}", near.hits);
    let prefix = images.join("r").to_str().expect("a UTF-8 path").to_string();
    let under = search(by_bytes(), None, Some(prefix)).await.expect("a search under a prefix");
    assert_eq!(file_names(&under), ["resaved-coffee.jpg", "rocket.jpg"], "{:?}", under.hits);

    // "More like this": the stored image is named and never among its own results.
    let id = found.hits[0].id;
    let similar = search(QueryImage::Stored { id }, None, None).await.expect("a search from a stored image");
    assert_eq!(similar.stored_query.as_ref().map(|r| r.id), Some(id));
    assert_eq!(similar.hits.len(), 4, "{:?}", similar.hits);
    assert!(similar.hits.iter().all(|hit| hit.id != id), "{:?}", similar.hits);
    assert!(similar.hits[0].uri.ends_with("/resaved-coffee.jpg"), "{:?}", similar.hits);

    // A URL is not fetched for a collection that does not exist; for one that does, this
    // service was not given a fetcher.
    let url = "http://192.0.2.1/never-fetched.jpg".to_string();
    let missing = common::unique_collection("missing");
    let error = search(QueryImage::Url { collection: missing, url: url.clone() }, None, None).await.unwrap_err();
    assert!(matches!(error, SearchError::NoCollection(_)), "{error:?}");
    let error = search(QueryImage::Url { collection: collection.clone(), url }, None, None).await.unwrap_err();
    assert!(matches!(error, SearchError::UrlSearchDisabled), "{error:?}");
    // The service's messages speak of the service, not of a transport's routes or flags.
    assert_eq!(error.to_string(), "searching by URL is disabled on this server");

    // The report: the one pair, once, from its lower id; a page of 2 says where the next starts.
    let page = service.duplicates_page(&collection, 0.1, 0, 100).await.expect("a report page");
    assert_eq!((page.examined, page.groups.len(), page.next_after), (5, 1, None), "{page:?}");
    let group = &page.groups[0];
    assert_eq!(group.duplicates.len(), 1, "{group:?}");
    assert!(group.id < group.duplicates[0].id, "reported from the lower id: {group:?}");
    let first = service.duplicates_page(&collection, 0.1, 0, 2).await.expect("a short page");
    let filter = ListFilter { status: Some(ImageStatus::Indexed), uri_prefix: None };
    let listed = service.list_images(&collection, &filter, 0, 2).await.expect("the first two images");
    assert_eq!((first.examined, first.next_after), (2, Some(listed[1].id)), "{first:?}");
    let of_one = service.duplicates_of(group.id, 0.1, 10).await.expect("duplicates of one image");
    assert_eq!(of_one.duplicates.len(), 1);
    assert_eq!(of_one.image.id, group.id);
    assert!(!of_one.truncated);
}
