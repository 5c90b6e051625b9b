//! A real Kubernetes control plane for the operator's tests: etcd, kube-apiserver and
//! kube-controller-manager (and kubectl), the binaries `scripts/kube-build.sh` builds from their
//! Go modules.
//!
//! One control plane per test binary, started on first use and shared by its tests (each works
//! in a namespace of its own). The API server authenticates with client certificates from a CA
//! made here and authorizes with RBAC, so a client made from a ServiceAccount's token
//! ([`ControlPlane::service_account_client`]) has exactly the rights its roles grant. The
//! controller manager runs Kubernetes' own garbage collector, Job, CronJob, Deployment,
//! ReplicaSet, namespace and ServiceAccount controllers.
//!
//! Every process is started by one thread that lives as long as the test binary, with
//! `PR_SET_PDEATHSIG`: when the binary ends, however it ends (a panic, a timeout's kill), the
//! kernel kills the control plane with it. Its files are in `target/kube-test/<pid>`; folders
//! of earlier runs whose process is gone are removed at start.
#![allow(dead_code)]

pub mod node;
pub mod operator;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// The Kubernetes release the control plane is built from (scripts/kube/go.mod).
pub const KUBERNETES_VERSION: &str = "v1.37.2";
/// The namespace whose ServiceAccounts' requests the audit log records: the operator's.
pub const AUDITED_NAMESPACE: &str = "imgsearch-system";
/// How long the control plane may take to become ready on a loaded 2-core machine.
const START_DEADLINE: Duration = Duration::from_secs(120);

pub struct ControlPlane {
    /// The folder of the binaries, kubectl among them (the same release as the server).
    pub bin: PathBuf,
    /// This run's folder: certificates, kubeconfigs, etcd's data, every process's log.
    pub dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// The admin's kubeconfig (client certificate in `system:masters`).
    pub admin_kubeconfig: PathBuf,
    /// The cluster CA, PEM.
    pub ca_pem: String,
    /// The API server's audit log (JSON lines, `audit.k8s.io/v1` Events at Metadata level):
    /// every request a ServiceAccount of [`AUDITED_NAMESPACE`] made, with the authorizer's
    /// decision. How a test learns what the operator asked of Kubernetes, from Kubernetes.
    pub audit_log: PathBuf,
    /// Children: kept so they are not reaped early; killed with the binary (PDEATHSIG).
    processes: Vec<(String, u32)>,
}

/// The shared control plane, started on first call. Panics, with the failing process's log,
/// if it cannot be built or started in time.
pub fn control_plane() -> &'static ControlPlane {
    static PLANE: OnceLock<ControlPlane> = OnceLock::new();
    PLANE.get_or_init(|| match start() {
        Ok(plane) => plane,
        Err(message) => panic!("the test control plane did not start: {message}"),
    })
}

impl ControlPlane {
    /// A client with the admin's rights. Made anew for each caller: a client belongs to the
    /// runtime of the test that made it.
    pub async fn admin_client(&self) -> kube::Client {
        client_from(&self.admin_kubeconfig).await
    }

    /// `kubectl` with the admin's kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.bin.join("kubectl"));
        command.env("KUBECONFIG", &self.admin_kubeconfig).current_dir(env!("CARGO_MANIFEST_DIR"));
        command
    }

    /// Runs `kubectl args…` (with `stdin` piped in when given) within `deadline`; its exit
    /// status, stdout and stderr.
    pub fn run_kubectl(&self, args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
        let mut command = self.kubectl();
        command.args(args).arg("--request-timeout=60s");
        run_with_deadline(command, stdin, Duration::from_secs(90))
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }

    /// A kubeconfig and a client that act as ServiceAccount `namespace/name`, with a token the
    /// TokenRequest API issued for it: exactly what its roles grant, checked by the real RBAC
    /// authorizer.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> (PathBuf, kube::Client) {
        let admin = self.admin_client().await;
        let token = request_token(&admin, namespace, name).await;
        let path = self.dir.join(format!("{namespace}-{name}.kubeconfig"));
        write_kubeconfig(&path, &self.server, &self.ca_pem, &User::Token(token), namespace);
        let client = client_from(&path).await;
        (path, client)
    }
}

