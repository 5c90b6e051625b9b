//! An in-process stand-in for kube-apiserver that speaks the real HTTP/JSON protocol, so the real
//! kube client and kube-runtime controller can be tested here, where no API server can run.
//!
//! Implemented: namespaced and all-namespace list, get, create, delete (with finalizers and
//! deletionTimestamp), watch from a resourceVersion (newline-delimited JSON events, history
//! replayed), JSON merge patch, JSON patch (kube's finalizer helper uses it), server-side apply
//! and the status subresource, `generation` bumped on spec changes only, a Secret's `stringData`
//! folded into `data`, optimistic concurrency on updates (a stale resourceVersion is a 409).
//!
//! It validates nothing: Kubernetes' rules (names, labels, Job and CronJob rules, immutable
//! fields, the CRD's schema, defaults and CEL) are the real API server's, and the tests that
//! depend on them run on it (tests/kubernetes_rules.rs, tests/operator_on_kubernetes.rs). What
//! this server is for is faults on demand: a resource answering 503, 500, 429 or 409 for a
//! while ([`FakeApiServer::fault`]), watch history forgotten (410 Gone), a garbage collector
//! held back, objects stored as if before the CRD's rules existed.
//!
//! One controller of kube-controller-manager runs beside it: the garbage collector (every
//! 100 ms, background propagation: what an owner owned goes after the owner, not with it),
//! which tests can pause to hold a deleted owner's children.
//!
//! Simplified on purpose (documented, not hidden): server-side apply merges the applied
//! configuration into the object instead of tracking managed fields per manager, so fields a
//! manager stops setting are not removed; the garbage collector models neither foreground nor
//! orphan propagation and leaves dangling owner references of objects with a live owner; no
//! label selectors beyond exact `key=value` matches, no field selectors; every object lives in
//! memory.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One API call, for checking what the controller did and that RBAC allows it (tests/rbac.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Who called: the bearer token, which this server takes as the user name (the real API
    /// server maps a ServiceAccount token to `system:serviceaccount:<namespace>:<name>`), or
    /// `system:anonymous` without one.
    pub user: String,
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    /// None for cluster-wide calls (e.g. a watch over all namespaces).
    pub namespace: Option<String>,
    /// The object's name, for calls on one object (get, update, patch, delete).
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
struct Event {
    resource_version: u64,
    resource: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    /// (group/version/resource, namespace, name) → object
    objects: BTreeMap<(String, String, String), Value>,
    events: Vec<Event>,
    resource_version: u64,
    calls: Vec<Call>,
    uid: u64,
    /// Events at or below this resourceVersion are gone, as after an etcd compaction: a watch
    /// from an older version gets 410 Gone and the client must list again.
    compacted: u64,
    /// Bumped to end every open watch (as an API server restart or a watch-cache reset does).
    watch_epoch: u64,
    /// Watches refused with 410 Gone so far.
    expired_watches: usize,
    /// While set, the garbage collector does nothing (a slow or backed-up one).
    gc_paused: bool,
    /// Passes of the garbage collector that did nothing because it was paused.
    gc_passes_withheld: u64,
}

#[derive(Clone, Default)]
pub struct FakeApiServer {
    store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
    /// Resources that answer 503 to some verbs until a deadline, as during an API outage.
    outages: Arc<Mutex<Vec<Outage>>>,
}

#[derive(Debug, Clone)]
struct Outage {
    resource: String,
    verbs: Vec<String>,
    until: std::time::Instant,
    fault: Fault,
}

/// What the server answers instead of serving a request, as kube-apiserver does under load or
/// trouble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503: etcd unreachable, the server shutting down.
    Unavailable,
    /// 500: an admission webhook or storage error.
    Internal,
    /// 429 with `Retry-After: 1`: API Priority and Fairness shedding load.
    TooManyRequests,
    /// 409: another writer changed the object first.
    Conflict,
}

