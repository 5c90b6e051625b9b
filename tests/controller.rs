//! The real controller (kube-runtime) against the fake API server and the test run's real Milvus
//! Lite, for what a real API server will not do on demand: refuse writes with 409, 500, 429 and
//! 503, refuse lists and watches, forget watch history (410 Gone), lose a Lease's updates for a
//! while, hold objects stored before the CRD's rules existed, and leave a deleted owner's
//! children uncollected for a while. Everything else about the controller runs on the real
//! control plane: tests/controller_on_kubernetes.rs, tests/operator_on_kubernetes.rs.

mod common;
mod k8s;

use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use imgsearch::controller::children::ChildConfig;
use imgsearch::controller::leader::LeaseSettings;
use imgsearch::controller::reconcile::{Context, FINALIZER, Recheck, run};
use imgsearch::crd::{ImageCollection, ImageCollectionSpec};
use imgsearch::shutdown::Shutdown;
use k8s::fake_apiserver::{FakeApiServer, Fault};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const COLLECTIONS: &str = "imgsearch.io/v1alpha1/imagecollections";

fn condition(object: &Value, type_: &str) -> Option<(String, String)> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (c["status"].as_str().unwrap_or_default().to_string(), c["reason"].as_str().unwrap_or_default().to_string())
    })
}

/// A context whose timers are short enough for a test to see them fire.
fn test_context(client: &kube::Client) -> Arc<Context> {
    let children = ChildConfig::test();
    let recheck = Recheck {
        ready: Duration::from_secs(1),
        ingesting: Duration::from_secs(1),
        not_ready: Duration::from_secs(1),
        ..Recheck::default()
    };
    Context::with_recheck(client.clone(), children, recheck)
}

fn start_controller(client: &kube::Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(test_context(client), Shutdown::never()))
}

/// An ImageCollection over the `photos` claim with its own Milvus collection.
fn photos_collection(name: &str, milvus_uri: String, collection: &str, deletion_policy: &str) -> ImageCollection {
    ImageCollection::test(name).with_spec(json!({
        "milvus": { "uri": milvus_uri },
        "collectionName": collection,
        "deletionPolicy": deletion_policy
    }))
}

/// Deletes the object and waits until the finalizer has let it go.
async fn delete_and_wait(api: &Api<ImageCollection>, server: &FakeApiServer, name: &str) {
    api.delete(name, &DeleteParams::default()).await.unwrap();
    eventually("the object to be gone", || server.object(COLLECTIONS, "shop", name).is_none().then_some(())).await;
}

fn spec(value: Value) -> ImageCollectionSpec {
    serde_json::from_value(value).expect("a valid spec")
}

// Two worker threads: on one, a long reconcile pass of the leader (Milvus calls, status
// writes) could hold off its own lease renewal on a loaded machine. The timings under test are
// the lease's, not the scheduler's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lease_outage_the_old_leader_stops_before_a_standby_starts() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    // client-go's 15 s / 10 s / 2 s, five times faster; the outage is 12 s, five times faster.
    let lease = |identity: &str| LeaseSettings {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_every: Duration::from_millis(400),
        ..LeaseSettings::new("imgsearch-system", "imgsearch-controller", identity)
    };
    assert_eq!(lease("a").problem(), None);
    let standby = FakeApiServer::client_as(address, "replica-b");
    let (first, second) = (test_context(&client), test_context(&standby));
    let first_task =
        tokio::spawn(imgsearch::controller::run(first.clone(), Some(lease("replica-a")), Shutdown::never()));
    eventually("replica-a to lead", || (first.metrics.leader.get() == 1).then_some(())).await;
    let second_task =
        tokio::spawn(imgsearch::controller::run(second.clone(), Some(lease("replica-b")), Shutdown::never()));
    eventually("the standby to have read the lease", || {
        server
            .calls()
            .iter()
            .any(|call| call.user == "replica-b" && call.resource == "leases" && call.verb == "get")
            .then_some(())
    })
    .await;

    server.unavailable("leases", &["update"], Duration::from_millis(2400));
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(15);
    let (mut first_stopped, mut second_started) = (None, None);
    while first_stopped.is_none() || second_started.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "within 15 s: old leader stopped {first_stopped:?}, standby started {second_started:?}"
        );
        if first_stopped.is_none() && first.metrics.leader.get() == 0 {
            first_stopped = Some(started.elapsed());
        }
        if second_started.is_none() && second.metrics.leader.get() == 1 {
            second_started = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (stopped, took_over) = (first_stopped.unwrap_or_default(), second_started.unwrap_or_default());
    assert!(stopped < took_over, "two leaders: the old one stopped at {stopped:?}, the standby led from {took_over:?}");
    let outcome = tokio::time::timeout(Duration::from_secs(10), first_task)
        .await
        .expect("the old leader's task ends by itself within 10 s of losing the lease")
        .expect("the old leader's task did not panic");
    assert!(
        matches!(outcome, Err(imgsearch::controller::RunError::LostLeadership(_))),
        "the old leader exits to be restarted: {outcome:?}"
    );
    second_task.abort();
}

