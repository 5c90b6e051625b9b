//! Where images come from. Today: a directory (a local folder or a mounted PVC).

use std::path::{Path, PathBuf};

/// File extensions ingest picks up; the content is still sniffed, the name is only a filter.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("image folder {path} cannot be read: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("image folder {0} is not a directory")]
    NotADirectory(PathBuf),
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

/// One image the source offers: its stable URI (returned by search, used as the catalog key)
/// and where to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceImage {
    pub uri: String,
    pub path: PathBuf,
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
                images.push(SourceImage { uri, path });
            }
        }
    }
    images.sort_by(|a, b| a.uri.cmp(&b.uri));
    Ok(images)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|known| e.eq_ignore_ascii_case(known)))
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
            .map(|i| i.path.strip_prefix(root.canonicalize().unwrap()).unwrap().display().to_string())
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
