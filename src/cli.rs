//! Command-line interface: every flag has an environment variable, so Kubernetes Secrets and
//! ConfigMaps map straight onto configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::api::{self, ServeConfig, ServerState};
use crate::catalog::Catalog;
use crate::embed::{DecodeLimits, EmbeddingModel, ModelConfig};
use crate::ingest::{IngestOptions, Ingestor};
use crate::progress::Progress;
use crate::source::{Source, SourceError, s3, urls};
use crate::standalone::MilvusLite;
use crate::store::{IndexSpec, MilvusStore};

#[derive(Debug, Parser)]
#[command(name = "imgsearch", version, about = "Reverse image search on Milvus: ingest images, search them by example")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Embed the images of a folder, bucket or URL list into a Milvus collection and the catalog.
    Ingest(IngestArgs),
    /// Run the search API and web page.
    Serve(ServeArgs),
    /// Everything on one machine: start Milvus Lite, ingest a folder, serve it.
    Standalone(StandaloneArgs),
    /// Measure retrieval quality (precision@k, leave-one-out) on folders of labelled images.
    Eval(EvalArgs),
    /// Print the ImageCollection CustomResourceDefinition as YAML.
    Crd,
    /// Print the search API's OpenAPI document (what `serve` answers at /openapi.json).
    Openapi,
    /// Run the Kubernetes operator that reconciles ImageCollections.
    Controller(ControllerArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Built-in model name.
    #[arg(long, env = "IMGSEARCH_MODEL", default_value = "efficientnet-lite0")]
    pub model: String,
    /// Folder holding the model's .onnx file [default: ./model, or next to the binary's checkout].
    #[arg(long, env = "IMGSEARCH_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// ONNX Runtime shared library (libonnxruntime.so.1.*) [default: the project's .venv].
    #[arg(long = "ort-dylib", env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,
    /// ONNX Runtime threads per session [default: every core when serving; 1 when ingesting].
    #[arg(long, env = "IMGSEARCH_THREADS")]
    pub threads: Option<usize>,
    /// ONNX Runtime sessions running batches side by side [default: 1 when serving; one per
    /// core, at most 4, when ingesting].
    #[arg(long, env = "IMGSEARCH_INFERENCE_SESSIONS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub inference_sessions: Option<u16>,
    /// Largest accepted image, in pixels (width × height).
    #[arg(long, env = "IMGSEARCH_MAX_IMAGE_PIXELS", default_value_t = DecodeLimits::default().max_pixels)]
    pub max_image_pixels: u64,
    /// Largest accepted image width or height.
    #[arg(long, env = "IMGSEARCH_MAX_IMAGE_DIMENSION", default_value_t = DecodeLimits::default().max_dimension)]
    pub max_image_dimension: u32,
}

/// The most inference sessions ingest starts on its own (see [`ModelArgs::config`]).
const MAX_DEFAULT_SESSIONS: usize = 4;

/// What the model will mostly do, which decides how its cores are shared out by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Many images (ingest, eval): one single-threaded session per core, batches side by side;
    /// they keep running at full speed while decode threads take turns on the same cores.
    Throughput,
    /// One image at a time (search requests): one session using every core, for latency.
    Latency,
}

impl ModelArgs {
    fn config(&self, workload: Workload) -> ModelConfig {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let (sessions, threads) = match workload {
            Workload::Throughput => {
                // Each session holds its own copy of the model and activation arena (≈ 290 MiB
                // at batch 8): a pod without a CPU limit on a large node would otherwise start
                // dozens. Four keep the gain on small nodes; more is a flag away.
                let sessions = self.inference_sessions.map_or(cores.min(MAX_DEFAULT_SESSIONS), usize::from);
                (sessions, self.threads.unwrap_or_else(|| (cores / sessions).max(1)))
            }
            Workload::Latency => (self.inference_sessions.map_or(1, usize::from), self.threads.unwrap_or(0)),
        };
        ModelConfig {
            name: self.model.clone(),
            model_dir: self.model_dir.clone(),
            ort_dylib: self.ort_dylib.clone(),
            threads,
            sessions,
        }
    }

