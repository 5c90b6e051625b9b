//! The reconcile loop: kube-runtime's Controller over ImageCollections, owning their Jobs,
//! Deployments and Services. Each pass ensures the Milvus collection, applies the children with
//! server-side apply, prunes old ingest Jobs, observes and writes status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::PredicateConfig;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;

use super::children::{self, BuildError, ChildConfig, LABEL_COLLECTION, LABEL_GENERATION, MANAGER};
use super::metrics::Metrics;
use super::reasons;
use super::status::{self, ChildFailure, IngestObservation, MilvusObservation, Observed, SearchObservation};
use crate::crd::{DeletionPolicy, ImageCollection, ImageCollectionStatus};
use crate::shutdown::Shutdown;
use crate::store::{IndexSpec, MilvusStore, StoreError};

pub const FINALIZER: &str = "imgsearch.io/cleanup";
/// The annotation by which a Secret's owner names the one Milvus address its credentials may be
/// sent to. Without it the controller would be a confused deputy: anyone allowed to create an
/// ImageCollection, but not to read Secrets, could name any Secret of the namespace and an
/// address of their own, and receive the token from the controller or from the pods it creates.
pub const MILVUS_URI_ANNOTATION: &str = "imgsearch.io/milvus-uri";
const MILVUS_PATIENCE: Duration = Duration::from_secs(8);
/// The longest wait before a collection whose Milvus does not answer is looked at again (its
/// rechecks back off from `Recheck::not_ready`, doubling): nothing announces Milvus coming back.
const MILVUS_RECHECK_MAX: Duration = Duration::from_secs(120);
/// The label the Job controller puts on a Job's pods.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Secret {name:?} referenced by {field}: {problem}")]
    Secret { field: &'static str, name: String, problem: String },
    /// The Milvus Secret does not name this collection's Milvus address as the one its
    /// credentials are for ([`MILVUS_URI_ANNOTATION`]).
    #[error(
        "Secret {name:?} (spec.milvus.secretRef) is not for {uri}: {found}. Its credentials are sent only to the address \
         the Secret itself names; whoever may edit the Secret can add the annotation {MILVUS_URI_ANNOTATION}: {uri}"
    )]
    SecretNotBound { name: String, uri: String, found: String },
    /// A workload not applied because its pods would do what they must not: send the Milvus
    /// Secret's credentials to an address the Secret does not name ([`Error::SecretNotBound`]),
    /// or write to another object's Milvus collection ([`StoreError::OwnedElsewhere`]). `reason`
    /// and `why` are that failure's.
    #[error("not applied: {why}")]
    Withheld { reason: &'static str, why: String },
    #[error("catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("ImageCollection has no namespace")]
    NoNamespace,
    /// A child of this name exists but belongs to an earlier object of the same name.
    #[error("{0}; retrying")]
    StaleChild(String),
    /// An object of a child's name that imgsearch did not make (a user's, or another
    /// controller's): applying it by force would take it over, and the garbage collector would
    /// delete it with the collection.
    /// (The object is named where the failure is reported.)
    #[error(
        "one of this name exists that imgsearch did not make for this collection ({why}); it is left as it is. \
         Delete or rename it, or give the ImageCollection another name"
    )]
    NameTaken { why: String },
    /// Deleting with `deletionPolicy: Delete`: the collection's pods are still stopping, and
    /// its data goes only after them (a running pod would write to it or create it again).
    #[error("{0} pod(s) of the collection are still stopping")]
    PodsStopping(usize),
}

impl Error {
    /// Failure kind for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Build(_) => "invalid_spec",
            Self::Store(StoreError::OwnedElsewhere { .. }) => "collection_taken",
            Self::Withheld { reason, .. } if *reason == reasons::COLLECTION_TAKEN => "collection_taken",
            Self::Store(_) => "milvus",
            Self::Secret { .. } | Self::SecretNotBound { .. } | Self::Withheld { .. } => "secret",
            Self::Catalog(_) => "catalog",
            Self::Finalizer(_) => "finalizer",
            Self::NoNamespace => "invalid_spec",
            Self::StaleChild(_) => "stale_child",
            Self::NameTaken { .. } => "name_taken",
            Self::PodsStopping(_) => "pods_stopping",
        }
    }

    /// The reason a condition or Event gives for this failure ([`reasons`]).
    pub fn reason(&self) -> &'static str {
        match self {
            // A collection of another dimension is a spec the controller refuses, not an outage.
            Self::Store(StoreError::DimensionMismatch { .. }) => reasons::COLLECTION_MISMATCH,
            Self::Store(StoreError::IndexFailed { .. }) => reasons::INDEX_FAILED,
            Self::Store(StoreError::OwnedElsewhere { .. }) => reasons::COLLECTION_TAKEN,
            Self::Store(_) => reasons::MILVUS_UNAVAILABLE,
            Self::Secret { .. } => reasons::SECRET_INVALID,
            Self::SecretNotBound { .. } => reasons::SECRET_NOT_BOUND,
            Self::Withheld { reason, .. } => reason,
            Self::Build(_) | Self::NoNamespace => reasons::INVALID_SPEC,
            // A 4xx needs someone to change something; anything else is the server's moment.
            Self::Kube(kube::Error::Api(status)) if (400..500).contains(&status.code) => reasons::CHILD_REJECTED,
            Self::Kube(_) | Self::Finalizer(_) => reasons::API_UNAVAILABLE,
            Self::StaleChild(_) => reasons::STALE_CHILD,
            Self::NameTaken { .. } => reasons::NAME_TAKEN,
            Self::Catalog(_) => reasons::CATALOG_UNAVAILABLE,
            Self::PodsStopping(_) => reasons::STOPPING_PODS,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How often an object is looked at again when nothing announces a change. Owned objects wake
/// the controller on change; these timers catch what nothing announces: Milvus going away or
/// coming back, and the indexed count growing while an ingest runs (the controller's own status
/// writes do not wake it, see [`wakes_the_controller`]).
#[derive(Debug, Clone, Copy)]
pub struct Recheck {
    pub ready: Duration,
    pub ingesting: Duration,
    pub not_ready: Duration,
    /// How long a pod may wait to start (a Secret, claim or image missing) before the
    /// collection reports it as Stalled: long enough for a retried image pull or a Secret
    /// applied just after the collection.
    pub pod_start_grace: Duration,
}

impl Default for Recheck {
    fn default() -> Self {
        Self {
            ready: Duration::from_secs(120),
            ingesting: Duration::from_secs(10),
            not_ready: Duration::from_secs(30),
            pod_start_grace: Duration::from_secs(120),
        }
    }
}

impl Recheck {
    fn after(&self, phase: Option<&crate::crd::Phase>) -> Duration {
        match phase {
            Some(crate::crd::Phase::Ready) => self.ready,
            Some(crate::crd::Phase::Ingesting) => self.ingesting,
            _ => self.not_ready,
        }
    }
}

/// A Milvus connection's identity: URI, token, database.
type MilvusKey = (String, Option<String>, Option<String>);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub children: ChildConfig,
    pub metrics: Arc<Metrics>,
    pub recheck: Recheck,
    /// One Milvus connection per (URI, token, database), reused across reconciles. Each has its
    /// own slot, locked only while it connects: an address that does not answer holds up the
    /// collections on that address, never those on another.
    milvus: std::sync::Mutex<HashMap<MilvusKey, Arc<Mutex<Option<MilvusStore>>>>>,
    /// Consecutive failed reconciles per object ("namespace/name"), for the retry backoff.
    failures: std::sync::Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, children: ChildConfig) -> Arc<Self> {
        Self::with_recheck(client, children, Recheck::default())
    }

    pub fn with_recheck(client: Client, children: ChildConfig, recheck: Recheck) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() },
        );
        Arc::new(Self {
            client,
            recorder,
            children,
            metrics: Metrics::new(),
            recheck,
            milvus: std::sync::Mutex::new(HashMap::new()),
            failures: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Counts a failure of `key` and returns how many in a row there have been.
    fn failed(&self, key: String) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    fn succeeded(&self, key: &str) {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(key);
    }
}

/// Retry delay after `failures` consecutive errors: 5 s doubling up to 5 minutes, so a broken
/// object neither hot-loops nor waits long once its cause is fixed.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    Duration::from_secs(5u64.saturating_mul(1 << exponent)).min(Duration::from_secs(300))
}

