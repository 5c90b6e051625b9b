//! The versioned JSON API. Every handler carries its OpenAPI description (`#[utoipa::path]`);
//! [`router`] registers each one with `routes!`, which adds the route and its documentation
//! together, so `/openapi.json` lists exactly what the server answers.

use std::time::Instant;

use axum::Json;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorBody, collection_or_default, read_form, search_by_vector, serve_image, top_k};
use crate::catalog::{ImageRecord, ImageStatus, ListFilter};
use crate::store::{Hit, SearchFilter};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(list_images, add_image))
        .routes(routes!(image, delete_image))
        .routes(routes!(image_info))
        .routes(routes!(similar))
        .routes(routes!(image_duplicates))
        .routes(routes!(duplicates_report))
        .routes(routes!(count))
        .routes(routes!(collections))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// Largest page of a listing or of the duplicates report.
const MAX_PAGE: u32 = 1000;
/// How close two images must be to count as near-duplicates when a request does not say
/// (cosine distance). With the built-in model, photos re-saved at JPEG quality 50 land at
/// 0.014 (median) to 0.099 (worst) of their original; halved, cropped by 10 % or mirrored
/// copies at 0.09–0.16 (median) and up to 0.45, while the closest two distinct photos of the
/// sample sit 0.159 apart. So 0.1 finds re-saved copies without false pairs; raise it toward 0.3
/// to catch resized and cropped copies, at the price of similar-looking distinct images.
const DEFAULT_DUPLICATE_DISTANCE: f32 = 0.1;
/// Matches the duplicates report looks at per image.
const REPORT_MATCHES_PER_IMAGE: usize = 10;

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

/// The search form (`multipart/form-data`): exactly one of `image` and `url`.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only; the handler reads the form field by field
struct SearchForm {
    /// The query image (JPEG, PNG, WebP, GIF, BMP or TIFF; the type is read from the bytes, not the header; EXIF orientation applied).
    #[schema(value_type = Option<String>, format = Binary)]
    image: Option<Vec<u8>>,
    /// Search by an image on the web instead (only when the server was started with
    /// `--search-by-url`; private and loopback addresses are refused).
    url: Option<String>,
    /// Results wanted, 1 to the server's maximum (default 10).
    top_k: Option<u32>,
    /// Drop results farther than this cosine distance (0–2).
    max_distance: Option<f32>,
    /// Only images whose URI starts with this (a folder, a bucket prefix).
    prefix: Option<String>,
}

/// The query string of `POST /v1/search`: the collection, and the search options, which may be
/// given here or as form fields (not both with different values).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Collection to search (default: the server's `--collection`).
    pub collection: Option<String>,
    /// Results wanted, 1 to the server's maximum (default 10).
    #[param(value_type = Option<u32>)]
    pub top_k: Option<String>,
    /// Drop results farther than this cosine distance (0–2).
    #[param(value_type = Option<f32>)]
    pub max_distance: Option<String>,
    /// Only images whose URI starts with this.
    pub prefix: Option<String>,
}

/// The text fields a search form may carry (besides the `image` file).
const SEARCH_FORM_FIELDS: [&str; 4] = ["url", "top_k", "max_distance", "prefix"];

/// An option given in the query string or the form: one of them, or both if they agree.
fn query_or_form<'a>(name: &str, query: Option<&'a str>, form: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
    match (query, form) {
        (Some(q), Some(f)) if q.trim() != f.trim() => Err(ApiError::BadRequest(format!(
            "`{name}` is given twice with different values ({q:?} in the query string, {f:?} in the form); give it once"
        ))),
        (q, f) => Ok(f.or(q)),
    }
}

/// How many results, how close, and from where: shared by every kind of search.
struct SearchOptions {
    top_k: usize,
    max_distance: Option<f32>,
    prefix: Option<String>,
}

