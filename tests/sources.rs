//! Every remote source against a real server, through the real `imgsearch ingest` binary: an
//! S3 bucket on moto's S3 server, and a URL list on a local HTTP server that the fetch guard
//! lets through only because its network (127.0.0.1/32) is allowed explicitly.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use imgsearch::catalog::{Catalog, ImageStatus};
use imgsearch::embed::DecodeLimits;
use imgsearch::store::{IndexSpec, MilvusStore};
use serde_json::Value;
use tokio::process::Command;

struct Run {
    success: bool,
    report: Value,
    stderr: String,
}

/// `imgsearch ingest ARGS` into `collection`, with a catalog in `work`.
fn ingest_command(work: &Path, collection: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_imgsearch"));
    command
        .arg("ingest")
        .args(args)
        .args(["--collection", collection, "--batch-size", "8", "--json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("MILVUS_URI", common::milvus_uri())
        .env("DATABASE_URL", catalog_url(work))
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn ingest(work: &Path, collection: &str, args: &[&str]) -> Run {
    finish(ingest_command(work, collection, args)).await
}

/// Runs an ingest to its end; a failure naming it if it has not ended within 3 minutes (the
/// slowest run here waits out one 5 s fetch limit).
async fn finish(mut command: Command) -> Run {
    let limit = Duration::from_secs(180);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("imgsearch ingest did not finish within {} s", limit.as_secs()))
        .expect("run imgsearch ingest");
    Run {
        success: output.status.success(),
        report: serde_json::from_slice(&output.stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn catalog_url(work: &Path) -> String {
    format!("sqlite://{}", work.join("catalog.db").display())
}

fn failure_reason<'a>(report: &'a Value, uri: &str) -> &'a str {
    report["failures"]
        .as_array()
        .and_then(|failures| failures.iter().find(|f| f["uri"] == uri))
        .and_then(|f| f["reason"].as_str())
        .unwrap_or_else(|| panic!("no failure recorded for {uri}: {report}"))
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(common::photo(name)).expect("sample photo")
}

async fn milvus() -> MilvusStore {
    MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to the test Milvus")
}

#[tokio::test]
async fn a_bucket_prefix_is_ingested_with_odd_keys_incrementally_and_pruned() {
    let moto = common::s3::MotoServer::start().await;
    moto.create_bucket("photos").await;
    let odd = "shop/red shoes/ünïcode #1 (copy).jpg";
    moto.put("photos", "shop/astronaut.jpg", sample("astronaut.jpg")).await;
    moto.put("photos", odd, sample("coffee.jpg")).await;
    moto.put("photos", "shop/deep/moon.jpg", sample("moon.jpg")).await;
    moto.put("photos", "shop/broken.jpg", common::corrupt_jpeg()).await;
    moto.put("photos", "shop/notes.txt", b"not an image".to_vec()).await;
    moto.put("photos", "shop/.thumbnails/astronaut.jpg", sample("astronaut.jpg")).await;
    moto.put("photos", "other/camera.jpg", sample("camera.jpg")).await;

    let work = tempfile::tempdir().unwrap();
    let collection = common::unique_collection("s3");
    let args = ["s3://photos/shop/", "--s3-endpoint", &moto.endpoint, "--s3-region", "us-east-1"];
    let run = ingest(work.path(), &collection, &args).await;
    assert!(run.success, "{}", run.stderr);
    let report = &run.report;
    assert_eq!((report["discovered"].as_u64(), report["indexed"].as_u64()), (Some(4), Some(3)), "{report}");
    assert_eq!(report["failed"], 1);
    assert!(failure_reason(report, "s3://photos/shop/broken.jpg").contains("JPEG"), "{report}");

    // The odd key round-trips: catalogued under its URI, and found by searching with its image.
    let catalog = Catalog::open(&catalog_url(work.path())).await.unwrap();
    let odd_uri = format!("s3://photos/{odd}");
    let record = catalog.find(&collection, &odd_uri).await.unwrap().expect("catalogued under the odd key");
    assert_eq!(record.status, ImageStatus::Indexed);
    let store = milvus().await;
    assert_eq!(store.count(&collection).await.unwrap(), 3);
    let (_, query) = common::model().embed_bytes(&sample("coffee.jpg"), DecodeLimits::default()).unwrap();
    let hits = store.search(&collection, query, 1, &IndexSpec::default()).await.unwrap();
    assert_eq!(hits[0].uri, odd_uri);

    // The search API serves the result image from the bucket it was given; without one it says so.
    let bucket = imgsearch::source::s3::Bucket::connect(
        imgsearch::source::s3::S3Location::parse("s3://photos/shop").unwrap(),
        &imgsearch::source::s3::S3Settings {
            endpoint: Some(moto.endpoint.clone()),
            region: Some("us-east-1".into()),
            credentials: Some(("testing".into(), "testing".into())),
        },
    )
    .unwrap();
    let index = common::index(work.path()).await;
    let with_bucket = imgsearch::api::ServeConfig {
        search: imgsearch::search::SearchSettings { image_bucket: Some(Arc::new(bucket)), ..Default::default() },
        ..Default::default()
    };
    let path = format!("/v1/images/{}", record.id);
    let request = || axum::http::Request::get(&path).body(axum::body::Body::empty()).unwrap();
    let search = imgsearch::api::app(imgsearch::api::ServerState::new(index.clone(), with_bucket));
    let response = tower::ServiceExt::oneshot(search, request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "image/jpeg");
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), sample("coffee.jpg").as_slice(), "the object's bytes");
    let without = imgsearch::api::app(imgsearch::api::ServerState::new(index, Default::default()));
    let response = tower::ServiceExt::oneshot(without, request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("start it with --image-bucket"));

    // Unchanged objects are skipped (the broken one too: the same bytes fail the same way).
    let rerun = ingest(work.path(), &collection, &args).await;
    assert_eq!((rerun.report["skipped"].as_u64(), rerun.report["indexed"].as_u64()), (Some(4), Some(0)));

    // An object deleted from the bucket is removed with --prune; another prefix's images in the
    // same collection are untouched.
    let other_args = ["s3://photos/other/", "--s3-endpoint", &moto.endpoint, "--s3-region", "us-east-1"];
    let other = ingest(work.path(), &collection, &other_args).await;
    assert_eq!(other.report["indexed"], 1, "{}", other.report);
    moto.delete("photos", "shop/deep/moon.jpg").await;
    let pruning: Vec<&str> = args.iter().copied().chain(["--prune"]).collect();
    let pruned = ingest(work.path(), &collection, &pruning).await;
    assert!(pruned.success, "{}", pruned.stderr);
    assert_eq!(pruned.report["pruned"], 1, "{}", pruned.report);
    assert_eq!(store.count(&collection).await.unwrap(), 3, "shop's two and other's one");
    assert!(catalog.find(&collection, "s3://photos/shop/deep/moon.jpg").await.unwrap().is_none());
    let camera = catalog.find(&collection, "s3://photos/other/camera.jpg").await.unwrap().expect("other's image kept");
    assert_eq!(camera.status, ImageStatus::Indexed);

    // A prefix may itself be hidden or hold characters a URL would encode; only the parts below
    // it are judged hidden.
    moto.put("photos", ".archive/#2024/moon.jpg", sample("moon.jpg")).await;
    let archive = common::unique_collection("s3archive");
    let archived =
        ingest(work.path(), &archive, &["s3://photos/.archive/#2024", "--s3-endpoint", &moto.endpoint]).await;
    assert!(archived.success, "{}", archived.stderr);
    assert_eq!(archived.report["indexed"], 1, "{}", archived.report);
    store.drop_collection(&archive).await.unwrap();
    store.drop_collection(&collection).await.unwrap();
}

#[tokio::test]
async fn a_bucket_that_goes_away_mid_run_stops_the_run_without_marking_images_failed() {
    const IMAGES: usize = 120;
    let moto = common::s3::MotoServer::start().await;
    moto.create_bucket("fashion").await;
    let images = common::fashion_images(IMAGES / 10);
    assert_eq!(images.len(), IMAGES);
    for (name, file) in images {
        moto.put("fashion", &format!("catalogue/{name}"), std::fs::read(&file).unwrap()).await;
    }
    let outage = common::outage::Outage::forward_to(moto.endpoint.trim_start_matches("http://").to_string()).await;
    let endpoint = outage.uri();
    let args = ["s3://fashion", "--s3-endpoint", &endpoint];

    let work = tempfile::tempdir().unwrap();
    let collection = common::unique_collection("s3gone");
    let catalog = Catalog::open(&catalog_url(work.path())).await.unwrap();
    let mut child = ingest_command(work.path(), &collection, &args).spawn().expect("start ingest");
    common::wait_for_first_indexed(&mut child, &catalog, &collection).await;
    outage.cut();
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the run hung after the bucket went away")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the run cannot succeed without its bucket");
    assert!(stderr.contains("bucket fashion") && stderr.contains(&endpoint), "names bucket and server: {stderr}");
    // An outage is not a property of the images: none is recorded as failed.
    assert_eq!(catalog.count(&collection, ImageStatus::Failed).await.unwrap(), 0, "{stderr}");
    let kept = catalog.count(&collection, ImageStatus::Indexed).await.unwrap();
    assert!(kept > 0 && kept < IMAGES as i64, "work before the outage is kept: {kept}");

    outage.restore();
    let rerun = ingest(work.path(), &collection, &args).await;
    assert!(rerun.success, "{}", rerun.stderr);
    assert_eq!(rerun.report["skipped"].as_i64(), Some(kept), "{}", rerun.report);
    assert_eq!(catalog.count(&collection, ImageStatus::Indexed).await.unwrap(), IMAGES as i64);
    let store = milvus().await;
    assert_eq!(store.count(&collection).await.unwrap(), IMAGES as u64);
    store.drop_collection(&collection).await.unwrap();
}

