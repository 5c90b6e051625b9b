//! Finding and loading the ONNX Runtime shared library (ort's `load-dynamic`).
//!
//! The library comes from the PyPI `onnxruntime` wheel (installed into the project's `.venv` by
//! scripts/setup.sh) or from wherever `ORT_DYLIB_PATH` points, as in the container image.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use super::EmbedError;

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment(explicit: Option<&Path>) -> Result<Environment, EmbedError> {
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment.clone());
    }
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment.clone());
    }
    let path = locate_library(explicit)?;
    let load_error = |detail: String| EmbedError::RuntimeLoad { path: path.clone(), detail };
    let environment = ort::init_from(&path)
        .map_err(|e| load_error(e.to_string()))?
        .with_name("imgsearch")
        .build()
        .map_err(|e| load_error(e.to_string()))?;
    tracing::debug!(library = %path.display(), "loaded ONNX Runtime");
    Ok(ENVIRONMENT.get_or_init(|| environment).clone())
}

/// An explicit path, else `ORT_DYLIB_PATH`, else the project's virtualenv.
pub fn locate_library(explicit: Option<&Path>) -> Result<PathBuf, EmbedError> {
    let from_env = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(path) = explicit.map(Path::to_path_buf).or(from_env) {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(EmbedError::RuntimeMissing(format!(
                "ONNX Runtime library {} does not exist; set ORT_DYLIB_PATH to libonnxruntime.so.1.* (shipped in the PyPI onnxruntime wheel under onnxruntime/capi/)",
                path.display()
            )))
        };
    }
    for root in search_roots() {
        if let Some(found) = find_in_venv(&root.join(".venv")) {
            return Ok(found);
        }
    }
    Err(EmbedError::RuntimeMissing(
        "ONNX Runtime library not found: run `make setup` (it installs the PyPI onnxruntime wheel into .venv), \
         or set ORT_DYLIB_PATH to a libonnxruntime.so.1.* (onnxruntime/capi/ inside the wheel)"
            .to_string(),
    ))
}

/// The working directory and every ancestor of the executable: `target/debug/imgsearch` finds
/// the checkout it was built in, and a binary run from the checkout finds it too.
pub fn search_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    roots.dedup();
    roots
}

fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    pythons.sort();
    for python in pythons {
        let capi = python.join("site-packages").join("onnxruntime").join("capi");
        let Ok(entries) = std::fs::read_dir(&capi) else { continue };
        let mut libraries: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.1")))
            .collect();
        libraries.sort();
        if let Some(library) = libraries.pop() {
            return Some(library);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_error_says_how_to_fix_it() {
        let err = locate_library(Some(Path::new("/nonexistent/libonnxruntime.so.1.32.0"))).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("/nonexistent/libonnxruntime.so.1.32.0") && message.contains("ORT_DYLIB_PATH"),
            "{message}"
        );
    }

    #[test]
    fn finds_the_library_inside_a_virtualenv() {
        let venv = tempfile::tempdir().unwrap();
        let capi = venv.path().join("lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        std::fs::write(capi.join("libonnxruntime.so.1.32.0"), b"").unwrap();
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"").unwrap();
        assert_eq!(find_in_venv(venv.path()), Some(capi.join("libonnxruntime.so.1.32.0")));
        assert_eq!(find_in_venv(&venv.path().join("missing")), None);
    }
}
