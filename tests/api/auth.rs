//! The bearer token on writes, and on reads when asked.

use super::*;

#[tokio::test]
async fn with_a_token_writes_need_it_reads_do_not_and_a_refused_write_stores_nothing() {
    let auth = AuthConfig::new("correct-horse-battery-staple", false).unwrap();
    let f = fixture_with_auth(&["coffee.jpg"], 20 << 20, Some(auth)).await;
    let bytes = photo_bytes("astronaut.jpg");
    let upload = || multipart("/v1/images", &[("image", "a.jpg", &bytes)], &[]);
    let bootcamp_upload = || multipart("/img/upload", &[("image", "a.jpg", &bytes)], &[]);
    let load = || post_json("/img/load", json!({ "File": f.images }));
    let drop = || Request::post("/img/drop").body(Body::empty()).unwrap();
    for (what, request) in [
        ("no header", upload()),
        ("a wrong token", with_token(upload(), "correct-horse-battery-stapl")),
        ("a longer token", with_token(upload(), "correct-horse-battery-staple-")),
        ("another scheme", {
            let mut r = upload();
            r.headers_mut().insert(header::AUTHORIZATION, "Basic Y29ycmVjdA==".parse().unwrap());
            r
        }),
        ("bootcamp upload, no header", bootcamp_upload()),
        ("bootcamp load, wrong token", with_token(load(), "guess")),
        ("bootcamp drop, no header", drop()),
    ] {
        let response = app(f.state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"imgsearch\"", "{what}");
        let body: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(error_code(&body), "unauthorized", "{what}: {body}");
    }
    assert!(f.stored_uploads().is_empty(), "a refused upload stores nothing");
    assert_eq!(f.count().await, 0, "a refused load indexes nothing");
    // Refused before its body is read: a body that fails when read would otherwise turn the
    // answer into a 400 (bad multipart), and a huge upload would cost its transfer.
    let unreadable = Body::from_stream(futures::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other("this body must not be read"))
    }));
    let request = Request::post("/v1/images")
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=x")
        .body(unreadable)
        .unwrap();
    let (status, body) = f.json(request).await;
    assert_eq!((status, error_code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{body}");
    // The scheme name is case-insensitive (RFC 7235).
    let (status, body) = f.json(with_token_scheme(upload(), "bearer", "correct-horse-battery-staple")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (status, body) = f.json(with_token(load(), "correct-horse-battery-staple")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Reads stay open by default.
    let (status, body) = f.json(multipart("/v1/search", &[("image", "q.jpg", &bytes)], &[])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(f.count().await, 2);
}

#[tokio::test]
async fn with_protected_reads_searches_need_the_token_but_probes_and_the_page_do_not() {
    let auth = AuthConfig::new("reader-token", true).unwrap();
    let f = fixture_with_auth(&[], 20 << 20, Some(auth)).await;
    let bytes = photo_bytes("coffee.jpg");
    let search = || multipart("/v1/search", &[("image", "q.jpg", &bytes)], &[]);
    let (status, body) = f.json(search()).await;
    assert_eq!((status, error_code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (status, _) = f.call(Request::get("/v1/count").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for open in ["/healthz", "/readyz", "/", "/openapi.json"] {
        let (status, _) = f.call(Request::get(open).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{open} stays open for probes, browsers and API clients");
    }
    // Metrics name collections and routes: a read like any other.
    let (status, _) = f.call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "/metrics needs the token under --auth-reads");
    let (status, _) = f.call(with_token(Request::get("/metrics").body(Body::empty()).unwrap(), "reader-token")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = f.call(with_token(Request::get("/v1/count").body(Body::empty()).unwrap(), "reader-token")).await;
    // The collection does not exist yet: past the token check, the route's own answer.
    assert_eq!(status, StatusCode::NOT_FOUND);
}