/// The bucket's owner revokes read access to one object (a bucket policy, an object ACL, a
/// KMS key the reader may not use): S3 answers that object's GETs with 403 AccessDenied while
/// listing still works. moto does not evaluate bucket policies in server mode, so a loopback
/// proxy in front of it answers the denied key exactly as S3 does and passes everything else on.
#[derive(Clone)]
struct DenyingProxy {
    upstream: String,
    /// A request path (`/bucket/key`) whose GETs are refused while set.
    denied: Arc<std::sync::Mutex<Option<String>>>,
}

async fn deny_or_forward(State(proxy): State<DenyingProxy>, request: axum::extract::Request) -> Response {
    let denied = proxy.denied.lock().map(|d| d.clone()).unwrap_or(None);
    if request.method() == axum::http::Method::GET && denied.as_deref() == Some(request.uri().path()) {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>\
                    <Message>Access Denied</Message><RequestId>TEST</RequestId></Error>";
        return (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "application/xml")], body).into_response();
    }
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut upstream = common::http_client().request(parts.method, format!("{}{path}", proxy.upstream)).body(body);
    for (name, value) in parts.headers.iter().filter(|(name, _)| *name != header::HOST) {
        upstream = upstream.header(name, value);
    }
    let Ok(answer) = upstream.send().await else { return StatusCode::BAD_GATEWAY.into_response() };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        response = response.header(name, value);
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response.body(axum::body::Body::from(bytes)).unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

