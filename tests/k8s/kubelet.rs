//! A simulated kubelet: runs the containers of the Jobs and Deployments stored in the fake API
//! server as local processes of the real `imgsearch` binary, and writes back the status a real
//! kubelet and the Job/Deployment controllers would.
//!
//! Mounts are path translations: a PersistentVolumeClaim maps to a local folder the test names,
//! an emptyDir to a fresh temporary folder, the container's termination-message file to a
//! temporary file, and the container image's model folder to the checkout's `model/`; Secrets
//! are read from `data`. Every pod is written as a Pod object (a Job's with the labels and
//! completion-index annotation the Job controller sets, and on exit the container's terminated
//! state with its termination message). One process stands for all replicas of a Deployment
//! (they would all bind the same port here); its address is reported so a test can call it.
//!
//! A pod that cannot start stays Pending and is retried, as on a node: a claim with no local
//! folder leaves it unschedulable (`PodScheduled=False`, `Unschedulable`), an image registered
//! as needing a pull secret the pod does not name gets `ErrImagePull` then `ImagePullBackOff`,
//! and a missing Secret or key gets `CreateContainerConfigError`, each with the kubelet's
//! message. A pod being deleted (its owner went, or it was deleted) gets SIGTERM and its object
//! is removed once the process has exited, as the kubelet confirms a graceful deletion.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::fake_apiserver::FakeApiServer;

const IMAGE_MODEL_DIR: &str = "/usr/share/imgsearch/model";
const PODS: &str = "v1/pods";

/// A container running as a local process.
struct Process {
    child: Child,
    /// Its stderr.
    log: PathBuf,
    /// Where its termination-message path points.
    termination_message: PathBuf,
    /// SIGTERM sent: the pod is being deleted.
    stopping: bool,
}

