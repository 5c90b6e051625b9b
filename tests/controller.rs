//! The real controller (kube-runtime) against the fake API server and the test run's real Milvus
//! Lite. No pods run here: where it matters, the test plays the kubelet by writing Job and
//! Deployment status (tests/operator_e2e.rs runs them for real).

mod common;
mod k8s;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::eventually;
use common::outage::Outage;
use imgsearch::controller::children::ChildConfig;
use imgsearch::controller::leader::LeaseSettings;
use imgsearch::controller::reconcile::{Context, FINALIZER, Recheck, run};
use imgsearch::crd::{ImageCollection, ImageCollectionSpec};
use imgsearch::shutdown::Shutdown;
use imgsearch::store::{IndexSpec, MilvusStore, VectorRow};
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

/// Calls the fake API server received that write the status of ImageCollections.
fn status_writes(server: &FakeApiServer) -> usize {
    server
        .calls()
        .iter()
        .filter(|c| c.resource == "imagecollections" && c.subresource.as_deref() == Some("status"))
        .count()
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
    assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["args"], json!(["ingest", "/images/catalogue"]));
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
    api.patch("products", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "ingest": { "batchSize": 16 } } })))
        .await
        .unwrap();
    eventually("the generation-2 Job", || server.object("batch/v1/jobs", "shop", "products-ingest-g2")).await;

    // Delete with deletionPolicy Delete: the Milvus collection goes, then the object.
    delete_and_wait(&api, &server, "products").await;
    assert!(!milvus.has_collection(&collection).await.unwrap(), "the Milvus collection was dropped");
    controller.abort();
}

#[tokio::test]
async fn status_writes_during_an_ingest_do_not_wake_the_controller_again() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    // The count is read every 4 s while ingesting: at most 3 timer reconciles in the 8 s below.
    let children = ChildConfig::test();
    let recheck = Recheck {
        ready: Duration::from_secs(4),
        ingesting: Duration::from_secs(4),
        not_ready: Duration::from_secs(4),
        ..Recheck::default()
    };
    let controller = tokio::spawn(run(Context::with_recheck(client.clone(), children, recheck), Shutdown::never()));
    let collection = common::unique_collection("storm");
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    let object = photos_collection("storm", common::milvus_uri(), &collection, "Delete");
    api.create(&PostParams::default(), &object).await.unwrap();
    eventually("the ingest Job to be reported running", || {
        let object = server.object(COLLECTIONS, "shop", "storm")?;
        (condition(&object, "Ingested")?.1 == "JobRunning").then_some(())
    })
    .await;

    // Play the ingest Job: vectors arrive a few at a time, back to back, for 8 s, as a running
    // ingest writes them. Before the fix each status write carrying a new count came back as a
    // watch event and started the next reconcile at once, which found a new count again, for
    // the whole ingest (measured here: 21 status writes and 126 API calls in these 8 s; with
    // the fix 2 and 12).
    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.unwrap();
    let calls_before = server.calls().len();
    let writes_before = status_writes(&server);
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
        milvus.upsert(&collection, &rows).await.unwrap();
        written += 4;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let writes = status_writes(&server) - writes_before;
    let calls = server.calls().len() - calls_before;
    assert!(writes <= 4, "{writes} status writes during an 8 s ingest: the controller's own writes woke it");
    assert!(calls <= 40, "{calls} API calls during an 8 s ingest: a reconcile storm");

    // The count is still read, on the timer.
    eventually("status.images.indexed to count every vector written", || {
        let object = server.object(COLLECTIONS, "shop", "storm")?;
        (object["status"]["images"]["indexed"] == written).then_some(())
    })
    .await;
    delete_and_wait(&api, &server, "storm").await;
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