/// Where a request points: `/api/v1/...` or `/apis/{group}/{version}/...`.
#[derive(Debug)]
struct Target {
    api_version: String,
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Target {
    fn key(&self) -> String {
        format!("{}/{}", self.api_version, self.resource)
    }

    fn parse(path: &str) -> Option<Self> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (api_version, group, rest) = match parts.as_slice() {
            ["api", "v1", rest @ ..] => ("v1".to_string(), String::new(), rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), group.to_string(), rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
            rest => (None, rest),
        };
        let (resource, name, subresource) = match rest {
            [resource] => (resource.to_string(), None, None),
            [resource, name] => (resource.to_string(), Some(name.to_string()), None),
            [resource, name, sub] => (resource.to_string(), Some(name.to_string()), Some(sub.to_string())),
            _ => return None,
        };
        Some(Self { api_version, group, resource, namespace, name, subresource })
    }
}

impl FakeApiServer {
    /// Serves on a free loopback port until the returned task is dropped or aborted.
    pub async fn start() -> (Self, SocketAddr, tokio::task::JoinHandle<()>) {
        let server = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake API server");
        let address = listener.local_addr().expect("local address");
        let app = Router::new().fallback(handle).with_state(server.clone());
        let collector = server.clone();
        let task = tokio::spawn(async move {
            // The garbage collector runs beside the server and stops with it.
            let collecting = async {
                loop {
                    tokio::time::sleep(GC_PERIOD).await;
                    collector.collect_garbage();
                }
            };
            tokio::select! {
                _ = axum::serve(listener, app) => {}
                () = collecting => {}
            }
        });
        (server, address, task)
    }

    /// A kube client talking to this server.
    pub fn client(address: SocketAddr) -> kube::Client {
        let url: axum::http::Uri = format!("http://{address}").parse().expect("valid URL");
        let config = kube::Config::new(url);
        kube::Client::try_from(config).expect("kube client for the fake API server")
    }

    /// A client that calls as `user` (its bearer token), so [`Self::calls`] tells who called.
    pub fn client_as(address: SocketAddr, user: &str) -> kube::Client {
        let url: axum::http::Uri = format!("http://{address}").parse().expect("valid URL");
        let mut config = kube::Config::new(url);
        config.auth_info.token = Some(user.to_string().into());
        kube::Client::try_from(config).expect("kube client for the fake API server")
    }

