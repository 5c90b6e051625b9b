//! The fake API server against the real kube client and watcher: the protocol the controller
//! tests rely on behaves as kube-apiserver's does for these calls.

mod k8s;

use std::time::Duration;

use futures::StreamExt;
use imgsearch::crd::{ImageCollection, ImageCollectionStatus, Phase};
use k8s::fake_apiserver::FakeApiServer;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

fn collection(name: &str) -> ImageCollection {
    ImageCollection::test(name)
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
    // The writes start once the watcher has listed (an event, not a sleep that a loaded machine
    // can outrun).
    let listed = tokio::sync::Notify::new();
    let writer = async {
        listed.notified().await;
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
                watcher::Event::InitDone => listed.notify_one(),
                watcher::Event::Init => {}
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
async fn a_watch_from_a_compacted_version_gets_410_gone_and_the_kube_watcher_lists_again() {
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    api.create(&PostParams::default(), &collection("first")).await.unwrap();
    let mut events = watcher(Api::<ImageCollection>::all(client), watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    let reader = async {
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitApply(o)) => seen.push(format!("init {}", o.metadata.name.unwrap())),
                Ok(watcher::Event::Apply(o)) => seen.push(format!("apply {}", o.metadata.name.unwrap())),
                Ok(watcher::Event::InitDone) => {
                    seen.push("listed".to_string());
                    if seen.iter().filter(|s| *s == "listed").count() == 2 {
                        break;
                    }
                    // While the watcher is between watches: a change, then compaction of the
                    // history it would resume from.
                    api.create(&PostParams::default(), &collection("second")).await.unwrap();
                    server.compact_and_drop_watches();
                }
                Ok(_) => {}
                // The 410 surfaces as an error before the relist: expected.
                Err(error) => {
                    seen.push(format!("error {}", if error.to_string().contains("410") { "410" } else { "other" }))
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), reader).await.expect("the watcher lists again after 410 Gone");
    assert!(server.expired_watches() >= 1, "the resumed watch was refused as too old: {seen:?}");
    assert!(seen.contains(&"init second".to_string()), "the relist brought what the lost history held: {seen:?}");
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

/// The garbage collector as kube-controller-manager runs it with the default (background)
/// propagation: the owner goes at once, what it owned only when the collector gets to it; a
/// dependent with another owner still alive stays; pods are deleted gracefully.
#[tokio::test]
async fn what_a_deleted_owner_owned_goes_later_by_the_garbage_collector() {
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    let owner = api.create(&PostParams::default(), &collection("products")).await.unwrap();
    let other = api.create(&PostParams::default(), &collection("other")).await.unwrap();
    let owner_ref = kube::Resource::controller_owner_ref(&owner, &()).unwrap();
    let mut other_ref = kube::Resource::controller_owner_ref(&other, &()).unwrap();
    other_ref.controller = None;
    let jobs: Api<Job> = Api::namespaced(client.clone(), "shop");
    for (name, owners) in [("ingest", vec![owner_ref.clone()]), ("shared", vec![owner_ref.clone(), other_ref])] {
        let job = json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": name, "ownerReferences": owners }, "spec": { "template": {} } });
        jobs.patch(name, &PatchParams::apply("t"), &Patch::Apply(&job)).await.unwrap();
    }
    let pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "ingest-0", "ownerReferences": [owner_ref] }, "spec": { "containers": [] } });
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, "shop");
    pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap()).await.unwrap();

    server.pause_garbage_collection(true);
    api.delete("products", &DeleteParams::default()).await.unwrap();
    // Three passes of the collector come and go (withheld) after the delete.
    let before = server.gc_passes_withheld();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while server.gc_passes_withheld() < before + 3 {
        assert!(tokio::time::Instant::now() < deadline, "the paused collector did not come round three times in 10 s");
        tokio::time::sleep(k8s::fake_apiserver::GC_PERIOD / 2).await;
    }
    assert!(api.get_opt("products").await.unwrap().is_none(), "the owner is gone at once");
    assert!(jobs.get_opt("ingest").await.unwrap().is_some(), "its Job waits for the garbage collector");

    server.pause_garbage_collection(false);
    server.collect_garbage();
    assert!(jobs.get_opt("ingest").await.unwrap().is_none(), "collected once the collector ran");
    assert!(jobs.get_opt("shared").await.unwrap().is_some(), "a dependent with a live owner stays");
    let pod = pods.get("ingest-0").await.expect("a pod is deleted gracefully: it stays until the kubelet lets go");
    assert!(pod.metadata.deletion_timestamp.is_some(), "{pod:?}");

    // Without a test calling it, the collector runs on its own.
    api.delete("other", &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while jobs.get_opt("shared").await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the garbage collector did not run within 5 s");
        tokio::time::sleep(k8s::fake_apiserver::GC_PERIOD).await;
    }
}
