//! The bootcamp-compatible `/img/*` routes.

use super::*;

#[tokio::test]
async fn bootcamp_load_progress_count_search_and_data_work_with_their_shapes() {
    let f = fixture(&["astronaut.jpg", "coffee.jpg", "rocket.jpg"], 20 << 20).await;

    let loaded = f.load().await;
    assert_eq!(loaded["status"], json!(true));
    assert_eq!(loaded["msg"], json!("Successfully loaded data!"));
    let (_, progress) = f.json(Request::get("/progress").body(Body::empty()).unwrap()).await;
    assert_eq!(progress, json!("current: 3, total: 3"));
    assert_eq!(f.count().await, 3);

    let query = photo_bytes("coffee.jpg");
    let (status, body) = f.json(multipart("/img/search", &[("image", "coffee.jpg", &query)], &[("topk", "2")])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let pairs = body.as_array().expect("[[path, distance], …]");
    assert_eq!(pairs.len(), 2);
    let best_path = pairs[0][0].as_str().unwrap();
    assert!(best_path.ends_with("/coffee.jpg"), "{body}");
    assert!(
        pairs[0][1].as_f64().unwrap() < 0.01 && pairs[0][1].as_f64().unwrap() <= pairs[1][1].as_f64().unwrap(),
        "{body}"
    );

    let uri = format!("/data?image_path={}", urlencode(best_path));
    let (status, bytes) = f.call(Request::get(uri).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, query);
}
