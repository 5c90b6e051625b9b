//! A node for the test control plane: what a kubelet (and, for binding, the scheduler) does for
//! the pods of one namespace, and nothing more. Creating pods from Jobs and ReplicaSets,
//! retries up to `backoffLimit`, rollouts, CronJob firing and garbage collection are the real
//! controllers' work in kube-controller-manager; this only runs the pods it is given.
//!
//! - It registers a Node and binds each pending pod of its namespace to it through the pod's
//!   `binding` subresource, as kube-scheduler would; a pod whose PersistentVolumeClaim has no
//!   local folder here stays unscheduled (`PodScheduled=False`, `Unschedulable`).
//! - It runs a bound pod's first container as a local process of the real `imgsearch` binary:
//!   the container's environment (values, Secret and ConfigMap keys, the downward API's
//!   `fieldRef`s, such as the `JOB_COMPLETION_INDEX` the Job controller injects), its mounts as
//!   path translations (a claim → the folder the test names, an emptyDir → a fresh folder, a
//!   ConfigMap → its keys as files, the image's model folder → the checkout's `model/`), and a
//!   free loopback port for a container that declares one (passed as `IMGSEARCH_LISTEN`: the
//!   pod network, reduced to loopback).
//! - An image the test marked as private ([`Node::require_pull_secret`]) is pulled only for a
//!   pod whose `imagePullSecrets` name an existing Secret of that name: otherwise the pod waits
//!   with `ErrImagePull`, then `ImagePullBackOff`, in the kubelet's words.
//! - It writes pod status as the kubelet does: Pending with `CreateContainerConfigError` while
//!   a Secret or key is missing, `ContainerCreating` (no message) and a `FailedMount` Warning
//!   Event while a ConfigMap volume's ConfigMap is missing (both retried), Running with the
//!   Ready condition from the container's HTTP readiness probe, and on exit `Succeeded` or `Failed` with the terminated
//!   state, exit code and termination message (the file, or with `FallbackToLogsOnError` the
//!   log's tail). A container of a `restartPolicy: Always` pod is started again.
//! - A pod being deleted gets SIGTERM; once its process has exited the node confirms the
//!   deletion (grace period 0, uid precondition), as the kubelet does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Node as NodeObject, Pod, PodSpec, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Where the container image keeps the model (src/controller/children.rs points the pods there).
const IMAGE_MODEL_DIR: &str = "/usr/share/imgsearch/model";

/// A container running as a local process.
struct Process {
    pod: String,
    child: Child,
    log: PathBuf,
    termination_message: PathBuf,
    address: Option<SocketAddr>,
    started_at: String,
    /// SIGTERM sent: the pod is being deleted.
    stopping: bool,
    restarts: i32,
    /// The readiness last written to the pod's status.
    ready: Option<bool>,
    /// Its emptyDir and ConfigMap folders, removed with it.
    _scratch: Vec<tempfile::TempDir>,
}

#[derive(Default)]
struct State {
    /// Pod uid → its process.
    running: HashMap<String, Process>,
    /// Pods whose container ended for good (their status written).
    ended: HashSet<String>,
    /// Pod uid → the waiting reason last written, so each is written once.
    waiting: HashMap<String, String>,
    /// Pod name → what its container wrote, kept once the process is gone, for messages.
    old_logs: BTreeMap<String, String>,
    /// Image → the pull Secret its registry needs.
    private_images: HashMap<String, String>,
    /// Pod uid → failed pulls of its image so far.
    pull_failures: HashMap<String, u32>,
    /// Pod name → when its process was seen gone after a deletion's SIGTERM.
    stopped: BTreeMap<String, k8s_openapi::jiff::Timestamp>,
}

/// What a container needs from the API before it starts: its environment, and the files of its
/// ConfigMap volumes (volume name → file name → content).
struct Prepared {
    env: Vec<(String, String)>,
    volume_files: HashMap<String, Vec<(String, String)>>,
}

