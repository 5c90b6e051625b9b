//! The operator on a real Kubernetes control plane: kube-apiserver, kube-controller-manager and
//! etcd v1.37.2 built from their Go modules (tests/control_plane), with RBAC enforced.
//!
//! What runs here is Kubernetes' own: the CRD's structural schema, defaults and CEL rules in
//! the apiextensions server, admission (PodSecurity, ServiceAccount, …), server-side apply, and
//! the Job, Deployment/ReplicaSet, garbage-collector and namespace controllers. The operator is
//! the real `imgsearch controller` binary with a token that the TokenRequest API issued for its
//! ServiceAccount, so every call it makes passes the real authorizer against the roles in
//! manifests/ or fails.
//!
//! Pods run on a test node (tests/control_plane/node.rs) only in the tests that start one for
//! their namespace: it binds and runs them as local processes of the real binary and reports
//! their status as a kubelet does. Elsewhere the pods the Job and ReplicaSet controllers create
//! stay Pending, as on a cluster without a node for them.
//!
//! The tests share one control plane and run one at a time: each starts a controller, and a
//! controller reconciles collections in every namespace.

mod common;
mod control_plane;

use std::path::{Path, PathBuf};
use std::time::Duration;

use control_plane::operator::{
    OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, condition, create_namespace, delete_and_wait, eventually, install_operator,
    node_with_photos, read, root, start_controller, start_controller_with, status_where, stop, test_namespace,
};
use control_plane::{ControlPlane, control_plane};
use futures::StreamExt;
use imgsearch::catalog::ImageStatus;
use imgsearch::crd::ImageCollection;
use imgsearch::store::MilvusStore;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};

/// One test at a time: see the module's comment.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What most scenarios start from: their turn, the control plane with the operator installed,
/// an admin client, the operator's kubeconfig (a token for its ServiceAccount) and a namespace
/// of their own named after `purpose`.
struct Scene {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    plane: &'static ControlPlane,
    admin: kube::Client,
    kubeconfig: PathBuf,
    namespace: String,
}

async fn scene(purpose: &str) -> Scene {
    let turn = ONE_AT_A_TIME.lock().await;
    let plane = control_plane();
    install_operator(plane);
    let admin = plane.admin_client().await;
    let (kubeconfig, _) = plane.service_account_client(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).await;
    let namespace = test_namespace(purpose);
    create_namespace(&admin, &namespace).await;
    Scene { _turn: turn, plane, admin, kubeconfig, namespace }
}

#[tokio::test]
async fn the_real_api_server_accepts_the_install_and_samples_and_refuses_each_broken_sample_with_its_message() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let plane = control_plane();
    install_operator(plane);
    let admin = plane.admin_client().await;

    // The samples name their namespaces; the real server refuses objects in one that does not exist.
    for namespace in ["shop", "newsroom"] {
        create_namespace(&admin, namespace).await;
    }
    let mut checked = 0;
    for path in common::yaml_files(&root().join("manifests/samples")) {
        // milvus.yaml is milvus-operator's Milvus, whose CRD imgsearch does not install.
        if path.file_name().is_some_and(|name| name == "milvus.yaml") {
            continue;
        }
        let file = path.display().to_string();
        let (ok, out, err) = plane.run_kubectl(&["apply", "--dry-run=server", "-f", &file], None);
        assert!(ok, "the real API server refused {file}:\n{err}");
        assert!(out.contains("(server dry run)"), "{file}: not a server dry run: {out}");
        checked += 1;
    }
    assert!(checked >= 4, "the samples are missing from manifests/samples");

    // Each broken sample is refused, with the real server's message that its second line names
    // (the first names the offline validator's words, checked by tests/manifests.rs).
    let mut wrong = Vec::new();
    let broken = common::yaml_files(&root().join("tests/broken-samples"));
    assert!(broken.len() >= 8, "the broken samples are missing");
    for path in broken {
        let text = read(&path);
        let file = path.display().to_string();
        let (ok, out, err) = plane.run_kubectl(&["apply", "--dry-run=server", "-f", &file], None);
        let expected = text.lines().find_map(|line| line.strip_prefix("# kube-apiserver: ")).map(str::trim);
        match expected {
            _ if ok => wrong.push(format!("{file} was accepted by the real API server: {out}")),
            None => wrong.push(format!("{file}: no `# kube-apiserver: <message>` line; the server said:\n{err}")),
            Some(expected) if !err.contains(expected) => {
                wrong.push(format!("{file}: the real API server's refusal does not say {expected:?}:\n{err}"))
            }
            Some(_) => {}
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}

#[tokio::test]
async fn immutable_fields_are_refused_by_the_real_servers_cel_transition_rules_and_defaults_are_filled_in() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let plane = control_plane();
    install_operator(plane);
    let admin = plane.admin_client().await;
    let namespace = test_namespace("immutable");
    create_namespace(&admin, &namespace).await;
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let collection = ImageCollection::test("catalogue");
    collections.create(&PostParams::default(), &collection).await.expect("create a collection");

    // The defaults the schema gives, filled in by the real server.
    let stored: Value = serde_json::to_value(collections.get("catalogue").await.expect("read back")).expect("json");
    assert_eq!(stored["spec"]["deletionPolicy"], "Retain", "the schema's default: {}", stored["spec"]);

    // The model's rule cannot be reached while the schema's enum holds one model: an unknown
    // model is refused by the enum first, which the real server says in its own words.
    for (change, message) in [
        (json!({ "spec": { "collectionName": "another" } }), imgsearch::crd::rules::COLLECTION_IMMUTABLE),
        (json!({ "spec": { "model": { "name": "resnet50" } } }), "supported values: \"efficientnet-lite0\""),
    ] {
        let refused = collections
            .patch("catalogue", &PatchParams::default(), &Patch::Merge(&change))
            .await
            .expect_err(&format!("the real server accepted the change {change}"));
        let kube::Error::Api(status) = &refused else { panic!("not an API refusal: {refused}") };
        assert_eq!(status.code, 422, "{change}: {status:?}");
        assert!(status.message.contains(message), "{change}: the refusal does not say {message:?}: {}", status.message);
    }
    collections.delete("catalogue", &DeleteParams::default()).await.expect("delete");
}

