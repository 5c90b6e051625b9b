//! The search API (axum): a versioned JSON API under `/v1`, the Milvus bootcamp's routes for
//! existing scripts and web clients, health probes and the web page.

pub mod auth;
mod bootcamp;
pub mod error;
pub mod metrics;
mod page;
pub mod server;
mod v1;

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::Multipart;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

pub use error::ApiError;

use crate::catalog::{ImageRecord, ImageStatus, NewImage};
use crate::embed::preprocess;
use crate::ingest::Ingestor;
use crate::progress::Progress;
use crate::store::{Hit, SearchFilter};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Settings of the search server that are not connections.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Collection used when a request names none (`table_name` / `collection`).
    pub default_collection: String,
    /// Folders `/img/load` may read; anything else is refused. Stored canonicalised.
    pub load_roots: Vec<PathBuf>,
    /// Where uploads are stored, named by content hash.
    pub upload_dir: PathBuf,
    pub max_body_bytes: usize,
    pub default_top_k: usize,
    pub max_top_k: usize,
    /// Inferences allowed at once; more requests wait up to `queue_timeout`, then get 503.
    pub max_concurrent_inference: usize,
    pub queue_timeout: Duration,
    pub batch_size: usize,
    pub decode_workers: usize,
    /// Where images catalogued as `s3://…` are read from, when the collection came from a bucket.
    pub image_bucket: Option<Arc<crate::source::s3::Bucket>>,
    /// A bearer token for write routes (and reads, if it says so); `None`: everything open.
    pub auth: Option<auth::AuthConfig>,
    /// Fetches query images for searches by URL; `None`: searching by URL is refused.
    pub url_fetcher: Option<Arc<crate::source::urls::Fetcher>>,
    /// How long to keep answering after a shutdown signal before the listener closes.
    pub shutdown_drain: Duration,
    /// What one client may hold: header and body timeouts, open connections.
    pub connection_limits: server::ConnectionLimits,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            default_collection: "images".into(),
            load_roots: Vec::new(),
            upload_dir: PathBuf::from("data/uploads"),
            max_body_bytes: 20 << 20,
            default_top_k: 10,
            max_top_k: 100,
            max_concurrent_inference: 2,
            queue_timeout: Duration::from_secs(10),
            batch_size: 8,
            decode_workers: 1,
            image_bucket: None,
            auth: None,
            url_fetcher: None,
            connection_limits: server::ConnectionLimits::default(),
            shutdown_drain: Duration::ZERO,
        }
    }
}

pub type AppState = Arc<ServerState>;

