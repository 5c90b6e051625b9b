//! The HTTP API against the real model, Milvus Lite and SQLite: every route, happy and unhappy.

#[path = "../common/mod.rs"]
mod common;
// One test binary, a module per resource of the API (as src/api/v1/ is laid out).
mod auth;
mod bootcamp;
mod collections;
mod duplicates;
mod images;
mod operations;
mod search;
mod server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use imgsearch::api::auth::AuthConfig;
use imgsearch::api::{AppState, ServeConfig, ServerState, app};
use imgsearch::search::SearchSettings;
use imgsearch::source::urls::Fetcher;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Fixture {
    _work: tempfile::TempDir,
    state: AppState,
    /// The server's own Milvus and catalog, to look behind its back.
    store: imgsearch::store::MilvusStore,
    catalog: imgsearch::catalog::Catalog,
    images: PathBuf,
    uploads: PathBuf,
    collection: String,
}

/// A server whose default collection is fresh, with `photos` copied into an allowed load root.
async fn fixture(photos: &[&str], max_body_bytes: usize) -> Fixture {
    fixture_with_auth(photos, max_body_bytes, None).await
}

async fn fixture_with_auth(photos: &[&str], max_body_bytes: usize, auth: Option<AuthConfig>) -> Fixture {
    fixture_with(photos, |config| {
        config.max_body_bytes = max_body_bytes;
        config.auth = auth;
    })
    .await
}

/// A fixture whose settings `adjust` changes from the defaults above.
async fn fixture_with(photos: &[&str], adjust: impl FnOnce(&mut ServeConfig)) -> Fixture {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    common::copy_photos(photos, &images);
    let images = images.canonicalize().unwrap();
    let uploads = work.path().join("uploads");
    let collection = common::unique_collection("api");
    let mut config = ServeConfig {
        default_collection: collection.clone(),
        search: SearchSettings {
            load_roots: vec![images.clone()],
            upload_dir: uploads.clone(),
            batch_size: 8,
            ..SearchSettings::default()
        },
        ..ServeConfig::default()
    };
    adjust(&mut config);
    let index = common::index(work.path()).await;
    let (store, catalog) = (index.store().clone(), index.catalog().clone());
    let state = ServerState::new(index, config);
    Fixture { _work: work, state, store, catalog, images, uploads, collection }
}

impl Fixture {
    async fn call(&self, request: Request<Body>) -> (StatusCode, Vec<u8>) {
        let response = app(self.state.clone()).oneshot(request).await.expect("router answers");
        let status = response.status();
        let body = response.into_body().collect().await.expect("body").to_bytes().to_vec();
        (status, body)
    }

