//! The operator's vocabulary: the reasons its conditions and Events carry, in one place, so the
//! writer (status, reconcile) and every reader (tests, dashboards, `kubectl wait`) agree on one
//! spelling. Condition types are the CRD's (`crate::crd::conditions`).

// CollectionReady and IndexReady.
pub const COLLECTION_LOADED: &str = "CollectionLoaded";
pub const INDEX_BUILT: &str = "IndexBuilt";
/// The Milvus collection exists with another dimension: the spec would mix embedding spaces.
pub const COLLECTION_MISMATCH: &str = "CollectionMismatch";
pub const INDEX_FAILED: &str = "IndexFailed";
pub const MILVUS_UNAVAILABLE: &str = "MilvusUnavailable";
/// The Milvus collection belongs to another ImageCollection (its `imgsearch.io/owner`
/// property): nothing of this object writes to it, prunes it or drops it, and the workloads
/// that would are withheld.
pub const COLLECTION_TAKEN: &str = "CollectionTaken";
/// The Milvus Secret is missing or has no usable credentials.
pub const SECRET_INVALID: &str = "SecretInvalid";
/// A Milvus Secret that does not name the collection's Milvus address, and the workloads
/// withheld because of it.
pub const SECRET_NOT_BOUND: &str = "SecretNotBound";
pub const INVALID_SPEC: &str = "InvalidSpec";

// Ingested.
pub const SUSPENDED: &str = "Suspended";
pub const JOB_RUNNING: &str = "JobRunning";
/// A scheduled rescan of a collection already ingested (Ingested stays True meanwhile).
pub const RESCAN_RUNNING: &str = "RescanRunning";
pub const JOB_SUCCEEDED: &str = "JobSucceeded";
pub const JOB_FAILED: &str = "JobFailed";
pub const JOB_NOT_CREATED: &str = "JobNotCreated";
pub const PODS_NOT_STARTING: &str = "PodsNotStarting";
pub const UNSUPPORTED_SOURCE: &str = "UnsupportedSource";

// SearchReady and Ready.
pub const AVAILABLE: &str = "Available";
pub const UNAVAILABLE: &str = "Unavailable";
pub const READY: &str = "Ready";
pub const NOT_READY: &str = "NotReady";

// Reconciling and Stalled (kstatus).
pub const INGESTING: &str = "Ingesting";
pub const PROGRESSING: &str = "Progressing";
/// The search Deployment is rolling out a new template (kstatus' rules for Deployments).
pub const ROLLING_OUT: &str = "RollingOut";
pub const NOT_BLOCKED: &str = "NotBlocked";
pub const DELETING: &str = "Deleting";
/// A deletion waits for Milvus (or the catalog) to answer before it can drop the data.
pub const CLEANUP_BLOCKED: &str = "CleanupBlocked";
/// A cleanup given up in a namespace being deleted: the data is kept, the object goes.
pub const CLEANUP_ABANDONED: &str = "CleanupAbandoned";
/// A deletion waits for the collection's pods to stop before it drops the data.
pub const STOPPING_PODS: &str = "StoppingPods";

// Why a child object was not applied (Stalled), one per failure.
/// The API server refused the object (a 4xx): someone must change something.
pub const CHILD_REJECTED: &str = "ChildRejected";
/// The API server did not answer the apply; the next pass retries.
pub const API_UNAVAILABLE: &str = "ApiUnavailable";
/// A child of this name belongs to an earlier object of the same name.
pub const STALE_CHILD: &str = "StaleChild";
/// An object of a child's name exists that imgsearch did not make; it is left alone.
pub const NAME_TAKEN: &str = "NameTaken";
/// A pod that has not started within the grace period.
pub const POD_NOT_STARTING: &str = "PodNotStarting";
/// The Job or ReplicaSet controller could not create pods (a ResourceQuota, LimitRange,
/// PodSecurity or a webhook refused them): only its `FailedCreate` Events and conditions say so.
pub const PODS_NOT_CREATED: &str = "PodsNotCreated";
/// The search Deployment's rollout passed its progress deadline (`ProgressDeadlineExceeded`).
pub const ROLLOUT_STUCK: &str = "RolloutStuck";
/// The catalog could not be reached while cleaning up.
pub const CATALOG_UNAVAILABLE: &str = "CatalogUnavailable";

/// Stalled reasons of child failures (status keeps Events about them from repeating).
pub const CHILD_REASONS: [&str; 10] = [
    INVALID_SPEC,
    CHILD_REJECTED,
    API_UNAVAILABLE,
    STALE_CHILD,
    NAME_TAKEN,
    POD_NOT_STARTING,
    SECRET_NOT_BOUND,
    COLLECTION_TAKEN,
    PODS_NOT_CREATED,
    ROLLOUT_STUCK,
];
/// Stalled reasons about a child's pods rather than the child itself: the child was applied,
/// and whatever of it still runs (an older ReplicaSet's pods) keeps serving.
pub const POD_REASONS: [&str; 3] = [POD_NOT_STARTING, PODS_NOT_CREATED, ROLLOUT_STUCK];

// Events only.
pub const INGEST_STARTED: &str = "IngestStarted";
/// A failed ingest Job deleted to run it again (the retry annotation changed).
pub const INGEST_RETRIED: &str = "IngestRetried";
/// A running ingest Job of an earlier spec (or a rescan) stopped so the new spec's can start.
pub const INGEST_STOPPED: &str = "IngestStopped";
pub const INGEST_COMPLETED: &str = "IngestCompleted";
pub const INGEST_FAILED: &str = "IngestFailed";
pub const STALE_JOB_DELETED: &str = "StaleJobDeleted";
/// The search Deployment replaced to change its (immutable) selector; its pods kept serving.
pub const SELECTOR_CHANGED: &str = "SelectorChanged";
pub const RESCAN_REMOVED: &str = "RescanRemoved";
pub const COLLECTION_CREATED: &str = "CollectionCreated";
pub const COLLECTION_DROPPED: &str = "CollectionDropped";
/// A deletion with `Delete` that dropped nothing: the Milvus collection is another object's.
pub const COLLECTION_KEPT: &str = "CollectionKept";
pub const CATALOG_PURGED: &str = "CatalogPurged";