pub struct ServerState {
    pub ingestor: Ingestor,
    pub config: ServeConfig,
    /// Progress of the current or last `/img/load`, for `GET /progress`.
    pub progress: Progress,
    pub metrics: metrics::ApiMetrics,
    /// The OpenAPI document, serialised once.
    openapi_json: String,
    inference: Semaphore,
    /// One `/img/load` at a time: two loads of one collection would race on the same rows.
    load: tokio::sync::Mutex<()>,
    /// Uploads and deletes one at a time: an upload of bytes already stored reuses the file, so
    /// a delete removing it "because no row names it" must not run between the two steps.
    uploads: tokio::sync::Mutex<()>,
    /// Set on a shutdown signal: readiness fails so load balancers stop sending.
    pub draining: std::sync::atomic::AtomicBool,
    /// Collections seen to exist in Milvus, so a search skips the existence check's round
    /// trip (1–8 ms measured). Only presence is remembered, and a call that finds a remembered
    /// collection gone (dropped by another server or the controller) forgets it: that call
    /// answers 404 as the check would have, and the next one checks again.
    known_collections: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl ServerState {
    pub fn new(ingestor: Ingestor, config: ServeConfig) -> AppState {
        let permits = config.max_concurrent_inference.max(1);
        let model = &ingestor.model;
        let metrics = metrics::ApiMetrics::new(model.spec().name, model.dimension(), model.sessions());
        Arc::new(Self {
            metrics,
            openapi_json: openapi().to_pretty_json().unwrap_or_default(),
            ingestor,
            config,
            progress: Progress::silent(),
            inference: Semaphore::new(permits),
            load: Default::default(),
            uploads: Default::default(),
            draining: Default::default(),
            known_collections: Default::default(),
        })
    }

    fn known_collections(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        // Poisoning cannot leave the set half-changed (each use is one insert or remove).
        self.known_collections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Passes a Milvus result through, forgetting the collection if Milvus no longer has it.
    fn forget_if_missing<T>(
        &self,
        collection: &str,
        result: Result<T, crate::store::StoreError>,
    ) -> Result<T, crate::store::StoreError> {
        if let Err(crate::store::StoreError::CollectionNotFound { .. }) = &result {
            self.forget_collection(collection);
        }
        result
    }

    fn forget_collection(&self, collection: &str) {
        self.known_collections().remove(collection);
    }
}

/// Every route, each registered together with its OpenAPI description.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(page::router())
        .merge(v1::router())
        .merge(bootcamp::router())
        .routes(routes!(metrics::metrics_text))
        .routes(routes!(openapi_json))
}

/// The OpenAPI 3.1 document of the whole server (`imgsearch openapi` prints it).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    let mut document = routes().into_openapi();
    document.info = utoipa::openapi::InfoBuilder::new()
        .title("imgsearch search API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Reverse image search over a Milvus collection: search by image, URL or id, near-duplicates, \
             listings, uploads. `/v1` is the versioned API; `/img/*`, `/progress` and `/data` keep the \
             Milvus bootcamp's shapes for its scripts and web client.",
        ))
        .license(Some(utoipa::openapi::LicenseBuilder::new().name("Apache-2.0").build()))
        .build();
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "Needed on write routes when the server has a token (`--auth-token-file`), and on reads too with `--auth-reads`.",
                ))
                .build(),
        ),
    );
    document
}

/// The OpenAPI document of this server.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document", body = serde_json::Value)))]
async fn openapi_json(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], state.openapi_json.clone()).into_response()
}

/// An image's bytes, in the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // documentation only
pub struct ImageBytes(Vec<u8>);

/// The body of every error answer: `{"error": {"code", "message"}}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `request_timeout`, `payload_too_large`, `unsupported_media_type`, `unprocessable_image`,
    /// `unavailable`, `internal`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

pub fn app(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    let (router, _) = routes().split_for_parts();
    router
        // Innermost: the handlers read a body that cannot stall forever.
        .layer(axum::middleware::from_fn_with_state(state.clone(), server::body_idle_timeout))
        // Checked before any body is read: a refused upload costs nothing.
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(DefaultBodyLimit::max(limit))
        // Outermost, so refusals by the layers above are counted and logged too.
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

/// The collection a request names, or the default one; invalid names are a 400.
fn collection_or_default(state: &ServerState, requested: Option<&str>) -> Result<String, ApiError> {
    let name = requested.filter(|n| !n.is_empty()).unwrap_or(&state.config.default_collection);
    crate::store::validate_collection_name(name).map_err(ApiError::BadRequest)?;
    Ok(name.to_string())
}

fn top_k(state: &ServerState, requested: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = requested.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(state.config.default_top_k);
    };
    let max = state.config.max_top_k;
    match text.parse::<usize>() {
        Ok(k) if (1..=max).contains(&k) => Ok(k),
        _ => Err(ApiError::BadRequest(format!("top_k must be a whole number from 1 to {max}, got {text:?}"))),
    }
}

/// An uploaded form: the bytes of its `image` file field and its short text fields.
/// Public for the multipart fuzz target (fuzz/), which drives [`read_form`] directly.
pub struct UploadForm {
    image: Option<Vec<u8>>,
    fields: Vec<(String, String)>,
}

