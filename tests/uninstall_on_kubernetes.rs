//! Uninstalling the operator on the real control plane (tests/control_plane), in a plane of its
//! own: deleting the CRD takes the operator away from every other test of a binary.
//!
//! The controller runs in this test process under its ServiceAccount's token, as in
//! tests/controller_on_kubernetes.rs; the manifests are applied and deleted with kubectl, as a
//! user does.

mod common;
mod control_plane;

use std::time::Duration;

use control_plane::operator::{
    OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, apply_manifests, create_namespace, eventually, gone, install_operator,
    test_namespace,
};
use control_plane::{ControlPlane, control_plane};
use imgsearch::controller::children::ChildConfig;
use imgsearch::controller::reconcile::{Context, FINALIZER, Recheck, run};
use imgsearch::crd::ImageCollection;
use imgsearch::shutdown::Shutdown;
use imgsearch::store::MilvusStore;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde_json::json;

const CRD: &str = "imagecollections.imgsearch.io";
const PATIENCE: Duration = Duration::from_secs(60);

/// The controller, running until aborted (as its Deployment runs until `kubectl delete -k`).
async fn start_controller(plane: &ControlPlane) -> tokio::task::JoinHandle<()> {
    let (_, operator) = plane.service_account_client(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).await;
    let recheck = Recheck { not_ready: Duration::from_secs(1), ..Recheck::default() };
    tokio::spawn(run(Context::with_recheck(operator, ChildConfig::test(), recheck), Shutdown::never()))
}

/// A collection with `deletionPolicy: Delete` over its own Milvus collection, once the
/// controller has made that collection.
async fn collection_made(collections: &Api<ImageCollection>, name: &str, milvus_collection: &str) {
    let object = ImageCollection::test(name).with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": milvus_collection,
        "deletionPolicy": "Delete"
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    eventually(&format!("{name}'s Milvus collection made"), PATIENCE, || async {
        let object = collections.get(name).await.map_err(|e| e.to_string())?;
        let conditions = object.status.map(|s| s.conditions).unwrap_or_default();
        let ready = conditions.iter().any(|c| c.type_ == "CollectionReady" && c.status == "True");
        if ready { Ok(()) } else { Err(format!("{conditions:?}")) }
    })
    .await;
}

/// `kubectl delete -k manifests/`, not waiting: what it leaves is what the test looks at.
fn delete_manifests(plane: &ControlPlane) {
    let (ok, out, err) = plane.run_kubectl(&["delete", "-k", "manifests/", "--wait=false"], None);
    assert!(ok, "kubectl delete -k manifests/ failed:\n{err}\n{out}");
}

/// The README's uninstall order, then the one it warns against.
///
/// Collections first, while the controller runs: each cleanup drops its data, and
/// `kubectl delete -k manifests/` then removes everything, the CRD and the operator's namespace
/// included. The CRD first (the controller going with its namespace): the API server deletes
/// the collections, but no controller is left to run their cleanup, so each waits on its
/// finalizer and the CRD stays `Terminating`; removing the finalizer by hand, as the README
/// says, lets both go, and the data is kept.
// kubectl runs as a blocking child process: the controller needs a thread of its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstalling_collections_first_leaves_nothing_and_the_crd_first_waits_on_their_finalizers() {
    imgsearch::telemetry::init();
    let plane = control_plane();
    install_operator(plane);
    let admin = plane.admin_client().await;
    let namespace = test_namespace("uninstall");
    create_namespace(&admin, &namespace).await;
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    let milvus = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");

    // The README's order.
    let controller = start_controller(plane).await;
    let dropped = common::unique_collection("uninstall_dropped");
    collection_made(&collections, "dropped", &dropped).await;
    let (ok, out, err) =
        plane.run_kubectl(&["delete", "imagecollections", "--all", "--all-namespaces", "--timeout=60s"], None);
    assert!(ok, "deleting every collection did not finish:\n{err}\n{out}");
    assert!(!milvus.has_collection(&dropped).await.expect("ask Milvus"), "the cleanup did not drop the data");
    controller.abort();
    delete_manifests(plane);
    gone(&crds, CRD, "the CRD gone", PATIENCE, String::new).await;
    let operator_gone = Duration::from_secs(120);
    gone(&namespaces, OPERATOR_NAMESPACE, "the operator's namespace gone", operator_gone, String::new).await;

    // The CRD first.
    apply_manifests(plane);
    let controller = start_controller(plane).await;
    let kept = common::unique_collection("uninstall_kept");
    collection_made(&collections, "kept", &kept).await;
    controller.abort();
    delete_manifests(plane);
    let object = eventually("the collection deleted by the API server, held by its finalizer", PATIENCE, || async {
        let object = collections.get("kept").await.map_err(|e| e.to_string())?;
        if object.metadata.deletion_timestamp.is_some() { Ok(object) } else { Err("no deletionTimestamp".into()) }
    })
    .await;
    assert_eq!(object.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
    let terminating = eventually("the CRD Terminating on the collection", PATIENCE, || async {
        let crd = crds.get(CRD).await.map_err(|e| e.to_string())?;
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        let waiting = conditions.into_iter().find(|c| c.type_ == "Terminating" && c.status == "True");
        waiting.ok_or_else(|| "no Terminating condition".to_string())
    })
    .await;
    assert_eq!(terminating.reason.as_deref(), Some("InstanceDeletionInProgress"), "{terminating:?}");
    // Still there a while later: nothing but a person lets it go.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(crds.get_opt(CRD).await.expect("ask for the CRD").is_some(), "the CRD went without the finalizer removed");

    let (ok, out, err) = plane.run_kubectl(
        &["patch", "imgc", "kept", "-n", &namespace, "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#],
        None,
    );
    assert!(ok, "the README's finalizer patch failed:\n{err}\n{out}");
    gone(&crds, CRD, "the CRD gone once the finalizer is removed", PATIENCE, String::new).await;
    assert!(milvus.has_collection(&kept).await.expect("ask Milvus"), "the data of a collection let go was dropped");
    milvus.drop_collection(&kept).await.expect("drop the kept collection");
}
