//! Status from observations, as a pure function: what the controller saw of Milvus, the ingest
//! Job and the search Deployment becomes conditions, a phase and counts.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::reasons::{
    AVAILABLE, CHILD_REASONS, CLEANUP_BLOCKED, COLLECTION_LOADED, DELETING, INDEX_BUILT, INGEST_COMPLETED,
    INGEST_FAILED, INGESTING, JOB_FAILED, JOB_NOT_CREATED, JOB_RUNNING, JOB_SUCCEEDED, NOT_BLOCKED, NOT_READY,
    POD_NOT_STARTING, POD_REASONS, PODS_NOT_CREATED, PODS_NOT_STARTING, PROGRESSING, READY as READY_REASON,
    RESCAN_RUNNING, ROLLING_OUT, ROLLOUT_STUCK, STOPPING_PODS, SUSPENDED, UNAVAILABLE, UNSUPPORTED_SOURCE,
};
use crate::crd::conditions::*;
use crate::crd::{ImageCollectionStatus, ImageCounts, LastIngest, Phase};

/// How the collection's Milvus side looked during this reconcile.
#[derive(Debug, Clone, PartialEq)]
pub enum MilvusObservation {
    /// Collection exists with its index and is loaded; `rows` vectors are searchable.
    Ready { rows: u64 },
    /// Could not be made ready; the message says why.
    Failed { reason: &'static str, message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum IngestObservation {
    /// `suspend: true` and no Job for this generation.
    Suspended,
    Running {
        job: String,
        started_at: Option<Time>,
        /// Made by the rescan CronJob, not for a spec change.
        scheduled: bool,
    },
    Succeeded {
        job: String,
        started_at: Option<Time>,
        completed_at: Option<Time>,
        /// What the Job's pods reported; `None` when no summary could be read back.
        totals: Option<IngestTotals>,
    },
    Failed {
        job: String,
        message: String,
        /// Made by the rescan CronJob: the next scheduled run tries again.
        scheduled: bool,
    },
    /// This generation's Job could not be created; a [`ChildFailure`] says why.
    NotCreated { message: String },
    /// The Job exists but its pods have not started within the grace period (a missing Secret,
    /// claim or image); a [`ChildFailure`] per pod says why.
    NotStarting { job: String, message: String },
    /// The spec's source cannot be ingested by this version.
    Unsupported { message: String },
}

/// The ingest summaries of one Job's shards, added up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestTotals {
    /// Shards whose summary was read.
    pub shards: u32,
    pub discovered: u64,
    pub indexed: u64,
    pub skipped: u64,
    pub failed: u64,
    /// The slowest shard's time: shards run side by side.
    pub seconds: f64,
}

impl IngestTotals {
    pub fn describe(&self) -> String {
        format!(
            "{} images found, {} indexed, {} unchanged, {} failed in {:.0} s ({} shard{})",
            self.discovered,
            self.indexed,
            self.skipped,
            self.failed,
            self.seconds,
            self.shards,
            if self.shards == 1 { "" } else { "s" }
        )
    }
}

const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

fn terminated(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStateTerminated> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let ingest = statuses.iter().find(|c| c.name == super::children::INGEST_CONTAINER)?;
    ingest.state.as_ref()?.terminated.as_ref()
}

/// Adds up the summaries the ingest pods of one Job left as termination messages: one per
/// completion index (a retried shard counts once, by its successful pod). `None` if none parses.
pub fn ingest_totals(pods: &[Pod]) -> Option<IngestTotals> {
    let mut by_shard: BTreeMap<String, crate::ingest::IngestReport> = BTreeMap::new();
    for pod in pods {
        let Some(state) = terminated(pod).filter(|t| t.exit_code == 0) else { continue };
        let Some(report) = state.message.as_deref().and_then(|m| serde_json::from_str(m).ok()) else { continue };
        let meta = &pod.metadata;
        let index = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(COMPLETION_INDEX))
            .or_else(|| meta.labels.as_ref().and_then(|l| l.get(COMPLETION_INDEX)))
            .cloned()
            .unwrap_or_default();
        by_shard.insert(index, report);
    }
    if by_shard.is_empty() {
        return None;
    }
    let mut totals = IngestTotals::default();
    for report in by_shard.values() {
        totals.shards += 1;
        totals.discovered += report.discovered;
        totals.indexed += report.indexed;
        totals.skipped += report.skipped;
        totals.failed += report.failed;
        totals.seconds = totals.seconds.max(report.seconds);
    }
    Some(totals)
}

