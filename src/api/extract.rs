//! Extractors whose rejection is already the API's error (axum's `customize-extractor-error`
//! pattern), so a handler takes `ApiQuery<Q>` instead of `Result<Query<Q>, QueryRejection>`, and
//! the typed parameters they parse: a query struct's field says what the handler accepts, and
//! the OpenAPI document is derived from the same type.

use std::ops::RangeInclusive;

use axum::extract::{FromRequest, FromRequestParts, Json, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::ApiError;

/// The query string as `T` (unknown parameters refused when `T` says `deny_unknown_fields`).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// The path's parameters as `T`.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(Self(value))
    }
}

/// A JSON body as `T`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

/// A whole number as a client writes it in a query string or a form field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WholeNumber(pub u64);

impl WholeNumber {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        text.parse().map(Self).map_err(|_| format!("expected a whole number, got {text:?}"))
    }

    /// The number if it is within `range`, else a 400 naming the parameter and the range.
    pub fn within(self, name: &str, range: RangeInclusive<u64>) -> Result<u64, ApiError> {
        if range.contains(&self.0) {
            return Ok(self.0);
        }
        Err(ApiError::BadRequest(format!(
            "{name} must be a whole number from {} to {}, got {}",
            range.start(),
            range.end(),
            self.0
        )))
    }
}

impl std::fmt::Display for WholeNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A cosine distance: 0 is identical, 2 opposite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Distance(pub f32);

impl Distance {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text.parse::<f32>() {
            Ok(value) if (0.0..=2.0).contains(&value) => Ok(Self(value)),
            _ => Err(format!("expected a cosine distance from 0 to 2, got {text:?}")),
        }
    }
}

impl std::fmt::Display for Distance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// For `#[serde(default, deserialize_with = "blank_is_none")]` on an `Option<T>` parameter: a
/// parameter given empty (`?top_k=`, as HTML forms send an empty field) counts as not given.
pub fn blank_is_none<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Parameter,
{
    let text = Option::<String>::deserialize(deserializer)?;
    match text.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => T::parse_text(text).map(Some).map_err(serde::de::Error::custom),
    }
}

/// A parameter parsed from its text.
pub trait Parameter: Sized {
    fn parse_text(text: &str) -> Result<Self, String>;

    /// A form field's value as this parameter (blank: not given), a 400 naming it otherwise.
    fn from_field(name: &str, text: Option<&str>) -> Result<Option<Self>, ApiError> {
        let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(None) };
        Self::parse_text(text).map(Some).map_err(|why| ApiError::BadRequest(format!("{name}: {why}")))
    }
}

impl Parameter for WholeNumber {
    fn parse_text(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

impl Parameter for Distance {
    fn parse_text(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

impl utoipa::PartialSchema for WholeNumber {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int64)))
            .minimum(Some(0))
            .into()
    }
}

impl utoipa::ToSchema for WholeNumber {}

impl utoipa::PartialSchema for Distance {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Number)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Float)))
            .minimum(Some(0))
            .maximum(Some(2))
            .into()
    }
}

impl utoipa::ToSchema for Distance {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_from_text_and_ranges_name_the_parameter() {
        assert_eq!(WholeNumber::parse(" 42 "), Ok(WholeNumber(42)));
        for bad in ["-1", "abc", "1.5", "99999999999999999999", ""] {
            assert!(WholeNumber::parse(bad).is_err(), "{bad:?}");
        }
        let refused = WholeNumber(0).within("top_k", 1..=100).unwrap_err().to_string();
        assert_eq!(refused, "top_k must be a whole number from 1 to 100, got 0");
        assert_eq!(WholeNumber(100).within("top_k", 1..=100).ok(), Some(100));
        assert_eq!(Distance::parse("0.02"), Ok(Distance(0.02)));
        for bad in ["3", "-0.1", "NaN", "inf", "x"] {
            assert!(Distance::parse(bad).is_err(), "{bad:?}");
        }
    }
}