    fn limits(&self) -> DecodeLimits {
        DecodeLimits { max_dimension: self.max_image_dimension, max_pixels: self.max_image_pixels }
    }

    async fn load(&self, workload: Workload) -> anyhow::Result<Arc<EmbeddingModel>> {
        let config = self.config(workload);
        let threads = config.threads;
        let model = tokio::task::spawn_blocking(move || EmbeddingModel::load(&config)).await??;
        tracing::info!(
            model = model.spec().name,
            dimension = model.dimension(),
            sessions = model.sessions(),
            threads_per_session = if threads == 0 { "all cores".to_string() } else { threads.to_string() },
            "model loaded"
        );
        Ok(Arc::new(model))
    }
}

#[derive(Debug, Clone, Args)]
pub struct IndexArgs {
    /// HNSW graph degree.
    #[arg(long, env = "IMGSEARCH_HNSW_M", default_value_t = IndexSpec::default().m)]
    pub hnsw_m: u32,
    /// HNSW build-time breadth.
    #[arg(long, env = "IMGSEARCH_HNSW_EF_CONSTRUCTION", default_value_t = IndexSpec::default().ef_construction)]
    pub hnsw_ef_construction: u32,
    /// HNSW search-time breadth (raised to top-k when smaller).
    #[arg(long, env = "IMGSEARCH_SEARCH_EF", default_value_t = IndexSpec::default().ef)]
    pub search_ef: u32,
}

impl IndexArgs {
    fn spec(&self) -> IndexSpec {
        IndexSpec { m: self.hnsw_m, ef_construction: self.hnsw_ef_construction, ef: self.search_ef }
    }
}

#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Milvus address.
    #[arg(long, env = "MILVUS_URI", default_value = "http://127.0.0.1:19530")]
    pub milvus_uri: String,
    /// Milvus token (`user:password` or an API key); none for Milvus Lite.
    #[arg(long, env = "MILVUS_TOKEN", hide_env_values = true)]
    pub milvus_token: Option<String>,
    /// Milvus user and password, when there is no token (both are needed).
    #[arg(long, env = "MILVUS_USERNAME")]
    pub milvus_username: Option<String>,
    #[arg(long, env = "MILVUS_PASSWORD", hide_env_values = true)]
    pub milvus_password: Option<String>,
    /// Milvus database (default: the server's default database).
    #[arg(long, env = "MILVUS_DATABASE")]
    pub milvus_database: Option<String>,
    /// Catalog database URL: sqlite://PATH, postgres://…, mysql://… (MariaDB too), or `none`
    /// for no SQL catalog (Milvus's own rows are then the record of what is indexed: image ids
    /// derive from URIs, failures are reported per run but not kept).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/catalog.db", hide_env_values = true)]
    pub database_url: String,
}

impl BackendArgs {
    /// The token Milvus expects: the token itself, else `user:password`.
    pub fn milvus_token(&self) -> Option<String> {
        let credentials = || Some(format!("{}:{}", self.milvus_username.as_ref()?, self.milvus_password.as_ref()?));
        self.milvus_token.clone().filter(|t| !t.is_empty()).or_else(credentials)
    }

    pub async fn milvus(&self) -> anyhow::Result<MilvusStore> {
        let token = self.milvus_token();
        Ok(MilvusStore::connect_to(&self.milvus_uri, token.as_deref(), self.milvus_database.as_deref()).await?)
    }
}

#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Images per inference call and per database write (larger batches are no faster and take
    /// more memory; see docs/benchmarks.md).
    #[arg(long, env = "IMGSEARCH_BATCH_SIZE", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub batch_size: u16,
    /// Threads decoding images while the model runs [default: one per core]. The model's
    /// sessions wait for decoded images, so decoding gets every core it can use: on 12 MP
    /// photos it is 80 % of the work (docs/benchmarks.md).
    #[arg(long, env = "IMGSEARCH_DECODE_WORKERS")]
    pub decode_workers: Option<usize>,
}