#[tokio::test]
async fn the_operator_under_its_own_rbac_makes_and_removes_a_collections_children_on_a_real_control_plane() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let plane = control_plane();
    install_operator(plane);
    let admin = plane.admin_client().await;

    // The operator's own Deployment passes the restricted Pod Security Standard that its
    // namespace enforces: the ReplicaSet controller got its pod admitted.
    let operator_pods: Api<Pod> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    eventually(
        "the operator's pod admitted under the restricted Pod Security Standard",
        Duration::from_secs(60),
        || {
            let (operator_pods, replica_sets) = (operator_pods.clone(), replica_sets.clone());
            async move {
                let pods = operator_pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
                if !pods.items.is_empty() {
                    return Ok(());
                }
                let sets = replica_sets.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
                Err(format!(
                    "no pod; ReplicaSet status: {:?}",
                    sets.items.iter().map(|s| &s.status).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await;

    // The controller's identity: a token for its ServiceAccount, and nothing more.
    let (kubeconfig, operator) = plane.service_account_client(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).await;
    let listing = Api::<Secret>::all(operator.clone()).list(&ListParams::default()).await;
    match listing {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("the operator's token may list Secrets, which its role does not grant: {other:?}"),
    }

    let namespace = test_namespace("lifecycle");
    create_namespace(&admin, &namespace).await;
    let name = "catalogue";
    let collection_name = common::unique_collection("real_k8s");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let object = ImageCollection::test(name).with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": collection_name,
        "deletionPolicy": "Delete"
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");

    let log = plane.dir.join(format!("controller-{namespace}.log"));
    let mut controller = start_controller(&kubeconfig, &log, "imgsearch-controller-test");

    // The Milvus collection, the finalizer, an observed generation.
    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(admin.clone(), &namespace, &kube::api::ApiResource::erase::<ImageCollection>(&()));
    let status = eventually("CollectionReady=True and observedGeneration 1", Duration::from_secs(90), || {
        let raw = raw.clone();
        let log = log.clone();
        async move {
            let object =
                serde_json::to_value(raw.get(name).await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            let ready = condition(&object, "CollectionReady").is_some_and(|c| c["status"] == "True");
            if ready && object["status"]["observedGeneration"] == 1 {
                Ok(object)
            } else {
                Err(format!("{}\ncontroller log:\n{}", object["status"], read(&log)))
            }
        }
    })
    .await;
    assert_eq!(
        status["metadata"]["finalizers"],
        json!([imgsearch::controller::reconcile::FINALIZER]),
        "Delete needs the cleanup finalizer: {}",
        status["metadata"]
    );
    let store = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    assert!(
        store.has_collection(&collection_name).await.expect("ask Milvus"),
        "no Milvus collection {collection_name}"
    );

    // The children, each accepted by the real server, and Kubernetes' controllers at work on
    // them: the Job controller made the Indexed Job's pods, the Deployment controller a
    // ReplicaSet and its pods, the Service got an address from the service range.
    let job_name = format!("{name}-ingest-g1");
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    let job = eventually("the ingest Job and its pods from the real Job controller", Duration::from_secs(60), || {
        let (jobs, pods, job_name) = (jobs.clone(), pods.clone(), job_name.clone());
        async move {
            let job = jobs.get(&job_name).await.map_err(|e| e.to_string())?;
            let selector = format!("batch.kubernetes.io/job-name={job_name}");
            let made = pods.list(&ListParams::default().labels(&selector)).await.map_err(|e| e.to_string())?;
            if made.items.is_empty() { Err(format!("no pods yet; Job status {:?}", job.status)) } else { Ok(job) }
        }
    })
    .await;
    let job_spec = job.spec.expect("a Job has a spec");
    assert_eq!(job_spec.completion_mode.as_deref(), Some("Indexed"));
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
    let sets: Api<ReplicaSet> = Api::namespaced(admin.clone(), &namespace);
    let search = format!("{name}-search");
    eventually("the search Deployment rolled out into a ReplicaSet with pods", Duration::from_secs(60), || {
        let (deployments, sets, pods, search) = (deployments.clone(), sets.clone(), pods.clone(), search.clone());
        async move {
            let deployment = deployments.get(&search).await.map_err(|e| e.to_string())?;
            let owned = sets.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            let uid = deployment.metadata.uid.clone().unwrap_or_default();
            let set = owned
                .items
                .iter()
                .find(|s| s.metadata.owner_references.iter().flatten().any(|o| o.uid == uid))
                .ok_or("no ReplicaSet owned by the Deployment")?;
            let hash =
                set.metadata.labels.as_ref().and_then(|l| l.get("pod-template-hash")).cloned().unwrap_or_default();
            let made = pods
                .list(&ListParams::default().labels(&format!("pod-template-hash={hash}")))
                .await
                .map_err(|e| e.to_string())?;
            if made.items.is_empty() { Err(format!("ReplicaSet {:?} has no pods", set.metadata.name)) } else { Ok(()) }
        }
    })
    .await;
    let service = Api::<Service>::namespaced(admin.clone(), &namespace).get(&search).await.expect("the search Service");
    let address = service.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    assert!(address.starts_with("10.0.0."), "the Service has no address from 10.0.0.0/24: {address:?}");

    // The controller's Events, written under its own identity.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), &namespace);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == imgsearch::controller::reasons::COLLECTION_CREATED),
        "no {} Event; Events: {reasons:?}",
        imgsearch::controller::reasons::COLLECTION_CREATED
    );

    // Delete: the controller removes its children and drops the Milvus collection, then lets
    // the object go; the garbage collector removes what the children owned.
    delete_and_wait(&collections, name, &log).await;
    assert!(!store.has_collection(&collection_name).await.expect("ask Milvus"), "Milvus collection kept under Delete");
    eventually("every child and pod gone", Duration::from_secs(60), || {
        let (jobs, deployments, sets, pods) = (jobs.clone(), deployments.clone(), sets.clone(), pods.clone());
        let services: Api<Service> = Api::namespaced(admin.clone(), &namespace);
        async move {
            let left = [
                jobs.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len(),
                deployments.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len(),
                sets.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len(),
                pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len(),
                services.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len(),
            ];
            if left == [0; 5] {
                Ok(())
            } else {
                Err(format!("jobs, deployments, replicasets, pods, services left: {left:?}"))
            }
        }
    })
    .await;

    // Nothing the controller did was refused by the authorizer.
    controller.start_kill().ok();
    controller.wait().await.ok();
    let said = read(&log);
    assert!(!said.contains("forbidden"), "the controller was refused something under its own RBAC:\n{said}");
}

#[tokio::test]
async fn deleting_the_namespace_of_a_collection_lets_the_real_namespace_controller_finish_with_the_data_retained() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let plane = control_plane();
    install_operator(plane);
    let admin = plane.admin_client().await;
    let (kubeconfig, _) = plane.service_account_client(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).await;

    let namespace = test_namespace("doomed");
    create_namespace(&admin, &namespace).await;
    let collection_name = common::unique_collection("real_k8s_ns");
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let object = ImageCollection::test("kept").with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": collection_name
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let log = plane.dir.join(format!("controller-{namespace}.log"));
    let _controller = start_controller(&kubeconfig, &log, "imgsearch-controller-test");
    let store = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    eventually("the Milvus collection created", Duration::from_secs(90), || {
        let (store, name, log) = (store.clone(), collection_name.clone(), log.clone());
        async move {
            if store.has_collection(&name).await.map_err(|e| e.to_string())? {
                Ok(())
            } else {
                Err(format!("not yet; controller log:\n{}", read(&log)))
            }
        }
    })
    .await;

    // The namespace controller deletes everything in it, the collection too, and waits for its
    // finalizer; the namespace is gone only once the controller has let the collection go.
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces.delete(&namespace, &DeleteParams::default()).await.expect("delete the namespace");
    eventually("the namespace gone", Duration::from_secs(120), || {
        let (namespaces, namespace, log) = (namespaces.clone(), namespace.clone(), log.clone());
        async move {
            match namespaces.get_opt(&namespace).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(left) => Err(format!("{:?}\ncontroller log:\n{}", left.status, read(&log))),
            }
        }
    })
    .await;
    // Retain, the default: the vectors outlive the object.
    assert!(store.has_collection(&collection_name).await.expect("ask Milvus"), "Retain dropped the Milvus collection");
    store.drop_collection(&collection_name).await.ok();
}

/// The search pod's answer to `POST /v1/search` with `image` and `top_k` 3.
async fn search_top_3(search: std::net::SocketAddr, image: Vec<u8>) -> Value {
    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(image).file_name("query"))
        .text("top_k", "3");
    let response = common::http_client().post(format!("http://{search}/v1/search")).multipart(form).send();
    response.await.expect("the search pod answers").json().await.expect("a JSON answer")
}

#[tokio::test]
async fn a_collection_over_a_folder_is_ingested_by_the_real_job_controller_and_served_by_a_real_rollout() {
    let Scene { _turn, plane, admin, kubeconfig, namespace } = scene("photos").await;

    let work = tempfile::tempdir().expect("a temporary folder");
    let photos = work.path().join("volume/catalogue");
    std::fs::create_dir_all(&photos).expect("create the claim's folder");
    common::copy_photos(&["astronaut.jpg", "coffee.jpg", "rocket.jpg"], &photos);
    // One bad file: counted as failed, not a failed Job.
    std::fs::write(photos.join("truncated.jpg"), common::corrupt_jpeg()).expect("write a corrupt JPEG");
    let claims = std::collections::BTreeMap::from([("photos".to_string(), work.path().join("volume"))]);
    let (node, _node_task) =
        control_plane::node::Node::start(admin.clone(), &namespace, Path::new(env!("CARGO_BIN_EXE_imgsearch")), claims)
            .await;

    // The catalog the Job's pods and the search pods share, as a cluster's PostgreSQL would be.
    let catalog_url = format!("sqlite://{}", work.path().join("catalog.db").display());
    let catalog: Secret = serde_json::from_value(json!({
        "metadata": { "name": "catalog" },
        "stringData": { "DATABASE_URL": catalog_url }
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(admin.clone(), &namespace)
        .create(&PostParams::default(), &catalog)
        .await
        .expect("Secret");
    let name = "photos";
    let collection_name = common::unique_collection("real_k8s_e2e");
    let object = ImageCollection::test(name).with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": collection_name,
        "source": { "pvc": { "claimName": "photos", "path": "/catalogue" } },
        "catalog": { "secretRef": { "name": "catalog" } },
        "deletionPolicy": "Delete"
    }));
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let log = plane.dir.join(format!("controller-{namespace}.log"));
    let _controller = start_controller(&kubeconfig, &log, "imgsearch-controller-test");

    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(admin.clone(), &namespace, &kube::api::ApiResource::erase::<ImageCollection>(&()));
    let status = eventually("Ready with 3 images indexed", Duration::from_secs(240), || {
        let (raw, log, node) = (raw.clone(), log.clone(), node.clone());
        async move {
            let object =
                serde_json::to_value(raw.get(name).await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            let status = &object["status"];
            if status["phase"] == "Ready" && status["images"]["indexed"] == 3 {
                Ok(status.clone())
            } else {
                Err(format!("{status}\ncontroller log:\n{}\npods:\n{}", read(&log), node.logs("photos-")))
            }
        }
    })
    .await;
    assert_eq!(status["lastIngest"]["job"], "photos-ingest-g1", "{status}");
    // The counts the ingest pod left in its termination message, which the node wrote into the
    // pod's status as a kubelet does and the controller read back.
    assert_eq!(status["images"], json!({ "indexed": 3, "failed": 1, "skipped": 0 }), "{status}");
    let job = Api::<Job>::namespaced(admin.clone(), &namespace).get("photos-ingest-g1").await.expect("the Job");
    let job_status = job.status.expect("the Job controller wrote status");
    assert_eq!(job_status.succeeded, Some(1), "{job_status:?}");
    assert!(
        job_status.conditions.iter().flatten().any(|c| c.type_ == "Complete" && c.status == "True"),
        "the real Job controller did not mark the Job Complete: {job_status:?}"
    );

    // The search pod, rolled out by the real Deployment and ReplicaSet controllers, answers.
    let search = eventually("a ready search pod", Duration::from_secs(60), || {
        let node = node.clone();
        async move { node.ready_address("photos-search-").ok_or_else(|| node.logs("photos-search-")) }
    })
    .await;
    let response = search_top_3(search, std::fs::read(common::photo("coffee.jpg")).expect("read a photo")).await;
    let top = response["results"][0]["uri"].as_str().unwrap_or_default();
    assert!(top.ends_with("/catalogue/coffee.jpg"), "the search pod's best match is not the photo itself: {response}");
    let image_url = response["results"][0]["image_url"].as_str().unwrap_or_default();
    let served = common::http_client().get(format!("http://{search}{image_url}")).send().await.expect("GET the image");
    assert_eq!(served.status(), reqwest::StatusCode::OK, "the search pod does not serve {image_url}");
    let bytes = served.bytes().await.expect("the image's bytes");
    assert_eq!(bytes.as_ref(), std::fs::read(common::photo("coffee.jpg")).expect("read a photo"), "other bytes served");
    let deployment =
        Api::<Deployment>::namespaced(admin.clone(), &namespace).get("photos-search").await.expect("Deployment");
    let available = deployment.status.and_then(|s| s.available_replicas).unwrap_or(0);
    assert!(available >= 1, "the real Deployment controller counts no available replica");

    // Delete: the pods stop (the search pod drains for 5 s after SIGTERM, and the status says
    // it waits for them), then the data goes, then the object.
    collections.delete(name, &DeleteParams::default()).await.expect("delete the collection");
    let stopping_seen = std::sync::atomic::AtomicBool::new(false);
    eventually("the collection gone", Duration::from_secs(120), || {
        let (collections, log, stopping_seen) = (collections.clone(), log.clone(), &stopping_seen);
        async move {
            match collections.get_opt(name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(object) => {
                    let status = serde_json::to_value(&object.status).map_err(|e| e.to_string())?;
                    if status.to_string().contains("StoppingPods") {
                        stopping_seen.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(format!("{status}\ncontroller log:\n{}", read(&log)))
                }
            }
        }
    })
    .await;
    assert!(stopping_seen.into_inner(), "the status never said it was waiting for the pods to stop");
    let store = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    assert!(!store.has_collection(&collection_name).await.expect("ask Milvus"), "the Milvus collection was kept");
    // In that order: every pod had stopped before the collection was dropped, so nothing wrote
    // to it or created it again afterwards.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), &namespace);
    let dropped = events
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some(imgsearch::controller::reasons::COLLECTION_DROPPED))
        .and_then(|e| e.event_time)
        .expect("a CollectionDropped Event with its time");
    let last_stopped = node.last_stopped("photos-search-").expect("the search pod was stopped by its deletion");
    assert!(
        last_stopped < dropped.0,
        "the collection was dropped at {} while a search pod ran until {last_stopped}",
        dropped.0
    );
    let catalog = imgsearch::catalog::Catalog::open(&catalog_url).await.expect("open the catalog");
    for status in [ImageStatus::Indexed, ImageStatus::Failed, ImageStatus::Pending] {
        let left = catalog.count(&collection_name, status).await.expect("count");
        assert_eq!(left, 0, "{status:?} catalog rows left after a Delete");
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    eventually("every pod gone", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let left = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            if left.items.is_empty() { Ok(()) } else { Err(format!("{} pods left", left.items.len())) }
        }
    })
    .await;
}

/// A folder of `photos` (sample photo names) for the claim `photos`, and a node that runs the
/// pods of `namespace` with it.
#[tokio::test]
async fn server_side_apply_on_the_real_server_a_taken_field_is_forced_back_and_a_field_no_longer_applied_is_removed() {
    let Scene { _turn, plane, admin, kubeconfig, namespace } = scene("ownership").await;
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let object = ImageCollection::test("catalogue").with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": common::unique_collection("real_k8s_ssa"),
        "imagePullSecrets": [{ "name": "regcred" }]
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let log = plane.dir.join(format!("controller-{namespace}.log"));
    let controller = start_controller(&kubeconfig, &log, "imgsearch-controller-test");
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
    let search = "catalogue-search";
    let pull_secrets = |d: &Deployment| -> Vec<String> {
        let pod = d.spec.template.spec.as_ref();
        pod.and_then(|p| p.image_pull_secrets.clone()).unwrap_or_default().into_iter().map(|s| s.name).collect()
    };
    let image = |d: &Deployment| -> String {
        let pod = d.spec.template.spec.as_ref();
        pod.and_then(|p| p.containers.first()).and_then(|c| c.image.clone()).unwrap_or_default()
    };
    let deployment = eventually("the search Deployment", Duration::from_secs(60), || {
        let deployments = deployments.clone();
        async move { deployments.get(search).await.map_err(|e| e.to_string()) }
    })
    .await;
    assert_eq!(pull_secrets(&deployment), ["regcred"]);
    assert_eq!(image(&deployment), "imgsearch:test");

    // Someone else applies the image the controller owns: the real server refuses the conflict,
    // naming the owner, unless forced.
    let taken = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{ name: {search}, namespace: {namespace} }}\n\
         spec: {{ template: {{ spec: {{ containers: [{{ name: search, image: someone/else:1 }}] }} }} }}\n"
    );
    let (ok, _, err) =
        plane.run_kubectl(&["apply", "--server-side", "--field-manager=someone", "-f", "-"], Some(taken.as_bytes()));
    assert!(!ok, "the real server let another manager take the controller's field without force");
    assert!(err.contains("conflict with \"imgsearch-controller\""), "the conflict does not name the owner: {err}");
    let (ok, _, err) = plane.run_kubectl(
        &["apply", "--server-side", "--field-manager=someone", "--force-conflicts", "-f", "-"],
        Some(taken.as_bytes()),
    );
    assert!(ok, "a forced apply was refused: {err}");
    // The controller sees its child change and forces its own value back.
    let restored = eventually("the controller's image forced back", Duration::from_secs(60), || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get(search).await.map_err(|e| e.to_string())?;
            if image(&d) == "imgsearch:test" { Ok(d) } else { Err(format!("image {}", image(&d))) }
        }
    })
    .await;
    let someone_owns_image = restored
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| entry.manager.as_deref() == Some("someone"))
        .any(|entry| serde_json::to_string(&entry.fields_v1).unwrap_or_default().contains("f:image"));
    assert!(!someone_owns_image, "the forced apply left the image owned by the other manager");

    // A spec change: generation 2, its own Job, and the pull secret the controller no longer
    // applies is removed from the Deployment (a merge would have kept it).
    let change = json!({ "spec": { "imagePullSecrets": null, "ingest": { "batchSize": 16 } } });
    collections.patch("catalogue", &PatchParams::default(), &Patch::Merge(&change)).await.expect("change the spec");
    status_where(&collections, "catalogue", &log, "observedGeneration 2", Duration::from_secs(60), |o| {
        o["status"]["observedGeneration"] == 2
    })
    .await;
    // Made once generation 1's Job, stopped first, is gone with its pods.
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &namespace);
    eventually("generation 2's own Job", Duration::from_secs(60), || async {
        jobs.get("catalogue-ingest-g2").await.map_err(|e| e.to_string())
    })
    .await;
    let deployment = eventually("the pull secret removed", Duration::from_secs(60), || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get(search).await.map_err(|e| e.to_string())?;
            if pull_secrets(&d).is_empty() { Ok(d) } else { Err(format!("{:?}", pull_secrets(&d))) }
        }
    })
    .await;
    assert_eq!(image(&deployment), "imgsearch:test");
    delete_and_wait(&collections, "catalogue", &log).await;
    stop(controller).await;
}

