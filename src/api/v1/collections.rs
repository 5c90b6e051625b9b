//! Collections: how many vectors one holds (`GET /v1/count`), and every collection the catalog
//! knows with its images counted by state (`GET /v1/collections`).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::CollectionQuery;
use crate::api::extract::ApiQuery;
use crate::api::{ApiError, AppState, ErrorBody, collection_or_default};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CountResponse {
    pub collection: String,
    pub count: u64,
}

/// Vectors searchable in the collection.
#[utoipa::path(
    get, path = "/v1/count", tag = "collections",
    params(CollectionQuery),
    responses(
        (status = 200, description = "The count", body = CountResponse),
        (status = 404, description = "No such collection", body = ErrorBody),
        (status = 503, description = "Milvus unavailable", body = ErrorBody),
    )
)]
pub async fn count(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<CollectionQuery>,
) -> Result<Json<CountResponse>, ApiError> {
    let collection = collection_or_default(&state, query.collection.as_deref())?;
    let count = state.service.count(&collection).await?;
    Ok(Json(CountResponse { collection, count }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CollectionInfo {
    pub name: String,
    /// The collection requests use when they name none.
    pub default: bool,
    pub indexed: i64,
    pub pending: i64,
    pub failed: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CollectionList {
    pub collections: Vec<CollectionInfo>,
}

/// The collections this server's catalog holds, with their images counted by state.
#[utoipa::path(
    get, path = "/v1/collections", tag = "collections",
    responses(
        (status = 200, description = "Every collection, by name", body = CollectionList),
        (status = 503, description = "The catalog is unavailable", body = ErrorBody),
    )
)]
pub async fn collections(State(state): State<AppState>) -> Result<Json<CollectionList>, ApiError> {
    let mut counts = state.service.collections().await?;
    let default = &state.config.default_collection;
    // The default collection is listed even before it holds anything: it is the one searched.
    if !counts.iter().any(|c| &c.name == default) {
        counts.push(crate::catalog::CollectionCounts { name: default.clone(), ..Default::default() });
        counts.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let collections = counts
        .into_iter()
        .map(|c| CollectionInfo {
            default: &c.name == default,
            name: c.name,
            indexed: c.indexed,
            pending: c.pending,
            failed: c.failed,
        })
        .collect();
    Ok(Json(CollectionList { collections }))
}
