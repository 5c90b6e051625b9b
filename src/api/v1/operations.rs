//! Probes: liveness (`/healthz`, the process answers) and readiness (`/readyz`, its
//! dependencies answer and it is not shutting down).

use axum::Json;
use axum::extract::State;

use crate::api::{ApiError, AppState, ErrorBody};

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "`ok`", body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: Milvus and the catalog answer (the model is loaded before the server starts), and
/// the server is not shutting down.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = serde_json::Value),
        (status = 503, description = "Milvus or the catalog unavailable", body = ErrorBody),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::unavailable("shutting down", "readiness refused while draining"));
    }
    state.service.ready().await?;
    Ok(Json(serde_json::json!({ "status": "ready", "model": state.service.model().spec().name })))
}
