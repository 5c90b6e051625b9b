//! The collection's search Service and Deployment: each applied on its own (one the API server
//! refuses does not hold up the other), the Deployment withheld while its pods must not run,
//! and replaced, its pods kept serving, when its selector has to change; then its health as
//! status reports it.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;

use super::children;
use super::error::Result;
use super::observed::{self, ChildFailure, SearchObservation};
use super::ownership::{claim, orphan};
use super::reasons;
use super::reconcile::{Context, Withheld};
use super::report::publish;
use crate::crd::ImageCollection;

/// Applies the search Service.
pub(super) async fn apply_service(
    ic: &ImageCollection,
    context: &Context,
    namespace: &str,
    params: &PatchParams,
) -> Result<Service> {
    let name = children::search_name(&ic.name_any());
    let services: Api<Service> = Api::namespaced(context.client.clone(), namespace);
    let desired = children::search_service(ic)?;
    claim(&services, &name, ic).await?;
    Ok(services.patch(&name, params, &Patch::Apply(&desired)).await?)
}

/// Applies the search Deployment, unless its pods are withheld; returns it as the API server has
/// it (the old one, while it is being replaced).
pub(super) async fn apply_deployment(
    ic: &ImageCollection,
    context: &Context,
    namespace: &str,
    params: &PatchParams,
    withheld: &Withheld,
) -> Result<Deployment> {
    withheld.check()?;
    let name = children::search_name(&ic.name_any());
    let deployments: Api<Deployment> = Api::namespaced(context.client.clone(), namespace);
    let desired = children::search_deployment(ic, &context.children)?;
    if let Some(replaced) = replace_if_reselected(ic, context, &deployments, &desired).await? {
        return Ok(replaced);
    }
    Ok(deployments.patch(&name, params, &Patch::Apply(&desired)).await?)
}

/// What status says of search: the replicas wanted and available, the rollout, the endpoint;
/// a Deployment that reports a failure adds it to `failures`.
pub(super) fn observe(
    ic: &ImageCollection,
    deployment: Option<Deployment>,
    failures: &mut Vec<ChildFailure>,
) -> SearchObservation {
    let health = deployment.as_ref().map(observed::deployment_health).unwrap_or_default();
    if let Some((reason, message)) = health.failure {
        let object = format!("Deployment {}", children::search_name(&ic.name_any()));
        failures.push(ChildFailure { object, reason, message });
    }
    // The replicas wanted are the Deployment's own: an autoscaler or `kubectl scale` may set
    // them when the spec does not.
    let desired = deployment.as_ref().and_then(|d| d.spec.replicas).or(ic.spec.search.replicas).unwrap_or(1);
    let available = deployment.and_then(|d| d.status).and_then(|s| s.available_replicas).unwrap_or(0);
    SearchObservation {
        desired,
        available,
        endpoint: children::search_endpoint(ic).unwrap_or_default(),
        rolling_out: health.rolling_out,
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