#[tokio::test]
async fn a_controller_restarted_mid_ingest_adopts_the_running_job_instead_of_making_another() {
    let Scene { _turn, plane, admin, kubeconfig, namespace } = scene("restart").await;
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let object = ImageCollection::test("photos").with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": common::unique_collection("real_k8s_restart"),
        "deletionPolicy": "Delete"
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let log = plane.dir.join(format!("controller-{namespace}.log"));
    let first = start_controller(&kubeconfig, &log, "imgsearch-controller-test");

    // The Job exists and its pod waits: no node runs this namespace's pods yet.
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &namespace);
    let job = eventually("the ingest Job", Duration::from_secs(60), || {
        let jobs = jobs.clone();
        async move { jobs.get("photos-ingest-g1").await.map_err(|e| e.to_string()) }
    })
    .await;
    let uid = job.metadata.uid.clone().expect("a stored Job has a uid");
    stop(first).await;

    let log = plane.dir.join(format!("controller-{namespace}-2.log"));
    let _second = start_controller(&kubeconfig, &log, "imgsearch-controller-test");
    let work = tempfile::tempdir().expect("a temporary folder");
    let (_node, _node_task) = node_with_photos(&admin, &namespace, work.path(), &["astronaut.jpg", "coffee.jpg"]).await;
    let status = status_where(&collections, "photos", &log, "Ready with 2 images", Duration::from_secs(180), |o| {
        o["status"]["phase"] == "Ready" && o["status"]["images"]["indexed"] == 2
    })
    .await;
    assert_eq!(status["status"]["lastIngest"]["job"], "photos-ingest-g1");
    let all = jobs.list(&ListParams::default()).await.expect("list Jobs");
    let uids: Vec<_> = all.items.iter().filter_map(|j| j.metadata.uid.clone()).collect();
    assert_eq!(uids, [uid], "the restarted controller made another Job instead of adopting the running one");
    delete_and_wait(&collections, "photos", &log).await;
}