fn object_key(ic: &ImageCollection) -> String {
    format!("{}/{}", ic.namespace().unwrap_or_default(), ic.name_any())
}

/// Runs the controller until `shutdown`, then lets the reconciles in flight finish.
pub async fn run(context: Arc<Context>, shutdown: Shutdown) {
    let client = context.client.clone();
    // The ImageCollection watch passes on only changes the controller must act on. Without the
    // filter every status write (the indexed count rises during an ingest) came back as a watch
    // event and started another reconcile: several a second, each a handful of API calls.
    let (reader, writer) = reflector::store();
    let collections = watcher(Api::<ImageCollection>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(wakes_the_controller, PredicateConfig::default());
    Controller::for_stream(collections, reader)
        // Ingest Jobs by their collection label rather than their owner: a scheduled rescan's
        // Job is owned by the CronJob, and its progress is the collection's too.
        .watches(Api::<Job>::all(client.clone()), watcher::Config::default().labels(LABEL_COLLECTION), |job| {
            let collection = job.labels().get(LABEL_COLLECTION)?;
            Some(ObjectRef::<ImageCollection>::new(collection).within(&job.namespace()?))
        })
        .owns(Api::<CronJob>::all(client.clone()), watcher::Config::default().labels(LABEL_COLLECTION))
        .owns(Api::<Deployment>::all(client.clone()), watcher::Config::default().labels(LABEL_COLLECTION))
        .owns(Api::<Service>::all(client), watcher::Config::default().labels(LABEL_COLLECTION))
        .graceful_shutdown_on(async move { shutdown.requested().await })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, action)) => tracing::debug!(%object, ?action, "reconciled"),
                // A timer that fires after its object was deleted: nothing to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                    tracing::debug!(%object, "requeued object is gone")
                }
                Err(error) => tracing::warn!(%error, "reconcile failed"),
            }
        })
        .await;
}

/// What of an ImageCollection wakes the controller: its spec (through the generation, which the
/// API server also bumps when a deletion starts), its finalizers and the start of its deletion.
/// Status and the controller's own writes do not.
fn wakes_the_controller(ic: &ImageCollection) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    ic.metadata.generation.hash(&mut hasher);
    ic.metadata.finalizers.hash(&mut hasher);
    ic.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    children::retry_token(ic).hash(&mut hasher);
    Some(hasher.finish())
}

async fn reconcile(ic: Arc<ImageCollection>, context: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let key = object_key(&ic);
    let result = reconcile_once(ic, &context).await;
    let outcome = match &result {
        Ok(_) => {
            context.succeeded(&key);
            "success"
        }
        Err(error) => error.metric_label(),
    };
    context.metrics.record(outcome, started.elapsed());
    result
}

