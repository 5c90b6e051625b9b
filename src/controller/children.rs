//! Pure builders of the objects an `ImageCollection` owns. No I/O: each takes the object and the
//! controller's settings and returns what should exist, so they are tested as plain data.

use crate::env;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::batch::v1::{
    CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    LocalObjectReference, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{ImageCollection, PvcSource, S3Source, ServiceType};
use crate::store::CollectionOwner;

pub const MANAGER: &str = "imgsearch-controller";
pub const LABEL_COLLECTION: &str = "imgsearch.io/collection";
pub const LABEL_GENERATION: &str = "imgsearch.io/generation";
const IMAGES_MOUNT: &str = "/images";
const SCRATCH_MOUNT: &str = "/var/lib/imgsearch";
/// The key of a catalog Secret that holds the catalog's URL (the variable's own name).
pub const CATALOG_SECRET_KEY: &str = env::DATABASE_URL;

/// Seconds a search pod keeps serving after SIGTERM (see `IMGSEARCH_SHUTDOWN_DRAIN_SECONDS`).
const SEARCH_DRAIN_SECONDS: u64 = 5;

/// Settings of the controller itself that shape every child.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildConfig {
    /// Container image running `imgsearch` (the same binary in every role).
    pub image: String,
    pub image_pull_policy: Option<String>,
}

/// Why an object cannot be turned into children (the schema should have caught it; a client
/// that bypassed validation still gets a clear condition rather than a panic).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("ImageCollection has no {0}; it must be stored in the API server before it is reconciled")]
    MissingMetadata(&'static str),
    #[error("spec.source: {0}")]
    UnsupportedSource(&'static str),
    #[error("spec.model.name: {0}")]
    UnknownModel(String),
    #[error("spec.milvus: set uri or milvusRef")]
    NoMilvus,
    #[error("spec.ingest.schedule: {0}")]
    InvalidSchedule(String),
    #[error("{0}")]
    InvalidName(String),
    #[error(
        "{} hold values this controller does not know: it is older than the CRD that admitted them; run the \
         imgsearch version that installed the CRD, or change the values",
        .0.join(", ")
    )]
    NotUnderstood(Vec<&'static str>),
}

fn name_and_namespace(ic: &ImageCollection) -> Result<(String, String), BuildError> {
    let name = ic.metadata.name.clone().ok_or(BuildError::MissingMetadata("metadata.name"))?;
    let namespace = ic.metadata.namespace.clone().ok_or(BuildError::MissingMetadata("metadata.namespace"))?;
    // The CRD refuses such names; an object stored before that rule still gets a clear reason.
    if let Some(problem) = name_problem(&name) {
        return Err(BuildError::InvalidName(problem));
    }
    understood(ic)?;
    Ok((name, namespace))
}

/// Refuses a spec with values this controller does not know (a newer CRD's).
pub fn understood(ic: &ImageCollection) -> Result<(), BuildError> {
    let fields = ic.values_not_understood();
    if fields.is_empty() { Ok(()) } else { Err(BuildError::NotUnderstood(fields)) }
}

fn owner(ic: &ImageCollection) -> Result<OwnerReference, BuildError> {
    ic.controller_owner_ref(&()).ok_or(BuildError::MissingMetadata("metadata.uid"))
}

fn image_pull_secrets(ic: &ImageCollection) -> Option<Vec<LocalObjectReference>> {
    let secrets = &ic.spec.image_pull_secrets;
    (!secrets.is_empty()).then(|| secrets.iter().map(|s| LocalObjectReference { name: s.name.clone() }).collect())
}

fn labels(instance: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "imgsearch".to_string()),
        ("app.kubernetes.io/instance".to_string(), instance.to_string()),
        ("app.kubernetes.io/component".to_string(), component.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string()),
        (LABEL_COLLECTION.to_string(), instance.to_string()),
    ])
}

/// Labels that pick the search pods: stable across spec changes, unlike the full label set.
/// The collection is named by imgsearch's own label, not `app.kubernetes.io/instance`, which
/// Helm and others set on their pods too: a Helm release of the collection's name with a
/// `search` component would otherwise have its pods behind this Service. A Deployment's
/// selector cannot change; one made with the earlier selector (instance and component) is
/// replaced by the controller, its pods kept (see `reconcile::replace_if_reselected`).
pub fn search_selector(instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_COLLECTION.to_string(), instance.to_string()),
        ("app.kubernetes.io/component".to_string(), "search".to_string()),
    ])
}

/// The longest `metadata.name` whose children are all valid Kubernetes objects at every shard
/// count the schema allows (the CRD refuses longer names; `crd::rules::NAME_LENGTH`):
/// - the search Service `<name>-search` must be a DNS-1035 label (≤ 63) before Kubernetes 1.36
///   (RelaxedServiceNameValidation: a DNS-1123 label from 1.36 on);
/// - the rescan CronJob `<name>-rescan` may have at most 52 characters (its Jobs add 11);
/// - the Jobs it starts, `<name>-rescan-<minutes since 1970>` (8 digits until 2160), are Indexed:
///   their pods' hostnames `<job>-<index>` (index ≤ 63) must be DNS-1123 labels (≤ 63), so
///   44 + 7 + 9 + 3 = 63.
///
/// The generation Jobs' names grow with `metadata.generation`; [`ingest_job_name`] keeps them
/// valid for every generation.
pub const MAX_NAME_LENGTH: usize = 44;
/// A DNS-1123 / DNS-1035 label's limit: Service names, pod hostnames, label values.
const DNS_LABEL_MAX: usize = 63;