#[tokio::test]
async fn two_controllers_elect_one_leader_with_a_real_lease_and_the_other_takes_over_when_it_dies() {
    let Scene { _turn, plane, admin, kubeconfig, namespace } = scene("leases").await;
    let logs = [plane.dir.join("controller-a.log"), plane.dir.join("controller-b.log")];
    let mut a = Some(start_controller(&kubeconfig, &logs[0], "controller-a"));
    let mut b = Some(start_controller(&kubeconfig, &logs[1], "controller-b"));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    let holder = || {
        let leases = leases.clone();
        async move {
            let lease = leases.get("imgsearch-controller").await.map_err(|e| e.to_string())?;
            let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
            if holder == "controller-a" || holder == "controller-b" {
                Ok(holder)
            } else {
                Err(format!("held by {holder:?}"))
            }
        }
    };
    let leader = eventually("one of the two leading", Duration::from_secs(60), holder).await;

    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let object = ImageCollection::test("catalogue").with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": common::unique_collection("real_k8s_lease"),
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let (leader_log, standby_log) = if leader == "controller-a" { (&logs[0], &logs[1]) } else { (&logs[1], &logs[0]) };
    status_where(&collections, "catalogue", leader_log, "reconciled by the leader", Duration::from_secs(60), |o| {
        o["status"]["observedGeneration"] == 1
    })
    .await;
    assert!(!read(standby_log).contains("catalogue"), "the standby reconciled too:\n{}", read(standby_log));

    // The leader dies without a word (SIGKILL: no release); the standby takes over once the
    // Lease has not been renewed for its duration, and reconciles a change.
    let dead = if leader == "controller-a" { a.take() } else { b.take() };
    drop(dead); // kill_on_drop: SIGKILL
    let next = eventually("the standby leading", Duration::from_secs(60), || {
        let leases = leases.clone();
        let leader = leader.clone();
        async move {
            let lease = leases.get("imgsearch-controller").await.map_err(|e| e.to_string())?;
            let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
            if holder != leader && !holder.is_empty() { Ok(holder) } else { Err(format!("held by {holder:?}")) }
        }
    })
    .await;
    let change = json!({ "spec": { "ingest": { "batchSize": 4 } } });
    collections.patch("catalogue", &PatchParams::default(), &Patch::Merge(&change)).await.expect("change the spec");
    status_where(
        &collections,
        "catalogue",
        standby_log,
        "the change reconciled by the new leader",
        Duration::from_secs(60),
        |o| o["status"]["observedGeneration"] == 2,
    )
    .await;
    delete_and_wait(&collections, "catalogue", standby_log).await;
    let survivor = if next == "controller-a" { a.take() } else { b.take() };
    stop(survivor.expect("the new leader is running")).await;
}

