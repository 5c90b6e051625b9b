//! Near-duplicates: of one image (`GET /v1/images/{id}/duplicates`), and the report of
//! near-duplicate pairs across a collection, a page of images at a time (`GET /v1/duplicates`).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{SearchResult, page_limit, page_token, page_token_after};
use crate::api::extract::{ApiPath, ApiQuery, Distance, WholeNumber, blank_is_none};
use crate::api::{ApiError, AppState, ErrorBody, collection_or_default};
use crate::search::duplicates::{self, DEFAULT_DUPLICATE_DISTANCE};

fn duplicate_distance(requested: Option<Distance>) -> f32 {
    requested.map_or(DEFAULT_DUPLICATE_DISTANCE, |d| d.0)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is a 400 that names it, never silently ignored.
#[serde(deny_unknown_fields)]
pub struct DuplicateQuery {
    /// Largest cosine distance that counts as a duplicate (default 0.1).
    #[serde(default, deserialize_with = "blank_is_none")]
    #[param(inline)]
    pub max_distance: Option<Distance>,
    /// Most duplicates returned (1 to the server's maximum top_k; default: that maximum).
    #[serde(default, deserialize_with = "blank_is_none")]
    #[param(inline)]
    pub limit: Option<WholeNumber>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DuplicatesResponse {
    pub id: i64,
    pub uri: String,
    pub collection: String,
    pub max_distance: f32,
    /// Images within `max_distance`, closest first.
    pub duplicates: Vec<SearchResult>,
    /// True when `limit` duplicates were found: there may be more.
    pub truncated: bool,
}

/// Near-duplicates of one image: everything within a distance of it.
#[utoipa::path(
    get, path = "/v1/images/{id}/duplicates", tag = "duplicates",
    params(("id" = i64, Path, description = "Image id"), DuplicateQuery),
    responses(
        (status = 200, description = "The image's near-duplicates", body = DuplicatesResponse),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 404, description = "No such indexed image", body = ErrorBody),
        (status = 503, description = "Milvus or the catalog unavailable", body = ErrorBody),
    )
)]
pub async fn image_duplicates(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<DuplicateQuery>,
) -> Result<Json<DuplicatesResponse>, ApiError> {
    let max_distance = duplicate_distance(query.max_distance);
    let max = state.config.max_top_k as u64;
    let limit = query.limit.unwrap_or(WholeNumber(max)).within("limit", 1..=max)? as usize;
    let found = state.service.duplicates_of(id, max_distance, limit).await?;
    Ok(Json(DuplicatesResponse {
        id,
        uri: found.image.uri,
        collection: found.image.collection,
        max_distance,
        truncated: found.truncated,
        duplicates: found.duplicates.into_iter().map(SearchResult::from_hit).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is a 400 that names it, never silently ignored.
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Collection to report on (default: the server's `--collection`).
    pub collection: Option<String>,
    /// Largest cosine distance that counts as a duplicate (default 0.1).
    #[serde(default, deserialize_with = "blank_is_none")]
    #[param(inline)]
    pub max_distance: Option<Distance>,
    /// Images examined in this page (1–1000, default 100).
    #[serde(default, deserialize_with = "blank_is_none")]
    #[param(inline)]
    pub limit: Option<WholeNumber>,
    /// `next_page_token` of the previous page.
    pub page_token: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DuplicateGroup {
    pub id: i64,
    pub uri: String,
    /// Its near-duplicates with a higher id (so each pair is reported once, on the page of its
    /// lower id), closest first; at most 10 per image.
    pub duplicates: Vec<SearchResult>,
    /// True when 10 were found: there may be more (ask `/v1/images/{id}/duplicates`).
    pub truncated: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DuplicatesReport {
    pub collection: String,
    pub max_distance: f32,
    /// Images examined in this page.
    pub examined: usize,
    pub groups: Vec<DuplicateGroup>,
    /// Pass as `page_token` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// The duplicates report: near-duplicate pairs across the collection, a page of images at a time.
#[utoipa::path(
    get, path = "/v1/duplicates", tag = "duplicates",
    params(ReportQuery),
    responses(
        (status = 200, description = "One page of the report", body = DuplicatesReport),
        (status = 400, description = "Bad parameter or page token", body = ErrorBody),
        (status = 404, description = "No such collection", body = ErrorBody),
        (status = 503, description = "Milvus or the catalog unavailable", body = ErrorBody),
    )
)]
pub async fn duplicates_report(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ReportQuery>,
) -> Result<Json<DuplicatesReport>, ApiError> {
    let collection = collection_or_default(&state, query.collection.as_deref())?;
    let max_distance = duplicate_distance(query.max_distance);
    let limit = page_limit(query.limit)?;
    let after = page_token(query.page_token.as_deref())?;
    let page = state.service.duplicates_page(&collection, max_distance, after, limit).await?;
    let groups = page.groups.into_iter().map(DuplicateGroup::from).collect();
    let next_page_token = page.next_after.map(page_token_after);
    Ok(Json(DuplicatesReport { collection, max_distance, examined: page.examined, groups, next_page_token }))
}

impl From<duplicates::DuplicateGroup> for DuplicateGroup {
    fn from(group: duplicates::DuplicateGroup) -> Self {
        Self {
            id: group.id,
            uri: group.uri,
            duplicates: group.duplicates.into_iter().map(SearchResult::from_hit).collect(),
            truncated: group.truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_distance_defaults_and_bounds() {
        assert_eq!(duplicate_distance(None), DEFAULT_DUPLICATE_DISTANCE);
        assert_eq!(duplicate_distance(Some(Distance(0.02))), 0.02);
        assert!(Distance::parse("3").is_err());
        assert!(Distance::parse("NaN").is_err());
    }
}
