//! The versioned JSON API, one module per resource: searches, images, duplicates, collections
//! and the operations routes (probes). Every handler carries its OpenAPI description
//! (`#[utoipa::path]`); [`router`] registers each one with `routes!`, which adds the route and
//! its documentation together, so `/openapi.json` lists exactly what the server answers.
//! What the resources share is here: the search answer, search options and page parameters.

mod collections;
mod duplicates;
mod images;
mod operations;
mod search;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Distance, WholeNumber};
use super::{ApiError, AppState, ServerState, top_k};
use crate::catalog::ImageRecord;
use crate::search::{QueryImage, SearchRequest, SearchResults};
use crate::store::Hit;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search::search))
        .routes(routes!(images::list_images, images::add_image))
        .routes(routes!(images::image, images::delete_image))
        .routes(routes!(images::image_info))
        .routes(routes!(search::similar))
        .routes(routes!(duplicates::image_duplicates))
        .routes(routes!(duplicates::duplicates_report))
        .routes(routes!(collections::count))
        .routes(routes!(collections::collections))
        .routes(routes!(operations::healthz))
        .routes(routes!(operations::readyz))
}

/// Largest page of a listing or of the duplicates report.
const MAX_PAGE: u64 = 1000;
const DEFAULT_PAGE: u64 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is a 400 that names it, never silently ignored.
#[serde(deny_unknown_fields)]
pub struct CollectionQuery {
    /// Collection to use (default: the server's `--collection`).
    pub collection: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchResponse {
    pub collection: String,
    pub top_k: usize,
    /// The image searched from, for "more like this" (it is never among the results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_id: Option<i64>,
    pub took_ms: f64,
    pub results: Vec<SearchResult>,
}

impl SearchResponse {
    fn new(found: SearchResults, top_k: usize, query_id: Option<i64>, started: std::time::Instant) -> Self {
        Self {
            collection: found.collection,
            top_k,
            query_id,
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
            results: found.hits.into_iter().map(SearchResult::from_hit).collect(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
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

impl SearchResult {
    fn from_hit(hit: Hit) -> Self {
        Self { id: hit.id, image_url: image_url(hit.id), distance: hit.distance(), score: hit.score, uri: hit.uri }
    }
}

fn image_url(id: i64) -> String {
    format!("/v1/images/{id}")
}

/// How many results, how close, and from where: shared by every kind of search.
struct SearchOptions {
    top_k: usize,
    max_distance: Option<f32>,
    prefix: Option<String>,
}

impl SearchOptions {
    fn parse(
        state: &ServerState,
        top_k_requested: Option<WholeNumber>,
        max_distance: Option<Distance>,
        prefix: Option<&str>,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            top_k: top_k(state, top_k_requested)?,
            max_distance: max_distance.map(|d| d.0),
            prefix: uri_prefix(prefix)?,
        })
    }

    /// The service's request for a search of `query` with these options.
    fn request(&self, query: QueryImage) -> SearchRequest {
        SearchRequest { query, top_k: self.top_k, max_distance: self.max_distance, uri_prefix: self.prefix.clone() }
    }
}

/// A URI prefix filter: no control characters (no URI a listing produced has them), at most a
/// URI's length.
fn uri_prefix(requested: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(prefix) = requested.filter(|p| !p.is_empty()) else { return Ok(None) };
    if prefix.chars().any(char::is_control) || prefix.len() > crate::store::MAX_URI_LENGTH as usize {
        return Err(ApiError::BadRequest(format!(
            "prefix must be at most {} bytes without control characters",
            crate::store::MAX_URI_LENGTH
        )));
    }
    Ok(Some(prefix.to_string()))
}

/// Images per page: 1 to 1,000, 100 when not given.
fn page_limit(requested: Option<WholeNumber>) -> Result<u32, ApiError> {
    let limit = requested.unwrap_or(WholeNumber(DEFAULT_PAGE)).within("limit", 1..=MAX_PAGE)?;
    Ok(limit as u32)
}

/// A full page may have a next one, which starts after its last id; a short page is the last.
fn next_page_token(page: &[ImageRecord], limit: u32) -> Option<String> {
    (page.len() == limit as usize).then(|| page.last().map(|r| r.id.to_string())).flatten()
}

/// The token of the page after the one that ended at `last` (see [`page_token`]).
fn page_token_after(last: i64) -> String {
    last.to_string()
}

/// Page tokens are the last id of the previous page; anything else was not issued here.
fn page_token(requested: Option<&str>) -> Result<i64, ApiError> {
    let Some(text) = requested.filter(|t| !t.is_empty()) else { return Ok(0) };
    match text.parse::<i64>() {
        Ok(after) if after >= 0 => Ok(after),
        _ => Err(ApiError::BadRequest(format!(
            "page_token {text:?} is not one this server issued; pass `next_page_token` from the previous page"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_and_limits_are_checked() {
        assert_eq!(page_token(None).ok(), Some(0));
        assert_eq!(page_token(Some("42")).ok(), Some(42));
        for bad in ["-1", "abc", "1.5", "99999999999999999999"] {
            let error = page_token(Some(bad)).expect_err(bad).to_string();
            assert!(error.contains("not one this server issued"), "{error}");
        }
        assert_eq!(page_limit(None).ok(), Some(100));
        assert_eq!(page_limit(Some(WholeNumber(1000))).ok(), Some(1000));
        assert!(page_limit(Some(WholeNumber(0))).is_err());
        assert!(page_limit(Some(WholeNumber(1001))).is_err());
    }
}