async fn reconcile_once(ic: Arc<ImageCollection>, context: &Context) -> Result<Action> {
    let namespace = ic.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ImageCollection> = Api::namespaced(context.client.clone(), &namespace);
    finalizer(&api, FINALIZER, ic, |event| async {
        match event {
            Finalizer::Apply(ic) => apply(&ic, context).await,
            Finalizer::Cleanup(ic) => cleanup(&ic, context).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn error_policy(ic: Arc<ImageCollection>, error: &Error, context: Arc<Context>) -> Action {
    // Waiting for pods to stop is progress, not a failure: look again soon, without backoff.
    if let Error::Finalizer(inner) = error
        && let kube::runtime::finalizer::Error::CleanupFailed(Error::PodsStopping(pods)) = inner.as_ref()
    {
        tracing::info!(name = %ic.name_any(), pods, "waiting for the collection's pods to stop before removing its data");
        return Action::requeue(Duration::from_secs(2));
    }
    let failures = context.failed(object_key(&ic));
    let delay = backoff(failures);
    tracing::warn!(
        name = %ic.name_any(),
        kind = error.metric_label(),
        failures,
        retry_in_seconds = delay.as_secs(),
        %error,
        "reconcile failed"
    );
    Action::requeue(delay)
}

async fn apply(ic: &ImageCollection, context: &Context) -> Result<Action> {
    let namespace = ic.namespace().ok_or(Error::NoNamespace)?;
    let name = ic.name_any();
    let collection = ic.milvus_collection();
    let generation = ic.metadata.generation.unwrap_or(0);
    let params = PatchParams::apply(MANAGER).force();

    let milvus = match ensure_milvus(ic, context, &collection).await {
        Ok(rows) => MilvusObservation::Ready { rows },
        Err(error) => {
            let reason = match error.reason() {
                // Reading the Milvus Secret is part of reaching Milvus.
                reasons::API_UNAVAILABLE | reasons::CHILD_REJECTED => reasons::MILVUS_UNAVAILABLE,
                reason => reason,
            };
            publish(context, ic, EventType::Warning, reason, &error.to_string()).await;
            MilvusObservation::Failed { reason, message: error.to_string() }
        }
    };

    // Each child is applied on its own: one the API server refuses (or the spec cannot produce)
    // is reported in status and as an Event, and the others still get through.
    let mut failures = Vec::new();
    // Pods get the Milvus Secret's keys and send them to spec.milvus.uri: no pod is made while
    // the Secret does not name that address (the controller would be the confused deputy). Nor
    // while the Milvus collection is another object's: the pods would write to it and prune it.
    let withheld_by = match &milvus {
        MilvusObservation::Failed { reason: reason @ reasons::SECRET_NOT_BOUND, message } => {
            Some((*reason, format!("its pods would get the Milvus Secret's credentials. {message}")))
        }
        MilvusObservation::Failed { reason: reason @ reasons::COLLECTION_TAKEN, message } => {
            Some((*reason, format!("its pods would write to another object's collection. {message}")))
        }
        _ => None,
    };
    let withheld = || withheld_by.clone().map(|(reason, why)| Error::Withheld { reason, why });
    let search = children::search_name(&name);
    let services: Api<Service> = Api::namespaced(context.client.clone(), &namespace);
    let service = async {
        let desired = children::search_service(ic)?;
        claim(&services, &search, ic).await?;
        Ok(services.patch(&search, &params, &Patch::Apply(&desired)).await?)
    };
    settle(&mut failures, format!("Service {search}"), service.await);
    let deployments: Api<Deployment> = Api::namespaced(context.client.clone(), &namespace);
    let deployment = async {
        if let Some(refused) = withheld() {
            return Err(refused);
        }
        let desired = children::search_deployment(ic, &context.children)?;
        if let Some(replaced) = replace_if_reselected(ic, context, &deployments, &desired).await? {
            return Ok(replaced);
        }
        Ok(deployments.patch(&search, &params, &Patch::Apply(&desired)).await?)
    };
    let deployment = settle(&mut failures, format!("Deployment {search}"), deployment.await);
    let cronjob = match withheld() {
        None => ensure_rescan_cronjob(ic, context, &namespace, &params).await,
        Some(refused) => Err(refused),
    };
    settle(&mut failures, format!("CronJob {}", children::rescan_cronjob_name(&name)), cronjob);
    let job_name = children::ingest_job_name(ic).unwrap_or_else(|_| "of this generation".into());
    let jobs: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
    let selector = format!("{LABEL_COLLECTION}={name}");
    let listed = jobs.list(&ListParams::default().labels(&selector)).await?.items;
    // A namespace being deleted loses its pods first and its Jobs only once they are gone
    // (ordered namespace deletion). But a Job with per-shard retries keeps the job-tracking
    // finalizer on a shard's last failed pod until that shard's replacement exists, and a
    // namespace being deleted refuses new pods: each would wait for the other for ever. So the
    // controller ends the collection's workloads itself, and the Job controller lets the pods go.
    if listed.iter().any(|job| !finished(job)) && namespace_being_deleted(context, &namespace).await? == Some(true) {
        tracing::info!(%name, %namespace, "the namespace is being deleted: stopping the collection's workloads");
        stop_workloads(ic, context).await?;
        return Ok(Action::requeue(context.recheck.not_ready));
    }
    let job = match withheld() {
        None => ensure_ingest_job(ic, context, &namespace, &params, &listed).await,
        Some(refused) => Err(refused),
    };
    let generation_job = settle(&mut failures, format!("Job {job_name}"), job).flatten();
    let jobs = prune_jobs(ic, context, &namespace, generation, listed, generation_job.as_ref()).await?;
    // The newest ingest Job (this generation's, or a later scheduled rescan) is the one to report.
    let latest = jobs.into_iter().chain(generation_job).max_by(|a, b| {
        (a.metadata.creation_timestamp.as_ref().map(|t| t.0), a.name_any())
            .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.name_any()))
    });
    let mut ingest = match &latest {
        Some(job) => observe_job(context, &namespace, job).await?,
        None if ic.spec.suspend => IngestObservation::Suspended,
        None if failures.iter().any(|f| f.object.starts_with("Job ")) => IngestObservation::NotCreated {
            message: "the ingest Job could not be created (see the Stalled condition)".into(),
        },
        None => IngestObservation::Unsupported { message: "spec.source sets none of pvc, s3 or urls".into() },
    };

    // Pods refused before they exist (a ResourceQuota, LimitRange, PodSecurity, a webhook)
    // leave a Job that looks as if it runs: only the Job controller's Events say otherwise.
    if let (IngestObservation::Running { job, .. }, Some(latest)) = (&ingest, &latest)
        && let Some(refusal) = job_pods_refused(context, &namespace, latest).await
    {
        let message = format!("the Job controller cannot create its pods: {refusal}");
        failures.push(ChildFailure {
            object: format!("Job {job}"),
            reason: reasons::PODS_NOT_CREATED,
            message: message.clone(),
        });
        ingest = IngestObservation::NotStarting { job: job.clone(), message };
    }

    let health = deployment.as_ref().map(status::deployment_health).unwrap_or_default();
    if let Some((reason, message)) = health.failure {
        failures.push(ChildFailure { object: format!("Deployment {search}"), reason, message });
    }
    // The replicas wanted are the Deployment's own: an autoscaler or `kubectl scale` may set
    // them when the spec does not.
    let desired = deployment.as_ref().and_then(|d| d.spec.replicas).or(ic.spec.search.replicas).unwrap_or(1);
    let available = deployment.and_then(|d| d.status).and_then(|s| s.available_replicas).unwrap_or(0);
    // Pods that cannot start (a Secret, claim or image missing) keep a Job "running" and a
    // Deployment unavailable, or its rollout unfinished behind the old pods, forever: their
    // waiting reasons say what is wrong.
    if matches!(ingest, IngestObservation::Running { .. }) || available < desired || health.rolling_out.is_some() {
        let current_job = match &ingest {
            IngestObservation::Running { job, .. } => Some(job.as_str()),
            _ => None,
        };
        let stuck = pods_not_starting(ic, context, &namespace, current_job).await;
        if let IngestObservation::Running { job, .. } = &ingest {
            let of_job: Vec<&ChildFailure> =
                stuck.iter().filter(|(job_name, _)| job_name.as_ref() == Some(job)).map(|(_, f)| f).collect();
            if let Some(first) = of_job.first() {
                let message = format!("{} of its pods cannot start; {}: {}", of_job.len(), first.object, first.message);
                ingest = IngestObservation::NotStarting { job: job.clone(), message };
            }
        }
        failures.extend(stuck.into_iter().map(|(_, failure)| failure));
    }

    let observed = Observed {
        generation,
        collection,
        milvus,
        ingest,
        search: SearchObservation {
            desired,
            available,
            endpoint: children::search_endpoint(ic).unwrap_or_default(),
            rolling_out: health.rolling_out,
        },
        failures,
    };
    // A Milvus that does not answer is asked less often the longer it stays away (per object).
    let unreachable_key = format!("milvus {}", object_key(ic));
    let milvus_streak = match &observed.milvus {
        MilvusObservation::Failed { .. } => context.failed(unreachable_key),
        MilvusObservation::Ready { .. } => {
            context.succeeded(&unreachable_key);
            0
        }
    };
    let status = status::compute(&observed, ic.status.as_ref(), now());
    let recheck = milvus_recheck(context.recheck.after(status.phase.as_ref()), milvus_streak);
    write_status(context, ic, &status).await?;
    for (type_, reason, message) in status::transitions(ic.status.as_ref(), &status) {
        publish(context, ic, type_, &reason, &message).await;
    }
    Ok(Action::requeue(recheck))
}

/// When to look again at a collection whose Milvus failed `streak` times in a row: `base`
/// doubling per failure, up to [`MILVUS_RECHECK_MAX`] (or `base`, if that is longer).
fn milvus_recheck(base: Duration, streak: u32) -> Duration {
    if streak <= 1 {
        return base;
    }
    let doubled = base.saturating_mul(2u32.saturating_pow((streak - 1).min(16)));
    doubled.min(MILVUS_RECHECK_MAX.max(base))
}

/// The value of a child's apply, or `None` with the failure recorded for status.
fn settle<T>(failures: &mut Vec<ChildFailure>, object: String, result: Result<T>) -> Option<T> {
    let error = match result {
        Ok(value) => return Some(value),
        Err(error) => error,
    };
    let reason = match error.reason() {
        reason @ (reasons::INVALID_SPEC
        | reasons::CHILD_REJECTED
        | reasons::STALE_CHILD
        | reasons::NAME_TAKEN
        | reasons::SECRET_NOT_BOUND
        | reasons::COLLECTION_TAKEN) => reason,
        _ => reasons::API_UNAVAILABLE,
    };
    let message = match &error {
        Error::Build(problem) => problem.to_string(),
        Error::Kube(kube::Error::Api(status)) if reason == reasons::CHILD_REJECTED => {
            format!("the API server refused it ({}): {}", status.code, status.message)
        }
        Error::StaleChild(message) => message.clone(),
        other => other.to_string(),
    };
    tracing::warn!(%object, reason, %message, "child not applied");
    failures.push(ChildFailure { object, reason, message });
    None
}

/// The collection's search pods and `current_job`'s pods that have not started within the grace
/// period, each with the Job it belongs to (if any). Pods of older Jobs are not this
/// generation's concern. A listing that fails is logged and reports nothing: the next pass
/// looks again.
async fn pods_not_starting(
    ic: &ImageCollection,
    context: &Context,
    namespace: &str,
    current_job: Option<&str>,
) -> Vec<(Option<String>, ChildFailure)> {
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), namespace);
    let selector = format!("{LABEL_COLLECTION}={}", ic.name_any());
    let listed = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(listed) => listed.items,
        Err(error) => {
            tracing::warn!(name = %ic.name_any(), %error, "could not list the collection's pods");
            return Vec::new();
        }
    };
    let now = now();
    let mut stuck = Vec::new();
    for pod in &listed {
        let job = pod.labels().get(JOB_NAME_LABEL).cloned();
        if job.as_deref().is_some_and(|job| Some(job) != current_job) {
            continue;
        }
        let Some(mut failure) = status::not_starting(pod, &now, context.recheck.pod_start_grace) else { continue };
        // A step that hangs (a volume that cannot be mounted) is told only in the kubelet's
        // Events about the pod.
        if status::STEPS_THAT_CAN_HANG.iter().any(|step| failure.message.contains(&format!(": {step}:"))) {
            let events: Api<CoreEvent> = Api::namespaced(context.client.clone(), namespace);
            let about = format!("involvedObject.uid={}", pod.metadata.uid.as_deref().unwrap_or_default());
            match events.list(&ListParams::default().fields(&about)).await {
                Ok(listed) => failure = status::with_kubelet_event(failure, &listed.items),
                Err(error) => tracing::warn!(pod = %pod.name_any(), %error, "could not list the pod's Events"),
            }
        }
        stuck.push((job, failure));
    }
    stuck
}