/// Why `name` cannot name an ImageCollection's children, if it cannot: the rule the CRD's CEL
/// enforces at admission, checked again for objects stored before it existed.
pub fn name_problem(name: &str) -> Option<String> {
    let dns_1035 = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.ends_with('-');
    if !dns_1035 {
        return Some(format!(
            "metadata.name {name:?} must start with a lowercase letter and contain only lowercase letters, digits \
             and '-' (not ending in '-'): it names the search Service, which Kubernetes before 1.36 requires \
             to be a DNS-1035 label"
        ));
    }
    (name.len() > MAX_NAME_LENGTH).then(|| {
        format!(
            "metadata.name {name:?} has {} characters; at most {MAX_NAME_LENGTH} fit the names Kubernetes \
             derives from it (the rescan CronJob's Job pods <name>-rescan-<time>-<shard> must be at most 63)",
            name.len()
        )
    })
}

/// The name of this generation's ingest Job: `<name>-ingest-g<generation>`. The Job controller
/// names each pod's hostname `<job>-<index>`, which must be a DNS-1123 label; should a
/// generation ever grow too long for that (beyond 10 million changes), the collection's name is
/// cut and a hash of the full name keeps Jobs of different collections apart.
pub fn ingest_job_name(ic: &ImageCollection) -> Result<String, BuildError> {
    let (name, _) = name_and_namespace(ic)?;
    let suffix = format!("-ingest-g{}", ic.metadata.generation.unwrap_or(0));
    let highest_index = ic.spec.ingest.parallelism.max(1) - 1;
    Ok(indexed_job_name(&name, &suffix, highest_index))
}

/// `<name><suffix>`, shortened if needed so that `<job>-<highest_index>` is at most 63.
fn indexed_job_name(name: &str, suffix: &str, highest_index: i32) -> String {
    let room = DNS_LABEL_MAX - 1 - highest_index.to_string().len();
    let full = format!("{name}{suffix}");
    if full.len() <= room {
        return full;
    }
    let hash = format!("{:08x}", fnv1a(full.as_bytes()) as u32);
    let keep = room.saturating_sub(suffix.len() + 1 + hash.len()).min(name.len());
    // Names are ASCII (the CRD's rule), so any byte index is a character boundary.
    let head = name.get(..keep).unwrap_or_default().trim_end_matches('-');
    if head.is_empty() { format!("{hash}{suffix}") } else { format!("{head}-{hash}{suffix}") }
}

/// FNV-1a, 64 bit: a stable hash (std's is randomised per process) for shortened names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// The owner recorded in the Milvus collection's properties: this object's namespace and name
/// (what ownership goes by), and its uid.
pub fn collection_owner(ic: &ImageCollection) -> CollectionOwner {
    let namespace = ic.metadata.namespace.as_deref().unwrap_or("default");
    CollectionOwner { object: format!("{namespace}/{}", ic.name_any()), uid: ic.metadata.uid.clone() }
}

pub fn search_name(name: &str) -> String {
    format!("{name}-search")
}

/// Environment both roles share: where Milvus and the catalog are, which collection and model.
fn common_env(ic: &ImageCollection) -> Result<Vec<EnvVar>, BuildError> {
    let uri = ic.milvus_uri().ok_or(BuildError::NoMilvus)?;
    let mut env = vec![
        plain(env::MILVUS_URI, &uri),
        plain(env::COLLECTION, &ic.milvus_collection()),
        plain(env::MODEL, ic.spec.model.name.as_str()),
        plain(env::MODEL_DIR, "/usr/share/imgsearch/model"),
        plain(env::RUST_LOG, "info"),
    ];
    if let Some(database) = &ic.spec.milvus.database {
        env.push(plain(env::MILVUS_DATABASE, database));
    }
    if let Some(secret) = &ic.spec.milvus.secret_ref {
        // The Secret holds `token`, or `username` and `password`: each is passed if present.
        for (variable, key) in
            [(env::MILVUS_TOKEN, "token"), (env::MILVUS_USERNAME, "username"), (env::MILVUS_PASSWORD, "password")]
        {
            env.push(from_secret(variable, &secret.name, key, true));
        }
    }
    match &ic.spec.catalog {
        Some(catalog) => env.push(from_secret(env::DATABASE_URL, &catalog.secret_ref.name, CATALOG_SECRET_KEY, false)),
        // No SQL catalog: Milvus's rows are the record, shared by every pod (catalog/milvus.rs).
        None => env.push(plain(env::DATABASE_URL, crate::catalog::NO_DATABASE)),
    }
    Ok(env)
}

fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

fn from_secret(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: Some(optional) }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Non-root, read-only root filesystem, no capabilities, default seccomp: the restricted Pod
/// Security Standard, which every child meets.
fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
        ..SecurityContext::default()
    }
}

/// Non-root without naming a user: the image runs as 65532 (a numeric USER, which is what
/// `runAsNonRoot` checks), and a platform that assigns its own IDs (OpenShift's restricted SCC
/// picks a UID and fsGroup from the namespace's range, and refuses pods that pin others) can.
fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
        ..PodSecurityContext::default()
    }
}

