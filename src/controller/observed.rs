//! What the controller saw this pass, read out of Kubernetes objects by pure functions: the
//! Milvus collection, the ingest Job with what its pods reported, the search Deployment as
//! kstatus reads one, children that could not be applied, and pods that cannot start. The
//! reconcile loop fetches the objects; [`super::status`] turns what is seen here into status.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::reasons::{POD_NOT_STARTING, PODS_NOT_CREATED, ROLLOUT_STUCK};

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
/// of `WAITING_ON_SOMEONE`, or the scheduler unable to place it (a missing claim, no node
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

#[cfg(test)]
mod tests {
    use super::*;

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).expect("valid time"))
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
}
