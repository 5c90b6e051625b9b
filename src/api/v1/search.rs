//! Searches: by an uploaded image or an image's URL (`POST /v1/search`), and "more like this"
//! from an image already in the collection (`GET /v1/images/{id}/similar`).

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{SearchOptions, SearchResponse};
use crate::api::extract::{ApiPath, ApiQuery, Distance, Parameter, WholeNumber, blank_is_none};
use crate::api::{ApiError, AppState, ErrorBody, UploadForm, collection_or_default};
use crate::search::QueryImage;

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
    #[serde(default, deserialize_with = "blank_is_none")]
    #[param(inline)]
    pub top_k: Option<WholeNumber>,
    /// Drop results farther than this cosine distance (0–2).
    #[serde(default, deserialize_with = "blank_is_none")]
    #[param(inline)]
    pub max_distance: Option<Distance>,
    /// Only images whose URI starts with this.
    pub prefix: Option<String>,
}

/// The text fields a search form may carry (besides the `image` file).
const SEARCH_FORM_FIELDS: [&str; 4] = ["url", "top_k", "max_distance", "prefix"];

/// An option given in the query string or the form: one of them, or both if they agree.
fn query_or_form<T: Parameter + PartialEq + std::fmt::Display>(
    name: &str,
    query: Option<T>,
    form: Option<&str>,
) -> Result<Option<T>, ApiError> {
    match (query, T::from_field(name, form)?) {
        (Some(q), Some(f)) if q != f => Err(given_twice(name, &q.to_string(), &f.to_string())),
        (q, f) => Ok(f.or(q)),
    }
}

/// The prefix from the query string or the form, as given (spaces are part of a prefix).
fn prefix_from<'a>(query: Option<&'a str>, form: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
    match (query, form) {
        (Some(q), Some(f)) if q.trim() != f.trim() => Err(given_twice("prefix", q, f)),
        (q, f) => Ok(f.or(q)),
    }
}

fn given_twice(name: &str, query: &str, form: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "`{name}` is given twice with different values ({query:?} in the query string, {form:?} in the form); give it once"
    ))
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
pub async fn search(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<SearchQuery>,
    mut form: UploadForm,
) -> Result<Json<SearchResponse>, ApiError> {
    let started = Instant::now();
    let collection = collection_or_default(&state, query.collection.as_deref())?;
    form.refuse_fields_other_than(&SEARCH_FORM_FIELDS)?;
    let options = SearchOptions::parse(
        &state,
        query_or_form("top_k", query.top_k, form.field("top_k"))?,
        query_or_form("max_distance", query.max_distance, form.field("max_distance"))?,
        prefix_from(query.prefix.as_deref(), form.field("prefix"))?,
    )?;
    let url = form.field("url").map(str::trim).filter(|u| !u.is_empty()).map(str::to_string);
    let query = match url {
        Some(_) if form.has_image() => {
            return Err(ApiError::BadRequest("send either an `image` file or a `url`, not both".into()));
        }
        _ if form.has_image() => QueryImage::Bytes { collection, bytes: form.take_image()? },
        Some(url) => QueryImage::Url { collection, url },
        None => return Err(ApiError::BadRequest("the form has no `image` file field (or `url` field)".into())),
    };
    let found = state.service.search(options.request(query)).await?;
    Ok(Json(SearchResponse::new(found, options.top_k, None, started)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
// A misspelt parameter is a 400 that names it, never silently ignored.
#[serde(deny_unknown_fields)]
pub struct SimilarQuery {
    /// Results wanted, 1 to the server's maximum (default 10).
    #[serde(default, deserialize_with = "blank_is_none")]
    #[param(inline)]
    pub top_k: Option<WholeNumber>,
    /// Drop results farther than this cosine distance (0–2).
    #[serde(default, deserialize_with = "blank_is_none")]
    #[param(inline)]
    pub max_distance: Option<Distance>,
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
pub async fn similar(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(query): ApiQuery<SimilarQuery>,
) -> Result<Json<SearchResponse>, ApiError> {
    let started = Instant::now();
    let options = SearchOptions::parse(&state, query.top_k, query.max_distance, query.prefix.as_deref())?;
    let found = state.service.search(options.request(QueryImage::Stored { id })).await?;
    Ok(Json(SearchResponse::new(found, options.top_k, Some(id), started)))
}
