//! The multipart forms clients upload: an `image` file and short text fields. A handler takes an
//! [`UploadForm`] as an extractor; a body that is not multipart, or is malformed, or carries a
//! text field over 1,024 bytes, is refused with the API's own error before the handler runs.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};

use super::ApiError;

/// The longest text field kept; longer ones are refused (no option needs more).
const MAX_FIELD_BYTES: usize = 1024;

/// An uploaded form: the bytes of its `image` file field and its short text fields.
pub struct UploadForm {
    /// As the body parser handed it over: no copy.
    image: Option<Bytes>,
    fields: Vec<(String, String)>,
}

impl UploadForm {
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// A 400 naming the text fields that are not among `known` (a misspelt option would
    /// otherwise be ignored in silence).
    pub fn refuse_fields_other_than(&self, known: &[&str]) -> Result<(), ApiError> {
        let unknown: Vec<&str> =
            self.fields.iter().map(|(name, _)| name.as_str()).filter(|name| !known.contains(name)).collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let quoted = |names: &[&str]| names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        let takes =
            if known.is_empty() { "only `image`".to_string() } else { format!("`image` and {}", quoted(known)) };
        Err(ApiError::BadRequest(format!(
            "unknown form field{} {}; this form takes {takes}",
            if unknown.len() == 1 { "" } else { "s" },
            quoted(&unknown)
        )))
    }

    pub fn has_image(&self) -> bool {
        self.image.is_some()
    }

    /// The `image` file's bytes, or a 400 saying the form has none.
    pub fn take_image(&mut self) -> Result<Bytes, ApiError> {
        self.image.take().ok_or_else(|| ApiError::BadRequest("the form has no `image` file field".into()))
    }
}

/// Reads an upload: the `image` file's bytes and text fields of at most 1,024 bytes; other file
/// fields are skipped unread. The body's size limit is the router's (`DefaultBodyLimit`).
/// Public for the multipart fuzz target (fuzz/), which drives it directly.
pub async fn read_form(mut multipart: Multipart) -> Result<UploadForm, ApiError> {
    let mut form = UploadForm { image: None, fields: Vec::new() };
    while let Some(field) = multipart.next_field().await? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "image" {
            form.image = Some(field.bytes().await?);
        } else if field.file_name().is_none() {
            let value = field.text().await?;
            if value.len() > MAX_FIELD_BYTES {
                return Err(ApiError::BadRequest(format!(
                    "form field {name:?} is longer than {MAX_FIELD_BYTES} bytes"
                )));
            }
            form.fields.push((name, value));
        }
        // Other file fields are ignored: only `image` is ever read.
    }
    Ok(form)
}

impl<S: Send + Sync> FromRequest<S> for UploadForm {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        read_form(Multipart::from_request(request, state).await?).await
    }
}