/// Why the Job controller could not create `job`'s pods, from its latest `FailedCreate` Event,
/// while none of them exists (no pod active, succeeded or failed). A listing that fails is
/// logged and reports nothing: the next pass looks again.
async fn job_pods_refused(context: &Context, namespace: &str, job: &Job) -> Option<String> {
    let counts = job.status.as_ref().map(|s| (s.active, s.succeeded, s.failed)).unwrap_or_default();
    if [counts.0, counts.1, counts.2].iter().any(|n| n.unwrap_or(0) > 0) {
        return None;
    }
    let uid = job.metadata.uid.as_deref()?;
    let events: Api<CoreEvent> = Api::namespaced(context.client.clone(), namespace);
    let selector = format!("involvedObject.uid={uid},reason=FailedCreate");
    let listed = match events.list(&ListParams::default().fields(&selector)).await {
        Ok(listed) => listed.items,
        Err(error) => {
            tracing::warn!(job = %job.name_any(), %error, "could not list the Job's events");
            return None;
        }
    };
    let when = |event: &CoreEvent| {
        event.last_timestamp.as_ref().map(|t| t.0).or_else(|| event.event_time.as_ref().map(|t| t.0))
    };
    listed.into_iter().max_by_key(when).and_then(|event| event.message)
}

/// The ingest Job for the current spec: the newest Job of this collection if it runs what the
/// spec asks for now (a spec edit that does not touch ingest, such as search replicas or the
/// deletion policy, re-embeds nothing), otherwise a new one for this generation, created once
/// every earlier ingest (an older generation's Job, a scheduled rescan) has stopped: two Jobs
/// writing and pruning one collection at once would race. Jobs are immutable once created.
/// `jobs` are the collection's Jobs as listed this pass.
async fn ensure_ingest_job(
    ic: &ImageCollection,
    context: &Context,
    namespace: &str,
    params: &PatchParams,
    jobs: &[Job],
) -> Result<Option<Job>> {
    let desired = match children::ingest_job(ic, &context.children) {
        Ok(job) => job,
        Err(BuildError::UnsupportedSource(_)) => return Ok(None),
        Err(other) => return Err(other.into()),
    };
    let job_name = desired.name_any();
    let newest = jobs
        .iter()
        .filter(|job| owned_by(*job, ic) && job.metadata.deletion_timestamp.is_none())
        .max_by_key(|job| job_generation(job));
    let api: Api<Job> = Api::namespaced(context.client.clone(), namespace);
    if let Some(newest) = newest.filter(|job| runs_the_same(job, &desired)) {
        // A failed Job is run again when the collection's retry annotation asks for it: the
        // failed one goes first (foreground, with its pods), then the next pass makes a new one.
        let asked = children::retry_token(ic);
        let made_for = newest.annotations().get(children::ANNOTATION_RETRY_INGEST).cloned();
        if job_failed(newest) && asked.is_some() && asked != made_for {
            let old = newest.name_any();
            if newest.metadata.deletion_timestamp.is_none() {
                api.delete(&old, &foreground()).await?;
                let note = format!(
                    "deleted failed ingest Job {old} to run it again ({ANNOTATION_RETRY} changed)",
                    ANNOTATION_RETRY = children::ANNOTATION_RETRY_INGEST
                );
                publish(context, ic, EventType::Normal, reasons::INGEST_RETRIED, &note).await;
            }
            return Ok(None);
        }
        return Ok(Some(newest.clone()));
    }
    if let Some(job) = api.get_opt(&job_name).await? {
        if owned_by(&job, ic) {
            return Ok(Some(job));
        }
        // A Job of the same name owned by an earlier object of this name (deleted and created
        // again, as GitOps tools do on immutable-field changes) that the garbage collector has
        // not removed yet: it ingested with the old spec, so it is not this generation's. It is
        // deleted now and this generation's Job is created on the next pass.
        if job.metadata.deletion_timestamp.is_none() {
            api.delete(&job_name, &background()).await?;
            let note = format!("deleted Job {job_name} left by an earlier ImageCollection of this name");
            publish(context, ic, EventType::Normal, reasons::STALE_JOB_DELETED, &note).await;
        }
        return Err(Error::StaleChild(format!(
            "Job {job_name} of an earlier ImageCollection {} is being deleted",
            ic.name_any()
        )));
    }
    if ic.spec.suspend {
        return Ok(None);
    }
    // Earlier ingests still running are stopped first, their pods with them (foreground: the
    // Job goes only after its pods); the deletions wake this controller, which then creates
    // the new Job.
    let running: Vec<&Job> =
        jobs.iter().filter(|job| !finished(job) && (owned_by(*job, ic) || made_by_cronjob(job))).collect();
    if !running.is_empty() {
        for job in running.iter().filter(|job| job.metadata.deletion_timestamp.is_none()) {
            let old = job.name_any();
            api.delete(&old, &foreground()).await?;
            let note = format!("stopped ingest Job {old}: the spec changed, and Job {job_name} runs the new one");
            publish(context, ic, EventType::Normal, reasons::INGEST_STOPPED, &note).await;
        }
        let names: Vec<String> = running.iter().map(|job| job.name_any()).collect();
        tracing::info!(name = %ic.name_any(), stopping = ?names, next = %job_name, "waiting for earlier ingest Jobs to stop");
        return Ok(None);
    }
    let created = api.patch(&job_name, params, &Patch::Apply(&desired)).await?;
    publish(context, ic, EventType::Normal, reasons::INGEST_STARTED, &format!("created ingest Job {job_name}")).await;
    Ok(Some(created))
}