fn scratch_volume() -> (Volume, VolumeMount) {
    (
        Volume { name: "scratch".into(), empty_dir: Some(Default::default()), ..Volume::default() },
        VolumeMount { name: "scratch".into(), mount_path: SCRATCH_MOUNT.into(), ..VolumeMount::default() },
    )
}

/// The source's claim, mounted read-only at `/images`.
fn source_volume(pvc: &PvcSource) -> (Volume, VolumeMount) {
    (
        Volume {
            name: "images".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "images".into(),
            mount_path: IMAGES_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// Where a URL-list source's ConfigMap key is mounted in ingest pods, as `URL_LIST_FILE_NAME`.
const URL_LIST_DIR: &str = "/etc/imgsearch/source";
const URL_LIST_FILE_NAME: &str = "urls.txt";

/// A bucket source's location (`s3://bucket/prefix`) and the environment that reaches it, for
/// the ingest pods that read it and the search pods that serve its images.
fn s3_access(s3: &S3Source) -> (String, Vec<EnvVar>) {
    let mut env = Vec::new();
    if let Some(endpoint) = &s3.endpoint {
        env.push(plain(env::S3_ENDPOINT, endpoint));
    }
    if let Some(region) = &s3.region {
        env.push(plain(env::AWS_REGION, region));
    }
    // Without a Secret, credentials come from the pod's identity (e.g. IRSA on EKS).
    if let Some(secret) = &s3.secret_ref {
        env.push(from_secret(env::AWS_ACCESS_KEY_ID, &secret.name, env::AWS_ACCESS_KEY_ID, false));
        env.push(from_secret(env::AWS_SECRET_ACCESS_KEY, &secret.name, env::AWS_SECRET_ACCESS_KEY, false));
        env.push(from_secret(env::AWS_SESSION_TOKEN, &secret.name, env::AWS_SESSION_TOKEN, true));
    }
    (format!("s3://{}/{}", s3.bucket, s3.prefix.trim_matches('/')), env)
}

/// How an ingest pod reaches the source: the `imgsearch ingest` arguments naming it, and the
/// environment and volumes that go with them.
struct IngestSource {
    args: Vec<String>,
    env: Vec<EnvVar>,
    volumes: Vec<(Volume, VolumeMount)>,
}

fn ingest_source(ic: &ImageCollection) -> Result<IngestSource, BuildError> {
    let source = &ic.spec.source;
    if let Some(pvc) = &source.pvc {
        let folder = format!("{IMAGES_MOUNT}{}", pvc.path.trim_end_matches('/'));
        return Ok(IngestSource { args: vec![folder], env: Vec::new(), volumes: vec![source_volume(pvc)] });
    }
    if let Some(s3) = &source.s3 {
        let (location, env) = s3_access(s3);
        return Ok(IngestSource { args: vec![location], env, volumes: Vec::new() });
    }
    if let Some(urls) = &source.urls {
        let reference = &urls.config_map_ref;
        let volume = Volume {
            name: "url-list".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: reference.name.clone(),
                items: Some(vec![KeyToPath {
                    key: reference.key.clone(),
                    path: URL_LIST_FILE_NAME.into(),
                    ..KeyToPath::default()
                }]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        };
        let mount = VolumeMount {
            name: "url-list".into(),
            mount_path: URL_LIST_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        };
        let mut env = Vec::new();
        if !urls.allow_private_networks.is_empty() {
            env.push(plain(env::ALLOW_PRIVATE_NETWORKS, &urls.allow_private_networks.join(",")));
        }
        return Ok(IngestSource {
            args: vec!["--url-list".into(), format!("{URL_LIST_DIR}/{URL_LIST_FILE_NAME}")],
            env,
            volumes: vec![(volume, mount)],
        });
    }
    Err(BuildError::UnsupportedSource("set one of spec.source.pvc, s3 or urls"))
}

/// Requests and limits of CPU and memory, `(cpu, memory)` each: a namespace whose ResourceQuota
/// covers requests or limits refuses pods that name neither (the Job or ReplicaSet controller
/// then only records `FailedCreate`).
fn default_resources(requests: (&str, &str), limits: (&str, &str)) -> ResourceRequirements {
    let pair = |(cpu, memory): (&str, &str)| {
        BTreeMap::from([("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(memory.into()))])
    };
    ResourceRequirements {
        requests: Some(pair(requests)),
        limits: Some(pair(limits)),
        ..ResourceRequirements::default()
    }
}

/// Where Kubernetes reads a container's termination message from (its default path).
pub const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
pub const INGEST_CONTAINER: &str = "ingest";

/// Labels of ingest Jobs (and their pods): the collection, the role and the spec generation.
fn ingest_labels(ic: &ImageCollection) -> Result<BTreeMap<String, String>, BuildError> {
    let (name, _) = name_and_namespace(ic)?;
    let mut job_labels = labels(&name, "ingest");
    job_labels.insert(LABEL_GENERATION.into(), ic.metadata.generation.unwrap_or(0).to_string());
    Ok(job_labels)
}

/// What every ingest Job runs, whether created per generation or by the rescan CronJob: an
/// Indexed Job, one pod per shard, `parallelism` shards.
fn ingest_job_spec(ic: &ImageCollection, config: &ChildConfig) -> Result<JobSpec, BuildError> {
    let source = ingest_source(ic)?;
    let shards = ic.spec.ingest.parallelism.max(1);
    let mut env = common_env(ic)?;
    env.extend(source.env);
    env.push(plain(env::BATCH_SIZE, &ic.spec.ingest.batch_size.to_string()));
    // Kubernetes sets JOB_COMPLETION_INDEX in each pod; the shard count is the completion count.
    env.push(plain(env::SHARD_COUNT, &shards.to_string()));
    env.push(plain(env::PRUNE, if ic.spec.ingest.prune { "true" } else { "false" }));
    // The run's counts go to the termination message, where the controller reads them back.
    env.push(plain(env::SUMMARY_FILE, TERMINATION_MESSAGE_PATH));
    // The Milvus collection must be this object's before the run writes or prunes anything.
    env.push(plain(env::COLLECTION_OWNER, &collection_owner(ic).object));
    let (volumes, mounts): (Vec<Volume>, Vec<VolumeMount>) =
        source.volumes.into_iter().chain([scratch_volume()]).unzip();

    let container = Container {
        name: INGEST_CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(["ingest".to_string()].into_iter().chain(source.args).collect()),
        env: Some(env),
        resources: Some(
            ic.spec.ingest.resources.clone().unwrap_or_else(|| default_resources(("1", "1Gi"), ("2", "2Gi"))),
        ),
        security_context: Some(restricted_container_security()),
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.into()),
        // A crash leaves no summary: then the log's tail explains the failure instead.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    Ok(JobSpec {
        completion_mode: Some("Indexed".into()),
        completions: Some(shards),
        parallelism: Some(shards),
        // A bad image never fails a pod; a pod fails only when Milvus, the catalog or the
        // source does, and each shard is retried `spec.ingest.backoffLimit` times on its own:
        // one shared limit let one bad shard (or evictions anywhere) spend every shard's
        // retries. The other shards finish their share either way.
        backoff_limit_per_index: Some(ic.spec.ingest.backoff_limit.max(0)),
        pod_failure_policy: Some(ingest_pod_failure_policy()),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta { labels: Some(ingest_labels(ic)?), ..ObjectMeta::default() }),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                automount_service_account_token: Some(false),
                image_pull_secrets: image_pull_secrets(ic),
                security_context: Some(restricted_pod_security()),
                containers: vec![container],
                volumes: Some(volumes),
                ..PodSpec::default()
            }),
        },
        ..JobSpec::default()
    })
}

/// What a failed ingest pod means: a disruption (eviction, preemption, node drain: the pod
/// gets the `DisruptionTarget` condition) is no failure of the ingest and is retried without
/// counting; an exit with [`crate::ingest::EXIT_MISCONFIGURED`] fails its shard at once, since
/// a retry would meet the same spec. Anything else counts against the shard's retries.
fn ingest_pod_failure_policy() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: Some("True".into()),
                }]),
                ..PodFailurePolicyRule::default()
            },
            PodFailurePolicyRule {
                action: "FailIndex".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(INGEST_CONTAINER.into()),
                    operator: "In".into(),
                    values: vec![i32::from(crate::ingest::EXIT_MISCONFIGURED)],
                }),
                ..PodFailurePolicyRule::default()
            },
        ],
    }
}