impl ControlPlane {
    /// Where the audit log ends now: pass it to [`ControlPlane::audited_since`] to read only
    /// what comes after.
    pub fn audit_position(&self) -> u64 {
        std::fs::metadata(&self.audit_log).map(|m| m.len()).unwrap_or(0)
    }

    /// The audit events of `user` logged after `position`, once each (a watch is logged when
    /// its response starts and again when it ends; the first is kept).
    pub fn audited_since(&self, position: u64, user: &str) -> Vec<serde_json::Value> {
        use std::io::{Read, Seek, SeekFrom};
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.audit_log) {
            file.seek(SeekFrom::Start(position)).expect("seek in the audit log");
            file.read_to_string(&mut text).expect("read the audit log");
        }
        let mut seen = std::collections::BTreeSet::new();
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("an audit line that is not JSON ({e}): {line}"))
            })
            .filter(|event| event["user"]["username"] == user)
            .filter(|event| seen.insert(event["auditID"].as_str().unwrap_or_default().to_string()))
            .collect()
    }
}

/// Issues a token for a ServiceAccount through its `token` subresource (TokenRequest).
async fn request_token(admin: &kube::Client, namespace: &str, name: &str) -> String {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::{Api, PostParams};
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": { "audiences": [], "expirationSeconds": 3600 }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The ServiceAccount may be moments old; the API server answers 404 until it is stored.
        let answer: Result<serde_json::Value, _> =
            accounts.create_subresource("token", name, &PostParams::default(), &request).await;
        match answer {
            Ok(issued) => {
                return issued["status"]["token"]
                    .as_str()
                    .unwrap_or_else(|| panic!("TokenRequest for {namespace}/{name} has no token: {issued}"))
                    .to_string();
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("TokenRequest for {namespace}/{name} not answered yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("no token for ServiceAccount {namespace}/{name} within 60 s: {e}"),
        }
    }
}

async fn client_from(kubeconfig: &Path) -> kube::Client {
    // kube's TLS is rustls; the crate installs ring as the process's provider in its binaries.
    rustls::crypto::ring::default_provider().install_default().ok();
    let loaded = Kubeconfig::read_from(kubeconfig).unwrap_or_else(|e| panic!("read {}: {e}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(loaded, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", kubeconfig.display()));
    kube::Client::try_from(config).expect("a client from the kubeconfig")
}

enum User {
    Certificate { cert_pem: String, key_pem: String },
    Token(String),
}

fn write_kubeconfig(path: &Path, server: &str, ca_pem: &str, user: &User, namespace: &str) {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let user = match user {
        User::Certificate { cert_pem, key_pem } => {
            serde_json::json!({ "client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem) })
        }
        User::Token(token) => serde_json::json!({ "token": token }),
    };
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "test", "cluster": { "server": server, "certificate-authority-data": b64(ca_pem) } }],
        "users": [{ "name": "test", "user": user }],
        "contexts": [{ "name": "test", "context": { "cluster": "test", "user": "test", "namespace": namespace } }],
        "current-context": "test"
    });
    // JSON is YAML: kubectl, client-go and kube-rs all read it.
    std::fs::write(path, serde_json::to_vec_pretty(&kubeconfig).expect("serialize kubeconfig"))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The folder holding the binaries: `IMGSEARCH_KUBE_BIN`, else what `scripts/kube-build.sh
/// --print` names (the cache it builds into).
fn binaries() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("IMGSEARCH_KUBE_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kube-build.sh");
    let output =
        Command::new(&script).arg("--print").output().map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err("the control plane is not built: run the tests with `make test`, or build it once with \
                    `scripts/kube-build.sh` (tens of minutes on 2 cores, then cached)"
            .into());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// This run's folder under `target/kube-test`, after removing those of runs that have ended.
