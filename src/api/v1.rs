//! The versioned JSON API.

use std::time::Instant;

use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, collection_or_default, read_form, search_by_image, serve_image, top_k};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/search", post(search))
        .route("/v1/images", post(add_image))
        .route("/v1/images/{id}", get(image))
        .route("/v1/count", get(count))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

#[derive(Debug, Deserialize)]
pub struct CollectionQuery {
    pub collection: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SearchResponse {
    pub collection: String,
    pub top_k: usize,
    pub took_ms: f64,
    pub results: Vec<SearchResult>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SearchResult {
    pub id: i64,
    pub uri: String,
    /// Cosine similarity: 1 is identical, 0 unrelated.
    pub score: f32,
    /// 1 − score, for clients that sort by distance.
    pub distance: f32,
    /// Where to fetch the image itself.
    pub image_url: String,
}

/// The optional relevance cut-off: results farther than this (cosine distance, 0 = identical,
/// 2 = opposite) are dropped, so a query with no good match can come back empty.
fn max_distance(requested: Option<&str>) -> Result<Option<f32>, ApiError> {
    let Some(text) = requested.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(None) };
    match text.parse::<f32>() {
        Ok(value) if (0.0..=2.0).contains(&value) => Ok(Some(value)),
        _ => Err(ApiError::BadRequest(format!("max_distance must be a number from 0 to 2, got {text:?}"))),
    }
}

/// `POST /v1/search?collection=` with a multipart `image` file and optional `top_k` and
/// `max_distance` fields.
async fn search(
    State(state): State<AppState>,
    query: Result<Query<CollectionQuery>, QueryRejection>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let started = Instant::now();
    let Query(query) = query?;
    let collection = collection_or_default(&state, query.collection.as_deref())?;
    let form = read_form(multipart?).await?;
    let top_k = top_k(&state, form.field("top_k"))?;
    let max_distance = max_distance(form.field("max_distance"))?;
    let image = form.image()?.to_vec();
    let hits = search_by_image(&state, &collection, image, top_k).await?;
    let results = hits
        .into_iter()
        .filter(|hit| max_distance.is_none_or(|max| 1.0 - hit.score <= max))
        .map(|hit| SearchResult {
            id: hit.id,
            image_url: format!("/v1/images/{}", hit.id),
            uri: hit.uri,
            score: hit.score,
            distance: 1.0 - hit.score,
        })
        .collect();
    Ok(Json(SearchResponse { collection, top_k, took_ms: started.elapsed().as_secs_f64() * 1000.0, results }))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AddImageResponse {
    pub collection: String,
    pub id: i64,
    pub image_url: String,
}

/// `POST /v1/images?collection=` with a multipart `image` file: stores and indexes it.
async fn add_image(
    State(state): State<AppState>,
    query: Result<Query<CollectionQuery>, QueryRejection>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<AddImageResponse>), ApiError> {
    let Query(query) = query?;
    let collection = collection_or_default(&state, query.collection.as_deref())?;
    let form = read_form(multipart?).await?;
    let image = form.image()?.to_vec();
    let id = super::add_upload(&state, &collection, image).await?;
    Ok((StatusCode::CREATED, Json(AddImageResponse { collection, id, image_url: format!("/v1/images/{id}") })))
}

/// `GET /v1/images/{id}`: the bytes of a catalogued image.
async fn image(State(state): State<AppState>, id: Result<Path<i64>, PathRejection>) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let started = Instant::now();
    let record = state.ingestor.catalog.get(id).await;
    state.metrics.stage("catalog_lookup", started.elapsed());
    let record = record?;
    serve_image(&state, record, &format!("with id {id}")).await
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CountResponse {
    pub collection: String,
    pub count: u64,
}

/// `GET /v1/count?collection=`: vectors searchable in the collection.
async fn count(
    State(state): State<AppState>,
    query: Result<Query<CollectionQuery>, QueryRejection>,
) -> Result<Json<CountResponse>, ApiError> {
    let Query(query) = query?;
    let collection = collection_or_default(&state, query.collection.as_deref())?;
    if !state.ingestor.store.has_collection(&collection).await? {
        return Err(ApiError::NotFound(format!("collection {collection:?} does not exist")));
    }
    let count = state.ingestor.store.count(&collection).await?;
    Ok(Json(CountResponse { collection, count }))
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: Milvus and the catalog answer (the model is loaded before the server starts).
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.ingestor.store.ping().await?;
    state.ingestor.catalog.ping().await?;
    Ok(Json(serde_json::json!({ "status": "ready", "model": state.ingestor.model.spec().name })))
}
