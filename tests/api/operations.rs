//! Operations: probes, metrics and the OpenAPI document.

use super::*;

#[tokio::test]
async fn metrics_count_every_route_by_status_time_the_search_stages_and_answers_carry_a_request_id() {
    let f = fixture(&["coffee.jpg"], 20 << 20).await;
    f.load().await;
    let query = photo_bytes("coffee.jpg");
    let (status, _) = f.call(multipart("/v1/search", &[("image", "q.jpg", &query)], &[])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = f.call(multipart("/v1/search", &[("image", "q.jpg", b"not an image")], &[])).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = f.call(Request::get("/v1/images/987654321").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = f.call(Request::get("/no/such/route").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A sane client id is echoed (and logged); anything else is replaced by one of ours.
    let with_id = |id: &str| {
        let mut request = Request::get("/healthz").body(Body::empty()).unwrap();
        request.headers_mut().insert("x-request-id", id.parse().unwrap());
        request
    };
    let response = app(f.state.clone()).oneshot(with_id("trace-42.a_b")).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42.a_b");
    let response = app(f.state.clone()).oneshot(with_id("two words; <script>")).await.unwrap();
    let ours = response.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!ours.is_empty() && !ours.contains(' '), "{ours}");
    let first = app(f.state.clone()).oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    let second = app(f.state.clone()).oneshot(Request::get("/healthz").body(Body::empty()).unwrap()).await.unwrap();
    assert_ne!(first.headers()["x-request-id"], second.headers()["x-request-id"], "ids are unique");

    let (status, text) = f.call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text).unwrap();
    for line in [
        r#"imgsearch_http_requests_total{method="POST",route="/v1/search",status="200"} 1"#,
        r#"imgsearch_http_requests_total{method="POST",route="/v1/search",status="415"} 1"#,
        r#"imgsearch_http_requests_total{method="GET",route="/v1/images/{id}",status="404"} 1"#,
        r#"imgsearch_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"imgsearch_http_requests_total{method="GET",route="/healthz",status="200"} 4"#,
        r#"imgsearch_http_request_duration_seconds_count{method="POST",route="/v1/search"} 2"#,
        r#"imgsearch_search_stage_duration_seconds_count{stage="milvus_search"} 1"#,
        r#"imgsearch_search_stage_duration_seconds_count{stage="catalog_lookup"} 1"#,
        // Both searches were decoded; the second failed there, so only the first waited for
        // the model and was embedded, alone in its forward pass.
        r#"imgsearch_search_stage_duration_seconds_count{stage="decode"} 2"#,
        r#"imgsearch_search_stage_duration_seconds_count{stage="queue"} 1"#,
        r#"imgsearch_search_stage_duration_seconds_count{stage="embed"} 1"#,
        r#"imgsearch_query_batch_size_count 1"#,
        r#"imgsearch_query_batch_size_bucket{le="1.0"} 1"#,
        r#"imgsearch_milvus_search_group_size_count 1"#,
        // This very request.
        "imgsearch_http_requests_in_flight 1",
        r#"imgsearch_model_info{model="efficientnet-lite0",dimension="1280","#,
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}

#[tokio::test]
async fn probes_and_page_answer() {
    let f = fixture(&[], 20 << 20).await;
    let (status, body) = f.call(Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"ok"[..]));
    let (status, body) = f.json(Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], json!("ready"));
    let (status, page) = f.call(Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("<label for=\"file\">") && page.contains("/v1/search"), "page lacks its form");
}