#[tokio::test]
async fn an_object_the_reader_may_no_longer_read_keeps_its_indexed_copy() {
    let moto = common::s3::MotoServer::start().await;
    moto.create_bucket("photos").await;
    moto.put("photos", "shop/astronaut.jpg", sample("astronaut.jpg")).await;
    moto.put("photos", "shop/coffee.jpg", sample("coffee.jpg")).await;
    let proxy = DenyingProxy { upstream: moto.endpoint.clone(), denied: Default::default() };
    let app = Router::new().fallback(deny_or_forward).with_state(proxy.clone());
    let (address, server) = common::loopback_server(app).await;
    let endpoint = format!("http://{address}");
    let args = ["s3://photos/shop/", "--s3-endpoint", &endpoint, "--s3-region", "us-east-1"];
    let work = tempfile::tempdir().unwrap();
    let collection = common::unique_collection("s3denied");
    let first = ingest(work.path(), &collection, &args).await;
    assert!(first.success, "{}", first.stderr);
    assert_eq!(first.report["indexed"], 2, "{}", first.report);

    // The object changes (so the next run must read it again) and reading it is then denied.
    moto.overwrite("photos", "shop/coffee.jpg", sample("rocket.jpg")).await;
    *proxy.denied.lock().unwrap() = Some("/photos/shop/coffee.jpg".into());
    let denied = ingest(work.path(), &collection, &args).await;
    assert!(denied.success, "one unreadable object does not stop the run: {}", denied.stderr);
    let reason = failure_reason(&denied.report, "s3://photos/shop/coffee.jpg");
    assert!(reason.contains("access denied"), "the reason says what happened: {reason}; {}", denied.report);
    let catalog = Catalog::open(&catalog_url(work.path())).await.unwrap();
    let coffee = catalog.find(&collection, "s3://photos/shop/coffee.jpg").await.unwrap().expect("still catalogued");
    assert_eq!(coffee.status, ImageStatus::Indexed, "access denied is not now, not never: the copy stays indexed");
    let store = milvus().await;
    assert_eq!(store.count(&collection).await.unwrap(), 2, "its vector stays");
    let (_, query) = common::model().embed_bytes(&sample("coffee.jpg"), DecodeLimits::default()).unwrap();
    let hits = store.search(&collection, query, 1, &IndexSpec::default()).await.unwrap();
    assert_eq!(hits[0].uri, "s3://photos/shop/coffee.jpg", "the indexed copy still answers its picture");

    // Access restored: the changed object is read and replaces its vector.
    *proxy.denied.lock().unwrap() = None;
    let restored = ingest(work.path(), &collection, &args).await;
    assert_eq!(restored.report["indexed"], 1, "{}", restored.report);
    let (_, query) = common::model().embed_bytes(&sample("rocket.jpg"), DecodeLimits::default()).unwrap();
    let hits = store.search(&collection, query, 1, &IndexSpec::default()).await.unwrap();
    assert_eq!(hits[0].uri, "s3://photos/shop/coffee.jpg", "the new bytes are what is indexed now");
    assert_eq!(store.count(&collection).await.unwrap(), 2);
    store.drop_collection(&collection).await.unwrap();
    server.abort();
}

