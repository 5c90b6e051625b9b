//! The real controller (kube-runtime) against the fake API server and the test run's real Milvus
//! Lite. Pods are not run yet: the test plays the kubelet by writing Job and Deployment status.

mod common;
mod k8s;

use std::time::Duration;

use imgsearch::controller::children::ChildConfig;
use imgsearch::controller::reconcile::{Context, FINALIZER, run};
use imgsearch::crd::{ImageCollection, ImageCollectionSpec};
use imgsearch::store::MilvusStore;
use k8s::fake_apiserver::FakeApiServer;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const COLLECTIONS: &str = "imgsearch.io/v1alpha1/imagecollections";

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn condition(object: &Value, type_: &str) -> Option<(String, String)> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (c["status"].as_str().unwrap_or_default().to_string(), c["reason"].as_str().unwrap_or_default().to_string())
    })
}

fn start_controller(client: &kube::Client) -> tokio::task::JoinHandle<()> {
    let children = ChildConfig { image: "imgsearch:test".into(), image_pull_policy: None };
    tokio::spawn(run(Context::new(client.clone(), children)))
}

#[tokio::test]
async fn an_image_collection_becomes_a_milvus_collection_a_job_and_a_search_service_and_is_cleaned_up() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let controller = start_controller(&client);
    let collection = common::unique_collection("operator");
    let spec: ImageCollectionSpec = serde_json::from_value(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": collection,
        "source": { "pvc": { "claimName": "photos", "path": "/catalogue" } },
        "search": { "replicas": 2 },
        "deletionPolicy": "Delete"
    }))
    .unwrap();
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    api.create(&PostParams::default(), &ImageCollection::new("products", spec)).await.unwrap();

    // The controller adds its finalizer, creates the children and reports honestly.
    let status = eventually("a status for generation 1", || {
        let object = server.object(COLLECTIONS, "shop", "products")?;
        (object["status"]["observedGeneration"] == 1).then_some(object)
    })
    .await;
    assert_eq!(status["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(condition(&status, "CollectionReady"), Some(("True".into(), "CollectionLoaded".into())));
    assert_eq!(condition(&status, "Ingested"), Some(("False".into(), "JobRunning".into())));
    assert_eq!(condition(&status, "SearchReady"), Some(("False".into(), "Unavailable".into())));
    assert_eq!(condition(&status, "Ready").map(|c| c.0), Some("False".into()));
    assert_eq!(status["status"]["searchEndpoint"], "http://products-search.shop.svc:8080");
    let job = server.object("batch/v1/jobs", "shop", "products-ingest-g1").expect("ingest Job of generation 1");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["ingest", "/images/catalogue", "--json"])
    );
    assert!(server.object("apps/v1/deployments", "shop", "products-search").is_some());
    assert!(server.object("v1/services", "shop", "products-search").is_some());
    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.unwrap();
    assert!(milvus.has_collection(&collection).await.unwrap(), "the Milvus collection was created");

    // Play the kubelet: the Job completes, the search pods become available.
    let mut job = job;
    job["status"] = json!({ "succeeded": 1, "completionTime": "2026-01-01T00:01:00Z", "conditions": [{ "type": "Complete", "status": "True" }] });
    server.put("batch/v1/jobs", job);
    let mut deployment = server.object("apps/v1/deployments", "shop", "products-search").unwrap();
    deployment["status"] = json!({ "replicas": 2, "availableReplicas": 2, "readyReplicas": 2 });
    server.put("apps/v1/deployments", deployment);
    let ready = eventually("Ready", || {
        let object = server.object(COLLECTIONS, "shop", "products")?;
        (condition(&object, "Ready")?.0 == "True").then_some(object)
    })
    .await;
    assert_eq!(ready["status"]["phase"], "Ready");
    assert_eq!(condition(&ready, "Ingested"), Some(("True".into(), "JobSucceeded".into())));

    // A spec change is a new generation and a new ingest Job.
    api.patch("products", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "ingest": { "batchSize": 8 } } })))
        .await
        .unwrap();
    eventually("the generation-2 Job", || server.object("batch/v1/jobs", "shop", "products-ingest-g2")).await;

    // Delete with deletionPolicy Delete: the Milvus collection goes, then the object.
    api.delete("products", &DeleteParams::default()).await.unwrap();
    eventually("the object to be gone", || server.object(COLLECTIONS, "shop", "products").is_none().then_some(()))
        .await;
    assert!(!milvus.has_collection(&collection).await.unwrap(), "the Milvus collection was dropped");
    controller.abort();
}

#[tokio::test]
async fn an_unreachable_milvus_is_reported_in_status_not_crashed_on() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let controller = start_controller(&client);
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spec: ImageCollectionSpec = serde_json::from_value(json!({
        "milvus": { "uri": format!("http://127.0.0.1:{closed_port}") },
        "source": { "pvc": { "claimName": "photos" } }
    }))
    .unwrap();
    let api: Api<ImageCollection> = Api::namespaced(client, "shop");
    api.create(&PostParams::default(), &ImageCollection::new("broken", spec)).await.unwrap();

    let object = eventually("a stalled status", || {
        let object = server.object(COLLECTIONS, "shop", "broken")?;
        (condition(&object, "Stalled")?.0 == "True").then_some(object)
    })
    .await;

    assert_eq!(condition(&object, "CollectionReady").map(|c| c.1), Some("MilvusUnavailable".into()));
    assert_eq!(object["status"]["phase"], "Failed");
    assert!(server.object("v1/services", "shop", "broken-search").is_some(), "the rest is still reconciled");
    controller.abort();
}
