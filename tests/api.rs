//! The HTTP API against the real model, Milvus Lite and SQLite: every route, happy and unhappy.

mod common;

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
    let (store, catalog) = (index.store.clone(), index.catalog.clone());
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

#[tokio::test]
async fn v1_search_returns_the_closest_images_best_first_with_fetchable_thumbnails() {
    let f = fixture(&["astronaut.jpg", "coffee.jpg", "rocket.jpg", "chelsea.jpg"], 20 << 20).await;
    f.load().await;
    let query = photo_bytes("chelsea.jpg");

    let (status, body) = f.json(multipart("/v1/search", &[("image", "q.jpg", &query)], &[("top_k", "3")])).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0]["uri"].as_str().unwrap().ends_with("/chelsea.jpg"), "{body}");
    assert!(results[0]["score"].as_f64().unwrap() > 0.99);
    let scores: Vec<f64> = results.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "not best first: {scores:?}");
    let (status, bytes) =
        f.call(Request::get(results[0]["image_url"].as_str().unwrap()).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, query);
}

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
async fn upload_stores_under_the_content_hash_never_the_client_name() {
    let f = fixture(&[], 20 << 20).await;
    let bytes = photo_bytes("rocket.jpg");

    let (status, body) = f.json(multipart("/img/upload", &[("image", "../../../../tmp/evil.jpg", &bytes)], &[])).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], json!(true));
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    assert_eq!(f.stored_uploads(), vec![format!("{hash}.jpg")]);
    assert!(!Path::new("/tmp/evil.jpg").exists());
    assert_eq!(f.count().await, 1);
    // The uploaded image is searchable and servable.
    let (_, found) = f.json(multipart("/img/search", &[("image", "q", &bytes)], &[("topk", "1")])).await;
    assert!(found[0][0].as_str().unwrap().ends_with(&format!("{hash}.jpg")), "{found}");
    let id = body["id"].as_i64().unwrap();
    let (status, served) = f.call(Request::get(format!("/v1/images/{id}")).body(Body::empty()).unwrap()).await;
    assert_eq!((status, served.len()), (StatusCode::OK, bytes.len()));
    // The same bytes again: same image, no duplicate vector.
    let (_, again) = f.json(multipart("/img/upload", &[("image", "other-name.jpg", &bytes)], &[])).await;
    assert_eq!(again["id"], body["id"]);
    assert_eq!(f.count().await, 1);
}

/// A JPEG header announcing `width`×`height` pixels (an SOF0 segment) and nothing decodable.
fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    bytes.extend_from_slice(&height.to_be_bytes());
    bytes.extend_from_slice(&width.to_be_bytes());
    bytes.extend_from_slice(&[0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01]);
    bytes.extend_from_slice(&[0xFF, 0xD9]);
    bytes
}