/// The generation a Job was made for, from its label (0 when unlabelled).
fn job_generation(job: &Job) -> i64 {
    job.labels().get(LABEL_GENERATION).and_then(|g| g.parse().ok()).unwrap_or(0)
}

/// Whether `job` runs what `desired` would: the same ingest digest, or, for a Job made before
/// the digest existed, the same generation.
fn runs_the_same(job: &Job, desired: &Job) -> bool {
    let digest = |job: &Job| job.annotations().get(children::ANNOTATION_INGEST_SPEC).cloned();
    match digest(job) {
        Some(ours) => Some(ours) == digest(desired),
        None => job_generation(job) == job_generation(desired),
    }
}

/// A scheduled rescan: made by the collection's CronJob.
fn made_by_cronjob(job: &Job) -> bool {
    job.owner_references().iter().any(|owner| owner.kind == "CronJob")
}

/// Whether `ic` (this very object, by uid) is the controller owner of `child`.
fn owned_by(child: &impl Resource, ic: &ImageCollection) -> bool {
    let uid = ic.metadata.uid.as_deref();
    child
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|owner| Some(owner.uid.as_str()) == uid && owner.controller == Some(true))
}

/// The child `name` as it exists, if it does and the operator may apply it: when this
/// collection controls it, when imgsearch made it for an earlier object of this name (the
/// garbage collector has not reached it yet), or when it carries imgsearch's labels for this
/// collection and has no controller (left by `kubectl delete --cascade=orphan`). Anything else
/// is [`Error::NameTaken`] and is not touched: a forced apply would take it over, and the
/// garbage collector would then delete it with the collection.
async fn claim<K>(api: &Api<K>, name: &str, ic: &ImageCollection) -> Result<Option<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(existing) = api.get_opt(name).await? else { return Ok(None) };
    match foreign_owner(existing.meta(), ic) {
        None => Ok(Some(existing)),
        Some(why) => Err(Error::NameTaken { why }),
    }
}

/// Why an object of a child's name is not the collection's to apply, or `None` when it is
/// (see [`claim`]).
fn foreign_owner(meta: &kube::api::ObjectMeta, ic: &ImageCollection) -> Option<String> {
    let controller = meta.owner_references.iter().flatten().find(|owner| owner.controller == Some(true));
    match controller {
        Some(owner) if Some(owner.uid.as_str()) == ic.metadata.uid.as_deref() => None,
        Some(owner)
            // Any version of the group: a controller of another version made it just as well.
            if owner.kind == ImageCollection::kind(&())
                && owner.api_version.split('/').next() == Some(&*ImageCollection::group(&()))
                && owner.name == ic.name_any() =>
        {
            None
        }
        Some(owner) => Some(format!("it is controlled by {} {}", owner.kind, owner.name)),
        None => {
            let labels = meta.labels.as_ref();
            let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
            let ours = label("app.kubernetes.io/managed-by") == Some(MANAGER)
                && label(LABEL_COLLECTION) == Some(&ic.name_any());
            (!ours).then(|| "it has no controller and not imgsearch's labels".to_string())
        }
    }
}

/// The search Deployment as it is while it is replaced because its selector is not `desired`'s
/// (a Deployment's selector cannot change; earlier versions selected by
/// `app.kubernetes.io/instance`), or `None` when it can be applied. The old one is deleted
/// with its ReplicaSets orphaned, so its pods keep serving; the new Deployment, made on the
/// pass its deletion wakes, has the same pod template and adopts them without a rollout.
async fn replace_if_reselected(
    ic: &ImageCollection,
    context: &Context,
    deployments: &Api<Deployment>,
    desired: &Deployment,
) -> Result<Option<Deployment>> {
    let name = desired.name_any();
    let Some(existing) = claim(deployments, &name, ic).await? else { return Ok(None) };
    if existing.spec.selector == desired.spec.selector {
        return Ok(None);
    }
    if existing.metadata.deletion_timestamp.is_none() {
        deployments.delete(&name, &orphan()).await?;
        let note = format!(
            "replacing Deployment {name} to change its selector to {:?}; its pods keep serving and the new \
             Deployment adopts them",
            children::search_selector(&ic.name_any())
        );
        publish(context, ic, EventType::Normal, reasons::SELECTOR_CHANGED, &note).await;
    }
    Ok(Some(existing))
}

/// The Job's state from its conditions, and from its pods what the run reported.
async fn observe_job(context: &Context, namespace: &str, job: &Job) -> Result<IngestObservation> {
    let name = job.name_any();
    let scheduled = made_by_cronjob(job);
    let status = job.status.clone().unwrap_or_default();
    let condition = |type_: &str| {
        status.conditions.as_ref().and_then(|c| c.iter().find(|c| c.type_ == type_ && c.status == "True")).cloned()
    };
    let pods = || async {
        let pods: Api<Pod> = Api::namespaced(context.client.clone(), namespace);
        let selector = format!("{JOB_NAME_LABEL}={name}");
        Ok::<_, Error>(pods.list(&ListParams::default().labels(&selector)).await?.items)
    };
    Ok(if condition("Complete").is_some() {
        IngestObservation::Succeeded {
            job: name.clone(),
            started_at: status.start_time,
            completed_at: status.completion_time,
            totals: status::ingest_totals(&pods().await?),
        }
    } else if let Some(failed) = condition("Failed") {
        let from_pods = status::pod_failure(&pods().await?);
        let message = match (from_pods, failed.message) {
            (Some(pod), Some(job)) => format!("{job}; {pod}"),
            (Some(pod), None) => pod,
            (None, Some(job)) => job,
            (None, None) => "the Job failed".into(),
        };
        IngestObservation::Failed { job: name, message, scheduled }
    } else {
        IngestObservation::Running { job: name, started_at: status.start_time, scheduled }
    })
}

/// Applies the rescan CronJob when `spec.ingest.schedule` is set, deletes it when not.
async fn ensure_rescan_cronjob(
    ic: &ImageCollection,
    context: &Context,
    namespace: &str,
    params: &PatchParams,
) -> Result<()> {
    let cronjobs: Api<CronJob> = Api::namespaced(context.client.clone(), namespace);
    let name = children::rescan_cronjob_name(&ic.name_any());
    match children::rescan_cronjob(ic, &context.children) {
        Ok(Some(cronjob)) => {
            claim(&cronjobs, &name, ic).await?;
            cronjobs.patch(&name, params, &Patch::Apply(&cronjob)).await?;
        }
        Ok(None) | Err(BuildError::UnsupportedSource(_)) => {
            // Only the collection's own CronJob goes: one of this name that imgsearch did not
            // make is not this collection's business when it has no schedule.
            if cronjobs.get_opt(&name).await?.is_some_and(|cronjob| foreign_owner(cronjob.meta(), ic).is_none()) {
                cronjobs.delete(&name, &background()).await?;
                publish(context, ic, EventType::Normal, reasons::RESCAN_REMOVED, &format!("deleted CronJob {name}"))
                    .await;
            }
        }
        Err(other) => return Err(other.into()),
    }
    Ok(())
}

