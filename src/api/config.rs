//! The search server's settings, one chain for every way it is started: [`ServerSettings`] as
//! `imgsearch serve`'s flags give them (or as `standalone` sets them, [`ServerSettings::on_one_machine`]),
//! and [`ServeConfig`], what the server runs with once [`ServerSettings::resolve`] has checked
//! the folders, read the token file, and set up the bucket, the URL fetcher and the searches'
//! consistency.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::auth::{AuthConfig, AuthConfigError, TokenSource};
use super::server::ConnectionLimits;
use crate::search::SearchSettings;
use crate::source::s3::{self, S3Settings};
use crate::source::{SourceError, urls};
use crate::store::SearchConsistency;

/// What the server runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Collection used when a request names none (`table_name` / `collection`).
    pub default_collection: String,
    pub max_body_bytes: usize,
    pub default_top_k: usize,
    pub max_top_k: usize,
    /// A bearer token for write routes (and reads, if it says so); `None`: everything open.
    pub auth: Option<AuthConfig>,
    /// How long to keep answering after a shutdown signal before the listener closes.
    pub shutdown_drain: Duration,
    /// What one client may hold: header and body timeouts, open connections.
    pub connection_limits: ConnectionLimits,
    /// What the search service behind the routes may do.
    pub search: SearchSettings,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            default_collection: "images".into(),
            max_body_bytes: 20 << 20,
            default_top_k: 10,
            max_top_k: 100,
            auth: None,
            shutdown_drain: Duration::ZERO,
            connection_limits: ConnectionLimits::default(),
            search: SearchSettings::default(),
        }
    }
}

/// The server as its flags describe it.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Folders `POST /img/load` may read; must exist.
    pub load_roots: Vec<PathBuf>,
    pub upload_dir: PathBuf,
    pub max_body_bytes: usize,
    /// Query images decoded at once.
    pub query_decoders: usize,
    /// How queries share the model.
    pub batching: crate::embed::batcher::BatchSettings,
    /// Longest a query waits for a decoder and for room in the model's queue.
    pub queue_timeout: Duration,
    pub batch_size: usize,
    pub decode_workers: usize,
    /// `s3://bucket/prefix` of a bucket-sourced collection, whose images results come from.
    pub image_bucket: Option<String>,
    pub s3: S3Settings,
    pub token: TokenSource,
    pub protect_reads: bool,
    pub search_consistency: SearchConsistency,
    pub shutdown_drain: Duration,
    /// Searching by URL: off with `None`, else on with these internal networks allowed.
    pub search_by_url: Option<Vec<String>>,
    pub connection_limits: ConnectionLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("load root {path} does not exist: {reason}")]
    LoadRoot { path: String, reason: String },
    #[error("upload dir {path}: {reason}")]
    UploadDir { path: String, reason: String },
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// How long a search by URL may take to download its image: shorter than an ingest's limit,
/// since someone is waiting for the answer.
const SEARCH_URL_TIMEOUT: Duration = Duration::from_secs(10);

impl ServerSettings {
    /// A server on one machine, as `imgsearch standalone` runs it beside its own ingest: no
    /// token (loopback by default), no search by URL (a feature to opt into, not the demo's),
    /// Session consistency (this server's own uploads are seen at once without waiting for
    /// every write), the default limits.
    pub fn on_one_machine(
        listen: SocketAddr,
        load_roots: Vec<PathBuf>,
        upload_dir: PathBuf,
        batch_size: usize,
        decode_workers: usize,
    ) -> Self {
        let search = SearchSettings::default();
        Self {
            listen,
            load_roots,
            upload_dir,
            max_body_bytes: ServeConfig::default().max_body_bytes,
            query_decoders: search.query_decoders,
            batching: search.batching,
            queue_timeout: search.queue_timeout,
            batch_size,
            decode_workers,
            image_bucket: None,
            s3: S3Settings::default(),
            token: TokenSource::None,
            protect_reads: false,
            search_consistency: SearchConsistency::Session,
            shutdown_drain: Duration::ZERO,
            search_by_url: None,
            connection_limits: ConnectionLimits::default(),
        }
    }

    /// The configuration these settings mean, serving `collection` by default. Reads the token
    /// file and checks the folders now, so a mistake is reported at start, not at first use.
    pub fn resolve(&self, collection: &str) -> Result<ServeConfig, ConfigError> {
        let mut load_roots = Vec::new();
        for root in self.load_roots.iter().filter(|r| !r.as_os_str().is_empty()) {
            let canonical = root.canonicalize().map_err(|error| ConfigError::LoadRoot {
                path: root.display().to_string(),
                reason: error.to_string(),
            })?;
            load_roots.push(canonical);
        }
        let upload_dir = std::path::absolute(&self.upload_dir).map_err(|error| ConfigError::UploadDir {
            path: self.upload_dir.display().to_string(),
            reason: error.to_string(),
        })?;
        let image_bucket = match &self.image_bucket {
            Some(location) => Some(Arc::new(s3::Bucket::connect(s3::S3Location::parse(location)?, &self.s3)?)),
            None => None,
        };
        let url_fetcher = match &self.search_by_url {
            Some(allowed) => {
                let fetcher = urls::Fetcher::new(urls::AllowedNetworks::parse(allowed)?, SEARCH_URL_TIMEOUT)?;
                Some(Arc::new(fetcher.with_max_bytes(self.max_body_bytes as u64)))
            }
            None => None,
        };
        Ok(ServeConfig {
            default_collection: collection.to_string(),
            max_body_bytes: self.max_body_bytes,
            auth: self.token.config(self.protect_reads)?,
            shutdown_drain: self.shutdown_drain,
            connection_limits: self.connection_limits,
            search: SearchSettings {
                load_roots,
                upload_dir,
                query_decoders: self.query_decoders,
                batching: self.batching,
                queue_timeout: self.queue_timeout,
                batch_size: self.batch_size,
                decode_workers: self.decode_workers,
                image_bucket,
                url_fetcher,
                consistency: self.search_consistency,
            },
            ..ServeConfig::default()
        })
    }
}