impl BatchArgs {
    fn options(&self, collection: &str) -> IngestOptions {
        IngestOptions::new(collection, usize::from(self.batch_size), self.decode_workers())
    }

    fn decode_workers(&self) -> usize {
        self.decode_workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }
}

/// Where `imgsearch ingest` reads images: a folder, a bucket or a URL list.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// A folder of images (searched recursively) or an S3 location, `s3://bucket/prefix`.
    #[arg(required_unless_present = "url_list", conflicts_with = "url_list")]
    pub source: Option<String>,
    /// A file listing image URLs, one per line (blank lines and `#` comments are ignored).
    #[arg(long, env = "IMGSEARCH_URL_LIST")]
    pub url_list: Option<PathBuf>,
    /// Internal networks URL-list fetches may reach (CIDRs, comma-separated). Private,
    /// loopback, link-local and metadata addresses are refused unless listed here.
    #[arg(long, env = "IMGSEARCH_ALLOW_PRIVATE_NETWORKS", value_delimiter = ',')]
    pub allow_private_network: Vec<String>,
    /// Time limit for fetching one URL, body included.
    #[arg(long, env = "IMGSEARCH_URL_TIMEOUT_SECONDS", default_value_t = urls::REQUEST_TIMEOUT.as_secs())]
    pub url_timeout_seconds: u64,
    /// Endpoint of a non-AWS S3-compatible store, e.g. http://minio.storage:9000.
    #[arg(long, env = "IMGSEARCH_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Region of the bucket (credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
}

impl SourceArgs {
    pub fn open(&self) -> Result<Source, SourceError> {
        if let Some(list) = &self.url_list {
            let fetcher = urls::Fetcher::new(
                urls::AllowedNetworks::parse(&self.allow_private_network)?,
                std::time::Duration::from_secs(self.url_timeout_seconds.max(1)),
            )?;
            return Ok(Source::Urls(urls::UrlList::read(list, fetcher)?));
        }
        let source = self.source.as_deref().unwrap_or_default();
        if source.starts_with("s3://") {
            return Ok(Source::S3(connect_bucket(source, &self.s3_endpoint, &self.s3_region)?));
        }
        Source::directory(std::path::Path::new(source))
    }
}

