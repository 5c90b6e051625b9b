//! The Milvus bootcamp reverse-image-search routes, with the shapes its web client and scripts
//! send and expect: `table_name` picks the collection, search answers `[[path, distance], …]`
//! best first, count answers a bare number, progress a `"current: N, total: M"` string.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, ApiQuery, WholeNumber};
use super::{ApiError, AppState, ErrorBody, UploadForm, collection_or_default, image_response, top_k};
use crate::search::{QueryImage, SearchRequest};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(load))
        .routes(routes!(upload))
        .routes(routes!(search))
        .routes(routes!(count))
        .routes(routes!(drop_collection))
        .routes(routes!(progress))
        .routes(routes!(data))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TableQuery {
    /// Collection (default: the server's `--collection`).
    table_name: Option<String>,
    /// The bootcamp can upload by URL; fetching arbitrary URLs is refused here.
    url: Option<String>,
}

/// The bootcamp's search form.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
struct BootcampSearchForm {
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// Results wanted (default 10).
    topk: Option<u32>,
}

/// The bootcamp's upload form.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
struct BootcampUploadForm {
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
}

#[derive(Debug, Deserialize, ToSchema)]
struct LoadRequest {
    #[serde(rename = "Table")]
    table: Option<String>,
    /// An absolute folder under one of the server's `--load-root`s.
    #[serde(rename = "File")]
    file: String,
}

const BOOTCAMP: &str = "bootcamp";

/// `POST /img/load` `{"Table": optional, "File": "/folder"}`: ingests a folder under a load root.
#[utoipa::path(
    post, path = "/img/load", tag = BOOTCAMP, operation_id = "img_load",
    request_body = LoadRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{status, msg, report}`", body = serde_json::Value),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 403, description = "The folder is not under a load root", body = ErrorBody),
        (status = 409, description = "Another load is running", body = ErrorBody),
    )
)]
async fn load(State(state): State<AppState>, ApiJson(request): ApiJson<LoadRequest>) -> Result<Json<Value>, ApiError> {
    let collection = collection_or_default(&state, request.table.as_deref())?;
    let report = state.service.load_folder(&collection, &request.file).await?;
    Ok(Json(json!({ "status": true, "msg": "Successfully loaded data!", "report": report })))
}

/// `POST /img/upload?table_name=` with a multipart `image` file.
#[utoipa::path(
    post, path = "/img/upload", tag = BOOTCAMP, operation_id = "img_upload",
    params(TableQuery),
    request_body(content = inline(BootcampUploadForm), content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`{status, msg, id}`", body = serde_json::Value),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 415, description = "Not an image format the server reads", body = ErrorBody),
        (status = 422, description = "Corrupt or oversized image", body = ErrorBody),
    )
)]
async fn upload(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<TableQuery>,
    mut form: UploadForm,
) -> Result<Json<Value>, ApiError> {
    if query.url.is_some() {
        return Err(ApiError::BadRequest(
            "uploading by URL is disabled on this server; send the image as a multipart `image` file".into(),
        ));
    }
    let collection = collection_or_default(&state, query.table_name.as_deref())?;
    let id = state.service.add_upload(&collection, form.take_image()?).await?;
    Ok(Json(json!({ "status": true, "msg": "Successfully uploaded data!", "id": id })))
}

/// `POST /img/search?table_name=` with a multipart `image` and form field `topk`.
#[utoipa::path(
    post, path = "/img/search", tag = BOOTCAMP, operation_id = "img_search",
    params(TableQuery),
    request_body(content = inline(BootcampSearchForm), content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "`[[path, distance], …]`, best first", body = Vec<(String, f32)>),
        (status = 404, description = "No such collection", body = ErrorBody),
        (status = 415, description = "Not an image format the server reads", body = ErrorBody),
        (status = 422, description = "Corrupt or oversized image", body = ErrorBody),
        (status = 503, description = "Busy or Milvus unavailable", body = ErrorBody),
    )
)]
async fn search(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<TableQuery>,
    mut form: UploadForm,
) -> Result<Json<Vec<(String, f32)>>, ApiError> {
    let collection = collection_or_default(&state, query.table_name.as_deref())?;
    let topk = form.field("topk").map(str::trim).filter(|t| !t.is_empty());
    let topk = topk.map(WholeNumber::parse).transpose().map_err(|why| ApiError::BadRequest(format!("topk: {why}")))?;
    let top_k = top_k(&state, topk)?;
    let query = QueryImage::Bytes { collection, bytes: form.take_image()? };
    let found = state.service.search(SearchRequest { query, top_k, max_distance: None, uri_prefix: None }).await?;
    // Hits come best first; distance = 1 − cosine similarity keeps that order ascending.
    Ok(Json(
        found
            .hits
            .into_iter()
            .map(|hit| {
                let distance = hit.distance();
                (hit.uri, distance)
            })
            .collect(),
    ))
}

/// `POST /img/count?table_name=`: a bare number; 0 for a collection not created yet.
#[utoipa::path(
    post, path = "/img/count", tag = BOOTCAMP, operation_id = "img_count",
    params(TableQuery),
    responses((status = 200, description = "The number of vectors", body = u64))
)]
async fn count(State(state): State<AppState>, ApiQuery(query): ApiQuery<TableQuery>) -> Result<Json<u64>, ApiError> {
    let collection = collection_or_default(&state, query.table_name.as_deref())?;
    Ok(Json(state.service.count_or_zero(&collection).await?))
}

/// `POST /img/drop?table_name=`: removes the collection's vectors and catalog rows. Image files
/// themselves are left alone: they belong to the user's folders.
#[utoipa::path(
    post, path = "/img/drop", tag = BOOTCAMP, operation_id = "img_drop",
    params(TableQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A message", body = String),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such collection", body = ErrorBody),
        (status = 409, description = "A load is running", body = ErrorBody),
    )
)]
async fn drop_collection(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<TableQuery>,
) -> Result<Json<String>, ApiError> {
    let collection = collection_or_default(&state, query.table_name.as_deref())?;
    if !state.service.drop_collection(&collection).await? {
        return Err(ApiError::NotFound(format!("collection {collection:?} does not exist")));
    }
    Ok(Json(format!("Successfully dropped collection {collection} from Milvus and the catalog")))
}

/// `GET /progress`: the current (or last) load.
#[utoipa::path(get, path = "/progress", tag = BOOTCAMP, responses((status = 200, description = "`\"current: N, total: M\"`", body = String)))]
async fn progress(State(state): State<AppState>) -> Json<String> {
    let (current, total) = state.service.load_progress();
    Json(format!("current: {current}, total: {total}"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DataQuery {
    /// The image's path as search results give it.
    image_path: String,
}

/// `GET /data?image_path=`: the bytes of a catalogued image, never of an arbitrary file.
#[utoipa::path(
    get, path = "/data", tag = BOOTCAMP,
    params(DataQuery),
    responses(
        (status = 200, description = "The image", content_type = "image/*", body = super::ImageBytes),
        (status = 404, description = "No such indexed image", body = ErrorBody),
    )
)]
async fn data(State(state): State<AppState>, ApiQuery(query): ApiQuery<DataQuery>) -> Result<Response, ApiError> {
    let record = state.service.image_by_uri(&query.image_path).await?;
    let what = format!("at {:?}", query.image_path);
    Ok(image_response(state.service.read_image(record, &what).await?))
}
