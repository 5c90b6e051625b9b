//! Where images come from: a directory (a local folder or a mounted PVC), an S3-compatible
//! bucket, or a list of URLs. Each source lists its images under stable URIs (the catalog key,
//! returned by search) and reads one image's bytes, capped at [`MAX_FILE_BYTES`].
//!
//! Read failures come in three kinds, because they call for different actions: an image that is
//! unusable (too large, gone, refused) is recorded as failed; one that is only unavailable now
//! (a timeout, a server error) fails this run but keeps what was indexed before; a source that
//! cannot be reached at all stops the run, so an outage never marks a whole collection failed.

pub mod s3;
pub mod urls;

use std::path::{Path, PathBuf};

/// File extensions ingest picks up; the content is still sniffed, the name is only a filter.
/// HEIC and AVIF are listed too, so they are recorded as failed with the reason (no decoder)
/// instead of being silently left out of a collection.
pub const IMAGE_EXTENSIONS: &[&str] =
    &["jpg", "jpeg", "jpe", "png", "webp", "gif", "bmp", "tif", "tiff", "heic", "heif", "avif"];

/// Images larger than this are recorded as failed without being read whole.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("image folder {path} cannot be read: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("image folder {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{0}")]
    InvalidSpec(String),
    #[error("bucket {bucket}: {message}")]
    Bucket { bucket: String, message: String },
    #[error("URL list {path}: {message}")]
    UrlList { path: PathBuf, message: String },
}

/// Why one image's bytes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The image cannot be used (too large, gone, refused): recorded as failed.
    #[error("{reason}")]
    Unusable { reason: String, size_bytes: Option<u64> },
    /// The image cannot be reached right now: this run counts it failed, an indexed copy stays.
    #[error("{reason}")]
    Unavailable { reason: String },
    /// The source as a whole is unreachable: the run stops with this error.
    #[error(transparent)]
    Source(SourceError),
}

impl ReadError {
    fn too_large(size: u64) -> Self {
        ReadError::Unusable {
            reason: format!("file is {size} bytes, over the limit of {MAX_FILE_BYTES}"),
            size_bytes: Some(size),
        }
    }
}

/// Where a run's images come from, as `imgsearch ingest`'s arguments say: opened into a
/// [`Source`] when the run starts.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// A folder, or a bucket's prefix as `s3://bucket/prefix` with the settings that reach it.
    Location { location: String, s3: s3::S3Settings },
    /// A file listing image URLs, fetched within the guard: internal addresses refused unless
    /// one of `allowed_networks` (CIDRs) holds them, each fetch limited to `timeout`.
    UrlList { file: PathBuf, allowed_networks: Vec<String>, timeout: std::time::Duration },
}

impl SourceSpec {
    pub fn open(&self) -> Result<Source, SourceError> {
        match self {
            Self::UrlList { file, allowed_networks, timeout } => {
                let fetcher = urls::Fetcher::new(urls::AllowedNetworks::parse(allowed_networks)?, *timeout)?;
                Ok(Source::Urls(urls::UrlList::read(file, fetcher)?))
            }
            Self::Location { location, s3 } if location.starts_with("s3://") => {
                Ok(Source::S3(s3::Bucket::connect(s3::S3Location::parse(location)?, s3)?))
            }
            Self::Location { location, .. } => Source::directory(Path::new(location)),
        }
    }
}

/// Where a run's images come from.
#[derive(Debug)]
pub enum Source {
    /// A folder, stored canonicalised: URIs are absolute paths under it.
    Directory(PathBuf),
    S3(s3::Bucket),
    Urls(urls::UrlList),
}

impl Source {
    /// A folder source; the folder must exist.
    pub fn directory(folder: &Path) -> Result<Self, SourceError> {
        let root =
            folder.canonicalize().map_err(|source| SourceError::Unreadable { path: folder.to_path_buf(), source })?;
        if !root.is_dir() {
            return Err(SourceError::NotADirectory(root));
        }
        Ok(Source::Directory(root))
    }

