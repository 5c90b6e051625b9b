//! The controller's Milvus access: one connection per address, credentials and database, each
//! call bounded by a patience short enough that an outage becomes a condition within seconds;
//! and the collection an ImageCollection asks for, created with its index and loaded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::EventType;
use tokio::sync::Mutex;

use super::children::{self, BuildError};
use super::error::Result;
use super::reasons;
use super::reconcile::Context;
use super::report::publish;
use super::secrets::milvus_token;
use crate::crd::ImageCollection;
use crate::store::{IndexSpec, MilvusStore, StoreError};

/// How long the controller waits for one Milvus call (and for a connection). The SDK's own
/// connect timeout is longer; a reconcile must not be held by a Milvus that does not answer.
const MILVUS_PATIENCE: Duration = Duration::from_secs(8);

/// A Milvus connection's identity: URI, token, database.
type ConnectionKey = (String, Option<String>, Option<String>);

/// One Milvus connection per (URI, token, database), reused across reconciles. Each has its own
/// slot, locked only while it connects: an address that does not answer holds up the
/// collections on that address, never those on another.
#[derive(Default)]
pub(super) struct Connections {
    slots: std::sync::Mutex<HashMap<ConnectionKey, Arc<Mutex<Option<MilvusStore>>>>>,
}

impl Connections {
    /// The connection for `key`, made on first use.
    async fn get(&self, key: ConnectionKey) -> Result<MilvusStore> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(slots.entry(key.clone()).or_default())
        };
        // Only reconciles of this address wait here while it connects.
        let mut slot = slot.lock().await;
        if let Some(store) = slot.as_ref() {
            return Ok(store.clone());
        }
        let (uri, token, database) = key;
        let store =
            tokio::time::timeout(MILVUS_PATIENCE, MilvusStore::connect_to(&uri, token.as_deref(), database.as_deref()))
                .await
                .map_err(|_| StoreError::Connect {
                    uri: uri.clone(),
                    detail: format!("no answer within {} s", MILVUS_PATIENCE.as_secs()),
                })??;
        store.set_patience(MILVUS_PATIENCE);
        *slot = Some(store.clone());
        Ok(store)
    }
}

/// The collection's Milvus, reached with the credentials of its Secret (only when the Secret
/// names this address).
pub(super) async fn store_of(ic: &ImageCollection, context: &Context) -> Result<MilvusStore> {
    let token = match &ic.spec.milvus.secret_ref {
        Some(reference) => Some(milvus_token(context, ic, &reference.name).await?),
        None => None,
    };
    let uri = ic.milvus_uri().ok_or(BuildError::NoMilvus)?;
    context.milvus.get((uri, token, ic.spec.milvus.database.clone())).await
}

/// The collection with its index, loaded; returns the searchable row count.
pub(super) async fn ensure_collection(ic: &ImageCollection, context: &Context, collection: &str) -> Result<u64> {
    // An index type or metric of a newer CRD would otherwise become the one this version builds.
    children::understood(ic)?;
    let store = store_of(ic, context).await?;
    let model =
        crate::embed::builtin(ic.spec.model.name.as_str()).map_err(|e| BuildError::UnknownModel(e.to_string()))?;
    let index = IndexSpec {
        m: ic.spec.index.params.m,
        ef_construction: ic.spec.index.params.ef_construction,
        ..IndexSpec::default()
    };
    let existed = store.has_collection(collection).await?;
    let owner = children::collection_owner(ic);
    store.ensure_collection(collection, model.dimension, &index, Some(&owner)).await?;
    if !existed {
        let note =
            format!("created Milvus collection {collection} ({} dimensions, HNSW index), loaded", model.dimension);
        publish(context, ic, EventType::Normal, reasons::COLLECTION_CREATED, &note).await;
    }
    Ok(store.count(collection).await?)
}
