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
use imgsearch::controller::reconcile::{Context, run};
use imgsearch::crd::{ImageCollection, ImageCollectionSpec};
use imgsearch::store::MilvusStore;
use k8s::fake_apiserver::FakeApiServer;
use k8s::kubelet::SimulatedKubelet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
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
    let controller = tokio::spawn(run(Context::new(
        client.clone(),
        ChildConfig { image: "imgsearch:test".into(), image_pull_policy: None },
    )));

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
    let form = reqwest::multipart::Form::new()
        .part(
            "image",
            reqwest::multipart::Part::bytes(std::fs::read(common::photo("coffee.jpg")).unwrap()).file_name("q.jpg"),
        )
        .text("top_k", "3");
    let response: Value = common::http_client()
        .post(format!("http://{search}/v1/search"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let catalog = Catalog::open(&catalog_url).await.unwrap();
    for status in [ImageStatus::Indexed, ImageStatus::Failed, ImageStatus::Pending] {
        assert_eq!(catalog.count(&collection, status).await.unwrap(), 0, "catalog rows purged ({status:?})");
    }
    assert!(server.objects("v1/pods").is_empty(), "the Job's pods went with it");
    controller.abort();
}