#[tokio::test]
async fn a_scheduled_rescan_is_fired_by_the_real_cronjob_controller_and_indexes_a_new_photo() {
    let Scene { _turn, plane, admin, kubeconfig, namespace } = scene("rescan").await;
    let work = tempfile::tempdir().expect("a temporary folder");
    let (node, _node_task) = node_with_photos(&admin, &namespace, work.path(), &["astronaut.jpg", "coffee.jpg"]).await;
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let object = ImageCollection::test("photos").with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": common::unique_collection("real_k8s_rescan"),
        "ingest": { "schedule": "* * * * *" },
        "deletionPolicy": "Delete"
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let log = plane.dir.join(format!("controller-{namespace}.log"));
    let controller = start_controller(&kubeconfig, &log, "imgsearch-controller-test");
    status_where(&collections, "photos", &log, "Ready with 2 images", Duration::from_secs(180), |o| {
        o["status"]["phase"] == "Ready" && o["status"]["images"]["indexed"] == 2
    })
    .await;

    // Every status written from here on, through a watch (which misses no write).
    let ready = collections.get("photos").await.expect("read the collection");
    let version = ready.metadata.resource_version.clone().expect("a resourceVersion");
    let mut writes = collections.watch(&WatchParams::default(), &version).await.expect("watch the collection").boxed();
    let seen = tokio::spawn(async move {
        let mut statuses = Vec::new();
        while let Some(event) = writes.next().await {
            if let Ok(WatchEvent::Modified(object)) = event {
                let object = serde_json::to_value(object).expect("JSON");
                let done = object["status"]["images"]["indexed"] == 3;
                statuses.push(object["status"].clone());
                if done {
                    break;
                }
            }
        }
        statuses
    });

    // A photo arrives; the next minute's rescan, a Job the real CronJob controller makes from
    // the operator's CronJob, indexes it.
    std::fs::copy(common::photo("rocket.jpg"), work.path().join("volume/rocket.jpg")).expect("copy a photo");
    let status = status_where(&collections, "photos", &log, "3 images after a rescan", Duration::from_secs(150), |o| {
        o["status"]["images"]["indexed"] == 3
    })
    .await;
    let statuses = tokio::time::timeout(Duration::from_secs(30), seen)
        .await
        .expect("the watch saw the status with 3 images within 30 s of its being read")
        .expect("the watch task");
    // Upkeep, not work toward the spec: GitOps health must not flip on every scheduled run.
    let condition = |status: &Value, kind: &str| {
        status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == kind)).cloned().unwrap_or_default()
    };
    for status in &statuses {
        let (reconciling, ingested) = (condition(status, "Reconciling"), condition(status, "Ingested"));
        assert!(
            status["phase"] == "Ready" && reconciling["status"] == "False" && ingested["status"] == "True",
            "during a scheduled rescan the collection left Ready: {status}"
        );
    }
    assert!(
        statuses.iter().any(|s| condition(s, "Ingested")["reason"] == "RescanRunning"),
        "the running rescan was never reported (Ingested reason RescanRunning) in {} writes: {statuses:?}",
        statuses.len()
    );
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &namespace);
    let rescans: Vec<Job> = jobs
        .list(&ListParams::default())
        .await
        .expect("list Jobs")
        .items
        .into_iter()
        .filter(|j| {
            j.metadata.owner_references.iter().flatten().any(|o| o.kind == "CronJob" && o.name == "photos-rescan")
        })
        .collect();
    assert!(
        !rescans.is_empty(),
        "no Job made by the CronJob controller; status {}\npods:\n{}",
        status["status"],
        node.logs("photos-")
    );
    delete_and_wait(&collections, "photos", &log).await;
    stop(controller).await;
}

