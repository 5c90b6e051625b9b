//! The collection's ingest Jobs: one per ingest spec (an edit that does not touch ingest runs
//! nothing again), created only once earlier ingests have stopped, run again when the retry
//! annotation asks, pruned beyond the history limit, and observed; and the rescan CronJob that
//! makes scheduled ones. Jobs are immutable once created, so every change is a new Job.

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::children::{self, BuildError, LABEL_GENERATION};
use super::error::{Error, Result};
use super::observed::{self, IngestObservation};
use super::ownership::{background, claim, foreground, foreign_owner, owned_by};
use super::reasons;
use super::reconcile::Context;
use super::report::publish;
use crate::crd::ImageCollection;

/// The label the Job controller puts on a Job's pods.
pub(super) const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// The ingest Job for the current spec: the newest Job of this collection if it runs what the
/// spec asks for now (a spec edit that does not touch ingest, such as search replicas or the
/// deletion policy, re-embeds nothing), otherwise a new one for this generation, created once
/// every earlier ingest (an older generation's Job, a scheduled rescan) has stopped: two Jobs
/// writing and pruning one collection at once would race. Jobs are immutable once created.
/// `jobs` are the collection's Jobs as listed this pass.
pub(super) async fn ensure_ingest_job(
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
pub(super) fn made_by_cronjob(job: &Job) -> bool {
    job.owner_references().iter().any(|owner| owner.kind == "CronJob")
}

/// Deletes finished ingest Jobs of older generations beyond `spec.ingest.historyLimit`, never
/// `current` (the Job of the current spec, which may be of an older generation); returns the
/// ingest Jobs that remain.
pub(super) async fn prune_jobs(
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

/// The Job's state from its conditions, and from its pods what the run reported.
pub(super) async fn observe_job(context: &Context, namespace: &str, job: &Job) -> Result<IngestObservation> {
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
            totals: observed::ingest_totals(&pods().await?),
        }
    } else if let Some(failed) = condition("Failed") {
        let from_pods = observed::pod_failure(&pods().await?);
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
pub(super) async fn ensure_rescan_cronjob(
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
pub(super) fn finished(job: &Job) -> bool {
    has_condition(job, &["Complete", "Failed"])
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