/// Why a pod's container cannot start yet, as the kubelet (or the scheduler) says it.
#[derive(Debug, Clone, PartialEq)]
enum Waiting {
    Unschedulable(String),
    Container { reason: &'static str, message: String },
}

/// A pod the kubelet holds: its object and its process once started.
struct PodRun {
    name: String,
    namespace: String,
    process: Option<Process>,
    /// Pull attempts that failed, for ErrImagePull then ImagePullBackOff.
    pull_failures: u32,
    /// The container's exit code, once it exited.
    exit: Option<i32>,
}

#[derive(Default)]
struct Running {
    /// Job uid → its pods (one per completion index).
    jobs: HashMap<String, Vec<PodRun>>,
    /// Job uid → pods of it that failed so far.
    job_failures: HashMap<String, u64>,
    finished_jobs: Vec<String>,
    /// Deployment uid → its pod and the address its process serves on.
    deployments: HashMap<String, (PodRun, SocketAddr)>,
    /// Deployment uid → logs of containers that exited and were restarted.
    previous_logs: HashMap<String, String>,
    scratch: Vec<tempfile::TempDir>,
}

#[derive(Clone)]
pub struct SimulatedKubelet {
    server: FakeApiServer,
    binary: PathBuf,
    claims: BTreeMap<String, PathBuf>,
    /// Images a registry gives out only with a pull secret: image → Secret name.
    private_images: Arc<Mutex<BTreeMap<String, String>>>,
    running: Arc<Mutex<Running>>,
}

impl SimulatedKubelet {
    /// `claims` maps PersistentVolumeClaim names to local folders.
    pub fn start(
        server: FakeApiServer,
        binary: &Path,
        claims: BTreeMap<String, PathBuf>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let kubelet = Self {
            server,
            binary: binary.to_path_buf(),
            claims,
            private_images: Arc::default(),
            running: Arc::default(),
        };
        let looping = kubelet.clone();
        let task = tokio::spawn(async move {
            loop {
                looping.sync().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        (kubelet, task)
    }

    /// From now on `image` can be pulled only by pods whose `imagePullSecrets` name `secret`
    /// and where that Secret exists.
    pub fn require_pull_secret(&self, image: &str, secret: &str) {
        self.private_images.lock().unwrap_or_else(|p| p.into_inner()).insert(image.into(), secret.into());
    }

    /// The address serving a Deployment, once its process is up.
    pub fn deployment_address(&self, namespace: &str, name: &str) -> Option<SocketAddr> {
        let object = self.server.object("apps/v1/deployments", namespace, name)?;
        let uid = object["metadata"]["uid"].as_str()?.to_string();
        let running = self.lock();
        running.deployments.get(&uid).filter(|(run, _)| run.process.is_some()).map(|(_, address)| *address)
    }

    /// What a Deployment's process wrote to stderr so far, for failure messages.
    pub fn deployment_log(&self, namespace: &str, name: &str) -> String {
        let Some(object) = self.server.object("apps/v1/deployments", namespace, name) else {
            return format!("(no Deployment {namespace}/{name})");
        };
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let running = self.lock();
        let previous = running.previous_logs.get(&uid).cloned().unwrap_or_default();
        match running.deployments.get(&uid).and_then(|(run, _)| run.process.as_ref()) {
            Some(process) => previous + &std::fs::read_to_string(&process.log).unwrap_or_default(),
            None => format!("{previous}(no process started)"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn sync(&self) {
        self.stop_deleted_pods();
        for job in self.server.objects("batch/v1/jobs") {
            self.sync_job(job).await;
        }
        for deployment in self.server.objects("apps/v1/deployments") {
            self.sync_deployment(deployment).await;
        }
    }

    /// Graceful deletion: SIGTERM to the process of each pod marked for deletion; the object
    /// goes once the process has exited (at once for a pod that never started or finished).
    fn stop_deleted_pods(&self) {
        for pod in self.server.objects(PODS) {
            if !pod["metadata"]["deletionTimestamp"].is_string() {
                continue;
            }
            let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
            let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let exited = {
                let mut running = self.lock();
                let Running { jobs, deployments, .. } = &mut *running;
                let held = jobs
                    .values_mut()
                    .flat_map(|pods| pods.iter_mut())
                    .chain(deployments.values_mut().map(|(pod, _)| pod))
                    .find(|run| run.name == name && run.namespace == namespace);
                match held.and_then(|run| run.process.as_mut()) {
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
            if exited {
                let mut running = self.lock();
                for pods in running.jobs.values_mut() {
                    pods.retain(|run| !(run.name == name && run.namespace == namespace));
                }
                running.jobs.retain(|_, pods| !pods.is_empty());
                running.deployments.retain(|_, (run, _)| !(run.name == name && run.namespace == namespace));
                drop(running);
                self.server.remove_now(PODS, &namespace, &name);
            }
        }
    }

    async fn sync_job(&self, mut job: Value) {
        let uid = job["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        if self.lock().finished_jobs.contains(&uid) {
            return;
        }
        let namespace = job["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let template = job["spec"]["template"]["spec"].clone();
        let started = self.lock().jobs.contains_key(&uid);
        if !started {
            // The Job controller creates every pod at once; pending ones count as active.
            let completions = job["spec"]["completions"].as_i64().unwrap_or(1);
            let mut pods = Vec::new();
            for index in 0..completions {
                let pod = job_pod(&job, index, 0);
                let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
                self.server.put(PODS, pod);
                pods.push(PodRun { name, namespace: namespace.clone(), process: None, pull_failures: 0, exit: None });
            }
            job["status"] = json!({ "active": completions, "startTime": "2026-01-01T00:00:00Z" });
            self.lock().jobs.insert(uid.clone(), pods);
            self.server.put("batch/v1/jobs", job);
            return;
        }
        // Start what has not started yet (a pod waiting for a Secret, a claim or an image).
        let waiting: Vec<(usize, String, u32)> = {
            let running = self.lock();
            let Some(pods) = running.jobs.get(&uid) else { return };
            pods.iter()
                .enumerate()
                .filter(|(_, run)| run.process.is_none())
                .map(|(index, run)| (index, run.name.clone(), run.pull_failures))
                .collect()
        };
        for (index, name, pull_failures) in waiting {
            let extra = [("JOB_COMPLETION_INDEX".to_string(), index.to_string())];
            let started = self.start_container(&namespace, &name, &template, &extra, pull_failures);
            let mut running = self.lock();
            let Some(run) = running.jobs.get_mut(&uid).and_then(|pods| pods.get_mut(index)) else { continue };
            match started {
                Ok(process) => run.process = Some(process),
                Err(Waiting::Container { reason: "ErrImagePull" | "ImagePullBackOff", .. }) => run.pull_failures += 1,
                Err(_) => {}
            }
        }
        // Collect exits. As the Job controller does, a failed pod is replaced by a new one for
        // its index until the Job's failures exceed `backoffLimit`; the Job completes when
        // every index has succeeded.
        let backoff_limit = job["spec"]["backoffLimit"].as_u64().unwrap_or(6);
        let mut exited = Vec::new();
        let mut replace = Vec::new();
        let (succeeded, active, failures, logs) = {
            let mut running = self.lock();
            let Running { jobs, job_failures, .. } = &mut *running;
            let Some(pods) = jobs.get_mut(&uid) else { return };
            let failures = job_failures.entry(uid.clone()).or_default();
            let mut logs = String::new();
            for (index, run) in pods.iter_mut().enumerate() {
                let Some(process) = run.process.as_mut() else { continue };
                if run.exit.is_some() {
                    continue;
                }
                let code = match process.child.try_wait() {
                    Ok(Some(status)) => status.code().unwrap_or(-1),
                    Ok(None) => continue,
                    Err(_) => -1,
                };
                run.exit = Some(code);
                exited.push((run.name.clone(), code, termination_message(process, code)));
                if code != 0 {
                    logs.push_str(&tail(&process.log));
                    *failures += 1;
                    if *failures <= backoff_limit {
                        replace.push(index);
                    }
                }
            }
            let succeeded = pods.iter().filter(|run| run.exit == Some(0)).count();
            let active = pods.iter().filter(|run| run.exit.is_none()).count();
            (succeeded, active, *failures, logs)
        };
        for (name, code, message) in exited {
            if let Some(pod) = self.server.object(PODS, &namespace, &name) {
                self.server.put(PODS, terminated_pod(&pod, code, &message));
            }
        }
        for index in &replace {
            let pod = job_pod(&job, *index as i64, failures);
            let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
            self.server.put(PODS, pod);
            let mut running = self.lock();
            if let Some(run) = running.jobs.get_mut(&uid).and_then(|pods| pods.get_mut(*index)) {
                *run = PodRun { name, namespace: namespace.clone(), process: None, pull_failures: 0, exit: None };
            }
        }
        let completions = job["spec"]["completions"].as_u64().unwrap_or(1) as usize;
        let active = active + replace.len();
        if succeeded == completions {
            job["status"] = json!({
                "succeeded": succeeded, "failed": failures, "startTime": "2026-01-01T00:00:00Z",
                "completionTime": "2026-01-01T00:01:00Z",
                "conditions": [{ "type": "Complete", "status": "True" }]
            });
            self.finish_job(&uid, job);
        } else if failures > backoff_limit {
            // The Job controller stops what still runs.
            for run in self.lock().jobs.get_mut(&uid).into_iter().flatten() {
                if let Some(process) = run.process.as_mut().filter(|_| run.exit.is_none()) {
                    terminate(&process.child);
                }
            }
            let mut status =
                failed_status(&format!("Job has reached the specified backoff limit; last failures: {logs}"));
            status["failed"] = json!(failures);
            status["succeeded"] = json!(succeeded);
            job["status"] = status;
            self.finish_job(&uid, job);
        } else {
            let counts = (job["status"]["active"].as_u64(), job["status"]["failed"].as_u64());
            if counts != (Some(active as u64), Some(failures)) {
                job["status"] = json!({
                    "active": active, "succeeded": succeeded, "failed": failures, "startTime": "2026-01-01T00:00:00Z"
                });
                self.server.put("batch/v1/jobs", job);
            }
        }
    }

    fn finish_job(&self, uid: &str, job: Value) {
        let mut running = self.lock();
        running.jobs.remove(uid);
        running.finished_jobs.push(uid.to_string());
        drop(running);
        self.server.put("batch/v1/jobs", job);
    }

    async fn sync_deployment(&self, mut deployment: Value) {
        let uid = deployment["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let namespace = deployment["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = deployment["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
        let template = deployment["spec"]["template"]["spec"].clone();
        let known = self.lock().deployments.get(&uid).map(|(run, address)| (run.name.clone(), *address));
        let Some((pod_name, address)) = known else {
            if replicas == 0 {
                return;
            }
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0);
            let address: SocketAddr = ([127, 0, 0, 1], port).into();
            let pod = deployment_pod(&deployment);
            let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
            self.server.put(PODS, pod);
            let run = PodRun { name: pod_name, namespace, process: None, pull_failures: 0, exit: None };
            self.lock().deployments.insert(uid, (run, address));
            return;
        };
        let extra = [("IMGSEARCH_LISTEN".to_string(), address.to_string())];
        // Not started yet (waiting for what it needs), or exited: restartPolicy Always starts
        // it again, its log kept.
        let (needs_start, exited, pull_failures) = {
            let mut running = self.lock();
            let Some((run, _)) = running.deployments.get_mut(&uid) else { return };
            match run.process.as_mut() {
                None => (true, false, run.pull_failures),
                Some(process) if process.stopping => (false, false, 0),
                Some(process) => {
                    let exited = matches!(process.child.try_wait(), Ok(Some(_)));
                    (exited, exited, 0)
                }
            }
        };
        if needs_start {
            let previous = if exited { Some(self.deployment_log(&namespace, &name)) } else { None };
            let started = self.start_container(&namespace, &pod_name, &template, &extra, pull_failures);
            let mut running = self.lock();
            if let Some((run, _)) = running.deployments.get_mut(&uid) {
                match started {
                    Ok(process) => run.process = Some(process),
                    Err(Waiting::Container { reason: "ErrImagePull" | "ImagePullBackOff", .. }) => {
                        run.pull_failures += 1
                    }
                    Err(_) => {}
                }
            }
            if let Some(previous) = previous {
                running.previous_logs.insert(uid.clone(), format!("{previous}--- container exited; restarted ---\n"));
            }
        }
        // Readiness as the kubelet's probe would see it.
        let ready = probe(address, "/readyz").await;
        let available = if ready { replicas } else { 0 };
        if deployment["status"]["availableReplicas"].as_i64() != Some(available) {
            deployment["status"] = json!({ "replicas": replicas, "readyReplicas": available, "availableReplicas": available, "observedGeneration": deployment["metadata"]["generation"] });
            self.server.put("apps/v1/deployments", deployment);
        }
    }

    /// Starts the pod's container, writing the Pod object's status either way: Running, or
    /// Pending with why it cannot start.
    fn start_container(
        &self,
        namespace: &str,
        pod_name: &str,
        template: &Value,
        extra_env: &[(String, String)],
        pull_failures: u32,
    ) -> Result<Process, Waiting> {
        let started = self.spawn_pod(namespace, template, extra_env, pull_failures);
        if let Some(mut pod) = self.server.object(PODS, namespace, pod_name)
            && !pod["metadata"]["deletionTimestamp"].is_string()
        {
            pod["spec"] = template.clone();
            pod["status"] = match &started {
                Ok(_) => running_status(template),
                Err(waiting) => waiting_status(template, waiting),
            };
            self.server.put(PODS, pod);
        }
        started
    }

    /// Starts the pod's first container as a local process with its env and mounts translated.
    fn spawn_pod(
        &self,
        namespace: &str,
        pod: &Value,
        extra_env: &[(String, String)],
        pull_failures: u32,
    ) -> Result<Process, Waiting> {
        self.admit(namespace, pod, pull_failures)?;
        self.spawn_container(namespace, pod, extra_env).map_err(|error| Waiting::Container {
            reason: "RunContainerError",
            message: format!("could not start the process: {error}"),
        })
    }

    /// What the scheduler and the kubelet check before a container runs, in their order:
    /// claims, the image pull, then the Secrets its environment names.
    fn admit(&self, namespace: &str, pod: &Value, pull_failures: u32) -> Result<(), Waiting> {
        for volume in pod["volumes"].as_array().cloned().unwrap_or_default() {
            if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str()
                && !self.claims.contains_key(claim)
            {
                return Err(Waiting::Unschedulable(format!(
                    "0/1 nodes are available: persistentvolumeclaim \"{claim}\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
                )));
            }
        }
        let container = &pod["containers"][0];
        let image = container["image"].as_str().unwrap_or_default();
        let needed = self.private_images.lock().unwrap_or_else(|p| p.into_inner()).get(image).cloned();
        if let Some(secret) = needed {
            let named = pod["imagePullSecrets"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == secret));
            if !named || self.server.object("v1/secrets", namespace, &secret).is_none() {
                return Err(if pull_failures == 0 {
                    Waiting::Container {
                        reason: "ErrImagePull",
                        message: format!(
                            "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": pull access denied, repository does not exist or may require authorization: authorization failed: no basic auth credentials"
                        ),
                    }
                } else {
                    Waiting::Container {
                        reason: "ImagePullBackOff",
                        message: format!("Back-off pulling image \"{image}\""),
                    }
                });
            }
        }
        for variable in container["env"].as_array().cloned().unwrap_or_default() {
            let reference = &variable["valueFrom"]["secretKeyRef"];
            if !reference.is_object() || reference["optional"] == true {
                continue;
            }
            let name = reference["name"].as_str().unwrap_or_default();
            let key = reference["key"].as_str().unwrap_or_default();
            let Some(secret) = self.server.object("v1/secrets", namespace, name) else {
                return Err(Waiting::Container {
                    reason: "CreateContainerConfigError",
                    message: format!("secret \"{name}\" not found"),
                });
            };
            if !secret["data"][key].is_string() {
                return Err(Waiting::Container {
                    reason: "CreateContainerConfigError",
                    message: format!("couldn't find key {key} in Secret {namespace}/{name}"),
                });
            }
        }
        Ok(())
    }

    fn spawn_container(
        &self,
        namespace: &str,
        pod: &Value,
        extra_env: &[(String, String)],
    ) -> std::io::Result<Process> {
        let container = &pod["containers"][0];
        let mut mounts: Vec<(String, PathBuf)> =
            vec![(IMAGE_MODEL_DIR.to_string(), Path::new(env!("CARGO_MANIFEST_DIR")).join("model"))];
        let files = tempfile::tempdir()?;
        let termination_message = files.path().join("termination-log");
        let log = files.path().join("container.log");
        self.lock().scratch.push(files);
        std::fs::write(&termination_message, "")?;
        let termination_path = container["terminationMessagePath"].as_str().unwrap_or("/dev/termination-log");
        mounts.push((termination_path.to_string(), termination_message.clone()));
        for mount in container["volumeMounts"].as_array().cloned().unwrap_or_default() {
            let volume_name = mount["name"].as_str().unwrap_or_default();
            let volume = pod["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == volume_name))
                .cloned()
                .unwrap_or_default();
            let local = if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
                self.claims
                    .get(claim)
                    .cloned()
                    .ok_or_else(|| std::io::Error::other(format!("no local folder for claim {claim}")))?
            } else {
                let scratch = tempfile::tempdir()?;
                let path = scratch.path().to_path_buf();
                self.lock().scratch.push(scratch);
                path
            };
            mounts.push((mount["mountPath"].as_str().unwrap_or_default().to_string(), local));
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
        let mut command = Command::new(&self.binary);
        let log_file = std::fs::File::create(&log)?;
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for arg in container["args"].as_array().cloned().unwrap_or_default() {
            command.arg(translate(arg.as_str().unwrap_or_default()));
        }
        for variable in container["env"].as_array().cloned().unwrap_or_default() {
            let name = variable["name"].as_str().unwrap_or_default();
            let value = match (&variable["value"], &variable["valueFrom"]["secretKeyRef"]) {
                (Value::String(value), _) => Some(value.clone()),
                (_, Value::Object(reference)) => self.secret_value(
                    namespace,
                    reference["name"].as_str().unwrap_or_default(),
                    reference["key"].as_str().unwrap_or_default(),
                ),
                _ => None,
            };
            if let Some(value) = value {
                command.env(name, translate(&value));
            }
        }
        for (name, value) in extra_env {
            command.env(name, value);
        }
        Ok(Process { child: command.spawn()?, log, termination_message, stopping: false })
    }

    fn secret_value(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        let secret = self.server.object("v1/secrets", namespace, name)?;
        let bytes: k8s_openapi::ByteString = serde_json::from_value(secret["data"][key].clone()).ok()?;
        String::from_utf8(bytes.0).ok()
    }
}

/// The Pod the Job controller would create for completion `index`, the `attempt`-th
/// replacement after failures (0 for the first).
fn job_pod(job: &Value, index: i64, attempt: u64) -> Value {
    let job_name = job["metadata"]["name"].as_str().unwrap_or_default();
    let name =
        if attempt == 0 { format!("{job_name}-{index}-sim") } else { format!("{job_name}-{index}-sim-{attempt}") };
    let mut pod = owned_pod(job, "batch/v1", "Job", name);
    let labels = &mut pod["metadata"]["labels"];
    labels["batch.kubernetes.io/job-name"] = json!(job_name);
    labels["job-name"] = json!(job_name);
    labels["batch.kubernetes.io/job-completion-index"] = json!(index.to_string());
    pod["metadata"]["annotations"] = json!({ "batch.kubernetes.io/job-completion-index": index.to_string() });
    pod
}

/// The one Pod standing for a Deployment's replicas.
fn deployment_pod(deployment: &Value) -> Value {
    let name = format!("{}-sim", deployment["metadata"]["name"].as_str().unwrap_or_default());
    owned_pod(deployment, "apps/v1", "Deployment", name)
}

/// A Pending Pod from `owner`'s template, owned by it, created now (as the API server stamps
/// it: the controller's start-up grace period is measured from it).
fn owned_pod(owner: &Value, api_version: &str, kind: &str, name: String) -> Value {
    let mut labels = owner["spec"]["template"]["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": owner["metadata"]["namespace"],
            "labels": labels,
            "creationTimestamp": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "ownerReferences": [{
                "apiVersion": api_version, "kind": kind, "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"], "controller": true
            }]
        },
        "spec": owner["spec"]["template"]["spec"],
        "status": { "phase": "Pending" }
    })
}

fn container_name(template: &Value) -> Value {
    template["containers"][0]["name"].clone()
}

fn running_status(template: &Value) -> Value {
    json!({
        "phase": "Running",
        "conditions": [{ "type": "PodScheduled", "status": "True" }],
        "containerStatuses": [{
            "name": container_name(template), "image": template["containers"][0]["image"], "imageID": "",
            "ready": true, "restartCount": 0, "state": { "running": { "startedAt": "2026-01-01T00:00:00Z" } }
        }]
    })
}

fn waiting_status(template: &Value, waiting: &Waiting) -> Value {
    match waiting {
        Waiting::Unschedulable(message) => json!({
            "phase": "Pending",
            "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message }]
        }),
        Waiting::Container { reason, message } => json!({
            "phase": "Pending",
            "conditions": [{ "type": "PodScheduled", "status": "True" }],
            "containerStatuses": [{
                "name": container_name(template), "image": template["containers"][0]["image"], "imageID": "",
                "ready": false, "restartCount": 0, "state": { "waiting": { "reason": reason, "message": message } }
            }]
        }),
    }
}

/// SIGTERM, as the kubelet stops a container gracefully.
fn terminate(child: &Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
}

/// The pod after its container exited with `code`.
fn terminated_pod(pod: &Value, code: i32, message: &str) -> Value {
    let mut pod = pod.clone();
    let container = pod["spec"]["containers"][0]["name"].clone();
    pod["status"] = json!({
        "phase": if code == 0 { "Succeeded" } else { "Failed" },
        "containerStatuses": [{
            "name": container, "image": "", "imageID": "", "ready": false, "restartCount": 0,
            "state": { "terminated": {
                "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }, "message": message
            } }
        }]
    });
    pod
}

/// The container's termination message as the kubelet reads it: the file (4 KiB at most), or,
/// with `FallbackToLogsOnError` (what the controller sets), the log's tail when the file is
/// empty and the container failed.
fn termination_message(process: &Process, code: i32) -> String {
    let written = std::fs::read(&process.termination_message).unwrap_or_default();
    let written = String::from_utf8_lossy(&written[..written.len().min(4096)]).to_string();
    if written.trim().is_empty() && code != 0 { tail(&process.log) } else { written }
}

/// The last lines a container wrote, for failure messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

fn failed_status(message: &str) -> Value {
    json!({ "failed": 1, "conditions": [{ "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": message }] })
}

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
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    response.starts_with(b"HTTP/1.1 200")
}