#[tokio::test]
async fn milvus_going_away_is_reported_and_recovered_from_without_a_restart() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let controller = start_controller(&client);
    let milvus = Outage::forward_to(common::milvus_uri().trim_start_matches("http://").to_string()).await;
    let collection = common::unique_collection("outage");
    let api: Api<ImageCollection> = Api::namespaced(client, "shop");
    let object = photos_collection("flaky", milvus.uri(), &collection, "Delete");
    api.create(&PostParams::default(), &object).await.unwrap();
    let collection_ready = |wanted: &'static str| {
        let server = server.clone();
        move || {
            let object = server.object(COLLECTIONS, "shop", "flaky")?;
            let found = condition(&object, "CollectionReady")?;
            (found.0 == wanted).then_some((found.1, object))
        }
    };
    eventually("the collection to be ready", collection_ready("True")).await;

    milvus.cut();
    let (reason, object) = eventually("the outage to show in status", collection_ready("False")).await;
    assert_eq!(reason, "MilvusUnavailable");
    assert_eq!(condition(&object, "Stalled").map(|c| c.0), Some("True".into()));
    assert_eq!(object["status"]["phase"], "Failed");
    let message = object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "CollectionReady"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(message.contains(&milvus.address.to_string()), "the message names the address: {message}");

    milvus.restore();
    let (reason, _) = eventually("recovery once Milvus is back", collection_ready("True")).await;
    assert_eq!(reason, "CollectionLoaded");

    delete_and_wait(&api, &server, "flaky").await;
    controller.abort();
}

#[tokio::test]
async fn a_spec_that_would_replace_an_existing_collection_is_refused_with_a_condition_and_an_event_not_a_hot_loop() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    // Someone's existing collection of 8-d vectors: the 1280-d model cannot use it.
    let collection = common::unique_collection("taken");
    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.unwrap();
    milvus.ensure_collection(&collection, 8, &IndexSpec::default()).await.unwrap();
    let controller = start_controller(&client);
    let api: Api<ImageCollection> = Api::namespaced(client, "shop");
    let object = photos_collection("clash", common::milvus_uri(), &collection, "Retain");
    api.create(&PostParams::default(), &object).await.unwrap();

    let refused = eventually("the refusal in status", || {
        let object = server.object(COLLECTIONS, "shop", "clash")?;
        (condition(&object, "CollectionReady")?.1 == "CollectionMismatch").then_some(object)
    })
    .await;
    assert_eq!(condition(&refused, "Stalled").map(|c| c.0), Some("True".into()));
    let message = refused["status"]["conditions"].to_string();
    assert!(message.contains("1280") && message.contains('8'), "the message gives both dimensions: {message}");
    let warning = eventually("a Warning Event", || {
        server
            .objects("events.k8s.io/v1/events")
            .into_iter()
            .find(|e| e["reason"] == "CollectionMismatch" && e["type"] == "Warning")
    })
    .await;
    assert_eq!(warning["regarding"]["name"], "clash");

    // Its own status writes must not wake it again, and it must not stall either: the retry
    // timer brings at least one more pass (API calls), yet the object's version stays put and
    // the calls stay few. (A quiet period alone would also pass if the controller had stopped.)
    let version = refused["metadata"]["resourceVersion"].clone();
    let (calls_before, writes_before, started) = (server.calls().len(), status_writes(&server), Instant::now());
    eventually("another pass of the controller (it stalled)", || (server.calls().len() > calls_before).then_some(()))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await; // that pass finishes
    let (calls, seconds) = (server.calls().len() - calls_before, started.elapsed().as_secs_f64());
    assert!((calls as f64) <= 30.0 * seconds, "{calls} API calls in {seconds:.1} s: a hot loop");
    let writes = status_writes(&server) - writes_before;
    assert!(writes <= 2, "{writes} status writes in {seconds:.1} s: a hot loop");
    let after = server.object(COLLECTIONS, "shop", "clash").unwrap();
    assert_eq!(after["metadata"]["resourceVersion"], version, "an unchanged status is not rewritten");

    assert!(milvus.has_collection(&collection).await.unwrap(), "the existing collection was left alone");
    assert_eq!(milvus.count(&collection).await.unwrap(), 0);
    controller.abort();
    milvus.drop_collection(&collection).await.unwrap();
}

