//! The `ImageCollection` custom resource (`imgsearch.io/v1alpha1`): what a user asks for and what
//! the controller reports back.
//!
//! Validation lives in the schema wherever the API server can enforce it (enums, ranges, required
//! fields, CEL rules for exactly-one-of and immutability), so a bad object is refused by
//! `kubectl apply` with a message, not discovered later by the controller.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "imgsearch.io";
pub const VERSION: &str = "v1alpha1";

/// A searchable collection of images: where they are, how to embed them, where the vectors go,
/// and how the search service is run.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "imgsearch.io",
    version = "v1alpha1",
    kind = "ImageCollection",
    plural = "imagecollections",
    shortname = "imgc",
    category = "imgsearch",
    namespaced,
    status = "ImageCollectionStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Images","type":"integer","jsonPath":".status.images.indexed"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","priority":1,"jsonPath":".status.images.failed"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","priority":1,"jsonPath":".status.searchEndpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new(rules::NAME_FORMAT_RULE).message(rules::NAME_FORMAT),
    validation = Rule::new(rules::NAME_LENGTH_RULE).message(rules::NAME_LENGTH)
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.model.name == oldSelf.model.name",
        "message": rules::MODEL_IMMUTABLE
    },
    {
        "rule": "has(self.collectionName) == has(oldSelf.collectionName) && (!has(self.collectionName) || self.collectionName == oldSelf.collectionName)",
        "message": rules::COLLECTION_IMMUTABLE
    }
]))]
pub struct ImageCollectionSpec {
    /// The Milvus server holding the vectors.
    pub milvus: MilvusSpec,
    /// Milvus collection name. Defaults to `imgsearch_<length of namespace>_<namespace>_<name>`
    /// with dashes turned into underscores (unique per namespace and name); objects made before
    /// that default keep the collection `status.collectionName` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub collection_name: Option<String>,
    /// Where the images are: exactly one of pvc, s3 or urls.
    pub source: SourceSpec,
    /// The embedding model.
    #[serde(default)]
    pub model: ModelSpec,
    /// The vector index.
    #[serde(default)]
    pub index: IndexConfig,
    /// The embedding Jobs.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// The search service.
    #[serde(default)]
    pub search: SearchConfig,
    /// SQL catalog (id → image) shared by ingest and search. Without it each pod keeps a SQLite
    /// file in an emptyDir, which is only good for trying things out: search then cannot see what
    /// ingest catalogued. Set it for real use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog: Option<CatalogSpec>,
    /// What happens to the Milvus collection and catalog rows when this object is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Stop creating ingest Jobs (running ones finish); search keeps serving.
    #[serde(default)]
    pub suspend: bool,
    /// Secrets of type `kubernetes.io/dockerconfigjson` in this namespace that the ingest and
    /// search pods pull the imgsearch image with, when it comes from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalSecretRef>,
}

/// Where Milvus is: an address, or a Milvus object managed by milvus-operator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.uri) != has(self.milvusRef)",
        "message": rules::ONE_MILVUS
    }
]))]
pub struct MilvusSpec {
    /// Milvus address, e.g. `http://my-release-milvus.milvus.svc:19530`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), regex(pattern = r"^(http|https|grpc|grpcs|tcp)://"))]
    pub uri: Option<String>,
    /// A `Milvus` object of milvus-operator (`milvus.io`); its Service `<name>-milvus` on port
    /// 19530 is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milvus_ref: Option<MilvusRef>,
    /// Secret with `token`, or `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalSecretRef>,
    /// Milvus database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MilvusRef {
    /// Name of the `Milvus` object.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Its namespace; default: the ImageCollection's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretRef {
    /// Name of a Secret in the ImageCollection's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Exactly one source.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "[has(self.pvc), has(self.s3), has(self.urls)].filter(x, x).size() == 1",
        "message": rules::ONE_SOURCE
    }
]))]
pub struct SourceSpec {
    /// Images on a PersistentVolumeClaim, mounted read-only into the ingest Jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    /// Images in an S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
    /// Images listed by URL, one per line, in a ConfigMap key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<UrlListSource>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// The PersistentVolumeClaim holding the images.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Folder inside the volume.
    #[serde(default = "default_root")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
}

