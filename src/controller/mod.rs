//! The operator: turns an `ImageCollection` into a Milvus collection, ingest Jobs and a search
//! Deployment + Service. Child objects are built by pure functions in [`children`], status by
//! the pure [`status::compute`]; [`reconcile`] applies them; [`leader`] makes sure only one
//! replica does; [`metrics`] reports on it.

pub mod children;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod schedule;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kube::api::{Api, ListParams};

use crate::crd::ImageCollection;
use leader::{LeaderElector, LeadershipLost, LeaseSettings};
use reconcile::Context;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "cannot list ImageCollections: {0}. Is the CRD installed (`kubectl apply -f crds/`) and may this \
         service account list imagecollections.imgsearch.io?"
    )]
    Startup(#[source] kube::Error),
    #[error("stopped leading, so stopping (a restart rejoins the election): {0}")]
    LostLeadership(#[from] LeadershipLost),
}

/// Runs the controller until SIGTERM / Ctrl-C: checks that the API server and the CRD answer,
/// then (with `lease`) waits to be elected and reconciles only while leading.
pub async fn run(context: Arc<Context>, lease: Option<LeaseSettings>) -> Result<(), RunError> {
    let metrics = context.metrics.clone();
    Api::<ImageCollection>::all(context.client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .map_err(RunError::Startup)?;
    metrics.api_reachable.store(true, Ordering::Relaxed);

    let Some(settings) = lease else {
        metrics.leader.set(1);
        reconcile::run(context).await;
        return Ok(());
    };
    let mut elector = LeaderElector::new(context.client.clone(), settings);
    tokio::select! {
        () = elector.acquire(|answered| metrics.api_reachable.store(answered, Ordering::Relaxed)) => {}
        () = crate::cli::shutdown_signal() => return Ok(()),
    }
    metrics.leader.set(1);
    let outcome = tokio::select! {
        () = reconcile::run(context) => Ok(()),
        lost = elector.hold() => Err(lost),
    };
    metrics.leader.set(0);
    match outcome {
        Ok(()) => {
            elector.release().await;
            Ok(())
        }
        Err(lost) => Err(lost.into()),
    }
}