#[tokio::test]
async fn deleting_with_retain_keeps_the_milvus_collection_and_the_catalog_rows() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let controller = start_controller(&client);
    let collection = common::unique_collection("retain");
    // A catalog with rows of this collection, through the Secret the controller would read to
    // delete them under `Delete`.
    let work = tempfile::tempdir().unwrap();
    let catalog_url = format!("sqlite://{}", work.path().join("catalog.db").display());
    let catalog = imgsearch::catalog::Catalog::open(&catalog_url).await.unwrap();
    let rows: Vec<imgsearch::catalog::NewImage> = (0..3)
        .map(|i| imgsearch::catalog::NewImage {
            uri: format!("/photos/{i}.jpg"),
            content_hash: format!("{i:064x}"),
            size_bytes: 10,
            width: 4,
            height: 3,
        })
        .collect();
    let ids = catalog.reserve(&collection, &rows).await.unwrap();
    catalog.mark_indexed(&ids).await.unwrap();
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": { "name": "catalog" },
        "stringData": { "DATABASE_URL": catalog_url }
    }))
    .unwrap();
    Api::namespaced(client.clone(), "shop").create(&PostParams::default(), &secret).await.unwrap();
    let api: Api<ImageCollection> = Api::namespaced(client, "shop");
    let mut object = photos_collection("kept", common::milvus_uri(), &collection, "Retain");
    object.spec.catalog = Some(serde_json::from_value(json!({ "secretRef": { "name": "catalog" } })).unwrap());
    api.create(&PostParams::default(), &object).await.unwrap();
    eventually("the collection to be ready", || {
        let object = server.object(COLLECTIONS, "shop", "kept")?;
        (condition(&object, "CollectionReady")?.0 == "True").then_some(())
    })
    .await;
    delete_and_wait(&api, &server, "kept").await;
    assert!(server.object("apps/v1/deployments", "shop", "kept-search").is_none(), "children go with it");

    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.unwrap();
    assert!(milvus.has_collection(&collection).await.unwrap(), "Retain keeps the collection");
    let indexed = catalog.count(&collection, imgsearch::catalog::ImageStatus::Indexed).await.unwrap();
    assert_eq!(indexed, 3, "Retain keeps the catalog rows");
    controller.abort();
    milvus.drop_collection(&collection).await.unwrap();
}

#[tokio::test]
async fn a_blocked_deletion_keeps_the_object_and_says_why_until_milvus_answers() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let controller = start_controller(&client);
    let milvus = Outage::forward_to(common::milvus_uri().trim_start_matches("http://").to_string()).await;
    let collection = common::unique_collection("blocked");
    let api: Api<ImageCollection> = Api::namespaced(client, "shop");
    let object = photos_collection("doomed", milvus.uri(), &collection, "Delete");
    api.create(&PostParams::default(), &object).await.unwrap();
    eventually("the collection to be ready", || {
        let object = server.object(COLLECTIONS, "shop", "doomed")?;
        (condition(&object, "CollectionReady")?.0 == "True").then_some(())
    })
    .await;

    milvus.cut();
    api.delete("doomed", &DeleteParams::default()).await.unwrap();
    let blocked = eventually("a CleanupBlocked status", || {
        let object = server.object(COLLECTIONS, "shop", "doomed")?;
        (condition(&object, "Ready")?.1 == "CleanupBlocked").then_some(object)
    })
    .await;
    assert_eq!(blocked["status"]["phase"], "Deleting");
    assert_eq!(blocked["metadata"]["finalizers"], json!([FINALIZER]), "the finalizer holds the object");
    assert!(
        server.objects("events.k8s.io/v1/events").iter().any(|e| e["reason"] == "CleanupBlocked"),
        "a Warning Event says why"
    );

    milvus.restore();
    eventually("the object to be gone", || server.object(COLLECTIONS, "shop", "doomed").is_none().then_some(())).await;
    let direct = MilvusStore::connect(&common::milvus_uri(), None).await.unwrap();
    assert!(!direct.has_collection(&collection).await.unwrap(), "the collection was dropped once reachable");
    controller.abort();
}