/// A bucket from `s3://bucket/prefix` and the S3 flags; credentials from the environment.
fn connect_bucket(
    location: &str,
    endpoint: &Option<String>,
    region: &Option<String>,
) -> Result<s3::Bucket, SourceError> {
    let settings = s3::S3Settings { endpoint: endpoint.clone(), region: region.clone(), credentials: None };
    s3::Bucket::connect(s3::S3Location::parse(location)?, &settings)
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Collection to ingest into.
    #[arg(long, env = "IMGSEARCH_COLLECTION", default_value = "images")]
    pub collection: String,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// This run's shard of the source, 0-based (in an Indexed Job: the pod's completion index).
    #[arg(long, env = "JOB_COMPLETION_INDEX", default_value_t = 0)]
    pub shard_index: u32,
    /// How many shards split the source, by a hash of each image's path.
    #[arg(long, env = "IMGSEARCH_SHARD_COUNT", default_value_t = 1)]
    pub shard_count: u32,
    /// Remove images that are gone from the source (only its own, and only in this shard). For
    /// a URL list, every http(s) image of the collection counts as the list's: feed one
    /// collection from one list when pruning.
    #[arg(long, env = "IMGSEARCH_PRUNE")]
    pub prune: bool,
    /// Also write the summary as compact JSON (≤ 4 KiB) to this file. Ingest Jobs point it at
    /// the container's termination-message file, where the controller reads it back.
    #[arg(long, env = "IMGSEARCH_SUMMARY_FILE")]
    pub summary_file: Option<PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub index: IndexArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "IMGSEARCH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Folders `POST /img/load` may read (repeat, or colon-separated in the env var).
    #[arg(long = "load-root", env = "IMGSEARCH_LOAD_ROOTS", value_delimiter = ':')]
    pub load_roots: Vec<PathBuf>,
    /// Where uploaded images are stored (named by content hash).
    #[arg(long, env = "IMGSEARCH_UPLOAD_DIR", default_value = "data/uploads")]
    pub upload_dir: PathBuf,
    /// Largest request body in bytes.
    #[arg(long, env = "IMGSEARCH_MAX_BODY_BYTES", default_value_t = ServeConfig::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Image embeddings computed at once; further requests queue briefly, then get 503.
    #[arg(long, env = "IMGSEARCH_MAX_CONCURRENT_INFERENCE", default_value_t = ServeConfig::default().max_concurrent_inference)]
    pub max_concurrent_inference: usize,
    /// The bucket search results' images are read from, `s3://bucket/prefix` (a collection
    /// ingested from S3); credentials as for ingest.
    #[arg(long, env = "IMGSEARCH_IMAGE_BUCKET")]
    pub image_bucket: Option<String>,
    /// Endpoint of a non-AWS S3-compatible store holding `--image-bucket`.
    #[arg(long, env = "IMGSEARCH_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
    /// A file holding the bearer token that write routes (uploads, loads, drops) require.
    #[arg(long, env = "IMGSEARCH_AUTH_TOKEN_FILE", conflicts_with = "auth_token")]
    pub auth_token_file: Option<PathBuf>,
    /// The same token given directly, for an environment variable set from a Secret (a token
    /// on a command line is visible to every user of the machine).
    #[arg(long, env = "IMGSEARCH_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<Redacted>,
    /// Require the token on searches, counts and image bytes too (probes and the page stay open).
    #[arg(long, env = "IMGSEARCH_AUTH_READS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub auth_reads: bool,
    /// How fresh searches must be: `session` sees this server's own uploads at once and other
    /// writers' (ingest Jobs) within Milvus's staleness bound, without waiting; `strong` waits
    /// for every write before the search (≈ 200 ms a search on Milvus 2.3).
    #[arg(long, env = "IMGSEARCH_SEARCH_CONSISTENCY", default_value = "session", value_parser = ["session", "strong"])]
    pub search_consistency: String,
    /// After SIGTERM or Ctrl-C, keep answering this long (readiness failing) before closing the
    /// listener, so load balancers stop sending first; in-flight requests are finished either way.
    #[arg(long, env = "IMGSEARCH_SHUTDOWN_DRAIN_SECONDS", default_value_t = 0)]
    pub shutdown_drain_seconds: u64,
    /// Allow searching by the URL of an image on the web (`url` form field). Off by default:
    /// it makes the server fetch addresses a client chooses.
    #[arg(long, env = "IMGSEARCH_SEARCH_BY_URL", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub search_by_url: bool,
    /// Internal networks searches by URL may reach (CIDRs, comma-separated). Private, loopback,
    /// link-local and metadata addresses are refused unless listed here.
    #[arg(
        long = "search-url-allow-network",
        env = "IMGSEARCH_SEARCH_URL_ALLOW_NETWORKS",
        value_delimiter = ',',
        requires = "search_by_url"
    )]
    pub search_url_allow_networks: Vec<String>,
    /// Seconds a client has to send a request's headers (from connecting, or from the previous
    /// response); then the connection is closed. Stops clients that connect and send nothing.
    #[arg(long, env = "IMGSEARCH_HEADER_TIMEOUT_SECONDS", default_value_t = LIMITS.header_timeout.as_secs())]
    pub header_timeout_seconds: u64,
    /// Seconds a request body may stop arriving before the request is answered 408 and the
    /// connection closed (a pause between pieces, not a total: slow uploads that move are kept).
    #[arg(long, env = "IMGSEARCH_BODY_IDLE_TIMEOUT_SECONDS", default_value_t = LIMITS.body_idle_timeout.as_secs())]
    pub body_idle_timeout_seconds: u64,
    /// Open connections at most; more are closed when accepted.
    #[arg(long, env = "IMGSEARCH_MAX_CONNECTIONS", default_value_t = LIMITS.max_connections)]
    pub max_connections: usize,
}

