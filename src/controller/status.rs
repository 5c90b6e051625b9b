//! Status from observations, as a pure function: what the controller saw of Milvus, the ingest
//! Job and the search Deployment ([`super::observed`]) becomes conditions, a phase and counts,
//! and the Events worth telling when they change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::observed::{ChildFailure, IngestObservation, IngestTotals, MilvusObservation, Observed};
use super::reasons::{
    AVAILABLE, CHILD_REASONS, CLEANUP_BLOCKED, COLLECTION_LOADED, DELETING, INDEX_BUILT, INGEST_COMPLETED,
    INGEST_FAILED, INGESTING, JOB_FAILED, JOB_NOT_CREATED, JOB_RUNNING, JOB_SUCCEEDED, NOT_BLOCKED, NOT_READY,
    POD_REASONS, PODS_NOT_STARTING, PROGRESSING, READY as READY_REASON, RESCAN_RUNNING, ROLLING_OUT, STOPPING_PODS,
    SUSPENDED, UNAVAILABLE, UNSUPPORTED_SOURCE,
};
use crate::crd::conditions::*;
use crate::crd::{ImageCollectionStatus, ImageCounts, LastIngest, Phase};

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
    let mut conditions = Conditions { previous, generation: observed.generation, now: &now, list: Vec::new() };
    let milvus_ok = set_collection_ready(&mut conditions, observed);
    let ingest = set_ingested(&mut conditions, &observed.ingest, previous, observed.generation);
    let ready = set_search_ready(&mut conditions, observed, milvus_ok);
    set_progress(&mut conditions, observed, ready, &ingest);
    ImageCollectionStatus {
        observed_generation: Some(observed.generation),
        phase: Some(phase(observed, milvus_ok, ready, &ingest)),
        conditions: conditions.list,
        images: image_counts(observed, previous),
        last_ingest: ingest.last.or_else(|| previous.and_then(|p| p.last_ingest.clone())),
        search_endpoint: Some(observed.search.endpoint.clone()),
        collection_name: Some(observed.collection.clone()),
    }
}

/// The conditions of the status being computed, in the order they are set.
struct Conditions<'a> {
    previous: Option<&'a ImageCollectionStatus>,
    generation: i64,
    now: &'a Time,
    list: Vec<Condition>,
}

impl Conditions<'_> {
    fn set(&mut self, type_: &str, ok: bool, reason: &str, message: String) {
        let status = if ok { "True" } else { "False" };
        self.list.push(condition(self.previous, type_, status, reason, message, self.generation, self.now));
    }
}

/// `CollectionReady` and `IndexReady` from what Milvus said; whether it answered.
fn set_collection_ready(conditions: &mut Conditions, observed: &Observed) -> bool {
    match &observed.milvus {
        MilvusObservation::Ready { .. } => {
            let message = format!("Milvus collection {} exists and is loaded", observed.collection);
            conditions.set(COLLECTION_READY, true, COLLECTION_LOADED, message);
            conditions.set(INDEX_READY, true, INDEX_BUILT, "HNSW index built".into());
            true
        }
        MilvusObservation::Failed { reason, message } => {
            conditions.set(COLLECTION_READY, false, reason, message.clone());
            conditions.set(INDEX_READY, false, reason, "waiting for the collection".into());
            false
        }
    }
}