fn background() -> DeleteParams {
    DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() }
}

/// Deletes the object and leaves what it owns (its ReplicaSets) in place, their owner
/// reference removed by the garbage collector.
fn orphan() -> DeleteParams {
    DeleteParams { propagation_policy: Some(PropagationPolicy::Orphan), ..DeleteParams::default() }
}

fn foreground() -> DeleteParams {
    DeleteParams { propagation_policy: Some(PropagationPolicy::Foreground), ..DeleteParams::default() }
}

/// Deletes finished ingest Jobs of older generations beyond `spec.ingest.historyLimit`, never
/// `current` (the Job of the current spec, which may be of an older generation); returns the
/// ingest Jobs that remain.
async fn prune_jobs(
    ic: &ImageCollection,
    context: &Context,
    namespace: &str,
    generation: i64,
    all: Vec<Job>,
    current: Option<&Job>,
) -> Result<Vec<Job>> {
    let jobs: Api<Job> = Api::namespaced(context.client.clone(), namespace);
    let current = current.map(|job| job.name_any());
    let mut old: Vec<(i64, Job)> = all
        .iter()
        .filter(|job| job.labels().contains_key(LABEL_GENERATION) && Some(job.name_any()) != current)
        .map(|job| (job_generation(job), job.clone()))
        .filter(|(job_generation, job)| *job_generation < generation && finished(job))
        .collect();
    old.sort_by_key(|(g, _)| std::cmp::Reverse(*g));
    let keep = usize::try_from(ic.spec.ingest.history_limit).unwrap_or(0);
    let mut pruned = Vec::new();
    for (_, job) in old.into_iter().skip(keep) {
        jobs.delete(&job.name_any(), &background()).await?;
        pruned.push(job.name_any());
    }
    Ok(all.into_iter().filter(|job| !pruned.contains(&job.name_any())).collect())
}

/// Whether one of the Job's conditions of `types` is True.
fn has_condition(job: &Job, types: &[&str]) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| conditions.iter().any(|c| types.contains(&c.type_.as_str()) && c.status == "True"))
}

/// Whether a Job ended in failure (its `Failed` condition is True).
fn job_failed(job: &Job) -> bool {
    has_condition(job, &["Failed"])
}

/// Whether a Job is over: a terminal condition (`Complete` or `Failed`) is True. Counts are
/// not enough: `failed > 0 && active == 0` also holds between a failed pod and its retry.
fn finished(job: &Job) -> bool {
    has_condition(job, &["Complete", "Failed"])
}

/// The collection with its index, loaded; returns the searchable row count.
async fn ensure_milvus(ic: &ImageCollection, context: &Context, collection: &str) -> Result<u64> {
    // An index type or metric of a newer CRD would otherwise become the one this version builds.
    children::understood(ic)?;
    let store = milvus_store(ic, context).await?;
    let model =
        crate::embed::builtin(ic.spec.model.name.as_str()).map_err(|e| BuildError::UnknownModel(e.to_string()))?;
    let index = IndexSpec {
        m: ic.spec.index.params.m,
        ef_construction: ic.spec.index.params.ef_construction,
        ..IndexSpec::default()
    };
    let existed = store.has_collection(collection).await?;
    let owner = children::collection_owner(ic);
    store.ensure_collection(collection, model.dimension, &index, Some(&owner)).await?;
    if !existed {
        let note =
            format!("created Milvus collection {collection} ({} dimensions, HNSW index), loaded", model.dimension);
        publish(context, ic, EventType::Normal, reasons::COLLECTION_CREATED, &note).await;
    }
    Ok(store.count(collection).await?)
}

async fn milvus_store(ic: &ImageCollection, context: &Context) -> Result<MilvusStore> {
    let token = match &ic.spec.milvus.secret_ref {
        Some(reference) => Some(milvus_token(context, ic, &reference.name).await?),
        None => None,
    };
    let uri = ic.milvus_uri().ok_or(BuildError::NoMilvus)?;
    let database = ic.spec.milvus.database.clone();
    let key = (uri.clone(), token.clone(), database.clone());
    let slot = {
        let mut slots = context.milvus.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(slots.entry(key).or_default())
    };
    // Only reconciles of this address wait here while it connects.
    let mut slot = slot.lock().await;
    if let Some(store) = slot.as_ref() {
        return Ok(store.clone());
    }
    // A reconcile waits on Milvus only briefly: an outage becomes a condition within seconds.
    // The SDK's own connect timeout is longer, hence the bound here.
    let store =
        tokio::time::timeout(MILVUS_PATIENCE, MilvusStore::connect_to(&uri, token.as_deref(), database.as_deref()))
            .await
            .map_err(|_| StoreError::Connect {
                uri: uri.clone(),
                detail: format!("no answer within {} s", MILVUS_PATIENCE.as_secs()),
            })??;
    store.set_patience(MILVUS_PATIENCE);
    *slot = Some(store.clone());
    Ok(store)
}

/// The Secret `field` names, in the object's namespace.
async fn referenced_secret(
    context: &Context,
    ic: &ImageCollection,
    field: &'static str,
    secret: &str,
) -> Result<Secret> {
    let namespace = ic.namespace().ok_or(Error::NoNamespace)?;
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
    secrets.get_opt(secret).await?.ok_or_else(|| Error::Secret {
        field,
        name: secret.to_string(),
        problem: "not found".into(),
    })
}

/// The text values of a Secret in the object's namespace.
async fn secret_data(
    context: &Context,
    ic: &ImageCollection,
    field: &'static str,
    secret: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    Ok(text_values(referenced_secret(context, ic, field, secret).await?))
}

fn text_values(secret: Secret) -> std::collections::BTreeMap<String, String> {
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| (key, String::from_utf8_lossy(&value.0).trim().to_string()))
        .collect()
}

/// `token`, or `username` + `password`, from the referenced Secret.
async fn milvus_token(context: &Context, ic: &ImageCollection, secret: &str) -> Result<String> {
    let field = "spec.milvus.secretRef";
    let uri = ic.milvus_uri().ok_or(BuildError::NoMilvus)?;
    let found = referenced_secret(context, ic, field, secret).await?;
    let bound_to = found.annotations().get(MILVUS_URI_ANNOTATION).map(|value| value.trim().to_string());
    if bound_to.as_deref() != Some(uri.as_str()) {
        let found = match bound_to {
            Some(other) => format!("it names {other}"),
            None => format!("it has no {MILVUS_URI_ANNOTATION} annotation"),
        };
        return Err(Error::SecretNotBound { name: secret.into(), uri, found });
    }
    let data = text_values(found);
    match (data.get("token"), data.get("username"), data.get("password")) {
        (Some(token), _, _) => Ok(token.clone()),
        (None, Some(user), Some(password)) => Ok(format!("{user}:{password}")),
        _ => Err(Error::Secret {
            field,
            name: secret.into(),
            problem: "needs a `token` key, or `username` and `password`".into(),
        }),
    }
}

