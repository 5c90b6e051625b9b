//! Searching: `POST /v1/search` by image and URL, its options and cut-offs, the inference queue.

use super::*;

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