#[tokio::test]
async fn a_restarted_controller_adopts_the_running_ingest_job_instead_of_starting_another() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let first = start_controller(&client);
    let collection = common::unique_collection("restart");
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    let object = photos_collection("steady", common::milvus_uri(), &collection, "Delete");
    api.create(&PostParams::default(), &object).await.unwrap();
    let job = eventually("the ingest Job", || server.object("batch/v1/jobs", "shop", "steady-ingest-g1")).await;
    first.abort();
    let _ = first.await;

    // A new controller process (a new context, nothing cached) over the same cluster state.
    let context = test_context(&client);
    let second = tokio::spawn(run(context.clone(), Shutdown::never()));
    eventually("the new controller to reconcile twice", || {
        let text = context.metrics.encode().ok()?;
        let successes = text
            .lines()
            .find(|l| l.starts_with(r#"imgsearch_controller_reconciles_total{outcome="success"}"#))?
            .rsplit(' ')
            .next()?
            .parse::<u64>()
            .ok()?;
        (successes >= 2).then_some(())
    })
    .await;
    let jobs = server.objects("batch/v1/jobs");
    assert_eq!(jobs.len(), 1, "one ingest Job, not a second one: {jobs:?}");
    assert_eq!(jobs[0]["metadata"]["uid"], job["metadata"]["uid"], "the very same Job");
    assert_eq!(status_of(&server, "steady")["lastIngest"]["job"], "steady-ingest-g1", "status reports the adopted Job");
    delete_and_wait(&api, &server, "steady").await;
    second.abort();
}

fn status_of(server: &FakeApiServer, name: &str) -> Value {
    server.object(COLLECTIONS, "shop", name).map(|o| o["status"].clone()).unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_schedule_becomes_a_rescan_cronjob_that_goes_when_the_schedule_does() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let controller = start_controller(&client);
    let collection = common::unique_collection("cron");
    let api: Api<ImageCollection> = Api::namespaced(client, "shop");
    let object = ImageCollection::new(
        "nightly",
        spec(json!({
            "milvus": { "uri": common::milvus_uri() },
            "collectionName": collection,
            "source": { "pvc": { "claimName": "photos" } },
            "ingest": { "schedule": "30 2 * * *" },
            "deletionPolicy": "Delete"
        })),
    );
    api.create(&PostParams::default(), &object).await.unwrap();
    let cronjob = eventually("the CronJob", || server.object("batch/v1/cronjobs", "shop", "nightly-rescan")).await;
    assert_eq!(cronjob["spec"]["schedule"], "30 2 * * *");
    assert_eq!(cronjob["spec"]["concurrencyPolicy"], "Forbid");
    assert_eq!(cronjob["metadata"]["ownerReferences"][0]["name"], "nightly");

    // A rescan Job the CronJob started later is what status reports as the last ingest.
    eventually("the generation Job", || server.object("batch/v1/jobs", "shop", "nightly-ingest-g1")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creation timestamps have 1 s resolution
    let mut rescan = cronjob["spec"]["jobTemplate"].clone();
    rescan["apiVersion"] = json!("batch/v1");
    rescan["kind"] = json!("Job");
    rescan["metadata"]["name"] = json!("nightly-rescan-29000000");
    rescan["metadata"]["namespace"] = json!("shop");
    Api::<k8s_openapi::api::batch::v1::Job>::namespaced(FakeApiServer::client(address), "shop")
        .create(&PostParams::default(), &serde_json::from_value(rescan).unwrap())
        .await
        .unwrap();
    // Jobs the CronJob owns do not wake the controller; its timer does.
    eventually("the rescan in status", || {
        (status_of(&server, "nightly")["lastIngest"]["job"] == "nightly-rescan-29000000").then_some(())
    })
    .await;

    api.patch("nightly", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "ingest": { "schedule": null } } })))
        .await
        .unwrap();
    eventually("the CronJob to be deleted", || {
        server.object("batch/v1/cronjobs", "shop", "nightly-rescan").is_none().then_some(())
    })
    .await;
    delete_and_wait(&api, &server, "nightly").await;
    controller.abort();
}