/// On delete with `deletionPolicy: Delete`: drop the Milvus collection and the catalog rows.
/// Until both are gone the object stays (its finalizer is kept) with a Warning Event and a
/// status saying why; Retain lets it go at once and keeps everything.
async fn cleanup(ic: &ImageCollection, context: &Context) -> Result<Action> {
    if ic.spec.deletion_policy == DeletionPolicy::Delete {
        let collection = ic.milvus_collection();
        // The search and ingest pods write to the collection and would create it again if it
        // went while they run: stop them first, and drop the data once they are gone.
        let running = stop_workloads(ic, context).await?;
        if running > 0 {
            let message = format!(
                "deletionPolicy is Delete: stopping the collection's {running} running pod(s) before dropping \
                 {collection} (a pod that cannot stop, e.g. on a lost node, holds this until it is force-deleted; \
                 deletionPolicy: Retain lets the object go at once and keeps the data)"
            );
            let status =
                status::deleting(ic.status.as_ref(), status::Deletion::Stopping(&message), generation(ic), now());
            write_status(context, ic, &status).await.ok();
            return Err(Error::PodsStopping(running));
        }
        if let Err(error) = purge(ic, context, &collection).await {
            if let Some(kept) = abandoned(ic, context, &collection, &error).await? {
                // Usually unrecorded: a terminating namespace refuses new Events. The log has it.
                tracing::warn!(name = %ic.name_any(), %kept, "cleanup abandoned");
                publish(context, ic, EventType::Warning, reasons::CLEANUP_ABANDONED, &kept).await;
                return Ok(Action::await_change());
            }
            let message = format!(
                "deletionPolicy is Delete but the data of {collection} cannot be removed yet: {error}. \
                 Retrying; the object stays until this succeeds (set deletionPolicy: Retain to keep the data \
                 and let the object go)"
            );
            publish(context, ic, EventType::Warning, reasons::CLEANUP_BLOCKED, &message).await;
            let blocked = status::Deletion::Blocked(&message);
            write_status(context, ic, &status::deleting(ic.status.as_ref(), blocked, generation(ic), now())).await.ok();
            return Err(error);
        }
    }
    Ok(Action::await_change())
}

/// Whether `namespace` is being deleted; `None` when the server knows no such namespace.
async fn namespace_being_deleted(context: &Context, namespace: &str) -> Result<Option<bool>> {
    let namespaces: Api<Namespace> = Api::all(context.client.clone());
    Ok(namespaces.get_opt(namespace).await?.map(|n| n.metadata.deletion_timestamp.is_some()))
}

/// How long a cleanup in a namespace being deleted keeps trying (Milvus or the catalog not
/// answering) before it keeps the data and lets the object, and with it the namespace, go.
const CLEANUP_PATIENCE_IN_A_DELETED_NAMESPACE: Duration = Duration::from_secs(300);

/// Whether a blocked cleanup gives up, and if so what it kept. Only in a namespace being
/// deleted: the namespace controller deletes the Secrets cleanup needs and refuses new ones, and
/// waits on this object's finalizer for ever. A Secret it cannot read ends the cleanup at once
/// (nothing can bring it back); anything else after [`CLEANUP_PATIENCE_IN_A_DELETED_NAMESPACE`].
/// Elsewhere the cleanup waits, `CleanupBlocked` saying why, for someone to fix it.
async fn abandoned(ic: &ImageCollection, context: &Context, collection: &str, error: &Error) -> Result<Option<String>> {
    let namespace = ic.namespace().ok_or(Error::NoNamespace)?;
    // (A namespace already gone counts as being deleted: nothing can come back there.)
    if namespace_being_deleted(context, &namespace).await? == Some(false) {
        return Ok(None);
    }
    let waited = ic
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|since| Duration::try_from(now().0.duration_since(since.0)).ok())
        .unwrap_or(Duration::ZERO);
    let secret_gone = matches!(error, Error::Secret { .. });
    if !secret_gone && waited < CLEANUP_PATIENCE_IN_A_DELETED_NAMESPACE {
        return Ok(None);
    }
    let catalog = if ic.spec.catalog.is_some() { " and its catalog rows" } else { "" };
    Ok(Some(format!(
        "namespace {namespace} is being deleted and the cleanup cannot finish ({error}): the Milvus collection \
         {collection}{catalog} are kept, and the object goes so that the namespace can. Drop them by hand if they \
         are not wanted"
    )))
}

