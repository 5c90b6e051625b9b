//! Least privilege, proven: the real `imgsearch controller` binary runs against the fake API
//! server under its ServiceAccount's name through a whole collection lifecycle (create, ingest,
//! rescan schedule, spec change, old Job pruned, schedule removed, delete with cleanup, shutdown
//! with the lease released). Every call it makes must be granted by the RBAC that
//! `kubectl kustomize manifests` renders (from manifests/base/rbac.yaml), and every grant there
//! must be used by some call.
//!
//! The search and ingest pods get no API rights at all: nothing in the manifests binds a role
//! to anything but the controller's ServiceAccount, and the pods the controller creates do not
//! mount a token.

mod common;
mod k8s;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use imgsearch::crd::{ImageCollection, ImageCollectionSpec};
use k8s::fake_apiserver::{Call, FakeApiServer};
use k8s::kubelet::SimulatedKubelet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};

const NAMESPACE: &str = "imgsearch-system";
const SERVICE_ACCOUNT: &str = "imgsearch-controller";
const COLLECTIONS: &str = "imgsearch.io/v1alpha1/imagecollections";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
    verbs: Vec<String>,
}

/// A ClusterRole (namespace None: applies everywhere) or a Role (applies in its namespace).
#[derive(Debug)]
struct Grant {
    role: String,
    namespace: Option<String>,
    rules: Vec<Rule>,
}

/// One (role, rule, group, resource, verb) a role grants: the unit that must be used.
type Permission = (String, usize, String, String, String);

/// The objects `kubectl apply -k manifests/` would install.
fn installed_objects() -> Vec<Value> {
    let output = std::process::Command::new("kubectl")
        .args(["kustomize", "manifests"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("kubectl not found: it renders manifests/ (kubectl kustomize); install kubectl");
    assert!(output.status.success(), "kubectl kustomize manifests: {}", String::from_utf8_lossy(&output.stderr));
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&output.stdout))
        .map(|document| Value::deserialize(document).expect("rendered YAML"))
        .filter(|document| !document.is_null())
        .collect()
}

/// The roles bound to the controller's ServiceAccount, and a check that no binding names any
/// other subject (the search and ingest pods must get nothing).
fn controller_grants(documents: &[Value]) -> Vec<Grant> {
    let roles: BTreeMap<(String, String), &Value> = documents
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .map(|d| ((d["kind"].as_str().unwrap_or_default().to_string(), name_of(d)), d))
        .collect();
    let mut grants = Vec::new();
    for binding in documents.iter().filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding") {
        let subjects = binding["subjects"].as_array().expect("a binding has subjects");
        for subject in subjects {
            assert_eq!(
                (subject["kind"].as_str(), subject["name"].as_str(), subject["namespace"].as_str()),
                (Some("ServiceAccount"), Some(SERVICE_ACCOUNT), Some(NAMESPACE)),
                "{} binds a role to something other than the controller: {subject}",
                name_of(binding)
            );
        }
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or_default().to_string();
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default().to_string();
        let role = roles
            .get(&(role_kind.clone(), role_name.clone()))
            .unwrap_or_else(|| panic!("{} refers to {role_kind} {role_name}, which is not defined", name_of(binding)));
        let namespace = (binding["kind"] == "RoleBinding").then(|| NAMESPACE.to_string());
        let rules: Vec<Rule> = serde_json::from_value(role["rules"].clone()).expect("RBAC rules");
        grants.push(Grant { role: format!("{role_kind}/{role_name}"), namespace, rules });
    }
    grants
}

fn name_of(document: &Value) -> String {
    document["metadata"]["name"].as_str().unwrap_or_default().to_string()
}

fn resource_of(call: &Call) -> String {
    match &call.subresource {
        Some(sub) => format!("{}/{sub}", call.resource),
        None => call.resource.clone(),
    }
}

/// The permissions that allow `call`, as the API server's RBAC authorizer decides: a rule
/// matches on group, resource (with subresource), verb and, if it lists names, the object's
/// name; a Role only within its own namespace.
fn permissions_for(call: &Call, grants: &[Grant]) -> Vec<Permission> {
    let resource = resource_of(call);
    let mut found = Vec::new();
    for grant in grants {
        if grant.namespace.is_some() && grant.namespace != call.namespace {
            continue;
        }
        for (index, rule) in grant.rules.iter().enumerate() {
            let named = rule.resource_names.is_empty()
                || call.name.as_ref().is_some_and(|name| rule.resource_names.contains(name));
            if rule.api_groups.contains(&call.group)
                && rule.resources.contains(&resource)
                && rule.verbs.contains(&call.verb)
                && named
            {
                found.push((grant.role.clone(), index, call.group.clone(), resource.clone(), call.verb.clone()));
            }
        }
    }
    found
}

fn all_permissions(grants: &[Grant]) -> BTreeSet<Permission> {
    let mut all = BTreeSet::new();
    for grant in grants {
        for (index, rule) in grant.rules.iter().enumerate() {
            for group in &rule.api_groups {
                for resource in &rule.resources {
                    for verb in &rule.verbs {
                        all.insert((grant.role.clone(), index, group.clone(), resource.clone(), verb.clone()));
                    }
                }
            }
        }
    }
    all
}

