//! The controller's answers to what goes wrong outside Kubernetes (Milvus unreachable or gone
//! for a while, a collection that is not ours, Secrets missing, empty or bound to another
//! address) and its deletion policies, on the real control plane (tests/control_plane).
//!
//! The controller runs in this test process (kube-runtime, as `imgsearch controller` runs it)
//! with timers short enough for a test to see them fire, and with a token for its
//! ServiceAccount, so the real RBAC authorizer judges every call. The API server's audit log
//! counts its requests where a test must show it is not looping. No pods run here (no node):
//! the Jobs and Deployments it makes stay without pods, as on a cluster with no room.
//!
//! The tests share one control plane and run one at a time: a controller reconciles
//! collections in every namespace.

mod common;
mod control_plane;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::outage::Outage;
use control_plane::operator::{
    OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, create_namespace, eventually, gone, install_operator,
};
use control_plane::{ControlPlane, control_plane};
use futures::StreamExt;
use imgsearch::controller::children::{self, ChildConfig};
use imgsearch::controller::reconcile::{Context, FINALIZER, Recheck, run};
use imgsearch::crd::ImageCollection;
use imgsearch::shutdown::Shutdown;
use imgsearch::store::{IndexSpec, MilvusStore, VectorRow};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

/// One test at a time: see the module's comment.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a test waits for the controller to do something.
const PATIENCE: Duration = Duration::from_secs(60);

/// A test's turn, the control plane with the operator installed, an admin client, the
/// controller running under its ServiceAccount's token, and a namespace of the test's own.
struct Scene {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    plane: &'static ControlPlane,
    admin: kube::Client,
    namespace: String,
    controller: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(controller) = &self.controller {
            controller.abort();
        }
    }
}

impl Scene {
    /// Starts the controller (once).
    async fn start_controller(&mut self, recheck: Recheck) {
        assert!(self.controller.is_none(), "the controller runs already");
        let (_, operator) = self.plane.service_account_client(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).await;
        let context = Context::with_recheck(operator, ChildConfig::test(), recheck);
        self.controller = Some(tokio::spawn(run(context, Shutdown::never())));
    }
}

/// A scene whose controller has not started: what the cluster held before it (an earlier
/// version's objects) is set up first.
async fn scene_before_the_controller(purpose: &str) -> Scene {
    let turn = ONE_AT_A_TIME.lock().await;
    imgsearch::telemetry::init();
    let plane = control_plane();
    install_operator(plane);
    let admin = plane.admin_client().await;
    let namespace = format!("{purpose}-{}", std::process::id());
    create_namespace(&admin, &namespace).await;
    Scene { _turn: turn, plane, admin, namespace, controller: None }
}

async fn scene(purpose: &str, recheck: Recheck) -> Scene {
    let mut scene = scene_before_the_controller(purpose).await;
    scene.start_controller(recheck).await;
    scene
}

/// Timers short enough for a test to see them fire.
fn quick() -> Recheck {
    Recheck {
        ready: Duration::from_secs(1),
        ingesting: Duration::from_secs(1),
        not_ready: Duration::from_secs(1),
        ..Recheck::default()
    }
}

fn operator_user() -> String {
    format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}")
}

/// An ImageCollection over the `photos` claim with its own Milvus collection.
fn photos_collection(name: &str, milvus_uri: &str, collection: &str, deletion_policy: &str) -> ImageCollection {
    ImageCollection::test(name).with_spec(json!({
        "milvus": { "uri": milvus_uri },
        "collectionName": collection,
        "deletionPolicy": deletion_policy
    }))
}

/// `(status, reason)` of the condition `kind`.
fn condition(object: &Value, kind: &str) -> Option<(String, String)> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind).map(|c| {
        (c["status"].as_str().unwrap_or_default().to_string(), c["reason"].as_str().unwrap_or_default().to_string())
    })
}

fn condition_message(object: &Value, kind: &str) -> String {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The collection (as JSON) once `check` holds for it; a failure naming `what` and the last
/// status seen otherwise.
async fn collection_where(
    collections: &Api<ImageCollection>,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, PATIENCE, || {
        let collections = collections.clone();
        let check = &check;
        async move {
            let object = collections.get_opt(name).await.map_err(|e| e.to_string())?;
            let object = serde_json::to_value(object).map_err(|e| e.to_string())?;
            if check(&object) { Ok(object) } else { Err(object["status"].to_string()) }
        }
    })
    .await
}

/// Waits until the real quota controller has counted `name`'s `resource`: ResourceQuota
/// admission refuses nothing before that.
async fn quota_counted(quotas: &Api<ResourceQuota>, name: &str, resource: &str) {
    eventually("the quota counted by the real quota controller", PATIENCE, || {
        let quotas = quotas.clone();
        async move {
            let quota = quotas.get(name).await.map_err(|e| e.to_string())?;
            let counted = quota.status.and_then(|s| s.hard).is_some_and(|h| h.contains_key(resource));
            if counted { Ok(()) } else { Err("no status.hard yet".to_string()) }
        }
    })
    .await;
}

/// Deletes the collection and waits until the controller has let it go.
async fn delete_and_wait(collections: &Api<ImageCollection>, name: &str) {
    collections.delete(name, &DeleteParams::default()).await.expect("delete the collection");
    gone(collections, name, "the collection gone", PATIENCE, String::new).await;
}

/// The Event of `reason` about `regarding` in `namespace`, once there is one.
async fn event(admin: &kube::Client, namespace: &str, reason: &str, regarding: &str) -> Event {
    let events: Api<Event> = Api::namespaced(admin.clone(), namespace);
    eventually(&format!("a {reason} Event about {regarding}"), PATIENCE, || {
        let events = events.clone();
        async move {
            let listed = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            let reasons: Vec<String> = listed.items.iter().filter_map(|e| e.reason.clone()).collect();
            listed
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
                })
                .ok_or(format!("Events so far: {reasons:?}"))
        }
    })
    .await
}

/// How many of `events` (audit events) are writes of an ImageCollection's status.
fn status_writes(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "imagecollections" && e["objectRef"]["subresource"] == "status")
        .count()
}