    /// What a log line or an error should call this source.
    pub fn describe(&self) -> String {
        match self {
            Source::Directory(root) => root.display().to_string(),
            Source::S3(bucket) => bucket.uri_prefix(),
            Source::Urls(list) => format!("URL list {}", list.path.display()),
        }
    }

    /// Every image the source offers, sorted by URI.
    pub async fn list(&self) -> Result<Vec<SourceImage>, SourceError> {
        match self {
            Source::Directory(root) => {
                let root = root.clone();
                tokio::task::spawn_blocking(move || list_directory(&root))
                    .await
                    .map_err(|e| SourceError::InvalidSpec(format!("listing thread failed: {e}")))?
            }
            Source::S3(bucket) => bucket.list().await,
            Source::Urls(list) => Ok(list.images()),
        }
    }

    /// One image's bytes, at most [`MAX_FILE_BYTES`].
    pub async fn read(&self, image: &SourceImage) -> Result<Vec<u8>, ReadError> {
        match self {
            Source::Directory(_) => read_file(Path::new(&image.uri)).await,
            Source::S3(bucket) => bucket.read(image).await,
            Source::Urls(list) => list.fetcher.fetch(&image.uri).await,
        }
    }

    /// How many reads a run keeps in flight: a few for local files (the decoder is the
    /// bottleneck), more for network sources, where each read mostly waits.
    pub fn read_concurrency(&self) -> usize {
        match self {
            Source::Directory(_) => 4,
            Source::S3(_) | Source::Urls(_) => 16,
        }
    }

    /// Whether a catalogued URI came from this source, so pruning never touches images of
    /// other folders, buckets or uploads.
    pub fn owns(&self, uri: &str) -> bool {
        match self {
            Source::Directory(root) => uri.starts_with(&format!("{}/", root.display())),
            Source::S3(bucket) => bucket.owns(uri),
            Source::Urls(_) => uri.starts_with("http://") || uri.starts_with("https://"),
        }
    }
}

async fn read_file(path: &Path) -> Result<Vec<u8>, ReadError> {
    let unusable =
        |e: std::io::Error| ReadError::Unusable { reason: format!("cannot read file: {e}"), size_bytes: None };
    let size = tokio::fs::metadata(path).await.map_err(unusable)?.len();
    if size > MAX_FILE_BYTES {
        return Err(ReadError::too_large(size));
    }
    tokio::fs::read(path).await.map_err(unusable)
}

/// One of `count` deterministic parts of a source, picked by a hash of each image's URI: the
/// pods of an Indexed Job (one shard each) cover every image exactly once, whatever order they
/// run in and however often one is retried. SHA-256, not `std`'s hasher, so the split is the
/// same across builds and machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        if count == 0 {
            return Err("the shard count must be at least 1".into());
        }
        if index >= count {
            return Err(format!("shard index {index} is out of range for {count} shards (0..={})", count - 1));
        }
        Ok(Self { index, count })
    }

    pub fn contains(&self, uri: &str) -> bool {
        if self.count <= 1 {
            return true;
        }
        let digest = <sha2::Sha256 as sha2::Digest>::digest(uri.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) % u64::from(self.count) == u64::from(self.index)
    }
}

/// One image the source offers: its stable URI (returned by search, used as the catalog key;
/// for a folder, the file's absolute path) and its size when the listing tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    pub uri: String,
    pub size: Option<u64>,
}

