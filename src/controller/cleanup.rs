//! Deleting an ImageCollection: with `deletionPolicy: Delete`, its workloads stopped first, then
//! its Milvus collection dropped (never another object's) and its catalog rows deleted, the
//! finalizer kept until both are gone; with `Retain`, nothing but the object goes. In a
//! namespace being deleted the cleanup gives up in the end, so that the namespace can go.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::children::{self, LABEL_COLLECTION};
use super::error::{Error, Result};
use super::milvus;
use super::ownership::delete_owned;
use super::reasons;
use super::reconcile::Context;
use super::report::{generation, now, publish, write_status};
use super::secrets::catalog_url;
use super::status;
use crate::crd::{DeletionPolicy, ImageCollection};

/// On delete with `deletionPolicy: Delete`: drop the Milvus collection and the catalog rows.
/// Until both are gone the object stays (its finalizer is kept) with a Warning Event and a
/// status saying why; Retain lets it go at once and keeps everything.
pub(super) async fn cleanup(ic: &ImageCollection, context: &Context) -> Result<Action> {
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
pub(super) async fn namespace_being_deleted(context: &Context, namespace: &str) -> Result<Option<bool>> {
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
pub(super) async fn stop_workloads(ic: &ImageCollection, context: &Context) -> Result<usize> {
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

/// Drops the collection's data: its Milvus collection (unless another object's name is recorded
/// on it) and its catalog rows, each credential read and each server reached before anything goes.
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
    let store = milvus::store_of(ic, context).await?;
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
