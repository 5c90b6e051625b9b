//! The search service's Prometheus metrics (`GET /metrics`) and the per-request layer that
//! feeds them: a request id (taken from `X-Request-Id` when the client sent a sane one), one
//! log line per request carrying it, counts and latency per route and status, requests in
//! flight, and how long each stage of a search took.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::Instrument;

use super::AppState;

pub const REQUEST_ID: &str = "x-request-id";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route template (`/v1/images/{id}`), never the raw path: one series per route.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub dimension: String,
    pub sessions: String,
}

pub struct ApiMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
    next_request: AtomicU64,
    /// Random per process: in a container the server is pid 1 in every replica and after every
    /// restart, so the pid alone would repeat ids across pods.
    instance: u64,
}

/// 1 ms … 30 s: a cached probe to a large upload queued behind others.
fn latency_buckets() -> Histogram {
    Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

impl ApiMetrics {
    /// The registry of a server whose model is `model`, publishing the search service's
    /// the search service's own metrics beside the HTTP ones.
    pub fn new(model: &str, dimension: usize, sessions: usize, search: &crate::search::SearchMetrics) -> Self {
        let mut registry = Registry::with_prefix("imgsearch");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by method, route and status", requests.clone());
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(latency_buckets as fn() -> Histogram);
        registry.register("http_request_duration_seconds", "Time to answer, by method and route", latency.clone());
        let in_flight = Gauge::default();
        registry.register("http_requests_in_flight", "Requests being answered now", in_flight.clone());
        search.register(&mut registry);
        let info = Family::<ModelLabels, Gauge>::default();
        registry.register("model_info", "The embedding model this server loaded (value 1)", info.clone());
        info.get_or_create(&ModelLabels {
            model: model.to_string(),
            dimension: dimension.to_string(),
            sessions: sessions.to_string(),
        })
        .set(1);
        let instance = {
            use std::hash::{BuildHasher, Hasher};
            // std's hasher keys are random per process: 64 random bits without a new dependency.
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            hasher.finish()
        };
        Self { registry, requests, latency, in_flight, next_request: AtomicU64::new(1), instance }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The client's `X-Request-Id` if it is short and plain (it ends up in logs), else a new one:
    /// this process's id and a counter, unique per server and cheap.
    fn request_id(&self, request: &Request) -> String {
        let sent = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).filter(|id| {
            (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
        match sent {
            Some(id) => id.to_string(),
            None => format!("{:016x}-{:x}", self.instance, self.next_request.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

/// Outermost layer: every answer, including refusals by the auth and body-limit layers, is
/// counted, timed and logged with its request id, which the response carries back.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let metrics = &state.metrics;
    let started = Instant::now();
    let id = metrics.request_id(&request);
    // A fixed set: any other method name a client invents becomes OTHER, not a new series.
    let method = match *request.method() {
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE | Method::PATCH | Method::OPTIONS => {
            request.method().to_string()
        }
        _ => "OTHER".to_string(),
    };
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    // Probes and scrapes come every few seconds and would drown the log: counted, logged at debug.
    let routine = matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics");
    // At ERROR level, so the span (and its request id) exists whenever any line is logged.
    let span = tracing::error_span!("request", request_id = %id, %method, %route);
    let in_flight = InFlight::enter(&metrics.in_flight);
    let mut response = next.run(request).instrument(span.clone()).await;
    drop(in_flight);
    let took = started.elapsed();
    let status = response.status().as_u16();
    metrics.requests.get_or_create(&RequestLabels { method: method.clone(), route: route.clone(), status }).inc();
    metrics.latency.get_or_create(&RouteLabels { method, route }).observe(took.as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let took_ms = took.as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if routine {
            tracing::debug!(status, took_ms, "answered");
        } else {
            tracing::info!(status, took_ms, "answered");
        }
    });
    response
}

/// Counts a request in flight until dropped, also when the client goes away mid-request and
/// the handler's future is dropped unfinished.
struct InFlight<'a>(&'a Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Prometheus metrics: requests by route and status, latency histograms, per-stage timings,
/// requests in flight, the model loaded.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String))
)]
pub async fn metrics_text(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "could not encode metrics").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_differ_between_server_processes_even_with_the_same_pid() {
        // Two servers stand for two pods whose processes are both pid 1.
        let search = crate::search::SearchMetrics::default();
        let (a, b) = (ApiMetrics::new("m", 1, 1, &search), ApiMetrics::new("m", 1, 1, &search));
        let request = || Request::new(axum::body::Body::empty());
        assert_ne!(a.request_id(&request()), b.request_id(&request()));
        assert_ne!(a.request_id(&request()), a.request_id(&request()), "and within one server");
    }
}