/// Every image file under `root`, recursively, sorted by path. Symbolic links are not followed,
/// so a link cannot pull files from outside the folder into the collection; hidden files and
/// folders (names starting with '.') are skipped. URIs are absolute paths.
pub fn list_directory(root: &Path) -> Result<Vec<SourceImage>, SourceError> {
    let root = root.canonicalize().map_err(|source| SourceError::Unreadable { path: root.to_path_buf(), source })?;
    if !root.is_dir() {
        return Err(SourceError::NotADirectory(root));
    }
    let mut images = Vec::new();
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(source) if dir == root => return Err(SourceError::Unreadable { path: dir, source }),
            Err(error) => {
                tracing::warn!(folder = %dir.display(), %error, "skipping unreadable folder");
                continue;
            }
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            // file_type() does not follow symlinks: a link is neither a file nor a dir here.
            let Ok(kind) = entry.file_type() else { continue };
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() && has_image_extension(&path) {
                // Non-UTF-8 names cannot be represented as URIs faithfully; lossy would collide.
                let Some(uri) = path.to_str().map(str::to_string) else {
                    tracing::warn!(file = %path.display(), "skipping file whose name is not valid UTF-8");
                    continue;
                };
                images.push(SourceImage { uri, size: None });
            }
        }
    }
    images.sort_by(|a, b| a.uri.cmp(&b.uri));
    Ok(images)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(is_image_extension)
}

fn is_image_extension(extension: &str) -> bool {
    IMAGE_EXTENSIONS.iter().any(|known| extension.eq_ignore_ascii_case(known))
}

/// reqwest and object_store use rustls without picking a crypto provider; this process uses
/// ring (as kube's client does). Idempotent.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_images_recursively_skipping_hidden_other_and_linked_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("shoes/red")).unwrap();
        std::fs::create_dir_all(root.join(".cache")).unwrap();
        for file in ["a.JPG", "shoes/b.png", "shoes/red/c.jpeg", "notes.txt", ".hidden.jpg", ".cache/d.jpg"] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.jpg"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.jpg"), root.join("link.jpg")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("linked-dir")).unwrap();

        let names: Vec<String> = list_directory(root)
            .unwrap()
            .into_iter()
            .map(|i| Path::new(&i.uri).strip_prefix(root.canonicalize().unwrap()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["a.JPG", "shoes/b.png", "shoes/red/c.jpeg"]);
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_it() {
        let err = list_directory(Path::new("/no/such/folder")).unwrap_err();
        assert!(err.to_string().contains("/no/such/folder"), "{err}");
    }
}

#[cfg(test)]
mod shard_tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any URIs, any shard count: each URI belongs to exactly one shard.
        #[test]
        fn every_uri_belongs_to_exactly_one_shard(uris in prop::collection::vec(any::<String>(), 1..40), count in 1u32..24) {
            let shards: Vec<Shard> = (0..count).map(|i| Shard::new(i, count).expect("valid shard")).collect();
            for uri in &uris {
                let owners = shards.iter().filter(|shard| shard.contains(uri)).count();
                prop_assert_eq!(owners, 1, "{:?} in {} shards", uri, count);
            }
        }
    }

    use super::*;

    #[test]
    fn shards_cover_every_uri_exactly_once_and_stay_stable() {
        let uris: Vec<String> = (0..2000).map(|i| format!("/images/{}/{i}.jpg", i % 7)).collect();
        let shards: Vec<Shard> = (0..3).map(|i| Shard::new(i, 3).expect("valid shard")).collect();
        let mut sizes = [0usize; 3];
        for uri in &uris {
            let owners: Vec<usize> = (0..3).filter(|&i| shards[i].contains(uri)).collect();
            assert_eq!(owners.len(), 1, "{uri} belongs to {owners:?}");
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| n > 550), "an even-ish split: {sizes:?}");
        // The split is part of the on-disk contract (reruns, prune): pin one value.
        // (values computed independently: Python's hashlib, first 8 bytes big-endian, mod 3)
        assert!(Shard::new(0, 3).expect("valid").contains("/images/a.jpg"));
        assert!(Shard::new(2, 3).expect("valid").contains("/images/b.jpg"));
        assert!(Shard::WHOLE.contains("anything"));
    }

    #[test]
    fn impossible_shards_are_refused_with_a_reason() {
        assert_eq!(Shard::new(0, 0).unwrap_err(), "the shard count must be at least 1");
        assert_eq!(Shard::new(4, 4).unwrap_err(), "shard index 4 is out of range for 4 shards (0..=3)");
    }
}