/// Why a pod's container cannot start yet, in the kubelet's words.
struct Waiting {
    reason: &'static str,
    message: String,
    /// Said in a Warning Event about the pod instead of the container's waiting state, as the
    /// kubelet says a volume it cannot mount: its reason (`FailedMount`), with `message`.
    event: Option<&'static str>,
}

#[derive(Clone)]
pub struct Node {
    pub name: String,
    namespace: String,
    client: kube::Client,
    binary: PathBuf,
    claims: BTreeMap<String, PathBuf>,
    state: Arc<Mutex<State>>,
}

impl Node {
    /// Registers a Node named after `namespace` and runs that namespace's pods until the
    /// returned task is aborted (the test's runtime ending does that; so does the test thread
    /// ending, which kills the processes). `claims` maps PersistentVolumeClaim names to folders.
    pub async fn start(
        admin: kube::Client,
        namespace: &str,
        binary: &Path,
        claims: BTreeMap<String, PathBuf>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let name = format!("node-{namespace}");
        let nodes: Api<NodeObject> = Api::all(admin.clone());
        let object: NodeObject = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
        }))
        .expect("a Node");
        match nodes.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("register Node {name}: {e}"),
        }
        let now = now();
        let status = json!({ "status": {
            "capacity": { "cpu": "2", "memory": "24Gi", "pods": "110" },
            "allocatable": { "cpu": "2", "memory": "24Gi", "pods": "110" },
            "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady",
                             "message": "the test node runs pods as local processes",
                             "lastHeartbeatTime": now, "lastTransitionTime": now }],
            "addresses": [{ "type": "InternalIP", "address": "127.0.0.1" }]
        }});
        nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("Node status");

        let node = Self {
            name,
            namespace: namespace.into(),
            client: admin,
            binary: binary.into(),
            claims,
            state: Arc::default(),
        };
        let looping = node.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = looping.sync().await {
                    eprintln!("test node {}: {e}", looping.name);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        (node, task)
    }

    /// The loopback address serving the ready pod whose name starts with `prefix`.
    pub fn ready_address(&self, prefix: &str) -> Option<SocketAddr> {
        let state = self.lock();
        state.running.values().filter(|p| p.pod.starts_with(prefix) && p.ready == Some(true)).find_map(|p| p.address)
    }

    /// What the containers of pods whose names start with `prefix` wrote, for failure messages.
    pub fn logs(&self, prefix: &str) -> String {
        let state = self.lock();
        let mut logs = state.old_logs.clone();
        for process in state.running.values() {
            let text = std::fs::read_to_string(&process.log).unwrap_or_default();
            logs.entry(process.pod.clone()).or_default().push_str(&text);
        }
        let wanted: Vec<String> = logs
            .into_iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, log)| format!("--- pod {name} ---\n{log}"))
            .collect();
        if wanted.is_empty() { format!("(no pod {prefix}* ran)") } else { wanted.join("\n") }
    }

    /// From now on `image` can be pulled only by pods whose `imagePullSecrets` name `secret`,
    /// and only once that Secret exists in the namespace.
    pub fn require_pull_secret(&self, image: &str, secret: &str) {
        self.lock().private_images.insert(image.into(), secret.into());
    }

    /// When the last pod whose name starts with `prefix` stopped after being deleted (its
    /// process seen gone), if any did.
    pub fn last_stopped(&self, prefix: &str) -> Option<k8s_openapi::jiff::Timestamp> {
        self.lock().stopped.iter().filter(|(name, _)| name.starts_with(prefix)).map(|(_, at)| *at).max()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn sync(&self) -> Result<(), kube::Error> {
        let listed = self.pods().list(&ListParams::default()).await?;
        let mut present = HashSet::new();
        for pod in listed.items {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            present.insert(uid.clone());
            let spec = pod.spec.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                self.stop(&pod, &uid, &name).await?;
                continue;
            }
            match spec.node_name.as_deref() {
                None => {
                    self.schedule(&uid, &name, &spec).await?;
                    continue;
                }
                Some(node) if node != self.name => continue,
                Some(_) => {}
            }
            if self.lock().ended.contains(&uid) {
                continue;
            }
            if self.lock().running.contains_key(&uid) {
                self.tend(&pod, &uid, &name, &spec).await?;
            } else {
                self.run(&pod, &uid, &name, &spec, 0).await?;
            }
        }
        // A pod removed without the node's confirmation (a forced delete): its process goes too.
        let gone: Vec<String> = self.lock().running.keys().filter(|uid| !present.contains(*uid)).cloned().collect();
        for uid in gone {
            // (The guard is dropped before keep_log locks again.)
            let removed = self.lock().running.remove(&uid);
            if let Some(mut process) = removed {
                process.child.start_kill().ok();
                self.keep_log(&process);
            }
        }
        Ok(())
    }

    /// What kube-scheduler would do: bind the pod to this node, or say why it cannot.
    async fn schedule(&self, uid: &str, name: &str, spec: &PodSpec) -> Result<(), kube::Error> {
        let missing = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .find(|claim| !self.claims.contains_key(&claim.claim_name));
        if let Some(claim) = missing {
            let message = format!(
                "0/1 nodes are available: persistentvolumeclaim \"{}\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.",
                claim.claim_name
            );
            if self.lock().waiting.get(uid) != Some(&message) {
                let status = json!({ "status": { "phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                    "lastTransitionTime": now() }] } });
                self.pods().patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                self.lock().waiting.insert(uid.into(), message);
            }
            return Ok(());
        }
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": { "name": name },
            "target": { "apiVersion": "v1", "kind": "Node", "name": self.name }
        });
        match self.pods().create_subresource::<Value, Value>("binding", name, &PostParams::default(), &binding).await {
            Ok(_) => Ok(()),
            // Bound or deleted meanwhile: the next pass sees it as it is.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Starts the pod's container, or writes why it cannot start yet.
    async fn run(&self, pod: &Pod, uid: &str, name: &str, spec: &PodSpec, restarts: i32) -> Result<(), kube::Error> {
        let Some(container) = spec.containers.first() else { return Ok(()) };
        let started = match self.prepare(pod, spec, container).await? {
            Err(waiting) => Err(waiting),
            Ok(prepared) => self.spawn(name, spec, container, prepared, restarts).map_err(|e| Waiting {
                reason: "RunContainerError",
                message: format!("could not start the process: {e}"),
                event: None,
            }),
        };
        match started {
            Ok(process) => {
                let status = running_status(container, &process, false);
                self.lock().waiting.remove(uid);
                self.lock().running.insert(uid.into(), process);
                self.pods().patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
            }
            Err(waiting) => {
                let key = format!("{}: {}", waiting.reason, waiting.message);
                if self.lock().waiting.get(uid) != Some(&key) {
                    let status = waiting_status(container, &waiting);
                    self.pods().patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                    if let Some(reason) = waiting.event {
                        self.warn_about(pod, reason, &waiting.message).await?;
                    }
                    self.lock().waiting.insert(uid.into(), key);
                }
            }
        }
        Ok(())
    }

    /// A running pod: its exit, or its readiness.
    async fn tend(&self, pod: &Pod, uid: &str, name: &str, spec: &PodSpec) -> Result<(), kube::Error> {
        let Some(container) = spec.containers.first() else { return Ok(()) };
        let exit = {
            let mut state = self.lock();
            let Some(process) = state.running.get_mut(uid) else { return Ok(()) };
            match process.child.try_wait() {
                Ok(Some(status)) => Some(status.code().unwrap_or(-1)),
                Ok(None) => None,
                Err(_) => Some(-1),
            }
        };
        if let Some(code) = exit {
            let Some(process) = self.lock().running.remove(uid) else { return Ok(()) };
            let policy = spec.restart_policy.as_deref().unwrap_or("Always");
            if policy == "Always" || (policy == "OnFailure" && code != 0) {
                self.keep_log(&process);
                return self.run(pod, uid, name, spec, process.restarts + 1).await;
            }
            let message = termination_message(&process, container, code);
            let status = terminated_status(container, &process, code, &message);
            self.keep_log(&process);
            self.lock().ended.insert(uid.into());
            self.pods().patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
            return Ok(());
        }
        // Readiness, as the kubelet's probe sees it.
        let (address, last) = {
            let state = self.lock();
            let Some(process) = state.running.get(uid) else { return Ok(()) };
            (process.address, process.ready)
        };
        let path = container.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone());
        let ready = match (path, address) {
            (Some(path), Some(address)) => probe(address, &path).await,
            (Some(_), None) => false,
            (None, _) => true,
        };
        if last != Some(ready) {
            let status = {
                let mut state = self.lock();
                let Some(process) = state.running.get_mut(uid) else { return Ok(()) };
                process.ready = Some(ready);
                running_status(container, process, ready)
            };
            self.pods().patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        }
        Ok(())
    }

    /// Graceful deletion: SIGTERM, then, once the process has exited (at once for a pod that
    /// never started or has ended), the pod marked `Failed` unless it had ended, as the kubelet
    /// marks a deleted pod terminal (a Job with a pod failure policy waits for that before it
    /// replaces the pod), and the deletion confirmed.
    async fn stop(&self, pod: &Pod, uid: &str, name: &str) -> Result<(), kube::Error> {
        let exited = {
            let mut state = self.lock();
            match state.running.get_mut(uid) {
                Some(process) => {
                    if !process.stopping {
                        terminate(&process.child);
                        process.stopping = true;
                    }
                    matches!(process.child.try_wait(), Ok(Some(_)) | Err(_))
                }
                None => true,
            }
        };
        if !exited {
            return Ok(());
        }
        let removed = self.lock().running.remove(uid);
        if let Some(process) = removed {
            self.keep_log(&process);
            self.lock().stopped.insert(name.into(), k8s_openapi::jiff::Timestamp::now());
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !matches!(phase, Some("Succeeded" | "Failed")) {
            // A strategic merge keeps the conditions others set (an eviction's DisruptionTarget).
            let terminal = json!({ "status": { "phase": "Failed" } });
            match self.pods().patch_status(name, &PatchParams::default(), &Patch::Strategic(&terminal)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        let confirm = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: Some(uid.into()), resource_version: None }),
            ..DeleteParams::default()
        };
        match self.pods().delete(name, &confirm).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn keep_log(&self, process: &Process) {
        let text = std::fs::read_to_string(&process.log).unwrap_or_default();
        self.lock().old_logs.entry(process.pod.clone()).or_default().push_str(&text);
    }

    /// The container's environment as the kubelet makes it, or why it cannot start yet.
    async fn environment(
        &self,
        pod: &Pod,
        container: &Container,
    ) -> Result<Result<Vec<(String, String)>, Waiting>, kube::Error> {
        let mut env = Vec::new();
        for source in container.env_from.iter().flatten() {
            if let Some(reference) = &source.secret_ref {
                match self.secret(&reference.name).await? {
                    Some(data) => env.extend(data),
                    None if reference.optional == Some(true) => {}
                    None => return Ok(Err(config_error(format!("secret \"{}\" not found", reference.name)))),
                }
            }
            if let Some(reference) = &source.config_map_ref {
                match self.config_map(&reference.name).await? {
                    Some(data) => env.extend(data),
                    None if reference.optional == Some(true) => {}
                    None => return Ok(Err(config_error(format!("configmap \"{}\" not found", reference.name)))),
                }
            }
        }
        for variable in container.env.iter().flatten() {
            if let Some(value) = &variable.value {
                env.push((variable.name.clone(), value.clone()));
                continue;
            }
            let Some(from) = &variable.value_from else { continue };
            let (found, optional, what) = if let Some(reference) = &from.secret_key_ref {
                let data = self.secret(&reference.name).await?;
                let what = match &data {
                    None => format!("secret \"{}\" not found", reference.name),
                    Some(_) => {
                        format!("couldn't find key {} in Secret {}/{}", reference.key, self.namespace, reference.name)
                    }
                };
                (data.and_then(|d| d.get(&reference.key).cloned()), reference.optional == Some(true), what)
            } else if let Some(reference) = &from.config_map_key_ref {
                let data = self.config_map(&reference.name).await?;
                let what = match &data {
                    None => format!("configmap \"{}\" not found", reference.name),
                    Some(_) => {
                        format!(
                            "couldn't find key {} in ConfigMap {}/{}",
                            reference.key, self.namespace, reference.name
                        )
                    }
                };
                (data.and_then(|d| d.get(&reference.key).cloned()), reference.optional == Some(true), what)
            } else if let Some(field) = &from.field_ref {
                (field_value(pod, &self.name, &field.field_path), true, String::new())
            } else {
                (None, true, String::new())
            };
            match found {
                Some(value) => env.push((variable.name.clone(), value)),
                None if optional => {}
                None => return Ok(Err(config_error(what))),
            }
        }
        Ok(Ok(env))
    }

    /// The environment and the ConfigMap volumes' files, or why the container cannot start yet.
    async fn prepare(
        &self,
        pod: &Pod,
        spec: &PodSpec,
        container: &Container,
    ) -> Result<Result<Prepared, Waiting>, kube::Error> {
        if let Some(waiting) = self.pull(pod, spec, container).await? {
            return Ok(Err(waiting));
        }
        let env = match self.environment(pod, container).await? {
            Ok(env) => env,
            Err(waiting) => return Ok(Err(waiting)),
        };
        let mut volume_files = HashMap::new();
        for volume in spec.volumes.iter().flatten() {
            let Some(source) = &volume.config_map else { continue };
            let data = match self.config_map(&source.name).await? {
                Some(data) => data,
                None if source.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Ok(Err(Waiting {
                        reason: "ContainerCreating",
                        message: format!(
                            "MountVolume.SetUp failed for volume \"{}\" : configmap \"{}\" not found",
                            volume.name, source.name
                        ),
                        event: Some("FailedMount"),
                    }));
                }
            };
            let files: Vec<(String, String)> = match &source.items {
                Some(items) => items.iter().filter_map(|i| Some((i.path.clone(), data.get(&i.key)?.clone()))).collect(),
                None => data.into_iter().collect(),
            };
            volume_files.insert(volume.name.clone(), files);
        }
        Ok(Ok(Prepared { env, volume_files }))
    }

    /// The image pull, as the kubelet and a registry that wants credentials do it: the first
    /// failure is `ErrImagePull`, later ones `ImagePullBackOff`.
    async fn pull(&self, pod: &Pod, spec: &PodSpec, container: &Container) -> Result<Option<Waiting>, kube::Error> {
        let image = container.image.clone().unwrap_or_default();
        let Some(needed) = self.lock().private_images.get(&image).cloned() else { return Ok(None) };
        let named = spec.image_pull_secrets.iter().flatten().any(|s| s.name == needed);
        if named && self.secret(&needed).await?.is_some() {
            return Ok(None);
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let failures = {
            let mut state = self.lock();
            let count = state.pull_failures.entry(uid).or_default();
            *count += 1;
            *count
        };
        Ok(Some(if failures == 1 {
            Waiting {
                event: None,
                reason: "ErrImagePull",
                message: format!(
                    "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": pull access denied, repository does not exist or may require authorization: authorization failed: no basic auth credentials"
                ),
            }
        } else {
            Waiting { reason: "ImagePullBackOff", message: format!("Back-off pulling image \"{image}\""), event: None }
        }))
    }

    /// A Warning Event about `pod` from this node's kubelet (core/v1, as the kubelet writes them).
    async fn warn_about(&self, pod: &Pod, reason: &str, message: &str) -> Result<(), kube::Error> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
            "metadata": { "generateName": format!("{name}.") },
            "involvedObject": {
                "apiVersion": "v1", "kind": "Pod", "name": name, "namespace": self.namespace,
                "uid": pod.metadata.uid
            },
            "reason": reason, "message": message, "type": "Warning", "count": 1,
            "source": { "component": "kubelet", "host": self.name },
            "firstTimestamp": now(), "lastTimestamp": now()
        }))
        .expect("an Event");
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &event)
            .await?;
        Ok(())
    }

    async fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, kube::Error> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), &self.namespace).get_opt(name).await?;
        Ok(secret.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(key, bytes)| (key, String::from_utf8_lossy(&bytes.0).into_owned()))
                .collect()
        }))
    }

    async fn config_map(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, kube::Error> {
        let map = Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace).get_opt(name).await?;
        Ok(map.map(|m| m.data.unwrap_or_default()))
    }

    /// Starts the container as a local process, its mounts and environment translated.
    fn spawn(
        &self,
        pod: &str,
        spec: &PodSpec,
        container: &Container,
        Prepared { env, volume_files }: Prepared,
        restarts: i32,
    ) -> std::io::Result<Process> {
        let files = tempfile::tempdir()?;
        let termination_message = files.path().join("termination-log");
        let log = files.path().join("container.log");
        std::fs::write(&termination_message, "")?;
        let mut scratch = vec![files];
        let mut mounts: Vec<(String, PathBuf)> =
            vec![(IMAGE_MODEL_DIR.into(), Path::new(env!("CARGO_MANIFEST_DIR")).join("model"))];
        let termination_path = container.termination_message_path.clone().unwrap_or("/dev/termination-log".into());
        mounts.push((termination_path, termination_message.clone()));
        for mount in container.volume_mounts.iter().flatten() {
            let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name);
            let claim = volume.and_then(|v| v.persistent_volume_claim.as_ref());
            let local = if let Some(claim) = claim {
                self.claims
                    .get(&claim.claim_name)
                    .cloned()
                    .ok_or_else(|| std::io::Error::other(format!("no local folder for claim {}", claim.claim_name)))?
            } else {
                // An emptyDir, or a ConfigMap's keys as files.
                let folder = tempfile::tempdir()?;
                let path = folder.path().to_path_buf();
                for (file, content) in volume_files.get(&mount.name).into_iter().flatten() {
                    std::fs::write(path.join(file), content)?;
                }
                scratch.push(folder);
                path
            };
            mounts.push((mount.mount_path.clone(), local));
        }
        let translate = |text: &str| {
            let mut text = text.to_string();
            for (mount_path, local) in &mounts {
                for prefix in ["", "sqlite://"] {
                    let pattern = format!("{prefix}{mount_path}");
                    if text.starts_with(&pattern) {
                        text = format!("{prefix}{}{}", local.display(), &text[pattern.len()..]);
                    }
                }
            }
            text
        };
        let address = container
            .ports
            .as_ref()
            .filter(|ports| !ports.is_empty())
            .map(|_| -> std::io::Result<SocketAddr> {
                let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                Ok(([127, 0, 0, 1], port).into())
            })
            .transpose()?;
        let mut command = Command::new(&self.binary);
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for arg in container.command.iter().flatten().skip(1).chain(container.args.iter().flatten()) {
            command.arg(translate(arg));
        }
        for (name, value) in &env {
            command.env(name, translate(value));
        }
        if let Some(address) = address {
            command.env(imgsearch::env::LISTEN, address.to_string());
        }
        // The process dies with the test's thread, whatever way the test ends.
        super::die_with_this_thread(command.as_std_mut());
        Ok(Process {
            pod: pod.into(),
            child: command.spawn()?,
            log,
            termination_message,
            address,
            started_at: now(),
            stopping: false,
            restarts,
            ready: None,
            _scratch: scratch,
        })
    }
}