    /// A kubeconfig file pointing at this server as `user` (its bearer token), for running the
    /// real `imgsearch controller` binary against it.
    pub fn kubeconfig(address: SocketAddr, user: &str, namespace: &str) -> String {
        serde_json::to_string_pretty(&json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "fake", "cluster": { "server": format!("http://{address}") } }],
            "users": [{ "name": "fake", "user": { "token": user } }],
            "contexts": [{ "name": "fake", "context": { "cluster": "fake", "user": "fake", "namespace": namespace } }],
            "current-context": "fake",
        }))
        .expect("kubeconfig JSON")
    }

    /// Answers 503 Service Unavailable to `verbs` on `resource` (e.g. "leases") for `duration`,
    /// as kube-apiserver does while etcd is unreachable.
    pub fn unavailable(&self, resource: &str, verbs: &[&str], duration: Duration) {
        self.fault(resource, verbs, Fault::Unavailable, duration);
    }

    /// Answers `fault` to `verbs` on `resource` for `duration`.
    pub fn fault(&self, resource: &str, verbs: &[&str], fault: Fault, duration: Duration) {
        let outage = Outage {
            resource: resource.into(),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            until: std::time::Instant::now() + duration,
            fault,
        };
        self.outages.lock().unwrap_or_else(|p| p.into_inner()).push(outage);
    }

    fn in_outage(&self, resource: &str, verb: &str) -> Option<Fault> {
        let now = std::time::Instant::now();
        let mut outages = self.outages.lock().unwrap_or_else(|p| p.into_inner());
        outages.retain(|o| o.until > now);
        outages.iter().find(|o| o.resource == resource && o.verbs.iter().any(|v| v == verb)).map(|o| o.fault)
    }

    /// Runs one garbage-collection pass now (it also runs every [`GC_PERIOD`]).
    pub fn collect_garbage(&self) {
        let changed = {
            let mut store = self.lock();
            if store.gc_paused {
                store.gc_passes_withheld += 1;
                false
            } else {
                store.collect_garbage()
            }
        };
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Stops (true) or resumes (false) the garbage collector, to hold what a deleted owner
    /// owned as a busy cluster's collector would.
    pub fn pause_garbage_collection(&self, paused: bool) {
        self.lock().gc_paused = paused;
    }

    /// Passes the paused collector has skipped so far: a test that holds dependents waits for
    /// these, not for the clock, before it looks.
    pub fn gc_passes_withheld(&self) -> u64 {
        self.lock().gc_passes_withheld
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Every stored object of a resource (e.g. "batch/v1/jobs"), in name order.
    pub fn objects(&self, key: &str) -> Vec<Value> {
        self.lock().objects.iter().filter(|((k, _, _), _)| k == key).map(|(_, v)| v.clone()).collect()
    }

    pub fn object(&self, key: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(&(key.to_string(), namespace.to_string(), name.to_string())).cloned()
    }

    /// Writes an object as another actor would (a kubelet updating status, a user editing).
    /// An update of an object that was deleted meanwhile (its uid is gone) is dropped, as the
    /// real API server would refuse it, rather than bringing the object back.
    pub fn put(&self, key: &str, object: Value) {
        let mut store = self.lock();
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let existing = store.objects.get(&(key.to_string(), namespace.clone(), name.clone())).cloned();
        let uid = &object["metadata"]["uid"];
        if uid.is_string() && existing.as_ref().is_none_or(|e| &e["metadata"]["uid"] != uid) {
            return;
        }
        store.write(key, &namespace, &name, object, existing.is_none());
        drop(store);
        self.changed.notify_waiters();
    }

    /// Removes an object whose graceful deletion has finished (a pod whose containers the
    /// kubelet stopped); what it owns goes when the garbage collector gets to it.
    pub fn remove_now(&self, key: &str, namespace: &str, name: &str) {
        self.lock().remove(key, namespace, name);
        self.changed.notify_waiters();
    }

    /// Forgets the history of changes up to now, as etcd compaction does, and ends every open
    /// watch: clients reconnect from the last version they saw, which is now too old.
    pub fn compact_and_drop_watches(&self) {
        let mut store = self.lock();
        store.compacted = store.resource_version;
        let compacted = store.compacted;
        store.events.retain(|e| e.resource_version > compacted);
        store.watch_epoch += 1;
        drop(store);
        self.changed.notify_waiters();
    }

    /// How many watches were refused with 410 Gone.
    pub fn expired_watches(&self) -> usize {
        self.lock().expired_watches
    }

    /// Every change so far (since the last compaction), oldest first: (resourceVersion, ADDED/MODIFIED/DELETED, resource
    /// key, object), for tests that check the order in which things happened.
    pub fn changes(&self) -> Vec<(u64, &'static str, String, Value)> {
        let store = self.lock();
        store.events.iter().map(|e| (e.resource_version, e.kind, e.resource.clone(), e.object.clone())).collect()
    }

    /// Stores a new object as one stored before a validation rule existed (e.g. by an older
    /// CRD version), which the real server would refuse now; the server-owned fields are set
    /// as on a create.
    pub fn create_unvalidated(&self, key: &str, mut object: Value) {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let mut store = self.lock();
        store.uid += 1;
        object["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", store.uid));
        object["metadata"]["generation"] = json!(1);
        object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        store.write(key, &namespace, &name, object, true);
        drop(store);
        self.changed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const PODS: &str = "v1/pods";
const JOBS: &str = "batch/v1/jobs";
const CRONJOBS: &str = "batch/v1/cronjobs";

/// How often the garbage collector looks for objects whose owners are gone.
pub const GC_PERIOD: Duration = Duration::from_millis(100);

impl Store {
    fn next_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    /// Stores `object` with a fresh resourceVersion and records the watch event.
    fn write(&mut self, key: &str, namespace: &str, name: &str, mut object: Value, created: bool) -> Value {
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        self.objects.insert((key.to_string(), namespace.to_string(), name.to_string()), object.clone());
        let kind = if created { "ADDED" } else { "MODIFIED" };
        self.events.push(Event {
            resource_version: version,
            resource: key.to_string(),
            namespace: namespace.to_string(),
            kind,
            object: object.clone(),
        });
        object
    }

    /// One pass of the garbage collector (kube-controller-manager's, background propagation):
    /// an object all of whose owners are gone (no object with the uid its ownerReferences
    /// name) is deleted as a client would delete it, gracefully for pods and objects with
    /// finalizers. An object with one owner still alive is kept. Returns whether anything changed.
    fn collect_garbage(&mut self) -> bool {
        let alive: std::collections::HashSet<String> =
            self.objects.values().filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_string)).collect();
        let orphans: Vec<(String, String, String)> = self
            .objects
            .iter()
            .filter(|(_, o)| o["metadata"]["deletionTimestamp"].is_null())
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"].as_array().is_some_and(|refs| {
                    !refs.is_empty() && refs.iter().all(|r| r["uid"].as_str().is_none_or(|uid| !alive.contains(uid)))
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for (key, namespace, name) in &orphans {
            let object = &self.objects[&(key.clone(), namespace.clone(), name.clone())];
            let has_finalizers = object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
            if key == PODS || has_finalizers {
                self.mark_deleting(key, namespace, name);
            } else {
                self.remove(key, namespace, name);
            }
        }
        !orphans.is_empty()
    }

    /// A graceful deletion: the object stays, with a deletionTimestamp, until whoever holds it
    /// lets go (the kubelet, once a pod's containers stopped; a controller, by removing its
    /// finalizer). As the generic registry does, the generation moves on.
    fn mark_deleting(&mut self, key: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut object = self.objects.get(&(key.to_string(), namespace.to_string(), name.to_string())).cloned()?;
        if object["metadata"]["deletionTimestamp"].is_string() {
            return Some(object);
        }
        object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:01Z");
        if let Some(generation) = object["metadata"]["generation"].as_i64() {
            object["metadata"]["generation"] = json!(generation + 1);
        }
        Some(self.write(key, namespace, name, object, false))
    }

    /// Removes an object. What it owns stays until the garbage collector gets to it
    /// ([`Store::collect_garbage`]), as with the API server's default background propagation.
    fn remove(&mut self, key: &str, namespace: &str, name: &str) -> Option<Value> {
        let mut object = self.objects.remove(&(key.to_string(), namespace.to_string(), name.to_string()))?;
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        self.events.push(Event {
            resource_version: version,
            resource: key.to_string(),
            namespace: namespace.to_string(),
            kind: "DELETED",
            object: object.clone(),
        });
        Some(object)
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn ok_json(code: StatusCode, value: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

fn kind_of(resource: &str) -> String {
    match resource {
        "imagecollections" => "ImageCollection".into(),
        "jobs" => "Job".into(),
        "cronjobs" => "CronJob".into(),
        "deployments" => "Deployment".into(),
        "services" => "Service".into(),
        "events" => "Event".into(),
        "secrets" => "Secret".into(),
        "leases" => "Lease".into(),
        "pods" => "Pod".into(),
        other => other.trim_end_matches('s').to_string(),
    }
}

/// Spec-level change bumps generation; metadata or status changes do not.
fn spec_of(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
        map.remove("apiVersion");
        map.remove("kind");
    }
    copy
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

async fn handle(
    State(server): State<FakeApiServer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(target) = Target::parse(uri.path()) else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("no route for {}", uri.path()));
    };
    let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let verb = match (&method, target.name.is_some(), watching) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, true, _) => "get",
        (&Method::GET, false, _) => "list",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, _, _) => "delete",
        _ => return status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", method.to_string()),
    };
    let user = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("system:anonymous")
        .to_string();
    server.lock().calls.push(Call {
        user,
        verb: verb.to_string(),
        group: target.group.clone(),
        resource: target.resource.clone(),
        subresource: target.subresource.clone(),
        namespace: target.namespace.clone(),
        name: target.name.clone(),
    });
    match server.in_outage(&target.resource, verb) {
        None => {}
        Some(Fault::Unavailable) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the server is currently unable to handle the request".into(),
            );
        }
        Some(Fault::Internal) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "Internal error occurred: failed calling webhook".into(),
            );
        }
        Some(Fault::TooManyRequests) => {
            let mut response = status(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "too many requests, please try again later".into(),
            );
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return response;
        }
        Some(Fault::Conflict) => {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} {:?}: the object has been modified; please apply your changes to the latest version and try again",
                    target.resource,
                    target.name.clone().unwrap_or_default()
                ),
            );
        }
    }
    match verb {
        "watch" => watch(server, target, query).await,
        "get" => get(&server, &target),
        "list" => list(&server, &target, &query),
        "create" => create(&server, &target, &body),
        "update" => update(&server, &target, &body),
        "patch" => patch(&server, &target, &headers, &query, &body),
        "delete" => delete(&server, &target),
        _ => unreachable!("verbs are matched above"),
    }
}