/// The Job that ingests the source once for the current spec generation.
pub fn ingest_job(ic: &ImageCollection, config: &ChildConfig) -> Result<Job, BuildError> {
    let (_, namespace) = name_and_namespace(ic)?;
    let spec = ingest_job_spec(ic, config)?;
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(ingest_job_name(ic)?),
            namespace: Some(namespace),
            labels: Some(ingest_labels(ic)?),
            annotations: Some(
                [
                    (ANNOTATION_INGEST_SPEC.to_string(), Some(ingest_spec_digest(&spec))),
                    (ANNOTATION_RETRY_INGEST.to_string(), retry_token(ic)),
                ]
                .into_iter()
                .filter_map(|(key, value)| Some((key, value?)))
                .collect(),
            ),
            owner_references: Some(vec![owner(ic)?]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        ..Job::default()
    })
}

/// On an ImageCollection: set (or change) its value to run a failed ingest again without
/// editing the spec (`kubectl annotate imgc NAME imgsearch.io/retry-ingest=$(date +%s)
/// --overwrite`). The ingest Job records the value it was made for, so one value retries once.
pub const ANNOTATION_RETRY_INGEST: &str = "imgsearch.io/retry-ingest";

/// The collection's retry token, if any.
pub fn retry_token(ic: &ImageCollection) -> Option<String> {
    ic.metadata.annotations.as_ref()?.get(ANNOTATION_RETRY_INGEST).cloned()
}

/// On an ingest Job: a digest of what it runs. A spec edit that leaves it unchanged (search
/// replicas, the deletion policy, the schedule) needs no new ingest.
pub const ANNOTATION_INGEST_SPEC: &str = "imgsearch.io/ingest-spec";

/// The digest of an ingest Job's spec without its pod labels (they carry the generation),
/// the first 16 hex digits of a SHA-256 of its JSON.
fn ingest_spec_digest(spec: &JobSpec) -> String {
    use sha2::{Digest, Sha256};
    let mut spec = spec.clone();
    spec.template.metadata = None;
    // Serialising a k8s-openapi struct cannot fail (no maps with non-string keys).
    let json = serde_json::to_vec(&spec).unwrap_or_default();
    hex::encode(Sha256::digest(&json))[..16].to_string()
}