/// Why a failed ingest pod failed, from its termination message (its summary, or its log's
/// tail when it crashed), shortened for a condition message.
pub fn pod_failure(pods: &[Pod]) -> Option<String> {
    pods.iter().find_map(|pod| {
        let state = terminated(pod).filter(|t| t.exit_code != 0)?;
        let message = state.message.as_deref().map(str::trim).filter(|m| !m.is_empty())?;
        let tail: String = message.chars().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
        Some(format!("pod {} exited with {}: {tail}", pod.metadata.name.as_deref().unwrap_or("?"), state.exit_code))
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchObservation {
    pub desired: i32,
    pub available: i32,
    pub endpoint: String,
    /// What a rollout of the search Deployment still waits for; `None` once it is complete.
    pub rolling_out: Option<String>,
}

/// The search Deployment as kstatus reads a Deployment: whether a rollout is still under way,
/// and whether it failed (`ProgressDeadlineExceeded`) or its ReplicaSet cannot create pods
/// (`ReplicaFailure`, e.g. refused by a ResourceQuota). Old pods may be serving meanwhile:
/// `availableReplicas` alone hides a broken new template behind the previous ReplicaSet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentHealth {
    pub rolling_out: Option<String>,
    /// `(Stalled reason, the Deployment controller's message)`.
    pub failure: Option<(&'static str, String)>,
}

pub fn deployment_health(deployment: &Deployment) -> DeploymentHealth {
    let Some(status) = deployment.status.as_ref() else {
        return DeploymentHealth {
            rolling_out: Some("not yet observed by the Deployment controller".into()),
            failure: None,
        };
    };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let condition = |type_: &str| conditions.iter().find(|c| c.type_.as_deref() == Some(type_));
    let failure = if let Some(stuck) =
        condition("Progressing").filter(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
    {
        Some((ROLLOUT_STUCK, stuck.message.clone().unwrap_or_else(|| "progress deadline exceeded".into())))
    } else {
        condition("ReplicaFailure").filter(|c| c.status.as_deref() == Some("True")).map(|c| {
            (PODS_NOT_CREATED, c.message.clone().unwrap_or_else(|| "its ReplicaSet cannot create pods".into()))
        })
    };
    let wanted = deployment.spec.replicas.unwrap_or(1);
    let (replicas, updated, ready, available) = (
        status.replicas.unwrap_or(0),
        status.updated_replicas.unwrap_or(0),
        status.ready_replicas.unwrap_or(0),
        status.available_replicas.unwrap_or(0),
    );
    let generation = deployment.metadata.generation.unwrap_or(0);
    // kstatus' order: the first thing still awaited is the one said.
    let rolling_out = if deployment.metadata.deletion_timestamp.is_some() {
        // kstatus: an object scheduled for deletion is in progress. The controller makes the
        // search Deployment again once it is gone.
        Some("the Deployment is being deleted and made again".to_string())
    } else if status.observed_generation.unwrap_or(0) < generation {
        Some("the Deployment controller has not seen the new template yet".to_string())
    } else if wanted > replicas {
        Some(format!("replicas {replicas} of {wanted}"))
    } else if wanted > updated {
        Some(format!("updated {updated} of {wanted}"))
    } else if replicas > wanted {
        Some(format!("{} old replicas terminating", replicas - wanted))
    } else if updated > available {
        Some(format!("available {available} of {updated} updated"))
    } else if wanted > ready {
        Some(format!("ready {ready} of {wanted}"))
    } else {
        None
    };
    DeploymentHealth { rolling_out: rolling_out.map(|r| format!("search Deployment rolling out: {r}")), failure }
}

/// A child object the spec cannot produce or the API server refused. The other children are
/// still applied; this one is reported until a reconcile gets it through.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildFailure {
    /// Kind and name, e.g. `Service photos-search`.
    pub object: String,
    /// `InvalidSpec` (the spec cannot produce it), `ChildRejected` (the API server refused it,
    /// e.g. 422), `StaleChild` (one of the same name left by an earlier object is still being
    /// deleted), `ApiUnavailable` (no answer): the Stalled condition's reason.
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub generation: i64,
    pub collection: String,
    pub milvus: MilvusObservation,
    pub ingest: IngestObservation,
    pub search: SearchObservation,
    pub failures: Vec<ChildFailure>,
}

/// One line for a condition message: each failing object with its cause; objects failing for
/// the same cause (an invalid name breaks them all) share it.
fn describe_failures(failures: &[ChildFailure]) -> String {
    let mut grouped: Vec<(Vec<&str>, &str)> = Vec::new();
    for failure in failures {
        match grouped.iter_mut().find(|(_, message)| *message == failure.message) {
            Some((objects, _)) => objects.push(&failure.object),
            None => grouped.push((vec![&failure.object], &failure.message)),
        }
    }
    grouped.iter().map(|(objects, message)| format!("{}: {message}", objects.join(", "))).collect::<Vec<_>>().join("; ")
}

/// The status to write. Conditions whose status did not change keep their lastTransitionTime.
pub fn compute(observed: &Observed, previous: Option<&ImageCollectionStatus>, now: Time) -> ImageCollectionStatus {
    let generation = observed.generation;
    let mut conditions = Vec::new();
    let mut set = |type_: &str, ok: bool, reason: &str, message: String| {
        conditions.push(condition(
            previous,
            type_,
            if ok { "True" } else { "False" },
            reason,
            message,
            generation,
            &now,
        ));
    };

    let (milvus_ok, rows) = match &observed.milvus {
        MilvusObservation::Ready { rows } => {
            set(
                COLLECTION_READY,
                true,
                COLLECTION_LOADED,
                format!("Milvus collection {} exists and is loaded", observed.collection),
            );
            set(INDEX_READY, true, INDEX_BUILT, "HNSW index built".into());
            (true, Some(*rows))
        }
        MilvusObservation::Failed { reason, message } => {
            set(COLLECTION_READY, false, reason, message.clone());
            set(INDEX_READY, false, reason, "waiting for the collection".into());
            (false, None)
        }
    };

    let mut ingest_failure = None;
    let (ingesting, ingest_failed, last_ingest) = match &observed.ingest {
        IngestObservation::Suspended => {
            set(INGESTED, false, SUSPENDED, "spec.suspend is true: no ingest Job is started".into());
            (false, false, None)
        }
        // A scheduled rescan of a collection this spec already ingested is upkeep, not work
        // toward the spec: Reconciling stays False and the phase Ready, so GitOps health does
        // not flip every night. Ingested stays True with its own reason, for progress and for
        // the IngestCompleted Event when it ends; lastIngest keeps the last completed run.
        IngestObservation::Running { job, started_at: _, scheduled: true }
            if already_ingested(previous, generation) =>
        {
            let last = previous.and_then(|p| p.last_ingest.as_ref()).map_or("an earlier ingest", |l| l.job.as_str());
            set(
                INGESTED,
                true,
                RESCAN_RUNNING,
                format!("scheduled rescan Job {job} is running; searches use what {last} indexed meanwhile"),
            );
            (false, false, None)
        }
        IngestObservation::Running { job, started_at, .. } => {
            set(INGESTED, false, JOB_RUNNING, format!("ingest Job {job} is running"));
            (
                true,
                false,
                Some(LastIngest {
                    job: job.clone(),
                    started_at: started_at.clone(),
                    completed_at: None,
                    summary: None,
                }),
            )
        }
        IngestObservation::Succeeded { job, started_at, completed_at, totals } => {
            let summary = totals.as_ref().map(IngestTotals::describe);
            let message = match &summary {
                Some(summary) => format!("ingest Job {job} completed: {summary}"),
                None => format!("ingest Job {job} completed (its pods left no summary)"),
            };
            set(INGESTED, true, JOB_SUCCEEDED, message);
            (
                false,
                false,
                Some(LastIngest {
                    job: job.clone(),
                    started_at: started_at.clone(),
                    completed_at: completed_at.clone(),
                    summary,
                }),
            )
        }
        IngestObservation::Failed { job, message, scheduled } => {
            let said = if *scheduled {
                format!("scheduled rescan Job {job} failed (the next scheduled run tries again): {message}")
            } else {
                format!(
                    "ingest Job {job} failed: {message}; once the cause is fixed, set the annotation {} to a new value to run it again",
                    super::children::ANNOTATION_RETRY_INGEST
                )
            };
            // A failed rescan is told (Degraded, a Warning Event) but stalls nothing: the
            // schedule retries it without anyone's help.
            if !*scheduled {
                ingest_failure = Some((INGEST_FAILED, said.clone()));
            }
            set(INGESTED, false, JOB_FAILED, said);
            (
                false,
                true,
                Some(LastIngest {
                    job: job.clone(),
                    started_at: None,
                    completed_at: None,
                    summary: Some(message.clone()),
                }),
            )
        }
        IngestObservation::NotCreated { message } => {
            set(INGESTED, false, JOB_NOT_CREATED, message.clone());
            (false, false, None)
        }
        IngestObservation::NotStarting { job, message } => {
            set(INGESTED, false, PODS_NOT_STARTING, format!("ingest Job {job} cannot start: {message}"));
            (false, true, None)
        }
        IngestObservation::Unsupported { message } => {
            ingest_failure = Some((UNSUPPORTED_SOURCE, message.clone()));
            set(INGESTED, false, UNSUPPORTED_SOURCE, message.clone());
            (false, true, None)
        }
    };

    let search = &observed.search;
    let search_ok = search.desired == 0 || search.available >= 1;
    set(
        SEARCH_READY,
        search_ok,
        if search_ok { AVAILABLE } else { UNAVAILABLE },
        format!("{} of {} search replicas available", search.available, search.desired),
    );

    // A search Service or Deployment that could not be applied leaves nothing to search through
    // (pods that cannot start or be created are another matter: older ones may serve).
    let search_child_failed = observed.failures.iter().any(|f| {
        (f.object.starts_with("Service ") || f.object.starts_with("Deployment ")) && !POD_REASONS.contains(&f.reason)
    });
    let ready = milvus_ok && search_ok && search.desired > 0 && !search_child_failed;
    let ready_message = if ready {
        format!("searchable at {}", search.endpoint)
    } else if !milvus_ok {
        "the Milvus collection is not ready".to_string()
    } else if search_child_failed {
        "the search Service or Deployment could not be applied (see the Stalled condition)".to_string()
    } else {
        "the search service is not available".to_string()
    };
    set(READY, ready, if ready { READY_REASON } else { NOT_READY }, ready_message);
    // kstatus: Reconciling while work is in flight, Stalled when it cannot progress on its own.
    // Stalled says what blocks progress: children first (nothing else can fix them), then
    // Milvus, then the ingest Job.
    let stalled_by = if let Some(first) = observed.failures.first() {
        Some((first.reason, describe_failures(&observed.failures)))
    } else if let MilvusObservation::Failed { reason, message } = &observed.milvus {
        Some((*reason, message.clone()))
    } else {
        ingest_failure
    };
    let stalled = stalled_by.is_some();
    let rolling_out = search.rolling_out.as_ref().filter(|_| !stalled);
    let reconciling = ingesting || rolling_out.is_some() || (!ready && !stalled);
    let (reason, message) = match rolling_out {
        _ if ingesting => (INGESTING, String::new()),
        Some(rollout) => (ROLLING_OUT, rollout.clone()),
        None => (PROGRESSING, String::new()),
    };
    set(RECONCILING, reconciling, reason, message);
    match stalled_by {
        Some((reason, message)) => set(STALLED, true, reason, message),
        None => set(STALLED, false, NOT_BLOCKED, String::new()),
    }

    let phase = if !milvus_ok {
        Phase::Failed // nothing can be searched or written until Milvus answers
    } else if ingesting {
        Phase::Ingesting
    } else if ingest_failed || !observed.failures.is_empty() {
        if ready { Phase::Degraded } else { Phase::Failed }
    } else if ready {
        Phase::Ready
    } else {
        Phase::Pending
    };
    ImageCollectionStatus {
        observed_generation: Some(generation),
        phase: Some(phase),
        conditions,
        images: match rows {
            Some(indexed) => {
                // Failed and skipped come from the last completed ingest; until one reports,
                // they stay as they were (absent = unknown, never a made-up zero).
                let previous = previous.and_then(|p| p.images.clone()).unwrap_or_default();
                let (failed, skipped) = match &observed.ingest {
                    IngestObservation::Succeeded { totals: Some(totals), .. } => {
                        (Some(count(totals.failed)), Some(count(totals.skipped)))
                    }
                    _ => (previous.failed, previous.skipped),
                };
                Some(ImageCounts { indexed: count(indexed), failed, skipped, stale: None })
            }
            // Milvus did not answer: the last counts seen stay, marked stale, rather than
            // vanishing (under server-side apply an absent field is removed).
            None => previous.and_then(|p| p.images.clone()).map(|images| ImageCounts { stale: Some(true), ..images }),
        },
        last_ingest: last_ingest.or_else(|| previous.and_then(|p| p.last_ingest.clone())),
        search_endpoint: Some(search.endpoint.clone()),
        collection_name: Some(observed.collection.clone()),
    }
}

/// Whether the previous status says this generation's ingest completed: a scheduled rescan
/// after that is upkeep.
fn already_ingested(previous: Option<&ImageCollectionStatus>, generation: i64) -> bool {
    previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == INGESTED))
        .is_some_and(|c| c.status == "True" && c.observed_generation == Some(generation))
}

/// Container waiting reasons that mean the container is not about to start: each needs someone
/// to fix something (a Secret, an image reference, a registry credential, the program itself).
/// `ContainerCreating` and `PodInitializing` are normal steps and not among them (see
/// [`STEPS_THAT_CAN_HANG`]).
const WAITING_ON_SOMEONE: [&str; 7] = [
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CrashLoopBackOff",
];

/// Normal steps that hang when something is wrong (a volume that cannot be mounted: a
/// ConfigMap or Secret missing, a disk attached elsewhere), saying so only in the kubelet's
/// Events (`FailedMount`, `FailedAttachVolume`): reported once the grace period has passed, with
/// the pod's latest Warning Event (see [`with_kubelet_event`]).
pub const STEPS_THAT_CAN_HANG: [&str; 2] = ["ContainerCreating", "PodInitializing"];

/// Why `pod` has not started, once it has been trying for `grace`: a container waiting for one
/// of [`WAITING_ON_SOMEONE`], or the scheduler unable to place it (a missing claim, no node
/// with room). `None` for a pod that runs, finished, is being deleted, or is still within its
/// grace period (an image pull that fails once may succeed on the next try).
pub fn not_starting(pod: &Pod, now: &Time, grace: std::time::Duration) -> Option<ChildFailure> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let created = pod.metadata.creation_timestamp.as_ref()?;
    let waited = now.0.duration_since(created.0);
    let waited = std::time::Duration::try_from(waited).unwrap_or_default();
    if waited < grace {
        return None;
    }
    let after = format!("for {} s", waited.as_secs());
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"));
    if let Some(condition) = unschedulable {
        let message = condition.message.clone().unwrap_or_default();
        return Some(ChildFailure {
            object: format!("Pod {name}"),
            reason: POD_NOT_STARTING,
            message: format!("cannot be scheduled {after}: {message}"),
        });
    }
    let containers = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    for container in containers {
        let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else { continue };
        let Some(reason) =
            waiting.reason.as_deref().filter(|r| WAITING_ON_SOMEONE.contains(r) || STEPS_THAT_CAN_HANG.contains(r))
        else {
            continue;
        };
        let hint = match reason {
            "ErrImagePull" | "ImagePullBackOff" => " (a private registry needs its Secret in spec.imagePullSecrets)",
            "ErrImageNeverPull" => " (imagePullPolicy Never and the image is not on the node)",
            "CreateContainerConfigError" => " (a Secret or key the spec names is missing)",
            _ => "",
        };
        return Some(ChildFailure {
            object: format!("Pod {name}"),
            reason: POD_NOT_STARTING,
            message: format!(
                "container {} waiting {after}: {reason}: {}{hint}",
                container.name,
                waiting.message.clone().unwrap_or_default()
            ),
        });
    }
    None
}

