//! A simulated kubelet: runs the containers of the Jobs and Deployments stored in the fake API
//! server as local processes of the real `imgsearch` binary, and writes back the status a real
//! kubelet and the Job/Deployment controllers would.
//!
//! Mounts are path translations: a PersistentVolumeClaim maps to a local folder the test names,
//! an emptyDir to a fresh temporary folder, the container's termination-message file to a
//! temporary file, and the container image's model folder to the checkout's `model/`; Secrets
//! are read from `data`. Each Job pod is also
//! written as a Pod object (labels and completion-index annotation as the Job controller sets
//! them, and on exit the container's terminated state with its termination message). One
//! process stands for all replicas of a Deployment (they would all bind the same port here),
//! and no Pod objects are written for Deployments; its address is reported so a test can call it.

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

/// A container running as a local process.
struct Process {
    child: Child,
    /// Its stderr.
    log: PathBuf,
    /// Where its termination-message path points.
    termination_message: PathBuf,
}

#[derive(Default)]
struct Running {
    /// Job uid → its pods (one per completion index) with their Pod objects.
    jobs: HashMap<String, Vec<(Process, Value)>>,
    finished_jobs: Vec<String>,
    /// Deployment uid → process and address.
    deployments: HashMap<String, (Process, SocketAddr)>,
    /// Deployment uid → logs of containers that exited and were restarted.
    previous_logs: HashMap<String, String>,
    scratch: Vec<tempfile::TempDir>,
}

#[derive(Clone)]
pub struct SimulatedKubelet {
    server: FakeApiServer,
    binary: PathBuf,
    claims: BTreeMap<String, PathBuf>,
    running: Arc<Mutex<Running>>,
}