#[tokio::test]
async fn an_indexed_job_of_two_shards_gets_its_completion_indexes_from_the_real_job_controller_and_covers_every_photo_once_and_a_rescan_keeps_ids()
 {
    let Scene { _turn, plane, admin, kubeconfig, namespace } = scene("shards").await;
    let work = tempfile::tempdir().expect("a temporary folder");
    // Shards split by a hash of each file's path, which holds the temporary folder's random
    // name: with all 16 sample photos a shard is left empty once in 32,768 runs (with 4 it was
    // once in 8, seen).
    let photos = [
        "astronaut.jpg",
        "brick.jpg",
        "camera.jpg",
        "cell.jpg",
        "chelsea.jpg",
        "coffee.jpg",
        "coins.jpg",
        "grass.jpg",
        "gravel.jpg",
        "hubble_deep_field.jpg",
        "ihc.jpg",
        "moon.jpg",
        "motorcycle_left.jpg",
        "motorcycle_right.jpg",
        "retina.jpg",
        "rocket.jpg",
    ];
    let (node, _node_task) = node_with_photos(&admin, &namespace, work.path(), &photos).await;
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let collection_name = common::unique_collection("real_k8s_shards");
    let object = ImageCollection::test("photos").with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": collection_name,
        "ingest": { "parallelism": 2, "prune": true },
        "deletionPolicy": "Delete"
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let log = plane.dir.join(format!("controller-{namespace}.log"));
    let controller = start_controller(&kubeconfig, &log, "imgsearch-controller-test");
    status_where(&collections, "photos", &log, "Ready with every photo", Duration::from_secs(180), |o| {
        o["status"]["phase"] == "Ready" && o["status"]["images"]["indexed"] == photos.len()
    })
    .await;

    // Two pods, one per completion index, each told its index by the Job controller's own
    // annotation through the downward API; together they indexed each photo once.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    let selector = "batch.kubernetes.io/job-name=photos-ingest-g1";
    let succeeded: Vec<Pod> = pods
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list the Job's pods")
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
        .collect();
    let mut indexes: Vec<String> = succeeded
        .iter()
        .filter_map(|p| p.metadata.annotations.as_ref()?.get("batch.kubernetes.io/job-completion-index").cloned())
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1"], "one succeeded pod per completion index\n{}", node.logs("photos-ingest-"));
    // Each shard found part of the folder (its summary, the termination message), and the
    // parts add up to the whole: a pod that missed its index would have scanned shard 0 twice.
    let found: Vec<u64> = succeeded
        .iter()
        .map(|p| {
            let statuses = p.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
            let message = statuses
                .first()
                .and_then(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
                .unwrap_or_default();
            let summary: Value = serde_json::from_str(&message).unwrap_or(Value::Null);
            summary["discovered"]
                .as_u64()
                .unwrap_or_else(|| panic!("no summary in the ingest pod's termination message: {message:?}"))
        })
        .collect();
    assert!(found.iter().all(|&n| n > 0), "a shard found nothing (so sharding was not tested): {found:?}");
    assert_eq!(found.iter().sum::<u64>(), photos.len() as u64, "the shards overlap or miss photos: {found:?}");
    let store = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    assert_eq!(store.count(&collection_name).await.expect("count"), photos.len() as u64, "each photo once in Milvus");

    // No catalog (the default): Milvus's rows are the record the shards and the search pod
    // share. Each photo is listed once with an id of its own, served by that id, and finds
    // itself: no shard overwrote another's.
    let search = eventually("a ready search pod", Duration::from_secs(60), || {
        let node = node.clone();
        async move { node.ready_address("photos-search-").ok_or_else(|| node.logs("photos-search-")) }
    })
    .await;
    let folder = work.path().join("volume");
    let listed = listed_images(search).await;
    let names: std::collections::BTreeSet<String> = listed.keys().map(|uri| file_name(uri)).collect();
    assert_eq!(names, photos.iter().map(|p| p.to_string()).collect(), "the listing is not the folder");
    let ids: std::collections::HashSet<i64> = listed.values().copied().collect();
    assert_eq!(ids.len(), photos.len(), "two photos share an id: {listed:?}");
    for (uri, id) in listed.iter().take(4) {
        let bytes = std::fs::read(folder.join(file_name(uri))).expect("read a photo");
        let served = common::http_client().get(format!("http://{search}/v1/images/{id}")).send().await.expect("GET");
        assert_eq!(served.bytes().await.expect("bytes").as_ref(), bytes, "{uri}: other bytes served for id {id}");
        let found = search_top_3(search, bytes).await;
        let itself = found["results"].as_array().and_then(|r| r.iter().find(|hit| hit["id"] == *id));
        assert!(itself.and_then(|hit| hit["score"].as_f64()).is_some_and(|s| s > 0.999), "{uri} not found: {found}");
    }

    // A rescan (a spec change makes one) after two files were added and one removed: the
    // unchanged ones keep their ids and are not embedded again, the removed one is pruned by
    // the shard it falls in, the new ones are served.
    let added: Vec<(String, PathBuf)> = common::fashion_images(1).into_iter().take(2).collect();
    for (name, path) in &added {
        std::fs::copy(path, folder.join(name)).expect("add a file");
    }
    let removed = photos[0];
    std::fs::remove_file(folder.join(removed)).expect("remove a file");
    let now = photos.len() + added.len() - 1;
    let patch = json!({ "spec": { "ingest": { "batchSize": 16 } } });
    collections.patch("photos", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("change the spec");
    let status = status_where(&collections, "photos", &log, "the rescan done", Duration::from_secs(180), |o| {
        let s = &o["status"];
        s["phase"] == "Ready" && s["lastIngest"]["job"] == "photos-ingest-g2" && s["images"]["indexed"] == now
    })
    .await;
    assert_eq!(
        status["status"]["images"]["skipped"],
        photos.len() - 1,
        "unchanged photos embedded again: {}",
        status["status"]
    );
    let relisted = listed_images(search).await;
    assert_eq!(relisted.len(), now, "{relisted:?}");
    for (uri, id) in &listed {
        if file_name(uri) == removed {
            assert!(!relisted.contains_key(uri), "the removed file was not pruned");
        } else {
            assert_eq!(relisted.get(uri), Some(id), "{uri} changed id");
        }
    }
    for (name, path) in &added {
        let (_, id) = relisted.iter().find(|(uri, _)| file_name(uri) == *name).expect("a new file listed");
        let served = common::http_client().get(format!("http://{search}/v1/images/{id}")).send().await.expect("GET");
        let bytes = std::fs::read(path).expect("read a file");
        assert_eq!(served.bytes().await.expect("bytes").as_ref(), bytes, "{name}: the new file is not served");
    }
    delete_and_wait(&collections, "photos", &log).await;
    stop(controller).await;
}

fn file_name(uri: &str) -> String {
    uri.rsplit('/').next().unwrap_or_default().to_string()
}

/// Every image the search pod lists (uri → id), read through pages of 7.
async fn listed_images(search: std::net::SocketAddr) -> std::collections::BTreeMap<String, i64> {
    let mut listed = std::collections::BTreeMap::new();
    let mut token: Option<String> = None;
    for _page in 0..100 {
        let mut url = format!("http://{search}/v1/images?limit=7");
        if let Some(token) = &token {
            url.push_str(&format!("&page_token={token}"));
        }
        let response = common::http_client().get(&url).send().await.expect("list the images");
        let page: Value = response.json().await.expect("a JSON listing");
        for image in page["images"].as_array().unwrap_or_else(|| panic!("not a listing: {page}")) {
            let uri = image["uri"].as_str().unwrap_or_default().to_string();
            let id = image["id"].as_i64().unwrap_or_else(|| panic!("no id: {image}"));
            assert!(listed.insert(uri.clone(), id).is_none(), "{uri} listed twice");
        }
        match page["next_page_token"].as_str() {
            Some(next) => token = Some(next.to_string()),
            None => return listed,
        }
    }
    panic!("the listing did not end within 100 pages of 7");
}

#[tokio::test]
async fn a_failing_ingest_is_retried_by_the_real_job_controller_up_to_its_backoff_limit_then_reported() {
    let Scene { _turn, plane, admin, kubeconfig, namespace } = scene("failing").await;
    let work = tempfile::tempdir().expect("a temporary folder");
    let (node, _node_task) = node_with_photos(&admin, &namespace, work.path(), &["coffee.jpg"]).await;
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    // A folder the claim does not hold: every try fails, as when the source is unreachable.
    let object = ImageCollection::test("photos").with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": common::unique_collection("real_k8s_failing"),
        "source": { "pvc": { "claimName": "photos", "path": "/missing" } },
        "ingest": { "backoffLimit": 1 }
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let log = plane.dir.join(format!("controller-{namespace}.log"));
    let controller = start_controller(&kubeconfig, &log, "imgsearch-controller-test");
    let failed =
        status_where(&collections, "photos", &log, "Ingested=False, JobFailed", Duration::from_secs(150), |o| {
            condition(o, "Ingested").is_some_and(|c| c["status"] == "False" && c["reason"] == "JobFailed")
        })
        .await;

    // The real Job controller tried twice (backoffLimit 1 per shard: one retry, after its 10 s
    // back-off) and gave up in its own words; the pod's own error reached the collection's
    // condition.
    let job = Api::<Job>::namespaced(admin.clone(), &namespace).get("photos-ingest-g1").await.expect("the Job");
    let status = job.status.expect("the Job controller wrote status");
    assert_eq!(status.failed, Some(2), "one try and one retry: {status:?}");
    let gave_up = status.conditions.iter().flatten().find(|c| c.type_ == "Failed" && c.status == "True");
    assert_eq!(gave_up.and_then(|c| c.reason.as_deref()), Some("FailedIndexes"), "{status:?}");
    assert_eq!(status.failed_indexes.as_deref(), Some("0"), "{status:?}");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    let tries = pods.list(&ListParams::default().labels("batch.kubernetes.io/job-name=photos-ingest-g1")).await;
    let failed_pods = tries
        .expect("list the Job's pods")
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
        .count();
    assert_eq!(failed_pods, 2, "the retry is a new pod the Job controller made\n{}", node.logs("photos-ingest-"));
    let message = condition(&failed, "Ingested").and_then(|c| c["message"].as_str()).unwrap_or_default().to_string();
    assert!(message.contains("missing"), "the condition does not say what failed: {message}");
    // Failed, or Degraded while the search pod (run by the node) still serves what was there.
    let serving = condition(&failed, "SearchReady").is_some_and(|c| c["status"] == "True");
    let phase = if serving { "Degraded" } else { "Failed" };
    assert_eq!(failed["status"]["phase"], phase, "{}", failed["status"]);
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), &namespace);
    let warned = events.list(&ListParams::default()).await.expect("list Events").items.into_iter().any(|e| {
        e.reason.as_deref() == Some(imgsearch::controller::reasons::INGEST_FAILED)
            && e.type_.as_deref() == Some("Warning")
    });
    assert!(warned, "no IngestFailed Warning Event");
    assert!(message.contains("imgsearch.io/retry-ingest"), "the condition does not say how to retry: {message}");

    // The cause fixed (the folder now exists), the retry annotation runs the ingest again
    // without a spec edit: the failed Job is replaced by one of the same name.
    let first_uid = job.metadata.uid.clone();
    let folder = work.path().join("volume/missing");
    std::fs::create_dir_all(&folder).expect("create the folder");
    std::fs::copy(common::photo("coffee.jpg"), folder.join("coffee.jpg")).expect("copy a photo");
    let retry = json!({ "metadata": { "annotations": { "imgsearch.io/retry-ingest": "1" } } });
    collections.patch("photos", &PatchParams::default(), &Patch::Merge(&retry)).await.expect("annotate");
    let ready = status_where(&collections, "photos", &log, "Ingested after the retry", Duration::from_secs(150), |o| {
        condition(o, "Ingested").is_some_and(|c| c["status"] == "True") && o["status"]["images"]["indexed"] == 1
    })
    .await;
    assert_eq!(ready["metadata"]["generation"], 1, "no spec edit was needed");
    let again = Api::<Job>::namespaced(admin.clone(), &namespace).get("photos-ingest-g1").await.expect("the Job");
    assert_ne!(again.metadata.uid, first_uid, "the failed Job was replaced");
    let retried = events
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .any(|e| e.reason.as_deref() == Some(imgsearch::controller::reasons::INGEST_RETRIED));
    assert!(retried, "no IngestRetried Event");
    delete_and_wait(&collections, "photos", &log).await;

    // A source path that is a file cannot work however often it is tried: the ingest exits 78
    // and the Job's pod failure policy fails the shard at once, without the 6 default retries.
    let object = ImageCollection::test("misconfigured").with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": common::unique_collection("real_k8s_misconfigured"),
        "source": { "pvc": { "claimName": "photos", "path": "/coffee.jpg" } },
        "deletionPolicy": "Delete"
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let failed =
        status_where(&collections, "misconfigured", &log, "Ingested=False, JobFailed", Duration::from_secs(90), |o| {
            condition(o, "Ingested").is_some_and(|c| c["status"] == "False" && c["reason"] == "JobFailed")
        })
        .await;
    let job = Api::<Job>::namespaced(admin.clone(), &namespace).get("misconfigured-ingest-g1").await.expect("the Job");
    let status = job.status.expect("the Job controller wrote status");
    assert_eq!(status.failed, Some(1), "one try, no retry: {status:?}");
    let message = condition(&failed, "Ingested").and_then(|c| c["message"].as_str()).unwrap_or_default().to_string();
    assert!(message.contains("is not a directory") && message.contains("exited with 78"), "{message}");
    delete_and_wait(&collections, "misconfigured", &log).await;
    stop(controller).await;
}