/// `/readyz` while the server runs: 200, then 503 naming Milvus when Milvus goes away (a real
/// outage: a forwarder to the shared Milvus is cut, then one that swallows everything), 200
/// again when it is back; the same for the catalog (PostgreSQL behind a forwarder). With the
/// production patience, every answer comes within the pod's 5 s probe timeout. Every wait has
/// a deadline.
#[tokio::test]
async fn readyz_turns_503_when_milvus_or_the_catalog_goes_away_and_back_when_they_return() {
    use common::outage::Outage;
    let milvus = Outage::forward_to(common::milvus_uri().trim_start_matches("http://").to_string()).await;
    let behind = common::databases::postgres_catalog_behind_a_link("readyz").await;
    let catalog_link = &behind.link;
    let work = tempfile::tempdir().unwrap();
    let forwarded =
        imgsearch::store::MilvusStore::connect(&milvus.uri(), None).await.expect("connect through the forwarder");
    // The store keeps its production patience (20 s a call): readiness must answer within the
    // probe's timeout all the same.
    let index = common::index(work.path()).await.with_store(forwarded).with_catalog(behind.catalog.clone());
    let app = app(ServerState::new(index, ServeConfig::default()));
    let readyz = || {
        let app = app.clone();
        async move {
            let response = app.oneshot(Request::get("/readyz").body(Body::empty()).unwrap()).await.unwrap();
            let status = response.status();
            if status == StatusCode::SERVICE_UNAVAILABLE {
                let retry_after = response.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes().to_vec());
                assert_eq!(retry_after.as_deref(), Some(&b"5"[..]), "a 503 says when to retry");
            }
            let body: Value =
                serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
            (status, body["error"]["message"].as_str().unwrap_or_default().to_string())
        }
    };
    let expect = |wanted: StatusCode, message: &'static str, what: &'static str| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let asked = tokio::time::Instant::now();
            let (status, said) = readyz().await;
            // The search pod's probe gives up after 5 s; an answer must come before that.
            let took = asked.elapsed();
            assert!(took < Duration::from_secs(5), "{what}: /readyz took {took:?}, past the probe's 5 s timeout");
            if status == wanted && said == message {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: last answer {status} {said:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    expect(StatusCode::OK, "", "ready at start").await;
    milvus.cut();
    expect(StatusCode::SERVICE_UNAVAILABLE, "the vector database (Milvus) is unavailable", "503 once Milvus is cut")
        .await;
    milvus.restore();
    expect(StatusCode::OK, "", "ready again once Milvus is back").await;
    milvus.black_hole();
    expect(StatusCode::SERVICE_UNAVAILABLE, "the vector database (Milvus) is unavailable", "503 once Milvus is silent")
        .await;
    milvus.restore();
    expect(StatusCode::OK, "", "ready again once Milvus answers again").await;
    catalog_link.cut();
    expect(StatusCode::SERVICE_UNAVAILABLE, "the image catalog is unavailable", "503 once the catalog is cut").await;
    catalog_link.restore();
    expect(StatusCode::OK, "", "ready again once the catalog is back").await;
}

/// The committed document (docs/openapi.json) is what the server serves; regenerate it with
/// `target/debug/imgsearch openapi > docs/openapi.json` after changing the API.
#[tokio::test]
async fn the_openapi_document_is_served_committed_and_describes_only_routes_that_answer() {
    let f = fixture(&[], 20 << 20).await;
    let (status, served) = f.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json")).unwrap(),
    )
    .unwrap();
    assert!(
        served == committed,
        "docs/openapi.json is out of date: run `target/debug/imgsearch openapi > docs/openapi.json`"
    );

    // Every documented operation is routed: an unrouted path or method gets axum's empty 404 or
    // 405, while every handler answers with a body.
    let paths = served["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{}", paths.len());
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let uri = path.replace("{id}", "1");
            let request =
                Request::builder().method(method.to_uppercase().as_str()).uri(&uri).body(Body::empty()).unwrap();
            let (status, body) = f.call(request).await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(!body.is_empty(), "{method} {path} answered {status} with no body: not routed?");
        }
    }
    // And no route is added without its description: every route goes through utoipa-axum's
    // `routes!`, never axum's plain `.route(`.
    let mut folders = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api")];
    let mut read = 0;
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()) {
            if entry.is_dir() {
                folders.push(entry);
            } else if entry.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&entry).unwrap();
                assert!(!source.contains(".route("), "{} adds an undocumented route with .route(", entry.display());
                read += 1;
            }
        }
    }
    assert!(read >= 10, "read {read} source files of src/api");
}

/// The document is valid OpenAPI 3.1 by an independent validator (openapi-spec-validator, in the
/// project's venv): unique operation ids, resolvable references, schemas of the right shape.
#[test]
fn the_openapi_document_is_valid_openapi() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = common::output_within_blocking(
        std::process::Command::new(root.join(".venv/bin/openapi-spec-validator")).arg(root.join("docs/openapi.json")),
        Duration::from_secs(120),
        "openapi-spec-validator (installed by scripts/setup.sh)",
    );
    let said = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && said.contains("OK"), "{said}");
}