impl UploadForm {
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A 400 naming the text fields that are not among `known` (a misspelt option would
    /// otherwise be ignored in silence).
    fn refuse_fields_other_than(&self, known: &[&str]) -> Result<(), ApiError> {
        let unknown: Vec<&str> =
            self.fields.iter().map(|(name, _)| name.as_str()).filter(|name| !known.contains(name)).collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let quoted = |names: &[&str]| names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        let takes =
            if known.is_empty() { "only `image`".to_string() } else { format!("`image` and {}", quoted(known)) };
        Err(ApiError::BadRequest(format!(
            "unknown form field{} {}; this form takes {takes}",
            if unknown.len() == 1 { "" } else { "s" },
            quoted(&unknown)
        )))
    }

    pub fn image(&self) -> Result<&[u8], ApiError> {
        self.image.as_deref().ok_or_else(|| ApiError::BadRequest("the form has no `image` file field".into()))
    }
}

/// Reads an upload: the `image` file's bytes and text fields of at most 1024 bytes; other file
/// fields are skipped unread. The body's size limit is the router's (`DefaultBodyLimit`).
pub async fn read_form(mut multipart: Multipart) -> Result<UploadForm, ApiError> {
    let mut form = UploadForm { image: None, fields: Vec::new() };
    while let Some(field) = multipart.next_field().await? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            form.image = Some(field.bytes().await?.to_vec());
        } else if field.file_name().is_none() {
            let value = field.text().await?;
            if value.len() > 1024 {
                return Err(ApiError::BadRequest(format!("form field {name:?} is longer than 1024 bytes")));
            }
            form.fields.push((name, value));
        }
        // Other file fields are ignored: only `image` is ever read.
    }
    Ok(form)
}

/// A 404 naming the collection unless Milvus has it (asked once; see `known_collections`).
async fn require_collection(state: &ServerState, collection: &str) -> Result<(), ApiError> {
    if state.known_collections().contains(collection) {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let exists = state.ingestor.store.has_collection(collection).await;
    state.metrics.stage("milvus_check", started.elapsed());
    if !exists? {
        return Err(ApiError::NotFound(format!(
            "collection {collection:?} does not exist; load or upload images first"
        )));
    }
    state.known_collections().insert(collection.to_string());
    Ok(())
}

/// Image bytes → nearest images, holding an inference permit for the embedding only.
async fn search_by_image(
    state: &ServerState,
    collection: &str,
    bytes: Vec<u8>,
    top_k: usize,
) -> Result<Vec<Hit>, ApiError> {
    require_collection(state, collection).await?;
    let vector = embed_query(state, bytes).await?;
    search_by_vector(state, collection, vector, top_k, &SearchFilter::default()).await
}

async fn search_by_vector(
    state: &ServerState,
    collection: &str,
    vector: Vec<f32>,
    top_k: usize,
    filter: &SearchFilter,
) -> Result<Vec<Hit>, ApiError> {
    // Timed whatever the outcome: a slow failure is exactly what the histogram is for.
    let started = std::time::Instant::now();
    let hits = state.ingestor.store.search_many(collection, vec![vector], top_k, filter, &state.ingestor.index).await;
    state.metrics.stage("milvus_search", started.elapsed());
    Ok(state.forget_if_missing(collection, hits)?.pop().unwrap_or_default())
}

/// The query image of a search by URL, through the SSRF-guarded fetcher (no private, loopback
/// or link-local addresses unless allowed, http(s) only, size and time limits, redirects
/// checked again).
async fn fetch_query_image(state: &ServerState, url: &str) -> Result<Vec<u8>, ApiError> {
    let fetcher = state.config.url_fetcher.as_ref().ok_or_else(|| {
        ApiError::Forbidden(
            "searching by URL is disabled on this server (start it with --search-by-url); upload the image instead"
                .into(),
        )
    })?;
    let started = std::time::Instant::now();
    let fetched = fetcher.fetch(url).await;
    state.metrics.stage("fetch_url", started.elapsed());
    // Whatever went wrong over there (refused address, 404, a down or slow host) is the URL's
    // problem, not this server's: a 422 with the reason, never a 5xx of ours.
    fetched.map_err(|error| ApiError::Unprocessable(format!("cannot search by url {url:?}: {error}")))
}

/// Removes an image from Milvus first, then from the catalog: if Milvus fails nothing changed;
/// if the catalog fails after, the row is still there and a retry finishes the job. An
/// uploaded file goes too once no catalog row names it.
async fn delete_image(state: &ServerState, record: &ImageRecord) -> Result<(), ApiError> {
    let _no_upload_meanwhile = state.uploads.lock().await;
    match state.ingestor.store.delete(&record.collection, &[record.id]).await {
        Ok(()) | Err(crate::store::StoreError::CollectionNotFound { .. }) => {}
        Err(error) => return Err(error.into()),
    }
    state.ingestor.catalog.delete_images(&[record.id]).await?;
    // The image is deleted; the file is tidying-up, and its failure is logged, not answered.
    let path = Path::new(&record.uri);
    if path.starts_with(&state.config.upload_dir) {
        match state.ingestor.catalog.find_by_uri(&record.uri).await {
            Ok(None) => {
                if let Err(error) = tokio::fs::remove_file(path).await {
                    tracing::warn!(path = %path.display(), %error, "deleted image's upload file could not be removed");
                }
            }
            Ok(Some(_)) => {} // another collection holds the same upload
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "deleted image's upload file left: catalog lookup failed");
            }
        }
    }
    tracing::info!(id = record.id, collection = %record.collection, uri = %record.uri, "deleted image");
    Ok(())
}

