//! The reconcile loop: kube-runtime's Controller over ImageCollections, owning their Jobs,
//! Deployments and Services. Each pass ensures the Milvus collection, applies the children with
//! server-side apply, prunes old ingest Jobs, observes and writes status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;

use super::children::{self, BuildError, ChildConfig, LABEL_COLLECTION, LABEL_GENERATION, MANAGER};
use super::status::{self, IngestObservation, MilvusObservation, Observed, SearchObservation};
use crate::crd::{DeletionPolicy, ImageCollection};
use crate::store::{IndexSpec, MilvusStore, StoreError};

pub const FINALIZER: &str = "imgsearch.io/cleanup";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Secret {name:?} referenced by spec.milvus.secretRef: {problem}")]
    MilvusSecret { name: String, problem: String },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("ImageCollection has no namespace")]
    NoNamespace,
}

impl Error {
    /// Failure kind for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Build(_) => "invalid_spec",
            Self::Store(_) => "milvus",
            Self::MilvusSecret { .. } => "secret",
            Self::Finalizer(_) => "finalizer",
            Self::NoNamespace => "invalid_spec",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub children: ChildConfig,
    /// One Milvus connection per (URI, token), reused across reconciles.
    milvus: Mutex<HashMap<(String, Option<String>), MilvusStore>>,
}

impl Context {
    pub fn new(client: Client, children: ChildConfig) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() },
        );
        Arc::new(Self { client, recorder, children, milvus: Mutex::new(HashMap::new()) })
    }
}

/// Runs the controller until SIGTERM / Ctrl-C.
pub async fn run(context: Arc<Context>) {
    let client = context.client.clone();
    Controller::new(Api::<ImageCollection>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Job>::all(client.clone()), watcher::Config::default().labels(LABEL_COLLECTION))
        .owns(Api::<Deployment>::all(client.clone()), watcher::Config::default().labels(LABEL_COLLECTION))
        .owns(Api::<Service>::all(client), watcher::Config::default().labels(LABEL_COLLECTION))
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, action)) => tracing::debug!(%object, ?action, "reconciled"),
                Err(error) => tracing::warn!(%error, "reconcile failed"),
            }
        })
        .await;
}