fn run_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kube-test");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let ended = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if ended {
                std::fs::remove_dir_all(entry.path()).ok();
            }
        }
    }
    let dir = root.join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Certificates and keys, PEM: the CA, the API server's serving pair, the admin's client pair,
/// and the key that signs ServiceAccount tokens.
struct Pki {
    ca_cert: String,
    serving_cert: String,
    serving_key: String,
    admin_cert: String,
    admin_key: String,
    signing_key: String,
    signing_public_key: String,
}

fn make_pki() -> Result<Pki, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "imgsearch-test-ca");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);

    // The names a client may use for the API server: loopback, and the in-cluster names and
    // first service address (10.0.0.1 in --service-cluster-ip-range) a pod would.
    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".into(),
        "10.0.0.1".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
    ])?;
    serving.distinguished_name.push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &issuer)?.pem();

    // The API server maps a client certificate's CN to the user and O to its groups.
    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name.push(DnType::CommonName, "imgsearch-test-admin");
    admin.distinguished_name.push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer)?.pem();

    let signing = KeyPair::generate()?;
    Ok(Pki {
        ca_cert,
        serving_cert,
        serving_key: serving_key.serialize_pem(),
        admin_cert,
        admin_key: admin_key.serialize_pem(),
        signing_key: signing.serialize_pem(),
        signing_public_key: signing.public_key_pem(),
    })
}

