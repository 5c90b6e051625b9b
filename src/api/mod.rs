//! The search API (axum): a versioned JSON API under `/v1`, the Milvus bootcamp's routes for
//! existing scripts and web clients, health probes and the web page. The handlers parse requests
//! and shape answers; the work is the search service's ([`crate::search`]). [`serve`] runs the
//! server until a shutdown, [`run`] is the `imgsearch serve` command.

pub mod auth;
mod bootcamp;
pub mod config;
pub mod error;
pub mod extract;
pub mod form;
pub mod metrics;
mod page;
pub mod server;
mod starting;
mod v1;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use config::{ServeConfig, ServerSettings};
pub use error::ApiError;
pub use form::{UploadForm, read_form};

use crate::embed::ModelSettings;
use crate::index::{BackendConfig, ImageIndex};
use crate::search::{ImageContent, SearchService};
use crate::shutdown::Shutdown;
use crate::store::IndexSpec;
use extract::WholeNumber;

pub type AppState = Arc<ServerState>;

/// What every handler shares: the search service and the server's own settings and metrics.
pub struct ServerState {
    pub service: SearchService,
    pub config: ServeConfig,
    pub metrics: metrics::ApiMetrics,
    /// The OpenAPI document, serialised once.
    openapi_json: String,
    /// Set on a shutdown signal: readiness fails so load balancers stop sending.
    pub draining: AtomicBool,
}

impl ServerState {
    pub fn new(index: ImageIndex, config: ServeConfig) -> AppState {
        let service = SearchService::new(index, config.search.clone());
        let model = service.model();
        let metrics =
            metrics::ApiMetrics::new(model.spec().name, model.dimension(), model.sessions(), service.metrics());
        Arc::new(Self {
            metrics,
            openapi_json: openapi().to_pretty_json().unwrap_or_default(),
            service,
            config,
            draining: AtomicBool::new(false),
        })
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

/// Results wanted: the server's default, or 1 to its maximum.
fn top_k(state: &ServerState, requested: Option<WholeNumber>) -> Result<usize, ApiError> {
    let Some(requested) = requested else { return Ok(state.config.default_top_k) };
    let k = requested.within("top_k", 1..=state.config.max_top_k as u64)?;
    Ok(k as usize)
}

/// An image the service read: its bytes with their content type, or a redirect to its URL.
fn image_response(content: ImageContent) -> Response {
    match content {
        ImageContent::Elsewhere(url) => axum::response::Redirect::temporary(&url).into_response(),
        ImageContent::Bytes { bytes, mime } => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
                (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
                (header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=300")),
            ],
            bytes,
        )
            .into_response(),
    }
}

/// Serves `state` on `listener` until `shutdown`; then, for the configured drain, keeps
/// answering with readiness failing (load balancers catch up), stops accepting and finishes
/// the requests in flight.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, shutdown: Shutdown) -> std::io::Result<()> {
    let drain = state.config.shutdown_drain;
    let limits = state.config.connection_limits;
    let draining = Arc::clone(&state);
    let stop = async move {
        shutdown.requested().await;
        if !drain.is_zero() {
            draining.draining.store(true, Ordering::Relaxed);
            tracing::info!(
                seconds = drain.as_secs_f64(),
                "shutting down: readiness off, still answering while load balancers catch up"
            );
            tokio::time::sleep(drain).await;
        }
        tracing::info!("shutting down: no new connections; finishing requests in flight");
    };
    server::serve(listener, app(state), limits, stop).await?;
    tracing::info!("search API stopped");
    Ok(())
}

/// Binds `listen`, says where it serves, and serves `index` until `shutdown` (see [`serve`]).
pub async fn listen_and_serve(
    listen: SocketAddr,
    index: ImageIndex,
    config: ServeConfig,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    let state = ServerState::new(index, config);
    tracing::info!(%address, "search API listening");
    eprintln!("imgsearch is serving on http://{address}/  (Ctrl-C stops it)");
    Ok(serve(listener, state, shutdown).await?)
}

/// `imgsearch serve` as its flags give it.
#[derive(Debug, Clone)]
pub struct ServeCommand {
    /// Collection searched when a request names none.
    pub collection: String,
    pub backend: BackendConfig,
    pub model: ModelSettings,
    pub index: IndexSpec,
    pub server: ServerSettings,
}

pub async fn run(command: ServeCommand, shutdown: Shutdown) -> anyhow::Result<()> {
    // Settings first: a bad flag or token file is reported at once, not after Milvus answers.
    let config = command.server.resolve(&command.collection)?;
    let listen = command.server.listen;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "search API listening; starting");
    // Answer from the first moment (see `starting`): probes see a live process that is not
    // ready yet, and the port the real server takes over never stops answering.
    let starting = starting::Starting::new("starting");
    let opening = starting::open_index(&command, &starting);
    let stop = shutdown.requested();
    let (opened, connections) =
        server::accept_until(&listener, starting::router(Arc::clone(&starting)), config.connection_limits, async {
            tokio::select! {
                opened = opening => Some(opened),
                () = stop => None,
            }
        })
        .await;
    connections.shutdown().await;
    let Some(opened) = opened else {
        tracing::info!("shutdown requested while starting");
        return Ok(());
    };
    let index = opened?;
    if config.auth.is_some() {
        tracing::info!(protect_reads = command.server.protect_reads, "bearer token required on write routes");
    }
    let state = ServerState::new(index, config);
    tracing::info!(%address, "search API ready");
    eprintln!("imgsearch is serving on http://{address}/  (Ctrl-C stops it)");
    Ok(serve(listener, state, shutdown).await?)
}
