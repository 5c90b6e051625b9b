//! The operator: turns an `ImageCollection` into a Milvus collection, ingest Jobs and a search
//! Deployment + Service. Child objects are built by pure functions in [`children`], status by
//! the pure [`status::compute`] in the words of [`reasons`]. [`reconcile`] runs the loop; each
//! pass reaches Milvus (`milvus`, with the credentials `secrets` reads), applies the search
//! children (`serving`) and the ingest Jobs (`jobs`), only what it may touch (`ownership`),
//! looks at pods that do not start (`pods`), and tells what it saw (`report`); `cleanup`
//! deletes. [`leader`] makes sure only one replica reconciles; [`metrics`] reports on it.
//! [`run_command`] is `imgsearch controller`.

pub mod children;
mod cleanup;
mod error;
mod jobs;
pub mod leader;
pub mod metrics;
mod milvus;
pub mod observed;
mod ownership;
mod pods;
pub mod reasons;
pub mod reconcile;
mod report;
pub mod schedule;
mod secrets;
mod serving;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kube::api::{Api, ListParams};

use anyhow::Context as _;

use crate::crd::ImageCollection;
use crate::shutdown::Shutdown;
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

/// Runs the controller until `shutdown`: checks that the API server and the CRD answer, then
/// (with `lease`) waits to be elected and reconciles only while leading.
pub async fn run(context: Arc<Context>, lease: Option<LeaseSettings>, shutdown: Shutdown) -> Result<(), RunError> {
    let metrics = context.metrics.clone();
    Api::<ImageCollection>::all(context.client.clone())
        .list(&ListParams::default().limit(1))
        .await
        .map_err(RunError::Startup)?;
    metrics.api_reachable.store(true, Ordering::Relaxed);

    let Some(settings) = lease else {
        metrics.leader.set(1);
        reconcile::run(context, shutdown).await;
        return Ok(());
    };
    let mut elector = LeaderElector::new(context.client.clone(), settings);
    tokio::select! {
        () = elector.acquire(|answered| metrics.api_reachable.store(answered, Ordering::Relaxed)) => {}
        () = shutdown.requested() => return Ok(()),
    }
    metrics.leader.set(1);
    let outcome = tokio::select! {
        () = reconcile::run(context, shutdown) => Ok(()),
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

/// `imgsearch controller` as its flags give it.
#[derive(Debug, Clone)]
pub struct ControllerCommand {
    pub children: children::ChildConfig,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: std::net::SocketAddr,
    pub leader_election: bool,
    /// The Lease's namespace (default: the client's, i.e. the pod's own).
    pub lease_namespace: Option<String>,
    pub lease_name: String,
    /// This replica's name in the election (default: the host name and process id).
    pub identity: Option<String>,
    /// How long a pod may wait to start before the collection reports it (see [`reconcile::Recheck`]).
    pub pod_start_grace: std::time::Duration,
}

/// Connects to the API server the environment names (in-cluster or kubeconfig), serves the
/// metrics and probes, and runs the controller until `shutdown`.
pub async fn run_command(command: ControllerCommand, shutdown: Shutdown) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    let lease = command.leader_election.then(|| {
        let namespace = command.lease_namespace.unwrap_or_else(|| client.default_namespace().to_string());
        let identity = command.identity.unwrap_or_else(default_identity);
        LeaseSettings::new(&namespace, &command.lease_name, &identity)
    });
    let recheck = reconcile::Recheck { pod_start_grace: command.pod_start_grace, ..reconcile::Recheck::default() };
    let context = Context::with_recheck(client, command.children, recheck);
    let listener = metrics::bind(command.listen)
        .await
        .with_context(|| format!("cannot listen on {} for metrics and probes", command.listen))?;
    tracing::info!(address = %command.listen, "controller metrics and probes listening");
    let server = tokio::spawn(metrics::serve(listener, context.metrics.clone()));
    let result = run(context, lease, shutdown).await;
    server.abort();
    Ok(result?)
}

/// Host name plus process id: unique enough for a replica run outside a pod.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    format!("{}-{}", if host.is_empty() { "imgsearch" } else { &host }, std::process::id())
}