    async fn json(&self, request: Request<Body>) -> (StatusCode, Value) {
        let (status, body) = self.call(request).await;
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&body)));
        (status, value)
    }

    async fn load(&self) -> Value {
        let (status, body) = self.json(post_json("/img/load", json!({ "File": self.images }))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.json(Request::get(uri).body(Body::empty()).unwrap()).await
    }

    /// The id the catalog gave the image whose URI ends with `suffix`.
    async fn id_of(&self, suffix: &str) -> i64 {
        let (status, body) = self.get("/v1/images?limit=1000").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let images = body["images"].as_array().unwrap();
        let image = images.iter().find(|i| i["uri"].as_str().unwrap().ends_with(suffix));
        image.unwrap_or_else(|| panic!("no image ending {suffix:?} in {body}"))["id"].as_i64().unwrap()
    }

    async fn count(&self) -> u64 {
        let (status, body) = self.json(Request::post("/img/count").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_u64().expect("a bare number")
    }

    fn stored_uploads(&self) -> Vec<String> {
        match std::fs::read_dir(&self.uploads) {
            Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn post_json(uri: &str, body: Value) -> Request<Body> {
    Request::post(uri).header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())).unwrap()
}

/// A multipart/form-data request: `files` are (field, filename, bytes), `fields` are (name, value).
fn multipart(uri: &str, files: &[(&str, &str, &[u8])], fields: &[(&str, &str)]) -> Request<Body> {
    let boundary = "imgsearch-test-boundary";
    let mut body = Vec::new();
    for (name, filename, bytes) in files {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Request::post(uri)
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
        .body(Body::from(body))
        .unwrap()
}

fn photo_bytes(name: &str) -> Vec<u8> {
    std::fs::read(common::photo(name)).unwrap()
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

/// A real JPEG whose frame header is rewritten to claim `width`×`height`: whole markers, tables
/// and a scan, so only the size is wrong (a JPEG with a frame header and no scan cannot even
/// be measured, and is refused as truncated instead).
fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = common::formats::encode_rgb(&common::formats::upright(), image::ImageFormat::Jpeg, None);
    // Baseline frame header: FF C0, length (2), precision (1), height (2), width (2).
    let frame = bytes.windows(2).position(|pair| pair == [0xFF, 0xC0]).expect("the encoder writes a baseline frame");
    bytes[frame + 5..frame + 7].copy_from_slice(&height.to_be_bytes());
    bytes[frame + 7..frame + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

/// `imgsearch_search_stage_duration_seconds_count` of one stage, from `/metrics`.
async fn stage_count(f: &Fixture, stage: &str) -> u64 {
    let (status, text) = f.call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let prefix = format!(r#"imgsearch_search_stage_duration_seconds_count{{stage="{stage}"}} "#);
    let text = String::from_utf8(text).unwrap();
    let value = text.lines().find_map(|line| line.strip_prefix(prefix.as_str()));
    value.map_or(0, |v| v.trim().parse().unwrap_or_else(|_| panic!("{stage}: not a count: {v}")))
}

fn with_token(request: Request<Body>, token: &str) -> Request<Body> {
    with_token_scheme(request, "Bearer", token)
}

fn with_token_scheme(mut request: Request<Body>, scheme: &str, token: &str) -> Request<Body> {
    request.headers_mut().insert(header::AUTHORIZATION, format!("{scheme} {token}").parse().unwrap());
    request
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Writes `bytes` at `relative` under the fixture's load root, making folders as needed.
fn put_image(f: &Fixture, relative: &str, bytes: &[u8]) {
    let path = f.images.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// chelsea.jpg re-encoded at JPEG quality 50: a near-duplicate, as a re-saved copy would be.
fn chelsea_copy() -> Vec<u8> {
    common::encode_jpeg(&image::open(common::photo("chelsea.jpg")).unwrap(), 50)
}

fn ids(results: &Value) -> Vec<i64> {
    results.as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

/// A loopback web server holding one photo at /photo.jpg (and text at /page.html).
async fn photo_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let routes = axum::Router::new()
        .route("/photo.jpg", axum::routing::get(|| async { photo_bytes("coffee.jpg") }))
        .route("/page.html", axum::routing::get(|| async { ([(header::CONTENT_TYPE, "text/html")], "<html></html>") }))
        .route("/huge.jpg", axum::routing::get(|| async { vec![0xFFu8; 3 << 20] }))
        .route(
            "/never.jpg",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "too late"
            }),
        );
    common::loopback_server(routes).await
}

/// The URL fetcher `imgsearch serve` builds from these flags (with its own time limit and
/// `--max-body-bytes`), through the same parsing and `resolve` as the binary.
fn url_fetcher_from_flags(flags: &[&str]) -> Option<std::sync::Arc<Fetcher>> {
    use clap::Parser;
    let uploads = tempfile::tempdir().unwrap();
    let upload_dir = uploads.path().to_str().expect("a UTF-8 temporary path");
    let argv: Vec<&str> =
        ["imgsearch", "serve", "--upload-dir", upload_dir].into_iter().chain(flags.iter().copied()).collect();
    let cli = imgsearch::cli::Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{flags:?}: {e}"));
    let imgsearch::cli::Command::Serve(serve) = cli.command else { panic!("not a serve command") };
    let config = serve.command().server.resolve("images").unwrap_or_else(|e| panic!("{flags:?}: {e}"));
    assert!(config.search.url_fetcher.is_some(), "{flags:?} turned searching by URL on");
    config.search.url_fetcher
}

/// Starts the real server (`api::serve`, what `imgsearch serve` runs) on a free loopback port
/// with the fixture's connection limits; returns its address.
async fn serve(f: &Fixture) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(imgsearch::api::serve(listener, f.state.clone(), imgsearch::shutdown::Shutdown::never()));
    address
}

/// Reads from `stream` until the server closes it (or sends something); what arrived, or a
/// failure naming `what` when nothing happens within `deadline`.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, deadline: Duration, what: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read_all = async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(deadline, read_all).await.is_ok();
    assert!(closed, "{what}: still open after {deadline:?}, having received {:?}", String::from_utf8_lossy(&received));
    received
}