/// Deletes the collection's rescan CronJob, ingest Jobs and search Deployment (those this very
/// object owns), and returns how many of its pods are still running. The API server deletes
/// pods gracefully, so this is asked again until none is left.
async fn stop_workloads(ic: &ImageCollection, context: &Context) -> Result<usize> {
    let namespace = ic.namespace().ok_or(Error::NoNamespace)?;
    let selector = ListParams::default().labels(&format!("{LABEL_COLLECTION}={}", ic.name_any()));
    delete_owned(Api::<CronJob>::namespaced(context.client.clone(), &namespace), ic, &selector).await?;
    delete_owned(Api::<Job>::namespaced(context.client.clone(), &namespace), ic, &selector).await?;
    delete_owned(Api::<Deployment>::namespaced(context.client.clone(), &namespace), ic, &selector).await?;
    let pods: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let running = pods
        .list(&selector)
        .await?
        .items
        .iter()
        .filter(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .count();
    Ok(running)
}

async fn delete_owned<K>(api: Api<K>, ic: &ImageCollection, selector: &ListParams) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for object in api.list(selector).await?.items {
        if owned_by(&object, ic) && object.meta().deletion_timestamp.is_none() {
            match api.delete(&object.name_any(), &background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}

async fn purge(ic: &ImageCollection, context: &Context, collection: &str) -> Result<()> {
    // Every credential first: a cleanup that cannot finish must not have dropped half the data
    // (catalog rows that say "indexed" for vectors that are gone would be skipped by the next
    // ingest into a collection of that name).
    let catalog_url = catalog_url(ic, context).await?;
    // The catalog is reached before anything is dropped too: rows left "indexed" after their
    // collection went are what the comment above is about.
    let catalog = match &catalog_url {
        Some(url) => Some(crate::catalog::Catalog::open(url).await?),
        None => None,
    };
    let store = milvus_store(ic, context).await?;
    if store.has_collection(collection).await? {
        // Never another object's data, whatever names the spec or an old status gives.
        let owner = children::collection_owner(ic);
        if let Some(recorded) = store.owner(collection).await?.filter(|recorded| *recorded != owner.object) {
            let kept = format!(
                "Milvus collection {collection} belongs to ImageCollection {recorded}: it and its catalog rows are \
                 kept, and this object goes without dropping anything"
            );
            tracing::warn!(name = %ic.name_any(), %kept, "cleanup skipped");
            publish(context, ic, EventType::Warning, reasons::COLLECTION_KEPT, &kept).await;
            return Ok(());
        }
        store.drop_collection(collection).await?;
        publish(
            context,
            ic,
            EventType::Normal,
            reasons::COLLECTION_DROPPED,
            &format!("dropped Milvus collection {collection}"),
        )
        .await;
    }
    // Without a SQL catalog Milvus's rows were the record: they went with the collection.
    if let Some(catalog) = catalog {
        let rows = catalog.delete_collection(collection).await?;
        publish(
            context,
            ic,
            EventType::Normal,
            reasons::CATALOG_PURGED,
            &format!("deleted {rows} catalog rows of {collection}"),
        )
        .await;
    }
    Ok(())
}

/// The SQL catalog's URL from `spec.catalog.secretRef`, or `None` without one (no
/// `spec.catalog`, or a Secret that says "no SQL catalog").
async fn catalog_url(ic: &ImageCollection, context: &Context) -> Result<Option<String>> {
    let Some(catalog) = &ic.spec.catalog else { return Ok(None) };
    let field = "spec.catalog.secretRef";
    let name = &catalog.secret_ref.name;
    let data = secret_data(context, ic, field, name).await?;
    let url = data.get(children::CATALOG_SECRET_KEY).ok_or_else(|| Error::Secret {
        field,
        name: name.clone(),
        problem: "has no DATABASE_URL key".into(),
    })?;
    Ok((!crate::catalog::names_no_database(url)).then(|| url.clone()))
}

fn generation(ic: &ImageCollection) -> i64 {
    ic.metadata.generation.unwrap_or(0)
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn write_status(context: &Context, ic: &ImageCollection, status: &ImageCollectionStatus) -> Result<()> {
    let namespace = ic.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ImageCollection> = Api::namespaced(context.client.clone(), &namespace);
    let patch = json!({ "apiVersion": "imgsearch.io/v1alpha1", "kind": "ImageCollection", "status": status });
    api.patch_status(&ic.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// events.k8s.io/v1 refuses a note over 1 kB (1,024 bytes, not characters).
const EVENT_NOTE_MAX_BYTES: usize = 1024;

/// The longest prefix of `text` within `max` bytes that ends on a character boundary.
fn truncate_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

async fn publish(context: &Context, ic: &ImageCollection, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate_bytes(note, EVENT_NOTE_MAX_BYTES).to_string()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = context.recorder.publish(&event, &ic.object_ref(&())).await {
        tracing::debug!(%error, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collection_whose_milvus_stays_away_is_looked_at_less_often_up_to_two_minutes() {
        let after = |base: u64, streak| milvus_recheck(Duration::from_secs(base), streak).as_secs();
        let defaults: Vec<u64> = (0..=6).map(|streak| after(30, streak)).collect();
        assert_eq!(defaults, [30, 30, 60, 120, 120, 120, 120]);
        assert_eq!(after(1, 3), 4, "a test's short recheck backs off from itself");
        assert_eq!(after(300, 5), 300, "never sooner than the phase's own recheck");
        assert_eq!(after(30, u32::MAX), 120, "no overflow however long it stays away");
    }

    #[test]
    fn retries_back_off_from_five_seconds_to_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|failures| backoff(failures).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300), "no overflow however long it fails");
    }

    #[test]
    fn a_job_between_a_failed_pod_and_its_retry_is_not_finished() {
        let job = |status: serde_json::Value| -> Job {
            serde_json::from_value(serde_json::json!({ "metadata": { "name": "j" }, "status": status })).unwrap()
        };
        assert!(!finished(&job(serde_json::json!({ "failed": 1, "active": 0 }))), "a retry is coming");
        assert!(!finished(&job(serde_json::json!({ "active": 1 }))));
        let condition =
            |type_: &str, status: &str| serde_json::json!({ "conditions": [{ "type": type_, "status": status }] });
        assert!(finished(&job(condition("Complete", "True"))));
        assert!(finished(&job(condition("Failed", "True"))));
        assert!(!finished(&job(condition("Failed", "False"))));
        assert!(!finished(&job(condition("Suspended", "True"))));
    }

    #[test]
    fn a_child_is_claimed_only_when_imgsearch_made_it_for_a_collection_of_this_name() {
        let ic: ImageCollection = serde_json::from_value(serde_json::json!({
            "apiVersion": "imgsearch.io/v1alpha1", "kind": "ImageCollection",
            "metadata": { "name": "photos", "namespace": "ns", "uid": "u-now" },
            "spec": { "milvus": { "uri": "http://milvus:19530" }, "source": { "pvc": { "claimName": "photos" } } }
        }))
        .unwrap();
        let meta = |owner: serde_json::Value, labels: serde_json::Value| -> kube::api::ObjectMeta {
            serde_json::from_value(
                serde_json::json!({ "name": "photos-search", "ownerReferences": owner, "labels": labels }),
            )
            .unwrap()
        };
        let controller = |kind: &str, api: &str, name: &str, uid: &str| serde_json::json!([{ "apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": true }]);
        let ours = serde_json::json!({ "app.kubernetes.io/managed-by": MANAGER, LABEL_COLLECTION: "photos" });
        let api = ImageCollection::api_version(&());
        let none = serde_json::Value::Null;
        // This collection's, or an earlier collection of this name's (the collector is behind).
        assert_eq!(
            foreign_owner(&meta(controller("ImageCollection", &api, "photos", "u-now"), none.clone()), &ic),
            None
        );
        assert_eq!(
            foreign_owner(&meta(controller("ImageCollection", &api, "photos", "u-old"), none.clone()), &ic),
            None
        );
        let later = controller("ImageCollection", "imgsearch.io/v1", "photos", "u-old");
        assert_eq!(foreign_owner(&meta(later, none.clone()), &ic), None, "made by a controller of another version");
        // Left without an owner by `--cascade=orphan`, with imgsearch's labels for it.
        assert_eq!(foreign_owner(&meta(none.clone(), ours.clone()), &ic), None);
        // Anything else is someone else's.
        let other = ImageCollection::kind(&());
        for (owner, labels, why) in [
            (none.clone(), none.clone(), "it has no controller and not imgsearch's labels"),
            (none.clone(), serde_json::json!({ LABEL_COLLECTION: "photos" }), "it has no controller"),
            (controller(&other, &api, "albums", "u-2"), ours.clone(), "it is controlled by ImageCollection albums"),
            (controller("HelmRelease", "helm.x/v1", "photos", "u-3"), ours, "it is controlled by HelmRelease photos"),
            (controller(&other, "example.com/v1", "photos", "u-4"), none, "it is controlled by ImageCollection photos"),
        ] {
            let found = foreign_owner(&meta(owner, labels), &ic).unwrap_or_default();
            assert!(found.starts_with(why), "{found:?} should start with {why:?}");
        }
    }

    #[test]
    fn event_notes_are_cut_to_1024_bytes_on_a_character_boundary() {
        let ascii = "x".repeat(2000);
        assert_eq!(truncate_bytes(&ascii, EVENT_NOTE_MAX_BYTES).len(), 1024);
        // 'é' is 2 bytes and '€' 3: 1,023 bytes of 'x' then a character that would cross 1,024.
        for wide in ["é", "€", "😀"] {
            let text = format!("{}{}", "x".repeat(1023), wide.repeat(10));
            let cut = truncate_bytes(&text, EVENT_NOTE_MAX_BYTES);
            assert_eq!(cut, "x".repeat(1023), "{wide}: cut before the character, not inside it");
        }
        let many = "é".repeat(1000); // 2,000 bytes, 1,000 characters: a character limit would pass it
        assert_eq!(truncate_bytes(&many, EVENT_NOTE_MAX_BYTES).chars().count(), 512);
        assert_eq!(truncate_bytes("short", EVENT_NOTE_MAX_BYTES), "short");
    }
}