impl SimulatedKubelet {
    /// `claims` maps PersistentVolumeClaim names to local folders.
    pub fn start(
        server: FakeApiServer,
        binary: &Path,
        claims: BTreeMap<String, PathBuf>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let kubelet = Self { server, binary: binary.to_path_buf(), claims, running: Arc::default() };
        let looping = kubelet.clone();
        let task = tokio::spawn(async move {
            loop {
                looping.sync().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        (kubelet, task)
    }

    /// The address serving a Deployment, once its process is up.
    pub fn deployment_address(&self, namespace: &str, name: &str) -> Option<SocketAddr> {
        let object = self.server.object("apps/v1/deployments", namespace, name)?;
        let uid = object["metadata"]["uid"].as_str()?.to_string();
        self.lock().deployments.get(&uid).map(|(_, address)| *address)
    }

    /// What a Deployment's process wrote to stderr so far, for failure messages.
    pub fn deployment_log(&self, namespace: &str, name: &str) -> String {
        let Some(object) = self.server.object("apps/v1/deployments", namespace, name) else {
            return format!("(no Deployment {namespace}/{name})");
        };
        let uid = object["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let running = self.lock();
        let previous = running.previous_logs.get(&uid).cloned().unwrap_or_default();
        match running.deployments.get(&uid) {
            Some((process, _)) => previous + &std::fs::read_to_string(&process.log).unwrap_or_default(),
            None => "(no process started)".into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn sync(&self) {
        for job in self.server.objects("batch/v1/jobs") {
            self.sync_job(job).await;
        }
        for deployment in self.server.objects("apps/v1/deployments") {
            self.sync_deployment(deployment).await;
        }
    }

    async fn sync_job(&self, mut job: Value) {
        let uid = job["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        if self.lock().finished_jobs.contains(&uid) {
            return;
        }
        let namespace = job["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let started = self.lock().jobs.contains_key(&uid);
        if !started {
            let completions = job["spec"]["completions"].as_i64().unwrap_or(1);
            let mut pods = Vec::new();
            for index in 0..completions {
                let extra = [("JOB_COMPLETION_INDEX".to_string(), index.to_string())];
                match self.spawn_pod(&namespace, &job["spec"]["template"]["spec"], &extra) {
                    Ok(process) => {
                        let pod = job_pod(&job, index);
                        self.server.put("v1/pods", pod.clone());
                        pods.push((process, pod));
                    }
                    Err(error) => {
                        job["status"] = failed_status(&format!("could not start pod: {error}"));
                        self.finish_job(&uid, job);
                        return;
                    }
                }
            }
            job["status"] = json!({ "active": completions, "startTime": "2026-01-01T00:00:00Z" });
            self.lock().jobs.insert(uid.clone(), pods);
            self.server.put("batch/v1/jobs", job);
            return;
        }
        // Collect exit codes; a Job completes when every index succeeded.
        let outcome = {
            let mut running = self.lock();
            let Some(pods) = running.jobs.get_mut(&uid) else { return };
            let mut codes = Vec::new();
            let mut logs = String::new();
            let mut finished_pods = Vec::new();
            for (process, pod) in pods.iter_mut() {
                match process.child.try_wait() {
                    Ok(Some(status)) => {
                        let code = status.code().unwrap_or(-1);
                        if code != 0 {
                            logs.push_str(&tail(&process.log));
                        }
                        codes.push(code);
                        finished_pods.push(terminated_pod(pod, code, &termination_message(process, code)));
                    }
                    Ok(None) => return,
                    Err(_) => codes.push(-1),
                }
            }
            (codes, logs, finished_pods)
        };
        let (outcome, logs, finished_pods) = outcome;
        for pod in finished_pods {
            self.server.put("v1/pods", pod);
        }
        let succeeded = outcome.iter().filter(|c| **c == 0).count();
        job["status"] = if succeeded == outcome.len() {
            json!({
                "succeeded": succeeded, "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:00Z",
                "conditions": [{ "type": "Complete", "status": "True" }]
            })
        } else {
            failed_status(&format!(
                "{} of {} pods failed (exit codes {outcome:?}): {logs}",
                outcome.len() - succeeded,
                outcome.len()
            ))
        };
        self.finish_job(&uid, job);
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
        let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
        let address = self.lock().deployments.get(&uid).map(|(_, address)| *address);
        let Some(address) = address else {
            if replicas == 0 {
                return;
            }
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0);
            let address: SocketAddr = ([127, 0, 0, 1], port).into();
            let extra = [("IMGSEARCH_LISTEN".to_string(), address.to_string())];
            if let Ok(process) = self.spawn_pod(&namespace, &deployment["spec"]["template"]["spec"], &extra) {
                self.lock().deployments.insert(uid, (process, address));
            }
            return;
        };
        // restartPolicy Always: a container that exited is started again, its log kept.
        let exited = {
            let mut running = self.lock();
            running
                .deployments
                .get_mut(&uid)
                .is_some_and(|(process, _)| matches!(process.child.try_wait(), Ok(Some(_))))
        };
        if exited {
            let previous = self.deployment_log(&namespace, deployment["metadata"]["name"].as_str().unwrap_or_default());
            let extra = [("IMGSEARCH_LISTEN".to_string(), address.to_string())];
            if let Ok(process) = self.spawn_pod(&namespace, &deployment["spec"]["template"]["spec"], &extra) {
                let mut running = self.lock();
                running.previous_logs.insert(uid.clone(), format!("{previous}--- container exited; restarted ---\n"));
                running.deployments.insert(uid.clone(), (process, address));
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

    /// Starts the pod's first container as a local process with its env and mounts translated.
    fn spawn_pod(&self, namespace: &str, pod: &Value, extra_env: &[(String, String)]) -> std::io::Result<Process> {
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
        Ok(Process { child: command.spawn()?, log, termination_message })
    }

    fn secret_value(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        let secret = self.server.object("v1/secrets", namespace, name)?;
        let bytes: k8s_openapi::ByteString = serde_json::from_value(secret["data"][key].clone()).ok()?;
        String::from_utf8(bytes.0).ok()
    }
}

/// The Pod the Job controller would create for completion `index`.
fn job_pod(job: &Value, index: i64) -> Value {
    let name = job["metadata"]["name"].as_str().unwrap_or_default();
    let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels["batch.kubernetes.io/job-name"] = json!(name);
    labels["job-name"] = json!(name);
    labels["batch.kubernetes.io/job-completion-index"] = json!(index.to_string());
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("{name}-{index}-sim"),
            "namespace": job["metadata"]["namespace"],
            "labels": labels,
            "annotations": { "batch.kubernetes.io/job-completion-index": index.to_string() },
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": name,
                "uid": job["metadata"]["uid"], "controller": true
            }]
        },
        "spec": job["spec"]["template"]["spec"],
        "status": { "phase": "Running" }
    })
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