/// What the ingest observation means for the rest of the status.
#[derive(Default)]
struct IngestState {
    /// Work toward the spec is running (a scheduled rescan of an ingested spec is not).
    ingesting: bool,
    /// The ingest cannot succeed as it is: it failed, its pods do not start, its source is unsupported.
    failed: bool,
    /// What `status.lastIngest` becomes (kept from before when `None`).
    last: Option<LastIngest>,
    /// The Stalled reason and message the ingest gives, when nothing else stalls first. A failed
    /// scheduled rescan stalls nothing: the schedule retries it without anyone's help.
    stalls: Option<(&'static str, String)>,
}

/// `Ingested` from the ingest Job's state, and what that means for the rest.
fn set_ingested(
    conditions: &mut Conditions,
    ingest: &IngestObservation,
    previous: Option<&ImageCollectionStatus>,
    generation: i64,
) -> IngestState {
    match ingest {
        IngestObservation::Suspended => {
            conditions.set(INGESTED, false, SUSPENDED, "spec.suspend is true: no ingest Job is started".into());
            IngestState::default()
        }
        // A scheduled rescan of a collection this spec already ingested is upkeep, not work
        // toward the spec: Reconciling stays False and the phase Ready, so GitOps health does
        // not flip every night. Ingested stays True with its own reason, for progress and for
        // the IngestCompleted Event when it ends; lastIngest keeps the last completed run.
        IngestObservation::Running { job, started_at: _, scheduled: true }
            if already_ingested(previous, generation) =>
        {
            let last = previous.and_then(|p| p.last_ingest.as_ref()).map_or("an earlier ingest", |l| l.job.as_str());
            let message = format!("scheduled rescan Job {job} is running; searches use what {last} indexed meanwhile");
            conditions.set(INGESTED, true, RESCAN_RUNNING, message);
            IngestState::default()
        }
        IngestObservation::Running { job, started_at, .. } => {
            conditions.set(INGESTED, false, JOB_RUNNING, format!("ingest Job {job} is running"));
            let last =
                LastIngest { job: job.clone(), started_at: started_at.clone(), completed_at: None, summary: None };
            IngestState { ingesting: true, last: Some(last), ..IngestState::default() }
        }
        IngestObservation::Succeeded { job, started_at, completed_at, totals } => {
            let summary = totals.as_ref().map(IngestTotals::describe);
            let message = match &summary {
                Some(summary) => format!("ingest Job {job} completed: {summary}"),
                None => format!("ingest Job {job} completed (its pods left no summary)"),
            };
            conditions.set(INGESTED, true, JOB_SUCCEEDED, message);
            let last = LastIngest {
                job: job.clone(),
                started_at: started_at.clone(),
                completed_at: completed_at.clone(),
                summary,
            };
            IngestState { last: Some(last), ..IngestState::default() }
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
            // A failed rescan is told (Degraded, a Warning Event) but stalls nothing.
            let stalls = (!*scheduled).then(|| (INGEST_FAILED, said.clone()));
            conditions.set(INGESTED, false, JOB_FAILED, said);
            let last =
                LastIngest { job: job.clone(), started_at: None, completed_at: None, summary: Some(message.clone()) };
            IngestState { failed: true, last: Some(last), stalls, ..IngestState::default() }
        }
        IngestObservation::NotCreated { message } => {
            conditions.set(INGESTED, false, JOB_NOT_CREATED, message.clone());
            IngestState::default()
        }
        IngestObservation::NotStarting { job, message } => {
            conditions.set(INGESTED, false, PODS_NOT_STARTING, format!("ingest Job {job} cannot start: {message}"));
            IngestState { failed: true, ..IngestState::default() }
        }
        IngestObservation::Unsupported { message } => {
            conditions.set(INGESTED, false, UNSUPPORTED_SOURCE, message.clone());
            IngestState { failed: true, stalls: Some((UNSUPPORTED_SOURCE, message.clone())), ..IngestState::default() }
        }
    }
}

/// `SearchReady` from the replicas, and `Ready`: Milvus answers and search can be reached;
/// whether the collection is ready.
fn set_search_ready(conditions: &mut Conditions, observed: &Observed, milvus_ok: bool) -> bool {
    let search = &observed.search;
    let search_ok = search.desired == 0 || search.available >= 1;
    conditions.set(
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
    let message = if ready {
        format!("searchable at {}", search.endpoint)
    } else if !milvus_ok {
        "the Milvus collection is not ready".to_string()
    } else if search_child_failed {
        "the search Service or Deployment could not be applied (see the Stalled condition)".to_string()
    } else {
        "the search service is not available".to_string()
    };
    conditions.set(READY, ready, if ready { READY_REASON } else { NOT_READY }, message);
    ready
}

/// kstatus's `Reconciling` (work in flight) and `Stalled` (it cannot progress on its own).
/// Stalled says what blocks progress: children first (nothing else can fix them), then Milvus,
/// then the ingest Job.
fn set_progress(conditions: &mut Conditions, observed: &Observed, ready: bool, ingest: &IngestState) {
    let stalled_by = if let Some(first) = observed.failures.first() {
        Some((first.reason, describe_failures(&observed.failures)))
    } else if let MilvusObservation::Failed { reason, message } = &observed.milvus {
        Some((*reason, message.clone()))
    } else {
        ingest.stalls.clone()
    };
    let stalled = stalled_by.is_some();
    let rolling_out = observed.search.rolling_out.as_ref().filter(|_| !stalled);
    let reconciling = ingest.ingesting || rolling_out.is_some() || (!ready && !stalled);
    let (reason, message) = match rolling_out {
        _ if ingest.ingesting => (INGESTING, String::new()),
        Some(rollout) => (ROLLING_OUT, rollout.clone()),
        None => (PROGRESSING, String::new()),
    };
    conditions.set(RECONCILING, reconciling, reason, message);
    match stalled_by {
        Some((reason, message)) => conditions.set(STALLED, true, reason, message),
        None => conditions.set(STALLED, false, NOT_BLOCKED, String::new()),
    }
}

fn phase(observed: &Observed, milvus_ok: bool, ready: bool, ingest: &IngestState) -> Phase {
    if !milvus_ok {
        Phase::Failed // nothing can be searched or written until Milvus answers
    } else if ingest.ingesting {
        Phase::Ingesting
    } else if ingest.failed || !observed.failures.is_empty() {
        if ready { Phase::Degraded } else { Phase::Failed }
    } else if ready {
        Phase::Ready
    } else {
        Phase::Pending
    }
}

/// The image counts: indexed from Milvus; failed and skipped from the last completed ingest
/// (until one reports, they stay as they were: absent means unknown, never a made-up zero).
/// When Milvus did not answer the last counts seen stay, marked stale, rather than vanishing
/// (under server-side apply an absent field is removed).
fn image_counts(observed: &Observed, previous: Option<&ImageCollectionStatus>) -> Option<ImageCounts> {
    let earlier = previous.and_then(|p| p.images.clone());
    let MilvusObservation::Ready { rows } = &observed.milvus else {
        return earlier.map(|images| ImageCounts { stale: Some(true), ..images });
    };
    let earlier = earlier.unwrap_or_default();
    let (failed, skipped) = match &observed.ingest {
        IngestObservation::Succeeded { totals: Some(totals), .. } => {
            (Some(count(totals.failed)), Some(count(totals.skipped)))
        }
        _ => (earlier.failed, earlier.skipped),
    };
    Some(ImageCounts { indexed: count(*rows), failed, skipped, stale: None })
}

/// Whether the previous status says this generation's ingest completed: a scheduled rescan
/// after that is upkeep.
fn already_ingested(previous: Option<&ImageCollectionStatus>, generation: i64) -> bool {
    previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == INGESTED))
        .is_some_and(|c| c.status == "True" && c.observed_generation == Some(generation))
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

/// Where a deletion with `deletionPolicy: Delete` stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deletion<'a> {
    /// Waiting for the collection's pods to stop before its data goes (they would write to it).
    Stopping(&'a str),
    /// The data cannot be removed yet; the message says why.
    Blocked(&'a str),
}

/// Status while the object is being deleted and its data is not removed yet (`step` says why):
/// phase Deleting, not Ready, Stalled only when blocked; counts and history kept as they were.
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
    use crate::controller::observed::SearchObservation;
    use crate::controller::reasons::ROLLOUT_STUCK;

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