/// The server's connection limits by default (the flags above).
const LIMITS: crate::api::server::ConnectionLimits = crate::api::server::ConnectionLimits::DEFAULT;

/// A secret given as a flag or environment variable, kept out of `Debug` output (the argument
/// structs derive it).
#[derive(Clone)]
pub struct Redacted(String);

impl std::str::FromStr for Redacted {
    type Err = std::convert::Infallible;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_string()))
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl ServerArgs {
    fn consistency(&self) -> crate::store::SearchConsistency {
        match self.search_consistency.as_str() {
            "strong" => crate::store::SearchConsistency::Strong,
            _ => crate::store::SearchConsistency::Session,
        }
    }

    fn url_fetcher(&self) -> anyhow::Result<Option<Arc<urls::Fetcher>>> {
        if !self.search_by_url {
            return Ok(None);
        }
        let allowed = urls::AllowedNetworks::parse(&self.search_url_allow_networks)?;
        // Shorter than an ingest's limit: someone is waiting for the answer.
        let fetcher = urls::Fetcher::new(allowed, std::time::Duration::from_secs(10))?;
        Ok(Some(Arc::new(fetcher.with_max_bytes(self.max_body_bytes as u64))))
    }

    fn auth(&self) -> anyhow::Result<Option<crate::api::auth::AuthConfig>> {
        let token = match (&self.auth_token_file, &self.auth_token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the auth token file {}", path.display()))?,
            (None, Some(token)) => token.0.clone(),
            (None, None) if self.auth_reads => {
                anyhow::bail!("--auth-reads needs a token (--auth-token-file or IMGSEARCH_AUTH_TOKEN)")
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(crate::api::auth::AuthConfig::new(&token, self.auth_reads)?))
    }

    fn image_bucket(&self) -> Result<Option<Arc<s3::Bucket>>, SourceError> {
        let Some(location) = &self.image_bucket else { return Ok(None) };
        Ok(Some(Arc::new(connect_bucket(location, &self.s3_endpoint, &self.s3_region)?)))
    }

    fn config(&self, collection: &str, batch: &BatchArgs) -> anyhow::Result<ServeConfig> {
        let mut load_roots = Vec::new();
        for root in self.load_roots.iter().filter(|r| !r.as_os_str().is_empty()) {
            load_roots
                .push(root.canonicalize().with_context(|| format!("load root {} does not exist", root.display()))?);
        }
        Ok(ServeConfig {
            default_collection: collection.to_string(),
            load_roots,
            upload_dir: std::path::absolute(&self.upload_dir)
                .with_context(|| format!("upload dir {}", self.upload_dir.display()))?,
            max_body_bytes: self.max_body_bytes,
            max_concurrent_inference: self.max_concurrent_inference,
            batch_size: usize::from(batch.batch_size),
            decode_workers: batch.decode_workers(),
            image_bucket: self.image_bucket()?,
            auth: self.auth()?,
            url_fetcher: self.url_fetcher()?,
            shutdown_drain: std::time::Duration::from_secs(self.shutdown_drain_seconds),
            connection_limits: crate::api::server::ConnectionLimits {
                header_timeout: std::time::Duration::from_secs(self.header_timeout_seconds.max(1)),
                body_idle_timeout: std::time::Duration::from_secs(self.body_idle_timeout_seconds.max(1)),
                max_connections: self.max_connections.max(1),
            },
            ..ServeConfig::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Collection searched when a request names none.
    #[arg(long, env = "IMGSEARCH_COLLECTION", default_value = "images")]
    pub collection: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub index: IndexArgs,
}

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// Folder of images to ingest before serving.
    #[arg(long, env = "IMGSEARCH_IMAGES", default_value = "data/sample")]
    pub images: PathBuf,
    /// Where Milvus Lite, the catalog and uploads keep their data.
    #[arg(long, env = "IMGSEARCH_DATA_DIR", default_value = "data/standalone")]
    pub data_dir: PathBuf,
    /// Collection to ingest into and search.
    #[arg(long, env = "IMGSEARCH_COLLECTION", default_value = "images")]
    pub collection: String,
    /// Use this Milvus instead of starting Milvus Lite.
    #[arg(long)]
    pub external_milvus: Option<String>,
    /// The milvus-lite command [default: .venv/bin/milvus-lite, then PATH].
    #[arg(long, env = "IMGSEARCH_MILVUS_LITE")]
    pub milvus_lite_bin: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "IMGSEARCH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Extra folders `POST /img/load` may read (the images folder always may).
    #[arg(long = "load-root", env = "IMGSEARCH_LOAD_ROOTS", value_delimiter = ':')]
    pub load_roots: Vec<PathBuf>,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub index: IndexArgs,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Container image the ingest Jobs and search Deployments run (this binary's image).
    #[arg(long, env = "IMGSEARCH_IMAGE")]
    pub image: String,
    /// imagePullPolicy of the ingest and search containers (default: Kubernetes' own).
    #[arg(long, env = "IMGSEARCH_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: Option<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "IMGSEARCH_CONTROLLER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
    /// Elect one leader among replicas with a Lease; `false` for a single replica run by hand.
    #[arg(long, env = "IMGSEARCH_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the Lease (default: the client's namespace, i.e. the pod's own).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    #[arg(long, env = "IMGSEARCH_LEASE_NAME", default_value = "imgsearch-controller")]
    pub lease_name: String,
    /// This replica's identity in the election (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("benchmark").required(true).multiple(true).args(["labels_from_dirs", "near_duplicates"])))]
pub struct EvalArgs {
    /// Root whose sub-folders are the labels (e.g. data/sample/fashion): precision@k, leave-one-out.
    #[arg(long)]
    pub labels_from_dirs: Option<PathBuf>,
    /// A near-duplicate set (originals/, distractors/, queries/<kind>/; e.g.
    /// data/sample/near-duplicates): recall@1, MRR and distances per kind of copy.
    #[arg(long)]
    pub near_duplicates: Option<PathBuf>,
    /// Cut-offs to report.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 5, 10])]
    pub k: Vec<usize>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ingest(args) => ingest(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Standalone(args) => standalone(args).await,
        Command::Eval(args) => eval(args).await,
        Command::Controller(args) => {
            let client =
                kube::Client::try_default().await.context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
            let children = crate::controller::children::ChildConfig {
                image: args.image,
                image_pull_policy: args.image_pull_policy,
            };
            let lease = args.leader_election.then(|| {
                let namespace = args.lease_namespace.unwrap_or_else(|| client.default_namespace().to_string());
                let identity = args.identity.unwrap_or_else(default_identity);
                crate::controller::leader::LeaseSettings::new(&namespace, &args.lease_name, &identity)
            });
            let context = crate::controller::reconcile::Context::new(client, children);
            let listener = crate::controller::metrics::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {} for metrics and probes", args.listen))?;
            tracing::info!(address = %args.listen, "controller metrics and probes listening");
            let server = tokio::spawn(crate::controller::metrics::serve(listener, context.metrics.clone()));
            let result = crate::controller::run(context, lease).await;
            server.abort();
            Ok(result?)
        }
        Command::Crd => {
            print!("{}", crate::crd::crd_yaml()?);
            Ok(())
        }
        Command::Openapi => {
            println!("{}", crate::api::openapi().to_pretty_json()?);
            Ok(())
        }
    }
}

/// Host name plus process id: unique enough for a replica run outside a pod.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    format!("{}-{}", if host.is_empty() { "imgsearch" } else { &host }, std::process::id())
}

/// `collection` is the one this process ingests into or searches by default: without a SQL
/// catalog, lookups by image id alone look there.
async fn connect(
    backend: &BackendArgs,
    collection: &str,
    model: &ModelArgs,
    index: &IndexArgs,
    workload: Workload,
) -> anyhow::Result<Ingestor> {
    let store = backend.milvus().await?;
    let catalog = Catalog::open_or_milvus(&backend.database_url, &store, &[collection.to_string()]).await?;
    Ok(Ingestor { store, catalog, model: model.load(workload).await?, index: index.spec(), limits: model.limits() })
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let shard = crate::source::Shard::new(args.shard_index, args.shard_count)
        .map_err(|problem| anyhow::anyhow!("--shard-index/--shard-count: {problem}"))?;
    let source = args.source.open()?;
    let ingestor = connect(&args.backend, &args.collection, &args.model, &args.index, Workload::Throughput).await?;
    let options = IngestOptions { shard, prune: args.prune, ..args.batch.options(&args.collection) };
    let Some(report) = ingest_until_interrupted(&ingestor, &source, &options).await? else {
        anyhow::bail!("interrupted; what was written is kept and a rerun continues where this one stopped");
    };
    if let Some(path) = &args.summary_file {
        std::fs::write(path, report.to_json_within(TERMINATION_MESSAGE_LIMIT))
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.summary());
    }
    Ok(())
}

/// What Kubernetes keeps of a container's termination message.
const TERMINATION_MESSAGE_LIMIT: usize = 4096;

/// Ingests with a progress display; `None` when Ctrl-C or SIGTERM came first. Stopping midway
/// is safe: the write order lets a rerun finish the job (see ingest.rs).
async fn ingest_until_interrupted(
    ingestor: &Ingestor,
    source: &Source,
    options: &IngestOptions,
) -> anyhow::Result<Option<crate::ingest::IngestReport>> {
    let progress = Progress::visible();
    tokio::select! {
        report = ingestor.ingest(source, options, &progress) => Ok(Some(report?)),
        () = shutdown_signal() => {
            progress.finish();
            Ok(None)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Settings first: a bad flag or token file is reported at once, not after Milvus answers.
    let config = args.server.config(&args.collection, &args.batch)?;
    let mut ingestor = connect(&args.backend, &args.collection, &args.model, &args.index, Workload::Latency).await?;
    ingestor.store = ingestor.store.with_search_consistency(args.server.consistency());
    if config.auth.is_some() {
        tracing::info!(protect_reads = args.server.auth_reads, "bearer token required on write routes");
    }
    serve_until_shutdown(ingestor, config, args.server.listen).await
}

async fn serve_until_shutdown(ingestor: Ingestor, config: ServeConfig, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let drain = config.shutdown_drain;
    let limits = config.connection_limits;
    let state = ServerState::new(ingestor, config);
    tracing::info!(%address, "search API listening");
    // Listening for signals before saying "serving": a Ctrl-C right after it is not lost.
    let signalled = shutdown_signal();
    eprintln!("imgsearch is serving on http://{address}/  (Ctrl-C stops it)");
    let draining = Arc::clone(&state);
    let shutdown = async move {
        signalled.await;
        if !drain.is_zero() {
            draining.draining.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                seconds = drain.as_secs_f64(),
                "shutting down: readiness off, still answering while load balancers catch up"
            );
            tokio::time::sleep(drain).await;
        }
        tracing::info!("shutting down: no new connections; finishing requests in flight");
    };
    api::server::serve(listener, api::app(state), limits, shutdown).await?;
    tracing::info!("search API stopped");
    Ok(())
}

async fn standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let milvus_lite = match &args.external_milvus {
        Some(_) => None,
        None => Some(MilvusLite::start(&data_dir.join("milvus"), args.milvus_lite_bin.as_deref()).await?),
    };
    let milvus_uri =
        args.external_milvus.clone().or_else(|| milvus_lite.as_ref().map(|m| m.uri().to_string())).unwrap_or_default();
    let result = run_standalone(&args, &data_dir, &milvus_uri).await;
    if let Some(milvus_lite) = milvus_lite {
        milvus_lite.stop().await;
    }
    result
}

async fn run_standalone(args: &StandaloneArgs, data_dir: &std::path::Path, milvus_uri: &str) -> anyhow::Result<()> {
    let backend = BackendArgs {
        milvus_uri: milvus_uri.to_string(),
        milvus_token: None,
        milvus_username: None,
        milvus_password: None,
        milvus_database: None,
        database_url: format!("sqlite://{}", data_dir.join("catalog.db").display()),
    };
    // The first ingest is usually small (a demo folder); the server then lives on.
    let ingestor = connect(&backend, &args.collection, &args.model, &args.index, Workload::Latency).await?;
    let options = args.batch.options(&args.collection);
    let Some(report) = ingest_until_interrupted(&ingestor, &Source::directory(&args.images)?, &options).await? else {
        eprintln!("interrupted during ingest; stopping");
        return Ok(());
    };
    eprintln!("{}", report.summary());

    let mut load_roots = args.load_roots.clone();
    load_roots.push(args.images.clone());
    let server = ServerArgs {
        listen: args.listen,
        load_roots,
        upload_dir: data_dir.join("uploads"),
        max_body_bytes: ServeConfig::default().max_body_bytes,
        max_concurrent_inference: ServeConfig::default().max_concurrent_inference,
        image_bucket: None,
        s3_endpoint: None,
        s3_region: None,
        // One machine, loopback by default: no token.
        auth_token_file: None,
        auth_token: None,
        auth_reads: false,
        shutdown_drain_seconds: 0,
        search_consistency: "session".into(),
        // The demo's page and tests upload images; fetching URLs is a server feature to opt into.
        search_by_url: false,
        search_url_allow_networks: Vec::new(),
        header_timeout_seconds: LIMITS.header_timeout.as_secs(),
        body_idle_timeout_seconds: LIMITS.body_idle_timeout.as_secs(),
        max_connections: LIMITS.max_connections,
    };
    let config = server.config(&args.collection, &args.batch)?;
    let mut ingestor = ingestor;
    ingestor.store = ingestor.store.with_search_consistency(server.consistency());
    serve_until_shutdown(ingestor, config, args.listen).await
}

async fn eval(args: EvalArgs) -> anyhow::Result<()> {
    // Evaluation embeds batch after batch from one thread: one session on every core is fastest.
    let model = std::sync::Arc::new(args.model.load(Workload::Latency).await?);
    let limits = args.model.limits();
    let mut json = serde_json::Map::new();
    if let Some(root) = args.labels_from_dirs.clone() {
        let (model, ks) = (model.clone(), args.k.clone());
        let report =
            tokio::task::spawn_blocking(move || crate::eval::evaluate(&model, &root, &ks, limits, 32)).await??;
        if !args.json {
            println!("{report}");
        }
        json.insert("labelled".into(), serde_json::to_value(&report)?);
    }
    if let Some(root) = args.near_duplicates.clone() {
        let model = model.clone();
        let report =
            tokio::task::spawn_blocking(move || crate::eval::evaluate_near_duplicates(&model, &root, limits, 32))
                .await??;
        if !args.json {
            println!("{report}");
        }
        json.insert("near_duplicates".into(), serde_json::to_value(&report)?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}

/// Ctrl-C or SIGTERM (what Kubernetes sends before killing a pod).
///
/// The listeners are registered when this is called, not when the future is first polled: once
/// tokio handles SIGINT (an earlier ingest's listener installs its handler for the whole
/// process), a signal that arrives before a listener exists is swallowed, so a server that
/// announced itself and only then registered could miss a Ctrl-C sent in between (seen: a
/// standalone run that kept serving after SIGINT).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        let wait = |listener: std::io::Result<tokio::signal::unix::Signal>| async move {
            match listener {
                Ok(mut listener) => {
                    listener.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(interrupt) => {}
            () = wait(terminate) => {}
        }
        tracing::info!("shutdown requested");
    }
}
