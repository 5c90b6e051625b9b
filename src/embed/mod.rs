//! The embedding model: which ONNX file, which ONNX Runtime library, and batched inference.

pub mod batcher;
pub mod preprocess;
pub mod runtime;
pub mod structure;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

pub use preprocess::{DecodeLimits, ImageError, ModelInput, PreparedImage};

/// A model imgsearch ships, described well enough to feed it and to size a Milvus collection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuiltinModel {
    pub name: &'static str,
    pub file_name: &'static str,
    pub dimension: usize,
    pub input: ModelInput,
}

/// EfficientNet-Lite0, ImageNet weights, 1280-d pooled features (see model/README.md). Its
/// input is scaled as it was in training: the Lite models use (pixel - 127) / 128 in every
/// channel (efficientnet_lite_builder.py's MEAN_RGB / STDDEV_RGB), not ImageNet's per-channel
/// statistics — measured on Fashion-MNIST, precision@10 0.723 against 0.666.
pub const EFFICIENTNET_LITE0: BuiltinModel = BuiltinModel {
    name: "efficientnet-lite0",
    file_name: "efficientnet-lite0.onnx",
    dimension: 1280,
    input: ModelInput { size: 224, mean: [127.0 / 255.0; 3], std: [128.0 / 255.0; 3] },
};

pub const BUILTIN_MODELS: &[BuiltinModel] = &[EFFICIENTNET_LITE0];

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("unknown model {name:?}; built-in models: {known}")]
    UnknownModel { name: String, known: String },
    #[error(
        "model file {path} not found; run `make setup` in the imgsearch checkout or point --model-dir / IMGSEARCH_MODEL_DIR at the folder holding {file}"
    )]
    ModelFileMissing { path: PathBuf, file: &'static str },
    #[error("{0}")]
    RuntimeMissing(String),
    #[error("ONNX Runtime failed to load {path}: {detail}")]
    RuntimeLoad { path: PathBuf, detail: String },
    #[error("model {path} could not be loaded: {detail}")]
    ModelLoad { path: PathBuf, detail: String },
    #[error("inference failed: {0}")]
    Inference(String),
}

/// A loaded model with one or more ONNX Runtime sessions. Inference takes `&self`: callers on
/// many threads share one model, each call taking a free session (or waiting for one).
///
/// Why more than one session: on a busy machine, one session spreading an operator over every
/// core stalls whenever another thread (a JPEG decoder) takes one of those cores, since its
/// threads wait for each other at every operator. Single-threaded sessions, one per core, run
/// batches side by side and never wait for each other (see docs/benchmarks.md). A search
/// request, one image at a time, is faster on one session using every core.
pub struct EmbeddingModel {
    spec: BuiltinModel,
    path: PathBuf,
    sessions: Vec<Mutex<Session>>,
    /// Where the next call starts looking for a free session, so calls spread over all of them.
    next_session: AtomicUsize,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel").field("spec", &self.spec).field("path", &self.path).finish()
    }
}

/// Where to find the model and the runtime; every field falls back to a discovery rule.
#[derive(Debug, Clone, Default)]
pub struct ModelConfig {
    pub name: String,
    pub model_dir: Option<PathBuf>,
    pub ort_dylib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads of each session; 0 lets ONNX Runtime use every core.
    pub threads: usize,
    /// Sessions that can run batches at the same time; 0 means 1.
    pub sessions: usize,
}

/// What the model will mostly do, which decides how its cores are shared out by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Many images (ingest): one single-threaded session per core, batches side by side; they
    /// keep running at full speed while decode threads take turns on the same cores.
    Throughput,
    /// One image at a time (search requests, eval's one thread): one session using every core.
    Latency,
}

/// The most inference sessions a throughput workload starts on its own.
const MAX_DEFAULT_SESSIONS: usize = 4;