fn config_error(message: String) -> Waiting {
    Waiting { reason: "CreateContainerConfigError", message, event: None }
}

/// A downward-API field of the pod, as the kubelet resolves `fieldRef.fieldPath`.
fn field_value(pod: &Pod, node: &str, path: &str) -> Option<String> {
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        map.as_ref()?.get(key).cloned()
    };
    match path {
        "metadata.name" => pod.metadata.name.clone(),
        "metadata.namespace" => pod.metadata.namespace.clone(),
        "metadata.uid" => pod.metadata.uid.clone(),
        "spec.nodeName" => Some(node.into()),
        "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone(),
        "status.podIP" | "status.hostIP" => Some("127.0.0.1".into()),
        _ if path.starts_with("metadata.labels['") => keyed("metadata.labels['", &pod.metadata.labels),
        _ if path.starts_with("metadata.annotations['") => keyed("metadata.annotations['", &pod.metadata.annotations),
        _ => None,
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn condition(kind: &str, status: bool) -> Value {
    json!({ "type": kind, "status": if status { "True" } else { "False" }, "lastTransitionTime": now() })
}

fn running_status(container: &Container, process: &Process, ready: bool) -> Value {
    json!({ "status": {
        "phase": "Running",
        "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{ "ip": "127.0.0.1" }],
        "startTime": process.started_at,
        "conditions": [
            condition("PodScheduled", true), condition("Initialized", true),
            condition("ContainersReady", ready), condition("Ready", ready)
        ],
        "containerStatuses": [{
            "name": container.name, "image": container.image, "imageID": "", "started": true,
            "ready": ready, "restartCount": process.restarts,
            "state": { "running": { "startedAt": process.started_at } }
        }]
    }})
}

/// The pod's status while its container waits; a reason said in an Event leaves the waiting
/// state without a message, as the kubelet leaves `ContainerCreating`.
fn waiting_status(container: &Container, waiting: &Waiting) -> Value {
    let message = if waiting.event.is_some() { "" } else { waiting.message.as_str() };
    json!({ "status": {
        "phase": "Pending",
        "hostIP": "127.0.0.1",
        "conditions": [
            condition("PodScheduled", true), condition("Initialized", true),
            condition("ContainersReady", false), condition("Ready", false)
        ],
        "containerStatuses": [{
            "name": container.name, "image": container.image, "imageID": "", "started": false,
            "ready": false, "restartCount": 0,
            "state": { "waiting": { "reason": waiting.reason, "message": message } }
        }]
    }})
}

fn terminated_status(container: &Container, process: &Process, code: i32, message: &str) -> Value {
    json!({ "status": {
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "conditions": [
            condition("PodScheduled", true), condition("Initialized", true),
            condition("ContainersReady", false), condition("Ready", false)
        ],
        "containerStatuses": [{
            "name": container.name, "image": container.image, "imageID": "", "started": false,
            "ready": false, "restartCount": process.restarts,
            "state": { "terminated": {
                "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "message": message, "startedAt": process.started_at, "finishedAt": now()
            } }
        }]
    }})
}

/// The termination message as the kubelet reads it: the file (4 KiB at most), or with
/// `FallbackToLogsOnError` the log's last lines when the file is empty and the container failed.
fn termination_message(process: &Process, container: &Container, code: i32) -> String {
    let written = std::fs::read(&process.termination_message).unwrap_or_default();
    let written = String::from_utf8_lossy(&written[..written.len().min(4096)]).to_string();
    let fallback = container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
    if written.trim().is_empty() && code != 0 && fallback {
        let log = std::fs::read_to_string(&process.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    } else {
        written
    }
}

/// SIGTERM, as the kubelet stops a container gracefully.
fn terminate(child: &Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
}

/// An HTTP GET on loopback with a 2 s limit: answered 200?
async fn probe(address: SocketAddr, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(address)).await
    else {
        return false;
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response)).await;
    response.starts_with(b"HTTP/1.1 200")
}