/// An evicted ingest pod (a node drain, a preemption) is no failure of the ingest. The real
/// eviction API marks the pod `DisruptionTarget`, and the Job's pod failure policy has the real
/// Job controller replace it without counting the failure: a collection allowed no retries at
/// all (`backoffLimit: 0`) still ingests. (The pod is held waiting for its catalog Secret so
/// that it is evicted before it can finish.)
#[tokio::test]
async fn an_evicted_ingest_pod_is_replaced_without_spending_a_retry() {
    let Scene { _turn, plane, admin, kubeconfig, namespace } = scene("evicted").await;
    let work = tempfile::tempdir().expect("a temporary folder");
    let (_node, _node_task) = node_with_photos(&admin, &namespace, work.path(), &["coffee.jpg"]).await;
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let object = ImageCollection::test("photos").with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": common::unique_collection("real_k8s_evicted"),
        "catalog": { "secretRef": { "name": "catalog" } },
        "ingest": { "backoffLimit": 0 },
        "deletionPolicy": "Delete"
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let log = plane.dir.join(format!("controller-{namespace}.log"));
    let controller = start_controller(&kubeconfig, &log, "imgsearch-controller-test");

    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    let of_the_job = ListParams::default().labels("batch.kubernetes.io/job-name=photos-ingest-g1");
    let waiting = eventually("the ingest pod waiting for its Secret", Duration::from_secs(90), || async {
        let listed = pods.list(&of_the_job).await.map_err(|e| e.to_string())?;
        let reasons: Vec<Option<String>> = listed.items.iter().map(waiting_reason).collect();
        let pod = listed.items.into_iter().find(|p| waiting_reason(p).as_deref() == Some("CreateContainerConfigError"));
        pod.ok_or(format!("pods waiting for: {reasons:?}"))
    })
    .await;
    let evicted = waiting.metadata.uid.clone();
    pods.evict(&waiting.metadata.name.clone().unwrap_or_default(), &EvictParams::default()).await.expect("evict");
    let replacement = eventually("a replacement pod", Duration::from_secs(90), || async {
        let listed = pods.list(&of_the_job).await.map_err(|e| e.to_string())?;
        let names: Vec<Option<String>> = listed.items.iter().map(|p| p.metadata.name.clone()).collect();
        let other =
            listed.items.into_iter().find(|p| p.metadata.uid != evicted && p.metadata.deletion_timestamp.is_none());
        other.ok_or(format!("pods: {names:?}"))
    })
    .await;
    // The Job controller's own count of ignored failures, handed to the replacement.
    let annotations = replacement.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("batch.kubernetes.io/job-index-ignored-failure-count").map(String::as_str),
        Some("1"),
        "{annotations:?}"
    );

    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "catalog" },
        "stringData": { "DATABASE_URL": format!("sqlite://{}", work.path().join("catalog.db").display()) }
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(admin.clone(), &namespace).create(&PostParams::default(), &secret).await.expect("Secret");
    status_where(&collections, "photos", &log, "Ready with 1 image", Duration::from_secs(180), |o| {
        o["status"]["phase"] == "Ready" && o["status"]["images"]["indexed"] == 1
    })
    .await;
    let job = Api::<Job>::namespaced(admin.clone(), &namespace).get("photos-ingest-g1").await.expect("the Job");
    let status = job.status.expect("the Job controller wrote status");
    assert_eq!((status.failed.unwrap_or(0), status.succeeded), (0, Some(1)), "{status:?}");
    delete_and_wait(&collections, "photos", &log).await;
    stop(controller).await;
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.first()?.state.as_ref()?.waiting.as_ref()?.reason.clone()
}

#[tokio::test]
async fn pods_waiting_for_a_missing_secret_are_reported_as_stalled_and_the_collection_recovers_once_it_exists() {
    let Scene { _turn, plane, admin, kubeconfig, namespace } = scene("waiting").await;
    let work = tempfile::tempdir().expect("a temporary folder");
    let (node, _node_task) = node_with_photos(&admin, &namespace, work.path(), &["coffee.jpg", "rocket.jpg"]).await;
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    // The catalog Secret the spec names does not exist yet.
    let object = ImageCollection::test("photos").with_spec(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": common::unique_collection("real_k8s_waiting"),
        "catalog": { "secretRef": { "name": "catalog" } },
        "deletionPolicy": "Delete"
    }));
    collections.create(&PostParams::default(), &object).await.expect("create the collection");
    let log = plane.dir.join(format!("controller-{namespace}.log"));
    let controller = start_controller_with(
        &kubeconfig,
        &log,
        "imgsearch-controller-test",
        &[(imgsearch::env::POD_START_GRACE_SECONDS, "5")],
    );

    // The node holds the pods in CreateContainerConfigError, as a kubelet does; once past the
    // grace period the collection says so, naming the Secret.
    let stalled =
        status_where(&collections, "photos", &log, "Stalled with PodNotStarting", Duration::from_secs(90), |o| {
            condition(o, "Stalled").is_some_and(|c| c["status"] == "True" && c["reason"] == "PodNotStarting")
        })
        .await;
    let message = condition(&stalled, "Stalled").and_then(|c| c["message"].as_str()).unwrap_or_default().to_string();
    assert!(message.contains("secret \"catalog\" not found"), "the condition does not name the Secret: {message}");

    // The Secret arrives: the pods start, the ingest runs, and the collection is Ready.
    let catalog_url = format!("sqlite://{}", work.path().join("catalog.db").display());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "catalog" },
        "stringData": { "DATABASE_URL": catalog_url }
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(admin.clone(), &namespace).create(&PostParams::default(), &secret).await.expect("Secret");
    let ready = status_where(&collections, "photos", &log, "Ready with 2 images", Duration::from_secs(180), |o| {
        o["status"]["phase"] == "Ready" && o["status"]["images"]["indexed"] == 2
    })
    .await;
    let still_stalled = condition(&ready, "Stalled").is_some_and(|c| c["status"] == "True");
    assert!(!still_stalled, "Stalled stayed True after recovering: {}\n{}", ready["status"], node.logs("photos-"));
    delete_and_wait(&collections, "photos", &log).await;
    stop(controller).await;
}