impl SearchOptions {
    fn parse(
        state: &super::ServerState,
        top_k_text: Option<&str>,
        max_distance_text: Option<&str>,
        prefix: Option<&str>,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            top_k: top_k(state, top_k_text)?,
            max_distance: max_distance(max_distance_text)?,
            prefix: uri_prefix(prefix)?,
        })
    }

    fn keep(&self, hit: &Hit) -> bool {
        self.max_distance.is_none_or(|max| hit.distance() <= max)
    }
}

/// A URI prefix filter: no control characters (no URI has them, and Milvus cannot carry a line
/// break in a string literal), at most a URI's length.
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

/// The optional relevance cut-off: results farther than this (cosine distance, 0 = identical,
/// 2 = opposite) are dropped, so a query with no good match can come back empty.
fn max_distance(requested: Option<&str>) -> Result<Option<f32>, ApiError> {
    let Some(text) = requested.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(None) };
    match text.parse::<f32>() {
        Ok(value) if (0.0..=2.0).contains(&value) => Ok(Some(value)),
        _ => Err(ApiError::BadRequest(format!("max_distance must be a number from 0 to 2, got {text:?}"))),
    }
}

/// Search by an uploaded image or by the image at a URL.
#[utoipa::path(
    post, path = "/v1/search", tag = "search",
    params(SearchQuery),
    request_body(content = inline(SearchForm), content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Nearest images, best first", body = SearchResponse),
        (status = 400, description = "Bad form field, or neither or both of `image` and `url`", body = ErrorBody),
        (status = 403, description = "Searching by URL is not enabled", body = ErrorBody),
        (status = 404, description = "No such collection", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 415, description = "Not multipart, or not an image format the server reads", body = ErrorBody),
        (status = 422, description = "Corrupt or oversized image, or a URL that cannot be used", body = ErrorBody),
        (status = 503, description = "Busy (retry after `Retry-After`) or Milvus unavailable", body = ErrorBody),
    )
)]
async fn search(
    State(state): State<AppState>,
    query: Result<Query<SearchQuery>, QueryRejection>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let started = Instant::now();
    let Query(query) = query?;
    let collection = collection_or_default(&state, query.collection.as_deref())?;
    let mut form = read_form(multipart?).await?;
    form.refuse_fields_other_than(&SEARCH_FORM_FIELDS)?;
    let options = SearchOptions::parse(
        &state,
        query_or_form("top_k", query.top_k.as_deref(), form.field("top_k"))?,
        query_or_form("max_distance", query.max_distance.as_deref(), form.field("max_distance"))?,
        query_or_form("prefix", query.prefix.as_deref(), form.field("prefix"))?,
    )?;
    let url = form.field("url").map(str::trim).filter(|u| !u.is_empty()).map(str::to_string);
    if form.image.is_some() && url.is_some() {
        return Err(ApiError::BadRequest("send either an `image` file or a `url`, not both".into()));
    }
    // Before any download: a search of a collection that does not exist fetches nothing.
    super::require_collection(&state, &collection).await?;
    let image = match (form.image.take(), url) {
        (Some(bytes), _) => bytes,
        (None, Some(url)) => super::fetch_query_image(&state, &url).await?,
        (None, None) => {
            return Err(ApiError::BadRequest("the form has no `image` file field (or `url` field)".into()));
        }
    };
    let vector = super::embed_query(&state, image).await?;
    let filter = SearchFilter { uri_prefix: options.prefix.clone(), ..SearchFilter::default() };
    let hits = search_by_vector(&state, &collection, vector, options.top_k, &filter).await?;
    let results = hits.into_iter().filter(|hit| options.keep(hit)).map(SearchResult::from_hit).collect();
    Ok(Json(SearchResponse {
        collection,
        top_k: options.top_k,
        query_id: None,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
        results,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is a 400 that names it, never silently ignored.
#[serde(deny_unknown_fields)]
pub struct SimilarQuery {
    /// Results wanted, 1 to the server's maximum (default 10).
    #[param(value_type = Option<u32>)]
    pub top_k: Option<String>,
    /// Drop results farther than this cosine distance (0–2).
    #[param(value_type = Option<f32>)]
    pub max_distance: Option<String>,
    /// Only images whose URI starts with this.
    pub prefix: Option<String>,
}

/// "More like this": the images nearest to one already in the collection (itself excluded).
#[utoipa::path(
    get, path = "/v1/images/{id}/similar", tag = "search",
    params(("id" = i64, Path, description = "Image id"), SimilarQuery),
    responses(
        (status = 200, description = "Nearest images, best first", body = SearchResponse),
        (status = 400, description = "Bad parameter", body = ErrorBody),
        (status = 404, description = "No such indexed image", body = ErrorBody),
        (status = 503, description = "Milvus or the catalog unavailable", body = ErrorBody),
    )
)]
async fn similar(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    query: Result<Query<SimilarQuery>, QueryRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let started = Instant::now();
    let Path(id) = id?;
    let Query(query) = query?;
    let options =
        SearchOptions::parse(&state, query.top_k.as_deref(), query.max_distance.as_deref(), query.prefix.as_deref())?;
    let (record, vector) = indexed_vector(&state, id).await?;
    let filter = SearchFilter { uri_prefix: options.prefix.clone(), exclude_ids: vec![id], min_id: None };
    let hits = search_by_vector(&state, &record.collection, vector, options.top_k, &filter).await?;
    let results = hits.into_iter().filter(|hit| options.keep(hit)).map(SearchResult::from_hit).collect();
    Ok(Json(SearchResponse {
        collection: record.collection,
        top_k: options.top_k,
        query_id: Some(id),
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
        results,
    }))
}

/// An indexed image's catalog row and its vector as Milvus holds it.
async fn indexed_vector(state: &super::ServerState, id: i64) -> Result<(ImageRecord, Vec<f32>), ApiError> {
    let record = state
        .ingestor
        .catalog
        .get(id)
        .await?
        .filter(|r| r.status == ImageStatus::Indexed)
        .ok_or_else(|| ApiError::NotFound(format!("no indexed image with id {id}")))?;
    let mut vectors = state.ingestor.store.vectors(&record.collection, &[id]).await?;
    let vector = vectors.remove(&id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "image {id} is catalogued as indexed in {:?} but Milvus has no vector for it; run the ingest again",
            record.collection
        ))
    })?;
    Ok((record, vector))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is a 400 that names it, never silently ignored.