fn default_root() -> String {
    "/".to_string()
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    /// Endpoint of a non-AWS S3-compatible store (MinIO, Ceph RGW, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalSecretRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UrlListSource {
    /// The ConfigMap key holding the list: one http(s) URL per line, `#` comments allowed.
    pub config_map_ref: ConfigMapKeyRef,
    /// Internal networks the fetches may reach, as CIDRs (e.g. an in-cluster image server's
    /// `10.0.0.0/8`). Private, loopback, link-local and cloud-metadata addresses are refused
    /// unless listed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_private_networks: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Built-in model.
    #[serde(default = "default_model")]
    pub name: ModelName,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self { name: default_model() }
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ModelName {
    /// EfficientNet-Lite0, ImageNet weights, 1280-d.
    #[serde(rename = "efficientnet-lite0")]
    EfficientNetLite0,
    /// A value of a newer CRD that this controller does not know (a rollback with the newer CRD
    /// left installed): this object is InvalidSpec, the others are still reconciled (see
    /// [`ImageCollection::values_not_understood`]). Never written.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl ModelName {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EfficientNetLite0 => "efficientnet-lite0",
            Self::Unknown => "(a model this controller does not know)",
        }
    }
}

fn default_model() -> ModelName {
    ModelName::EfficientNetLite0
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IndexConfig {
    #[serde(default)]
    pub r#type: IndexType,
    #[serde(default)]
    pub metric: Metric,
    #[serde(default)]
    pub params: HnswParams,
}

/// HNSW build parameters.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HnswParams {
    /// Graph degree: higher is more accurate and uses more memory.
    #[serde(default = "default_m", rename = "M")]
    #[schemars(range(min = 4, max = 64))]
    pub m: u32,
    /// Build-time breadth: higher is more accurate and slower to build.
    #[serde(default = "default_ef_construction")]
    #[schemars(range(min = 8, max = 512))]
    pub ef_construction: u32,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self { m: default_m(), ef_construction: default_ef_construction() }
    }
}

fn default_m() -> u32 {
    16
}

fn default_ef_construction() -> u32 {
    200
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum IndexType {
    #[default]
    #[serde(rename = "HNSW")]
    Hnsw,
    /// A value of a newer CRD that this controller does not know (a rollback with the newer CRD
    /// left installed): this object is InvalidSpec, the others are still reconciled (see
    /// [`ImageCollection::values_not_understood`]). Never written.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Metric {
    #[default]
    #[serde(rename = "COSINE")]
    Cosine,
    /// A value of a newer CRD that this controller does not know (a rollback with the newer CRD
    /// left installed): this object is InvalidSpec, the others are still reconciled (see
    /// [`ImageCollection::values_not_understood`]). Never written.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngestConfig {
    /// Pods of the Indexed Job working at once; each takes a deterministic shard of the source.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 64))]
    pub parallelism: i32,
    /// Images per inference call and per database write.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1024))]
    pub batch_size: i32,
    /// Cron schedule for periodic rescans (a CronJob): five fields (minute hour day-of-month
    /// month day-of-week, e.g. "30 2 * * *") or a descriptor such as @hourly; without it, ingest
    /// runs once per spec change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), extend("x-kubernetes-validations" = [
        {
            "rule": "!self.contains('TZ')",
            "message": rules::SCHEDULE_TIME_ZONE
        },
        {
            "rule": "self.matches('^\\\\s*(@\\\\S+( .*)?|\\\\S+\\\\s+\\\\S+\\\\s+\\\\S+\\\\s+\\\\S+\\\\s+\\\\S+)\\\\s*$')",
            "message": rules::SCHEDULE_FIELDS
        }
    ]))]
    pub schedule: Option<String>,
    /// Time zone of the schedule, as an IANA name (e.g. Europe/Berlin); the controller's
    /// kube-controller-manager default (usually UTC) without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*$"))]
    pub time_zone: Option<String>,
    /// Finished ingest Jobs kept for inspection.
    #[serde(default = "default_history")]
    #[schemars(range(min = 0, max = 20))]
    pub history_limit: i32,
    /// Retries of each shard's failed pod before that shard fails (the Job's
    /// `backoffLimitPerIndex`); the Job fails once every shard has finished and one failed. A
    /// bad image never fails a pod; one fails when Milvus, the catalog or the source cannot be
    /// reached, and the Job controller waits 10 s, 20 s, 40 s … (at most 6 minutes) before each
    /// retry. Evictions and preemptions are not counted; an ingest that exits with 78 (invalid
    /// configuration, such as a source path that is a file) fails its shard without retries.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 20))]
    pub backoff_limit: i32,
    /// Remove images that were deleted from the source, so the collection mirrors it.
    #[serde(default = "default_prune")]
    pub prune: bool,
    /// Each ingest pod's requests and limits. Unset: requests 1 CPU and 1 GiB, limits 2 CPUs
    /// and 2 GiB (ingest peaked at 366–603 MiB on 2 cores in the benchmarks; it starts one
    /// decode thread per CPU it may use), so a namespace quota on requests and limits accepts
    /// the pods. `{}` sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