/// A small image server with the ways a URL can go wrong.
#[derive(Clone)]
struct Site {
    /// 0 while `/flaky.jpg` serves its image; otherwise the status it answers instead, or
    /// [`NEVER_ANSWERS`].
    flaky_status: Arc<AtomicU16>,
    port: u16,
}

/// `/flaky.jpg` accepts the request and never answers.
const NEVER_ANSWERS: u16 = 1;

async fn serve_image(UrlPath(name): UrlPath<String>) -> Response {
    match std::fs::read(common::photo(&name)) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "image/jpeg")], bytes).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `n` redirects (n ≥ 1), the last to the image: `/chain/5` is exactly the most a fetch follows.
async fn chain(UrlPath(n): UrlPath<u32>) -> Redirect {
    if n <= 1 { Redirect::temporary("/img/gravel.jpg") } else { Redirect::temporary(&format!("/chain/{}", n - 1)) }
}

async fn start_site() -> (Site, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = Site { flaky_status: Arc::new(AtomicU16::new(0)), port: listener.local_addr().unwrap().port() };
    let app = Router::new()
        .route("/img/{name}", get(serve_image))
        .route("/moved/moon", get(|| async { Redirect::temporary("/img/moon.jpg") }))
        .route(
            "/flaky.jpg",
            get(|State(site): State<Site>| async move {
                match site.flaky_status.load(Ordering::SeqCst) {
                    NEVER_ANSWERS => std::future::pending::<Response>().await,
                    code => match StatusCode::from_u16(code) {
                        Ok(status) => status.into_response(),
                        Err(_) => serve_image(UrlPath("camera.jpg".into())).await,
                    },
                }
            }),
        )
        .route("/page.html", get(|| async { ([(header::CONTENT_TYPE, "text/html")], "<html>hello</html>") }))
        .route(
            "/to-metadata",
            get(|| async { Redirect::temporary("http://169.254.169.254/latest/meta-data/iam/security-credentials/") }),
        )
        .route(
            "/to-ipv6-loopback",
            get(|State(site): State<Site>| async move {
                Redirect::temporary(&format!("http://[::1]:{}/img/astronaut.jpg", site.port))
            }),
        )
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route("/chain/{n}", get(chain))
        .route(
            "/slow.jpg",
            // Never answers: the fetch limit, not a race between two sleeps, ends it.
            get(std::future::pending::<Response>),
        )
        .with_state(site.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (site, task)
}

/// A server that claims a 300 MB image (axum would correct the length, so this one speaks HTTP
/// by hand), or at `/endless` sends an image body without end; the fetcher must refuse the
/// first on its header and stop reading the second at the cap.
async fn start_huge_server() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/huge.jpg", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let read = connection.read(&mut request).await.unwrap_or(0);
                if request[..read].starts_with(b"GET /endless") {
                    // No length at all: the body just keeps coming until the client hangs up.
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n";
                    let _ = connection.write_all(head.as_bytes()).await;
                    let chunk = vec![0u8; 1 << 20];
                    while connection.write_all(&chunk).await.is_ok() {}
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 314572800\r\n\r\n";
                let _ = connection.write_all(head.as_bytes()).await;
                let _ = connection.write_all(&[0xff, 0xd8, 0xff]).await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_url_list_is_fetched_within_the_guard_and_each_bad_url_fails_with_its_reason() {
    let (site, server) = start_site().await;
    let (huge, huge_server) = start_huge_server().await;
    let base = format!("http://127.0.0.1:{}", site.port);
    let work = tempfile::tempdir().unwrap();
    let url = |path: &str| format!("{base}{path}");
    let good = [
        url("/img/astronaut.jpg"),
        url("/img/coffee.jpg?size=large&v=2"),
        url("/moved/moon"),
        url("/chain/5"),
        url("/flaky.jpg"),
    ];
    let endless = huge.replace("/huge.jpg", "/endless");
    let not_allowed = format!("http://127.0.0.2:{}/img/astronaut.jpg", site.port);
    let bad = [
        (url("/page.html"), "the server sent Content-Type text/html, not an image"),
        (url("/img/missing.jpg"), "the server answered HTTP 404 Not Found"),
        (huge, "file is 314572800 bytes, over the limit of 268435456"),
        (url("/chain/6"), "more than 5 redirects"),
        (
            url("/to-metadata"),
            "169.254.169.254 is a link-local (cloud metadata lives at 169.254.169.254) address; refused",
        ),
        (url("/to-ipv6-loopback"), "::1 is a loopback address; refused"),
        (url("/loop"), "more than 5 redirects"),
        (not_allowed.clone(), "127.0.0.2 is a loopback address; refused"),
        (url("/slow.jpg"), "timed out after 5 s"),
    ];
    let mut list = String::from("# a hand-made list, with a comment and a blank line\n\n");
    for line in good.iter().chain(bad.iter().map(|(u, _)| u)) {
        list.push_str(line);
        list.push('\n');
    }
    let list_path = work.path().join("urls.txt");
    std::fs::write(&list_path, list).unwrap();
    let list_arg = list_path.to_str().unwrap();
    // 5 s for every URL: generous for the good ones on a loaded machine; the slow one never answers.
    let args = ["--url-list", list_arg, "--allow-private-network", "127.0.0.1/32", "--url-timeout-seconds", "5"];

    let collection = common::unique_collection("urls");
    let run = ingest(work.path(), &collection, &args).await;
    assert!(run.success, "{}", run.stderr);
    let report = &run.report;
    assert_eq!(report["discovered"], good.len() + bad.len(), "{report}");
    assert_eq!(report["indexed"], good.len(), "{report}");
    assert_eq!(report["failed"], bad.len(), "{report}");
    for (uri, reason) in &bad {
        let recorded = failure_reason(report, uri);
        assert!(recorded.contains(reason), "{uri}: expected {reason:?}, got {recorded:?}");
    }
    let catalog = Catalog::open(&catalog_url(work.path())).await.unwrap();
    let store = milvus().await;
    assert_eq!(store.count(&collection).await.unwrap(), good.len() as u64);
    // URIs are the URLs as listed (normalised), so search results point back at them.
    let moved = catalog.find(&collection, &url("/moved/moon")).await.unwrap().expect("catalogued by its listed URL");
    assert_eq!(moved.status, ImageStatus::Indexed);
    // The search server sends a browser to the listed URL; it fetches nothing itself.
    let search = imgsearch::api::app(imgsearch::api::ServerState::new(
        common::index(work.path()).await,
        imgsearch::api::ServeConfig::default(),
    ));
    let request = axum::http::Request::get(format!("/v1/images/{}", moved.id)).body(axum::body::Body::empty()).unwrap();
    let response = tower::ServiceExt::oneshot(search, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(response.headers()[header::LOCATION], url("/moved/moon").as_str());

    // A server error, a login wall, a timeout or a rate limit is "not now", not "never": the
    // image keeps its vector and stays indexed.
    // (The good URLs only, so each rerun does not wait out the slow one again.)
    let good_list = work.path().join("good.txt");
    std::fs::write(&good_list, good.join("\n")).unwrap();
    let rerun_args = ["--url-list", good_list.to_str().unwrap(), "--allow-private-network", "127.0.0.1/32"];
    for status in [503u16, 401, 403, 408, 429, NEVER_ANSWERS] {
        site.flaky_status.store(status, Ordering::SeqCst);
        let expected = if status == NEVER_ANSWERS { "timed out after 2 s".into() } else { format!("HTTP {status}") };
        let limited: Vec<&str> = rerun_args.iter().copied().chain(["--url-timeout-seconds", "2"]).collect();
        let rerun =
            ingest(work.path(), &collection, if status == NEVER_ANSWERS { &limited } else { &rerun_args }).await;
        let reason = failure_reason(&rerun.report, &url("/flaky.jpg"));
        assert!(reason.contains(&expected), "{expected}: {reason}; {}", rerun.report);
        let flaky = catalog.find(&collection, &url("/flaky.jpg")).await.unwrap().expect("still catalogued");
        assert_eq!(flaky.status, ImageStatus::Indexed, "{expected} kept the indexed copy");
        assert_eq!(store.count(&collection).await.unwrap(), good.len() as u64, "{expected}: vectors kept");
    }
    site.flaky_status.store(0, Ordering::SeqCst);

    // A proxy in the environment is never used: fetches go straight to the address the guard
    // checked (a proxy would fetch whatever it was asked, private networks included).
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_url = format!("http://{}", trap.local_addr().unwrap());
    let contacted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&contacted);
    let trap_task = tokio::spawn(async move {
        while let Ok((_connection, _)) = trap.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut proxied = ingest_command(work.path(), &collection, &rerun_args);
    for variable in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        proxied.env(variable, &trap_url);
    }
    let direct = finish(proxied).await;
    assert!(direct.success, "{}", direct.stderr);
    assert_eq!(direct.report["skipped"], good.len(), "every URL fetched and found unchanged: {}", direct.report);
    assert_eq!(contacted.load(Ordering::SeqCst), 0, "the proxy in the environment was contacted");
    trap_task.abort();

    // Without the explicit allowance, the same server is out of reach.
    let one = work.path().join("one.txt");
    let by_name = format!("http://localhost:{}/img/astronaut.jpg", site.port);
    std::fs::write(&one, format!("{}\n{by_name}\n", good[0])).unwrap();
    let guarded_collection = common::unique_collection("guarded");
    let guarded = ingest(work.path(), &guarded_collection, &["--url-list", one.to_str().unwrap()]).await;
    assert!(
        failure_reason(&guarded.report, &good[0]).contains("127.0.0.1 is a loopback address; refused"),
        "{}",
        guarded.report
    );
    // A body without a length is cut off at the cap (its own run: reading 256 MiB must not race
    // the 5 s limit above).
    let endless_list = work.path().join("endless.txt");
    std::fs::write(&endless_list, format!("{endless}\n")).unwrap();
    let endless_collection = common::unique_collection("endless");
    let allowed = ["--url-list", endless_list.to_str().unwrap(), "--allow-private-network", "127.0.0.1/32"];
    let capped = ingest(work.path(), &endless_collection, &allowed).await;
    assert_eq!(failure_reason(&capped.report, &endless), "the body is over the limit of 268435456 bytes");
    store.drop_collection(&endless_collection).await.unwrap();
    // A name is judged by what it resolves to, when the connection is made.
    let reason = failure_reason(&guarded.report, &by_name);
    assert!(reason.starts_with("localhost (") && reason.contains("is a loopback address; refused"), "{reason}");
    store.drop_collection(&collection).await.unwrap();
    store.drop_collection(&guarded_collection).await.unwrap();
    server.abort();
    huge_server.abort();
}

#[tokio::test]
async fn a_list_with_a_bad_line_is_refused_before_anything_is_written() {
    let work = tempfile::tempdir().unwrap();
    let list = work.path().join("urls.txt");
    std::fs::write(&list, "https://example.com/a.jpg\nfile:///etc/passwd\n").unwrap();
    let collection = common::unique_collection("badlist");
    let run = ingest(work.path(), &collection, &["--url-list", list.to_str().unwrap()]).await;
    assert!(!run.success);
    assert!(run.stderr.contains("line 2: \"file:///etc/passwd\" is not an http(s) URL"), "{}", run.stderr);
    assert!(!milvus().await.has_collection(&collection).await.unwrap(), "nothing was created");
}