/// Every hostile input the issue lists, in one table: the status and error code each gets, and
/// afterwards, proof that none of them stored, indexed or wrote anything.
#[tokio::test]
async fn hostile_inputs_get_specific_errors_and_store_nothing() {
    const TOKEN: &str = "hostile-table-token";
    let f = fixture_with(&["astronaut.jpg"], |config| {
        config.max_body_bytes = 2 << 20;
        config.auth = Some(AuthConfig::new(TOKEN, false).unwrap());
        // Searching by URL on, with the default guard: only public addresses.
        config.search.url_fetcher = url_fetcher_from_flags(&["--search-by-url"]);
    })
    .await;
    let (status, body) = f.json(with_token(post_json("/img/load", json!({ "File": f.images })), TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let photo = photo_bytes("rocket.jpg");
    let truncated = photo[..photo.len() / 2].to_vec();
    let big = vec![0xFFu8; 3 << 20];
    let png_bomb = common::png_claiming(100_000, 100_000);
    let jpeg_bomb = jpeg_claiming(65_000, 65_000);
    let corrupt = common::corrupt_jpeg();
    // A CMYK JPEG on which zune-jpeg's upsampler panics (found by `make fuzz`).
    let panicking = std::fs::read(common::fuzz_regression("decode", "zune-upsampler-panic.jpg")).unwrap();
    // A GIF whose bytes are also a script: read as a GIF, it has no image data.
    let polyglot = b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00*/=1;alert(document.domain);".to_vec();
    let webp = common::formats::encode_rgb(&common::formats::upright(), image::ImageFormat::WebP, None);
    let truncated_webp = webp[..webp.len() / 2].to_vec();
    let gif = common::formats::encode_rgb(&common::formats::upright(), image::ImageFormat::Gif, None);
    let truncated_gif = gif[..gif.len() / 2].to_vec();
    let tiff = common::formats::encode_rgb(&common::formats::upright(), image::ImageFormat::Tiff, None);
    let truncated_tiff = tiff[..tiff.len() / 2].to_vec();
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#.to_vec();
    let pdf = b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF".to_vec();
    let html_in_png_clothes = b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script></html>".to_vec();
    let long_field = "x".repeat(2000);
    let upload = |name: &str, bytes: &[u8]| with_token(multipart("/v1/images", &[("image", name, bytes)], &[]), TOKEN);
    let search = |fields: &[(&str, &str)]| multipart("/v1/search", &[], fields);

    type Case = (&'static str, Request<Body>, StatusCode, &'static str);
    let cases: Vec<Case> = vec![
        // Files that are not (usable) images.
        ("0-byte file", upload("empty.jpg", b""), StatusCode::BAD_REQUEST, "bad_request"),
        (
            "text named .jpg",
            upload("notes.jpg", b"just text"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        ("truncated JPEG", upload("half.jpg", &truncated), StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_image"),
        ("corrupt JPEG", upload("c.jpg", &corrupt), StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_image"),
        (
            "a JPEG that panics a decoder",
            upload("cmyk.jpg", &panicking),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        ("PNG bomb 100000²", upload("bomb.png", &png_bomb), StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_image"),
        (
            "JPEG claiming 65000²",
            upload("bomb.jpg", &jpeg_bomb),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        (
            "GIF/JavaScript polyglot",
            upload("p.gif", &polyglot),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        ("truncated WebP", upload("t.webp", &truncated_webp), StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_image"),
        (
            "WebP claiming 16000²",
            upload("bomb.webp", &common::formats::webp_claiming_16000()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        ("truncated GIF", upload("t.gif", &truncated_gif), StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_image"),
        (
            "GIF claiming 65000²",
            upload("bomb.gif", &common::formats::gif_claiming(65_000)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        (
            "BMP claiming 60000²",
            upload("bomb.bmp", &common::formats::bmp_claiming(60_000, 60_000)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        ("truncated TIFF", upload("t.tif", &truncated_tiff), StatusCode::UNPROCESSABLE_ENTITY, "unprocessable_image"),
        (
            "TIFF claiming 100000²",
            upload("bomb.tif", &common::formats::tiff_claiming(100_000)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        (
            "TIFF with 200 million strips",
            upload("strips.tif", &common::formats::tiff_with_absurd_strip_count()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        (
            "HEIC (no pure-Rust decoder)",
            upload("IMG_0001.HEIC", &common::formats::iso_bmff_with_brand(b"heic")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "AVIF (no pure-Rust decoder)",
            upload("a.avif", &common::formats::iso_bmff_with_brand(b"avif")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        ("SVG with a script", upload("x.svg", &svg), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        ("PDF", upload("x.pdf", &pdf), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        (
            "HTML behind a PNG signature",
            upload("x.png", &html_in_png_clothes),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        (
            // Refused by its content: the name plays no part (a traversing name on an image is
            // checked below, stored under its hash).
            "text under a traversal filename",
            upload("../../../../etc/passwd", b"root:x:0:0"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        // Bodies and forms.
        ("body over the limit", upload("big.jpg", &big), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        (
            "search body over the limit",
            multipart("/v1/search", &[("image", "big.jpg", &big)], &[]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "no image field",
            with_token(multipart("/v1/images", &[("photo", "x.jpg", &photo)], &[]), TOKEN),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "JSON, not multipart",
            with_token(post_json("/v1/images", json!({"image": "x"})), TOKEN),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        ("text field over 1 KiB", search(&[("url", &long_field)]), StatusCode::BAD_REQUEST, "bad_request"),
        // Parameters.
        (
            "collection with ../",
            with_token(multipart("/v1/images?collection=../x", &[("image", "a.jpg", &photo)], &[]), TOKEN),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "collection with NUL",
            Request::get("/v1/count?collection=a%00b").body(Body::empty()).unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "top_k 0",
            multipart("/v1/search", &[("image", "a.jpg", &photo)], &[("top_k", "0")]),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "top_k 10^20",
            multipart("/v1/search", &[("image", "a.jpg", &photo)], &[("top_k", "100000000000000000000")]),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "max_distance NaN",
            multipart("/v1/search", &[("image", "a.jpg", &photo)], &[("max_distance", "NaN")]),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "id beyond i64",
            Request::get("/v1/images/99999999999999999999").body(Body::empty()).unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "page_token forged",
            Request::get("/v1/images?page_token=abc").body(Body::empty()).unwrap(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "bootcamp folder outside the roots",
            with_token(post_json("/img/load", json!({ "File": "/etc" })), TOKEN),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            // With an image too: the refusal is the `url` parameter's, not a missing file's.
            "bootcamp upload by URL",
            with_token(
                multipart("/img/upload?url=http://169.254.169.254/latest", &[("image", "a.jpg", &photo)], &[]),
                TOKEN,
            ),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        // URLs a search by URL must not fetch.
        (
            "file: URL",
            search(&[("url", "file:///etc/passwd")]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        (
            "loopback URL",
            search(&[("url", "http://127.0.0.1:9/x.jpg")]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        (
            "IPv6 loopback URL",
            search(&[("url", "http://[::1]/x.jpg")]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        (
            "metadata URL",
            search(&[("url", "http://169.254.169.254/latest/meta-data/")]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        (
            "decimal-encoded loopback",
            search(&[("url", "http://2130706433/x.jpg")]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        (
            "URL with credentials",
            search(&[("url", "https://user:pw@example.com/x.jpg")]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_image",
        ),
        // Tokens.
        (
            "write without a token",
            multipart("/v1/images", &[("image", "a.jpg", &photo)], &[]),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "write with a wrong token",
            with_token(multipart("/v1/images", &[("image", "a.jpg", &photo)], &[]), "guess"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "write with the token as Basic",
            with_token_scheme(multipart("/v1/images", &[("image", "a.jpg", &photo)], &[]), "Basic", TOKEN),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "write with the token plus a byte",
            with_token(multipart("/v1/images", &[("image", "a.jpg", &photo)], &[]), &format!("{TOKEN}x")),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "delete without a token",
            Request::delete("/v1/images/1").body(Body::empty()).unwrap(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "drop with a wrong token",
            with_token(Request::post("/img/drop").body(Body::empty()).unwrap(), "guess"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
    ];
    let mut failures = Vec::new();
    for (what, request, expected_status, expected_code) in cases {
        let (status, body) = f.call(request).await;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or("(no error body)");
        let message = body["error"]["message"].as_str().unwrap_or("");
        if status != expected_status || code != expected_code || message.is_empty() {
            failures.push(format!("{what}: expected {expected_status} {expected_code}, got {status} {body}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The URL rows above share their 422 with any fetch that fails (nothing answers here), so
    // each must also carry the guard's own refusal: these were refused, not tried.
    for (url, guard_says) in [
        ("http://127.0.0.1:9/x.jpg", "127.0.0.1 is a loopback address; refused"),
        ("http://[::1]/x.jpg", "::1 is a loopback address; refused"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local (cloud metadata"),
        ("http://2130706433/x.jpg", "127.0.0.1 is a loopback address; refused"),
        ("https://user:pw@example.com/x.jpg", "carries credentials"),
        ("file:///etc/passwd", "http"),
    ] {
        let (status, body) = f.json(search(&[("url", url)])).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(status == StatusCode::UNPROCESSABLE_ENTITY && message.contains(guard_says), "{url}: {status} {body}");
    }

    // A prefix built to break out of the filter expression matches nothing, rather than everything.
    let (status, body) = f
        .json(multipart("/v1/search", &[("image", "q.jpg", &photo)], &[("prefix", r#"x" or id > 0 or uri == ""#)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"], json!([]), "{body}");

    // Nothing stored, indexed or written by any of it.
    assert_eq!(f.count().await, 1, "nothing was added");
    assert!(f.stored_uploads().is_empty(), "nothing was written: {:?}", f.stored_uploads());
    let (_, listing) = f.get("/v1/images").await;
    assert_eq!(listing["images"].as_array().unwrap().len(), 1, "{listing}");
    // An image with an absolute or traversing name is stored under its hash, inside the upload folder.
    let (status, body) = f.json(upload("/etc/cron.d/evil.jpg", &photo)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&photo));
    assert_eq!(f.stored_uploads(), vec![format!("{hash}.jpg")]);
    assert!(!Path::new("/etc/cron.d/evil.jpg").exists());
}

#[tokio::test]
async fn only_catalogued_images_are_ever_served() {
    let f = fixture(&["astronaut.jpg"], 20 << 20).await;
    f.load().await;
    for uri in ["/data?image_path=/etc/passwd", "/data?image_path=../../etc/passwd", "/v1/images/987654321"] {
        let (status, body) = f.json(Request::get(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
    }
    let (status, body) = f.json(Request::get("/v1/images/not-a-number").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = f.json(Request::get("/data").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
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

#[tokio::test]
async fn searching_a_collection_that_does_not_exist_is_a_404_with_a_hint() {
    let f = fixture(&[], 20 << 20).await;
    let query = photo_bytes("coffee.jpg");
    let (status, body) = f.json(multipart("/v1/search", &[("image", "q.jpg", &query)], &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("load or upload images first"), "{body}");
    let (status, _) = f.json(Request::get("/v1/count").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(f.count().await, 0, "the bootcamp count answers 0 for a missing collection");
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

#[tokio::test]
async fn a_collection_is_checked_once_and_one_dropped_behind_the_servers_back_is_a_404_then_found_again() {
    let f = fixture(&["coffee.jpg", "astronaut.jpg"], 20 << 20).await;
    f.load().await;
    let query = photo_bytes("coffee.jpg");
    let search = || multipart("/v1/search", &[("image", "q.jpg", &query)], &[]);
    for _ in 0..3 {
        let (status, body) = f.json(search()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(stage_count(&f, "milvus_check").await, 1, "Milvus is asked whether the collection exists once");

    // Another server (or the controller) drops it: the next search says so, as the check would.
    f.store.drop_collection(&f.collection).await.unwrap();
    let (status, body) = f.json(search()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("does not exist"), "{body}");
    let (status, body) = f.json(search()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(stage_count(&f, "milvus_check").await, 2, "after a miss the existence is asked again");

    // Recreated by an upload: found again.
    let (status, body) = f.json(multipart("/v1/images", &[("image", "c.jpg", &query)], &[])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = f.json(search()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["results"][0]["score"].as_f64().unwrap() > 0.99, "{body}");
}

#[tokio::test]
async fn v1_images_adds_an_upload_and_v1_count_counts_it() {
    let f = fixture(&[], 20 << 20).await;
    let bytes = photo_bytes("astronaut.jpg");
    let (status, body) = f.json(multipart("/v1/images", &[("image", "a.jpg", &bytes)], &[])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, count) = f.json(Request::get("/v1/count").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(count, json!({ "collection": f.collection, "count": 1 }));
}

fn with_token(request: Request<Body>, token: &str) -> Request<Body> {
    with_token_scheme(request, "Bearer", token)
}

fn with_token_scheme(mut request: Request<Body>, scheme: &str, token: &str) -> Request<Body> {
    request.headers_mut().insert(header::AUTHORIZATION, format!("{scheme} {token}").parse().unwrap());
    request
}

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
async fn max_distance_cuts_off_results_that_are_not_close_enough() {
    let f = fixture(&["coffee.jpg", "rocket.jpg", "astronaut.jpg"], 20 << 20).await;
    f.load().await;
    let query = photo_bytes("coffee.jpg");
    let search = |fields: &[(&str, &str)]| multipart("/v1/search", &[("image", "q.jpg", &query)], fields);
    let (status, all) = f.json(search(&[])).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let distances: Vec<f64> =
        all["results"].as_array().unwrap().iter().map(|r| r["distance"].as_f64().unwrap()).collect();
    assert_eq!(distances.len(), 3);
    // A cut-off between the best (the photo itself, ≈ 0) and the rest keeps only the best.
    let cut = (distances[0] + distances[1]) / 2.0;
    let (status, near) = f.json(search(&[("max_distance", &cut.to_string())])).await;
    assert_eq!(status, StatusCode::OK, "{near}");
    let kept: Vec<&str> = near["results"].as_array().unwrap().iter().map(|r| r["uri"].as_str().unwrap()).collect();
    assert_eq!(kept.len(), 1, "{near}");
    assert!(kept[0].ends_with("/coffee.jpg"));
    for bad in ["-0.1", "2.5", "close", "NaN"] {
        let (status, body) = f.json(search(&[("max_distance", bad)])).await;
        assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, "bad_request"), "{bad}");
        assert!(body["error"]["message"].as_str().unwrap().contains("max_distance"), "{body}");
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
    let mut index = common::index(work.path()).await;
    index.store =
        imgsearch::store::MilvusStore::connect(&milvus.uri(), None).await.expect("connect through the forwarder");
    // The store keeps its production patience (20 s a call): readiness must answer within the
    // probe's timeout all the same.
    index.catalog = behind.catalog.clone();
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

/// A PostgreSQL catalog that goes away, refusing connections and then silently (a black hole,
/// for longer than a catalog call's 30 s patience): an upload meanwhile is answered 503 with
/// `Retry-After` (not left hanging, not a 500), at once when refused and within the patience
/// when silent, and nothing of it is written; once the catalog is back the same upload is
/// stored, and the image uploaded before the outage is still there.
#[tokio::test]
async fn a_catalog_that_refuses_or_stops_answering_gets_uploads_a_503_within_its_patience_and_loses_nothing() {
    let behind = common::databases::postgres_catalog_behind_a_link("long_outage").await;
    let catalog_link = &behind.link;
    let work = tempfile::tempdir().unwrap();
    let mut index = common::index(work.path()).await;
    index.catalog = behind.catalog.clone();
    let collection = common::unique_collection("long_outage");
    let config = ServeConfig {
        default_collection: collection.clone(),
        search: SearchSettings { upload_dir: work.path().join("uploads"), ..SearchSettings::default() },
        ..ServeConfig::default()
    };
    let app = app(ServerState::new(index, config));
    let upload = |name: &'static str| {
        let app = app.clone();
        async move {
            let response =
                app.oneshot(multipart("/v1/images", &[("image", "a.jpg", &photo_bytes(name))], &[])).await.unwrap();
            let status = response.status();
            let retry_after = response.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes().to_vec());
            let body: Value =
                serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
            (status, retry_after, body)
        }
    };
    let (status, _, body) = upload("coffee.jpg").await;
    assert_eq!(status, StatusCode::CREATED, "before the outage: {body}");

    for (outage, within) in [("refused", Duration::from_secs(5)), ("silent", Duration::from_secs(30 + 5))] {
        if outage == "refused" {
            catalog_link.cut();
        } else {
            catalog_link.restore();
            catalog_link.black_hole(); // connections are accepted, nothing reaches either side
        }
        let asked = std::time::Instant::now();
        let (status, retry_after, body) = tokio::time::timeout(Duration::from_secs(90), upload("rocket.jpg"))
            .await
            .unwrap_or_else(|_| panic!("an upload during a {outage} catalog was still unanswered after 90 s"));
        let waited = asked.elapsed();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{outage} catalog: {body}");
        assert_eq!(retry_after.as_deref(), Some(&b"5"[..]), "{outage} catalog: a 503 says when to retry: {body}");
        assert_eq!(error_code(&body), "unavailable", "{body}");
        assert!(waited < within, "{outage} catalog: answered after {waited:?}, not within {within:?}");
        eprintln!("an upload during a {outage} catalog was answered 503 after {waited:?}");
    }
    let store = imgsearch::store::MilvusStore::connect(&common::milvus_uri(), None).await.unwrap();
    assert_eq!(store.count(&collection).await.unwrap(), 1, "nothing of the refused upload reached Milvus");

    catalog_link.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body) = upload("rocket.jpg").await;
        if status == StatusCode::CREATED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "while the catalog comes back: {body}");
        assert!(std::time::Instant::now() < deadline, "uploads still refused 60 s after the catalog came back: {body}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(store.count(&collection).await.unwrap(), 2, "both uploads are indexed once the catalog is back");
}

#[tokio::test]
async fn a_real_http_client_can_search_over_loopback() {
    let f = fixture(&["astronaut.jpg", "rocket.jpg"], 20 << 20).await;
    f.load().await;
    let address = serve(&f).await;

    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(photo_bytes("rocket.jpg")).file_name("rocket.jpg"))
        .text("top_k", "1");
    let response =
        common::http_client().post(format!("http://{address}/v1/search")).multipart(form).send().await.unwrap();

    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert!(body["results"][0]["uri"].as_str().unwrap().ends_with("/rocket.jpg"), "{body}");
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

#[tokio::test]
async fn listings_page_by_id_filter_by_status_and_prefix_and_say_why_images_failed() {
    let f = fixture(&[], 20 << 20).await;
    let photo = photo_bytes("coffee.jpg");
    // Folder names with LIKE wildcards and a quote: matched literally.
    for name in ["a_b/1.jpg", "a_b/2.jpg", "axb/3.jpg", "a%b/4.jpg", "q\"uote/5.jpg"] {
        put_image(&f, name, &photo);
    }
    put_image(&f, "a_b/broken.jpg", &common::corrupt_jpeg());
    f.load().await;

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let (status, page) = f.get(&format!("/v1/images?limit=4&page_token={token}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(ids(&page["images"]));
        match page["next_page_token"].as_str() {
            Some(next) => token = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "id order, no repeats: {seen:?}");

    let prefix = |folder: &str| format!("{}/{folder}/", f.images.display());
    let (_, page) = f.get(&format!("/v1/images?prefix={}", urlencode(&prefix("a_b")))).await;
    let uris: Vec<&str> = page["images"].as_array().unwrap().iter().map(|i| i["uri"].as_str().unwrap()).collect();
    assert_eq!(uris.len(), 3, "a_b/ only, not axb/: {page}");
    assert!(uris.iter().all(|u| u.contains("/a_b/")), "{page}");
    let (_, page) = f.get(&format!("/v1/images?prefix={}", urlencode(&prefix("a%b")))).await;
    assert_eq!(page["images"].as_array().unwrap().len(), 1, "{page}");
    let (_, page) = f.get(&format!("/v1/images?prefix={}", urlencode(&prefix("q\"uote")))).await;
    assert_eq!(page["images"].as_array().unwrap().len(), 1, "{page}");

    let (_, page) = f.get("/v1/images?status=failed").await;
    let failed = page["images"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{page}");
    assert!(failed[0]["uri"].as_str().unwrap().ends_with("/broken.jpg"));
    assert!(failed[0]["error"].as_str().unwrap().contains("corrupt"), "{page}");
    let (status, info) = f.get(&format!("/v1/images/{}/info", failed[0]["id"])).await;
    assert_eq!((status, &info["status"]), (StatusCode::OK, &json!("failed")), "{info}");

    // Search within a folder: same photo everywhere, only a_b/ may answer.
    let (status, body) = f
        .json(multipart("/v1/search", &[("image", "q.jpg", &photo)], &[("top_k", "10"), ("prefix", &prefix("a_b"))]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "the two indexed images of a_b/: {body}");
    assert!(results.iter().all(|r| r["uri"].as_str().unwrap().contains("/a_b/")), "{body}");

    let (status, body) = f.get("/v1/images?status=lost").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = f.get("/v1/images?limit=5000").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = f.get("/v1/images?collection=no-dashes").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = f.get("/v1/collections").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["collections"],
        json!([{ "name": f.collection, "default": true, "indexed": 5, "pending": 0, "failed": 1 }])
    );
}

#[tokio::test]
async fn delete_removes_an_image_from_search_and_catalog_and_an_uploads_file() {
    let f = fixture(&["rocket.jpg"], 20 << 20).await;
    f.load().await;
    let bytes = photo_bytes("astronaut.jpg");
    let (status, added) = f.json(multipart("/v1/images", &[("image", "a.jpg", &bytes)], &[])).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let uploaded = added["id"].as_i64().unwrap();
    assert_eq!(f.stored_uploads().len(), 1);
    assert_eq!(f.count().await, 2);

    let delete = |id: i64| Request::delete(format!("/v1/images/{id}")).body(Body::empty()).unwrap();
    let (status, _) = f.call(delete(uploaded)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(f.count().await, 1);
    assert!(f.stored_uploads().is_empty(), "the upload's file goes with it");
    let (status, _) = f.get(&format!("/v1/images/{uploaded}/info")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, found) = f.json(multipart("/v1/search", &[("image", "q.jpg", &bytes)], &[])).await;
    assert!(!ids(&found["results"]).contains(&uploaded), "{found}");
    let (status, body) = f.call(delete(uploaded)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&body));

    // An image of a folder: out of search and catalog, its file untouched.
    let rocket = f.id_of("/rocket.jpg").await;
    let (status, _) = f.call(delete(rocket)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(f.count().await, 0);
    assert!(f.images.join("rocket.jpg").is_file());
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

#[tokio::test]
async fn search_by_url_is_off_by_default_and_guarded_when_on() {
    let (address, server) = photo_server().await;
    let photo_url = format!("http://{address}/photo.jpg");

    let off = fixture(&["coffee.jpg", "rocket.jpg"], 20 << 20).await;
    off.load().await;
    let (status, body) = off.json(multipart("/v1/search", &[], &[("url", &photo_url)])).await;
    assert_eq!((status, error_code(&body)), (StatusCode::FORBIDDEN, "forbidden"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--search-by-url"), "{body}");

    // On, with the default guard (`--search-by-url` alone, wired as `imgsearch serve` wires it):
    // loopback, file: and metadata addresses are refused by the guard, in its words.
    let guarded = fixture_with(&["coffee.jpg"], |config| {
        config.search.url_fetcher = url_fetcher_from_flags(&["--search-by-url"]);
    })
    .await;
    guarded.load().await;
    for (url, expected) in [
        (photo_url.as_str(), "127.0.0.1 is a loopback address; refused"),
        ("file:///etc/passwd", "is not an http(s) URL"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "is a link-local (cloud metadata lives at 169.254.169.254) address",
        ),
        ("not a url", "is not a URL"),
    ] {
        let (status, body) = guarded.json(multipart("/v1/search", &[], &[("url", url)])).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{url}: {message}");
    }
    let image = photo_bytes("coffee.jpg");
    let (status, body) = guarded
        .json(multipart("/v1/search", &[("image", "q.jpg", &image)], &[("url", "https://example.com/a.jpg")]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "both: {body}");

    // Loopback allowed explicitly: the photo is fetched and found; a web page is not an image.
    let allowed = fixture_with(&["coffee.jpg", "rocket.jpg"], |config| {
        config.search.url_fetcher = url_fetcher_from_flags(&[
            "--search-by-url",
            "--search-url-allow-network",
            "127.0.0.1/32",
            "--max-body-bytes",
            "2097152",
        ]);
    })
    .await;
    allowed.load().await;
    let (status, body) = allowed.json(multipart("/v1/search", &[], &[("url", &photo_url), ("top_k", "1")])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["results"][0]["uri"].as_str().unwrap().ends_with("/coffee.jpg"), "{body}");
    let (status, body) =
        allowed.json(multipart("/v1/search", &[], &[("url", &format!("http://{address}/page.html"))])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("text/html"), "{body}");
    let (status, body) =
        allowed.json(multipart("/v1/search", &[], &[("url", &format!("http://{address}/missing.jpg"))])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("404"), "{body}");
    // No more from a URL than an upload may carry.
    let (status, body) =
        allowed.json(multipart("/v1/search", &[], &[("url", &format!("http://{address}/huge.jpg"))])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("over the limit of 2097152"), "{body}");
    // Someone is waiting: a URL that never answers is given up after the server's 10 s.
    let started = std::time::Instant::now();
    let (status, body) =
        allowed.json(multipart("/v1/search", &[], &[("url", &format!("http://{address}/never.jpg"))])).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("timed out after 10 s"), "{body}");
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(13),
        "a URL that never answers was given up after {waited:?}, not the server's 10 s"
    );
    server.abort();
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

/// Uploads as phones and web pages send them: a photo stored sideways with its EXIF orientation
/// is indexed upright and described at its displayed size; WebP, GIF, BMP and TIFF are accepted
/// and served back with their own content type.
#[tokio::test]
async fn uploads_are_indexed_as_displayed_in_every_supported_format() {
    use common::formats::{encode_rgb, exif_orientation, stored_for};
    let f = fixture(&[], 20 << 20).await;
    let chelsea = image::load_from_memory(&photo_bytes("chelsea.jpg")).expect("decodes").to_rgb8();
    for orientation in [6u8, 8, 3] {
        let phone = encode_rgb(
            &stored_for(orientation, &chelsea),
            image::ImageFormat::Jpeg,
            Some(exif_orientation(orientation.into())),
        );
        let (status, body) = f.json(multipart("/v1/images", &[("image", "IMG.jpg", &phone)], &[])).await;
        assert_eq!(status, StatusCode::CREATED, "orientation {orientation}: {body}");
        let (_, info) = f.get(&format!("/v1/images/{}/info", body["id"])).await;
        assert_eq!((&info["width"], &info["height"]), (&json!(chelsea.width()), &json!(chelsea.height())), "{info}");
    }
    // Each of the three is its upright original to the model.
    let (status, body) =
        f.json(multipart("/v1/search", &[("image", "q.jpg", &photo_bytes("chelsea.jpg"))], &[("top_k", "3")])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for result in body["results"].as_array().expect("results") {
        assert!(result["distance"].as_f64().unwrap() < 0.02, "an oriented upload is not upright: {body}");
    }

    for (format, mime) in [
        (image::ImageFormat::WebP, "image/webp"),
        (image::ImageFormat::Gif, "image/gif"),
        (image::ImageFormat::Bmp, "image/bmp"),
        (image::ImageFormat::Tiff, "image/tiff"),
    ] {
        let bytes = encode_rgb(&chelsea, format, None);
        let (status, body) = f.json(multipart("/v1/images", &[("image", "upload", &bytes)], &[])).await;
        assert_eq!(status, StatusCode::CREATED, "{format:?}: {body}");
        let response = app(f.state.clone())
            .oneshot(Request::get(format!("/v1/images/{}", body["id"])).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{format:?}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], mime, "{format:?}");
    }

    // HEIC is refused with a message that names it and says what to do.
    let heic = common::formats::iso_bmff_with_brand(b"heic");
    let (status, body) = f.json(multipart("/v1/images", &[("image", "IMG_0001.HEIC", &heic)], &[])).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("HEIC") && message.contains("convert it to JPEG"), "{message}");
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

/// Slow clients (slowloris): connections that send part of their headers and then nothing are
/// closed after the header timeout; a body that stops arriving is answered 408 and the
/// connection closed; meanwhile, and afterwards, normal requests are served. A slow upload that
/// keeps moving is kept: its body takes three times the idle limit, every gap shorter than it.
#[tokio::test]
async fn stalled_connections_are_closed_while_normal_requests_are_served() {
    use tokio::io::AsyncWriteExt;
    let limits = imgsearch::api::server::ConnectionLimits {
        header_timeout: Duration::from_secs(1),
        body_idle_timeout: Duration::from_secs(1),
        max_connections: 64,
    };
    let f = fixture_with(&[], |config| config.connection_limits = limits).await;
    let address = serve(&f).await;
    let mut stalled_headers = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Ty").await.unwrap();
        stalled_headers.push(stream);
    }
    let mut stalled_body = tokio::net::TcpStream::connect(address).await.unwrap();
    stalled_body
        .write_all(b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n\xff\xd8")
        .await
        .unwrap();
    // Served while those connections are held.
    let health = common::http_client().get(format!("http://{address}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);

    let answer = read_until_closed(&mut stalled_body, Duration::from_secs(10), "a connection whose body stalled").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("request_timeout") && answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    for mut stream in stalled_headers {
        let answer =
            read_until_closed(&mut stream, Duration::from_secs(10), "a connection whose headers stalled").await;
        // Closed without an answer: hyper's header timeout ends the connection without writing
        // (hyper 1.x, proto/h1/conn.rs: `new_header_timeout` is returned, not answered).
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }
    let health = common::http_client().get(format!("http://{address}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK, "still serving after the stalled ones went");

    let photo = photo_bytes("rocket.jpg");
    let mut body = b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"slow.jpg\"\r\n\r\n".to_vec();
    body.extend_from_slice(&photo);
    body.extend_from_slice(b"\r\n--b--\r\n");
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let pieces = 10;
    for piece in body.chunks(body.len().div_ceil(pieces)) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        slow.write_all(piece).await.expect("the server still reads a body that keeps moving");
    }
    let trickled = started.elapsed();
    assert!(trickled >= Duration::from_secs(3), "the body took only {trickled:?}, not three idle limits");
    let answer = read_until_closed(&mut slow, Duration::from_secs(30), "a slow upload that kept moving").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "a body trickled over {trickled:?} was not stored: {answer}");
    assert_eq!(f.stored_uploads().len(), 1, "the slow upload is stored: {:?}", f.stored_uploads());
}

/// Beyond the connection cap a new connection is closed at once, and a slot frees when a held
/// connection goes (here: by the header timeout).
#[tokio::test]
async fn connections_beyond_the_cap_are_closed_until_a_slot_frees() {
    use tokio::io::AsyncWriteExt;
    let limits = imgsearch::api::server::ConnectionLimits {
        header_timeout: Duration::from_secs(2),
        body_idle_timeout: Duration::from_secs(30),
        max_connections: 4,
    };
    let f = fixture_with(&[], |config| config.connection_limits = limits).await;
    let address = serve(&f).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
        held.push(stream);
    }
    // Accepted (the kernel's backlog does that) and closed by the server without an answer.
    let mut over = tokio::net::TcpStream::connect(address).await.unwrap();
    let answer = read_until_closed(&mut over, Duration::from_secs(1), "a connection over the cap").await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    for mut stream in held {
        read_until_closed(&mut stream, Duration::from_secs(10), "a held connection past the header timeout").await;
    }
    let health = common::http_client().get(format!("http://{address}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK, "slots freed once the held connections closed");
}

/// No parameter is ignored in silence: `top_k` in the query string of a search counts as in the
/// form (and the two must agree), and a misspelt query parameter or form field is a 400 that
/// names it, on every versioned route that takes one.
#[tokio::test]
async fn search_options_count_from_the_query_string_and_unknown_parameters_are_named() {
    let f = fixture(&["astronaut.jpg", "coffee.jpg", "rocket.jpg", "chelsea.jpg", "camera.jpg"], 20 << 20).await;
    f.load().await;
    let photo = photo_bytes("rocket.jpg");
    let (status, body) = f.json(multipart("/v1/search?top_k=3", &[("image", "q.jpg", &photo)], &[])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["top_k"].as_u64(), body["results"].as_array().map(Vec::len)), (Some(3), Some(3)), "{body}");
    let (status, body) =
        f.json(multipart("/v1/search?top_k=3", &[("image", "q.jpg", &photo)], &[("top_k", "3")])).await;
    assert_eq!((status, body["results"].as_array().map(Vec::len)), (StatusCode::OK, Some(3)), "agreeing: {body}");
    let (status, body) =
        f.json(multipart("/v1/search?top_k=3", &[("image", "q.jpg", &photo)], &[("top_k", "4")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("`top_k` is given twice"), "{body}");

    let (status, body) = f.json(multipart("/v1/search", &[("image", "q.jpg", &photo)], &[("topk", "3")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown form field `topk`"), "{body}");
    let (status, body) = f.json(multipart("/v1/images", &[("image", "q.jpg", &photo)], &[("collection", "x")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown form field `collection`"), "{body}");
    for uri in [
        "/v1/search?topk=3",
        "/v1/images?colection=x",
        "/v1/images/1/similar?topk=3",
        "/v1/duplicates?max_dist=0.1",
        "/v1/count?collections=x",
    ] {
        let request = if uri.starts_with("/v1/search") {
            multipart(uri, &[("image", "q.jpg", &photo)], &[])
        } else {
            Request::get(uri).body(Body::empty()).unwrap()
        };
        let (status, body) = f.json(request).await;
        let named = uri.split('?').nth(1).and_then(|q| q.split('=').next()).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(&format!("unknown field `{named}`")),
            "{uri}: {body}"
        );
    }
    assert_eq!(f.count().await, 5, "nothing was added by the refused requests");
}

/// More searches at once than one decoder and a model queue of one can take, with a queue wait
/// shorter than an embedding:
/// the ones that waited in vain get 503 `unavailable` with `Retry-After: 1`, the others their
/// results; once the burst is over a search is answered again.
#[tokio::test]
async fn a_full_inference_queue_answers_503_with_retry_after_and_recovers() {
    let f = fixture_with(&["coffee.jpg", "rocket.jpg"], |config| {
        config.search.query_decoders = 1;
        config.search.batching = imgsearch::embed::batcher::BatchSettings { max_batch: 1, max_queued: 1 };
        config.search.queue_timeout = Duration::from_millis(1);
    })
    .await;
    f.load().await;
    let photo = photo_bytes("rocket.jpg");
    let burst = (0..6).map(|_| {
        let app = app(f.state.clone());
        let request = multipart("/v1/search", &[("image", "q.jpg", &photo)], &[]);
        async move { app.oneshot(request).await.unwrap() }
    });
    let responses = futures::future::join_all(burst).await;
    let served = responses.iter().filter(|r| r.status() == StatusCode::OK).count();
    let busy: Vec<_> = responses.iter().filter(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert!(served >= 1 && !busy.is_empty(), "{served} served, {} busy, of 6", busy.len());
    assert_eq!(served + busy.len(), 6, "only 200 or 503");
    for response in busy {
        assert_eq!(response.headers().get(header::RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"1"[..]));
    }
    let (status, body) = f.json(multipart("/v1/search", &[("image", "q.jpg", &photo)], &[])).await;
    assert_eq!(status, StatusCode::OK, "answered again after the burst: {body}");
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

/// Under concurrency the model embeds queries together (issue 21), and every answer must still
/// be its own query's: 12 photos searched at once, each must come back with itself first (the
/// same bytes, distance ≈ 0), while corrupt files sent in the same burst fail alone with a 422.
/// Bursts repeat until the metrics show queries that shared a forward pass, so the check is made
/// on batches, not on queries that happened to run one by one.
#[tokio::test]
async fn queries_embedded_together_each_get_their_own_results_and_a_bad_one_fails_alone() {
    const PHOTOS: [&str; 12] = [
        "astronaut.jpg",
        "brick.jpg",
        "camera.jpg",
        "cell.jpg",
        "chelsea.jpg",
        "coffee.jpg",
        "coins.jpg",
        "grass.jpg",
        "hubble_deep_field.jpg",
        "moon.jpg",
        "retina.jpg",
        "rocket.jpg",
    ];
    let f = fixture_with(&PHOTOS, |config| {
        // Many decoders, so decoded queries pile up while the model runs.
        config.search.query_decoders = 12;
        config.search.batching = imgsearch::embed::batcher::BatchSettings { max_batch: 16, max_queued: 64 };
    })
    .await;
    f.load().await;
    let mut ids = std::collections::HashMap::new();
    for name in PHOTOS {
        ids.insert(name, f.id_of(&format!("/{name}")).await);
    }
    let corrupt = common::corrupt_jpeg();
    let mut batched = false;
    for burst in 0..5 {
        let requests = PHOTOS
            .iter()
            .map(|name| (Some(*name), photo_bytes(name)))
            .chain([(None, corrupt.clone()), (None, corrupt.clone())]);
        let calls = requests.map(|(name, bytes)| {
            let app = app(f.state.clone());
            async move {
                let request = multipart("/v1/search", &[("image", "q.jpg", &bytes)], &[("top_k", "1")]);
                let response = app.oneshot(request).await.unwrap();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (name, status, serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null))
            }
        });
        for (name, status, body) in futures::future::join_all(calls).await {
            match name {
                Some(name) => {
                    assert_eq!(status, StatusCode::OK, "burst {burst}, {name}: {body}");
                    let first = &body["results"][0];
                    assert_eq!(first["id"].as_i64(), Some(ids[name]), "burst {burst}: {name} was answered with {body}");
                    assert!(first["distance"].as_f64().is_some_and(|d| d < 1e-3), "burst {burst}, {name}: {body}");
                }
                None => assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "burst {burst}, the corrupt file: {body}"),
            }
        }
        let (_, metrics) = f.call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
        let metrics = String::from_utf8(metrics).unwrap();
        let value = |prefix: &str| -> f64 {
            metrics.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
        };
        let queries = value("imgsearch_query_batch_size_count ");
        let alone = value(r#"imgsearch_query_batch_size_bucket{le="1.0"} "#);
        assert!(queries >= 12.0 * (burst + 1) as f64, "every query is counted: {queries}\n{metrics}");
        if queries > alone {
            batched = true;
            break;
        }
    }
    assert!(batched, "in 5 bursts of 14 concurrent searches no two queries shared a forward pass");
}