#[serde(deny_unknown_fields)]
pub struct DuplicateQuery {
    /// Largest cosine distance that counts as a duplicate (default 0.1).
    #[param(value_type = Option<f32>)]
    pub max_distance: Option<String>,
    /// Most duplicates returned (1 to the server's maximum top_k; default: that maximum).
    #[param(value_type = Option<u32>)]
    pub limit: Option<String>,
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

fn duplicate_distance(requested: Option<&str>) -> Result<f32, ApiError> {
    Ok(max_distance(requested)?.unwrap_or(DEFAULT_DUPLICATE_DISTANCE))
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
async fn image_duplicates(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    query: Result<Query<DuplicateQuery>, QueryRejection>,
) -> Result<Json<DuplicatesResponse>, ApiError> {
    let Path(id) = id?;
    let Query(query) = query?;
    let max_distance = duplicate_distance(query.max_distance.as_deref())?;
    let limit = match query.limit.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
        None => state.config.max_top_k,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=state.config.max_top_k).contains(&limit) => limit,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "limit must be a whole number from 1 to {}, got {text:?}",
                    state.config.max_top_k
                )));
            }
        },
    };
    let (record, vector) = indexed_vector(&state, id).await?;
    let filter = SearchFilter { exclude_ids: vec![id], ..SearchFilter::default() };
    let hits = search_by_vector(&state, &record.collection, vector, limit, &filter).await?;
    let duplicates: Vec<SearchResult> =
        hits.into_iter().filter(|hit| hit.distance() <= max_distance).map(SearchResult::from_hit).collect();
    Ok(Json(DuplicatesResponse {
        id,
        uri: record.uri,
        collection: record.collection,
        max_distance,
        truncated: duplicates.len() == limit,
        duplicates,
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
    #[param(value_type = Option<f32>)]
    pub max_distance: Option<String>,
    /// Images examined in this page (1–1000, default 100).
    #[param(value_type = Option<u32>)]
    pub limit: Option<String>,
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
async fn duplicates_report(
    State(state): State<AppState>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Json<DuplicatesReport>, ApiError> {
    let Query(query) = query?;
    let collection = collection_or_default(&state, query.collection.as_deref())?;
    let max_distance = duplicate_distance(query.max_distance.as_deref())?;
    let limit = page_limit(query.limit.as_deref())?;
    let after = page_token(query.page_token.as_deref())?;
    super::require_collection(&state, &collection).await?;
    let filter = ListFilter { status: Some(ImageStatus::Indexed), uri_prefix: None };
    let page = state.ingestor.catalog.list(&collection, &filter, after, limit).await?;
    let ids: Vec<i64> = page.iter().map(|r| r.id).collect();
    let mut vectors = state.forget_if_missing(&collection, state.ingestor.store.vectors(&collection, &ids).await)?;
    // Images catalogued but without a vector (an interrupted ingest) are skipped, not failed on.
    let examined: Vec<(&ImageRecord, Vec<f32>)> =
        page.iter().filter_map(|record| vectors.remove(&record.id).map(|vector| (record, vector))).collect();
    // Each image against the images after it (a higher id) only: every pair is found from its
    // lower id, however many closer matches the higher one has among lower ids. A few searches
    // at a time.
    let examined_count = examined.len();
    let searches: Vec<_> = examined
        .into_iter()
        .map(|(record, vector)| {
            let (state, collection) = (state.clone(), collection.clone());
            let (id, uri) = (record.id, record.uri.clone());
            async move {
                let filter = SearchFilter { min_id: Some(id + 1), ..SearchFilter::default() };
                let hits = search_by_vector(&state, &collection, vector, REPORT_MATCHES_PER_IMAGE, &filter).await?;
                let truncated =
                    hits.len() == REPORT_MATCHES_PER_IMAGE && hits.iter().all(|hit| hit.distance() <= max_distance);
                let duplicates: Vec<SearchResult> =
                    hits.into_iter().filter(|hit| hit.distance() <= max_distance).map(SearchResult::from_hit).collect();
                Ok::<_, ApiError>((!duplicates.is_empty()).then_some(DuplicateGroup { id, uri, duplicates, truncated }))
            }
        })
        .collect();
    let groups: Vec<DuplicateGroup> = futures::stream::iter(searches)
        .buffered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let next_page_token = next_page_token(&page, limit);
    Ok(Json(DuplicatesReport { collection, max_distance, examined: examined_count, groups, next_page_token }))
}

fn page_limit(requested: Option<&str>) -> Result<u32, ApiError> {
    let Some(text) = requested.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(100) };
    match text.parse::<u32>() {
        Ok(limit) if (1..=MAX_PAGE).contains(&limit) => Ok(limit),
        _ => Err(ApiError::BadRequest(format!("limit must be a whole number from 1 to {MAX_PAGE}, got {text:?}"))),
    }
}

/// A full page may have a next one, which starts after its last id; a short page is the last.
fn next_page_token(page: &[ImageRecord], limit: u32) -> Option<String> {
    (page.len() == limit as usize).then(|| page.last().map(|r| r.id.to_string())).flatten()
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

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is a 400 that names it, never silently ignored.
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Collection to list (default: the server's `--collection`).
    pub collection: Option<String>,
    /// Only images in this state: `indexed`, `pending` or `failed` (with the reason).
    pub status: Option<String>,
    /// Only images whose URI starts with this.
    pub prefix: Option<String>,
    /// Images per page (1–1000, default 100).
    #[param(value_type = Option<u32>)]
    pub limit: Option<String>,
    /// `next_page_token` of the previous page.
    pub page_token: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    pub id: i64,
    pub collection: String,
    pub uri: String,
    /// `indexed` (searchable), `pending` or `failed`.
    pub status: String,
    /// Why a failed image failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// SHA-256 of the bytes, hex.
    pub content_hash: Option<String>,
    pub size_bytes: Option<i64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    /// Milliseconds since the Unix epoch; null for a collection without a SQL catalog (Milvus,
    /// then the record of what is indexed, keeps no times, nor sizes and dimensions).
    pub created_at_ms: Option<i64>,
    pub updated_at_ms: Option<i64>,
    pub image_url: String,
}

impl From<ImageRecord> for ImageInfo {
    fn from(record: ImageRecord) -> Self {
        Self {
            image_url: image_url(record.id),
            id: record.id,
            collection: record.collection,
            uri: record.uri,
            status: record.status.as_str().to_string(),
            error: record.error,
            content_hash: record.content_hash,
            size_bytes: record.size_bytes,
            width: record.width,
            height: record.height,
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    pub collection: String,
    pub images: Vec<ImageInfo>,
    /// Pass as `page_token` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// The collection's images, in id order, a page at a time.
#[utoipa::path(
    get, path = "/v1/images", tag = "images",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of images", body = ImageList),
        (status = 400, description = "Bad parameter or page token", body = ErrorBody),
        (status = 503, description = "The catalog is unavailable", body = ErrorBody),
    )
)]
async fn list_images(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ImageList>, ApiError> {
    let Query(query) = query?;
    let collection = collection_or_default(&state, query.collection.as_deref())?;
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some("indexed") => Some(ImageStatus::Indexed),
        Some("pending") => Some(ImageStatus::Pending),
        Some("failed") => Some(ImageStatus::Failed),
        Some(other) => {
            return Err(ApiError::BadRequest(format!("status must be indexed, pending or failed, got {other:?}")));
        }
    };
    let limit = page_limit(query.limit.as_deref())?;
    let after = page_token(query.page_token.as_deref())?;
    let filter = ListFilter { status, uri_prefix: uri_prefix(query.prefix.as_deref())? };
    let page = state.ingestor.catalog.list(&collection, &filter, after, limit).await?;
    let next_page_token = next_page_token(&page, limit);
    Ok(Json(ImageList { collection, images: page.into_iter().map(ImageInfo::from).collect(), next_page_token }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AddImageResponse {
    pub collection: String,
    pub id: i64,
    pub image_url: String,
}

/// The upload form (`multipart/form-data`).
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
struct UploadForm {
    /// The image (JPEG, PNG, WebP, GIF, BMP or TIFF; the type is read from the bytes, not the header; EXIF orientation applied).
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
}

/// Store and index an image. Stored under its content hash, never a name the client chose.
#[utoipa::path(
    post, path = "/v1/images", tag = "images",
    params(CollectionQuery),
    request_body(content = inline(UploadForm), content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Stored and searchable", body = AddImageResponse),
        (status = 400, description = "No `image` field, or a bad collection name", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body over the size limit", body = ErrorBody),
        (status = 415, description = "Not multipart, or not an image format the server reads", body = ErrorBody),
        (status = 422, description = "Corrupt or oversized image", body = ErrorBody),
        (status = 503, description = "Milvus or the catalog unavailable", body = ErrorBody),
    )
)]
async fn add_image(
    State(state): State<AppState>,
    query: Result<Query<CollectionQuery>, QueryRejection>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<AddImageResponse>), ApiError> {
    let Query(query) = query?;
    let collection = collection_or_default(&state, query.collection.as_deref())?;
    let form = read_form(multipart?).await?;
    form.refuse_fields_other_than(&[])?;
    let image = form.image()?.to_vec();
    let id = super::add_upload(&state, &collection, image).await?;
    Ok((StatusCode::CREATED, Json(AddImageResponse { collection, id, image_url: image_url(id) })))
}

/// The bytes of an indexed image (an image of a URL list redirects to its URL).
#[utoipa::path(
    get, path = "/v1/images/{id}", tag = "images",
    params(("id" = i64, Path, description = "Image id")),
    responses(
        (status = 200, description = "The image; Content-Type from its bytes", content_type = "image/*", body = super::ImageBytes),
        (status = 307, description = "An image of a URL list: its URL"),
        (status = 404, description = "No such indexed image, or its file is gone", body = ErrorBody),
    )
)]
async fn image(State(state): State<AppState>, id: Result<Path<i64>, PathRejection>) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let started = Instant::now();
    let record = state.ingestor.catalog.get(id).await;
    state.metrics.stage("catalog_lookup", started.elapsed());
    let record = record?;
    serve_image(&state, record, &format!("with id {id}")).await
}

/// What the catalog knows about an image, whatever its state (a failed one says why).
#[utoipa::path(
    get, path = "/v1/images/{id}/info", tag = "images",
    params(("id" = i64, Path, description = "Image id")),
    responses(
        (status = 200, description = "The image's catalog entry", body = ImageInfo),
        (status = 404, description = "No such image", body = ErrorBody),
    )
)]
async fn image_info(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<ImageInfo>, ApiError> {
    let Path(id) = id?;
    let record =
        state.ingestor.catalog.get(id).await?.ok_or_else(|| ApiError::NotFound(format!("no image with id {id}")))?;
    Ok(Json(record.into()))
}

/// Remove an image from search and the catalog. An upload's stored file goes too; an image of a
/// folder, bucket or URL list stays where it is (and comes back if a later ingest finds it).
#[utoipa::path(
    delete, path = "/v1/images/{id}", tag = "images",
    params(("id" = i64, Path, description = "Image id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such image", body = ErrorBody),
        (status = 503, description = "Milvus or the catalog unavailable; nothing was deleted from the catalog", body = ErrorBody),
    )
)]
async fn delete_image(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    let record =
        state.ingestor.catalog.get(id).await?.ok_or_else(|| ApiError::NotFound(format!("no image with id {id}")))?;
    super::delete_image(&state, &record).await?;
    Ok(StatusCode::NO_CONTENT)
}

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
async fn count(
    State(state): State<AppState>,
    query: Result<Query<CollectionQuery>, QueryRejection>,
) -> Result<Json<CountResponse>, ApiError> {
    let Query(query) = query?;
    let collection = collection_or_default(&state, query.collection.as_deref())?;
    super::require_collection(&state, &collection).await?;
    let count = state.forget_if_missing(&collection, state.ingestor.store.count(&collection).await)?;
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
async fn collections(State(state): State<AppState>) -> Result<Json<CollectionList>, ApiError> {
    let mut counts = state.ingestor.catalog.collections().await?;
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

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "`ok`", body = String)))]
async fn healthz() -> &'static str {
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
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::unavailable("shutting down", "readiness refused while draining"));
    }
    state.ingestor.store.ping().await?;
    state.ingestor.catalog.ping().await?;
    Ok(Json(serde_json::json!({ "status": "ready", "model": state.ingestor.model.spec().name })))
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
        assert_eq!(page_limit(Some("1000")).ok(), Some(1000));
        assert!(page_limit(Some("0")).is_err());
        assert!(page_limit(Some("1001")).is_err());
    }

    #[test]
    fn duplicate_distance_defaults_and_bounds() {
        assert_eq!(duplicate_distance(None).ok(), Some(DEFAULT_DUPLICATE_DISTANCE));
        assert_eq!(duplicate_distance(Some("0.02")).ok(), Some(0.02));
        assert!(duplicate_distance(Some("3")).is_err());
        assert!(duplicate_distance(Some("NaN")).is_err());
    }
}