fn get(server: &FakeApiServer, target: &Target) -> Response {
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    match server.object(&target.key(), &namespace, &name) {
        Some(object) => ok_json(StatusCode::OK, &object),
        None => status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", target.resource)),
    }
}

fn matches_labels(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else { return true };
    selector.split(',').all(|term| match term.split_once('=') {
        Some((key, value)) => object["metadata"]["labels"][key].as_str() == Some(value),
        None => object["metadata"]["labels"].get(term).is_some(),
    })
}

fn list(server: &FakeApiServer, target: &Target, query: &BTreeMap<String, String>) -> Response {
    let store = server.lock();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((key, ns, _), object)| {
            key == &target.key()
                && target.namespace.as_ref().is_none_or(|n| n == ns)
                && matches_labels(object, query.get("labelSelector"))
        })
        .map(|(_, object)| object.clone())
        .collect();
    let body = json!({
        "apiVersion": target.api_version,
        "kind": format!("{}List", kind_of(&target.resource)),
        "metadata": { "resourceVersion": store.resource_version.to_string() },
        "items": items,
    });
    ok_json(StatusCode::OK, &body)
}

fn create(server: &FakeApiServer, target: &Target, body: &[u8]) -> Response {
    let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON".into());
    };
    let namespace = target.namespace.clone().unwrap_or_default();
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name is required".into());
    };
    let mut store = server.lock();
    if store.objects.contains_key(&(target.key(), namespace.clone(), name.clone())) {
        return status(StatusCode::CONFLICT, "AlreadyExists", format!("{} \"{name}\" already exists", target.resource));
    }
    initialise(&mut store, &mut object, target, &namespace);
    let stored = store.write(&target.key(), &namespace, &name, object, true);
    drop(store);
    server.changed.notify_waiters();
    ok_json(StatusCode::CREATED, &stored)
}