/// The model as a command's flags choose it; what they leave open, the workload decides.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub name: String,
    pub model_dir: Option<PathBuf>,
    pub ort_dylib: Option<PathBuf>,
    /// ONNX Runtime threads per session, if set.
    pub threads: Option<usize>,
    /// Sessions running batches side by side, if set.
    pub sessions: Option<usize>,
    pub limits: DecodeLimits,
}

impl ModelSettings {
    /// Sessions and threads for `workload` on this machine's cores, where the flags are silent.
    pub fn config(&self, workload: Workload) -> ModelConfig {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let (sessions, threads) = match workload {
            Workload::Throughput => {
                // Each session holds its own copy of the model and activation arena (≈ 290 MiB
                // at batch 8): a pod without a CPU limit on a large node would otherwise start
                // dozens. Four keep the gain on small nodes; more is a flag away.
                let sessions = self.sessions.unwrap_or(cores.min(MAX_DEFAULT_SESSIONS)).max(1);
                (sessions, self.threads.unwrap_or_else(|| (cores / sessions).max(1)))
            }
            Workload::Latency => (self.sessions.unwrap_or(1), self.threads.unwrap_or(0)),
        };
        ModelConfig {
            name: self.name.clone(),
            model_dir: self.model_dir.clone(),
            ort_dylib: self.ort_dylib.clone(),
            threads,
            sessions,
        }
    }

    /// Loads the model for `workload` (on the blocking pool: it reads and optimises the graph)
    /// and says what was loaded.
    pub async fn load(&self, workload: Workload) -> Result<std::sync::Arc<EmbeddingModel>, EmbedError> {
        let config = self.config(workload);
        let threads = config.threads;
        let model = tokio::task::spawn_blocking(move || EmbeddingModel::load(&config)).await.map_err(|e| {
            EmbedError::ModelLoad { path: PathBuf::new(), detail: format!("the loading task failed: {e}") }
        })??;
        tracing::info!(
            model = model.spec().name,
            dimension = model.dimension(),
            sessions = model.sessions(),
            threads_per_session = if threads == 0 { "all cores".to_string() } else { threads.to_string() },
            "model loaded"
        );
        Ok(std::sync::Arc::new(model))
    }
}

