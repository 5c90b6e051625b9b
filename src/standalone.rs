//! Everything on one machine: a Milvus Lite server as a child process, a SQLite catalog and a
//! folder of images, ingested and then served (`imgsearch standalone`). The first run, the demo
//! and most tests use it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum MilvusLiteError {
    #[error(
        "the milvus-lite command was not found: run `make setup` (it installs PyPI milvus-lite into .venv), \
         or pass --milvus-lite-bin / set IMGSEARCH_MILVUS_LITE to its path"
    )]
    NotInstalled,
    #[error("cannot start {binary}: {source}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("cannot create Milvus Lite data folder {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("no free local port for Milvus Lite: {0}")]
    Port(std::io::Error),
    #[error("Milvus Lite exited before it was ready; its last output:\n{0}")]
    ExitedEarly(String),
    #[error("Milvus Lite did not report listening within {0} s")]
    Timeout(u64),
}

/// A running `milvus-lite server`. Stopped by [`MilvusLite::stop`]; if dropped without it,
/// the process is killed so that no server outlives imgsearch.
#[derive(Debug)]
pub struct MilvusLite {
    child: Child,
    uri: String,
}

impl MilvusLite {
    /// Starts a server on a free loopback port and waits until it listens.
    pub async fn start(data_dir: &Path, binary: Option<&Path>) -> Result<Self, MilvusLiteError> {
        let binary = locate_binary(binary)?;
        std::fs::create_dir_all(data_dir)
            .map_err(|source| MilvusLiteError::DataDir { path: data_dir.to_path_buf(), source })?;
        let port = free_port().map_err(MilvusLiteError::Port)?;
        let mut child = Command::new(&binary)
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: a terminal's Ctrl-C reaches imgsearch, which stops the server
            // after the search API has drained, instead of both dying at once.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| MilvusLiteError::Spawn { binary: binary.clone(), source })?;

        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(MilvusLiteError::ExitedEarly("no output pipes".into()));
        };
        let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for stream in [Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>, Box::new(stderr)] {
            let lines_tx = lines_tx.clone();
            // Keep draining the pipes for the server's whole life, or it blocks on a full pipe.
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(target: "milvus_lite", "{line}");
                    let _ = lines_tx.send(line);
                }
            });
        }
        drop(lines_tx);

        const STARTUP_SECONDS: u64 = 90;
        let mut output: Vec<String> = Vec::new();
        let ready = tokio::time::timeout(Duration::from_secs(STARTUP_SECONDS), async {
            while let Some(line) = lines_rx.recv().await {
                let listening = line.contains("listening");
                output.push(line);
                if listening {
                    return true;
                }
            }
            false
        })
        .await;
        match ready {
            Ok(true) => {
                let uri = format!("http://127.0.0.1:{port}");
                tracing::info!(%uri, data = %data_dir.display(), pid = child.id(), "Milvus Lite is listening");
                Ok(Self { child, uri })
            }
            Ok(false) => {
                let _ = child.kill().await;
                Err(MilvusLiteError::ExitedEarly(tail(&output)))
            }
            Err(_) => {
                let _ = child.kill().await;
                Err(MilvusLiteError::Timeout(STARTUP_SECONDS))
            }
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Asks the server to stop (SIGTERM), and kills it if it has not within 10 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.is_err() {
                tracing::warn!(pid, "Milvus Lite ignored SIGTERM for 10 s; killing it");
                let _ = self.child.kill().await;
            }
            tracing::info!("Milvus Lite stopped");
        }
    }
}

fn tail(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An explicit path, else `IMGSEARCH_MILVUS_LITE`, else the project's `.venv`, else `PATH`.
pub fn locate_binary(explicit: Option<&Path>) -> Result<PathBuf, MilvusLiteError> {
    let from_env = std::env::var_os(crate::env::MILVUS_LITE).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(path) = explicit.map(Path::to_path_buf).or(from_env) {
        return if path.is_file() { Ok(path) } else { Err(MilvusLiteError::NotInstalled) };
    }
    let venv = crate::embed::runtime::search_roots().into_iter().map(|root| root.join(".venv/bin/milvus-lite"));
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("milvus-lite")).collect::<Vec<_>>())
        .unwrap_or_default();
    venv.chain(on_path).find(|candidate| candidate.is_file()).ok_or(MilvusLiteError::NotInstalled)
}

/// `imgsearch standalone` as its flags give it.
#[derive(Debug, Clone)]
pub struct StandaloneCommand {
    /// The folder ingested before serving; `POST /img/load` may read it too.
    pub images: PathBuf,
    /// Where Milvus Lite, the catalog and uploads keep their data.
    pub data_dir: PathBuf,
    pub collection: String,
    /// A Milvus to use instead of starting Milvus Lite.
    pub external_milvus: Option<String>,
    pub milvus_lite_bin: Option<PathBuf>,
    pub listen: SocketAddr,
    /// More folders `POST /img/load` may read.
    pub load_roots: Vec<PathBuf>,
    pub batch_size: usize,
    pub decode_workers: usize,
    pub model: crate::embed::ModelSettings,
    pub index: crate::store::IndexSpec,
}

/// Starts Milvus Lite (unless told to use another Milvus), ingests the folder, serves it until
/// `shutdown`, then stops Milvus Lite after the server has drained.
pub async fn run(command: StandaloneCommand, shutdown: crate::shutdown::Shutdown) -> anyhow::Result<()> {
    let data_dir = &command.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let milvus_lite = match &command.external_milvus {
        Some(_) => None,
        None => Some(MilvusLite::start(&data_dir.join("milvus"), command.milvus_lite_bin.as_deref()).await?),
    };
    let milvus_uri = command
        .external_milvus
        .clone()
        .or_else(|| milvus_lite.as_ref().map(|m| m.uri().to_string()))
        .unwrap_or_default();
    let result = ingest_then_serve(&command, &data_dir, &milvus_uri, shutdown).await;
    if let Some(milvus_lite) = milvus_lite {
        milvus_lite.stop().await;
    }
    result
}

async fn ingest_then_serve(
    command: &StandaloneCommand,
    data_dir: &Path,
    milvus_uri: &str,
    shutdown: crate::shutdown::Shutdown,
) -> anyhow::Result<()> {
    let backend = crate::index::BackendConfig {
        milvus_uri: milvus_uri.to_string(),
        milvus_token: None,
        milvus_database: None,
        database_url: format!("sqlite://{}", data_dir.join("catalog.db").display()),
    };
    // The first ingest is usually small (a demo folder); the server then lives on.
    let workload = crate::embed::Workload::Latency;
    let index =
        crate::index::ImageIndex::open(&backend, &command.collection, &command.model, workload, command.index.clone())
            .await?;
    let options = crate::ingest::IngestOptions::new(&command.collection, command.batch_size, command.decode_workers);
    let source = crate::source::Source::directory(&command.images)?;
    let Some(report) = crate::ingest::command::ingest_until_stopped(&index, &source, &options, &shutdown).await? else {
        eprintln!("interrupted during ingest; stopping");
        return Ok(());
    };
    eprintln!("{}", report.summary());

    // The images folder may always be loaded again.
    let load_roots = command.load_roots.iter().chain([&command.images]).cloned().collect();
    let settings = crate::api::ServerSettings::on_one_machine(
        command.listen,
        load_roots,
        data_dir.join("uploads"),
        command.batch_size,
        command.decode_workers,
    );
    let config = settings.resolve(&command.collection)?;
    crate::api::listen_and_serve(command.listen, index, config, shutdown).await
}
