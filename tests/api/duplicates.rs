//! "More like this" and the near-duplicate report.

use super::*;

#[tokio::test]
async fn more_like_this_and_near_duplicates_find_the_copy_and_never_the_image_itself() {
    let f = fixture(&["astronaut.jpg", "coffee.jpg", "rocket.jpg", "chelsea.jpg"], 20 << 20).await;
    put_image(&f, "copies/chelsea-resaved.jpg", &chelsea_copy());
    f.load().await;
    let chelsea = f.id_of("/chelsea.jpg").await;
    let copy = f.id_of("/chelsea-resaved.jpg").await;

    let (status, body) = f.get(&format!("/v1/images/{chelsea}/similar?top_k=2")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["query_id"], json!(chelsea));
    assert_eq!(ids(&body["results"]).len(), 2);
    assert_eq!(ids(&body["results"])[0], copy, "{body}");
    assert!(!ids(&body["results"]).contains(&chelsea), "the image itself is not 'like' itself: {body}");

    // Near-duplicates: the copy, and nothing else in this set of unrelated photos.
    let (status, body) = f.get(&format!("/v1/images/{chelsea}/duplicates")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ids(&body["duplicates"]), vec![copy], "{body}");
    assert!(body["duplicates"][0]["distance"].as_f64().unwrap() <= 0.1);
    assert_eq!(body["truncated"], json!(false));
    let (_, body) = f.get(&format!("/v1/images/{chelsea}/duplicates?max_distance=0")).await;
    assert_eq!(ids(&body["duplicates"]), Vec::<i64>::new(), "a re-encoded copy is not distance 0: {body}");

    // The report, two images a page: every page followed, the one pair reported once.
    let mut pairs = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let (status, page) = f.get(&format!("/v1/duplicates?limit=2&page_token={token}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        pages += 1;
        for group in page["groups"].as_array().unwrap() {
            for duplicate in group["duplicates"].as_array().unwrap() {
                pairs.push((group["id"].as_i64().unwrap(), duplicate["id"].as_i64().unwrap()));
            }
        }
        match page["next_page_token"].as_str() {
            Some(next) => token = next.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 3, "5 images, 2 a page");
    assert_eq!(pairs, vec![(chelsea.min(copy), chelsea.max(copy))]);

    // Unknown ids and bad parameters.
    let (status, body) = f.get("/v1/images/999999/similar").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"), "{body}");
    let (status, body) = f.get(&format!("/v1/images/{chelsea}/similar?top_k=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = f.get("/v1/images/abc/duplicates").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = f.get("/v1/duplicates?page_token=-3").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("page_token"), "{body}");
}