#[tokio::test]
async fn pods_refused_an_image_a_claim_or_a_secret_key_are_each_reported_with_the_kubelets_words() {
    let Scene { _turn, plane, admin, kubeconfig, namespace } = scene("refused").await;
    let work = tempfile::tempdir().expect("a temporary folder");
    let (node, _node_task) = node_with_photos(&admin, &namespace, work.path(), &["coffee.jpg", "rocket.jpg"]).await;
    // The controller's image lives in a private registry: pulling it needs the `regcred` Secret.
    let image = "registry.example/imgsearch:private";
    node.require_pull_secret(image, "regcred");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &namespace);
    let regcred: Secret = serde_json::from_value(json!({
        "metadata": { "name": "regcred" },
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": { ".dockerconfigjson": "{\"auths\":{}}" }
    }))
    .expect("a pull Secret");
    secrets.create(&PostParams::default(), &regcred).await.expect("create the pull Secret");
    let nokey: Secret =
        serde_json::from_value(json!({ "metadata": { "name": "nokey" }, "stringData": { "URL": "x" } }))
            .expect("a Secret");
    secrets.create(&PostParams::default(), &nokey).await.expect("create a Secret without the key");

    // Four ways a pod never starts: no pull secret named, a claim that does not exist, a
    // Secret without the key the spec needs, a URL list's ConfigMap (a volume) that does not
    // exist, which the kubelet tells only in a FailedMount Event (the pod is ContainerCreating).
    let collections: Api<ImageCollection> = Api::namespaced(admin.clone(), &namespace);
    let mut kept = Vec::new();
    for (name, changes) in [
        ("pull", json!({ "imagePullSecrets": [] })),
        ("claim", json!({ "source": { "pvc": { "claimName": "elsewhere" } } })),
        // Retain: deleting with Delete would need the catalog's URL from that Secret.
        ("key", json!({ "catalog": { "secretRef": { "name": "nokey" } }, "deletionPolicy": "Retain" })),
        (
            "list",
            json!({ "source": { "pvc": null, "urls": { "configMapRef": { "name": "photo-urls", "key": "urls.txt" } } } }),
        ),
    ] {
        let collection_name = common::unique_collection(&format!("real_k8s_{name}"));
        let mut spec = json!({
            "milvus": { "uri": common::milvus_uri() },
            "collectionName": collection_name,
            "source": { "pvc": { "claimName": "photos" } },
            "imagePullSecrets": [{ "name": "regcred" }],
            "deletionPolicy": "Delete"
        });
        for (key, value) in changes.as_object().cloned().unwrap_or_default() {
            spec[key] = value;
        }
        if name == "key" {
            kept.push(collection_name);
        }
        let object = ImageCollection::test(name).with_spec(spec);
        collections.create(&PostParams::default(), &object).await.expect("create a collection");
    }
    let log = plane.dir.join(format!("controller-{namespace}.log"));
    let controller = start_controller_with(
        &kubeconfig,
        &log,
        "imgsearch-controller-test",
        &[(imgsearch::env::POD_START_GRACE_SECONDS, "3"), ("IMGSEARCH_IMAGE", image)],
    );

    let stalled =
        |o: &Value| condition(o, "Stalled").is_some_and(|c| c["status"] == "True" && c["reason"] == "PodNotStarting");
    let message_of =
        |o: &Value| condition(o, "Stalled").and_then(|c| c["message"].as_str()).unwrap_or_default().to_string();
    let deadline = Duration::from_secs(90);
    let pull = status_where(&collections, "pull", &log, "pull: Stalled with PodNotStarting", deadline, stalled).await;
    let message = message_of(&pull);
    assert!(message.contains("ImagePullBackOff") || message.contains("ErrImagePull"), "{message}");
    assert!(message.contains("spec.imagePullSecrets"), "the message does not say what to do: {message}");
    let ingested = condition(&pull, "Ingested").map(|c| c["reason"].clone());
    assert_eq!(ingested, Some(json!("PodsNotStarting")), "{}", pull["status"]);
    assert_ne!(pull["status"]["phase"], "Ingesting", "a Job whose pods cannot start is not ingesting");
    let claim =
        status_where(&collections, "claim", &log, "claim: Stalled with PodNotStarting", deadline, stalled).await;
    let message = message_of(&claim);
    assert!(message.contains("persistentvolumeclaim \"elsewhere\" not found"), "{message}");
    let key = status_where(&collections, "key", &log, "key: Stalled with PodNotStarting", deadline, stalled).await;
    let message = message_of(&key);
    assert!(message.contains("CreateContainerConfigError"), "{message}");
    let missing = format!("couldn't find key DATABASE_URL in Secret {namespace}/nokey");
    assert!(message.contains(&missing), "{message}");
    let list = status_where(&collections, "list", &log, "list: Stalled with PodNotStarting", deadline, stalled).await;
    let message = message_of(&list);
    assert!(message.contains("ContainerCreating; the kubelet: FailedMount: "), "{message}");
    assert!(message.contains("configmap \"photo-urls\" not found"), "{message}");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), &namespace);
    let warned = events.list(&ListParams::default()).await.expect("list Events").items.into_iter().any(|e| {
        e.reason.as_deref() == Some("PodNotStarting") && e.regarding.and_then(|r| r.name).as_deref() == Some("key")
    });
    assert!(warned, "no PodNotStarting Warning Event about `key`");

    // Fixed: the spec names the pull secret. The new generation's pods start, and the
    // collection becomes Ready with its photos.
    let patch = json!({ "spec": { "imagePullSecrets": [{ "name": "regcred" }] } });
    collections.patch("pull", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("name the pull secret");
    let ready = status_where(&collections, "pull", &log, "pull: Ready with 2 photos", Duration::from_secs(180), |o| {
        o["status"]["phase"] == "Ready" && o["status"]["images"]["indexed"] == 2
    })
    .await;
    let still_stalled = condition(&ready, "Stalled").is_some_and(|c| c["status"] == "True");
    assert!(!still_stalled, "Stalled stayed True after recovering: {}\n{}", ready["status"], node.logs("pull-"));

    // A broken rollout behind a serving ReplicaSet: the new template names a pull Secret that
    // does not exist, so its pod never starts while the old one keeps answering. The real
    // Deployment controller keeps the old pod (maxUnavailable rounds down to 0) and, after the
    // 10 s progress deadline, sets Progressing=False ProgressDeadlineExceeded.
    let broken =
        json!({ "spec": { "imagePullSecrets": [{ "name": "gone" }], "search": { "progressDeadlineSeconds": 10 } } });
    collections.patch("pull", &PatchParams::default(), &Patch::Merge(&broken)).await.expect("break the template");
    let stuck =
        |o: &Value| condition(o, "Stalled").is_some_and(|c| c["status"] == "True" && c["reason"] == "RolloutStuck");
    let status = status_where(&collections, "pull", &log, "pull: Stalled with RolloutStuck", deadline, stuck).await;
    let message = message_of(&status);
    assert!(message.contains("Deployment pull-search") && message.contains("timed out progressing"), "{message}");
    assert!(message.contains("ErrImagePull") || message.contains("ImagePullBackOff"), "the new pod's cause: {message}");
    assert_eq!(condition(&status, "Ready").map(|c| c["status"].clone()), Some(json!("True")), "the old pod serves");
    assert_eq!(status["status"]["phase"], "Degraded", "{}", status["status"]);
    // Fixed again: the rollout completes and nothing is left reported.
    collections
        .patch("pull", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("name the pull secret again");
    let ready =
        status_where(&collections, "pull", &log, "pull: Ready after the rollout", Duration::from_secs(180), |o| {
            o["status"]["phase"] == "Ready"
                && condition(o, "Stalled").is_some_and(|c| c["status"] == "False")
                && condition(o, "Reconciling").is_some_and(|c| c["status"] == "False")
        })
        .await;
    assert_eq!(ready["status"]["images"]["indexed"], 2);

    // Pods that never started go with their collections.
    for name in ["pull", "claim", "key", "list"] {
        delete_and_wait(&collections, name, &log).await;
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    eventually("every pod gone", Duration::from_secs(60), || {
        let pods = pods.clone();
        async move {
            let left = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            let names: Vec<_> = left.items.iter().filter_map(|p| p.metadata.name.clone()).collect();
            if names.is_empty() { Ok(()) } else { Err(format!("pods left: {names:?}")) }
        }
    })
    .await;
    stop(controller).await;
    let store = MilvusStore::connect(&common::milvus_uri(), None).await.expect("connect to Milvus");
    for name in kept {
        store.drop_collection(&name).await.ok();
    }
}
