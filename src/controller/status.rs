//! Status from observations, as a pure function: what the controller saw of Milvus, the ingest
//! Job and the search Deployment becomes conditions, a phase and counts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

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
    },
    Succeeded {
        job: String,
        started_at: Option<Time>,
        completed_at: Option<Time>,
    },
    Failed {
        job: String,
        message: String,
    },
    /// The spec's source cannot be ingested by this version.
    Unsupported {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchObservation {
    pub desired: i32,
    pub available: i32,
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub generation: i64,
    pub collection: String,
    pub milvus: MilvusObservation,
    pub ingest: IngestObservation,
    pub search: SearchObservation,
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
                "CollectionLoaded",
                format!("Milvus collection {} exists and is loaded", observed.collection),
            );
            set(INDEX_READY, true, "IndexBuilt", "HNSW index built".into());
            (true, Some(*rows))
        }
        MilvusObservation::Failed { reason, message } => {
            set(COLLECTION_READY, false, reason, message.clone());
            set(INDEX_READY, false, reason, "waiting for the collection".into());
            (false, None)
        }
    };

    let (ingesting, ingest_failed, last_ingest) = match &observed.ingest {
        IngestObservation::Suspended => {
            set(INGESTED, false, "Suspended", "spec.suspend is true: no ingest Job is started".into());
            (false, false, None)
        }
        IngestObservation::Running { job, started_at } => {
            set(INGESTED, false, "JobRunning", format!("ingest Job {job} is running"));
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
        IngestObservation::Succeeded { job, started_at, completed_at } => {
            set(INGESTED, true, "JobSucceeded", format!("ingest Job {job} completed"));
            (
                false,
                false,
                Some(LastIngest {
                    job: job.clone(),
                    started_at: started_at.clone(),
                    completed_at: completed_at.clone(),
                    summary: None,
                }),
            )
        }
        IngestObservation::Failed { job, message } => {
            set(INGESTED, false, "JobFailed", format!("ingest Job {job} failed: {message}"));
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
        IngestObservation::Unsupported { message } => {
            set(INGESTED, false, "UnsupportedSource", message.clone());
            (false, true, None)
        }
    };

    let search = &observed.search;
    let search_ok = search.desired == 0 || search.available >= 1;
    set(
        SEARCH_READY,
        search_ok,
        if search_ok { "Available" } else { "Unavailable" },
        format!("{} of {} search replicas available", search.available, search.desired),
    );

    let ready = milvus_ok && search_ok && search.desired > 0;
    let ready_message = if ready {
        format!("searchable at {}", search.endpoint)
    } else if !milvus_ok {
        "the Milvus collection is not ready".to_string()
    } else {
        "the search service is not available".to_string()
    };
    set(READY, ready, if ready { "Ready" } else { "NotReady" }, ready_message);
    // kstatus: Reconciling while work is in flight, Stalled when it cannot progress on its own.
    let stalled = ingest_failed || matches!(observed.milvus, MilvusObservation::Failed { .. });
    set(
        RECONCILING,
        ingesting || (!ready && !stalled),
        if ingesting { "Ingesting" } else { "Progressing" },
        String::new(),
    );
    set(STALLED, stalled, if stalled { "Blocked" } else { "NotBlocked" }, String::new());

    let phase = if !milvus_ok {
        Phase::Failed // nothing can be searched or written until Milvus answers
    } else if ingesting {
        Phase::Ingesting
    } else if ingest_failed {
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
        images: rows.map(|indexed| ImageCounts {
            indexed: i64::try_from(indexed).unwrap_or(i64::MAX),
            ..previous.and_then(|p| p.images.clone()).unwrap_or_default()
        }),
        last_ingest: last_ingest.or_else(|| previous.and_then(|p| p.last_ingest.clone())),
        search_endpoint: Some(search.endpoint.clone()),
        collection_name: Some(observed.collection.clone()),
    }
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
            },
        }
    }

    fn get<'a>(status: &'a ImageCollectionStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} condition"))
    }

    #[test]
    fn ready_when_the_collection_is_loaded_and_search_is_available() {
        let status = compute(
            &observed(
                MilvusObservation::Ready { rows: 120 },
                IngestObservation::Succeeded { job: "j".into(), started_at: None, completed_at: None },
                2,
            ),
            None,
            time(100),
        );
        assert_eq!(status.phase, Some(Phase::Ready));
        assert_eq!(get(&status, READY).status, "True");
        assert_eq!(get(&status, STALLED).status, "False");
        assert_eq!(status.images.as_ref().map(|i| i.indexed), Some(120));
        // Failed and skipped counts are not read back yet: reported as unknown, not as zero.
        assert_eq!(status.images.as_ref().map(|i| (i.failed, i.skipped)), Some((None, None)));
        assert_eq!(status.observed_generation, Some(2));
    }

    #[test]
    fn ingesting_while_the_job_runs_even_if_search_already_serves() {
        let status = compute(
            &observed(
                MilvusObservation::Ready { rows: 3 },
                IngestObservation::Running { job: "j".into(), started_at: None },
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
                IngestObservation::Running { job: "j".into(), started_at: None },
                0,
            ),
            None,
            time(10),
        );
        let second = compute(
            &observed(
                MilvusObservation::Ready { rows: 5 },
                IngestObservation::Succeeded { job: "j".into(), started_at: None, completed_at: None },
                0,
            ),
            Some(&first),
            time(20),
        );
        assert_eq!(get(&second, COLLECTION_READY).last_transition_time, time(10), "still True: time kept");
        assert_eq!(get(&second, INGESTED).last_transition_time, time(20), "False → True: time moves");
    }
}
