//! Images: uploads (hostile ones too), listings, reading back and deletes.

use super::*;

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

    // Refused from the header (a canvas over the pixel limit, before any decoder runs) and
    // refused by the decoder share 422 `unprocessable_image`: the message says which it was.
    for (name, bytes, says) in [
        ("bomb.png", &png_bomb, "pixels, over the limit of"),
        ("bomb.jpg", &jpeg_bomb, "pixels, over the limit of"),
        ("c.jpg", &corrupt, "corrupt or truncated JPEG image"),
        ("half.jpg", &truncated, "corrupt or truncated JPEG image"),
    ] {
        let (status, body) = f.json(upload(name, bytes)).await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(status == StatusCode::UNPROCESSABLE_ENTITY && message.contains(says), "{name}: {status} {body}");
    }

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
async fn v1_images_adds_an_upload_and_v1_count_counts_it() {
    let f = fixture(&[], 20 << 20).await;
    let bytes = photo_bytes("astronaut.jpg");
    let (status, body) = f.json(multipart("/v1/images", &[("image", "a.jpg", &bytes)], &[])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, count) = f.json(Request::get("/v1/count").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(count, json!({ "collection": f.collection, "count": 1 }));
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
    let index = common::index(work.path()).await.with_catalog(behind.catalog.clone());
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
