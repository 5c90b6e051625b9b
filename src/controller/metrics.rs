//! The controller's Prometheus metrics and its small HTTP server: `/metrics`, `/healthz`
//! (the process is alive) and `/readyz` (it has reached the API server: as leader, or as a
//! standby that sees the lease held by another replica).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `success`, or the kind of failure (`kube`, `milvus`, `invalid_spec`, …).
    pub outcome: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<OutcomeLabels, Counter>,
    pub reconcile_seconds: Histogram,
    pub leader: Gauge,
    /// Set once the API server has answered the lease loop; read by `/readyz`.
    pub api_reachable: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("imgsearch_controller");
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        registry.register("reconciles", "Reconcile passes by outcome", reconciles.clone());
        // 5 ms … ~20 s: a pass is a few API calls plus Milvus round trips.
        let reconcile_seconds = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0]);
        registry.register("reconcile_duration_seconds", "Time one reconcile pass took", reconcile_seconds.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        Arc::new(Self { registry, reconciles, reconcile_seconds, leader, api_reachable: AtomicBool::new(false) })
    }

    pub fn record(&self, outcome: &str, took: Duration) {
        self.reconciles.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(metrics)
}

/// Serves [`router`] until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    axum::serve(listener, router(metrics)).await
}

pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> axum::response::Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "could not encode metrics").into_response(),
    }
}

async fn ready(State(metrics): State<Arc<Metrics>>) -> axum::response::Response {
    if metrics.api_reachable.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok").into_response()
    } else {
        // A 503 says when to ask again, as the search API's do (the lease loop retries every
        // few seconds).
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "the Kubernetes API server has not answered yet",
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_and_timed_in_the_text_format() {
        let metrics = Metrics::new();
        metrics.record("success", Duration::from_millis(20));
        metrics.record("success", Duration::from_millis(30));
        metrics.record("milvus", Duration::from_secs(3));
        metrics.leader.set(1);
        let text = metrics.encode().expect("encodes");
        assert!(text.contains(r#"imgsearch_controller_reconciles_total{outcome="success"} 2"#), "{text}");
        assert!(text.contains(r#"imgsearch_controller_reconciles_total{outcome="milvus"} 1"#), "{text}");
        assert!(text.contains("imgsearch_controller_reconcile_duration_seconds_count 3"), "{text}");
        assert!(text.contains("imgsearch_controller_leader 1"), "{text}");
    }

    #[tokio::test]
    async fn readyz_waits_for_the_api_server_and_metrics_are_served() {
        use tower::ServiceExt;
        let metrics = Metrics::new();
        let get = |path: &'static str| {
            let request = axum::http::Request::get(path).body(axum::body::Body::empty()).expect("request");
            router(metrics.clone()).oneshot(request)
        };
        assert_eq!(get("/healthz").await.expect("response").status(), StatusCode::OK);
        let not_yet = get("/readyz").await.expect("response");
        assert_eq!(not_yet.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(not_yet.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("5"));
        metrics.api_reachable.store(true, Ordering::Relaxed);
        assert_eq!(get("/readyz").await.expect("response").status(), StatusCode::OK);
        let response = get("/metrics").await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap_or_default()
                .starts_with("application/openmetrics-text")
        );
    }
}