fn default_prune() -> bool {
    true
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            parallelism: default_parallelism(),
            batch_size: default_batch_size(),
            schedule: None,
            time_zone: None,
            history_limit: default_history(),
            backoff_limit: default_backoff_limit(),
            prune: default_prune(),
            resources: None,
        }
    }
}

fn default_parallelism() -> i32 {
    1
}

/// Small batches on one single-threaded session per core run as fast as large ones (measured:
/// 8 and 32 both ≈ 75 images/s on 2 cores) with a third of the memory (≈ 590 MiB against
/// ≈ 1.9 GiB peak: ONNX Runtime's activation arena grows with the batch, once per session).
fn default_batch_size() -> i32 {
    8
}

fn default_history() -> i32 {
    3
}

/// Kubernetes' own default for a Job: about ten minutes of retries.
fn default_backoff_limit() -> i32 {
    6
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchConfig {
    /// Search pods. Unset: the Deployment starts with 1 and its replica count is left to
    /// whoever scales it (a HorizontalPodAutoscaler, `kubectl scale`), as other operators'
    /// Deployments do; set, the controller keeps it at this number. 0 runs no search pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub service_type: ServiceType,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret with `token`: a bearer token required on write routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SearchAuth>,
    /// Each search pod's requests and limits. Unset: requests 250m CPU and 512 MiB, limits 2
    /// CPUs and 1 GiB (the server held 86 MiB idle and 400 MiB at 32 concurrent searches of
    /// 12-megapixel photos in the benchmarks). `{}` sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// Seconds a rollout of the search Deployment may go without progress before Kubernetes
    /// (and the collection's Stalled condition) calls it failed; Kubernetes' default, 600, when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline_seconds: Option<i32>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            replicas: None,
            service_type: ServiceType::default(),
            port: default_port(),
            auth: None,
            resources: None,
            progress_deadline_seconds: None,
        }
    }
}