/// Fields the API server owns on creation.
/// A Secret's `stringData` is write-only: the API server merges it into `data` (base64).
fn fold_string_data(object: &mut Value) {
    let Some(Value::Object(strings)) = object.as_object_mut().and_then(|o| o.remove("stringData")) else { return };
    if !object["data"].is_object() {
        object["data"] = json!({});
    }
    for (key, value) in strings {
        let bytes = k8s_openapi::ByteString(value.as_str().unwrap_or_default().as_bytes().to_vec());
        object["data"][key] = serde_json::to_value(bytes).unwrap_or(Value::Null);
    }
}

fn initialise(store: &mut Store, object: &mut Value, target: &Target, namespace: &str) {
    fold_string_data(object);
    store.uid += 1;
    object["apiVersion"] = json!(target.api_version);
    object["kind"] = json!(kind_of(&target.resource));
    object["metadata"]["namespace"] = json!(namespace);
    object["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012}", store.uid));
    object["metadata"]["generation"] = json!(1);
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    object["metadata"]["creationTimestamp"] =
        json!(k8s_openapi::jiff::Timestamp::from_second(now).map(|t| t.to_string()).unwrap_or_default());
}

fn update(server: &FakeApiServer, target: &Target, body: &[u8]) -> Response {
    let Ok(object) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON".into());
    };
    // Optimistic concurrency, as kube-apiserver: an update carrying a stale resourceVersion is
    // refused (leader election depends on it).
    write_changed(server, target, |current| {
        let sent = object["metadata"]["resourceVersion"].as_str().filter(|v| !v.is_empty());
        match sent {
            Some(version) if Some(version) != current["metadata"]["resourceVersion"].as_str() => Err((
                StatusCode::CONFLICT,
                "the object has been modified; please apply your changes to the latest version and try again".into(),
            )),
            _ => Ok(object.clone()),
        }
    })
}

