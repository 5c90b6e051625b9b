//! The reconcile loop: kube-runtime's Controller over ImageCollections, owning their Jobs,
//! Deployments and Services. Each pass reaches the Milvus collection, applies each child on its
//! own, ensures and observes the ingest Job, looks at pods that do not start, and writes status;
//! the steps live in the controller's `milvus`, `serving`, `jobs` and `pods` modules, and
//! deletion in `cleanup`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PatchParams};
use kube::runtime::PredicateConfig;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, ResourceExt};

use super::children::{self, ChildConfig, LABEL_COLLECTION, MANAGER};
pub use super::error::{Error, Result};
use super::metrics::Metrics;
use super::observed::{ChildFailure, IngestObservation, MilvusObservation, Observed, SearchObservation};
use super::report::{generation, now, publish, write_status};
use super::status;
use super::{cleanup, jobs, milvus, pods, reasons, serving};
use crate::crd::ImageCollection;
use crate::shutdown::Shutdown;

pub const FINALIZER: &str = "imgsearch.io/cleanup";

/// The longest wait before a collection whose Milvus does not answer is looked at again (its
/// rechecks back off from `Recheck::not_ready`, doubling): nothing announces Milvus coming back.
const MILVUS_RECHECK_MAX: Duration = Duration::from_secs(120);