#[tokio::test]
async fn an_image_collection_becomes_a_milvus_collection_a_job_and_a_search_service_and_reports_each() {
    let Scene { admin, namespace, .. } = &scene("children", quick()).await;
    let collection = common::unique_collection("operator");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = ImageCollection::test("products").with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": collection,
        "source": { "pvc": { "claimName": "photos", "path": "/catalogue" } },
        "search": { "replicas": 2 },
        "deletionPolicy": "Delete"
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");

    // The finalizer, the children, and a status that says what is and is not done: no node
    // runs the pods, so the Job runs on and the search pods are unavailable.
    let status = collection_where(&collections, "products", "a status for generation 1", |o| {
        o["status"]["observedGeneration"] == 1 && condition(o, "Ingested").is_some()
    })
    .await;
    assert_eq!(status["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(condition(&status, "CollectionReady"), Some(("True".into(), "CollectionLoaded".into())));
    assert_eq!(condition(&status, "Ingested"), Some(("False".into(), "JobRunning".into())));
    assert_eq!(condition(&status, "SearchReady"), Some(("False".into(), "Unavailable".into())));
    assert_eq!(condition(&status, "Ready").map(|c| c.0), Some("False".into()));
    assert_eq!(status["status"]["searchEndpoint"], format!("http://products-search.{namespace}.svc:8080"));
    let jobs: Api<Job> = Api::namespaced(admin.clone(), namespace);
    let job = jobs.get("products-ingest-g1").await.expect("the ingest Job of generation 1");
    let args = job.spec.and_then(|s| s.template.spec).and_then(|p| p.containers.first().and_then(|c| c.args.clone()));
    assert_eq!(args, Some(vec!["ingest".to_string(), "/images/catalogue".to_string()]));
    let deployment = Api::<Deployment>::namespaced(admin.clone(), namespace).get("products-search").await;
    assert_eq!(deployment.expect("the search Deployment").spec.replicas, Some(2));
    Api::<Service>::namespaced(admin.clone(), namespace).get("products-search").await.expect("the search Service");
    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    assert!(milvus.has_collection(&collection).await.expect("ask Milvus"), "no Milvus collection");

    // A spec change is a new generation and a new ingest Job.
    let change = json!({ "spec": { "ingest": { "batchSize": 16 } } });
    collections.patch("products", &PatchParams::default(), &Patch::Merge(change)).await.expect("change the spec");
    eventually("the generation-2 Job", PATIENCE, || {
        let jobs = jobs.clone();
        async move { jobs.get_opt("products-ingest-g2").await.map_err(|e| e.to_string())?.ok_or("not yet".to_string()) }
    })
    .await;

    // Delete with deletionPolicy Delete: the Milvus collection goes, then the object.
    delete_and_wait(&collections, "products").await;
    assert!(!milvus.has_collection(&collection).await.expect("ask Milvus"), "the Milvus collection was kept");
}

#[tokio::test]
async fn status_writes_during_an_ingest_do_not_wake_the_controller_again() {
    // The count is read every 4 s while ingesting: at most 3 timer reconciles in the 8 s below.
    let recheck = Recheck {
        ready: Duration::from_secs(4),
        ingesting: Duration::from_secs(4),
        not_ready: Duration::from_secs(4),
        ..Recheck::default()
    };
    let Scene { plane, admin, namespace, .. } = &scene("storm", recheck).await;
    let collection = common::unique_collection("storm");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = photos_collection("storm", &common::milvus_uri(), &collection, "Delete");
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    collection_where(&collections, "storm", "the ingest Job reported running", |o| {
        condition(o, "Ingested").is_some_and(|c| c.1 == "JobRunning")
    })
    .await;

    // Play the ingest Job: vectors arrive a few at a time, back to back, for 8 s, as a running
    // ingest writes them. Were each status write carrying a new count to come back as a watch
    // event and start the next reconcile at once, that one would find a new count again, for
    // the whole ingest (measured on the fake API server before the fix: 21 status writes and
    // 126 API calls in these 8 s; with it 2 and 12).
    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    let position = plane.audit_position();
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut written = 0i64;
    while tokio::time::Instant::now() < until {
        let rows: Vec<VectorRow> = (written + 1..=written + 4)
            .map(|id| {
                let mut vector = vec![0.0f32; 1280];
                vector[(id as usize) % 1280] = 1.0;
                VectorRow { id, vector, uri: format!("file:///images/{id}.jpg"), content_hash: format!("{id:064x}") }
            })
            .collect();
        milvus.upsert(&collection, &rows).await.expect("write vectors");
        written += 4;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests = plane.audited_since(position, &operator_user());
    let writes = status_writes(&requests);
    assert!(writes <= 4, "{writes} status writes during an 8 s ingest: the controller's own writes woke it");
    assert!(requests.len() <= 40, "{} API requests during an 8 s ingest: a reconcile storm", requests.len());

    // The count is still read, on the timer.
    collection_where(&collections, "storm", "status.images.indexed counting every vector written", |o| {
        o["status"]["images"]["indexed"] == written
    })
    .await;
    delete_and_wait(&collections, "storm").await;
}

#[tokio::test]
async fn an_unreachable_milvus_is_reported_in_status_not_crashed_on() {
    let Scene { admin, namespace, .. } = &scene("unreachable", quick()).await;
    let closed_port = common::free_port();
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = ImageCollection::test("broken").with_spec(json!({
        "milvus": { "uri": format!("http://127.0.0.1:{closed_port}") }
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");

    let object = collection_where(&collections, "broken", "a stalled status", |o| {
        condition(o, "Stalled").is_some_and(|c| c.0 == "True")
    })
    .await;
    assert_eq!(condition(&object, "CollectionReady").map(|c| c.1), Some("MilvusUnavailable".into()));
    assert_eq!(object["status"]["phase"], "Failed");
    let service = Api::<Service>::namespaced(admin.clone(), namespace).get_opt("broken-search").await;
    assert!(service.expect("get the Service").is_some(), "the rest is still reconciled");
    // Retain (the default) with a Milvus that never answered: the object goes.
    delete_and_wait(&collections, "broken").await;
}

#[tokio::test]
async fn milvus_going_away_is_reported_and_recovered_from_without_a_restart() {
    let Scene { admin, namespace, .. } = &scene("outage", quick()).await;
    let milvus = Outage::forward_to(common::milvus_uri().trim_start_matches("http://").to_string()).await;
    let collection = common::unique_collection("outage");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = photos_collection("flaky", &milvus.uri(), &collection, "Delete");
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let ready = |wanted: &'static str| move |o: &Value| condition(o, "CollectionReady").is_some_and(|c| c.0 == wanted);
    collection_where(&collections, "flaky", "the collection ready", ready("True")).await;
    // Three vectors, as an ingest would write them, counted before the outage.
    let direct = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    let rows: Vec<VectorRow> = (1..=3)
        .map(|id: i64| {
            let mut vector = vec![0.0f32; 1280];
            vector[id as usize] = 1.0;
            VectorRow { id, vector, uri: format!("file:///images/{id}.jpg"), content_hash: format!("{id:064x}") }
        })
        .collect();
    direct.upsert(&collection, &rows).await.expect("write vectors");
    collection_where(&collections, "flaky", "3 vectors counted", |o| o["status"]["images"]["indexed"] == 3).await;

    milvus.cut();
    let object = collection_where(&collections, "flaky", "the outage in status", ready("False")).await;
    // The counts stay, said to be stale, instead of vanishing from status while Milvus is away.
    assert_eq!(object["status"]["images"], json!({ "indexed": 3, "stale": true }), "{}", object["status"]);
    assert_eq!(condition(&object, "CollectionReady").map(|c| c.1), Some("MilvusUnavailable".into()));
    assert_eq!(condition(&object, "Stalled").map(|c| c.0), Some("True".into()));
    assert_eq!(object["status"]["phase"], "Failed");
    let message = condition_message(&object, "CollectionReady");
    assert!(message.contains(&milvus.address.to_string()), "the message names the address: {message}");

    milvus.restore();
    let object = collection_where(&collections, "flaky", "recovery once Milvus is back", ready("True")).await;
    assert_eq!(condition(&object, "CollectionReady").map(|c| c.1), Some("CollectionLoaded".into()));
    let object = collection_where(&collections, "flaky", "the counts current again", |o| {
        o["status"]["images"].get("stale").is_none()
    })
    .await;
    assert_eq!(object["status"]["images"]["indexed"], 3);
    delete_and_wait(&collections, "flaky").await;
}

#[tokio::test]
async fn a_spec_that_would_replace_an_existing_collection_is_refused_with_a_condition_and_an_event_not_a_hot_loop() {
    // Someone's existing collection of 8-d vectors: the 1280-d model cannot use it.
    let collection = common::unique_collection("taken");
    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    milvus.ensure_collection(&collection, 8, &IndexSpec::default(), None).await.expect("make an 8-d collection");
    let Scene { plane, admin, namespace, .. } = &scene("clash", quick()).await;
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = photos_collection("clash", &common::milvus_uri(), &collection, "Retain");
    collections.create(&PostParams::default(), &object).await.expect("create the collection");

    let refused = collection_where(&collections, "clash", "the refusal in status", |o| {
        condition(o, "CollectionReady").is_some_and(|c| c.1 == "CollectionMismatch")
    })
    .await;
    assert_eq!(condition(&refused, "Stalled").map(|c| c.0), Some("True".into()));
    let message = condition_message(&refused, "CollectionReady");
    assert!(message.contains("1280") && message.contains('8'), "the message gives both dimensions: {message}");
    let warning = event(admin, namespace, "CollectionMismatch", "clash").await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));

    // Its own status writes must not wake it again, and it must not stall either: the retry
    // timer brings at least one more pass (requests in the audit log), yet the object's
    // version stays put and the requests stay few. (A quiet period alone would also pass if
    // the controller had stopped.)
    // The first passes may still fill the status in (seen: the version moved twice after the
    // refusal was first read), so the check starts once two reads two recheck periods apart
    // agree.
    let version = eventually("the status to settle", PATIENCE, || {
        let collections = collections.clone();
        async move {
            let before = collections.get("clash").await.map_err(|e| e.to_string())?.metadata.resource_version;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = collections.get("clash").await.map_err(|e| e.to_string())?.metadata.resource_version;
            if before == after { Ok(after) } else { Err(format!("resourceVersion {before:?}, then {after:?}")) }
        }
    })
    .await;
    let (position, started) = (plane.audit_position(), Instant::now());
    let user = operator_user();
    eventually("another pass of the controller (it stalled)", PATIENCE, || {
        let seen = plane.audited_since(position, &user).len();
        async move { if seen > 0 { Ok(()) } else { Err("no request since the refusal".to_string()) } }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await; // that pass finishes
    let (requests, seconds) = (plane.audited_since(position, &user), started.elapsed().as_secs_f64());
    assert!((requests.len() as f64) <= 30.0 * seconds, "{} API requests in {seconds:.1} s: a hot loop", requests.len());
    let writes = status_writes(&requests);
    assert!(writes <= 2, "{writes} status writes in {seconds:.1} s: a hot loop");
    let after = collections.get("clash").await.expect("get the collection").metadata.resource_version;
    assert_eq!(after, version, "an unchanged status was rewritten");

    assert!(milvus.has_collection(&collection).await.expect("ask Milvus"), "the existing collection was dropped");
    assert_eq!(milvus.count(&collection).await.expect("count"), 0);
    delete_and_wait(&collections, "clash").await;
    assert!(milvus.has_collection(&collection).await.expect("ask Milvus"), "Retain dropped someone's collection");
    milvus.drop_collection(&collection).await.expect("drop the 8-d collection");
}

#[tokio::test]
async fn deleting_with_retain_keeps_the_milvus_collection_and_the_catalog_rows_and_the_collector_takes_the_children() {
    let Scene { admin, namespace, .. } = &scene("retain", quick()).await;
    let collection = common::unique_collection("retain");
    // A catalog with rows of this collection, through the Secret the controller would read to
    // delete them under `Delete`.
    let work = tempfile::tempdir().expect("a temporary folder");
    let catalog_url = format!("sqlite://{}", work.path().join("catalog.db").display());
    let catalog = imgsearch::catalog::Catalog::open(&catalog_url).await.expect("open the catalog");
    let rows: Vec<imgsearch::catalog::NewImage> = (0..3)
        .map(|i| imgsearch::catalog::NewImage {
            uri: format!("/photos/{i}.jpg"),
            content_hash: format!("{i:064x}"),
            size_bytes: 10,
            width: 4,
            height: 3,
        })
        .collect();
    let ids = catalog.reserve(&collection, &rows).await.expect("reserve rows");
    catalog.mark_indexed(&ids).await.expect("mark them indexed");
    create_catalog_secret(admin, namespace, &catalog_url).await;
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let mut object = photos_collection("kept", &common::milvus_uri(), &collection, "Retain");
    object.spec.catalog = Some(serde_json::from_value(json!({ "secretRef": { "name": "catalog" } })).expect("catalog"));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    collection_where(&collections, "kept", "the collection ready", |o| {
        condition(o, "CollectionReady").is_some_and(|c| c.0 == "True")
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), namespace);
    deployments.get("kept-search").await.expect("the search Deployment");
    delete_and_wait(&collections, "kept").await;
    // Retain leaves the children to the garbage collector, which follows the owner references.
    gone(&deployments, "kept-search", "the search Deployment collected", PATIENCE, String::new).await;

    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    assert!(milvus.has_collection(&collection).await.expect("ask Milvus"), "Retain dropped the collection");
    let indexed = catalog.count(&collection, imgsearch::catalog::ImageStatus::Indexed).await.expect("count");
    assert_eq!(indexed, 3, "Retain purged the catalog rows");
    milvus.drop_collection(&collection).await.expect("drop the collection");
}

#[tokio::test]
async fn a_blocked_deletion_keeps_the_object_and_says_why_until_milvus_answers() {
    let Scene { admin, namespace, .. } = &scene("blocked", quick()).await;
    let milvus = Outage::forward_to(common::milvus_uri().trim_start_matches("http://").to_string()).await;
    let collection = common::unique_collection("blocked");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = photos_collection("doomed", &milvus.uri(), &collection, "Delete");
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    collection_where(&collections, "doomed", "the collection ready", |o| {
        condition(o, "CollectionReady").is_some_and(|c| c.0 == "True")
    })
    .await;

    milvus.cut();
    collections.delete("doomed", &DeleteParams::default()).await.expect("delete the collection");
    let blocked = collection_where(&collections, "doomed", "a CleanupBlocked status", |o| {
        condition(o, "Ready").is_some_and(|c| c.1 == "CleanupBlocked")
    })
    .await;
    assert_eq!(blocked["status"]["phase"], "Deleting");
    assert_eq!(blocked["metadata"]["finalizers"], json!([FINALIZER]), "the finalizer holds the object");
    event(admin, namespace, "CleanupBlocked", "doomed").await;

    milvus.restore();
    gone(&collections, "doomed", "the object gone once Milvus answers", PATIENCE, String::new).await;
    let direct = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    assert!(!direct.has_collection(&collection).await.expect("ask Milvus"), "the collection was not dropped");
}

/// The catalog half of a blocked deletion: with the catalog out of reach, nothing is dropped
/// (rows left "indexed" for vectors gone would be skipped by a later ingest), the object stays
/// `CleanupBlocked` naming the catalog, and once the catalog answers both go.
#[tokio::test]
async fn a_deletion_whose_catalog_cannot_be_reached_drops_nothing_until_it_can() {
    let Scene { admin, namespace, .. } = &scene("catalogless", quick()).await;
    // A catalog in a folder that is not there yet (a volume not mounted); a server that refuses
    // connections is the same failure, only reached after the pool's 30 s of retries.
    let work = tempfile::tempdir().expect("a temporary folder");
    let folder = work.path().join("catalog");
    let url = format!("sqlite://{}", folder.join("catalog.db").display());
    create_catalog_secret(admin, namespace, &url).await;
    let collection = common::unique_collection("catalogless");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = photos_collection("doomed", &common::milvus_uri(), &collection, "Delete")
        .with_spec(json!({ "catalog": { "secretRef": { "name": "catalog" } } }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    collection_where(&collections, "doomed", "the Milvus collection made", |o| {
        condition(o, "CollectionReady").is_some_and(|c| c.0 == "True")
    })
    .await;

    collections.delete("doomed", &DeleteParams::default()).await.expect("delete the collection");
    let blocked = collection_where(&collections, "doomed", "a CleanupBlocked status", |o| {
        condition(o, "Ready").is_some_and(|c| c.1 == "CleanupBlocked")
    })
    .await;
    let message = condition_message(&blocked, "Ready");
    assert!(message.contains(&format!("cannot open catalog {url}")), "{message}");
    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    assert!(milvus.has_collection(&collection).await.expect("ask Milvus"), "the collection was dropped half-way");

    std::fs::create_dir_all(&folder).expect("create the catalog's folder");
    gone(&collections, "doomed", "the object gone once the catalog answers", PATIENCE, String::new).await;
    assert!(!milvus.has_collection(&collection).await.expect("ask Milvus"), "the collection was not dropped");
}

#[tokio::test]
async fn a_milvus_secret_is_sent_only_to_the_address_the_secret_names() {
    // A server of someone allowed to create ImageCollections but not to read Secrets: it counts
    // the connections it gets.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a trap listener");
    let trap_uri = format!("http://{}", trap.local_addr().expect("its address"));
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    let _trap_task = tokio::spawn(async move {
        while let Ok((stream, _)) = trap.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let Scene { admin, namespace, .. } = &scene("secret-bound", quick()).await;
    // The Secret's owner says where its token may go: the real Milvus.
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "milvus-token", "annotations": { "imgsearch.io/milvus-uri": common::milvus_uri() } },
        "stringData": { "token": "root:Milvus" }
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let collection = |name: &str, uri: &str, policy: &str| {
        ImageCollection::test(name).with_spec(json!({
            "milvus": { "uri": uri, "secretRef": { "name": "milvus-token" } },
            "collectionName": common::unique_collection(name),
            "deletionPolicy": policy
        }))
    };
    let exfil = collection("exfil", &trap_uri, "Retain");
    collections.create(&PostParams::default(), &exfil).await.expect("create the collection");

    let refused = collection_where(&collections, "exfil", "the Secret refused for the other address", |o| {
        condition(o, "CollectionReady").is_some_and(|c| c.1 == "SecretNotBound")
    })
    .await;
    let message = condition_message(&refused, "CollectionReady");
    assert!(message.contains("imgsearch.io/milvus-uri") && message.contains(&trap_uri), "says what to do: {message}");
    assert_eq!(condition(&refused, "Stalled").map(|c| c.0), Some("True".into()));
    // Neither the controller nor a pod it made could carry the token there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(seen, 0, "the controller connected to the address the Secret does not name");
    let deployment = Api::<Deployment>::namespaced(admin.clone(), namespace).get_opt("exfil-search").await;
    assert!(deployment.expect("get").is_none(), "the search Deployment was made: its pods would get the token");
    let job = Api::<Job>::namespaced(admin.clone(), namespace).get_opt("exfil-ingest-g1").await;
    assert!(job.expect("get").is_none(), "the ingest Job was made: its pods would get the token");

    // The address the Secret names works as before, and the pods read the token from it.
    let bound = collection("bound", &common::milvus_uri(), "Delete");
    collections.create(&PostParams::default(), &bound).await.expect("create the collection");
    collection_where(&collections, "bound", "the collection with its own Milvus ready", |o| {
        condition(o, "CollectionReady") == Some(("True".into(), "CollectionLoaded".into()))
    })
    .await;
    let deployment = Api::<Deployment>::namespaced(admin.clone(), namespace).get("bound-search").await;
    let text = serde_json::to_string(&deployment.expect("the search Deployment")).expect("JSON");
    assert!(text.contains("milvus-token"), "its pods read the token through secretKeyRef");
    delete_and_wait(&collections, "bound").await;
    delete_and_wait(&collections, "exfil").await;
}

#[tokio::test]
async fn a_missing_or_keyless_milvus_secret_is_secret_invalid_and_fixing_it_recovers() {
    let Scene { admin, namespace, .. } = &scene("secret-invalid", quick()).await;
    let collection = common::unique_collection("secret");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = ImageCollection::test("credentials").with_spec(json!({
        "milvus": { "uri": common::milvus_uri(), "secretRef": { "name": "milvus-login" } },
        "collectionName": collection,
        "deletionPolicy": "Delete"
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let invalid_saying = |wanted: &'static str| {
        move |o: &Value| {
            condition(o, "CollectionReady").is_some_and(|c| c.1 == "SecretInvalid")
                && condition_message(o, "CollectionReady").contains(wanted)
        }
    };
    let missing = collection_where(
        &collections,
        "credentials",
        "SecretInvalid for a missing Secret",
        invalid_saying("not found"),
    )
    .await;
    let message = condition_message(&missing, "CollectionReady");
    assert!(message.contains("milvus-login") && message.contains("spec.milvus.secretRef"), "{message}");

    // The Secret appears, bound to this address, but without credentials in it.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    let keyless: Secret = serde_json::from_value(json!({
        "metadata": { "name": "milvus-login", "annotations": { "imgsearch.io/milvus-uri": common::milvus_uri() } },
        "stringData": { "user": "root" }
    }))
    .expect("a Secret");
    secrets.create(&PostParams::default(), &keyless).await.expect("create the Secret");
    let keyless = collection_where(
        &collections,
        "credentials",
        "SecretInvalid for a Secret without credentials",
        invalid_saying("needs a `token` key"),
    )
    .await;
    let message = condition_message(&keyless, "CollectionReady");
    assert!(message.contains("username") && message.contains("password"), "{message}");
    event(admin, namespace, "SecretInvalid", "credentials").await;

    // Fixed: username and password, and the collection comes up.
    let fixed = json!({ "stringData": { "username": "root", "password": "Milvus" } });
    secrets.patch("milvus-login", &PatchParams::default(), &Patch::Merge(&fixed)).await.expect("fix the Secret");
    collection_where(&collections, "credentials", "CollectionReady once the Secret holds credentials", |o| {
        condition(o, "CollectionReady").is_some_and(|c| c.0 == "True")
    })
    .await;
    delete_and_wait(&collections, "credentials").await;
}

#[tokio::test]
async fn a_child_the_api_server_refuses_is_reported_with_its_words_and_does_not_block_the_others() {
    let Scene { admin, namespace, .. } = &scene("quota", quick()).await;
    // A namespace whose quota allows no Services: the real ResourceQuota admission refuses the
    // search Service (403) once the quota controller has counted what the namespace holds.
    let quotas: Api<ResourceQuota> = Api::namespaced(admin.clone(), namespace);
    let quota = serde_json::from_value(
        json!({ "metadata": { "name": "no-services" }, "spec": { "hard": { "services": "0" } } }),
    )
    .expect("a ResourceQuota");
    quotas.create(&PostParams::default(), &quota).await.expect("create the quota");
    quota_counted(&quotas, "no-services", "services").await;
    let collection = common::unique_collection("quota");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = photos_collection("photos", &common::milvus_uri(), &collection, "Delete");
    collections.create(&PostParams::default(), &object).await.expect("create the collection");

    let stalled = collection_where(&collections, "photos", "Stalled naming the Service", |o| {
        condition(o, "Stalled").is_some_and(|c| c.0 == "True") && condition_message(o, "Stalled").contains("Service")
    })
    .await;
    let message = condition_message(&stalled, "Stalled");
    assert!(message.contains("photos-search") && message.contains("exceeded quota"), "{message}");
    assert_eq!(condition(&stalled, "Ready").map(|c| c.0), Some("False".into()));
    Api::<Job>::namespaced(admin.clone(), namespace)
        .get("photos-ingest-g1")
        .await
        .expect("the ingest Job was still made");
    Api::<Deployment>::namespaced(admin.clone(), namespace).get("photos-search").await.expect("the Deployment too");
    let warning = event(admin, namespace, "ChildRejected", "photos").await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));

    // The quota lifted: the Service is made and the condition clears.
    quotas.delete("no-services", &DeleteParams::default()).await.expect("delete the quota");
    collection_where(&collections, "photos", "Stalled cleared once the Service exists", |o| {
        condition(o, "Stalled").is_some_and(|c| c.0 == "False")
    })
    .await;
    Api::<Service>::namespaced(admin.clone(), namespace).get("photos-search").await.expect("the search Service");
    delete_and_wait(&collections, "photos").await;
}

#[tokio::test]
async fn pods_a_quota_refuses_are_reported_with_its_words_and_the_default_resources_fit_a_compute_quota() {
    let Scene { admin, namespace, .. } = &scene("podquota", quick()).await;
    // A typical namespace quota on requests and limits, which also allows no pods yet: the
    // Job and ReplicaSet controllers are refused every pod and say so only in a FailedCreate
    // Event (the Job) and a ReplicaFailure condition (the ReplicaSet, copied to the Deployment).
    let quotas: Api<ResourceQuota> = Api::namespaced(admin.clone(), namespace);
    let compute = |pods: &str| -> ResourceQuota {
        serde_json::from_value(json!({
            "metadata": { "name": "compute" },
            "spec": { "hard": {
                "pods": pods,
                "requests.cpu": "8", "requests.memory": "16Gi", "limits.cpu": "16", "limits.memory": "32Gi"
            } }
        }))
        .expect("a ResourceQuota")
    };
    quotas.create(&PostParams::default(), &compute("0")).await.expect("create the quota");
    quota_counted(&quotas, "compute", "pods").await;
    let collection = common::unique_collection("podquota");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = photos_collection("photos", &common::milvus_uri(), &collection, "Delete");
    collections.create(&PostParams::default(), &object).await.expect("create the collection");

    let refused = |o: &Value| {
        let message = condition_message(o, "Stalled");
        condition(o, "Stalled").is_some_and(|c| c == ("True".into(), "PodsNotCreated".into()))
            && message.contains("Job photos-ingest-g1")
            && message.contains("Deployment photos-search")
    };
    let stalled = collection_where(&collections, "photos", "Stalled naming the Job and the Deployment", refused).await;
    let message = condition_message(&stalled, "Stalled");
    assert!(message.contains("exceeded quota: compute"), "the quota's own words: {message}");
    assert_eq!(condition(&stalled, "Ingested").map(|c| c.1), Some("PodsNotStarting".into()));
    assert!(condition_message(&stalled, "Ingested").contains("cannot create its pods"), "{}", stalled["status"]);
    assert_ne!(stalled["status"]["phase"], "Ingesting", "a Job with no pods is not ingesting");
    let warning = event(admin, namespace, "PodsNotCreated", "photos").await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));

    // Pods allowed: the default requests and limits satisfy the quota's other terms (a pod
    // naming none would be refused "must specify limits.cpu…"), so both controllers now make
    // their pods, and the refusal is no longer reported.
    quotas
        .replace("compute", &PostParams::default(), &{
            let mut quota = compute("10");
            quota.metadata.resource_version = quotas.get("compute").await.expect("the quota").metadata.resource_version;
            quota
        })
        .await
        .expect("allow pods");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    eventually("an ingest pod and a search pod created under the quota", Duration::from_secs(120), || {
        let pods = pods.clone();
        async move {
            let names: Vec<String> = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            let made = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
            if made("photos-ingest-g1") && made("photos-search") { Ok(()) } else { Err(format!("pods: {names:?}")) }
        }
    })
    .await;
    collection_where(&collections, "photos", "the refusal no longer reported", |o| {
        condition(o, "Stalled").is_some_and(|c| c.1 != "PodsNotCreated")
    })
    .await;
    delete_and_wait(&collections, "photos").await;
}

#[tokio::test]
async fn a_spec_edit_that_does_not_touch_ingest_keeps_the_job_and_one_that_does_stops_the_old_job_first() {
    let Scene { admin, namespace, .. } = &scene("rekey", quick()).await;
    let collection = common::unique_collection("rekey");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = photos_collection("photos", &common::milvus_uri(), &collection, "Delete");
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let jobs: Api<Job> = Api::namespaced(admin.clone(), namespace);
    let names = || async {
        let listed = jobs.list(&ListParams::default()).await.expect("list Jobs").items;
        listed
            .into_iter()
            .map(|j| (j.metadata.name.unwrap_or_default(), j.metadata.deletion_timestamp.is_some()))
            .collect::<Vec<_>>()
    };
    collection_where(&collections, "photos", "the first ingest Job reported", |o| {
        o["status"]["lastIngest"]["job"] == "photos-ingest-g1"
    })
    .await;

    // Search replicas, the deletion policy and a schedule do not change what an ingest does:
    // the running Job stays the collection's, nothing is embedded again.
    let elsewhere = json!({ "spec": { "search": { "replicas": 2 }, "deletionPolicy": "Retain", "ingest": { "schedule": "0 3 * * *" } } });
    collections.patch("photos", &PatchParams::default(), &Patch::Merge(&elsewhere)).await.expect("edit the spec");
    let status =
        collection_where(&collections, "photos", "generation 2 reconciled", |o| o["status"]["observedGeneration"] == 2)
            .await;
    assert_eq!(status["status"]["lastIngest"]["job"], "photos-ingest-g1", "{}", status["status"]);
    assert_eq!(names().await, [("photos-ingest-g1".to_string(), false)], "no new Job, the old one not stopped");

    // The batch size is ingest's: a new Job, but only after the running one (its pods never
    // start here: no node) has been stopped with its pods. The watch sees the order.
    let version =
        jobs.list(&ListParams::default()).await.expect("list Jobs").metadata.resource_version.expect("a version");
    let mut changes = jobs.watch(&WatchParams::default(), &version).await.expect("watch Jobs").boxed();
    let ingest = json!({ "spec": { "ingest": { "batchSize": 4 }, "deletionPolicy": "Delete" } });
    collections.patch("photos", &PatchParams::default(), &Patch::Merge(&ingest)).await.expect("edit ingest");
    let mut order = Vec::new();
    let seen = tokio::time::timeout(PATIENCE, async {
        while let Some(event) = changes.next().await {
            match event {
                Ok(WatchEvent::Added(job)) => order.push(format!("added {}", job.metadata.name.unwrap_or_default())),
                Ok(WatchEvent::Deleted(job)) => {
                    order.push(format!("deleted {}", job.metadata.name.unwrap_or_default()))
                }
                _ => continue,
            }
            if order.iter().any(|o| o == "added photos-ingest-g3") {
                return;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "no Job photos-ingest-g3 within {PATIENCE:?}; Job changes seen: {order:?}");
    assert_eq!(order, ["deleted photos-ingest-g1", "added photos-ingest-g3"], "the old Job must be gone first");
    let stopped = event(admin, namespace, "IngestStopped", "photos").await;
    assert!(stopped.note.unwrap_or_default().contains("photos-ingest-g1"));
    collection_where(&collections, "photos", "the new Job reported", |o| {
        o["status"]["observedGeneration"] == 3 && o["status"]["lastIngest"]["job"] == "photos-ingest-g3"
    })
    .await;
    delete_and_wait(&collections, "photos").await;
}

#[tokio::test]
async fn search_replicas_left_unset_belong_to_whoever_scales_the_deployment_and_set_ones_are_kept() {
    let Scene { admin, namespace, .. } = &scene("scale", quick()).await;
    let collection = common::unique_collection("scale");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = photos_collection("photos", &common::milvus_uri(), &collection, "Delete");
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), namespace);
    let replicas = || async {
        deployments.get_opt("photos-search").await.expect("get the Deployment").and_then(|d| d.spec.replicas)
    };
    collection_where(&collections, "photos", "generation 1 reconciled", |o| o["status"]["observedGeneration"] == 1)
        .await;
    assert_eq!(replicas().await, Some(1), "Kubernetes' default when the spec sets none");

    // `kubectl scale` (or an autoscaler) through the scale subresource, as another manager.
    let scale = json!({ "spec": { "replicas": 3 } });
    deployments
        .patch_scale("photos-search", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .expect("scale the Deployment");
    // A spec edit makes the controller apply the Deployment again; the scale stands.
    let edit = json!({ "spec": { "ingest": { "batchSize": 4 } } });
    collections.patch("photos", &PatchParams::default(), &Patch::Merge(&edit)).await.expect("edit the spec");
    let status =
        collection_where(&collections, "photos", "generation 2 reconciled", |o| o["status"]["observedGeneration"] == 2)
            .await;
    assert_eq!(replicas().await, Some(3), "the controller took the replicas back from whoever scaled");
    let search_ready = condition_message(&status, "SearchReady");
    assert!(search_ready.ends_with("of 3 search replicas available"), "{search_ready}");

    // Set in the spec, the number is the controller's again.
    let set = json!({ "spec": { "search": { "replicas": 2 } } });
    collections.patch("photos", &PatchParams::default(), &Patch::Merge(&set)).await.expect("set replicas");
    eventually("the Deployment at the spec's 2 replicas", PATIENCE, || async {
        match replicas().await {
            Some(2) => Ok(()),
            other => Err(format!("replicas {other:?}")),
        }
    })
    .await;
    delete_and_wait(&collections, "photos").await;
}

#[tokio::test]
async fn objects_of_a_childs_name_that_imgsearch_did_not_make_are_left_alone_and_reported() {
    let Scene { admin, namespace, .. } = &scene("taken", quick()).await;
    // A user's own Deployment, Service and CronJob that happen to have the names a collection
    // called `photos` would give its children, made before the collection.
    let mine = json!({ "app": "mine" });
    let pod = json!({
        "metadata": { "labels": mine },
        "spec": { "containers": [{ "name": "web", "image": "registry.invalid/web:1" }], "restartPolicy": "Never" }
    });
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), namespace);
    let services: Api<Service> = Api::namespaced(admin.clone(), namespace);
    let cronjobs: Api<CronJob> = Api::namespaced(admin.clone(), namespace);
    let deployment = serde_json::from_value(json!({
        "metadata": { "name": "photos-search" },
        "spec": { "selector": { "matchLabels": mine }, "template": { "metadata": pod["metadata"], "spec": {
            "containers": pod["spec"]["containers"] } } }
    }))
    .expect("a Deployment");
    deployments.create(&PostParams::default(), &deployment).await.expect("create my Deployment");
    let service = serde_json::from_value(json!({
        "metadata": { "name": "photos-search" },
        "spec": { "selector": mine, "ports": [{ "port": 80 }] }
    }))
    .expect("a Service");
    services.create(&PostParams::default(), &service).await.expect("create my Service");
    let cronjob = serde_json::from_value(json!({
        "metadata": { "name": "photos-rescan" },
        "spec": { "schedule": "0 3 * * *", "jobTemplate": { "spec": { "template": pod } } }
    }))
    .expect("a CronJob");
    cronjobs.create(&PostParams::default(), &cronjob).await.expect("create my CronJob");

    let collection = common::unique_collection("taken");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = photos_collection("photos", &common::milvus_uri(), &collection, "Delete");
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let stalled = collection_where(&collections, "photos", "Stalled NameTaken", |o| {
        condition(o, "Stalled") == Some(("True".into(), "NameTaken".into()))
    })
    .await;
    let message = condition_message(&stalled, "Stalled");
    assert!(
        message.contains("Service photos-search, Deployment photos-search: ")
            && message.contains("one of this name exists that imgsearch did not make for this collection")
            && message.contains("it has no controller and not imgsearch's labels"),
        "{message}"
    );
    assert_eq!(condition(&stalled, "Ready").map(|c| c.0), Some("False".into()));
    let warning = event(admin, namespace, "NameTaken", "photos").await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    // Untouched: no owner added, no field of the controller's (their own controllers write
    // their status, so the resourceVersion moves), and the CronJob of a collection without a
    // schedule was not deleted as the collection's own would be.
    let untouched = |what: &str, meta: kube::api::ObjectMeta| {
        let managers: Vec<_> = meta.managed_fields.iter().flatten().filter_map(|f| f.manager.clone()).collect();
        assert!(
            meta.owner_references.is_none() && !managers.iter().any(|m| m == children::MANAGER),
            "my {what} was taken over: owners {:?}, field managers {managers:?}",
            meta.owner_references
        );
    };
    untouched("Deployment", deployments.get("photos-search").await.expect("my Deployment").metadata);
    untouched("Service", services.get("photos-search").await.expect("my Service").metadata);
    untouched("CronJob", cronjobs.get("photos-rescan").await.expect("my CronJob was deleted").metadata);
    assert_eq!(
        deployments.get("photos-search").await.expect("my Deployment").spec.selector.match_labels,
        Some(std::collections::BTreeMap::from([("app".to_string(), "mine".to_string())]))
    );

    // A schedule in the spec wants the CronJob's name too: refused the same way.
    let schedule = json!({ "spec": { "ingest": { "schedule": "0 4 * * *" } } });
    collections.patch("photos", &PatchParams::default(), &Patch::Merge(&schedule)).await.expect("set a schedule");
    let stalled = collection_where(&collections, "photos", "Stalled naming the CronJob", |o| {
        o["status"]["observedGeneration"] == 2 && condition_message(o, "Stalled").contains("CronJob photos-rescan")
    })
    .await;
    let message = condition_message(&stalled, "Stalled");
    assert!(
        message.contains("CronJob photos-rescan: one of this name exists that imgsearch did not make"),
        "{message}"
    );
    untouched("CronJob", cronjobs.get("photos-rescan").await.expect("my CronJob").metadata);

    // Mine gone, the collection's own are made and the condition clears.
    for (kind, result) in [
        ("Deployment", deployments.delete("photos-search", &DeleteParams::default()).await.map(|_| ())),
        ("Service", services.delete("photos-search", &DeleteParams::default()).await.map(|_| ())),
        ("CronJob", cronjobs.delete("photos-rescan", &DeleteParams::default()).await.map(|_| ())),
    ] {
        result.unwrap_or_else(|e| panic!("delete my {kind}: {e}"));
    }
    let recovered = collection_where(&collections, "photos", "Stalled cleared once the names are free", |o| {
        condition(o, "Stalled").is_some_and(|c| c.0 == "False")
    })
    .await;
    let uid = recovered["metadata"]["uid"].as_str().expect("a uid").to_string();
    let controlled = |meta: &kube::api::ObjectMeta| {
        meta.owner_references.iter().flatten().any(|o| o.uid == uid && o.controller == Some(true))
    };
    assert!(controlled(&deployments.get("photos-search").await.expect("the Deployment").metadata));
    assert!(controlled(&services.get("photos-search").await.expect("the Service").metadata));
    assert!(controlled(&cronjobs.get("photos-rescan").await.expect("the CronJob").metadata));
    delete_and_wait(&collections, "photos").await;
}

#[tokio::test]
async fn a_search_deployment_made_with_the_earlier_selector_is_replaced_and_its_pods_are_adopted_not_restarted() {
    let mut scene = scene_before_the_controller("reselect").await;
    let Scene { admin, namespace, .. } = &scene;
    let (admin, namespace) = (admin.clone(), namespace.clone());
    let collection = common::unique_collection("reselect");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let object = photos_collection("photos", &common::milvus_uri(), &collection, "Delete");
    let stored = collections.create(&PostParams::default(), &object).await.expect("create the collection");
    // The search Deployment as the controller made it before the selector changed: selected by
    // `app.kubernetes.io/instance` and component, applied by the controller's field manager.
    let mut earlier = children::search_deployment(&stored, &ChildConfig::test()).expect("the search Deployment");
    let earlier_selector = std::collections::BTreeMap::from([
        ("app.kubernetes.io/instance".to_string(), "photos".to_string()),
        ("app.kubernetes.io/component".to_string(), "search".to_string()),
    ]);
    earlier.spec.selector.match_labels = Some(earlier_selector.clone());
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
    let earlier = deployments
        .patch("photos-search", &PatchParams::apply(children::MANAGER), &Patch::Apply(&earlier))
        .await
        .expect("apply the earlier Deployment");
    // The real Deployment and ReplicaSet controllers make its ReplicaSet and pod.
    let replica_sets: Api<ReplicaSet> = Api::namespaced(admin.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    let of_collection = ListParams::default()
        .labels(&format!("{}=photos,app.kubernetes.io/component=search", children::LABEL_COLLECTION));
    let earlier_pod = eventually("the earlier Deployment's pod", PATIENCE, || async {
        let listed = pods.list(&of_collection).await.map_err(|e| e.to_string())?.items;
        match listed.as_slice() {
            [pod] => Ok(pod.clone()),
            other => Err(format!("{} pods", other.len())),
        }
    })
    .await;
    let earlier_set = replica_sets.list(&of_collection).await.expect("list ReplicaSets").items;
    assert_eq!(earlier_set.len(), 1, "one ReplicaSet: {earlier_set:?}");

    scene.start_controller(quick()).await;
    // Replaced: a new Deployment (another uid) with the new selector, which adopted the same
    // ReplicaSet, whose pod was never replaced.
    let replaced = eventually("a Deployment with the new selector", PATIENCE, || async {
        let now = deployments.get_opt("photos-search").await.map_err(|e| e.to_string())?;
        match now {
            Some(d) if d.metadata.uid != earlier.metadata.uid && d.metadata.deletion_timestamp.is_none() => Ok(d),
            other => Err(format!("{:?}", other.map(|d| (d.metadata.uid, d.spec.selector)))),
        }
    })
    .await;
    assert_eq!(replaced.spec.selector.match_labels, Some(children::search_selector("photos")));
    assert_ne!(children::search_selector("photos"), earlier_selector, "the selector did change");
    let new_uid = replaced.metadata.uid.clone().expect("a uid");
    let adopted = eventually("the earlier ReplicaSet adopted by the new Deployment", PATIENCE, || async {
        let sets = replica_sets.list(&of_collection).await.map_err(|e| e.to_string())?.items;
        let owners: Vec<_> = sets
            .iter()
            .map(|s| (s.metadata.name.clone(), s.metadata.owner_references.clone().unwrap_or_default()))
            .collect();
        match sets.as_slice() {
            [set] if set.metadata.owner_references.iter().flatten().any(|o| o.uid == new_uid) => Ok(set.clone()),
            _ => Err(format!("ReplicaSets and owners: {owners:?}")),
        }
    })
    .await;
    assert_eq!(adopted.metadata.name, earlier_set[0].metadata.name, "the same ReplicaSet, not a new rollout");
    let now: Vec<Option<String>> =
        pods.list(&of_collection).await.expect("list pods").items.into_iter().map(|p| p.metadata.name).collect();
    assert_eq!(now, vec![earlier_pod.metadata.name.clone()], "the earlier pod, not a new one");
    let note = event(&admin, &namespace, "SelectorChanged", "photos").await.note.unwrap_or_default();
    assert!(note.contains("its pods keep serving"), "{note}");
    collection_where(&collections, "photos", "the Service selecting by the new selector too", |o| {
        o["status"]["observedGeneration"] == 1
    })
    .await;
    let service = Api::<Service>::namespaced(admin.clone(), &namespace).get("photos-search").await.expect("Service");
    assert_eq!(service.spec.and_then(|s| s.selector), Some(children::search_selector("photos")));
    delete_and_wait(&collections, "photos").await;
}

/// A rollback: the controller is older than the CRD installed, which admits a model and a phase
/// this version does not know. The object using the unknown model is `Stalled` `InvalidSpec`
/// naming the field; a phase written by the newer controller is read and replaced; every other
/// collection is still reconciled (a strict enum would fail the whole list the controller
/// watches, and with it every collection).
#[tokio::test]
async fn values_only_a_newer_crd_knows_stall_their_own_collection_and_no_other() {
    let Scene { admin, namespace, .. } = &scene("rollback", quick()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let crd_name = "imagecollections.imgsearch.io";
    let schema = "/spec/versions/0/schema/openAPIV3Schema/properties";
    let model_enum = format!("{schema}/spec/properties/model/properties/name/enum");
    let phase_enum = format!("{schema}/status/properties/phase/enum");
    let with_enums = |models: Value, phases: Value| async {
        let crd = crds.get(crd_name).await.expect("the CRD");
        let mut crd = serde_json::to_value(crd).expect("CRD as JSON");
        let originals = (crd.pointer(&model_enum).cloned(), crd.pointer(&phase_enum).cloned());
        *crd.pointer_mut(&model_enum).expect("the model enum") = models;
        *crd.pointer_mut(&phase_enum).expect("the phase enum") = phases;
        let crd: CustomResourceDefinition = serde_json::from_value(crd).expect("a CRD");
        crds.replace(crd_name, &PostParams::default(), &crd).await.expect("replace the CRD");
        originals
    };
    let crd = serde_json::to_value(crds.get(crd_name).await.expect("the CRD")).expect("CRD as JSON");
    let plus = |path: &str, value: &str| {
        let mut values = crd.pointer(path).and_then(Value::as_array).cloned().expect(path);
        values.push(json!(value));
        Value::Array(values)
    };
    let (models, phases) = with_enums(plus(&model_enum, "clip-vit-b32"), plus(&phase_enum, "Hibernating")).await;

    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let older = photos_collection("older", &common::milvus_uri(), &common::unique_collection("older"), "Delete");
    collections.create(&PostParams::default(), &older).await.expect("create a collection this version knows");
    let mut newer = serde_json::to_value(ImageCollection::test("newer")).expect("JSON");
    newer["spec"]["milvus"] = json!({ "uri": common::milvus_uri() });
    newer["spec"]["model"] = json!({ "name": "clip-vit-b32" });
    // The API server takes the new schema a moment after the update.
    eventually("the newer CRD's model accepted", PATIENCE, || async {
        // Sent as JSON: this version would read the model as Unknown.
        let created = Api::<kube::api::DynamicObject>::namespaced_with(
            admin.clone(),
            namespace,
            &kube::api::ApiResource::erase::<ImageCollection>(&()),
        )
        .create(&PostParams::default(), &serde_json::from_value(newer.clone()).map_err(|e| e.to_string())?)
        .await;
        created.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    let stalled = collection_where(&collections, "newer", "the newer model's collection Stalled", |o| {
        condition(o, "Stalled") == Some(("True".into(), "InvalidSpec".into()))
    })
    .await;
    let message = condition_message(&stalled, "Stalled");
    assert!(message.contains("spec.model.name hold values this controller does not know"), "{message}");
    collection_where(&collections, "older", "the other collection ready", |o| {
        condition(o, "CollectionReady").is_some_and(|c| c.0 == "True") && o["status"]["observedGeneration"] == 1
    })
    .await;

    // A phase the newer controller wrote: read, replaced, and the collection still reconciled.
    let hibernating = json!({ "status": { "phase": "Hibernating" } });
    collections
        .patch_status("older", &PatchParams::default(), &Patch::Merge(&hibernating))
        .await
        .expect("a phase of the newer CRD");
    let edit = json!({ "spec": { "ingest": { "batchSize": 4 } } });
    collections.patch("older", &PatchParams::default(), &Patch::Merge(&edit)).await.expect("edit the spec");
    collection_where(&collections, "older", "generation 2 reconciled, the phase its own", |o| {
        o["status"]["observedGeneration"] == 2 && o["status"]["phase"] != "Hibernating"
    })
    .await;

    delete_and_wait(&collections, "newer").await;
    delete_and_wait(&collections, "older").await;
    let restored = with_enums(models.expect("the model enum"), phases.expect("the phase enum")).await;
    assert!(restored.0.is_some(), "the CRD restored");
}

/// One tenant must not stall the others: a collection whose Milvus is a black hole (connections
/// accepted, nothing ever answered) costs the controller up to its Milvus patience (8 s) a
/// pass, but only for that collection's passes. A collection on a healthy Milvus is reconciled
/// at once meanwhile, edit after edit: each within half that patience, which a pass queued
/// behind the black hole's connection could not make.
#[tokio::test]
async fn a_black_holed_milvus_holds_up_only_its_own_collections() {
    let Scene { admin, namespace, .. } = &scene("tenants", quick()).await;
    let hole = Outage::forward_to(common::milvus_uri().trim_start_matches("http://").to_string()).await;
    hole.black_hole();
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let stuck = photos_collection("stuck", &hole.uri(), &common::unique_collection("stuck"), "Retain");
    let created = Instant::now();
    collections.create(&PostParams::default(), &stuck).await.expect("create the black-holed collection");
    let healthy = photos_collection("healthy", &common::milvus_uri(), &common::unique_collection("healthy"), "Delete");
    collections.create(&PostParams::default(), &healthy).await.expect("create the healthy collection");
    collection_where(&collections, "healthy", "the healthy collection ready", |o| {
        condition(o, "CollectionReady").is_some_and(|c| c.0 == "True")
    })
    .await;
    let object = collection_where(&collections, "stuck", "the black hole reported", |o| {
        condition(o, "CollectionReady") == Some(("False".into(), "MilvusUnavailable".into()))
    })
    .await;
    let message = condition_message(&object, "CollectionReady");
    assert!(message.contains(&hole.address.to_string()), "{message}");
    // The controller's patience with Milvus is 8 s; 6 s more for the reconcile around it.
    assert!(message.contains("no answer within 8 s"), "{message}");
    let reported = created.elapsed();
    assert!(reported < Duration::from_secs(14), "the black hole was reported after {reported:?}, not within 8 s + 6 s");

    // The black hole's passes go on (every second and more, backing off); the healthy
    // collection's edits are each reconciled within 4 s.
    let within = Duration::from_secs(4);
    for generation in 2..=4 {
        let edit = json!({ "spec": { "ingest": { "batchSize": generation } } });
        collections.patch("healthy", &PatchParams::default(), &Patch::Merge(&edit)).await.expect("edit the spec");
        let what = format!("generation {generation} of the healthy collection reconciled within {within:?}");
        eventually(&what, within, || async {
            let object = collections.get("healthy").await.map_err(|e| e.to_string())?;
            let observed = object.status.as_ref().and_then(|s| s.observed_generation);
            if observed == Some(generation) { Ok(()) } else { Err(format!("observedGeneration {observed:?}")) }
        })
        .await;
    }
    delete_and_wait(&collections, "healthy").await;
    delete_and_wait(&collections, "stuck").await;
}

/// A namespace deleted with a `deletionPolicy: Delete` collection in it: the namespace
/// controller deletes the Secrets its cleanup needs (here the catalog's, deleted first, as the
/// namespace controller may) and refuses new ones, then waits on the collection's finalizer.
/// The cleanup gives up at once on a Secret that is gone in a namespace being deleted, keeps
/// the data (nothing half-dropped), and lets the namespace go instead of wedging it.
#[tokio::test]
async fn a_namespace_deleted_with_the_secrets_its_cleanup_needs_goes_and_the_data_is_kept() {
    let Scene { admin, namespace, .. } = &scene("nsgone", quick()).await;
    let work = tempfile::tempdir().expect("a temporary folder");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    create_catalog_secret(admin, namespace, &format!("sqlite://{}", work.path().join("catalog.db").display())).await;
    let collection = common::unique_collection("nsgone");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), namespace);
    let object = photos_collection("photos", &common::milvus_uri(), &collection, "Delete")
        .with_spec(json!({ "catalog": { "secretRef": { "name": "catalog" } } }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    collection_where(&collections, "photos", "the Milvus collection made", |o| {
        condition(o, "CollectionReady").is_some_and(|c| c.0 == "True")
    })
    .await;

    secrets.delete("catalog", &DeleteParams::default()).await.expect("delete the catalog Secret");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    namespaces.delete(namespace, &DeleteParams::default()).await.expect("delete the namespace");
    gone(&namespaces, namespace, "the namespace gone", Duration::from_secs(120), String::new).await;
    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    assert!(milvus.has_collection(&collection).await.expect("ask Milvus"), "the data was dropped half-way");
    milvus.drop_collection(&collection).await.expect("drop the kept collection");
}

/// Milvus collections are one per object and recorded as its. The pair of objects whose default
/// names used to collide (`<namespace>_<name>`: `n`/`x-b` and `n-x`/`b`) get a collection each;
/// the one made by an earlier version keeps its collection (its status records the old name)
/// and claims it; an object whose spec names that collection is refused with no pod made, and
/// its deletion with `Delete` drops nothing.
#[tokio::test]
async fn milvus_collections_are_one_per_object_and_never_written_pruned_or_dropped_by_another() {
    let mut scene = scene_before_the_controller("owners").await;
    let (admin, namespace) = (scene.admin.clone(), scene.namespace.clone());
    let second = format!("{namespace}-x");
    create_namespace(&admin, &second).await;
    let here: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let there: Api<ImageCollection> = Api::namespaced(admin.clone(), &second);
    let milvus_uri = common::milvus_uri();
    let milvus = MilvusStore::connect(&milvus_uri, None).await.expect("connect to Milvus");

    // The earlier version's object, its collection (no owner recorded) holding one image.
    let old_name = format!("{namespace}_x_b").replace('-', "_");
    milvus.ensure_collection(&old_name, 1280, &IndexSpec::default(), None).await.expect("the old collection");
    let vector: Vec<f32> = (0..1280).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    let kept = VectorRow { id: 1, vector, uri: "/photos/kept.jpg".into(), content_hash: "0".repeat(64) };
    milvus.upsert(&old_name, &[kept]).await.expect("a row in the old collection");
    let spec = json!({ "milvus": { "uri": milvus_uri } });
    here.create(&PostParams::default(), &ImageCollection::test("x-b").with_spec(spec.clone()))
        .await
        .expect("create the earlier object");
    let earlier = json!({ "status": { "collectionName": old_name } });
    here.patch_status("x-b", &PatchParams::default(), &Patch::Merge(&earlier)).await.expect("its status");
    scene.start_controller(quick()).await;

    there.create(&PostParams::default(), &ImageCollection::test("b").with_spec(spec.clone())).await.expect("create b");
    let ready = |o: &Value| condition(o, "CollectionReady").is_some_and(|c| c.0 == "True");
    let earlier = collection_where(&here, "x-b", "the earlier object ready", ready).await;
    let new = collection_where(&there, "b", "the new object ready", ready).await;
    assert_eq!(earlier["status"]["collectionName"], old_name.as_str(), "the earlier object keeps its collection");
    let new_name = format!("imgsearch_{}_{second}_b", second.len()).replace('-', "_");
    assert_eq!(new["status"]["collectionName"], new_name.as_str());
    assert_eq!(milvus.count(&old_name).await.expect("count"), 1, "the earlier object's image is still there");
    let claimed = milvus.owner(&old_name).await.expect("read the owner");
    assert_eq!(claimed, Some(format!("{namespace}/x-b")), "claimed by the object that uses it");
    assert_eq!(milvus.owner(&new_name).await.expect("read the owner"), Some(format!("{second}/b")));

    // A spec naming the earlier object's collection.
    let thief = ImageCollection::test("thief")
        .with_spec(json!({ "milvus": { "uri": milvus_uri }, "collectionName": old_name, "deletionPolicy": "Delete" }));
    there.create(&PostParams::default(), &thief).await.expect("create the thief");
    let refused = collection_where(&there, "thief", "the thief refused", |o| {
        condition(o, "CollectionReady") == Some(("False".into(), "CollectionTaken".into()))
    })
    .await;
    let message = condition_message(&refused, "CollectionReady");
    assert!(message.contains(&format!("belongs to ImageCollection {namespace}/x-b")), "{message}");
    assert_eq!(condition(&refused, "Stalled").map(|c| c.1).as_deref(), Some("CollectionTaken"));
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &second);
    assert!(deployments.get_opt("thief-search").await.expect("ask").is_none(), "a search Deployment was made");
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &second);
    let made = jobs.list(&ListParams::default().labels("imgsearch.io/collection=thief")).await.expect("list Jobs");
    let names: Vec<_> = made.items.iter().map(|j| j.metadata.name.clone()).collect();
    assert!(names.is_empty(), "an ingest Job was made: {names:?}");

    delete_and_wait(&there, "thief").await;
    let kept = event(&admin, &second, "CollectionKept", "thief").await;
    let note = kept.note.unwrap_or_default();
    assert!(note.contains(&format!("belongs to ImageCollection {namespace}/x-b")), "{note}");
    assert_eq!(milvus.count(&old_name).await.expect("count"), 1, "the thief's deletion dropped the collection");

    delete_and_wait(&there, "b").await;
    delete_and_wait(&here, "x-b").await;
    milvus.drop_collection(&old_name).await.expect("drop the old collection");
    milvus.drop_collection(&new_name).await.expect("drop the new collection");
}

/// The Secret named `catalog` that an ImageCollection's `spec.catalog.secretRef` points at,
/// holding the catalog's URL.
async fn create_catalog_secret(admin: &kube::Client, namespace: &str, url: &str) {
    let secret: Secret =
        serde_json::from_value(json!({ "metadata": { "name": "catalog" }, "stringData": { "DATABASE_URL": url } }))
            .expect("a Secret");
    Api::<Secret>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the catalog Secret");
}
