//! The fake API server against the real kube client and watcher: the protocol the controller
//! tests rely on behaves as kube-apiserver's does for these calls.

mod k8s;

use std::time::Duration;

use futures::StreamExt;
use imgsearch::crd::{ImageCollection, ImageCollectionSpec, ImageCollectionStatus, Phase};
use k8s::fake_apiserver::FakeApiServer;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

fn collection(name: &str) -> ImageCollection {
    let spec: ImageCollectionSpec = serde_json::from_value(json!({
        "milvus": { "uri": "http://milvus:19530" },
        "source": { "pvc": { "claimName": "photos" } }
    }))
    .expect("spec");
    ImageCollection::new(name, spec)
}

#[tokio::test]
async fn create_get_and_list_return_server_owned_metadata() {
    let (_server, address, _task) = FakeApiServer::start().await;
    let api: Api<ImageCollection> = Api::namespaced(FakeApiServer::client(address), "shop");

    let created = api.create(&PostParams::default(), &collection("products")).await.expect("create");

    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    assert_eq!(api.get("products").await.expect("get").spec, created.spec);
    assert_eq!(api.list(&Default::default()).await.expect("list").items.len(), 1);
    let missing = api.get("nope").await.expect_err("404");
    assert!(matches!(missing, kube::Error::Api(ref s) if s.code == 404), "{missing:?}");
}

#[tokio::test]
async fn server_side_apply_creates_then_updates_and_only_spec_changes_bump_generation() {
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let jobs: Api<Job> = Api::namespaced(client.clone(), "shop");
    let params = PatchParams::apply("imgsearch-controller").force();
    let job = json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "ingest" }, "spec": { "parallelism": 1, "template": { "spec": { "containers": [] } } } });

    let created = jobs.patch("ingest", &params, &Patch::Apply(&job)).await.expect("apply creates");
    let mut changed = job.clone();
    changed["spec"]["parallelism"] = json!(4);
    let updated = jobs.patch("ingest", &params, &Patch::Apply(&changed)).await.expect("apply updates");
    let with_status = jobs
        .patch_status(
            "ingest",
            &params,
            &Patch::Apply(&json!({ "apiVersion": "batch/v1", "kind": "Job", "status": { "succeeded": 1 } })),
        )
        .await
        .expect("status");

    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(updated.spec.as_ref().and_then(|s| s.parallelism), Some(4));
    assert_eq!(with_status.metadata.generation, Some(2), "status writes leave generation alone");
    assert_eq!(with_status.status.and_then(|s| s.succeeded), Some(1));
    let verbs: Vec<String> = server
        .calls()
        .iter()
        .map(|c| {
            format!("{} {}{}", c.verb, c.resource, c.subresource.as_ref().map(|s| format!("/{s}")).unwrap_or_default())
        })
        .collect();
    // The apply that creates the Job is also authorized as a create (as kube-apiserver does).
    assert_eq!(verbs, ["patch jobs", "create jobs", "patch jobs", "patch jobs/status"]);
}

#[tokio::test]
async fn the_kube_watcher_sees_additions_changes_and_deletions() {
    let (_server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    api.create(&PostParams::default(), &collection("before-watch")).await.unwrap();
    let mut events = watcher(Api::<ImageCollection>::all(client), watcher::Config::default()).boxed();

    let mut seen = Vec::new();
    let writer = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        api.create(&PostParams::default(), &collection("during-watch")).await.unwrap();
        let status = ImageCollectionStatus { phase: Some(Phase::Ready), ..Default::default() };
        api.patch_status("during-watch", &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
            .await
            .unwrap();
        api.delete("before-watch", &DeleteParams::default()).await.unwrap();
    };
    let reader = async {
        while let Some(event) = events.next().await {
            match event.expect("watch event") {
                watcher::Event::InitApply(o) => seen.push(format!("init {}", o.metadata.name.unwrap())),
                watcher::Event::Apply(o) => {
                    seen.push(format!("apply {} {:?}", o.metadata.name.unwrap(), o.status.and_then(|s| s.phase)))
                }
                watcher::Event::Delete(o) => {
                    seen.push(format!("delete {}", o.metadata.name.unwrap()));
                    break;
                }
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), futures::future::join(writer, reader)).await.expect("events arrive");

    assert_eq!(
        seen,
        ["init before-watch", "apply during-watch None", "apply during-watch Some(Ready)", "delete before-watch"]
    );
}

#[tokio::test]
async fn deleting_an_object_with_a_finalizer_waits_until_the_finalizer_is_removed() {
    let (server, address, _task) = FakeApiServer::start().await;
    let api: Api<ImageCollection> = Api::namespaced(FakeApiServer::client(address), "shop");
    let mut object = collection("products");
    object.metadata.finalizers = Some(vec!["imgsearch.io/cleanup".into()]);
    api.create(&PostParams::default(), &object).await.unwrap();

    api.delete("products", &DeleteParams::default()).await.unwrap();
    let deleting = api.get("products").await.expect("still there while the finalizer is set");
    assert!(deleting.metadata.deletion_timestamp.is_some());

    // kube-runtime's finalizer helper removes its finalizer with a JSON patch like this one.
    let remove = json_patch::Patch(vec![
        serde_json::from_value(
            json!({ "op": "test", "path": "/metadata/finalizers/0", "value": "imgsearch.io/cleanup" }),
        )
        .unwrap(),
        serde_json::from_value(json!({ "op": "remove", "path": "/metadata/finalizers/0" })).unwrap(),
    ]);
    api.patch("products", &PatchParams::default(), &Patch::Json::<()>(remove)).await.expect("json patch");
    assert!(api.get("products").await.is_err(), "gone once the last finalizer is removed");
    assert!(server.objects("imgsearch.io/v1alpha1/imagecollections").is_empty());
}

#[tokio::test]
async fn deleting_an_owner_removes_what_it_owns() {
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    let owner = api.create(&PostParams::default(), &collection("products")).await.unwrap();
    let owner_ref = kube::Resource::controller_owner_ref(&owner, &()).unwrap();
    let jobs: Api<Job> = Api::namespaced(client, "shop");
    let job = json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "ingest", "ownerReferences": [owner_ref] }, "spec": { "template": {} } });
    jobs.patch("ingest", &PatchParams::apply("t"), &Patch::Apply(&job)).await.unwrap();

    api.delete("products", &DeleteParams::default()).await.unwrap();

    assert!(server.objects("batch/v1/jobs").is_empty());
}