/// How often an object is looked at again when nothing announces a change. Owned objects wake
/// the controller on change; these timers catch what nothing announces: Milvus going away or
/// coming back, and the indexed count growing while an ingest runs (the controller's own status
/// writes do not wake it, see `wakes_the_controller`).
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

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub children: ChildConfig,
    pub metrics: Arc<Metrics>,
    pub recheck: Recheck,
    /// The Milvus connections, reused across reconciles.
    pub(super) milvus: milvus::Connections,
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
            Reporter { controller: MANAGER.into(), instance: std::env::var(crate::env::POD_NAME).ok() },
        );
        Arc::new(Self {
            client,
            recorder,
            children,
            metrics: Metrics::new(),
            recheck,
            milvus: milvus::Connections::default(),
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
            Finalizer::Cleanup(ic) => cleanup::cleanup(&ic, context).await,
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
    let params = PatchParams::apply(MANAGER).force();
    let milvus = observe_milvus(ic, context).await;
    let withheld = Withheld::by(&milvus);

    // Each child is applied on its own: one the API server refuses (or the spec cannot produce)
    // is reported in status and as an Event, and the others still get through.
    let mut failures = Vec::new();
    let search = children::search_name(&ic.name_any());
    let service = serving::apply_service(ic, context, &namespace, &params).await;
    settle(&mut failures, format!("Service {search}"), service);
    let deployment = serving::apply_deployment(ic, context, &namespace, &params, &withheld).await;
    let deployment = settle(&mut failures, format!("Deployment {search}"), deployment);
    let cronjob = match withheld.check() {
        Ok(()) => jobs::ensure_rescan_cronjob(ic, context, &namespace, &params).await,
        Err(refused) => Err(refused),
    };
    settle(&mut failures, format!("CronJob {}", children::rescan_cronjob_name(&ic.name_any())), cronjob);

    let jobs: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
    let selector = format!("{LABEL_COLLECTION}={}", ic.name_any());
    let listed = jobs.list(&ListParams::default().labels(&selector)).await?.items;
    // A namespace being deleted loses its pods first and its Jobs only once they are gone
    // (ordered namespace deletion). But a Job with per-shard retries keeps the job-tracking
    // finalizer on a shard's last failed pod until that shard's replacement exists, and a
    // namespace being deleted refuses new pods: each would wait for the other for ever. So the
    // controller ends the collection's workloads itself, and the Job controller lets the pods go.
    if listed.iter().any(|job| !jobs::finished(job))
        && cleanup::namespace_being_deleted(context, &namespace).await? == Some(true)
    {
        tracing::info!(name = %ic.name_any(), %namespace, "the namespace is being deleted: stopping the collection's workloads");
        cleanup::stop_workloads(ic, context).await?;
        return Ok(Action::requeue(context.recheck.not_ready));
    }
    let mut ingest = observe_ingest(ic, context, &namespace, &params, &withheld, listed, &mut failures).await?;
    let search = serving::observe(ic, deployment, &mut failures);
    report_pods_not_starting(ic, context, &namespace, &search, &mut ingest, &mut failures).await;

    let observed =
        Observed { generation: generation(ic), collection: ic.milvus_collection(), milvus, ingest, search, failures };
    write_observed(ic, context, &observed).await
}

/// The Milvus collection ensured, as status reports it; a failure is also a Warning Event.
async fn observe_milvus(ic: &ImageCollection, context: &Context) -> MilvusObservation {
    match milvus::ensure_collection(ic, context, &ic.milvus_collection()).await {
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
    }
}

/// Why no pod of the collection may be made this pass, if one must not be. Pods get the Milvus
/// Secret's keys and send them to `spec.milvus.uri`: none is made while the Secret does not name
/// that address (the controller would be the confused deputy). Nor while the Milvus collection
/// is another object's: the pods would write to it and prune it.
#[derive(Debug, Clone)]
pub(super) struct Withheld(Option<(&'static str, String)>);

impl Withheld {
    fn by(milvus: &MilvusObservation) -> Self {
        Self(match milvus {
            MilvusObservation::Failed { reason: reason @ reasons::SECRET_NOT_BOUND, message } => {
                Some((*reason, format!("its pods would get the Milvus Secret's credentials. {message}")))
            }
            MilvusObservation::Failed { reason: reason @ reasons::COLLECTION_TAKEN, message } => {
                Some((*reason, format!("its pods would write to another object's collection. {message}")))
            }
            _ => None,
        })
    }

    /// [`Error::Withheld`] when pods must not be made.
    pub(super) fn check(&self) -> Result<()> {
        match &self.0 {
            None => Ok(()),
            Some((reason, why)) => Err(Error::Withheld { reason, why: why.clone() }),
        }
    }
}

/// The ingest of the current spec: its Job ensured (unless withheld), finished Jobs of older
/// generations pruned, and the newest ingest Job (this generation's, or a later scheduled
/// rescan) observed. `listed` are the collection's Jobs as listed this pass.
async fn observe_ingest(
    ic: &ImageCollection,
    context: &Context,
    namespace: &str,
    params: &PatchParams,
    withheld: &Withheld,
    listed: Vec<Job>,
    failures: &mut Vec<ChildFailure>,
) -> Result<IngestObservation> {
    let job_name = children::ingest_job_name(ic).unwrap_or_else(|_| "of this generation".into());
    let job = match withheld.check() {
        Ok(()) => jobs::ensure_ingest_job(ic, context, namespace, params, &listed).await,
        Err(refused) => Err(refused),
    };
    let generation_job = settle(failures, format!("Job {job_name}"), job).flatten();
    let remaining = jobs::prune_jobs(ic, context, namespace, generation(ic), listed, generation_job.as_ref()).await?;
    let latest = remaining.into_iter().chain(generation_job).max_by(|a, b| {
        (a.metadata.creation_timestamp.as_ref().map(|t| t.0), a.name_any())
            .cmp(&(b.metadata.creation_timestamp.as_ref().map(|t| t.0), b.name_any()))
    });
    let Some(latest) = latest else {
        return Ok(if ic.spec.suspend {
            IngestObservation::Suspended
        } else if failures.iter().any(|f| f.object.starts_with("Job ")) {
            IngestObservation::NotCreated {
                message: "the ingest Job could not be created (see the Stalled condition)".into(),
            }
        } else {
            IngestObservation::Unsupported { message: "spec.source sets none of pvc, s3 or urls".into() }
        });
    };
    let ingest = jobs::observe_job(context, namespace, &latest).await?;
    // Pods refused before they exist (a ResourceQuota, LimitRange, PodSecurity, a webhook)
    // leave a Job that looks as if it runs: only the Job controller's Events say otherwise.
    if let IngestObservation::Running { job, .. } = &ingest
        && let Some(refusal) = pods::job_pods_refused(context, namespace, &latest).await
    {
        let message = format!("the Job controller cannot create its pods: {refusal}");
        failures.push(ChildFailure {
            object: format!("Job {job}"),
            reason: reasons::PODS_NOT_CREATED,
            message: message.clone(),
        });
        return Ok(IngestObservation::NotStarting { job: job.clone(), message });
    }
    Ok(ingest)
}

/// Pods that cannot start (a Secret, claim or image missing) keep a Job "running" and a
/// Deployment unavailable, or its rollout unfinished behind the old pods, forever: their
/// waiting reasons say what is wrong. They are looked for only while something waits on pods.
async fn report_pods_not_starting(
    ic: &ImageCollection,
    context: &Context,
    namespace: &str,
    search: &SearchObservation,
    ingest: &mut IngestObservation,
    failures: &mut Vec<ChildFailure>,
) {
    let current_job = match &*ingest {
        IngestObservation::Running { job, .. } => Some(job.clone()),
        _ => None,
    };
    if current_job.is_none() && search.available >= search.desired && search.rolling_out.is_none() {
        return;
    }
    let stuck = pods::pods_not_starting(ic, context, namespace, current_job.as_deref()).await;
    if let Some(job) = current_job {
        let of_job: Vec<&ChildFailure> =
            stuck.iter().filter(|(job_name, _)| job_name.as_ref() == Some(&job)).map(|(_, f)| f).collect();
        if let Some(first) = of_job.first() {
            let message = format!("{} of its pods cannot start; {}: {}", of_job.len(), first.object, first.message);
            *ingest = IngestObservation::NotStarting { job, message };
        }
    }
    failures.extend(stuck.into_iter().map(|(_, failure)| failure));
}

/// Status computed from what this pass observed, written, and its transitions told as Events;
/// returns when to look again (later the longer Milvus stays away).
async fn write_observed(ic: &ImageCollection, context: &Context, observed: &Observed) -> Result<Action> {
    // A Milvus that does not answer is asked less often the longer it stays away (per object).
    let unreachable_key = format!("milvus {}", object_key(ic));
    let milvus_streak = match &observed.milvus {
        MilvusObservation::Failed { .. } => context.failed(unreachable_key),
        MilvusObservation::Ready { .. } => {
            context.succeeded(&unreachable_key);
            0
        }
    };
    let status = status::compute(observed, ic.status.as_ref(), now());
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
}