/// Starts the three processes and waits until the API server is ready and the controller
/// manager has made the `default` ServiceAccount of `default` (its controllers are running).
fn start() -> Result<ControlPlane, String> {
    let bin = binaries()?;
    let dir = run_dir();
    let pki = make_pki().map_err(|e| format!("certificates: {e}"))?;
    let write = |name: &str, content: &str| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(path)
    };
    let ca = write("ca.crt", &pki.ca_cert)?;
    let serving_cert = write("apiserver.crt", &pki.serving_cert)?;
    let serving_key = write("apiserver.key", &pki.serving_key)?;
    let sa_key = write("sa.key", &pki.signing_key)?;
    let sa_pub = write("sa.pub", &pki.signing_public_key)?;
    // Only the operator's accounts: Kubernetes' own controllers would fill the log otherwise.
    let audit_policy = write(
        "audit-policy.yaml",
        &format!(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
             - level: Metadata\n  userGroups: [\"system:serviceaccounts:{AUDITED_NAMESPACE}\"]\n- level: None\n"
        ),
    )?;
    let audit_log = dir.join("audit.log");

    let etcd_port = free_port();
    let peer_port = free_port();
    let api_port = free_port();
    let server = format!("https://127.0.0.1:{api_port}");
    let admin_kubeconfig = dir.join("admin.kubeconfig");
    write_kubeconfig(
        &admin_kubeconfig,
        &server,
        &pki.ca_cert,
        &User::Certificate { cert_pem: pki.admin_cert.clone(), key_pem: pki.admin_key.clone() },
        "default",
    );

    let mut processes = Vec::new();
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut etcd = Command::new(bin.join("etcd"));
    etcd.args([
        "--name=default",
        &format!("--data-dir={}", dir.join("etcd").display()),
        &format!("--listen-client-urls={etcd_url}"),
        &format!("--advertise-client-urls={etcd_url}"),
        &format!("--listen-peer-urls={peer_url}"),
        &format!("--initial-advertise-peer-urls={peer_url}"),
        &format!("--initial-cluster=default={peer_url}"),
        // A test cluster's data is thrown away; fsync would only slow every write.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]);
    processes.push(("etcd".to_string(), spawn(etcd, &dir.join("etcd.log"))?));
    wait_for(
        "etcd",
        &dir.join("etcd.log"),
        || probe_http(etcd_port, "/health").is_some_and(|body| body.contains("true")),
        Duration::from_secs(30),
    )?;

    // The flags controller-runtime's envtest gives the API server, with RBAC and the default
    // admission plugins (ServiceAccount, PodSecurity, ResourceQuota, LimitRanger, …) left on,
    // and OwnerReferencesPermissionEnforcement added.
    let mut apiserver = Command::new(bin.join("kube-apiserver"));
    apiserver.args([
        &format!("--etcd-servers={etcd_url}"),
        &format!("--secure-port={api_port}"),
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        &format!("--tls-cert-file={}", serving_cert.display()),
        &format!("--tls-private-key-file={}", serving_key.display()),
        &format!("--client-ca-file={}", ca.display()),
        "--authorization-mode=RBAC",
        // On top of the defaults, as OpenShift runs it: an owner reference that blocks its
        // owner's deletion needs `update` on the owner's `finalizers`, and changing an object's
        // owner references needs `delete` on it.
        "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
        "--service-cluster-ip-range=10.0.0.0/24",
        "--allow-privileged=true",
        &format!("--service-account-issuer=https://127.0.0.1:{api_port}"),
        &format!("--service-account-key-file={}", sa_pub.display()),
        &format!("--service-account-signing-key-file={}", sa_key.display()),
        // No kubelet or kube-proxy answers for the `kubernetes` Service's endpoints.
        "--endpoint-reconciler-type=none",
        &format!("--audit-policy-file={}", audit_policy.display()),
        &format!("--audit-log-path={}", audit_log.display()),
        "--audit-log-format=json",
        // Written as each request completes, so a test reads every request made before it looks.
        "--audit-log-mode=blocking",
        "--v=1",
    ]);
    processes.push(("kube-apiserver".to_string(), spawn(apiserver, &dir.join("kube-apiserver.log"))?));
    let api_log = dir.join("kube-apiserver.log");
    let api_ready = || {
        let mut probe = Command::new(bin.join("kubectl"));
        probe
            .env("KUBECONFIG", &admin_kubeconfig)
            .args(["get", "--raw=/readyz", "--request-timeout=5s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        run_with_deadline(probe, None, Duration::from_secs(10)).is_ok_and(|(ok, out, _)| ok && out.trim() == "ok")
    };
    wait_for("kube-apiserver", &api_log, api_ready, START_DEADLINE)?;

    // Kubernetes' own controllers for what the operator makes: Jobs and their pods, CronJobs,
    // Deployments and ReplicaSets, owner-reference garbage collection, namespace deletion,
    // each namespace's `default` ServiceAccount and its tokens, finished Jobs' TTL, quotas, and
    // pod garbage collection (it marks a deleted pod that was never scheduled Failed: a Job
    // with a pod failure policy waits for that before it lets such a pod go, so without it a
    // namespace holding one never finishes terminating).
    let mut manager = Command::new(bin.join("kube-controller-manager"));
    manager.args([
        &format!("--kubeconfig={}", admin_kubeconfig.display()),
        &format!("--authentication-kubeconfig={}", admin_kubeconfig.display()),
        &format!("--authorization-kubeconfig={}", admin_kubeconfig.display()),
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        &format!("--secure-port={}", free_port()),
        &format!("--root-ca-file={}", ca.display()),
        &format!("--service-account-private-key-file={}", sa_key.display()),
        "--controllers=garbage-collector-controller,job-controller,cronjob-controller,deployment-controller,\
         replicaset-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,\
         ttl-after-finished-controller,resourcequota-controller,pod-garbage-collector-controller",
        "--v=1",
    ]);
    let manager_log = dir.join("kube-controller-manager.log");
    processes.push(("kube-controller-manager".to_string(), spawn(manager, &manager_log)?));
    let default_account = || {
        let mut probe = Command::new(bin.join("kubectl"));
        probe
            .env("KUBECONFIG", &admin_kubeconfig)
            .args(["get", "serviceaccount", "default", "--namespace=default", "--request-timeout=5s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        run_with_deadline(probe, None, Duration::from_secs(10)).is_ok_and(|(ok, ..)| ok)
    };
    wait_for("kube-controller-manager", &manager_log, default_account, START_DEADLINE)?;

    Ok(ControlPlane { bin, dir, server, admin_kubeconfig, ca_pem: pki.ca_cert, audit_log, processes })
}

/// Polls `ready` until it holds; an error naming `what`, with the tail of its log, at the deadline.
fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool, deadline: Duration) -> Result<(), String> {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > deadline {
            return Err(format!(
                "{what} was not ready within {} s; the end of {}:\n{}",
                deadline.as_secs(),
                log.display(),
                tail(log, 40)
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("control plane: {what} ready after {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A plain HTTP GET on loopback with a 2 s limit; the body, if answered 200.
fn probe_http(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.starts_with("HTTP/1.0 200").then(|| answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// Runs `command` to the end, or kills it at `deadline`: its success, stdout and stderr.
pub fn run_with_deadline(
    mut command: Command,
    stdin: Option<&[u8]>,
    deadline: Duration,
) -> std::io::Result<(bool, String, String)> {
    use std::io::{Read, Write};
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)?;
    }
    // Read both pipes on threads, so a full pipe cannot stall the child while we wait.
    let mut out_pipe = child.stdout.take().expect("stdout piped");
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        out_pipe.read_to_string(&mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        err_pipe.read_to_string(&mut s).ok();
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > deadline {
            child.kill().ok();
            child.wait().ok();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("did not finish within {} s", deadline.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((status.success(), out.join().unwrap_or_default(), err.join().unwrap_or_default()))
}

/// Has the kernel kill the process `command` starts when the thread that starts it ends (a
/// test's thread: the test's processes end with it, even when the binary is killed).
pub fn die_with_this_thread(command: &mut Command) {
    // SAFETY: between fork and exec only prctl, which is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts `command` with its output in `log`, from the one thread that outlives every test,
/// with the kernel told to kill it when that thread (so the test binary) ends.
fn spawn(mut command: Command, log: &Path) -> Result<u32, String> {
    let file = std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| format!("log {}: {e}", log.display()))?;
    command.stdin(Stdio::null()).stdout(file).stderr(err);
    let program = command.get_program().to_string_lossy().into_owned();
    spawner().spawn(command).map_err(|e| format!("start {program}: {e}"))
}

/// The thread that starts the control plane's processes. `PR_SET_PDEATHSIG` fires when the
/// thread that forked the child ends, not the process; this thread never ends before the
/// process does, while the test threads come and go. It keeps each `Child`, so the processes
/// are its children to the end.
struct Spawner {
    requests: mpsc::Sender<(Command, mpsc::Sender<std::io::Result<u32>>)>,
}

impl Spawner {
    fn spawn(&self, command: Command) -> std::io::Result<u32> {
        let (reply, answer) = mpsc::channel();
        self.requests.send((command, reply)).map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        answer.recv().map_err(|_| std::io::Error::other("the spawner thread is gone"))?
    }
}

fn spawner() -> &'static Spawner {
    static SPAWNER: OnceLock<Spawner> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<(Command, mpsc::Sender<std::io::Result<u32>>)>();
        std::thread::Builder::new()
            .name("control-plane-spawner".into())
            .spawn(move || {
                let mut children = Vec::new();
                for (mut command, reply) in incoming {
                    let parent = std::process::id() as libc::pid_t;
                    // SAFETY: between fork and exec only async-signal-safe calls: prctl, getppid, _exit.
                    unsafe {
                        use std::os::unix::process::CommandExt as _;
                        command.pre_exec(move || {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            // The parent may have died before prctl took effect.
                            if libc::getppid() != parent {
                                libc::_exit(1);
                            }
                            Ok(())
                        });
                    }
                    let answer = command.spawn().map(|child| {
                        let id = child.id();
                        children.push(child);
                        id
                    });
                    reply.send(answer).ok();
                }
            })
            .expect("start the control-plane spawner thread");
        Spawner { requests }
    })
}
