//! Images in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, …) through `object_store`, which
//! signs, lists page by page and retries. URIs are `s3://bucket/key`.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use super::{MAX_FILE_BYTES, ReadError, SourceError, SourceImage};

/// A bucket and the folder (key prefix) in it that holds the images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing '/'; empty for the whole bucket.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket` or `s3://bucket/some/prefix/`.
    pub fn parse(text: &str) -> Result<Self, SourceError> {
        let invalid = |why: &str| SourceError::InvalidSpec(format!("{text:?} is not an S3 location: {why}"));
        let rest = text.strip_prefix("s3://").ok_or_else(|| invalid("it must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        Self::new(bucket, prefix).map_err(|e| invalid(&e))
    }

    pub fn new(bucket: &str, prefix: &str) -> Result<Self, String> {
        // The S3 naming rules, so a typo fails here rather than as a signature error later.
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid_bucket {
            return Err(format!(
                "bucket name {bucket:?} must be 3-63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"
            ));
        }
        Ok(Self { bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string() })
    }
}

/// How to reach the bucket. Credentials come from the environment the usual AWS way
/// (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, or a web identity token in EKS).
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    /// Endpoint of a non-AWS store, e.g. `http://minio.storage:9000`; `http://` allows plain HTTP.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Access key id and secret; `None` takes them from the environment.
    pub credentials: Option<(String, String)>,
}

#[derive(Debug)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    location: S3Location,
    /// Named in errors, so a message says which server failed.
    endpoint: String,
}

impl Bucket {
    pub fn connect(location: S3Location, settings: &S3Settings) -> Result<Self, SourceError> {
        super::install_crypto_provider();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            // A vanished server fails a read within about half a minute, not object_store's
            // default of three minutes per request.
            .with_retry(RetryConfig { max_retries: 4, retry_timeout: Duration::from_secs(30), ..Default::default() })
            .with_client_options(
                ClientOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(60)),
            );
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let Some((key_id, secret)) = &settings.credentials {
            builder = builder.with_access_key_id(key_id).with_secret_access_key(secret);
        }
        let endpoint = match &settings.endpoint {
            Some(endpoint) => {
                builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
                endpoint.clone()
            }
            None => "AWS S3".to_string(),
        };
        let store = builder.build().map_err(|e| SourceError::Bucket {
            bucket: location.bucket.clone(),
            message: format!("cannot configure the S3 client: {e}"),
        })?;
        Ok(Self { store: Arc::new(store), location, endpoint })
    }

    /// `s3://bucket/prefix/`: every URI of this source starts with it.
    pub fn uri_prefix(&self) -> String {
        if self.location.prefix.is_empty() {
            format!("s3://{}/", self.location.bucket)
        } else {
            format!("s3://{}/{}/", self.location.bucket, self.location.prefix)
        }
    }

    /// Whether `uri` names an object under this bucket's prefix.
    pub fn owns(&self, uri: &str) -> bool {
        uri.starts_with(&self.uri_prefix())
    }

    fn error(&self, message: impl std::fmt::Display) -> SourceError {
        SourceError::Bucket {
            bucket: self.location.bucket.clone(),
            message: format!("at {}: {message}", self.endpoint),
        }
    }

    /// Every object under the prefix with an image extension, sorted by key.
    pub async fn list(&self) -> Result<Vec<SourceImage>, SourceError> {
        // parse, not from: the prefix is a key as stored, not to be percent-encoded.
        let prefix = match self.location.prefix.as_str() {
            "" => None,
            prefix => Some(ObjectPath::parse(prefix).map_err(|e| self.error(format!("invalid prefix: {e}")))?),
        };
        let objects: Vec<_> = self
            .store
            .list(prefix.as_ref())
            .try_collect()
            .await
            .map_err(|e| self.error(format!("listing failed: {e}")))?;
        let mut images: Vec<SourceImage> = objects
            .into_iter()
            .filter(|meta| {
                let key: &str = meta.location.as_ref();
                // Hidden parts are judged below the prefix only: the prefix itself may be hidden.
                let below = key.strip_prefix(self.location.prefix.as_str()).unwrap_or(key);
                key.rsplit_once('.').is_some_and(|(_, extension)| super::is_image_extension(extension))
                    && !below.split('/').any(|part| part.starts_with('.'))
            })
            .map(|meta| SourceImage {
                uri: format!("s3://{}/{}", self.location.bucket, meta.location.as_ref()),
                size: Some(meta.size),
            })
            .collect();
        images.sort_by(|a, b| a.uri.cmp(&b.uri));
        Ok(images)
    }

    /// Reads an object of this bucket by its URI.
    pub async fn read(&self, image: &SourceImage) -> Result<Vec<u8>, ReadError> {
        if let Some(size) = image.size.filter(|&size| size > MAX_FILE_BYTES) {
            return Err(ReadError::too_large(size));
        }
        let key = image
            .uri
            .strip_prefix(&format!("s3://{}/", self.location.bucket))
            .ok_or_else(|| ReadError::Unusable { reason: "not an object of this bucket".into(), size_bytes: None })?;
        let path = ObjectPath::parse(key)
            .map_err(|e| ReadError::Unusable { reason: format!("invalid object key: {e}"), size_bytes: None })?;
        let result = match self.store.get(&path).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ReadError::Unusable { reason: "the object no longer exists".into(), size_bytes: None });
            }
            // One object this reader may not read (an archived object, a KMS key it lacks):
            // that image, not the run; an indexed copy stays.
            Err(error @ object_store::Error::PermissionDenied { .. }) => {
                return Err(ReadError::Unavailable { reason: format!("access denied: {error}") });
            }
            Err(e) => return Err(ReadError::Source(self.error(format!("reading {key} failed: {e}")))),
        };
        if result.meta.size > MAX_FILE_BYTES {
            return Err(ReadError::too_large(result.meta.size));
        }
        let bytes =
            result.bytes().await.map_err(|e| ReadError::Source(self.error(format!("reading {key} failed: {e}"))))?;
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_with_or_without_a_prefix() {
        let whole = S3Location::parse("s3://photos").expect("valid");
        assert_eq!((whole.bucket.as_str(), whole.prefix.as_str()), ("photos", ""));
        let folder = S3Location::parse("s3://photos/2024/summer/").expect("valid");
        assert_eq!((folder.bucket.as_str(), folder.prefix.as_str()), ("photos", "2024/summer"));
    }

    #[test]
    fn bad_locations_say_what_is_wrong() {
        let error = S3Location::parse("photos/2024").unwrap_err().to_string();
        assert!(error.contains("must start with s3://"), "{error}");
        let error = S3Location::parse("s3://My_Photos/x").unwrap_err().to_string();
        assert!(error.contains("bucket name \"My_Photos\" must be 3-63 lowercase"), "{error}");
        assert!(S3Location::parse("s3://ab").is_err(), "too short");
    }
}