async fn embed_query(state: &ServerState, bytes: Vec<u8>) -> Result<Vec<f32>, ApiError> {
    let queued = std::time::Instant::now();
    let permit = tokio::time::timeout(state.config.queue_timeout, state.inference.acquire()).await;
    // Recorded before the outcome is judged: waits that end in a 503 are the ones to see.
    state.metrics.stage("queue", queued.elapsed());
    let _permit = permit
        .map_err(|_| ApiError::Busy("the server is busy embedding other images; retry shortly".into()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let model = Arc::clone(&state.ingestor.model);
    let limits = state.ingestor.limits;
    let started = std::time::Instant::now();
    let embedded = tokio::task::spawn_blocking(move || model.embed_bytes(&bytes, limits))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    state.metrics.stage("embed", started.elapsed());
    match embedded {
        Ok((_, vector)) => Ok(vector),
        Err(crate::embed::EmbedBytesError::Image(e)) => Err(e.into()),
        Err(crate::embed::EmbedBytesError::Embed(e)) => Err(e.into()),
    }
}

/// Validates, stores (under its content hash, never a client-chosen name) and indexes an upload.
async fn add_upload(state: &ServerState, collection: &str, bytes: Vec<u8>) -> Result<i64, ApiError> {
    let limits = state.ingestor.limits;
    let input = state.ingestor.model.input();
    let (prepared, bytes) = tokio::task::spawn_blocking(move || (preprocess::prepare(&bytes, limits, input), bytes))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let prepared = prepared?;
    let content_hash = hex::encode(Sha256::digest(&bytes));
    let extension = prepared.format.extensions_str().first().copied().unwrap_or("img");
    let path = state.config.upload_dir.join(format!("{content_hash}.{extension}"));
    let _no_delete_meanwhile = state.uploads.lock().await;
    store_upload(&path, &bytes).await?;
    let uri =
        path.to_str().ok_or_else(|| ApiError::Internal("upload directory is not valid UTF-8".into()))?.to_string();
    let image = NewImage {
        uri,
        content_hash,
        size_bytes: bytes.len() as i64,
        width: i64::from(prepared.width),
        height: i64::from(prepared.height),
    };
    Ok(state.ingestor.add_prepared(collection, image, prepared).await?)
}

/// Writes to a temporary name and renames, so a reader never sees half a file.
async fn store_upload(path: &Path, bytes: &[u8]) -> Result<(), ApiError> {
    if tokio::fs::try_exists(path).await.unwrap_or(false) {
        return Ok(()); // same content, same name
    }
    let dir = path.parent().ok_or_else(|| ApiError::Internal("upload path has no parent".into()))?;
    tokio::fs::create_dir_all(dir).await.map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
    let temporary = path.with_extension(format!("partial-{}", std::process::id()));
    tokio::fs::write(&temporary, bytes)
        .await
        .map_err(|e| ApiError::Internal(format!("writing {}: {e}", temporary.display())))?;
    tokio::fs::rename(&temporary, path)
        .await
        .map_err(|e| ApiError::Internal(format!("renaming to {}: {e}", path.display())))?;
    Ok(())
}

/// Serves a catalogued, indexed image's bytes. Only images the catalog lists are ever read.
async fn serve_image(state: &ServerState, record: Option<ImageRecord>, what: &str) -> Result<Response, ApiError> {
    let record = record
        .filter(|r| r.status == ImageStatus::Indexed)
        .ok_or_else(|| ApiError::NotFound(format!("no indexed image {what}")))?;
    // Images of a URL list are the listed URLs: the browser fetches them from their origin, so
    // this server never fetches arbitrary addresses on a client's behalf.
    if record.uri.starts_with("https://") || record.uri.starts_with("http://") {
        return Ok(axum::response::Redirect::temporary(&record.uri).into_response());
    }
    let bytes = if record.uri.starts_with("s3://") {
        let bucket = state.config.image_bucket.as_ref().filter(|bucket| bucket.owns(&record.uri)).ok_or_else(|| {
            ApiError::NotFound(format!(
                "image {what} is in a bucket ({}) this server was not given (start it with --image-bucket)",
                record.uri
            ))
        })?;
        let object = crate::source::SourceImage { uri: record.uri.clone(), size: None };
        bucket.read(&object).await.map_err(|error| match error {
            crate::source::ReadError::Source(error) => {
                ApiError::unavailable("the image bucket is unreachable; try again shortly", error)
            }
            other => ApiError::NotFound(format!("image {what} cannot be read from its bucket: {other}")),
        })?
    } else {
        tokio::fs::read(&record.uri)
            .await
            .map_err(|_| ApiError::NotFound(format!("image {what} is catalogued but its file is no longer readable")))?
    };
    let mime = preprocess::sniff_format(&bytes).map(preprocess::mime_type).unwrap_or("application/octet-stream");
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=300")),
        ],
        bytes,
    )
        .into_response())
}