/// `failure` (of a pod stuck in one of [`STEPS_THAT_CAN_HANG`]) with what the kubelet said
/// about the pod last: the reason and message of its latest Warning Event, if any.
pub fn with_kubelet_event(mut failure: ChildFailure, events: &[k8s_openapi::api::core::v1::Event]) -> ChildFailure {
    let latest = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .max_by_key(|e| e.last_timestamp.as_ref().or(e.first_timestamp.as_ref()).map(|t| t.0));
    if let Some(event) = latest {
        let reason = event.reason.as_deref().unwrap_or_default();
        let message = event.message.as_deref().unwrap_or_default();
        failure.message = format!("{}; the kubelet: {reason}: {message}", failure.message.trim_end_matches([':', ' ']));
    }
    failure
}

/// Events worth telling when status moves: an ingest finishing or failing, the collection
/// becoming searchable or stopping to be. Nothing when a condition merely stays as it was.
pub fn transitions(
    previous: Option<&ImageCollectionStatus>,
    next: &ImageCollectionStatus,
) -> Vec<(kube::runtime::events::EventType, String, String)> {
    use kube::runtime::events::EventType::{Normal, Warning};
    let find = |status: Option<&ImageCollectionStatus>, type_: &str| {
        status
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    let mut events = Vec::new();
    let changed = |type_: &str| {
        let now = find(Some(next), type_);
        (find(previous, type_) != now).then_some(now).flatten()
    };
    let message = |type_: &str| next.conditions.iter().find(|c| c.type_ == type_).map(|c| c.message.clone());
    match changed(INGESTED) {
        Some((_, reason)) if reason == JOB_SUCCEEDED => {
            events.push((Normal, INGEST_COMPLETED.into(), message(INGESTED).unwrap_or_default()))
        }
        Some((_, reason)) if reason == JOB_FAILED => {
            events.push((Warning, INGEST_FAILED.into(), message(INGESTED).unwrap_or_default()))
        }
        _ => {}
    }
    // A child that cannot be applied is news each time the cause changes, not every reconcile.
    let stalled = |status: Option<&ImageCollectionStatus>| {
        status
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == STALLED))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    if let Some((status, reason, message)) = stalled(Some(next)).filter(|now| Some(now) != stalled(previous).as_ref())
        && status == "True"
        && CHILD_REASONS.contains(&reason.as_str())
    {
        events.push((Warning, reason, message));
    }
    match changed(READY) {
        Some((status, _)) if status == "True" => {
            events.push((Normal, READY_REASON.into(), message(READY).unwrap_or_default()))
        }
        // Not ready from the start is the normal beginning, not news.
        Some((status, _)) if status == "False" && find(previous, READY).is_some_and(|(s, _)| s == "True") => {
            events.push((Warning, NOT_READY.into(), message(READY).unwrap_or_default()))
        }
        _ => {}
    }
    events
}

