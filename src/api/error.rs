//! One error type for every route: a status code and `{"error": {"code", "message"}}`. The search
//! service's errors, and those of the parts below it, become status codes here and only here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::catalog::CatalogError;
use crate::embed::{EmbedError, ImageError};
use crate::index::IndexError;
use crate::ingest::IngestError;
use crate::search::SearchError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// No bearer token, or the wrong one, where one is required.
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The request body stopped arriving (see api/server.rs).
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    /// A dependency (Milvus, the catalog, the model) is down or overloaded; the detail is logged.
    #[error("{public}")]
    Unavailable { public: String, detail: String },
    /// No decoder, or no room in the model's queue, freed within the queue wait: try again in
    /// a moment.
    #[error("{0}")]
    Busy(String),
    /// A bug or an unexpected state; the detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable { .. } | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable, machine-readable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::RequestTimeout(_) => "request_timeout",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::Unprocessable(_) => "unprocessable_image",
            Self::Unavailable { .. } | Self::Busy(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    pub fn unavailable(public: &str, detail: impl ToString) -> Self {
        Self::Unavailable { public: public.to_string(), detail: detail.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(detail) => tracing::error!(%detail, "internal error"),
            Self::Unavailable { detail, .. } => tracing::warn!(%detail, "dependency unavailable"),
            Self::Busy(_) => tracing::warn!("inference queue full: answered 503"),
            _ => tracing::debug!(error = %self, "request refused"),
        }
        let body = json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = (self.status(), Json(body)).into_response();
        // RFC 9110 §10.2.3: when to try again. A full queue drains in about a second; a
        // dependency that is down takes longer to come back.
        let retry_after = match self {
            Self::Busy(_) => Some("1"),
            Self::Unavailable { .. } => Some("5"),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static(seconds));
        }
        if matches!(self, Self::Unauthorized(_)) {
            // RFC 6750: tell the client which scheme to use.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"imgsearch\""),
            );
        }
        response
    }
}

impl From<ImageError> for ApiError {
    fn from(error: ImageError) -> Self {
        match error {
            ImageError::Empty => Self::BadRequest("the uploaded image is empty".into()),
            ImageError::UnsupportedFormat(_) => Self::UnsupportedMediaType(error.to_string()),
            ImageError::TooLarge { .. } | ImageError::Corrupt { .. } => Self::Unprocessable(error.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::CollectionNotFound { collection } => {
                Self::NotFound(format!("collection {collection:?} does not exist"))
            }
            StoreError::DimensionMismatch { .. } => Self::Conflict(error.to_string()),
            other => Self::unavailable("the vector database (Milvus) is unavailable", other),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(error: CatalogError) -> Self {
        match error {
            // Without a SQL catalog Milvus is the catalog: its errors keep their meaning.
            CatalogError::Milvus(e) => (*e).into(),
            CatalogError::IdTaken { .. } => Self::Conflict(error.to_string()),
            other => Self::unavailable("the image catalog is unavailable", other),
        }
    }
}

impl From<EmbedError> for ApiError {
    fn from(error: EmbedError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<IngestError> for ApiError {
    fn from(error: IngestError) -> Self {
        match error {
            IngestError::Source(e) => Self::BadRequest(e.to_string()),
            IngestError::Index(e) => e.into(),
        }
    }
}

impl From<IndexError> for ApiError {
    fn from(error: IndexError) -> Self {
        match error {
            IndexError::Store(e) => e.into(),
            IndexError::Catalog(e) => e.into(),
            IndexError::Embed(e) => e.into(),
            IndexError::InvalidCollection(message) => Self::BadRequest(message),
            IndexError::Worker(detail) => Self::Internal(detail),
            IndexError::NoIdReturned => Self::Internal(IndexError::NoIdReturned.to_string()),
        }
    }
}

impl From<SearchError> for ApiError {
    fn from(error: SearchError) -> Self {
        // What to do about it, in this server's terms: its flags and routes.
        let remedy = match &error {
            SearchError::BucketNotGiven { .. } => " (start it with --image-bucket)",
            SearchError::UrlSearchDisabled => " (start it with --search-by-url); upload the image instead",
            SearchError::LoadingDisabled => " (start it with --load-root DIR)",
            SearchError::LoadRunning => "; watch GET /progress and retry when it is done",
            _ => "",
        };
        let message = format!("{error}{remedy}");
        match error {
            SearchError::NoCollection(_)
            | SearchError::NoIndexedImage(_)
            | SearchError::NoImage(_)
            | SearchError::VectorMissing { .. }
            | SearchError::BucketNotGiven { .. }
            | SearchError::BucketObjectUnreadable { .. }
            | SearchError::FileGone(_)
            | SearchError::NoFolder(_) => Self::NotFound(message),
            SearchError::BucketUnreachable(source) => Self::unavailable(&message, source),
            SearchError::Busy => Self::Busy(message),
            SearchError::UrlSearchDisabled | SearchError::LoadingDisabled | SearchError::OutsideLoadRoots { .. } => {
                Self::Forbidden(message)
            }
            SearchError::UrlUnusable { .. } => Self::Unprocessable(message),
            SearchError::NotAFolder(_) => Self::BadRequest(message),
            SearchError::LoadRunning | SearchError::DropDuringLoad => Self::Conflict(message),
            SearchError::Image(e) => e.into(),
            SearchError::Store(e) => e.into(),
            SearchError::Catalog(e) => e.into(),
            SearchError::Index(e) => e.into(),
            SearchError::Ingest(e) => e.into(),
            SearchError::Internal(detail) => Self::Internal(detail),
        }
    }
}

impl From<axum::extract::multipart::MultipartError> for ApiError {
    fn from(error: axum::extract::multipart::MultipartError) -> Self {
        if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge(format!("request body too large: {}", error.body_text()))
        } else {
            Self::BadRequest(format!("malformed multipart body: {}", error.body_text()))
        }
    }
}

impl From<axum::extract::multipart::MultipartRejection> for ApiError {
    fn from(error: axum::extract::multipart::MultipartRejection) -> Self {
        Self::UnsupportedMediaType(format!(
            "expected a multipart/form-data upload with an `image` field: {}",
            error.body_text()
        ))
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(error: axum::extract::rejection::QueryRejection) -> Self {
        Self::BadRequest(error.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(error: axum::extract::rejection::PathRejection) -> Self {
        Self::BadRequest(error.body_text())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(error: axum::extract::rejection::JsonRejection) -> Self {
        if error.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            Self::UnsupportedMediaType(error.body_text())
        } else if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge(error.body_text())
        } else {
            Self::BadRequest(error.body_text())
        }
    }
}