// Two worker threads: on one, a long reconcile pass of the leader (Milvus calls, status
// writes) could hold off its own lease renewal on a loaded machine and hand the lease over
// mid-test. The lease is client-go's 15 s / 10 s / 2 s, three times faster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_elected_replica_reconciles_and_a_standby_takes_over_when_it_dies() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let lease = |identity: &str| LeaseSettings {
        lease_duration: Duration::from_secs(5),
        renew_deadline: Duration::from_millis(3300),
        retry_every: Duration::from_millis(600),
        ..LeaseSettings::new("imgsearch-system", "imgsearch-controller", identity)
    };
    let holder = |server: &FakeApiServer| {
        server
            .object("coordination.k8s.io/v1/leases", "imgsearch-system", "imgsearch-controller")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    let (first, second) = (test_context(&client), test_context(&client));
    let first_task =
        tokio::spawn(imgsearch::controller::run(first.clone(), Some(lease("replica-a")), Shutdown::never()));
    eventually("replica-a to lead", || (holder(&server)? == "replica-a").then_some(())).await;
    let second_task =
        tokio::spawn(imgsearch::controller::run(second.clone(), Some(lease("replica-b")), Shutdown::never()));

    let collection = common::unique_collection("leader");
    let api: Api<ImageCollection> = Api::namespaced(client, "shop");
    let object = photos_collection("elected", common::milvus_uri(), &collection, "Delete");
    api.create(&PostParams::default(), &object).await.unwrap();
    eventually("a status from the leader", || status_of(&server, "elected")["phase"].as_str().map(|_| ())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second_metrics = second.metrics.encode().unwrap();
    assert!(second_metrics.contains("imgsearch_controller_leader 0"), "{second_metrics}");
    assert!(!second_metrics.contains("reconciles_total{"), "the standby reconciled: {second_metrics}");
    assert!(first.metrics.encode().unwrap().contains("imgsearch_controller_leader 1"));

    // The leader dies without releasing its lease: the standby waits out the lease, then leads.
    first_task.abort();
    eventually("replica-b to take over", || (holder(&server)? == "replica-b").then_some(())).await;
    api.patch("elected", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "ingest": { "batchSize": 4 } } })))
        .await
        .unwrap();
    eventually("the new leader to reconcile generation 2", || {
        server.object("batch/v1/jobs", "shop", "elected-ingest-g2").map(|_| ())
    })
    .await;
    let lease_object =
        server.object("coordination.k8s.io/v1/leases", "imgsearch-system", "imgsearch-controller").unwrap();
    assert_eq!(lease_object["spec"]["leaseTransitions"], 1);

    delete_and_wait(&api, &server, "elected").await;
    second_task.abort();
}

// Two worker threads, for the same reason as above: the timings under test are the lease's,
// not the scheduler's.
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
    let (first, second) = (test_context(&client), test_context(&client));
    let first_task =
        tokio::spawn(imgsearch::controller::run(first.clone(), Some(lease("replica-a")), Shutdown::never()));
    eventually("replica-a to lead", || (first.metrics.leader.get() == 1).then_some(())).await;
    let second_task =
        tokio::spawn(imgsearch::controller::run(second.clone(), Some(lease("replica-b")), Shutdown::never()));
    tokio::time::sleep(Duration::from_millis(500)).await; // the standby has seen the lease

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

    // A child the API server itself refuses: its 422 message reaches status.
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
    assert!(server.objects("events.k8s.io/v1/events").iter().any(|e| e["reason"] == "StaleJobDeleted"));
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