/// Resolves a folder a client asked to load and checks it lies under an allowed root.
fn allowed_folder(state: &ServerState, requested: &str) -> Result<PathBuf, ApiError> {
    let requested_path = Path::new(requested);
    let refuse = || {
        let roots: Vec<String> = state.config.load_roots.iter().map(|r| r.display().to_string()).collect();
        ApiError::Forbidden(if roots.is_empty() {
            "loading folders is disabled on this server (start it with --load-root DIR)".to_string()
        } else {
            format!("folder {requested:?} is not under an allowed load root ({})", roots.join(", "))
        })
    };
    if !requested_path.is_absolute() || requested_path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refuse());
    }
    match requested_path.canonicalize() {
        // Canonical form resolves symlinks, so a link inside a root cannot point outside it.
        Ok(canonical) if state.config.load_roots.iter().any(|root| canonical.starts_with(root)) => {
            if canonical.is_dir() {
                Ok(canonical)
            } else {
                Err(ApiError::BadRequest(format!("{requested:?} is not a folder")))
            }
        }
        Ok(_) => Err(refuse()),
        Err(_) if state.config.load_roots.iter().any(|root| requested_path.starts_with(root)) => {
            Err(ApiError::NotFound(format!("folder {requested:?} does not exist")))
        }
        Err(_) => Err(refuse()),
    }
}
