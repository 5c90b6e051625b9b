//! Why a reconcile failed: one error type for the whole controller, with the label metrics and
//! logs use and the reason conditions and Events give ([`super::reasons`]).

use super::children::BuildError;
use super::reasons;
use super::secrets::MILVUS_URI_ANNOTATION;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Secret {name:?} referenced by {field}: {problem}")]
    Secret { field: &'static str, name: String, problem: String },
    /// The Milvus Secret does not name this collection's Milvus address as the one its
    /// credentials are for (the annotation `imgsearch.io/milvus-uri`).
    #[error(
        "Secret {name:?} (spec.milvus.secretRef) is not for {uri}: {found}. Its credentials are sent only to the address \
         the Secret itself names; whoever may edit the Secret can add the annotation {MILVUS_URI_ANNOTATION}: {uri}"
    )]
    SecretNotBound { name: String, uri: String, found: String },
    /// A workload not applied because its pods would do what they must not: send the Milvus
    /// Secret's credentials to an address the Secret does not name ([`Error::SecretNotBound`]),
    /// or write to another object's Milvus collection ([`StoreError::OwnedElsewhere`]). `reason`
    /// and `why` are that failure's.
    #[error("not applied: {why}")]
    Withheld { reason: &'static str, why: String },
    #[error("catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("ImageCollection has no namespace")]
    NoNamespace,
    /// A child of this name exists but belongs to an earlier object of the same name.
    #[error("{0}; retrying")]
    StaleChild(String),
    /// An object of a child's name that imgsearch did not make (a user's, or another
    /// controller's): applying it by force would take it over, and the garbage collector would
    /// delete it with the collection.
    /// (The object is named where the failure is reported.)
    #[error(
        "one of this name exists that imgsearch did not make for this collection ({why}); it is left as it is. \
         Delete or rename it, or give the ImageCollection another name"
    )]
    NameTaken { why: String },
    /// Deleting with `deletionPolicy: Delete`: the collection's pods are still stopping, and
    /// its data goes only after them (a running pod would write to it or create it again).
    #[error("{0} pod(s) of the collection are still stopping")]
    PodsStopping(usize),
}

impl Error {
    /// Failure kind for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Build(_) => "invalid_spec",
            Self::Store(StoreError::OwnedElsewhere { .. }) => "collection_taken",
            Self::Withheld { reason, .. } if *reason == reasons::COLLECTION_TAKEN => "collection_taken",
            Self::Store(_) => "milvus",
            Self::Secret { .. } | Self::SecretNotBound { .. } | Self::Withheld { .. } => "secret",
            Self::Catalog(_) => "catalog",
            Self::Finalizer(_) => "finalizer",
            Self::NoNamespace => "invalid_spec",
            Self::StaleChild(_) => "stale_child",
            Self::NameTaken { .. } => "name_taken",
            Self::PodsStopping(_) => "pods_stopping",
        }
    }

    /// The reason a condition or Event gives for this failure ([`reasons`]).
    pub fn reason(&self) -> &'static str {
        match self {
            // A collection of another dimension is a spec the controller refuses, not an outage.
            Self::Store(StoreError::DimensionMismatch { .. }) => reasons::COLLECTION_MISMATCH,
            Self::Store(StoreError::IndexFailed { .. }) => reasons::INDEX_FAILED,
            Self::Store(StoreError::OwnedElsewhere { .. }) => reasons::COLLECTION_TAKEN,
            Self::Store(_) => reasons::MILVUS_UNAVAILABLE,
            Self::Secret { .. } => reasons::SECRET_INVALID,
            Self::SecretNotBound { .. } => reasons::SECRET_NOT_BOUND,
            Self::Withheld { reason, .. } => reason,
            Self::Build(_) | Self::NoNamespace => reasons::INVALID_SPEC,
            // A 4xx needs someone to change something; anything else is the server's moment.
            Self::Kube(kube::Error::Api(status)) if (400..500).contains(&status.code) => reasons::CHILD_REJECTED,
            Self::Kube(_) | Self::Finalizer(_) => reasons::API_UNAVAILABLE,
            Self::StaleChild(_) => reasons::STALE_CHILD,
            Self::NameTaken { .. } => reasons::NAME_TAKEN,
            Self::Catalog(_) => reasons::CATALOG_UNAVAILABLE,
            Self::PodsStopping(_) => reasons::STOPPING_PODS,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
