//! The command line: every subcommand's flags (clap derive), each with an environment variable
//! so Kubernetes Secrets and ConfigMaps map straight onto configuration, and what they mean as
//! each role's command (`IngestCommand`, `ServeCommand`, …). Nothing here connects, reads files
//! or decides policy: `main` hands the command to its role, which does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::api::server::ConnectionLimits;
use crate::api::{ServeCommand, ServeConfig, ServerSettings, auth::TokenSource};
use crate::controller::ControllerCommand;
use crate::embed::batcher::BatchSettings;
use crate::embed::{DecodeLimits, ModelSettings};
use crate::env;
use crate::eval::EvalCommand;
use crate::index::BackendConfig;
use crate::ingest::IngestOptions;
use crate::ingest::command::IngestCommand;
use crate::search::SearchSettings;
use crate::source::{Shard, SourceSpec, s3::S3Settings, urls};
use crate::standalone::StandaloneCommand;
use crate::store::{CollectionOwner, IndexSpec, SearchConsistency};

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
    #[arg(long, env = env::MODEL, default_value = "efficientnet-lite0")]
    pub model: String,
    /// Folder holding the model's .onnx file [default: ./model, or next to the binary's checkout].
    #[arg(long, env = env::MODEL_DIR)]
    pub model_dir: Option<PathBuf>,
    /// ONNX Runtime shared library (libonnxruntime.so.1.*) [default: the project's .venv].
    #[arg(long = "ort-dylib", env = env::ORT_DYLIB_PATH)]
    pub ort_dylib: Option<PathBuf>,
    /// ONNX Runtime threads per session [default: every core when serving; 1 when ingesting].
    #[arg(long, env = env::THREADS)]
    pub threads: Option<usize>,
    /// ONNX Runtime sessions running batches side by side [default: 1 when serving; one per
    /// core, at most 4, when ingesting].
    #[arg(long, env = env::INFERENCE_SESSIONS, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub inference_sessions: Option<u16>,
    /// Largest accepted image, in pixels (width × height).
    #[arg(long, env = env::MAX_IMAGE_PIXELS, default_value_t = DecodeLimits::default().max_pixels)]
    pub max_image_pixels: u64,
    /// Largest accepted image width or height.
    #[arg(long, env = env::MAX_IMAGE_DIMENSION, default_value_t = DecodeLimits::default().max_dimension)]
    pub max_image_dimension: u32,
}