fn patch(
    server: &FakeApiServer,
    target: &Target,
    headers: &HeaderMap,
    query: &BTreeMap<String, String>,
    body: &[u8],
) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "patch is not JSON".into());
    };
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let applying = content_type.starts_with("application/apply-patch");
    if applying && query.get("fieldManager").is_none_or(|m| m.is_empty()) {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "fieldManager is required for apply patch".into());
    }
    // Server-side apply creates what does not exist yet (not for subresources). The real API
    // server then also authorizes the caller for `create` on the resource (apiserver
    // handlers/patch.go), so the call is recorded as a create as well, for the RBAC check.
    if applying && target.subresource.is_none() && server.object(&target.key(), &namespace, &name).is_none() {
        let mut store = server.lock();
        if let Some(patching) = store.calls.last().cloned() {
            store.calls.push(Call { verb: "create".into(), ..patching });
        }
        let mut object = patch.clone();
        object["metadata"]["name"] = json!(name);
        initialise(&mut store, &mut object, target, &namespace);
        let stored = store.write(&target.key(), &namespace, &name, object, true);
        drop(store);
        server.changed.notify_waiters();
        return ok_json(StatusCode::CREATED, &stored);
    }
    let status_only = target.subresource.as_deref() == Some("status");
    write_changed(server, target, |current| {
        let mut next = current.clone();
        if content_type.starts_with("application/json-patch") {
            // As in kube-apiserver (evanphx/json-patch), testing a missing path against null passes;
            // kube's finalizer helper relies on that when an object has no finalizers yet.
            let operations: Vec<Value> = patch
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|op| {
                    !(op["op"] == "test"
                        && op["value"].is_null()
                        && op["path"].as_str().is_some_and(|p| next.pointer(p).is_none()))
                })
                .collect();
            let operations: json_patch::Patch = serde_json::from_value(Value::Array(operations))
                .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
            json_patch::patch(&mut next, &operations).map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        } else {
            // merge-patch, strategic-merge (treated as merge) and apply all merge here.
            let mut effective = patch.clone();
            if status_only {
                effective = json!({ "status": patch.get("status").cloned().unwrap_or(Value::Null) });
            } else if let Some(map) = effective.as_object_mut() {
                map.remove("status"); // the main resource ignores status, as the real one does
            }
            merge(&mut next, &effective);
        }
        Ok(next)
    })
}

