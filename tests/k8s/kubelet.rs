//! A simulated kubelet: runs the containers of the Jobs and Deployments stored in the fake API
//! server as local processes of the real `imgsearch` binary, and writes back the status a real
//! kubelet and the Job/Deployment controllers would.
//!
//! Mounts are path translations: a PersistentVolumeClaim maps to a local folder the test names,
//! an emptyDir to a fresh temporary folder, and the container image's model folder to the
//! checkout's `model/`; Secrets are read from `stringData` (the fake API server keeps it as
//! given). One process stands for all replicas of a Deployment (they would all
//! bind the same port here); its address is reported so a test can call it.

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

#[derive(Default)]
struct Running {
    /// Job uid → its pods (one per completion index) and whether their status was written.
    jobs: HashMap<String, Vec<(Child, PathBuf)>>,
    finished_jobs: Vec<String>,
    /// Deployment uid → process and address.
    deployments: HashMap<String, ((Child, PathBuf), SocketAddr)>,
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
                    Ok(child) => pods.push(child),
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
            for (pod, log) in pods.iter_mut() {
                match pod.try_wait() {
                    Ok(Some(status)) => {
                        let code = status.code().unwrap_or(-1);
                        if code != 0 {
                            logs.push_str(&tail(log));
                        }
                        codes.push(code);
                    }
                    Ok(None) => return,
                    Err(_) => codes.push(-1),
                }
            }
            (codes, logs)
        };
        let (outcome, logs) = outcome;
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
        let address = self.lock().deployments.get(&uid).map(|(_, a)| *a);
        let Some(address) = address else {
            if replicas == 0 {
                return;
            }
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0);
            let address: SocketAddr = ([127, 0, 0, 1], port).into();
            let extra = [("IMGSEARCH_LISTEN".to_string(), address.to_string())];
            if let Ok(child) = self.spawn_pod(&namespace, &deployment["spec"]["template"]["spec"], &extra) {
                self.lock().deployments.insert(uid, (child, address));
            }
            return;
        };
        // Readiness as the kubelet's probe would see it.
        let ready = probe(address, "/readyz").await;
        let available = if ready { replicas } else { 0 };
        if deployment["status"]["availableReplicas"].as_i64() != Some(available) {
            deployment["status"] = json!({ "replicas": replicas, "readyReplicas": available, "availableReplicas": available, "observedGeneration": deployment["metadata"]["generation"] });
            self.server.put("apps/v1/deployments", deployment);
        }
    }

    /// Starts the pod's first container as a local process with its env and mounts translated.
    fn spawn_pod(
        &self,
        namespace: &str,
        pod: &Value,
        extra_env: &[(String, String)],
    ) -> std::io::Result<(Child, PathBuf)> {
        let container = &pod["containers"][0];
        let mut mounts: Vec<(String, PathBuf)> =
            vec![(IMAGE_MODEL_DIR.to_string(), Path::new(env!("CARGO_MANIFEST_DIR")).join("model"))];
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
        let logs = tempfile::tempdir()?;
        let log = logs.path().join("container.log");
        self.lock().scratch.push(logs);
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
        Ok((command.spawn()?, log))
    }

    fn secret_value(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        let secret = self.server.object("v1/secrets", namespace, name)?;
        secret["stringData"][key].as_str().map(str::to_string)
    }
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