/// Status while the object is being deleted and its data cannot be removed yet (`blocked`
/// says why): phase Deleting, not Ready, Stalled; counts and history kept as they were.
/// Where a deletion with `deletionPolicy: Delete` stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deletion<'a> {
    /// Waiting for the collection's pods to stop before its data goes (they would write to it).
    Stopping(&'a str),
    /// The data cannot be removed yet; the message says why.
    Blocked(&'a str),
}

pub fn deleting(
    previous: Option<&ImageCollectionStatus>,
    step: Deletion<'_>,
    generation: i64,
    now: Time,
) -> ImageCollectionStatus {
    let mut status = previous.cloned().unwrap_or_default();
    let blocked = matches!(step, Deletion::Blocked(_));
    let (reason, message) = match step {
        Deletion::Blocked(why) => (CLEANUP_BLOCKED, why.to_string()),
        Deletion::Stopping(what) => (STOPPING_PODS, what.to_string()),
    };
    let replaced = [
        condition(previous, READY, "False", reason, message.clone(), generation, &now),
        condition(previous, STALLED, if blocked { "True" } else { "False" }, reason, message, generation, &now),
        condition(previous, RECONCILING, "True", DELETING, String::new(), generation, &now),
    ];
    status.conditions.retain(|c| !replaced.iter().any(|r| r.type_ == c.type_));
    status.conditions.extend(replaced);
    status.phase = Some(Phase::Deleting);
    status
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn condition(
    previous: Option<&ImageCollectionStatus>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) -> Condition {
    let unchanged_since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: Some(generation),
        last_transition_time: unchanged_since.unwrap_or_else(|| now.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).expect("valid time"))
    }

    fn observed(milvus: MilvusObservation, ingest: IngestObservation, available: i32) -> Observed {
        Observed {
            generation: 2,
            collection: "shop_products".into(),
            milvus,
            ingest,
            search: SearchObservation {
                desired: 2,
                available,
                endpoint: "http://products-search.shop.svc:8080".into(),
                rolling_out: None,
            },
            failures: Vec::new(),
        }
    }

    #[test]
    fn a_child_that_cannot_be_applied_stalls_the_collection_with_its_name_and_the_servers_words() {
        let mut seen = observed(
            MilvusObservation::Ready { rows: 10 },
            IngestObservation::Running { job: "products-ingest-g2".into(), started_at: None, scheduled: false },
            2,
        );
        seen.failures = vec![ChildFailure {
            object: "CronJob products-rescan".into(),
            reason: "ChildRejected",
            message: "CronJob.batch \"products-rescan\" is invalid: [spec.schedule: Invalid value]".into(),
        }];
        let status = compute(&seen, None, time(100));
        let stalled = get(&status, STALLED);
        assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "ChildRejected"));
        assert!(stalled.message.starts_with("CronJob products-rescan: CronJob.batch"), "{}", stalled.message);
        assert_eq!(get(&status, READY).status, "True", "a rescan CronJob does not stop search");
        assert_eq!(get(&status, INGESTED).reason, "JobRunning", "nor the ingest Job");
        let events = transitions(None, &status);
        assert!(
            events.iter().any(|(_, reason, message)| reason == "ChildRejected" && message.contains("products-rescan"))
        );
        assert!(transitions(Some(&status), &status).is_empty(), "the same failure is not told twice");

        // An invalid name breaks every child for the same reason: said once, naming them all.
        let message = "metadata.name \"2024\" must start with a lowercase letter".to_string();
        seen.failures = ["Service 2024-search", "Deployment 2024-search"]
            .map(|object| ChildFailure { object: object.into(), reason: "InvalidSpec", message: message.clone() })
            .to_vec();
        let status = compute(&seen, None, time(100));
        assert_eq!(get(&status, STALLED).message, format!("Service 2024-search, Deployment 2024-search: {message}"));
        assert_eq!(get(&status, READY).status, "False", "without its Service nothing can be searched");
    }

    fn get<'a>(status: &'a ImageCollectionStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} condition"))
    }

    #[test]
    fn ready_when_the_collection_is_loaded_and_search_is_available() {
        let status = compute(
            &observed(
                MilvusObservation::Ready { rows: 120 },
                IngestObservation::Succeeded {
                    job: "j".into(),
                    started_at: None,
                    completed_at: None,
                    totals: Some(IngestTotals {
                        shards: 2,
                        discovered: 130,
                        indexed: 100,
                        skipped: 20,
                        failed: 10,
                        seconds: 4.0,
                    }),
                },
                2,
            ),
            None,
            time(100),
        );
        assert_eq!(status.phase, Some(Phase::Ready));
        assert_eq!(get(&status, READY).status, "True");
        assert_eq!(get(&status, STALLED).status, "False");
        let images = status.images.clone().expect("counts");
        assert_eq!((images.indexed, images.failed, images.skipped), (120, Some(10), Some(20)));
        assert_eq!(
            status.last_ingest.and_then(|l| l.summary).as_deref(),
            Some("130 images found, 100 indexed, 20 unchanged, 10 failed in 4 s (2 shards)")
        );
        assert_eq!(status.observed_generation, Some(2));
    }

    #[test]
    fn without_a_summary_failed_and_skipped_stay_unknown_not_zero() {
        let status = compute(
            &observed(
                MilvusObservation::Ready { rows: 7 },
                IngestObservation::Succeeded { job: "j".into(), started_at: None, completed_at: None, totals: None },
                2,
            ),
            None,
            time(100),
        );
        assert_eq!(status.images.clone().map(|i| (i.indexed, i.failed, i.skipped)), Some((7, None, None)));
        assert!(get(&status, INGESTED).message.contains("left no summary"));
    }

    #[test]
    fn events_are_told_on_transitions_only() {
        let running = compute(
            &observed(
                MilvusObservation::Ready { rows: 1 },
                IngestObservation::Running { job: "j".into(), started_at: None, scheduled: false },
                0,
            ),
            None,
            time(1),
        );
        assert!(transitions(None, &running).is_empty(), "starting out not ready is no news");
        let done = compute(
            &observed(
                MilvusObservation::Ready { rows: 3 },
                IngestObservation::Succeeded { job: "j".into(), started_at: None, completed_at: None, totals: None },
                2,
            ),
            Some(&running),
            time(2),
        );
        let reasons: Vec<String> = transitions(Some(&running), &done).into_iter().map(|e| e.1).collect();
        assert_eq!(reasons, ["IngestCompleted", "Ready"]);
        assert!(transitions(Some(&done), &done).is_empty(), "no change, no event");
        let lost = compute(
            &observed(
                MilvusObservation::Failed { reason: "MilvusUnavailable", message: "down".into() },
                IngestObservation::Succeeded { job: "j".into(), started_at: None, completed_at: None, totals: None },
                2,
            ),
            Some(&done),
            time(3),
        );
        let events = transitions(Some(&done), &lost);
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].0, events[0].1.as_str()), (kube::runtime::events::EventType::Warning, "NotReady"));
    }

    #[test]
    fn a_scheduled_rescan_of_an_ingested_collection_keeps_it_ready_and_a_failed_one_degrades_without_stalling() {
        let succeeded = |job: &str| IngestObservation::Succeeded {
            job: job.into(),
            started_at: None,
            completed_at: None,
            totals: None,
        };
        let ready =
            compute(&observed(MilvusObservation::Ready { rows: 5 }, succeeded("products-ingest-g2"), 2), None, time(1));
        assert_eq!(ready.phase, Some(Phase::Ready));

        let rescan = IngestObservation::Running { job: "products-rescan-1".into(), started_at: None, scheduled: true };
        let rescanning =
            compute(&observed(MilvusObservation::Ready { rows: 5 }, rescan.clone(), 2), Some(&ready), time(2));
        assert_eq!(rescanning.phase, Some(Phase::Ready), "upkeep is not a phase of its own");
        assert_eq!(get(&rescanning, RECONCILING).status, "False");
        let ingested = get(&rescanning, INGESTED);
        assert_eq!((ingested.status.as_str(), ingested.reason.as_str()), ("True", RESCAN_RUNNING));
        assert!(ingested.message.contains("products-rescan-1") && ingested.message.contains("products-ingest-g2"));
        assert_eq!(rescanning.last_ingest.as_ref().map(|l| l.job.as_str()), Some("products-ingest-g2"));
        assert!(transitions(Some(&ready), &rescanning).is_empty(), "a rescan starting is no news");
        let done = compute(
            &observed(MilvusObservation::Ready { rows: 6 }, succeeded("products-rescan-1"), 2),
            Some(&rescanning),
            time(3),
        );
        let reasons: Vec<String> = transitions(Some(&rescanning), &done).into_iter().map(|e| e.1).collect();
        assert_eq!(reasons, ["IngestCompleted"], "its end is");

        let failed = IngestObservation::Failed {
            job: "products-rescan-2".into(),
            message: "Milvus went away".into(),
            scheduled: true,
        };
        let broken = compute(&observed(MilvusObservation::Ready { rows: 6 }, failed, 2), Some(&done), time(4));
        assert_eq!(broken.phase, Some(Phase::Degraded), "searchable, but new images are not being indexed");
        assert_eq!(get(&broken, STALLED).status, "False", "the next scheduled run retries on its own");
        assert!(get(&broken, INGESTED).message.contains("the next scheduled run tries again"));
        let reasons: Vec<String> = transitions(Some(&done), &broken).into_iter().map(|e| e.1).collect();
        assert_eq!(reasons, ["IngestFailed"]);

        // After a failed ingest of this spec, or under a new spec, a rescan is the work itself.
        let first_failed = compute(
            &observed(
                MilvusObservation::Ready { rows: 0 },
                IngestObservation::Failed { job: "products-ingest-g2".into(), message: "no".into(), scheduled: false },
                2,
            ),
            None,
            time(5),
        );
        assert_eq!(get(&first_failed, STALLED).status, "True", "nothing retries a failed generation on its own");
        let retrying =
            compute(&observed(MilvusObservation::Ready { rows: 0 }, rescan.clone(), 2), Some(&first_failed), time(6));
        assert_eq!(retrying.phase, Some(Phase::Ingesting));
        assert_eq!(get(&retrying, RECONCILING).status, "True");
        let mut next_spec = observed(MilvusObservation::Ready { rows: 5 }, rescan, 2);
        next_spec.generation = 3;
        assert_eq!(compute(&next_spec, Some(&ready), time(7)).phase, Some(Phase::Ingesting));
    }

    fn deployment(generation: i64, replicas: i32, status: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "products-search", "generation": generation },
            "spec": { "replicas": replicas, "selector": {}, "template": {} },
            "status": status
        }))
        .expect("a Deployment")
    }

    #[test]
    fn a_deployment_is_read_as_kstatus_reads_one() {
        let complete = serde_json::json!({
            "observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
            "conditions": [{ "type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable" }]
        });
        assert_eq!(deployment_health(&deployment(2, 2, complete.clone())), DeploymentHealth::default());
        let mut not_seen = complete.clone();
        not_seen["observedGeneration"] = 1.into();
        assert!(deployment_health(&deployment(2, 2, not_seen)).rolling_out.is_some_and(|r| r.contains("not seen")));
        // The old ReplicaSet still serves both replicas; the new one has one pod, not available:
        // availableReplicas alone would call this done.
        let hidden = serde_json::json!({
            "observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2, "availableReplicas": 2,
            "conditions": [{ "type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated" }]
        });
        let health = deployment_health(&deployment(2, 2, hidden));
        assert_eq!(health.rolling_out.as_deref(), Some("search Deployment rolling out: updated 1 of 2"));
        assert_eq!(health.failure, None);
        let stuck = serde_json::json!({
            "observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
            "conditions": [{ "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet \"products-search-7d9\" has timed out progressing." }]
        });
        let health = deployment_health(&deployment(2, 2, stuck));
        assert_eq!(health.failure.map(|f| f.0), Some(ROLLOUT_STUCK));
        let refused = serde_json::json!({
            "observedGeneration": 1, "replicas": 0,
            "conditions": [{ "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                "message": "pods \"products-search-7d9-x\" is forbidden: exceeded quota: compute" }]
        });
        let health = deployment_health(&deployment(1, 1, refused));
        let (reason, message) = health.failure.expect("a failure");
        assert_eq!(reason, PODS_NOT_CREATED);
        assert!(message.contains("exceeded quota: compute"), "{message}");
        assert_eq!(health.rolling_out.as_deref(), Some("search Deployment rolling out: replicas 0 of 1"));
    }

    #[test]
    fn a_rollout_in_progress_is_reconciling_and_a_stuck_one_degrades_a_serving_collection() {
        let succeeded =
            IngestObservation::Succeeded { job: "j".into(), started_at: None, completed_at: None, totals: None };
        let mut seen = observed(MilvusObservation::Ready { rows: 4 }, succeeded, 2);
        seen.search.rolling_out = Some("search Deployment rolling out: updated 1 of 2".into());
        let status = compute(&seen, None, time(1));
        let reconciling = get(&status, RECONCILING);
        assert_eq!((reconciling.status.as_str(), reconciling.reason.as_str()), ("True", ROLLING_OUT));
        assert!(reconciling.message.contains("updated 1 of 2"));
        assert_eq!((status.phase, get(&status, READY).status.as_str()), (Some(Phase::Ready), "True"));
        seen.failures = vec![ChildFailure {
            object: "Deployment products-search".into(),
            reason: ROLLOUT_STUCK,
            message: "ReplicaSet \"products-search-7d9\" has timed out progressing.".into(),
        }];
        let status = compute(&seen, None, time(2));
        assert_eq!(get(&status, STALLED).reason, ROLLOUT_STUCK);
        assert_eq!(get(&status, READY).status, "True", "the old pods still serve");
        assert_eq!(status.phase, Some(Phase::Degraded));
        assert_eq!(get(&status, RECONCILING).status, "False", "stalled, not progressing");
    }

    #[test]
    fn counts_stay_marked_stale_while_milvus_does_not_answer() {
        let succeeded = IngestObservation::Succeeded {
            job: "j".into(),
            started_at: None,
            completed_at: None,
            totals: Some(IngestTotals { shards: 1, discovered: 12, indexed: 9, skipped: 1, failed: 2, seconds: 1.0 }),
        };
        let ready = compute(&observed(MilvusObservation::Ready { rows: 9 }, succeeded.clone(), 2), None, time(1));
        let down = MilvusObservation::Failed { reason: "MilvusUnavailable", message: "down".into() };
        let lost = compute(&observed(down, succeeded.clone(), 2), Some(&ready), time(2));
        let images = lost.images.clone().expect("the last counts are kept");
        assert_eq!((images.indexed, images.failed, images.skipped, images.stale), (9, Some(2), Some(1), Some(true)));
        let back = compute(&observed(MilvusObservation::Ready { rows: 9 }, succeeded, 2), Some(&lost), time(3));
        assert_eq!(back.images.and_then(|i| i.stale), None, "current again once Milvus answers");
        let never = compute(
            &observed(
                MilvusObservation::Failed { reason: "MilvusUnavailable", message: "down".into() },
                IngestObservation::Suspended,
                2,
            ),
            None,
            time(1),
        );
        assert_eq!(never.images, None, "never counted: unknown, not zero");
    }

    #[test]
    fn a_blocked_deletion_says_why_and_keeps_the_counts() {
        let ready = compute(
            &observed(
                MilvusObservation::Ready { rows: 9 },
                IngestObservation::Succeeded { job: "j".into(), started_at: None, completed_at: None, totals: None },
                2,
            ),
            None,
            time(1),
        );
        let status = deleting(Some(&ready), Deletion::Blocked("cannot reach Milvus at http://m:19530"), 2, time(5));
        assert_eq!(status.phase, Some(Phase::Deleting));
        let ready_condition = get(&status, READY);
        assert_eq!((ready_condition.status.as_str(), ready_condition.reason.as_str()), ("False", "CleanupBlocked"));
        assert!(ready_condition.message.contains("http://m:19530"));
        assert_eq!(get(&status, STALLED).status, "True");
        assert_eq!(status.conditions.iter().filter(|c| c.type_ == READY).count(), 1, "replaced, not duplicated");
        assert_eq!(status.images.map(|i| i.indexed), Some(9));
    }

    /// A pod created at second 0 with this status, as the kubelet and scheduler write them.
    fn pending_pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "photos-search-7d9f-x2x", "creationTimestamp": "1970-01-01T00:00:00Z" },
            "status": status
        }))
        .expect("test pod parses")
    }

    fn waiting(reason: &str, message: &str) -> serde_json::Value {
        serde_json::json!({ "phase": "Pending", "containerStatuses": [{
            "name": "search", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": { "waiting": { "reason": reason, "message": message } }
        }] })
    }

    #[test]
    fn a_pod_that_cannot_start_is_reported_after_the_grace_period_with_the_kubelets_words() {
        let grace = std::time::Duration::from_secs(120);
        let pull = pending_pod(waiting("ImagePullBackOff", "Back-off pulling image \"registry.example/imgsearch:1\""));
        assert_eq!(not_starting(&pull, &time(119), grace), None, "within the grace period a pull may still work");
        let failure = not_starting(&pull, &time(130), grace).expect("reported after the grace period");
        assert_eq!(failure.object, "Pod photos-search-7d9f-x2x");
        assert_eq!(failure.reason, POD_NOT_STARTING);
        assert!(failure.message.contains("ImagePullBackOff: Back-off pulling image"), "{}", failure.message);
        assert!(failure.message.contains("spec.imagePullSecrets"), "{}", failure.message);

        let secret =
            pending_pod(waiting("CreateContainerConfigError", "couldn't find key token in Secret shop/milvus"));
        let failure = not_starting(&secret, &time(130), grace).expect("a missing key is reported");
        assert!(failure.message.contains("couldn't find key token in Secret shop/milvus"), "{}", failure.message);

        let unschedulable = pending_pod(serde_json::json!({ "phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: persistentvolumeclaim \"photos\" not found."
        }] }));
        let failure = not_starting(&unschedulable, &time(130), grace).expect("an unschedulable pod is reported");
        assert!(failure.message.contains("persistentvolumeclaim \"photos\" not found"), "{}", failure.message);

        // A normal step is not a failure within the grace period; one that hangs past it (a
        // volume that cannot be mounted) is, with the kubelet's latest Warning Event about it.
        let creating = pending_pod(waiting("ContainerCreating", ""));
        assert_eq!(not_starting(&creating, &time(119), grace), None);
        let stuck = not_starting(&creating, &time(600), grace).expect("stuck in ContainerCreating past the grace");
        let event = |reason: &str, type_: &str, at: &str, message: &str| -> k8s_openapi::api::core::v1::Event {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": format!("e-{reason}-{at}") }, "involvedObject": {},
                "reason": reason, "type": type_, "lastTimestamp": at, "message": message
            }))
            .expect("test event parses")
        };
        let mount = "MountVolume.SetUp failed for volume \"urls\" : configmap \"photo-urls\" not found";
        let events = [
            event("Scheduled", "Normal", "1970-01-01T00:00:01Z", "assigned"),
            event("FailedMount", "Warning", "1970-01-01T00:08:00Z", mount),
            event("FailedMount", "Warning", "1970-01-01T00:02:00Z", "an older one"),
        ];
        let told = with_kubelet_event(stuck.clone(), &events);
        assert_eq!(
            told.message,
            format!("container search waiting for 600 s: ContainerCreating; the kubelet: FailedMount: {mount}")
        );
        assert_eq!(with_kubelet_event(stuck.clone(), &events[..1]), stuck, "no Warning, nothing added");
        let never = pending_pod(waiting("ErrImageNeverPull", "Container image \"imgsearch:dev\" is not present"));
        let failure = not_starting(&never, &time(130), grace).expect("ErrImageNeverPull is reported");
        assert!(failure.message.contains("imagePullPolicy Never"), "{}", failure.message);
        let running = pending_pod(serde_json::json!({ "phase": "Running" }));
        assert_eq!(not_starting(&running, &time(600), grace), None);
        let mut leaving = pull.clone();
        leaving.metadata.deletion_timestamp = Some(time(100));
        assert_eq!(not_starting(&leaving, &time(600), grace), None, "a pod being deleted is not news");
    }

    fn pod(name: &str, index: &str, exit_code: i32, message: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "annotations": { "batch.kubernetes.io/job-completion-index": index } },
            "status": { "containerStatuses": [{
                "name": "ingest", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": { "exitCode": exit_code, "message": message } }
            }] }
        }))
        .expect("test pod parses")
    }

    #[test]
    fn shard_summaries_add_up_once_per_completion_index() {
        let summary = |indexed: u64, failed: u64, seconds: f64| {
            serde_json::json!({ "discovered": indexed + failed, "indexed": indexed, "skipped": 1,
                                "failed": failed, "seconds": seconds })
            .to_string()
        };
        let pods = [
            pod("j-0-a", "0", 1, "Milvus went away"), // the first try of shard 0 failed
            pod("j-0-b", "0", 0, &summary(50, 2, 3.0)),
            pod("j-1-a", "1", 0, &summary(40, 0, 5.0)),
            pod("j-2-a", "2", 0, "not json: a custom image without summaries"),
        ];
        let totals = ingest_totals(&pods).expect("two shards reported");
        assert_eq!(
            totals,
            IngestTotals { shards: 2, discovered: 92, indexed: 90, skipped: 2, failed: 2, seconds: 5.0 }
        );
        assert_eq!(ingest_totals(&pods[..1]), None, "a failed pod's message is no summary");
        assert_eq!(
            pod_failure(&pods).as_deref(),
            Some("pod j-0-a exited with 1: Milvus went away"),
            "the failure reason comes from the pod"
        );
    }

    #[test]
    fn ingesting_while_the_job_runs_even_if_search_already_serves() {
        let status = compute(
            &observed(
                MilvusObservation::Ready { rows: 3 },
                IngestObservation::Running { job: "j".into(), started_at: None, scheduled: false },
                1,
            ),
            None,
            time(1),
        );
        assert_eq!(status.phase, Some(Phase::Ingesting));
        assert_eq!((get(&status, READY).status.as_str(), get(&status, RECONCILING).status.as_str()), ("True", "True"));
        assert_eq!(get(&status, INGESTED).reason, "JobRunning");
    }

    #[test]
    fn a_failed_ingest_with_search_serving_is_degraded_and_without_it_failed() {
        let failed = || IngestObservation::Failed {
            job: "j".into(),
            message: "Job has reached the specified backoff limit".into(),
            scheduled: false,
        };
        let serving = compute(&observed(MilvusObservation::Ready { rows: 3 }, failed(), 2), None, time(1));
        assert_eq!(serving.phase, Some(Phase::Degraded), "what was indexed before is still searchable");
        let ingested = get(&serving, INGESTED);
        assert_eq!(ingested.status, "False");
        assert!(ingested.message.contains("backoff limit"), "{}", ingested.message);
        assert_eq!((get(&serving, READY).status.as_str(), get(&serving, STALLED).status.as_str()), ("True", "True"));
        let events = transitions(None, &serving);
        assert!(
            events.iter().any(|(kind, reason, note)| *kind == kube::runtime::events::EventType::Warning
                && reason == "IngestFailed"
                && note.contains("backoff")),
            "{events:?}"
        );

        let down = compute(&observed(MilvusObservation::Ready { rows: 3 }, failed(), 0), None, time(1));
        assert_eq!(down.phase, Some(Phase::Failed), "nothing serves and nothing ingests");
    }

    #[test]
    fn an_unreachable_milvus_is_stalled_with_its_reason() {
        let failed = MilvusObservation::Failed {
            reason: "MilvusUnavailable",
            message: "cannot reach Milvus at http://m:19530".into(),
        };
        let status = compute(&observed(failed, IngestObservation::Suspended, 0), None, time(1));
        assert_eq!(status.phase, Some(Phase::Failed));
        let collection = get(&status, COLLECTION_READY);
        assert_eq!((collection.status.as_str(), collection.reason.as_str()), ("False", "MilvusUnavailable"));
        assert!(collection.message.contains("http://m:19530"));
        assert_eq!(get(&status, STALLED).status, "True");
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let first = compute(
            &observed(
                MilvusObservation::Ready { rows: 1 },
                IngestObservation::Running { job: "j".into(), started_at: None, scheduled: false },
                0,
            ),
            None,
            time(10),
        );
        let second = compute(
            &observed(
                MilvusObservation::Ready { rows: 5 },
                IngestObservation::Succeeded { job: "j".into(), started_at: None, completed_at: None, totals: None },
                0,
            ),
            Some(&first),
            time(20),
        );
        assert_eq!(get(&second, COLLECTION_READY).last_transition_time, time(10), "still True: time kept");
        assert_eq!(get(&second, INGESTED).last_transition_time, time(20), "False → True: time moves");
    }
}