#[tokio::test]
async fn a_milvus_secret_is_sent_only_to_the_address_the_secret_names() {
    imgsearch::telemetry::init();
    // A server of someone allowed to create ImageCollections but not to read Secrets: it counts
    // the connections it gets.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_uri = format!("http://{}", trap.local_addr().unwrap());
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    let _trap_task = tokio::spawn(async move {
        while let Ok((stream, _)) = trap.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let controller = start_controller(&client);
    // The Secret's owner says where its token may go: the real Milvus.
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": { "name": "milvus-token", "annotations": { "imgsearch.io/milvus-uri": common::milvus_uri() } },
        "stringData": { "token": "root:Milvus" }
    }))
    .unwrap();
    Api::namespaced(client.clone(), "shop").create(&PostParams::default(), &secret).await.unwrap();
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    let collection = |name: &str, uri: &str, policy: &str| {
        ImageCollection::new(
            name,
            spec(json!({
                "milvus": { "uri": uri, "secretRef": { "name": "milvus-token" } },
                "collectionName": common::unique_collection(name),
                "source": { "pvc": { "claimName": "photos" } },
                "deletionPolicy": policy
            })),
        )
    };
    api.create(&PostParams::default(), &collection("exfil", &trap_uri, "Retain")).await.unwrap();

    let refused = eventually("the Secret refused for the other address", || {
        let object = server.object(COLLECTIONS, "shop", "exfil")?;
        (condition(&object, "CollectionReady")?.1 == "SecretNotBound").then_some(object)
    })
    .await;
    let message = refused["status"]["conditions"].to_string();
    assert!(message.contains("imgsearch.io/milvus-uri") && message.contains(&trap_uri), "says what to do: {message}");
    assert_eq!(condition(&refused, "Stalled").map(|c| c.0), Some("True".into()));
    // Neither the controller nor a pod it made could carry the token there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the controller connected to the named address"
    );
    for (key, name) in [("apps/v1/deployments", "exfil-search"), ("batch/v1/jobs", "exfil-ingest-g1")] {
        assert!(server.object(key, "shop", name).is_none(), "{name} was made: its pods would get the token");
    }

    // The address the Secret names works as before.
    api.create(&PostParams::default(), &collection("bound", &common::milvus_uri(), "Delete")).await.unwrap();
    eventually("the collection with its own Milvus ready", || {
        let object = server.object(COLLECTIONS, "shop", "bound")?;
        (condition(&object, "CollectionReady")? == ("True".into(), "CollectionLoaded".into())).then_some(())
    })
    .await;
    let deployment = server.object("apps/v1/deployments", "shop", "bound-search").expect("the search Deployment");
    assert!(deployment.to_string().contains("milvus-token"), "its pods read the token through secretKeyRef");
    delete_and_wait(&api, &server, "bound").await;
    delete_and_wait(&api, &server, "exfil").await;
    controller.abort();
}

#[tokio::test]
async fn a_missing_or_keyless_milvus_secret_is_secret_invalid_and_fixing_it_recovers() {
    imgsearch::telemetry::init();
    let (server, address, _task) = FakeApiServer::start().await;
    let client = FakeApiServer::client(address);
    let controller = start_controller(&client);
    let collection = common::unique_collection("secret");
    let api: Api<ImageCollection> = Api::namespaced(client.clone(), "shop");
    let object = ImageCollection::new(
        "credentials",
        spec(json!({
            "milvus": { "uri": common::milvus_uri(), "secretRef": { "name": "milvus-login" } },
            "collectionName": collection,
            "source": { "pvc": { "claimName": "photos" } },
            "deletionPolicy": "Delete"
        })),
    );
    api.create(&PostParams::default(), &object).await.unwrap();
    let message_when = |what: &'static str, wanted: &'static str| {
        let server = server.clone();
        async move {
            eventually(what, || {
                let object = server.object(COLLECTIONS, "shop", "credentials")?;
                let ready =
                    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "CollectionReady")?;
                (ready["reason"] == "SecretInvalid" && ready["message"].as_str()?.contains(wanted))
                    .then(|| ready["message"].as_str().unwrap_or_default().to_string())
            })
            .await
        }
    };
    let missing = message_when("SecretInvalid for a missing Secret", "not found").await;
    assert!(missing.contains("milvus-login") && missing.contains("spec.milvus.secretRef"), "{missing}");

    // The Secret appears, bound to this address, but without credentials in it.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client, "shop");
    let keyless: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": { "name": "milvus-login", "annotations": { "imgsearch.io/milvus-uri": common::milvus_uri() } },
        "stringData": { "user": "root" }
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &keyless).await.unwrap();
    let keyless = message_when("SecretInvalid for a Secret without credentials", "needs a `token` key").await;
    assert!(keyless.contains("username") && keyless.contains("password"), "{keyless}");
    let warned = server.objects("events.k8s.io/v1/events").into_iter().any(|e| e["reason"] == "SecretInvalid");
    assert!(warned, "a SecretInvalid Warning Event");

    // Fixed: username and password, and the collection comes up.
    let fixed = json!({ "stringData": { "username": "root", "password": "Milvus" } });
    secrets.patch("milvus-login", &PatchParams::default(), &Patch::Merge(&fixed)).await.unwrap();
    eventually("CollectionReady once the Secret holds credentials", || {
        let object = server.object(COLLECTIONS, "shop", "credentials")?;
        (condition(&object, "CollectionReady")?.0 == "True").then_some(())
    })
    .await;
    delete_and_wait(&api, &server, "credentials").await;
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