/// An ImageCollection of `name` with a schedule, over the `photos` claim.
fn scheduled_collection(name: &str, collection: &str, schedule: &str) -> ImageCollection {
    ImageCollection::new(
        name,
        spec(json!({
            "milvus": { "uri": common::milvus_uri() },
            "collectionName": collection,
            "source": { "pvc": { "claimName": "photos" } },
            "ingest": { "schedule": schedule },
            "deletionPolicy": "Delete"
        })),
    )
}

fn condition_message(object: &Value, type_: &str) -> String {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_child_the_api_server_refuses_is_reported_and_does_not_block_the_others() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let controller = start_controller(&client);
    let collection = common::unique_collection("refused");
    // Stored before the CRD's rules existed (put bypasses admission): the schedule Kubernetes
    // refuses must not stop the ingest Job or the search service.
    let mut object = serde_json::to_value(scheduled_collection("zoned", &collection, "CRON_TZ=UTC 0 3 * * *")).unwrap();
    object["metadata"]["namespace"] = json!("shop");
    server.create_unvalidated(COLLECTIONS, object);

    let stalled = eventually("Stalled naming the CronJob", || {
        let object = server.object(COLLECTIONS, "shop", "zoned")?;
        (condition(&object, "Stalled")? == ("True".into(), "InvalidSpec".into())).then_some(object)
    })
    .await;
    let message = condition_message(&stalled, "Stalled");
    assert!(message.starts_with("CronJob zoned-rescan: spec.ingest.schedule"), "{message}");
    assert!(message.contains("spec.ingest.timeZone"), "it says what to do: {message}");
    assert!(server.object("batch/v1/jobs", "shop", "zoned-ingest-g1").is_some(), "the ingest Job was still created");
    assert!(server.object("v1/services", "shop", "zoned-search").is_some());
    assert!(server.object("apps/v1/deployments", "shop", "zoned-search").is_some());
    eventually("a Warning Event", || {
        server
            .objects("events.k8s.io/v1/events")
            .into_iter()
            .find(|e| e["reason"] == "InvalidSpec" && e["type"] == "Warning")
    })
    .await;

    // A name stored before the CRD's rules: the builders refuse it themselves, as Kubernetes
    // before 1.36 would refuse its Service, and say so in status.
    let mut object =
        serde_json::to_value(photos_collection("2024-photos", common::milvus_uri(), &collection, "Retain")).unwrap();
    object["metadata"]["namespace"] = json!("shop");
    server.create_unvalidated(COLLECTIONS, object);
    let stalled = eventually("Stalled for an invalid name", || {
        let object = server.object(COLLECTIONS, "shop", "2024-photos")?;
        (condition(&object, "Stalled")?.0 == "True").then_some(object)
    })
    .await;
    let message = condition_message(&stalled, "Stalled");
    assert!(message.contains("Service 2024-photos-search") && message.contains("DNS-1035"), "{message}");
    assert_eq!(condition(&stalled, "Ready").map(|c| c.0), Some("False".into()));
    controller.abort();
}

#[tokio::test]
async fn a_job_left_by_an_earlier_object_of_the_same_name_is_replaced_not_adopted() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let collection = common::unique_collection("recreated");
    // The first incarnation's Job, owned by a uid that no longer exists (its owner was deleted
    // and the garbage collector has not got to the Job yet).
    let stale = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": "again-ingest-g1", "namespace": "shop",
            "labels": { "imgsearch.io/collection": "again", "imgsearch.io/generation": "1" },
            "ownerReferences": [{ "apiVersion": "imgsearch.io/v1alpha1", "kind": "ImageCollection", "name": "again", "uid": "00000000-0000-0000-0000-0000000000aa", "controller": true }]
        },
        "spec": { "template": { "spec": { "containers": [{ "name": "ingest", "image": "old" }] } } }
    });
    Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &serde_json::from_value(stale).unwrap())
        .await
        .unwrap();
    let controller = start_controller(&client);
    let api: Api<ImageCollection> = Api::namespaced(client, "shop");
    let created = api
        .create(&PostParams::default(), &photos_collection("again", common::milvus_uri(), &collection, "Delete"))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    let job = eventually("a Job of the new object", || {
        let job = server.object("batch/v1/jobs", "shop", "again-ingest-g1")?;
        (job["metadata"]["ownerReferences"][0]["uid"] == uid.as_str()).then_some(job)
    })
    .await;
    assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["image"], "imgsearch:test", "built from the new spec");
    // Events are posted beside the work, not before it: waited for, not read at once.
    eventually("a StaleJobDeleted Event", || {
        server.objects("events.k8s.io/v1/events").iter().any(|e| e["reason"] == "StaleJobDeleted").then_some(())
    })
    .await;
    delete_and_wait(&api, &server, "again").await;
    controller.abort();
}

