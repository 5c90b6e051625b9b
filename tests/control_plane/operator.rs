//! The operator on the test control plane: installing it as a user does, running the real
//! `imgsearch controller` binary under its ServiceAccount, and waiting for what it should do.
//! Shared by the test binaries that run the operator on a real control plane.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use imgsearch::crd::ImageCollection;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

use super::ControlPlane;

pub const OPERATOR_NAMESPACE: &str = "imgsearch-system";
pub const OPERATOR_ACCOUNT: &str = "imgsearch-controller";

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `check` every 250 ms until it gives a value; panics with `what` and the last state
/// `describe` gives at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) if tokio::time::Instant::now() >= until => {
                panic!("{what} did not happen within {} s; last seen: {state}", deadline.as_secs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// `kubectl kustomize manifests | kubectl apply --server-side -f -` once per binary: the CRD,
/// the operator's namespace, ServiceAccount, roles and bindings, its Deployment, Service and
/// PodDisruptionBudget, exactly as a user installs them.
pub fn install_operator(plane: &ControlPlane) {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| apply_manifests(plane));
}

/// The install itself, each time it is called (after an uninstall, a user installs again).
pub fn apply_manifests(plane: &ControlPlane) {
    let (ok, rendered, err) = plane.run_kubectl(&["kustomize", "manifests"], None);
    assert!(ok, "kubectl kustomize manifests failed: {err}");
    let (ok, out, err) = plane
        .run_kubectl(&["apply", "--server-side", "--field-manager=installer", "-f", "-"], Some(rendered.as_bytes()));
    assert!(ok, "the real API server refused the install (kubectl kustomize manifests):\n{err}\n{out}");
    let (ok, _, err) = plane.run_kubectl(
        &["wait", "--for=condition=Established", "crd/imagecollections.imgsearch.io", "--timeout=60s"],
        None,
    );
    assert!(ok, "the CRD was not Established within 60 s: {err}");
}

/// A namespace that enforces the `restricted` Pod Security Standard, as a locked-down cluster's
/// namespaces do: every pod the operator's Jobs and Deployments make passes the real
/// PodSecurity admission or is refused (and the tests that need it fail).
pub async fn create_namespace(client: &kube::Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": name, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest"
    } } }))
    .expect("a namespace");
    match namespaces.create(&PostParams::default(), &namespace).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

/// A namespace of its own for a test: `purpose` plus this process's id.
pub fn test_namespace(purpose: &str) -> String {
    format!("{purpose}-{}", std::process::id())
}

/// The real `imgsearch controller`, as manifests/base/deployment.yaml runs it (leader election
/// on, in imgsearch-system, as `identity`), authenticated by `kubeconfig`. Killed when dropped,
/// and when the test's thread ends however it ends.
pub fn start_controller(kubeconfig: &Path, log: &Path, identity: &str) -> tokio::process::Child {
    start_controller_with(kubeconfig, log, identity, &[])
}

/// [`start_controller`] with more environment variables (its flags).
pub fn start_controller_with(
    kubeconfig: &Path,
    log: &Path,
    identity: &str,
    env: &[(&str, &str)],
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_imgsearch"));
    super::die_with_this_thread(command.as_std_mut());
    command
        .arg("controller")
        .env("KUBECONFIG", kubeconfig)
        .env("IMGSEARCH_IMAGE", "imgsearch:test")
        .env("IMGSEARCH_CONTROLLER_LISTEN", "127.0.0.1:0")
        .env("POD_NAMESPACE", OPERATOR_NAMESPACE)
        .env("POD_NAME", identity)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("controller log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start imgsearch controller")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind)
}

pub async fn node_with_photos(
    admin: &kube::Client,
    namespace: &str,
    work: &Path,
    photos: &[&str],
) -> (super::node::Node, tokio::task::JoinHandle<()>) {
    let folder = work.join("volume");
    std::fs::create_dir_all(&folder).expect("create the claim's folder");
    for name in photos {
        std::fs::copy(crate::common::photo(name), folder.join(name)).expect("copy a photo");
    }
    let claims = std::collections::BTreeMap::from([("photos".to_string(), folder)]);
    super::node::Node::start(admin.clone(), namespace, Path::new(env!("CARGO_BIN_EXE_imgsearch")), claims).await
}

/// The collection's status once `check` holds for it, or a failure naming `what` with the last
/// status and the controller's log.
pub async fn status_where(
    collections: &Api<ImageCollection>,
    name: &str,
    log: &Path,
    what: &str,
    deadline: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, deadline, || {
        let collections = collections.clone();
        let log = log.to_path_buf();
        let check = &check;
        async move {
            let object = collections.get(name).await.map_err(|e| e.to_string())?;
            let object = serde_json::to_value(object).map_err(|e| e.to_string())?;
            if check(&object) {
                Ok(object)
            } else {
                Err(format!("{}\ncontroller log:\n{}", object["status"], read(&log)))
            }
        }
    })
    .await
}

/// Waits until `name` is gone from `api`; at the deadline, a failure naming `what` with the
/// object's last state and whatever `context` adds (a log).
pub async fn gone<K>(api: &Api<K>, name: &str, what: &str, deadline: Duration, context: impl Fn() -> String)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(what, deadline, || {
        let api = api.clone();
        let context = &context;
        async move {
            match api.get_opt(name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(object) => Err(format!("{object:?}\n{}", context())),
            }
        }
    })
    .await
}

/// Deletes the collection and waits until the controller has let it go.
pub async fn delete_and_wait(collections: &Api<ImageCollection>, name: &str, log: &Path) {
    collections.delete(name, &DeleteParams::default()).await.expect("delete the collection");
    gone(collections, name, "the collection gone", Duration::from_secs(120), || {
        format!("controller log:\n{}", read(log))
    })
    .await;
}

pub async fn stop(mut controller: tokio::process::Child) {
    // SIGTERM: the controller releases its Lease on the way out, so the next one need not wait.
    if let Some(pid) = controller.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(30), controller.wait()).await {
        Ok(_) => {}
        Err(_) => panic!("the controller did not exit within 30 s of SIGTERM"),
    }
}