fn default_port() -> i32 {
    8080
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchAuth {
    pub secret_ref: LocalSecretRef,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    /// A value of a newer CRD that this controller does not know (a rollback with the newer CRD
    /// left installed): this object is InvalidSpec, the others are still reconciled (see
    /// [`ImageCollection::values_not_understood`]). Never written.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogSpec {
    /// Secret with `DATABASE_URL`: a `postgres://` or `mysql://` DSN. Without a catalog,
    /// Milvus's own rows are the record of what is indexed: ids derive from image URIs, and
    /// why an image failed is reported per run (Job summary, status) but not kept.
    pub secret_ref: LocalSecretRef,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the Milvus collection and catalog rows when the object is deleted.
    #[default]
    Retain,
    /// Drop the Milvus collection and catalog rows with the object.
    Delete,
    /// A policy of a newer CRD this controller does not know: the data is kept, as with
    /// Retain (nothing is dropped on a value not understood). Never written.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// What the controller observed. Follows the kstatus conventions (`observedGeneration`, a
/// `Ready` condition, `Reconciling`/`Stalled`) so Flux and Argo CD read health without scripts.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageCollectionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// One entry per `type` (a list map, as Kubernetes' own `conditions` are): under
    /// server-side apply each condition is owned on its own, so another manager's condition
    /// (a policy engine's, a user's) is kept beside the controller's instead of replacing the
    /// whole list or conflicting with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageCounts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ingest: Option<LastIngest>,
    /// In-cluster URL of the search service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_endpoint: Option<String>,
    /// The Milvus collection in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection_name: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Ingesting,
    Ready,
    Degraded,
    Failed,
    Deleting,
    /// A phase written by a newer controller (before a rollback): read without failing, and
    /// replaced by this controller's own on its next status write. Never written.
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageCounts {
    /// Vectors searchable in the Milvus collection.
    pub indexed: i64,
    /// Images the last completed ingest could not index (the reasons are in its pods' logs and
    /// the catalog). Absent until an ingest has reported: absent means unknown, never zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<i64>,
    /// Images the last completed ingest found unchanged since an earlier run. Absent until
    /// known, like `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<i64>,
    /// True while Milvus does not answer: these are the last counts seen, kept rather than
    /// dropped (CollectionReady says why they cannot be refreshed). Absent when current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<bool>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastIngest {
    pub job: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// One line: what the run did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// Condition types and reasons, in one place.
pub mod conditions {
    pub const COLLECTION_READY: &str = "CollectionReady";
    pub const INDEX_READY: &str = "IndexReady";
    pub const INGESTED: &str = "Ingested";
    pub const SEARCH_READY: &str = "SearchReady";
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
}

impl ImageCollection {
    /// The Milvus address: `spec.milvus.uri`, or the Service milvus-operator creates for the
    /// referenced `Milvus` object. `None` when neither is set (the schema forbids that).
    pub fn milvus_uri(&self) -> Option<String> {
        if let Some(uri) = &self.spec.milvus.uri {
            return Some(uri.clone());
        }
        let reference = self.spec.milvus.milvus_ref.as_ref()?;
        let namespace = reference.namespace.as_deref().or(self.metadata.namespace.as_deref()).unwrap_or("default");
        Some(format!("http://{}-milvus.{namespace}.svc:19530", reference.name))
    }

    /// The Milvus collection this object manages: `spec.collectionName`; else the one its status
    /// records (an object made before default names were injective keeps its collection); else
    /// [`default_collection_name`].
    pub fn milvus_collection(&self) -> String {
        if let Some(name) = &self.spec.collection_name {
            return name.clone();
        }
        if let Some(recorded) = self.status.as_ref().and_then(|s| s.collection_name.clone()) {
            return recorded;
        }
        let namespace = self.metadata.namespace.as_deref().unwrap_or("default");
        let name = self.metadata.name.as_deref().unwrap_or("unnamed");
        default_collection_name(namespace, name)
    }

    /// The spec's fields holding a value this controller does not know: admitted by a newer
    /// CRD than the controller (a controller rolled back, the CRD not). The object cannot be
    /// reconciled as its author meant; every other object still is, because such values are
    /// read as `Unknown` instead of failing the whole list the controller watches.
    pub fn values_not_understood(&self) -> Vec<&'static str> {
        let spec = &self.spec;
        [
            ("spec.model.name", spec.model.name == ModelName::Unknown),
            ("spec.index.type", spec.index.r#type == IndexType::Unknown),
            ("spec.index.metric", spec.index.metric == Metric::Unknown),
            ("spec.search.serviceType", spec.search.service_type == ServiceType::Unknown),
            ("spec.deletionPolicy", spec.deletion_policy == DeletionPolicy::Unknown),
        ]
        .into_iter()
        .filter_map(|(field, unknown)| unknown.then_some(field))
        .collect()
    }
}

/// `imgsearch_<namespace's length>_<namespace>_<name>`, dashes turned into underscores (Milvus
/// allows letters, digits and `_`). Injective: namespaces (DNS labels) and ImageCollection names
/// (the CRD's name rule) hold no `_`, so the dashes' change loses nothing, and the namespace's
/// length says where it ends, which a separator alone cannot (`a-b`/`c` and `a`/`b-c` were both
/// `a_b_c` before). It starts with a letter whatever the namespace (Milvus refuses a leading
/// digit) and fits Milvus's 255 characters: at most 10 + 2 + 1 + 63 + 1 + 44.
pub fn default_collection_name(namespace: &str, name: &str) -> String {
    format!("imgsearch_{}_{namespace}_{name}", namespace.len()).replace(['-', '.'], "_")
}

/// The messages of the schema's CEL rules (`x-kubernetes-validations`), for the tests that check
/// each is refused with its message. The rules themselves are evaluated by the API server and,
/// in the tests by the real kube-apiserver (tests/operator_on_kubernetes.rs) and, offline, by a
/// real CEL engine over the committed CRD (tests/manifests.rs).
pub mod rules {
    pub const ONE_SOURCE: &str = "set exactly one of spec.source.pvc, spec.source.s3 or spec.source.urls";
    pub const ONE_MILVUS: &str = "set exactly one of spec.milvus.uri or spec.milvus.milvusRef";
    pub const MODEL_IMMUTABLE: &str = "spec.model.name is immutable: vectors of different models cannot share a collection; create a new ImageCollection instead";
    pub const COLLECTION_IMMUTABLE: &str =
        "spec.collectionName is immutable: renaming would orphan the existing Milvus collection";
    /// The search Service is `<name>-search`, and a Service's name must be a DNS-1035 label on
    /// Kubernetes before 1.36 (a DNS-1123 label from 1.36 on: RelaxedServiceNameValidation).
    pub const NAME_FORMAT_RULE: &str = "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
    pub const NAME_FORMAT: &str = "metadata.name must start with a lowercase letter and contain only lowercase letters, digits and '-' (not at the end): it names the search Service, which Kubernetes before 1.36 requires to be a DNS-1035 label";
    /// `controller::children::MAX_NAME_LENGTH`, which says where 44 comes from.
    pub const NAME_LENGTH_RULE: &str = "self.metadata.name.size() <= 44";
    pub const NAME_LENGTH: &str = "metadata.name may have at most 44 characters: the rescan CronJob's Job pods are named <name>-rescan-<minutes>-<shard>, which Kubernetes limits to 63";
    pub const SCHEDULE_TIME_ZONE: &str =
        "spec.ingest.schedule may not contain TZ= or CRON_TZ= (Kubernetes refuses them): set spec.ingest.timeZone";
    pub const SCHEDULE_FIELDS: &str = "spec.ingest.schedule needs 5 fields (minute hour day-of-month month day-of-week, e.g. '30 2 * * *') or a descriptor such as @hourly";

    /// Every rule's message, in the order the schema lists them (root, spec, ingest.schedule,
    /// milvus, source).
    pub const ALL: [&str; 8] = [
        NAME_FORMAT,
        NAME_LENGTH,
        MODEL_IMMUTABLE,
        COLLECTION_IMMUTABLE,
        SCHEDULE_TIME_ZONE,
        SCHEDULE_FIELDS,
        ONE_MILVUS,
        ONE_SOURCE,
    ];
}

/// The CRD as YAML, as `imgsearch crd` prints it and `crds/` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&ImageCollection::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_crd_matches_the_code() {
        let committed = include_str!("../crds/imagecollections.imgsearch.io.yaml");
        let generated = crd_yaml().expect("CRD serialises");
        assert!(
            committed == generated,
            "crds/ is stale: run `cargo run -- crd > crds/imagecollections.imgsearch.io.yaml`"
        );
    }

    #[test]
    fn values_of_a_newer_crd_are_read_as_unknown_and_named() {
        let object: ImageCollection = serde_json::from_value(serde_json::json!({
            "apiVersion": "imgsearch.io/v1alpha1", "kind": "ImageCollection",
            "metadata": { "name": "newer", "namespace": "ns" },
            "spec": {
                "milvus": { "uri": "http://milvus:19530" }, "source": { "pvc": { "claimName": "photos" } },
                "model": { "name": "clip-vit-b32" }, "index": { "type": "DISKANN", "metric": "IP" },
                "search": { "serviceType": "ExternalName" }, "deletionPolicy": "Archive"
            },
            "status": { "phase": "Hibernating" }
        }))
        .expect("values of a newer CRD do not fail the object");
        assert_eq!(
            object.values_not_understood(),
            [
                "spec.model.name",
                "spec.index.type",
                "spec.index.metric",
                "spec.search.serviceType",
                "spec.deletionPolicy"
            ]
        );
        assert_ne!(object.spec.deletion_policy, DeletionPolicy::Delete, "a policy not understood drops nothing");
        assert_eq!(object.status.and_then(|s| s.phase), Some(Phase::Unknown));
        let schema = serde_json::to_string(&schemars::schema_for!(ImageCollection)).unwrap();
        assert!(!schema.contains("\"Unknown\""), "Unknown is never a value the schema admits");
    }

    #[test]
    fn a_minimal_object_gets_working_defaults() {
        let object: ImageCollection = serde_yaml::from_str(
            "apiVersion: imgsearch.io/v1alpha1
kind: ImageCollection
metadata: { name: product-photos, namespace: shop }
spec:
  milvus: { uri: 'http://milvus.milvus.svc:19530' }
  source: { pvc: { claimName: catalogue } }
",
        )
        .expect("minimal object parses");
        assert_eq!(object.milvus_collection(), "imgsearch_4_shop_product_photos");
        assert_eq!(object.spec.model.name, ModelName::EfficientNetLite0);
        assert_eq!(object.spec.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(
            (object.spec.ingest.parallelism, object.spec.search.replicas, object.spec.search.port),
            (1, None, 8080)
        );
        assert_eq!(object.spec.source.pvc.as_ref().map(|p| p.path.as_str()), Some("/"));
    }

    /// Every namespace and name of up to 4 characters over letters, digits and `-` (what
    /// Kubernetes and the CRD allow, in miniature): no two pairs share a default collection
    /// name, and each is one Milvus accepts.
    #[test]
    fn default_collection_names_are_injective_and_valid() {
        let labels: Vec<String> = (1..=4)
            .flat_map(|length| {
                (0..3usize.pow(length)).map(move |mut n| {
                    (0..length)
                        .map(|_| {
                            let c = ['a', '1', '-'][n % 3];
                            n /= 3;
                            c
                        })
                        .collect::<String>()
                })
            })
            .filter(|label| !label.starts_with('-') && !label.ends_with('-'))
            .collect();
        let mut seen = std::collections::HashMap::new();
        for namespace in &labels {
            for name in labels.iter().filter(|name| name.starts_with('a')) {
                let collection = default_collection_name(namespace, name);
                crate::store::validate_collection_name(&collection).expect("a valid Milvus name");
                if let Some(other) = seen.insert(collection.clone(), (namespace.clone(), name.clone())) {
                    panic!("{other:?} and {:?} share {collection}", (namespace, name));
                }
            }
        }
        assert!(seen.len() > 1000, "{} pairs checked", seen.len());
        // The pair that used to collide, and a namespace Milvus would have refused.
        assert_ne!(default_collection_name("a-b", "c"), default_collection_name("a", "b-c"));
        assert_eq!(default_collection_name("2024", "photos"), "imgsearch_4_2024_photos");
        let longest = default_collection_name(&"n".repeat(63), &"a".repeat(44));
        assert!(longest.len() <= 255 && crate::store::validate_collection_name(&longest).is_ok());
    }

    #[test]
    fn an_object_keeps_the_collection_its_status_records_and_the_spec_wins_over_both() {
        let mut object = ImageCollection::new(
            "b-c",
            serde_json::from_value(serde_json::json!({
                "milvus": { "uri": "http://m:19530" }, "source": { "pvc": { "claimName": "photos" } }
            }))
            .expect("spec parses"),
        );
        object.metadata.namespace = Some("a".into());
        assert_eq!(object.milvus_collection(), "imgsearch_1_a_b_c");
        // Made by a version whose default was `<namespace>_<name>`.
        object.status = Some(ImageCollectionStatus { collection_name: Some("a_b_c".into()), ..Default::default() });
        assert_eq!(object.milvus_collection(), "a_b_c");
        object.spec.collection_name = Some("chosen".into());
        assert_eq!(object.milvus_collection(), "chosen");
    }

    #[test]
    fn milvus_is_an_address_or_a_milvus_operator_object() {
        let with = |milvus: serde_json::Value| -> ImageCollection {
            let mut ic = ImageCollection::new(
                "products",
                serde_json::from_value(serde_json::json!({
                    "milvus": milvus, "source": { "pvc": { "claimName": "photos" } }
                }))
                .expect("spec parses"),
            );
            ic.metadata.namespace = Some("shop".into());
            ic
        };
        assert_eq!(
            with(serde_json::json!({ "uri": "http://m:19530" })).milvus_uri().as_deref(),
            Some("http://m:19530")
        );
        assert_eq!(
            with(serde_json::json!({ "milvusRef": { "name": "vectors" } })).milvus_uri().as_deref(),
            Some("http://vectors-milvus.shop.svc:19530")
        );
        assert_eq!(
            with(serde_json::json!({ "milvusRef": { "name": "vectors", "namespace": "milvus" } }))
                .milvus_uri()
                .as_deref(),
            Some("http://vectors-milvus.milvus.svc:19530")
        );
        assert_eq!(with(serde_json::json!({})).milvus_uri(), None);
    }

    #[test]
    fn the_schema_carries_the_cel_rules_and_printer_columns() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(ImageCollection::crd()).expect("CRD as JSON");
        let version = &crd["spec"]["versions"][0];
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let rules: Vec<&str> = spec["x-kubernetes-validations"]
            .as_array()
            .expect("spec rules")
            .iter()
            .filter_map(|r| r["rule"].as_str())
            .collect();
        assert!(rules.iter().any(|r| r.contains("oldSelf.model.name")), "{rules:?}");
        let source_rules = &spec["properties"]["source"]["x-kubernetes-validations"];
        assert!(source_rules[0]["rule"].as_str().is_some_and(|r| r.contains("size() == 1")), "{source_rules}");
        let milvus_rules = &spec["properties"]["milvus"]["x-kubernetes-validations"];
        assert_eq!(milvus_rules[0]["rule"], "has(self.uri) != has(self.milvusRef)");
        let columns: Vec<&str> =
            version["additionalPrinterColumns"].as_array().unwrap().iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(columns, ["Phase", "Images", "Failed", "Ready", "Endpoint", "Age"]);
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "imgc");
        assert!(version["subresources"]["status"].is_object());
    }

    /// Every CEL rule in the schema, collected from wherever it sits.
    fn cel_messages(schema: &serde_json::Value, found: &mut Vec<String>) {
        match schema {
            serde_json::Value::Object(map) => {
                for rule in map.get("x-kubernetes-validations").and_then(|r| r.as_array()).into_iter().flatten() {
                    found.push(rule["message"].as_str().unwrap_or_default().to_string());
                }
                map.values().for_each(|v| cel_messages(v, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| cel_messages(v, found)),
            _ => {}
        }
    }

    #[test]
    fn every_cel_rule_in_the_schema_has_its_message_constant() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(ImageCollection::crd()).expect("CRD as JSON");
        let mut messages = Vec::new();
        cel_messages(&crd, &mut messages);
        assert_eq!(messages, rules::ALL, "a CEL rule was added or changed without its message in crd::rules");
    }
}