/// GitOps tools delete and recreate an object whose immutable field changed; the garbage
/// collector then has the first incarnation's children still to collect. The new object must
/// get children of its own (a Job built from its spec, owned by it) that the collector, when it
/// runs, leaves alone.
#[tokio::test]
async fn deleted_and_recreated_at_once_the_new_object_gets_children_the_collector_keeps() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let controller = start_controller(&client);
    let collection = common::unique_collection("recreate");
    let api: Api<ImageCollection> = Api::namespaced(client, "shop");
    let object = photos_collection("again", common::milvus_uri(), &collection, "Retain");
    let first = api.create(&PostParams::default(), &object).await.unwrap().metadata.uid.unwrap();
    let owned_by = |key: &str, name: &str, uid: &str| {
        server.object(key, "shop", name).filter(|o| o["metadata"]["ownerReferences"][0]["uid"] == uid)
    };
    eventually("the first Job", || owned_by("batch/v1/jobs", "again-ingest-g1", &first)).await;
    eventually("the first Deployment", || owned_by("apps/v1/deployments", "again-search", &first)).await;

    server.pause_garbage_collection(true);
    delete_and_wait(&api, &server, "again").await;
    assert!(server.object("batch/v1/jobs", "shop", "again-ingest-g1").is_some(), "the collector is paused");
    let second = api.create(&PostParams::default(), &object).await.unwrap().metadata.uid.unwrap();
    eventually("a Job of the new object", || owned_by("batch/v1/jobs", "again-ingest-g1", &second)).await;
    eventually("the Deployment owned by the new object", || owned_by("apps/v1/deployments", "again-search", &second))
        .await;

    server.pause_garbage_collection(false);
    server.collect_garbage();
    for (key, name) in
        [("batch/v1/jobs", "again-ingest-g1"), ("apps/v1/deployments", "again-search"), ("v1/services", "again-search")]
    {
        assert!(owned_by(key, name, &second).is_some(), "{name} was collected with the first object's children");
    }
    delete_and_wait(&api, &server, "again").await;
    controller.abort();
}

/// kube-apiserver answers 409, 500, 429 and 503 in real life (another writer, a webhook, API
/// Priority and Fairness, etcd). With every write of the controller refused one of those ways
/// for its first seconds, it must still converge to one set of children, back off rather
/// than hammer, and create no second Job.
#[tokio::test]
async fn through_conflicts_server_errors_throttling_and_outages_the_controller_converges_once() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let window = Duration::from_secs(3);
    server.fault("imagecollections", &["patch"], Fault::Conflict, window); // finalizer and status
    server.fault("jobs", &["patch", "create"], Fault::Internal, window);
    server.fault("deployments", &["patch"], Fault::TooManyRequests, window);
    server.fault("services", &["patch"], Fault::Unavailable, window);
    let faults_end = tokio::time::Instant::now() + window;
    let controller = start_controller(&client);
    let collection = common::unique_collection("faults");
    let api: Api<ImageCollection> = Api::namespaced(client, "shop");
    api.create(&PostParams::default(), &photos_collection("faulty", common::milvus_uri(), &collection, "Delete"))
        .await
        .unwrap();

    eventually("the collection reconciled once the faults end", || {
        let object = server.object(COLLECTIONS, "shop", "faulty")?;
        let converged = object["status"]["observedGeneration"] == 1
            && object["metadata"]["finalizers"].to_string().contains(FINALIZER)
            && server.object("batch/v1/jobs", "shop", "faulty-ingest-g1").is_some()
            && server.object("apps/v1/deployments", "shop", "faulty-search").is_some()
            && server.object("v1/services", "shop", "faulty-search").is_some();
        converged.then_some(())
    })
    .await;
    assert!(tokio::time::Instant::now() >= faults_end, "converged while every write was still refused");
    let jobs: Vec<Value> = server
        .objects("batch/v1/jobs")
        .into_iter()
        .filter(|job| job["metadata"]["ownerReferences"][0]["name"] == "faulty")
        .collect();
    assert_eq!(jobs.len(), 1, "one ingest Job: {jobs:?}");
    let writes = |resource: &str| {
        server
            .calls()
            .iter()
            .filter(|c| c.resource == resource && matches!(c.verb.as_str(), "patch" | "create"))
            .count()
    };
    for resource in ["imagecollections", "jobs", "deployments", "services"] {
        let count = writes(resource);
        // At least one refused write and the one that went through (measured: 6, 2, 4 and 4);
        // a controller that retried without backing off would make hundreds in the 3 s.
        assert!((2..=40).contains(&count), "{count} writes to {resource}");
    }
    delete_and_wait(&api, &server, "faulty").await;
    controller.abort();
}