impl EmbeddingModel {
    pub fn load(config: &ModelConfig) -> Result<Self, EmbedError> {
        let spec = builtin(&config.name)?;
        let path = locate_model_file(config.model_dir.as_deref(), spec)?;
        let environment = runtime::environment(config.ort_dylib.as_deref())?;
        let load_error = |detail: String| EmbedError::ModelLoad { path: path.clone(), detail };
        let mut sessions = Vec::new();
        for _ in 0..config.sessions.max(1) {
            let mut builder = Session::builder(&environment).map_err(|e| load_error(e.to_string()))?;
            builder = builder
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| load_error(e.to_string()))?
                // ONNX Runtime's pool threads otherwise spin after each run waiting for the
                // next, burning the cores that decoders and, on a small node, Milvus need:
                // measured here, one 224² inference on 2 threads cost 27 ms of CPU with
                // spinning (between sparse queries) and 14 ms without, and ran no slower.
                .with_intra_op_spinning(false)
                .map_err(|e| load_error(e.to_string()))?;
            if config.threads > 0 {
                builder = builder.with_intra_threads(config.threads).map_err(|e| load_error(e.to_string()))?;
            }
            sessions.push(Mutex::new(builder.commit_from_file(&path).map_err(|e| load_error(e.to_string()))?));
        }
        Ok(Self { spec, path, sessions, next_session: AtomicUsize::new(0) })
    }

    /// How many batches can run at once.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// A free session if there is one, else the next in turn (waiting for it).
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        let start = self.next_session.fetch_add(1, Ordering::Relaxed);
        let count = self.sessions.len();
        for offset in 0..count {
            match self.sessions[(start + offset) % count].try_lock() {
                Ok(session) => return session,
                // A poisoned lock only means another inference panicked; the session is sound.
                Err(std::sync::TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        self.sessions[start % count].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn spec(&self) -> BuiltinModel {
        self.spec
    }

    pub fn dimension(&self) -> usize {
        self.spec.dimension
    }

    pub fn input_size(&self) -> u32 {
        self.spec.input.size
    }

    /// What `preprocess::prepare` must make of an image for this model.
    pub fn input(&self) -> ModelInput {
        self.spec.input
    }

    /// Bytes → L2-normalised embedding, for one query image.
    pub fn embed_bytes(
        &self,
        bytes: &[u8],
        limits: DecodeLimits,
    ) -> Result<(PreparedImage, Vec<f32>), EmbedBytesError> {
        let prepared = preprocess::prepare(bytes, limits, self.input())?;
        let mut vectors = self.embed_batch(std::slice::from_ref(&prepared))?;
        let vector = vectors.pop().ok_or_else(|| EmbedError::Inference("model returned no vector".into()))?;
        Ok((prepared, vector))
    }

    /// One forward pass over a batch; returns one L2-normalised vector per input, in order.
    pub fn embed_batch(&self, images: &[PreparedImage]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let side = self.input_size() as usize;
        let per_image = 3 * side * side;
        let mut input = Vec::with_capacity(images.len() * per_image);
        for image in images {
            if image.tensor.len() != per_image {
                return Err(EmbedError::Inference(format!(
                    "input tensor has {} values, the model needs {per_image}",
                    image.tensor.len()
                )));
            }
            input.extend_from_slice(&image.tensor);
        }
        let shape = [images.len(), 3, side, side];
        let tensor =
            TensorRef::from_array_view((shape, input.as_slice())).map_err(|e| EmbedError::Inference(e.to_string()))?;
        let mut session = self.session();
        let outputs = session.run(ort::inputs![tensor]).map_err(|e| EmbedError::Inference(e.to_string()))?;
        let (out_shape, values) =
            outputs[0].try_extract_tensor::<f32>().map_err(|e| EmbedError::Inference(e.to_string()))?;
        let dimension = self.dimension();
        if values.len() != images.len() * dimension {
            return Err(EmbedError::Inference(format!(
                "model output shape {out_shape:?} does not hold {} vectors of {dimension}",
                images.len()
            )));
        }
        Ok(values.chunks_exact(dimension).map(l2_normalised).collect())
    }
}

/// Either the image was bad (the caller's fault) or inference failed (ours).
#[derive(Debug, thiserror::Error)]
pub enum EmbedBytesError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

pub fn builtin(name: &str) -> Result<BuiltinModel, EmbedError> {
    BUILTIN_MODELS.iter().copied().find(|m| m.name == name).ok_or_else(|| EmbedError::UnknownModel {
        name: name.to_string(),
        known: BUILTIN_MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
    })
}

/// Cosine similarity becomes a dot product, and Milvus' COSINE and IP metrics agree.
pub fn l2_normalised(vector: &[f32]) -> Vec<f32> {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm == 0.0 {
        return vector.to_vec();
    }
    vector.iter().map(|v| v / norm).collect()
}

fn locate_model_file(model_dir: Option<&Path>, spec: BuiltinModel) -> Result<PathBuf, EmbedError> {
    let candidates: Vec<PathBuf> = match model_dir {
        Some(dir) => vec![dir.join(spec.file_name)],
        None => runtime::search_roots().into_iter().map(|root| root.join("model").join(spec.file_name)).collect(),
    };
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| EmbedError::ModelFileMissing {
        path: candidates.into_iter().next().unwrap_or_else(|| PathBuf::from("model").join(spec.file_name)),
        file: spec.file_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_to_unit_length_and_leaves_zero_alone() {
        let v = l2_normalised(&[3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(l2_normalised(&[0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn unknown_model_names_list_the_known_ones() {
        let err = builtin("resnet9000").unwrap_err();
        assert_eq!(err.to_string(), "unknown model \"resnet9000\"; built-in models: efficientnet-lite0");
    }
}