async fn reconcile(ic: Arc<ImageCollection>, context: Arc<Context>) -> Result<Action> {
    let namespace = ic.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ImageCollection> = Api::namespaced(context.client.clone(), &namespace);
    finalizer(&api, FINALIZER, ic, |event| async {
        match event {
            Finalizer::Apply(ic) => apply(&ic, &context).await,
            Finalizer::Cleanup(ic) => cleanup(&ic, &context).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

fn error_policy(ic: Arc<ImageCollection>, error: &Error, _context: Arc<Context>) -> Action {
    tracing::warn!(name = %ic.name_any(), kind = error.metric_label(), %error, "reconcile error; retrying");
    Action::requeue(Duration::from_secs(15))
}

async fn apply(ic: &ImageCollection, context: &Context) -> Result<Action> {
    let namespace = ic.namespace().ok_or(Error::NoNamespace)?;
    let name = ic.name_any();
    let collection = ic.milvus_collection();
    let generation = ic.metadata.generation.unwrap_or(0);
    let params = PatchParams::apply(MANAGER).force();

    let milvus = match ensure_milvus(ic, context, &collection).await {
        Ok(rows) => MilvusObservation::Ready { rows },
        Err(error) => {
            // A collection of another dimension is a spec the controller refuses, not an outage.
            let reason = match &error {
                Error::Store(StoreError::DimensionMismatch { .. }) => "CollectionMismatch",
                Error::MilvusSecret { .. } => "SecretInvalid",
                _ => "MilvusUnavailable",
            };
            publish(context, ic, EventType::Warning, reason, &error.to_string()).await;
            MilvusObservation::Failed { reason, message: error.to_string() }
        }
    };

    let services: Api<Service> = Api::namespaced(context.client.clone(), &namespace);
    services.patch(&children::search_name(&name), &params, &Patch::Apply(&children::search_service(ic)?)).await?;
    let deployments: Api<Deployment> = Api::namespaced(context.client.clone(), &namespace);
    let deployment = deployments
        .patch(
            &children::search_name(&name),
            &params,
            &Patch::Apply(&children::search_deployment(ic, &context.children)?),
        )
        .await?;

    let ingest = match ensure_ingest_job(ic, context, &namespace, &params).await? {
        Some(job) => observe_job(&job),
        None if ic.spec.suspend => IngestObservation::Suspended,
        None => IngestObservation::Unsupported { message: "only pvc sources can be ingested by this version".into() },
    };
    prune_jobs(ic, context, &namespace, generation).await?;

    let observed = Observed {
        generation,
        collection,
        milvus,
        ingest,
        search: SearchObservation {
            desired: ic.spec.search.replicas,
            available: deployment.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0),
            endpoint: children::search_endpoint(ic)?,
        },
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = status::compute(&observed, ic.status.as_ref(), now);
    let ready = status.phase == Some(crate::crd::Phase::Ready);
    let api: Api<ImageCollection> = Api::namespaced(context.client.clone(), &namespace);
    let patch = json!({ "apiVersion": "imgsearch.io/v1alpha1", "kind": "ImageCollection", "status": status });
    api.patch_status(&name, &params, &Patch::Apply(&patch)).await?;
    // Owned objects wake us on change; the timer only catches what nothing announces (Milvus).
    Ok(Action::requeue(if ready { Duration::from_secs(300) } else { Duration::from_secs(30) }))
}

/// Creates the Job of this generation if missing (Jobs are immutable once created).
async fn ensure_ingest_job(
    ic: &ImageCollection,
    context: &Context,
    namespace: &str,
    params: &PatchParams,
) -> Result<Option<Job>> {
    let jobs: Api<Job> = Api::namespaced(context.client.clone(), namespace);
    let job_name = children::ingest_job_name(ic)?;
    if let Some(job) = jobs.get_opt(&job_name).await? {
        return Ok(Some(job));
    }
    if ic.spec.suspend {
        return Ok(None);
    }
    match children::ingest_job(ic, &context.children) {
        Ok(job) => {
            let created = jobs.patch(&job_name, params, &Patch::Apply(&job)).await?;
            publish(context, ic, EventType::Normal, "IngestStarted", &format!("created ingest Job {job_name}")).await;
            Ok(Some(created))
        }
        Err(BuildError::UnsupportedSource(_)) => Ok(None),
        Err(other) => Err(other.into()),
    }
}

fn observe_job(job: &Job) -> IngestObservation {
    let name = job.name_any();
    let status = job.status.clone().unwrap_or_default();
    let condition = |type_: &str| {
        status.conditions.as_ref().and_then(|c| c.iter().find(|c| c.type_ == type_ && c.status == "True")).cloned()
    };
    if condition("Complete").is_some() {
        IngestObservation::Succeeded { job: name, started_at: status.start_time, completed_at: status.completion_time }
    } else if let Some(failed) = condition("Failed") {
        IngestObservation::Failed { job: name, message: failed.message.unwrap_or_else(|| "the Job failed".into()) }
    } else {
        IngestObservation::Running { job: name, started_at: status.start_time }
    }
}

/// Deletes finished ingest Jobs of older generations beyond `spec.ingest.historyLimit`.
async fn prune_jobs(ic: &ImageCollection, context: &Context, namespace: &str, generation: i64) -> Result<()> {
    let jobs: Api<Job> = Api::namespaced(context.client.clone(), namespace);
    let selector = format!("{LABEL_COLLECTION}={}", ic.name_any());
    let mut old: Vec<(i64, Job)> = jobs
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter_map(|job| {
            let job_generation = job.labels().get(LABEL_GENERATION)?.parse::<i64>().ok()?;
            let finished = job.status.as_ref().is_some_and(|s| {
                s.completion_time.is_some() || s.failed.unwrap_or(0) > 0 && s.active.unwrap_or(0) == 0
            });
            (job_generation < generation && finished).then_some((job_generation, job))
        })
        .collect();
    old.sort_by_key(|(g, _)| std::cmp::Reverse(*g));
    let keep = usize::try_from(ic.spec.ingest.history_limit).unwrap_or(0);
    for (_, job) in old.into_iter().skip(keep) {
        let delete =
            DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() };
        jobs.delete(&job.name_any(), &delete).await?;
    }
    Ok(())
}

/// The collection with its index, loaded; returns the searchable row count.
async fn ensure_milvus(ic: &ImageCollection, context: &Context, collection: &str) -> Result<u64> {
    let store = milvus_store(ic, context).await?;
    let model =
        crate::embed::builtin(ic.spec.model.name.as_str()).map_err(|e| BuildError::UnknownModel(e.to_string()))?;
    let index = IndexSpec {
        m: ic.spec.index.params.m,
        ef_construction: ic.spec.index.params.ef_construction,
        ..IndexSpec::default()
    };
    store.ensure_collection(collection, model.dimension, &index).await?;
    Ok(store.count(collection).await?)
}

async fn milvus_store(ic: &ImageCollection, context: &Context) -> Result<MilvusStore> {
    let token = match &ic.spec.milvus.secret_ref {
        Some(reference) => Some(milvus_token(context, ic, &reference.name).await?),
        None => None,
    };
    let key = (ic.spec.milvus.uri.clone(), token.clone());
    let mut cache = context.milvus.lock().await;
    if let Some(store) = cache.get(&key) {
        return Ok(store.clone());
    }
    let store = MilvusStore::connect(&ic.spec.milvus.uri, token.as_deref()).await?;
    cache.insert(key, store.clone());
    Ok(store)
}

/// `token`, or `username` + `password`, from the referenced Secret.
async fn milvus_token(context: &Context, ic: &ImageCollection, secret: &str) -> Result<String> {
    let namespace = ic.namespace().ok_or(Error::NoNamespace)?;
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
    let problem = |problem: &str| Error::MilvusSecret { name: secret.to_string(), problem: problem.to_string() };
    let found = secrets.get_opt(secret).await?.ok_or_else(|| problem("not found"))?;
    let data = found.data.unwrap_or_default();
    let text = |key: &str| data.get(key).map(|v| String::from_utf8_lossy(&v.0).trim().to_string());
    match (text("token"), text("username"), text("password")) {
        (Some(token), _, _) => Ok(token),
        (None, Some(user), Some(password)) => Ok(format!("{user}:{password}")),
        _ => Err(problem("needs a `token` key, or `username` and `password`")),
    }
}

/// On delete: drop the Milvus collection when the policy says so. An unreachable Milvus keeps
/// the object (and its finalizer) until it answers, with a Warning Event saying why.
async fn cleanup(ic: &ImageCollection, context: &Context) -> Result<Action> {
    if ic.spec.deletion_policy == DeletionPolicy::Delete {
        let collection = ic.milvus_collection();
        let result = async {
            let store = milvus_store(ic, context).await?;
            if store.has_collection(&collection).await? {
                store.drop_collection(&collection).await?;
            }
            Ok::<(), Error>(())
        }
        .await;
        if let Err(error) = result {
            publish(
                context,
                ic,
                EventType::Warning,
                "CleanupBlocked",
                &format!("cannot drop Milvus collection {collection} yet: {error}"),
            )
            .await;
            return Err(error);
        }
        publish(
            context,
            ic,
            EventType::Normal,
            "CollectionDropped",
            &format!("dropped Milvus collection {collection}"),
        )
        .await;
    }
    Ok(Action::await_change())
}

async fn publish(context: &Context, ic: &ImageCollection, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = context.recorder.publish(&event, &ic.object_ref(&())).await {
        tracing::debug!(%error, "could not publish event");
    }
}