/// The controller's reads fail too: at start-up (a control plane being upgraded, API Priority
/// and Fairness shedding the lists of a restarting fleet) every list, watch and get it makes
/// is refused for its first seconds. It must start once they come back, create one Job, and
/// back off meanwhile instead of listing in a loop.
#[tokio::test]
async fn with_its_lists_watches_and_gets_refused_at_start_the_controller_backs_off_and_converges() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let collection = common::unique_collection("readfaults");
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    api.create(&PostParams::default(), &photos_collection("unread", common::milvus_uri(), &collection, "Delete"))
        .await
        .unwrap();
    let window = Duration::from_secs(3);
    let reads = ["list", "watch", "get"];
    server.fault("imagecollections", &reads, Fault::Unavailable, window);
    server.fault("jobs", &reads, Fault::Internal, window);
    server.fault("deployments", &reads, Fault::TooManyRequests, window);
    server.fault("services", &reads, Fault::Unavailable, window);
    let faults_end = tokio::time::Instant::now() + window;
    let before = server.calls().len();
    let controller = start_controller(&client);

    eventually("the collection reconciled once its reads are answered again", || {
        let object = server.object(COLLECTIONS, "shop", "unread")?;
        let converged = object["status"]["observedGeneration"] == 1
            && server.object("batch/v1/jobs", "shop", "unread-ingest-g1").is_some()
            && server.object("apps/v1/deployments", "shop", "unread-search").is_some()
            && server.object("v1/services", "shop", "unread-search").is_some();
        converged.then_some(())
    })
    .await;
    assert!(tokio::time::Instant::now() >= faults_end, "converged while every read was still refused");
    let jobs = server.objects("batch/v1/jobs");
    assert_eq!(jobs.iter().filter(|job| job["metadata"]["ownerReferences"][0]["name"] == "unread").count(), 1);
    let calls = server.calls();
    for resource in ["imagecollections", "jobs", "deployments", "services"] {
        let lists = calls[before..].iter().filter(|c| c.resource == resource && c.verb == "list").count();
        // A refused list and the one that went through, at least; the watcher's backoff keeps
        // the rest to a handful in 3 s where a retry loop would make thousands.
        assert!((2..=20).contains(&lists), "{lists} lists of {resource}");
    }
    delete_and_wait(&api, &server, "unread").await;
    controller.abort();
}

/// Watches end (kube-apiserver restarts, a load balancer's idle timeout) and the history they
/// would resume from may be compacted (410 Gone): the controller's watchers list again and a
/// change made meanwhile is still reconciled.
#[tokio::test]
async fn after_its_watches_are_dropped_and_history_compacted_the_controller_still_sees_a_change() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let controller = start_controller(&client);
    let collection = common::unique_collection("rewatch");
    let api: Api<ImageCollection> = Api::namespaced(client, "shop");
    api.create(&PostParams::default(), &photos_collection("watched", common::milvus_uri(), &collection, "Delete"))
        .await
        .unwrap();
    eventually("the first Job", || server.object("batch/v1/jobs", "shop", "watched-ingest-g1")).await;

    let expired_before = server.expired_watches();
    // The watches end first: a controller that did not watch again would never hear of the
    // change below (its periodic rechecks read its own stale cache).
    server.compact_and_drop_watches();
    api.patch("watched", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "ingest": { "batchSize": 4 } } })))
        .await
        .unwrap();
    eventually("the change made after the watches dropped to be reconciled", || {
        server.object("batch/v1/jobs", "shop", "watched-ingest-g2")
    })
    .await;
    assert!(server.expired_watches() > expired_before, "a watcher resumed from the compacted history and got 410");
    delete_and_wait(&api, &server, "watched").await;
    controller.abort();
}
