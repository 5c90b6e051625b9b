//! Collections: loads, drops, and the two kept apart.

use super::*;

#[tokio::test]
async fn table_name_picks_the_collection_and_load_creates_it() {
    let f = fixture(&["astronaut.jpg"], 20 << 20).await;
    let other = common::unique_collection("table");
    let (status, body) = f.json(post_json("/img/load", json!({ "Table": other, "File": f.images }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, count) = f.json(Request::post(format!("/img/count?table_name={other}")).body(Body::empty()).unwrap()).await;
    assert_eq!(count, json!(1));
    assert_eq!(f.count().await, 0, "the default collection stays empty");
}

#[tokio::test]
async fn load_refuses_folders_outside_the_load_roots() {
    let f = fixture(&["astronaut.jpg"], 20 << 20).await;
    let outside = tempfile::tempdir().unwrap();
    let escape = format!("{}/../../", f.images.display());
    for folder in [outside.path().to_str().unwrap(), "/etc", escape.as_str(), "relative/images"] {
        let (status, body) = f.json(post_json("/img/load", json!({ "File": folder }))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{folder}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("not under an allowed load root"), "{body}");
    }
    let missing = f.images.join("no-such-folder");
    let (status, _) = f.json(post_json("/img/load", json!({ "File": missing }))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = f.json(post_json("/img/load", json!({ "Nope": 1 }))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(f.count().await, 0);
}

#[tokio::test]
async fn drop_removes_vectors_and_catalog_rows_and_a_second_drop_is_not_found() {
    let f = fixture(&["astronaut.jpg", "coffee.jpg"], 20 << 20).await;
    f.load().await;
    assert_eq!(f.count().await, 2);

    let (status, body) = f.json(Request::post("/img/drop").body(Body::empty()).unwrap()).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.as_str().unwrap().starts_with("Successfully dropped"), "{body}");
    assert_eq!(f.count().await, 0);
    assert_eq!(f.catalog.known_images(&f.collection).await.unwrap().len(), 0);
    assert!(f.images.join("astronaut.jpg").exists(), "the user's files are left alone");
    let (status, _) = f.json(Request::post("/img/drop").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// One load at a time: a second `/img/load`, or a drop, while one runs is a 409 saying why;
/// the running load finishes untouched.
#[tokio::test]
async fn a_second_load_or_a_drop_during_a_load_is_a_409() {
    let f = fixture(&["astronaut.jpg", "coffee.jpg", "rocket.jpg", "chelsea.jpg"], 20 << 20).await;
    let load = || f.json(post_json("/img/load", json!({ "File": f.images })));
    // Joined: the first takes the load lock before its first wait, the others find it taken.
    let ((first, report), (second, refusal), (dropped, drop_refusal)) =
        tokio::join!(load(), load(), f.json(Request::post("/img/drop").body(Body::empty()).unwrap()));
    assert_eq!(first, StatusCode::OK, "{report}");
    assert_eq!(second, StatusCode::CONFLICT, "{refusal}");
    assert!(refusal["error"]["message"].as_str().unwrap().contains("another load is running"), "{refusal}");
    assert_eq!(dropped, StatusCode::CONFLICT, "{drop_refusal}");
    assert!(drop_refusal["error"]["message"].as_str().unwrap().contains("a load is running"), "{drop_refusal}");
    assert_eq!(f.count().await, 4, "the running load finished");
}
