//! Images: list a collection's images a page at a time, upload one, fetch one's bytes or its
//! catalog entry, delete one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{CollectionQuery, image_url, next_page_token, page_limit, page_token, uri_prefix};
use crate::api::extract::{ApiPath, ApiQuery, WholeNumber, blank_is_none};
use crate::api::{ApiError, AppState, ErrorBody, ImageBytes, UploadForm, collection_or_default, image_response};
use crate::catalog::{ImageRecord, ImageStatus, ListFilter};

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
    #[serde(default, deserialize_with = "blank_is_none")]
    #[param(inline)]
    pub limit: Option<WholeNumber>,
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
pub async fn list_images(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<ImageList>, ApiError> {
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
    let limit = page_limit(query.limit)?;
    let after = page_token(query.page_token.as_deref())?;
    let filter = ListFilter { status, uri_prefix: uri_prefix(query.prefix.as_deref())? };
    let page = state.service.list_images(&collection, &filter, after, limit).await?;
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
struct ImageUploadForm {
    /// The image (JPEG, PNG, WebP, GIF, BMP or TIFF; the type is read from the bytes, not the header; EXIF orientation applied).
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
}

/// Store and index an image. Stored under its content hash, never a name the client chose.
#[utoipa::path(
    post, path = "/v1/images", tag = "images",
    params(CollectionQuery),
    request_body(content = inline(ImageUploadForm), content_type = "multipart/form-data"),
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
pub async fn add_image(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<CollectionQuery>,
    mut form: UploadForm,
) -> Result<(StatusCode, Json<AddImageResponse>), ApiError> {
    let collection = collection_or_default(&state, query.collection.as_deref())?;
    form.refuse_fields_other_than(&[])?;
    let id = state.service.add_upload(&collection, form.take_image()?).await?;
    Ok((StatusCode::CREATED, Json(AddImageResponse { collection, id, image_url: image_url(id) })))
}

/// The bytes of an indexed image (an image of a URL list redirects to its URL).
#[utoipa::path(
    get, path = "/v1/images/{id}", tag = "images",
    params(("id" = i64, Path, description = "Image id")),
    responses(
        (status = 200, description = "The image; Content-Type from its bytes", content_type = "image/*", body = ImageBytes),
        (status = 307, description = "An image of a URL list: its URL"),
        (status = 404, description = "No such indexed image, or its file is gone", body = ErrorBody),
    )
)]
pub async fn image(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Response, ApiError> {
    let record = state.service.image_by_id(id).await?;
    Ok(image_response(state.service.read_image(record, &format!("with id {id}")).await?))
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
pub async fn image_info(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<ImageInfo>, ApiError> {
    Ok(Json(state.service.image_info(id).await?.into()))
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
pub async fn delete_image(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<StatusCode, ApiError> {
    state.service.delete_image(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