pub fn rescan_cronjob_name(name: &str) -> String {
    format!("{name}-rescan")
}

/// The CronJob that rescans the source on `spec.ingest.schedule`; `None` without a schedule.
/// Rescans are incremental (unchanged images are skipped), and never overlap.
pub fn rescan_cronjob(ic: &ImageCollection, config: &ChildConfig) -> Result<Option<CronJob>, BuildError> {
    let Some(schedule) = &ic.spec.ingest.schedule else { return Ok(None) };
    if let Some(problem) = super::schedule::schedule_problem(schedule) {
        return Err(BuildError::InvalidSchedule(problem));
    }
    let (name, namespace) = name_and_namespace(ic)?;
    let history = ic.spec.ingest.history_limit.max(0);
    Ok(Some(CronJob {
        metadata: ObjectMeta {
            name: Some(rescan_cronjob_name(&name)),
            namespace: Some(namespace),
            labels: Some(labels(&name, "rescan")),
            owner_references: Some(vec![owner(ic)?]),
            ..ObjectMeta::default()
        },
        spec: CronJobSpec {
            schedule: schedule.trim().to_string(),
            time_zone: ic.spec.ingest.time_zone.clone(),
            concurrency_policy: Some("Forbid".into()),
            suspend: Some(ic.spec.suspend),
            successful_jobs_history_limit: Some(history),
            failed_jobs_history_limit: Some(history.max(1)),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(ingest_labels(ic)?), ..ObjectMeta::default() }),
                spec: Some(ingest_job_spec(ic, config)?),
            },
            ..CronJobSpec::default()
        },
        ..CronJob::default()
    }))
}

/// Name, labels and owner shared by the search Deployment and Service.
fn search_metadata(ic: &ImageCollection, name: &str, namespace: String) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(search_name(name)),
        namespace: Some(namespace),
        labels: Some(labels(name, "search")),
        owner_references: Some(vec![owner(ic)?]),
        ..ObjectMeta::default()
    })
}

