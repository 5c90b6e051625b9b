//! The environment variable names of imgsearch's configuration, in one place: the CLI reads each
//! flag's fallback from them (`#[arg(env = env::MILVUS_URI)]`) and the controller writes them
//! into the pods it makes, so a name misspelt on one side cannot survive compilation.

// Where the vectors and the catalog are.
pub const MILVUS_URI: &str = "MILVUS_URI";
pub const MILVUS_TOKEN: &str = "MILVUS_TOKEN";
pub const MILVUS_USERNAME: &str = "MILVUS_USERNAME";
pub const MILVUS_PASSWORD: &str = "MILVUS_PASSWORD";
pub const MILVUS_DATABASE: &str = "MILVUS_DATABASE";
pub const DATABASE_URL: &str = "DATABASE_URL";
pub const COLLECTION: &str = "IMGSEARCH_COLLECTION";
pub const COLLECTION_OWNER: &str = "IMGSEARCH_COLLECTION_OWNER";

// The model and its inputs.
pub const MODEL: &str = "IMGSEARCH_MODEL";
pub const MODEL_DIR: &str = "IMGSEARCH_MODEL_DIR";
/// ONNX Runtime's own name for its shared library's path (ort reads it too).
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";
pub const THREADS: &str = "IMGSEARCH_THREADS";
pub const INFERENCE_SESSIONS: &str = "IMGSEARCH_INFERENCE_SESSIONS";
pub const MAX_IMAGE_PIXELS: &str = "IMGSEARCH_MAX_IMAGE_PIXELS";
pub const MAX_IMAGE_DIMENSION: &str = "IMGSEARCH_MAX_IMAGE_DIMENSION";

// The vector index.
pub const HNSW_M: &str = "IMGSEARCH_HNSW_M";
pub const HNSW_EF_CONSTRUCTION: &str = "IMGSEARCH_HNSW_EF_CONSTRUCTION";
pub const SEARCH_EF: &str = "IMGSEARCH_SEARCH_EF";

// Ingest.
pub const BATCH_SIZE: &str = "IMGSEARCH_BATCH_SIZE";
pub const DECODE_WORKERS: &str = "IMGSEARCH_DECODE_WORKERS";
pub const URL_LIST: &str = "IMGSEARCH_URL_LIST";
pub const ALLOW_PRIVATE_NETWORKS: &str = "IMGSEARCH_ALLOW_PRIVATE_NETWORKS";
pub const URL_TIMEOUT_SECONDS: &str = "IMGSEARCH_URL_TIMEOUT_SECONDS";
pub const S3_ENDPOINT: &str = "IMGSEARCH_S3_ENDPOINT";
/// The AWS SDKs' names, which object_store reads as well.
pub const AWS_REGION: &str = "AWS_REGION";
pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
/// Set by Kubernetes in each pod of an Indexed Job.
pub const JOB_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";
pub const SHARD_COUNT: &str = "IMGSEARCH_SHARD_COUNT";
pub const PRUNE: &str = "IMGSEARCH_PRUNE";
pub const SUMMARY_FILE: &str = "IMGSEARCH_SUMMARY_FILE";

// The search server.
pub const LISTEN: &str = "IMGSEARCH_LISTEN";
pub const LOAD_ROOTS: &str = "IMGSEARCH_LOAD_ROOTS";
pub const UPLOAD_DIR: &str = "IMGSEARCH_UPLOAD_DIR";
pub const MAX_BODY_BYTES: &str = "IMGSEARCH_MAX_BODY_BYTES";
pub const QUERY_DECODERS: &str = "IMGSEARCH_QUERY_DECODERS";
pub const MAX_QUERY_BATCH: &str = "IMGSEARCH_MAX_QUERY_BATCH";
pub const MAX_QUEUED_QUERIES: &str = "IMGSEARCH_MAX_QUEUED_QUERIES";
pub const QUEUE_TIMEOUT_SECONDS: &str = "IMGSEARCH_QUEUE_TIMEOUT_SECONDS";
pub const IMAGE_BUCKET: &str = "IMGSEARCH_IMAGE_BUCKET";
pub const AUTH_TOKEN_FILE: &str = "IMGSEARCH_AUTH_TOKEN_FILE";
pub const AUTH_TOKEN: &str = "IMGSEARCH_AUTH_TOKEN";
pub const AUTH_READS: &str = "IMGSEARCH_AUTH_READS";
pub const SEARCH_CONSISTENCY: &str = "IMGSEARCH_SEARCH_CONSISTENCY";
pub const SHUTDOWN_DRAIN_SECONDS: &str = "IMGSEARCH_SHUTDOWN_DRAIN_SECONDS";
pub const SEARCH_BY_URL: &str = "IMGSEARCH_SEARCH_BY_URL";
pub const SEARCH_URL_ALLOW_NETWORKS: &str = "IMGSEARCH_SEARCH_URL_ALLOW_NETWORKS";
pub const HEADER_TIMEOUT_SECONDS: &str = "IMGSEARCH_HEADER_TIMEOUT_SECONDS";
pub const BODY_IDLE_TIMEOUT_SECONDS: &str = "IMGSEARCH_BODY_IDLE_TIMEOUT_SECONDS";
pub const MAX_CONNECTIONS: &str = "IMGSEARCH_MAX_CONNECTIONS";

// Standalone.
pub const IMAGES: &str = "IMGSEARCH_IMAGES";
pub const DATA_DIR: &str = "IMGSEARCH_DATA_DIR";
pub const MILVUS_LITE: &str = "IMGSEARCH_MILVUS_LITE";

// The controller.
pub const IMAGE: &str = "IMGSEARCH_IMAGE";
pub const IMAGE_PULL_POLICY: &str = "IMGSEARCH_IMAGE_PULL_POLICY";
pub const CONTROLLER_LISTEN: &str = "IMGSEARCH_CONTROLLER_LISTEN";
pub const LEADER_ELECTION: &str = "IMGSEARCH_LEADER_ELECTION";
pub const LEASE_NAME: &str = "IMGSEARCH_LEASE_NAME";
pub const POD_START_GRACE_SECONDS: &str = "IMGSEARCH_POD_START_GRACE_SECONDS";
/// Set from the pod's own metadata by the Downward API (manifests/base).
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
pub const POD_NAME: &str = "POD_NAME";

/// The log filter (tracing-subscriber's convention).
pub const RUST_LOG: &str = "RUST_LOG";