impl ModelArgs {
    fn settings(&self) -> ModelSettings {
        ModelSettings {
            name: self.model.clone(),
            model_dir: self.model_dir.clone(),
            ort_dylib: self.ort_dylib.clone(),
            threads: self.threads,
            sessions: self.inference_sessions.map(usize::from),
            limits: DecodeLimits { max_dimension: self.max_image_dimension, max_pixels: self.max_image_pixels },
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct IndexArgs {
    /// HNSW graph degree.
    #[arg(long, env = env::HNSW_M, default_value_t = IndexSpec::default().m)]
    pub hnsw_m: u32,
    /// HNSW build-time breadth.
    #[arg(long, env = env::HNSW_EF_CONSTRUCTION, default_value_t = IndexSpec::default().ef_construction)]
    pub hnsw_ef_construction: u32,
    /// HNSW search-time breadth (raised to top-k when smaller).
    #[arg(long, env = env::SEARCH_EF, default_value_t = IndexSpec::default().ef)]
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
    #[arg(long, env = env::MILVUS_URI, default_value = "http://127.0.0.1:19530")]
    pub milvus_uri: String,
    /// Milvus token (`user:password` or an API key); none for Milvus Lite.
    #[arg(long, env = env::MILVUS_TOKEN, hide_env_values = true)]
    pub milvus_token: Option<String>,
    /// Milvus user and password, when there is no token (both are needed).
    #[arg(long, env = env::MILVUS_USERNAME)]
    pub milvus_username: Option<String>,
    #[arg(long, env = env::MILVUS_PASSWORD, hide_env_values = true)]
    pub milvus_password: Option<String>,
    /// Milvus database (default: the server's default database).
    #[arg(long, env = env::MILVUS_DATABASE)]
    pub milvus_database: Option<String>,
    /// Catalog database URL: sqlite://PATH, postgres://…, mysql://… (MariaDB too), or `none`
    /// for no SQL catalog (Milvus's own rows are then the record of what is indexed: image ids
    /// derive from URIs, failures are reported per run but not kept).
    #[arg(long, env = env::DATABASE_URL, default_value = "sqlite://data/catalog.db", hide_env_values = true)]
    pub database_url: String,
}

impl BackendArgs {
    fn config(&self) -> BackendConfig {
        // The token Milvus expects: the token itself, else `user:password`.
        let credentials = || Some(format!("{}:{}", self.milvus_username.as_ref()?, self.milvus_password.as_ref()?));
        BackendConfig {
            milvus_uri: self.milvus_uri.clone(),
            milvus_token: self.milvus_token.clone().filter(|t| !t.is_empty()).or_else(credentials),
            milvus_database: self.milvus_database.clone(),
            database_url: self.database_url.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Images per inference call and per database write (larger batches are no faster and take
    /// more memory; see docs/benchmarks.md).
    #[arg(long, env = env::BATCH_SIZE, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub batch_size: u16,
    /// Threads decoding images while the model runs [default: one per core]. The model's
    /// sessions wait for decoded images, so decoding gets every core it can use: on 12 MP
    /// photos it is 80 % of the work (docs/benchmarks.md).
    #[arg(long, env = env::DECODE_WORKERS)]
    pub decode_workers: Option<usize>,
}

impl BatchArgs {
    fn decode_workers(&self) -> usize {
        self.decode_workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
    }
}

#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// A folder of images (searched recursively) or an S3 location, `s3://bucket/prefix`.
    #[arg(required_unless_present = "url_list", conflicts_with = "url_list")]
    pub source: Option<String>,
    /// A file listing image URLs, one per line (blank lines and `#` comments are ignored).
    #[arg(long, env = env::URL_LIST)]
    pub url_list: Option<PathBuf>,
    /// Internal networks URL-list fetches may reach (CIDRs, comma-separated). Private,
    /// loopback, link-local and metadata addresses are refused unless listed here.
    #[arg(long, env = env::ALLOW_PRIVATE_NETWORKS, value_delimiter = ',')]
    pub allow_private_network: Vec<String>,
    /// Time limit for fetching one URL, body included.
    #[arg(long, env = env::URL_TIMEOUT_SECONDS, default_value_t = urls::REQUEST_TIMEOUT.as_secs())]
    pub url_timeout_seconds: u64,
    /// Endpoint of a non-AWS S3-compatible store, e.g. http://minio.storage:9000.
    #[arg(long, env = env::S3_ENDPOINT)]
    pub s3_endpoint: Option<String>,
    /// Region of the bucket (credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = env::AWS_REGION)]
    pub s3_region: Option<String>,
}

impl SourceArgs {
    fn spec(&self) -> SourceSpec {
        match &self.url_list {
            Some(file) => SourceSpec::UrlList {
                file: file.clone(),
                allowed_networks: self.allow_private_network.clone(),
                timeout: Duration::from_secs(self.url_timeout_seconds.max(1)),
            },
            None => SourceSpec::Location {
                location: self.source.clone().unwrap_or_default(),
                s3: S3Settings {
                    endpoint: self.s3_endpoint.clone(),
                    region: self.s3_region.clone(),
                    credentials: None,
                },
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Collection to ingest into.
    #[arg(long, env = env::COLLECTION, default_value = "images")]
    pub collection: String,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// This run's shard of the source, 0-based (in an Indexed Job: the pod's completion index).
    #[arg(long, env = env::JOB_COMPLETION_INDEX, default_value_t = 0)]
    pub shard_index: u32,
    /// How many shards split the source, by a hash of each image's path.
    #[arg(long, env = env::SHARD_COUNT, default_value_t = 1)]
    pub shard_count: u32,
    /// Remove images that are gone from the source (only its own, and only in this shard). For
    /// a URL list, every http(s) image of the collection counts as the list's: feed one
    /// collection from one list when pruning.
    #[arg(long, env = env::PRUNE)]
    pub prune: bool,
    /// Also write the summary as compact JSON (≤ 4 KiB) to this file. Ingest Jobs point it at
    /// the container's termination-message file, where the controller reads it back.
    #[arg(long, env = env::SUMMARY_FILE)]
    pub summary_file: Option<PathBuf>,
    /// The ImageCollection (`<namespace>/<name>`) this run works for, as recorded in the Milvus
    /// collection's `imgsearch.io/owner` property: a collection recorded as another's is
    /// refused, one recorded as nobody's is claimed. Ingest Jobs get it from the controller.
    #[arg(long, env = env::COLLECTION_OWNER, value_name = "NAMESPACE/NAME")]
    pub collection_owner: Option<String>,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub index: IndexArgs,
}

impl IngestArgs {
    pub fn command(&self) -> anyhow::Result<IngestCommand> {
        let shard = Shard::new(self.shard_index, self.shard_count)
            .map_err(|problem| anyhow::anyhow!("--shard-index/--shard-count: {problem}"))?;
        let batch_size = usize::from(self.batch.batch_size);
        if let Some(owner) = &self.collection_owner
            && !owner
                .split_once('/')
                .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        {
            anyhow::bail!("--collection-owner {owner:?}: expected <namespace>/<name>");
        }
        let options = IngestOptions {
            shard,
            prune: self.prune,
            owner: self.collection_owner.clone().map(|object| CollectionOwner { object, uid: None }),
            ..IngestOptions::new(&self.collection, batch_size, self.batch.decode_workers())
        };
        Ok(IngestCommand {
            source: self.source.spec(),
            backend: self.backend.config(),
            model: self.model.settings(),
            index: self.index.spec(),
            options,
            json: self.json,
            summary_file: self.summary_file.clone(),
        })
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Collection searched when a request names none.
    #[arg(long, env = env::COLLECTION, default_value = "images")]
    pub collection: String,
    /// Address to listen on.
    #[arg(long, env = env::LISTEN, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Folders `POST /img/load` may read (repeat, or colon-separated in the env var).
    #[arg(long = "load-root", env = env::LOAD_ROOTS, value_delimiter = ':')]
    pub load_roots: Vec<PathBuf>,
    /// Where uploaded images are stored (named by content hash).
    #[arg(long, env = env::UPLOAD_DIR, default_value = "data/uploads")]
    pub upload_dir: PathBuf,
    /// Largest request body in bytes.
    #[arg(long, env = env::MAX_BODY_BYTES, default_value_t = ServeConfig::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Query images decoded at once, beside the model [default: one per core].
    #[arg(long, env = env::QUERY_DECODERS)]
    pub query_decoders: Option<usize>,
    /// Most query images in one forward pass of the model: queries arriving together are
    /// embedded together (a lone query runs at once, nothing waits for company).
    #[arg(long, env = env::MAX_QUERY_BATCH, default_value_t = BatchSettings::default().max_batch as u16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_query_batch: u16,
    /// Most decoded query images waiting for the model; more wait (see --queue-timeout-seconds),
    /// then get 503 with Retry-After.
    #[arg(long, env = env::MAX_QUEUED_QUERIES, default_value_t = BatchSettings::default().max_queued as u16, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_queued_queries: u16,
    /// Longest a query waits for a decoder and for room in the model's queue before a 503.
    #[arg(long, env = env::QUEUE_TIMEOUT_SECONDS, default_value_t = SearchSettings::default().queue_timeout.as_secs())]
    pub queue_timeout_seconds: u64,
    /// The bucket search results' images are read from, `s3://bucket/prefix` (a collection
    /// ingested from S3); credentials as for ingest.
    #[arg(long, env = env::IMAGE_BUCKET)]
    pub image_bucket: Option<String>,
    /// Endpoint of a non-AWS S3-compatible store holding `--image-bucket`.
    #[arg(long, env = env::S3_ENDPOINT)]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = env::AWS_REGION)]
    pub s3_region: Option<String>,
    /// A file holding the bearer token that write routes (uploads, loads, drops) require.
    #[arg(long, env = env::AUTH_TOKEN_FILE, conflicts_with = "auth_token")]
    pub auth_token_file: Option<PathBuf>,
    /// The same token given directly, for an environment variable set from a Secret (a token
    /// on a command line is visible to every user of the machine).
    #[arg(long, env = env::AUTH_TOKEN, hide_env_values = true)]
    pub auth_token: Option<Redacted>,
    /// Require the token on searches, counts and image bytes too (probes and the page stay open).
    #[arg(long, env = env::AUTH_READS, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub auth_reads: bool,
    /// How fresh searches must be: `session` sees this server's own uploads at once and other
    /// writers' (ingest Jobs) within Milvus's staleness bound, without waiting; `strong` waits
    /// for every write before the search (≈ 200 ms a search on Milvus 2.3).
    #[arg(long, env = env::SEARCH_CONSISTENCY, value_enum, default_value_t = Consistency::Session)]
    pub search_consistency: Consistency,
    /// After SIGTERM or Ctrl-C, keep answering this long (readiness failing) before closing the
    /// listener, so load balancers stop sending first; in-flight requests are finished either way.
    #[arg(long, env = env::SHUTDOWN_DRAIN_SECONDS, default_value_t = 0)]
    pub shutdown_drain_seconds: u64,
    /// Allow searching by the URL of an image on the web (`url` form field). Off by default:
    /// it makes the server fetch addresses a client chooses.
    #[arg(long, env = env::SEARCH_BY_URL, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub search_by_url: bool,
    /// Internal networks searches by URL may reach (CIDRs, comma-separated). Private, loopback,
    /// link-local and metadata addresses are refused unless listed here.
    #[arg(
        long = "search-url-allow-network",
        env = env::SEARCH_URL_ALLOW_NETWORKS,
        value_delimiter = ',',
        requires = "search_by_url"
    )]
    pub search_url_allow_networks: Vec<String>,
    /// Seconds a client has to send a request's headers (from connecting, or from the previous
    /// response); then the connection is closed. Stops clients that connect and send nothing.
    #[arg(long, env = env::HEADER_TIMEOUT_SECONDS, default_value_t = LIMITS.header_timeout.as_secs())]
    pub header_timeout_seconds: u64,
    /// Seconds a request body may stop arriving before the request is answered 408 and the
    /// connection closed (a pause between pieces, not a total: slow uploads that move are kept).
    #[arg(long, env = env::BODY_IDLE_TIMEOUT_SECONDS, default_value_t = LIMITS.body_idle_timeout.as_secs())]
    pub body_idle_timeout_seconds: u64,
    /// Open connections at most; more are closed when accepted.
    #[arg(long, env = env::MAX_CONNECTIONS, default_value_t = LIMITS.max_connections)]
    pub max_connections: usize,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub index: IndexArgs,
}

/// The server's connection limits by default (the flags above).
const LIMITS: ConnectionLimits = ConnectionLimits::DEFAULT;

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

impl ServeArgs {
    pub fn command(&self) -> ServeCommand {
        let token = match (&self.auth_token_file, &self.auth_token) {
            (Some(path), _) => TokenSource::File(path.clone()),
            (None, Some(token)) => TokenSource::Value(token.0.clone()),
            (None, None) => TokenSource::None,
        };
        let server = ServerSettings {
            listen: self.listen,
            load_roots: self.load_roots.clone(),
            upload_dir: self.upload_dir.clone(),
            max_body_bytes: self.max_body_bytes,
            query_decoders: self.query_decoders.unwrap_or_else(|| SearchSettings::default().query_decoders),
            batching: BatchSettings {
                max_batch: usize::from(self.max_query_batch),
                max_queued: usize::from(self.max_queued_queries),
            },
            queue_timeout: Duration::from_secs(self.queue_timeout_seconds.max(1)),
            batch_size: usize::from(self.batch.batch_size),
            decode_workers: self.batch.decode_workers(),
            image_bucket: self.image_bucket.clone(),
            s3: S3Settings { endpoint: self.s3_endpoint.clone(), region: self.s3_region.clone(), credentials: None },
            token,
            protect_reads: self.auth_reads,
            search_consistency: match self.search_consistency {
                Consistency::Strong => SearchConsistency::Strong,
                Consistency::Session => SearchConsistency::Session,
            },
            shutdown_drain: Duration::from_secs(self.shutdown_drain_seconds),
            search_by_url: self.search_by_url.then(|| self.search_url_allow_networks.clone()),
            connection_limits: ConnectionLimits {
                header_timeout: Duration::from_secs(self.header_timeout_seconds.max(1)),
                body_idle_timeout: Duration::from_secs(self.body_idle_timeout_seconds.max(1)),
                max_connections: self.max_connections.max(1),
            },
        };
        ServeCommand {
            collection: self.collection.clone(),
            backend: self.backend.config(),
            model: self.model.settings(),
            index: self.index.spec(),
            server,
        }
    }
}

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    /// Folder of images to ingest before serving.
    #[arg(long, env = env::IMAGES, default_value = "data/sample")]
    pub images: PathBuf,
    /// Where Milvus Lite, the catalog and uploads keep their data.
    #[arg(long, env = env::DATA_DIR, default_value = "data/standalone")]
    pub data_dir: PathBuf,
    /// Collection to ingest into and search.
    #[arg(long, env = env::COLLECTION, default_value = "images")]
    pub collection: String,
    /// Use this Milvus instead of starting Milvus Lite.
    #[arg(long)]
    pub external_milvus: Option<String>,
    /// The milvus-lite command [default: .venv/bin/milvus-lite, then PATH].
    #[arg(long, env = env::MILVUS_LITE)]
    pub milvus_lite_bin: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = env::LISTEN, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Extra folders `POST /img/load` may read (the images folder always may).
    #[arg(long = "load-root", env = env::LOAD_ROOTS, value_delimiter = ':')]
    pub load_roots: Vec<PathBuf>,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub index: IndexArgs,
}

impl StandaloneArgs {
    pub fn command(&self) -> StandaloneCommand {
        StandaloneCommand {
            images: self.images.clone(),
            data_dir: self.data_dir.clone(),
            collection: self.collection.clone(),
            external_milvus: self.external_milvus.clone(),
            milvus_lite_bin: self.milvus_lite_bin.clone(),
            listen: self.listen,
            load_roots: self.load_roots.clone(),
            batch_size: usize::from(self.batch.batch_size),
            decode_workers: self.batch.decode_workers(),
            model: self.model.settings(),
            index: self.index.spec(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Container image the ingest Jobs and search Deployments run (this binary's image).
    #[arg(long, env = env::IMAGE)]
    pub image: String,
    /// imagePullPolicy of the ingest and search containers (default: Kubernetes' own).
    #[arg(long, env = env::IMAGE_PULL_POLICY, value_enum)]
    pub image_pull_policy: Option<PullPolicy>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = env::CONTROLLER_LISTEN, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Elect one leader among replicas with a Lease; `false` for a single replica run by hand.
    #[arg(long, env = env::LEADER_ELECTION, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the Lease (default: the client's namespace, i.e. the pod's own).
    #[arg(long, env = env::POD_NAMESPACE)]
    pub lease_namespace: Option<String>,
    /// The Lease's name. The leader-election Role grants `get` and `update` on this one name
    /// only (`resourceNames` in manifests/base/rbac.yaml): change both together.
    #[arg(long, env = env::LEASE_NAME, default_value = "imgsearch-controller")]
    pub lease_name: String,
    /// This replica's identity in the election (default: the pod name, else the host name).
    #[arg(long, env = env::POD_NAME)]
    pub identity: Option<String>,
    /// How long a collection's pod may wait to start (a Secret, claim or image missing) before
    /// the collection reports it as `Stalled` (`PodNotStarting`): long enough for a retried
    /// image pull or a Secret applied just after the collection.
    #[arg(long, env = env::POD_START_GRACE_SECONDS, default_value_t = 120)]
    pub pod_start_grace_seconds: u64,
}

impl ControllerArgs {
    pub fn command(&self) -> ControllerCommand {
        ControllerCommand {
            children: crate::controller::children::ChildConfig {
                image: self.image.clone(),
                image_pull_policy: self.image_pull_policy.map(|policy| policy.kubernetes_name().to_string()),
            },
            listen: self.listen,
            leader_election: self.leader_election,
            lease_namespace: self.lease_namespace.clone(),
            lease_name: self.lease_name.clone(),
            identity: self.identity.clone(),
            pod_start_grace: std::time::Duration::from_secs(self.pod_start_grace_seconds),
        }
    }
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

impl EvalArgs {
    pub fn command(&self) -> EvalCommand {
        EvalCommand {
            labels_from_dirs: self.labels_from_dirs.clone(),
            near_duplicates: self.near_duplicates.clone(),
            k: self.k.clone(),
            json: self.json,
            model: self.model.settings(),
        }
    }
}

/// `--search-consistency`'s values (the store's [`SearchConsistency`], spelt for a command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    Session,
    Strong,
}

/// `--image-pull-policy`'s values: Kubernetes' own, spelt as Kubernetes spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    #[value(name = "Always")]
    Always,
    #[value(name = "IfNotPresent")]
    IfNotPresent,
    #[value(name = "Never")]
    Never,
}

impl PullPolicy {
    /// The container's `imagePullPolicy`.
    pub fn kubernetes_name(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}
