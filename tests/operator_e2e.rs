//! End to end without a cluster: the real controller, the fake API server, the simulated kubelet
//! running the real `imgsearch ingest` and `imgsearch serve` processes, and Milvus Lite. An
//! ImageCollection over a folder of photos becomes a searchable service.

mod common;
mod k8s;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use imgsearch::catalog::{Catalog, ImageStatus};
use imgsearch::controller::children::ChildConfig;
use imgsearch::controller::reconcile::{Context, Recheck, run};
use imgsearch::crd::{ImageCollection, ImageCollectionSpec};
use imgsearch::shutdown::Shutdown;
use imgsearch::store::MilvusStore;
use k8s::fake_apiserver::FakeApiServer;
use k8s::kubelet::SimulatedKubelet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

#[tokio::test]
async fn an_image_collection_over_a_folder_becomes_a_search_service_that_finds_its_photos() {
    let work = tempfile::tempdir().unwrap();
    let photos = work.path().join("volume/catalogue");
    std::fs::create_dir_all(&photos).unwrap();
    for name in ["astronaut.jpg", "coffee.jpg", "rocket.jpg"] {
        std::fs::copy(common::photo(name), photos.join(name)).unwrap();
    }
    // One bad file: it must be counted as failed, not kill the Job.
    std::fs::write(photos.join("truncated.jpg"), common::corrupt_jpeg()).unwrap();
    let (server, address, _api_task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let claims = BTreeMap::from([("photos".to_string(), work.path().join("volume"))]);
    let (kubelet, _kubelet_task) =
        SimulatedKubelet::start(server.clone(), Path::new(env!("CARGO_BIN_EXE_imgsearch")), claims);
    let controller = tokio::spawn(run(Context::new(client.clone(), ChildConfig::test()), Shutdown::never()));

    // A shared catalog for the Job and the search pods, as a real cluster would use Postgres.
    let catalog_url = format!("sqlite://{}", work.path().join("catalog.db").display());
    let catalog: Secret = serde_json::from_value(json!({
        "metadata": { "name": "catalog" },
        "stringData": { "DATABASE_URL": catalog_url }
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "shop").create(&PostParams::default(), &catalog).await.unwrap();
    let collection = common::unique_collection("e2e");
    let spec: ImageCollectionSpec = serde_json::from_value(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": collection,
        "source": { "pvc": { "claimName": "photos", "path": "/catalogue" } },
        "catalog": { "secretRef": { "name": "catalog" } },
        "deletionPolicy": "Delete"
    }))
    .unwrap();
    let collections: Api<ImageCollection> = Api::namespaced(client, "shop");
    collections.create(&PostParams::default(), &ImageCollection::new("photos", spec)).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        let object = server.object("imgsearch.io/v1alpha1/imagecollections", "shop", "photos").unwrap_or(Value::Null);
        if object["status"]["phase"] == "Ready" && object["status"]["images"]["indexed"] == 3 {
            break object["status"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not Ready with 3 images in time; last status: {}\nsearch pod log:\n{}",
            object["status"],
            kubelet.deployment_log("shop", "photos-search")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(status["lastIngest"]["job"], "photos-ingest-g1");
    let search_log = kubelet.deployment_log("shop", "photos-search");
    if search_log.contains("restarted") {
        eprintln!("the search container was restarted on the way:\n{search_log}");
    }
    // The counts the ingest pod left in its termination message, read back by the controller.
    assert_eq!(status["images"], json!({ "indexed": 3, "failed": 1, "skipped": 0 }), "{status}");
    let summary = status["lastIngest"]["summary"].as_str().unwrap_or_default();
    assert!(summary.starts_with("4 images found, 3 indexed, 0 unchanged, 1 failed"), "{summary}");
    let pod = server.object("v1/pods", "shop", "photos-ingest-g1-0-sim").expect("the ingest pod");
    assert_eq!(pod["status"]["phase"], "Succeeded");

    let search = kubelet.deployment_address("shop", "photos-search").expect("the search pod runs");
    let response = search_top_3(search, std::fs::read(common::photo("coffee.jpg")).unwrap(), "").await;
    let top = &response["results"][0];
    assert!(top["uri"].as_str().unwrap().ends_with("/catalogue/coffee.jpg"), "{response}");
    let image = common::http_client()
        .get(format!("http://{search}{}", top["image_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), reqwest::StatusCode::OK, "the search pod serves the catalogued image");

    // deletionPolicy Delete: the Milvus collection and the catalog rows go before the object.
    collections.delete("photos", &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.object("imgsearch.io/v1alpha1/imagecollections", "shop", "photos").is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the object was not deleted in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.unwrap();
    assert!(!milvus.has_collection(&collection).await.unwrap(), "the Milvus collection was dropped");
    // In that order: every pod (the search pod drains for 5 s after SIGTERM) was gone before the
    // collection was dropped, so nothing wrote to it or created it again afterwards.
    let changes = server.changes();
    let dropped = changes
        .iter()
        .find(|(_, kind, resource, object)| {
            *kind == "ADDED" && resource == "events.k8s.io/v1/events" && object["reason"] == "CollectionDropped"
        })
        .map(|(version, ..)| *version)
        .expect("a CollectionDropped Event");
    let last_pod_gone = changes
        .iter()
        .filter(|(_, kind, resource, _)| *kind == "DELETED" && resource == "v1/pods")
        .map(|(version, ..)| *version)
        .max()
        .expect("the pods were deleted");
    assert!(
        last_pod_gone < dropped,
        "the collection was dropped (version {dropped}) while a pod still ran (gone at {last_pod_gone})"
    );
    let stopping = changes.iter().any(|(_, _, resource, object)| {
        resource == "imgsearch.io/v1alpha1/imagecollections"
            && object["status"]["conditions"].to_string().contains("StoppingPods")
    });
    assert!(stopping, "status said it was waiting for the pods to stop");
    let catalog = Catalog::open(&catalog_url).await.unwrap();
    for status in [ImageStatus::Indexed, ImageStatus::Failed, ImageStatus::Pending] {
        assert_eq!(catalog.count(&collection, status).await.unwrap(), 0, "catalog rows purged ({status:?})");
    }
    assert!(server.objects("v1/pods").is_empty(), "the Job's pods went with it");
    controller.abort();
}

/// The search pod's answer to `POST /v1/search{query}` with `image` and `top_k` 3.
async fn search_top_3(search: std::net::SocketAddr, image: Vec<u8>, query: &str) -> Value {
    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(image).file_name("query"))
        .text("top_k", "3");
    let response = common::http_client().post(format!("http://{search}/v1/search{query}")).multipart(form).send();
    response.await.expect("the search pod answers").json().await.expect("a JSON answer")
}

/// Waits for the object's status to satisfy `check`, or fails saying what did not happen and
/// what status there was.
async fn status_where(server: &FakeApiServer, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let object = server.object("imgsearch.io/v1alpha1/imagecollections", "shop", name).unwrap_or(Value::Null);
        if check(&object["status"]) {
            return object["status"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: {what} did not happen; last status: {}",
            object["status"]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == type_)).unwrap_or(&Value::Null)
}

#[tokio::test]
async fn pods_that_cannot_start_are_reported_as_stalled_and_recover_once_fixed() {
    let work = tempfile::tempdir().unwrap();
    let photos = work.path().join("volume");
    std::fs::create_dir_all(&photos).unwrap();
    for name in ["astronaut.jpg", "coffee.jpg"] {
        std::fs::copy(common::photo(name), photos.join(name)).unwrap();
    }
    let (server, address, _api_task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let claims = BTreeMap::from([("photos".to_string(), photos)]);
    let (kubelet, _kubelet_task) =
        SimulatedKubelet::start(server.clone(), Path::new(env!("CARGO_BIN_EXE_imgsearch")), claims);
    // The controller's image lives in a private registry: pulling it needs the `regcred` Secret.
    kubelet.require_pull_secret("registry.example/imgsearch:private", "regcred");
    let children = ChildConfig { image: "registry.example/imgsearch:private".into(), image_pull_policy: None };
    let recheck = Recheck {
        ingesting: Duration::from_secs(1),
        not_ready: Duration::from_secs(1),
        pod_start_grace: Duration::from_secs(2),
        ..Recheck::default()
    };
    let controller = tokio::spawn(run(Context::with_recheck(client.clone(), children, recheck), Shutdown::never()));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "shop");
    let collections: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    let create = |name: &str, extra: Value| {
        let mut spec = json!({
            "milvus": { "uri": common::milvus_uri() },
            "collectionName": common::unique_collection(name),
            "source": { "pvc": { "claimName": "photos" } },
            "imagePullSecrets": [{ "name": "regcred" }],
            "deletionPolicy": "Delete"
        });
        for (key, value) in extra.as_object().cloned().unwrap_or_default() {
            spec[key] = value;
        }
        let spec: ImageCollectionSpec = serde_json::from_value(spec).expect("valid spec");
        let collections = collections.clone();
        let object = ImageCollection::new(name, spec);
        async move { collections.create(&PostParams::default(), &object).await.unwrap() }
    };
    // Three ways a pod never starts: no pull secret named, a claim that does not exist, a
    // Secret without the key the spec needs.
    let regcred: Secret = serde_json::from_value(json!({
        "metadata": { "name": "regcred" },
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": { ".dockerconfigjson": "{\"auths\":{}}" }
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &regcred).await.unwrap();
    let nokey: Secret =
        serde_json::from_value(json!({ "metadata": { "name": "nokey" }, "stringData": { "URL": "x" } })).unwrap();
    secrets.create(&PostParams::default(), &nokey).await.unwrap();
    create("pull", json!({ "imagePullSecrets": [] })).await;
    create("claim", json!({ "source": { "pvc": { "claimName": "elsewhere" } } })).await;
    // Retain: deleting with Delete would need the catalog's URL from that Secret.
    create("key", json!({ "catalog": { "secretRef": { "name": "nokey" } }, "deletionPolicy": "Retain" })).await;

    let stalled = |status: &Value| condition(status, "Stalled")["reason"] == "PodNotStarting";
    let pull = status_where(&server, "pull", "Stalled with PodNotStarting", stalled).await;
    let message = condition(&pull, "Stalled")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("ImagePullBackOff") || message.contains("ErrImagePull"), "{message}");
    assert!(message.contains("spec.imagePullSecrets"), "the message says what to do: {message}");
    assert_eq!(condition(&pull, "Ingested")["reason"], "PodsNotStarting", "{pull}");
    assert_ne!(pull["phase"], "Ingesting", "a Job whose pods cannot start is not ingesting: {pull}");
    let claim = status_where(&server, "claim", "Stalled with PodNotStarting", stalled).await;
    let message = condition(&claim, "Stalled")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("persistentvolumeclaim \"elsewhere\" not found"), "{message}");
    let key = status_where(&server, "key", "Stalled with PodNotStarting", stalled).await;
    let message = condition(&key, "Stalled")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("CreateContainerConfigError"), "{message}");
    assert!(message.contains("couldn't find key DATABASE_URL in Secret shop/nokey"), "{message}");
    let warning = server
        .objects("events.k8s.io/v1/events")
        .into_iter()
        .find(|e| e["reason"] == "PodNotStarting" && e["regarding"]["name"] == "key");
    assert!(warning.is_some(), "a Warning Event says it too");

    // Fixed: the spec names the pull secret. The new generation's pods start, and the
    // collection becomes Ready with its photos.
    let patch = json!({ "spec": { "imagePullSecrets": [{ "name": "regcred" }] } });
    collections.patch("pull", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let ready =
        status_where(&server, "pull", "Ready with 2 photos", |s| s["phase"] == "Ready" && s["images"]["indexed"] == 2)
            .await;
    assert_eq!(condition(&ready, "Stalled")["status"], "False", "{ready}");

    for name in ["pull", "claim", "key"] {
        collections.delete(name, &DeleteParams::default()).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !server.objects("imgsearch.io/v1alpha1/imagecollections").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the collections were not deleted in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.objects("v1/pods").is_empty(), "pods that never started went with their collections");
    controller.abort();
    let kept = key["collectionName"].as_str().expect("the retained collection's name").to_string();
    MilvusStore::connect(&common::milvus_uri(), None).await.unwrap().drop_collection(&kept).await.unwrap();
}

#[tokio::test]
async fn an_ingest_that_keeps_failing_is_retried_to_the_backoff_limit_then_reported_failed() {
    let work = tempfile::tempdir().unwrap();
    let photos = work.path().join("volume");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::copy(common::photo("coffee.jpg"), photos.join("coffee.jpg")).unwrap();
    let (server, address, _api_task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let claims = BTreeMap::from([("photos".to_string(), photos)]);
    let (_kubelet, _kubelet_task) =
        SimulatedKubelet::start(server.clone(), Path::new(env!("CARGO_BIN_EXE_imgsearch")), claims);
    let children = ChildConfig::test();
    let recheck =
        Recheck { ingesting: Duration::from_secs(1), not_ready: Duration::from_secs(1), ..Recheck::default() };
    let controller = tokio::spawn(run(Context::with_recheck(client.clone(), children, recheck), Shutdown::never()));
    // A catalog the ingest pods cannot open: every attempt fails.
    let catalog: Secret = serde_json::from_value(json!({
        "metadata": { "name": "catalog" },
        "stringData": { "DATABASE_URL": "sqlite:///nonexistent-folder/imgsearch/catalog.db" }
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "shop").create(&PostParams::default(), &catalog).await.unwrap();
    let collection = common::unique_collection("failing");
    let spec: ImageCollectionSpec = serde_json::from_value(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": collection,
        "source": { "pvc": { "claimName": "photos" } },
        "catalog": { "secretRef": { "name": "catalog" } },
        "search": { "replicas": 0 },
        "deletionPolicy": "Retain"
    }))
    .unwrap();
    let collections: Api<ImageCollection> = Api::namespaced(client, "shop");
    collections.create(&PostParams::default(), &ImageCollection::new("failing", spec)).await.unwrap();

    let status = status_where(&server, "failing", "Ingested=False JobFailed", |s| {
        condition(s, "Ingested")["reason"] == "JobFailed"
    })
    .await;
    let message = condition(&status, "Ingested")["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("backoff limit"), "says the Job gave up: {message}");
    assert!(message.contains("catalog"), "carries the pod's own error: {message}");
    assert_eq!(status["phase"], "Failed", "{status}");
    let job = server.object("batch/v1/jobs", "shop", "failing-ingest-g1").expect("the ingest Job");
    let backoff_limit = job["spec"]["backoffLimit"].as_u64().expect("a backoffLimit");
    let attempts = server
        .objects("v1/pods")
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "failing-ingest-g1")
        .inspect(|p| assert_eq!(p["status"]["phase"], "Failed", "every attempt failed"))
        .count() as u64;
    assert_eq!(attempts, backoff_limit + 1, "the first pod and one replacement per allowed retry");
    let event = server
        .objects("events.k8s.io/v1/events")
        .into_iter()
        .find(|e| e["reason"] == "IngestFailed" && e["type"] == "Warning");
    assert!(event.is_some(), "an IngestFailed Warning Event");
    controller.abort();
    MilvusStore::connect(&common::milvus_uri(), None).await.unwrap().drop_collection(&collection).await.unwrap();
}

/// Every image of a collection through the search pod's API: `/v1/images` a page at a time,
/// URI → id.
async fn listed_images(search: std::net::SocketAddr, collection: &str) -> BTreeMap<String, i64> {
    let mut listed = BTreeMap::new();
    let mut token: Option<String> = None;
    for _page in 0..100 {
        let mut url = format!("http://{search}/v1/images?collection={collection}&limit=7");
        if let Some(token) = &token {
            url.push_str(&format!("&page_token={token}"));
        }
        let page: Value = common::http_client().get(url).send().await.unwrap().json().await.unwrap();
        for image in page["images"].as_array().unwrap_or_else(|| panic!("not a listing: {page}")) {
            let (uri, id) = (image["uri"].as_str().unwrap().to_string(), image["id"].as_i64().unwrap());
            assert!(listed.insert(uri.clone(), id).is_none(), "{uri} listed twice");
        }
        match page["next_page_token"].as_str() {
            Some(next) => token = Some(next.to_string()),
            None => return listed,
        }
    }
    panic!("the listing did not end within 100 pages of 7");
}

/// The default configuration: no `spec.catalog`. Three ingest shards at once, then a rescan
/// after files were added and removed. Milvus's rows are the record every pod shares, so each
/// image is listed and served by the search pod, none overwrote another, unchanged ones keep
/// their ids and are not embedded again, and the removed one is gone.
#[tokio::test]
async fn without_a_catalog_shards_and_rescans_keep_every_image_listed_served_and_found() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let fashion = common::fashion_images(4);
    let (first, later): (Vec<_>, Vec<_>) = fashion.iter().enumerate().partition(|(n, _)| n % 4 != 3);
    for (_, (name, path)) in &first {
        std::fs::copy(path, volume.join(name)).unwrap();
    }
    let initial = first.len();
    let (server, address, _api_task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let claims = BTreeMap::from([("photos".to_string(), volume.clone())]);
    let (kubelet, _kubelet_task) =
        SimulatedKubelet::start(server.clone(), Path::new(env!("CARGO_BIN_EXE_imgsearch")), claims);
    let controller = tokio::spawn(run(Context::new(client.clone(), ChildConfig::test()), Shutdown::never()));
    let collection = common::unique_collection("nocatalog");
    let spec: ImageCollectionSpec = serde_json::from_value(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": collection,
        "source": { "pvc": { "claimName": "photos" } },
        "ingest": { "parallelism": 3, "prune": true, "batchSize": 8 },
        "deletionPolicy": "Delete"
    }))
    .expect("a spec without a catalog and with three shards is valid");
    let collections: Api<ImageCollection> = Api::namespaced(client, "shop");
    collections.create(&PostParams::default(), &ImageCollection::new("photos", spec)).await.unwrap();

    let status = status_where(&server, "photos", &format!("Ready with {initial} images"), |s| {
        s["phase"] == "Ready" && s["images"]["indexed"] == initial && s["lastIngest"]["job"] == "photos-ingest-g1"
    })
    .await;
    assert_eq!(status["images"]["failed"], 0, "{status}");
    let search = kubelet.deployment_address("shop", "photos-search").expect("the search pod runs");
    // The simulated kubelet mounts the claim's folder where it is: URIs are its paths.
    let root = volume.canonicalize().unwrap();
    let mount = |name: &str| root.join(name).to_string_lossy().to_string();
    let listed = listed_images(search, &collection).await;
    let expected: Vec<String> = first.iter().map(|(_, (name, _))| mount(name)).collect();
    assert_eq!(listed.keys().cloned().collect::<Vec<_>>(), {
        let mut e = expected.clone();
        e.sort();
        e
    });
    let ids: std::collections::HashSet<i64> = listed.values().copied().collect();
    assert_eq!(ids.len(), initial, "two images share an id: {listed:?}");

    // Each image is served from the volume by its id, and finds itself: none was overwritten.
    for (_, (name, path)) in &first {
        let id = listed[&mount(name)];
        let served = common::http_client().get(format!("http://{search}/v1/images/{id}")).send().await.unwrap();
        assert_eq!(served.status(), reqwest::StatusCode::OK, "{name}");
        assert_eq!(served.bytes().await.unwrap(), std::fs::read(path).unwrap(), "{name}: other bytes served");
        let found = search_top_3(search, std::fs::read(path).unwrap(), &format!("?collection={collection}")).await;
        let itself = found["results"].as_array().and_then(|r| r.iter().find(|hit| hit["id"] == id));
        let score = itself.and_then(|hit| hit["score"].as_f64());
        assert!(score.is_some_and(|s| s > 0.999), "{name} does not find itself: {found}");
    }

    // A rescan (any spec change makes one) after two files were added and one removed.
    for (_, (name, path)) in later.iter().take(2) {
        std::fs::copy(path, volume.join(name)).unwrap();
    }
    let (_, (removed, _)) = first[0];
    std::fs::remove_file(volume.join(removed)).unwrap();
    let patch = json!({ "spec": { "ingest": { "batchSize": 16 } } });
    collections.patch("photos", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let now = initial + 2 - 1;
    let status = status_where(&server, "photos", &format!("the rescan done with {now} images"), |s| {
        s["phase"] == "Ready" && s["lastIngest"]["job"] == "photos-ingest-g2" && s["images"]["indexed"] == now
    })
    .await;
    assert_eq!(status["images"]["skipped"], initial - 1, "unchanged images are not embedded again: {status}");
    let relisted = listed_images(search, &collection).await;
    assert_eq!(relisted.len(), now, "{relisted:?}");
    assert!(!relisted.contains_key(&mount(removed)), "the removed file was pruned");
    for (uri, id) in &listed {
        if *uri != mount(removed) {
            assert_eq!(relisted.get(uri), Some(id), "{uri} changed id");
        }
    }
    for (_, (name, path)) in later.iter().take(2) {
        let id = relisted[&mount(name)];
        let served = common::http_client().get(format!("http://{search}/v1/images/{id}")).send().await.unwrap();
        assert_eq!(served.bytes().await.unwrap(), std::fs::read(path).unwrap(), "{name}: the new file is served");
    }
    controller.abort();
}

/// A schedule: the fake's CronJob controller starts the rescan CronJob's Job when its clock
/// passes the schedule, the simulated kubelet runs its pods, and the file added meanwhile is
/// indexed and reported, with no spec change.
#[tokio::test]
async fn a_scheduled_rescan_runs_when_the_schedule_fires_and_indexes_what_was_added() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let fashion = common::fashion_images(1);
    let (added, first) = fashion.split_last().expect("sample images");
    for (name, path) in first {
        std::fs::copy(path, volume.join(name)).unwrap();
    }
    let (server, address, _api_task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let claims = BTreeMap::from([("photos".to_string(), volume.clone())]);
    let (_kubelet, _kubelet_task) =
        SimulatedKubelet::start(server.clone(), Path::new(env!("CARGO_BIN_EXE_imgsearch")), claims);
    // Rescan Jobs do not wake the controller (they are the CronJob's); its timer reads them.
    let recheck = Recheck { ready: Duration::from_secs(1), ..Recheck::default() };
    let children = ChildConfig::test();
    let controller = tokio::spawn(run(Context::with_recheck(client.clone(), children, recheck), Shutdown::never()));
    let spec: ImageCollectionSpec = serde_json::from_value(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": common::unique_collection("scheduled"),
        "source": { "pvc": { "claimName": "photos" } },
        "ingest": { "schedule": "0 3 * * *" },
        "deletionPolicy": "Delete"
    }))
    .unwrap();
    let collections: Api<ImageCollection> = Api::namespaced(client, "shop");
    collections.create(&PostParams::default(), &ImageCollection::new("photos", spec)).await.unwrap();
    let initial = first.len();
    status_where(&server, "photos", &format!("Ready with {initial} images"), |s| {
        s["phase"] == "Ready" && s["images"]["indexed"] == initial
    })
    .await;
    assert!(server.object("batch/v1/cronjobs", "shop", "photos-rescan").is_some(), "the rescan CronJob");

    std::fs::copy(&added.1, volume.join(&added.0)).unwrap();
    server.advance_clock(Duration::from_secs(24 * 3600));
    server.run_cronjobs();
    let status = status_where(&server, "photos", "the scheduled rescan reported", |s| {
        s["lastIngest"]["job"].as_str().is_some_and(|job| job.starts_with("photos-rescan-"))
            && s["phase"] == "Ready"
            && s["images"]["indexed"] == initial + 1
    })
    .await;
    assert_eq!(status["images"]["skipped"], initial, "the rescan skipped what was indexed: {status}");
    let job = status["lastIngest"]["job"].as_str().unwrap_or_default();
    let minutes: i64 = job.trim_start_matches("photos-rescan-").parse().expect("<cronjob>-<minutes>");
    assert_eq!(minutes * 60 % 86_400, 3 * 3600, "started for 03:00, the minute the schedule names: {job}");
    assert!(server.cron_problems().is_empty(), "{:?}", server.cron_problems());
    controller.abort();
}