/// The search API Deployment. Its pods need no Kubernetes API access at all.
pub fn search_deployment(ic: &ImageCollection, config: &ChildConfig) -> Result<Deployment, BuildError> {
    let (name, namespace) = name_and_namespace(ic)?;
    let port = ic.spec.search.port;
    let mut env = common_env(ic)?;
    env.push(plain(env::LISTEN, &format!("0.0.0.0:{port}")));
    // Kubernetes takes a terminating pod out of the Service's endpoints while it signals it, and
    // proxies learn of it a moment later: the server keeps answering (readiness failing) for
    // this long after SIGTERM before it stops accepting. In-process, so no shell or newer
    // kubelet (a preStop sleep) is needed; well inside the default 30 s grace period.
    env.push(plain(env::SHUTDOWN_DRAIN_SECONDS, &SEARCH_DRAIN_SECONDS.to_string()));
    env.push(plain(env::UPLOAD_DIR, &format!("{SCRATCH_MOUNT}/uploads")));
    // Result images of a bucket source are read from the bucket, with the ingest Jobs' settings.
    if let Some(s3) = &ic.spec.source.s3 {
        let (location, access) = s3_access(s3);
        env.extend(access);
        env.push(plain(env::IMAGE_BUCKET, &location));
    }
    // Write routes need the Secret's `token`; the pod does not start without it (not optional),
    // rather than serve unprotected.
    if let Some(auth) = &ic.spec.search.auth {
        env.push(from_secret(env::AUTH_TOKEN, &auth.secret_ref.name, "token", false));
    }
    // The server listens at once and answers /healthz while it loads the model and waits for
    // Milvus (it starts unready rather than crash: api/starting.rs). The startup probe still
    // gives a start 3 minutes before liveness counts, and every probe 5 s to answer, not the
    // default 1 s, which a search pod busy embedding on its CPU limit can miss.
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let (scratch, scratch_mount) = scratch_volume();
    let mut volumes = vec![scratch];
    let mut volume_mounts = vec![scratch_mount];
    // The same claim at the same path as in the ingest pods, read-only: the paths the catalog
    // recorded are the files the search API serves as result images.
    if let Some((volume, mount)) = ic.spec.source.pvc.as_ref().map(source_volume) {
        volumes.push(volume);
        volume_mounts.push(mount);
    }
    let container = Container {
        name: "search".into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(vec!["serve".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: port,
            ..ContainerPort::default()
        }]),
        startup_probe: Some(probe("/healthz", 2, 90)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        resources: Some(
            ic.spec.search.resources.clone().unwrap_or_else(|| default_resources(("250m", "512Mi"), ("2", "1Gi"))),
        ),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    };
    let mut pod_labels = labels(&name, "search");
    pod_labels.extend(search_selector(&name));
    Ok(Deployment {
        metadata: search_metadata(ic, &name, namespace)?,
        spec: DeploymentSpec {
            // Unset in the spec, unset here: under server-side apply the field then belongs to
            // whoever scales the Deployment, and this apply never resets it.
            replicas: ic.spec.search.replicas,
            progress_deadline_seconds: ic.spec.search.progress_deadline_seconds,
            selector: LabelSelector { match_labels: Some(search_selector(&name)), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    image_pull_secrets: image_pull_secrets(ic),
                    security_context: Some(restricted_pod_security()),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    })
}

/// The Service in front of the search pods.
pub fn search_service(ic: &ImageCollection) -> Result<Service, BuildError> {
    let (name, namespace) = name_and_namespace(ic)?;
    let service_type = match ic.spec.search.service_type {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
        ServiceType::Unknown => return Err(BuildError::NotUnderstood(vec!["spec.search.serviceType"])),
    };
    Ok(Service {
        metadata: search_metadata(ic, &name, namespace)?,
        spec: Some(ServiceSpec {
            type_: Some(service_type.into()),
            selector: Some(search_selector(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: ic.spec.search.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The in-cluster URL users and `status.searchEndpoint` point at.
pub fn search_endpoint(ic: &ImageCollection) -> Result<String, BuildError> {
    let (name, namespace) = name_and_namespace(ic)?;
    Ok(format!("http://{}.{namespace}.svc:{}", search_name(&name), ic.spec.search.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collection(yaml_spec: &str) -> ImageCollection {
        let mut ic: ImageCollection = serde_yaml::from_str(&format!(
            "apiVersion: imgsearch.io/v1alpha1\nkind: ImageCollection\nmetadata: {{ name: products, namespace: shop, uid: 1234-abcd, generation: 3 }}\nspec:\n{yaml_spec}"
        ))
        .expect("test object parses");
        ic.metadata.generation = Some(3);
        ic
    }

    fn pvc_collection() -> ImageCollection {
        collection(
            "  milvus: { uri: 'http://milvus.milvus.svc:19530', secretRef: { name: milvus-auth } }
  source: { pvc: { claimName: catalogue, path: /images/2024/ } }
  ingest: { parallelism: 4, batchSize: 16 }
  search: { replicas: 2, port: 9000 }
  catalog: { secretRef: { name: catalog-dsn } }
",
        )
    }

    fn config() -> ChildConfig {
        ChildConfig { image: "ghcr.io/imgsearch/imgsearch:0.1.0".into(), image_pull_policy: None }
    }

    fn env(container: &Container) -> BTreeMap<String, String> {
        container
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| {
                let value = match (&e.value, &e.value_from) {
                    (Some(v), _) => v.clone(),
                    (None, Some(from)) => {
                        let secret = from.secret_key_ref.as_ref().unwrap();
                        format!("secret:{}/{}", secret.name, secret.key)
                    }
                    _ => String::new(),
                };
                (e.name.clone(), value)
            })
            .collect()
    }

    #[test]
    fn ingest_job_is_an_indexed_job_with_one_shard_per_pod_owned_by_the_collection() {
        let job = ingest_job(&pvc_collection(), &config()).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("products-ingest-g3"));
        assert_eq!(job.metadata.labels.as_ref().unwrap()[LABEL_GENERATION], "3");
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("ImageCollection", "products", Some(true))
        );
        let spec = job.spec.unwrap();
        assert_eq!(
            (spec.completion_mode.as_deref(), spec.completions, spec.parallelism),
            (Some("Indexed"), Some(4), Some(4))
        );
        let pod = spec.template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.args.as_ref().unwrap(), &["ingest", "/images/images/2024"]);
        let env = env(container);
        // The summary goes where Kubernetes picks up termination messages; a crash falls back to logs.
        assert_eq!(env["IMGSEARCH_SUMMARY_FILE"], "/dev/termination-log");
        assert_eq!(env["IMGSEARCH_COLLECTION_OWNER"], "shop/products");
        assert_eq!(container.termination_message_path.as_deref(), Some("/dev/termination-log"));
        assert_eq!(container.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
        assert_eq!(env["MILVUS_URI"], "http://milvus.milvus.svc:19530");
        assert_eq!(env["MILVUS_TOKEN"], "secret:milvus-auth/token");
        assert_eq!(env["MILVUS_USERNAME"], "secret:milvus-auth/username");
        assert_eq!(env["MILVUS_PASSWORD"], "secret:milvus-auth/password");
        assert_eq!(env["DATABASE_URL"], "secret:catalog-dsn/DATABASE_URL");
        assert_eq!(env["IMGSEARCH_COLLECTION"], "imgsearch_4_shop_products");
        assert_eq!((env["IMGSEARCH_BATCH_SIZE"].as_str(), env["IMGSEARCH_SHARD_COUNT"].as_str()), ("16", "4"));
        assert_eq!(env["IMGSEARCH_PRUNE"], "true", "by default the collection mirrors its folder");
        let volume = &pod.volumes.as_ref().unwrap()[0];
        assert_eq!(
            volume.persistent_volume_claim.as_ref().map(|p| (p.claim_name.as_str(), p.read_only)),
            Some(("catalogue", Some(true)))
        );
    }

    #[test]
    fn the_ingest_jobs_retries_are_the_specs_backoff_limit_per_shard_six_by_default() {
        let backoff = |ic: &ImageCollection| ingest_job(ic, &config()).unwrap().spec.unwrap().backoff_limit_per_index;
        let mut ic = pvc_collection();
        assert_eq!(backoff(&ic), Some(6), "Kubernetes' own default for a Job");
        ic.spec.ingest.backoff_limit = 1;
        assert_eq!(backoff(&ic), Some(1));
        ic.spec.ingest.backoff_limit = 0;
        assert_eq!(backoff(&ic), Some(0), "0: a failed pod fails the Job");
    }

    #[test]
    fn a_schedule_adds_a_non_overlapping_rescan_cronjob_running_the_same_ingest() {
        assert_eq!(rescan_cronjob(&pvc_collection(), &config()).unwrap(), None, "no schedule, no CronJob");
        let mut ic = pvc_collection();
        ic.spec.ingest.schedule = Some("0 * * * *".into());
        ic.spec.ingest.history_limit = 2;
        let cronjob = rescan_cronjob(&ic, &config()).unwrap().expect("a CronJob");
        assert_eq!(cronjob.metadata.name.as_deref(), Some("products-rescan"));
        assert_eq!(cronjob.metadata.owner_references.as_ref().unwrap()[0].name, "products");
        let spec = cronjob.spec;
        assert_eq!(spec.schedule, "0 * * * *");
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!((spec.successful_jobs_history_limit, spec.failed_jobs_history_limit), (Some(2), Some(2)));
        assert_eq!(spec.suspend, Some(false));
        // The rescan's Jobs carry the collection label (the controller finds them) and run the
        // very same pod as the per-generation Job.
        let template = spec.job_template;
        assert_eq!(template.metadata.unwrap().labels.unwrap()[LABEL_COLLECTION], "products");
        assert_eq!(template.spec, ingest_job(&ic, &config()).unwrap().spec);

        ic.spec.suspend = true;
        let suspended = rescan_cronjob(&ic, &config()).unwrap().and_then(|c| c.spec.suspend);
        assert_eq!(suspended, Some(true), "suspend pauses rescans too");
    }

    #[test]
    fn a_milvus_operator_reference_becomes_its_service_address_with_the_database() {
        let ic = collection(
            "  milvus: { milvusRef: { name: vectors, namespace: milvus }, database: shop }
  source: { pvc: { claimName: catalogue } }
",
        );
        let deployment = search_deployment(&ic, &config()).unwrap();
        let env = env(&deployment.spec.template.spec.unwrap().containers[0]);
        assert_eq!(env["MILVUS_URI"], "http://vectors-milvus.milvus.svc:19530");
        assert_eq!(env["MILVUS_DATABASE"], "shop");
        assert!(!env.contains_key("MILVUS_TOKEN"), "no Secret, no token");
    }

    #[test]
    fn every_pod_meets_the_restricted_pod_security_standard() {
        let ic = pvc_collection();
        let job_pod = ingest_job(&ic, &config()).unwrap().spec.unwrap().template.spec.unwrap();
        let search_pod = search_deployment(&ic, &config()).unwrap().spec.template.spec.unwrap();
        for pod in [job_pod, search_pod] {
            assert_eq!(pod.automount_service_account_token, Some(false));
            let security = pod.security_context.as_ref();
            assert_eq!(security.and_then(|s| s.run_as_non_root), Some(true));
            let ids = security.map(|s| (s.run_as_user, s.run_as_group, s.fs_group));
            assert_eq!(ids, Some((None, None, None)), "IDs are the image's or the platform's to assign");
            for container in &pod.containers {
                let security = container.security_context.as_ref().unwrap();
                assert_eq!(security.allow_privilege_escalation, Some(false));
                assert_eq!(security.read_only_root_filesystem, Some(true));
                assert_eq!(security.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
                assert_eq!(security.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
            }
        }
    }

    #[test]
    fn search_deployment_and_service_agree_on_selector_and_port() {
        let ic = pvc_collection();
        let deployment = search_deployment(&ic, &config()).unwrap();
        let service = search_service(&ic).unwrap();
        let deployment_spec = deployment.spec;
        let selector = deployment_spec.selector.match_labels.unwrap();
        let pod_labels = deployment_spec.template.metadata.unwrap().labels.unwrap();
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "selector must match the pod labels");
        let service_spec = service.spec.unwrap();
        assert_eq!(service_spec.selector.unwrap(), selector);
        assert_eq!(deployment_spec.replicas, Some(2));
        let pod = deployment_spec.template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 9000);
        // Result images are served from the source claim, mounted where ingest saw it, read-only.
        let images = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "images").expect("images volume");
        assert_eq!(images.persistent_volume_claim.as_ref().map(|p| p.claim_name.as_str()), Some("catalogue"));
        let mount = container.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "images").unwrap();
        assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/images", Some(true)));
        assert_eq!(env(container)["IMGSEARCH_LISTEN"], "0.0.0.0:9000");
        assert_eq!(
            container.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(),
            Some("/readyz")
        );
        // A slow start (the model loading, Milvus not answering yet) is not killed: liveness
        // counts only after the startup probe passed, within 3 minutes.
        let startup = container.startup_probe.as_ref().expect("a startup probe");
        assert_eq!(startup.http_get.as_ref().and_then(|h| h.path.as_deref()), Some("/healthz"));
        assert!(startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3) >= 180);
        assert_eq!(container.liveness_probe.as_ref().and_then(|p| p.timeout_seconds), Some(5));
        assert_eq!(service_spec.ports.unwrap()[0].port, 9000);
        assert_eq!(env(container)["IMGSEARCH_SHUTDOWN_DRAIN_SECONDS"], "5", "drains before it stops accepting");
        assert_eq!(search_endpoint(&ic).unwrap(), "http://products-search.shop.svc:9000");
    }

    #[test]
    fn search_auth_passes_the_secrets_token_to_the_search_pods_only() {
        let ic = collection(
            "  milvus: { uri: 'http://m:19530' }\n  source: { pvc: { claimName: c } }\n  search: { auth: { secretRef: { name: search-token } } }\n",
        );
        let deployment = search_deployment(&ic, &config()).unwrap();
        let container = &deployment.spec.template.spec.unwrap().containers[0];
        assert_eq!(env(container)["IMGSEARCH_AUTH_TOKEN"], "secret:search-token/token");
        let token = container.env.iter().flatten().find(|e| e.name == "IMGSEARCH_AUTH_TOKEN").unwrap();
        let selector = token.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).unwrap();
        assert_eq!(selector.optional, Some(false), "no token, no pod: never serve unprotected by accident");
        let job = ingest_job(&ic, &config()).unwrap();
        let ingest = &job.spec.unwrap().template.spec.unwrap().containers[0];
        assert!(!env(ingest).contains_key("IMGSEARCH_AUTH_TOKEN"));
        let open = collection("  milvus: { uri: 'http://m:19530' }\n  source: { pvc: { claimName: c } }\n");
        let deployment = search_deployment(&open, &config()).unwrap();
        assert!(!env(&deployment.spec.template.spec.unwrap().containers[0]).contains_key("IMGSEARCH_AUTH_TOKEN"));
    }

    #[test]
    fn without_a_catalog_secret_milvus_is_the_record() {
        let ic = collection("  milvus: { uri: 'http://m:19530' }\n  source: { pvc: { claimName: c } }\n");
        let job = ingest_job(&ic, &config()).unwrap();
        let container = &job.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(env(container)["DATABASE_URL"], "none");
        assert!(!env(container).contains_key("MILVUS_TOKEN"));
    }

    #[test]
    fn bucket_sources_pass_the_location_endpoint_and_credentials_without_volumes() {
        let ic = collection(
            "  milvus: { uri: 'http://m:19530' }
  source: { s3: { bucket: photos, prefix: /shop/2024/, endpoint: 'http://minio.storage:9000', region: eu-west-1, secretRef: { name: s3-keys } } }
",
        );
        let job = ingest_job(&ic, &config()).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.args.as_ref().unwrap(), &["ingest", "s3://photos/shop/2024"]);
        let env = container.env.as_ref().unwrap();
        let value = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
        assert_eq!(value("IMGSEARCH_S3_ENDPOINT").as_deref(), Some("http://minio.storage:9000"));
        assert_eq!(value("AWS_REGION").as_deref(), Some("eu-west-1"));
        let key = env.iter().find(|e| e.name == "AWS_SECRET_ACCESS_KEY").unwrap();
        let selector = key.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!(
            (selector.name.as_str(), selector.key.as_str(), selector.optional),
            ("s3-keys", "AWS_SECRET_ACCESS_KEY", Some(false))
        );
        // Only the scratch volume: nothing to mount for a bucket.
        let volumes: Vec<&str> = pod.volumes.as_ref().unwrap().iter().map(|v| v.name.as_str()).collect();
        assert_eq!(volumes, ["scratch"]);

        // The search pods read result images from the same bucket, with the same settings.
        let deployment = search_deployment(&ic, &config()).unwrap();
        let search = &deployment.spec.template.spec.unwrap().containers[0];
        let env = search.env.as_ref().unwrap();
        let value = |name: &str| env.iter().find(|e| e.name == name).and_then(|e| e.value.clone());
        assert_eq!(value("IMGSEARCH_IMAGE_BUCKET").as_deref(), Some("s3://photos/shop/2024"));
        assert_eq!(value("IMGSEARCH_S3_ENDPOINT").as_deref(), Some("http://minio.storage:9000"));
        assert!(env.iter().any(|e| e.name == "AWS_ACCESS_KEY_ID" && e.value_from.is_some()));
    }

    #[test]
    fn url_list_sources_mount_the_config_map_key_and_pass_allowed_networks() {
        let ic = collection(
            "  milvus: { uri: 'http://m:19530' }
  source: { urls: { configMapRef: { name: shop-images, key: list.txt }, allowPrivateNetworks: [10.0.0.0/8, 192.168.0.0/16] } }
",
        );
        let job = ingest_job(&ic, &config()).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.args.as_ref().unwrap(), &["ingest", "--url-list", "/etc/imgsearch/source/urls.txt"]);
        let env = container.env.as_ref().unwrap();
        let allowed = env.iter().find(|e| e.name == "IMGSEARCH_ALLOW_PRIVATE_NETWORKS").unwrap();
        assert_eq!(allowed.value.as_deref(), Some("10.0.0.0/8,192.168.0.0/16"));
        let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "url-list").unwrap();
        let config_map = volume.config_map.as_ref().unwrap();
        assert_eq!(config_map.name, "shop-images");
        let item = &config_map.items.as_ref().unwrap()[0];
        assert_eq!((item.key.as_str(), item.path.as_str()), ("list.txt", "urls.txt"));
        let mount = container.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == "url-list").unwrap();
        assert_eq!(mount.mount_path, "/etc/imgsearch/source");
        assert_eq!(mount.read_only, Some(true));
    }

    #[test]
    fn an_object_without_a_uid_cannot_own_children() {
        let mut ic = pvc_collection();
        ic.metadata.uid = None;
        assert_eq!(search_service(&ic).unwrap_err(), BuildError::MissingMetadata("metadata.uid"));
    }
}
