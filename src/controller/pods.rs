//! Why the collection's pods do not run, as only the cluster can tell: pods that wait too long
//! to start (a Secret, claim or image missing; a volume that cannot be mounted), and pods the
//! Job controller could not create at all (a quota, a policy, a webhook). Listings that fail
//! are logged and report nothing: the next pass looks again.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::children::LABEL_COLLECTION;
use super::jobs::JOB_NAME_LABEL;
use super::observed::{self, ChildFailure};
use super::reconcile::Context;
use super::report::now;
use crate::crd::ImageCollection;

/// The collection's search pods and `current_job`'s pods that have not started within the grace
/// period, each with the Job it belongs to (if any). Pods of older Jobs are not this
/// generation's concern. A listing that fails is logged and reports nothing: the next pass
/// looks again.
pub(super) async fn pods_not_starting(
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
        let Some(mut failure) = observed::not_starting(pod, &now, context.recheck.pod_start_grace) else { continue };
        // A step that hangs (a volume that cannot be mounted) is told only in the kubelet's
        // Events about the pod.
        if observed::STEPS_THAT_CAN_HANG.iter().any(|step| failure.message.contains(&format!(": {step}:"))) {
            let events: Api<CoreEvent> = Api::namespaced(context.client.clone(), namespace);
            let about = format!("involvedObject.uid={}", pod.metadata.uid.as_deref().unwrap_or_default());
            match events.list(&ListParams::default().fields(&about)).await {
                Ok(listed) => failure = observed::with_kubelet_event(failure, &listed.items),
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
pub(super) async fn job_pods_refused(context: &Context, namespace: &str, job: &Job) -> Option<String> {
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