/// Replaces an existing object through `change`, keeping server-owned fields and bumping
/// generation on spec changes; an object that is deleting and has no finalizers left goes away.
fn write_changed(
    server: &FakeApiServer,
    target: &Target,
    change: impl FnOnce(&Value) -> Result<Value, (StatusCode, String)>,
) -> Response {
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let key = target.key();
    let mut store = server.lock();
    let Some(current) = store.objects.get(&(key.clone(), namespace.clone(), name.clone())).cloned() else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", target.resource));
    };
    let mut next = match change(&current) {
        Ok(mut next) => {
            fold_string_data(&mut next);
            next
        }
        Err((code, message)) => {
            let reason = if code == StatusCode::CONFLICT { "Conflict" } else { "Invalid" };
            return status(code, reason, message);
        }
    };
    for field in ["uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"] {
        next["metadata"][field] = current["metadata"][field].clone();
    }
    next["apiVersion"] = current["apiVersion"].clone();
    next["kind"] = current["kind"].clone();
    let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
    next["metadata"]["generation"] =
        json!(if spec_of(&next) != spec_of(&current) { generation + 1 } else { generation });
    let finalizers_left = next["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    if next == current {
        // A write that changes nothing is not stored and wakes no watcher, as in kube-apiserver.
        return ok_json(StatusCode::OK, &current);
    }
    let response = if current["metadata"]["deletionTimestamp"].is_string() && !finalizers_left {
        store.remove(&key, &namespace, &name);
        next
    } else {
        store.write(&key, &namespace, &name, next, false)
    };
    drop(store);
    server.changed.notify_waiters();
    ok_json(StatusCode::OK, &response)
}

fn delete(server: &FakeApiServer, target: &Target) -> Response {
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().unwrap_or_default();
    let key = target.key();
    let mut store = server.lock();
    let Some(current) = store.objects.get(&(key.clone(), namespace.clone(), name.clone())).cloned() else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", target.resource));
    };
    let has_finalizers = current["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    // Pods are deleted gracefully: the kubelet stops their containers, then removes them.
    let response = if has_finalizers || key == PODS {
        store.mark_deleting(&key, &namespace, &name).unwrap_or(current)
    } else {
        store.remove(&key, &namespace, &name).unwrap_or(current)
    };
    drop(store);
    server.changed.notify_waiters();
    ok_json(StatusCode::OK, &response)
}

/// Streams events after `resourceVersion` as newline-delimited JSON until `timeoutSeconds`.
async fn watch(server: FakeApiServer, target: Target, query: BTreeMap<String, String>) -> Response {
    let mut after: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290u64).min(290);
    let selector = query.get("labelSelector").cloned();
    let key = target.key();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(64);
    let (epoch, too_old) = {
        let mut store = server.lock();
        let too_old = after != 0 && after < store.compacted;
        if too_old {
            store.expired_watches += 1;
        }
        (store.watch_epoch, too_old.then_some(store.compacted))
    };
    if let Some(compacted) = too_old {
        // As kube-apiserver: the watch is accepted, then ends with one ERROR event carrying 410.
        let line = json!({ "type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {after} ({compacted})"), "reason": "Expired", "code": 410
        } });
        let _ = sender.try_send(Ok(Bytes::from(format!("{line}\n"))));
        drop(sender);
    } else {
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            loop {
                if server.lock().watch_epoch != epoch {
                    return;
                }
                // Registered before reading the store, so a change between the read and the wait
                // still wakes us.
                let changed = server.changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                let pending: Vec<Event> = {
                    let store = server.lock();
                    store
                        .events
                        .iter()
                        .filter(|e| {
                            e.resource_version > after
                                && e.resource == key
                                && target.namespace.as_ref().is_none_or(|n| n == &e.namespace)
                                && matches_labels(&e.object, selector.as_ref())
                        })
                        .cloned()
                        .collect()
                };
                for event in pending {
                    after = after.max(event.resource_version);
                    let line = format!("{}\n", json!({ "type": event.kind, "object": event.object }));
                    if sender.send(Ok(Bytes::from(line))).await.is_err() {
                        return; // the client went away
                    }
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    return;
                }
            }
        });
    }
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "response".into()))
}