async fn eventually<T>(what: &str, log: &Path, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; controller log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_controller_calls_only_what_its_rbac_grants_and_uses_every_grant() {
    let grants = controller_grants(&installed_objects());
    assert!(!grants.is_empty(), "manifests/base/rbac.yaml binds no role to the controller");

    let work = tempfile::tempdir().unwrap();
    let photos = work.path().join("volume/catalogue");
    std::fs::create_dir_all(&photos).unwrap();
    for name in ["astronaut.jpg", "coffee.jpg"] {
        std::fs::copy(common::photo(name), photos.join(name)).unwrap();
    }
    let (server, address, _api_task) = FakeApiServer::start().await;
    let claims = BTreeMap::from([("photos".to_string(), work.path().join("volume"))]);
    let binary = Path::new(env!("CARGO_BIN_EXE_imgsearch"));
    let (_kubelet, _kubelet_task) = SimulatedKubelet::start(server.clone(), binary, claims);

    // The controller binary, as the Deployment in manifests/base runs it, under its
    // ServiceAccount's user name.
    let user = format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}");
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, FakeApiServer::kubeconfig(address, &user, NAMESPACE)).unwrap();
    let log = work.path().join("controller.log");
    let mut controller = tokio::process::Command::new(binary)
        .arg("controller")
        .env("KUBECONFIG", &kubeconfig)
        .env("IMGSEARCH_IMAGE", "imgsearch:test")
        .env("IMGSEARCH_CONTROLLER_LISTEN", "127.0.0.1:0")
        .env("POD_NAMESPACE", NAMESPACE)
        .env("POD_NAME", "imgsearch-controller-0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start imgsearch controller");

    // What a user does, as another user: a catalog Secret and a collection with a schedule.
    let admin = FakeApiServer::client(address);
    let catalog_url = format!("sqlite://{}", work.path().join("catalog.db").display());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": "catalog" },
        "stringData": { "DATABASE_URL": catalog_url }
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), "shop").create(&PostParams::default(), &secret).await.unwrap();
    let spec: ImageCollectionSpec = serde_json::from_value(json!({
        "milvus": { "uri": common::milvus_uri() },
        "collectionName": common::unique_collection("rbac"),
        "source": { "pvc": { "claimName": "photos", "path": "/catalogue" } },
        "catalog": { "secretRef": { "name": "catalog" } },
        "ingest": { "schedule": "30 2 * * *", "historyLimit": 0 },
        "deletionPolicy": "Delete"
    }))
    .unwrap();
    let collections: Api<ImageCollection> = Api::namespaced(admin, "shop");
    collections.create(&PostParams::default(), &ImageCollection::new("photos", spec)).await.unwrap();
    let ready_at = |generation: i64| {
        let server = server.clone();
        move || {
            let object = server.object(COLLECTIONS, "shop", "photos")?;
            let status = &object["status"];
            (status["phase"] == "Ready"
                && status["observedGeneration"] == generation
                && status["images"]["indexed"] == 2)
                .then_some(())
        }
    };
    eventually("Ready with 2 images", &log, ready_at(1)).await;
    assert!(server.object("batch/v1/cronjobs", "shop", "photos-rescan").is_some(), "the rescan CronJob");

    // A spec change: a new generation's Job, the old one pruned (historyLimit 0), the
    // schedule's CronJob deleted.
    let change = json!({ "spec": { "ingest": { "schedule": null, "batchSize": 4 } } });
    collections.patch("photos", &PatchParams::default(), &Patch::Merge(change)).await.unwrap();
    eventually("generation 2 ingested", &log, ready_at(2)).await;
    eventually("the generation-1 Job pruned", &log, || {
        server.object("batch/v1/jobs", "shop", "photos-ingest-g1").is_none().then_some(())
    })
    .await;
    assert!(server.object("batch/v1/cronjobs", "shop", "photos-rescan").is_none(), "the CronJob went");

    // The pods it creates carry no API token.
    for (key, name) in [("batch/v1/jobs", "photos-ingest-g2"), ("apps/v1/deployments", "photos-search")] {
        let object = server.object(key, "shop", name).unwrap_or_else(|| panic!("{name} exists"));
        let pod = &object["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}: {pod}");
        assert!(pod.get("serviceAccountName").is_none(), "{name} runs as the namespace's default account");
    }

    // Deletion with cleanup (Milvus drop, catalog purge through the Secret), then shutdown.
    collections.delete("photos", &DeleteParams::default()).await.unwrap();
    eventually("the collection deleted", &log, || server.object(COLLECTIONS, "shop", "photos").is_none().then_some(()))
        .await;
    let pid = nix::unistd::Pid::from_raw(controller.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let exit = tokio::time::timeout(Duration::from_secs(20), controller.wait()).await.expect("exits").unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(exit.success(), "controller exit {exit}; log:\n{log_text}");
    assert!(log_text.contains("released the leader lease"), "the lease is released on shutdown:\n{log_text}");

    let calls: Vec<Call> = server.calls().into_iter().filter(|c| c.user == user).collect();
    assert!(calls.len() > 20, "the controller's calls were recorded under its user: {calls:?}");
    let mut denied = BTreeSet::new();
    let mut used = BTreeSet::new();
    for call in &calls {
        let allowing = permissions_for(call, &grants);
        if allowing.is_empty() {
            denied.insert(format!(
                "{} {}{} in {}{}",
                call.verb,
                if call.group.is_empty() { String::new() } else { format!("{}/", call.group) },
                resource_of(call),
                call.namespace.as_deref().unwrap_or("all namespaces"),
                call.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
            ));
        }
        used.extend(allowing);
    }
    assert!(denied.is_empty(), "calls the RBAC does not grant:\n{}", denied.into_iter().collect::<Vec<_>>().join("\n"));
    let unused: Vec<String> = all_permissions(&grants)
        .difference(&used)
        .map(|(role, rule, group, resource, verb)| format!("{role} rule {rule}: {verb} {group}/{resource}"))
        .collect();
    assert!(unused.is_empty(), "granted but never called (remove them):\n{}", unused.join("\n"));
}
