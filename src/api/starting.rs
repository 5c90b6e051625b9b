//! The search server before its index is open. It listens at once and answers while it starts:
//! `/healthz` is ok (the process lives: a slow start is not killed by the kubelet), everything
//! else, `/readyz` included, is 503 with `Retry-After` and what it waits for. Milvus or the
//! catalog not answering at start is waited for, with backoff, not a crash: the pod starts
//! unready and becomes ready when they answer, instead of crash-looping behind a Milvus that
//! is still starting. A model that does not load is a configuration error and stops the
//! process at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::ServeCommand;
use crate::embed::Workload;
use crate::index::ImageIndex;

/// Longest wait between two attempts to reach Milvus and the catalog.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// One attempt's bound: a black-holed address answers nothing, and the next attempt (and the
/// log line saying so) must still come.
const ATTEMPT_PATIENCE: Duration = Duration::from_secs(20);

/// What the starting server says it waits for. Public, so without addresses or the errors'
/// words (the log has them), as the ready server's own 503s.
#[derive(Debug)]
pub struct Starting {
    waiting_for: Mutex<String>,
}

impl Starting {
    pub fn new(waiting_for: &str) -> Arc<Self> {
        Arc::new(Self { waiting_for: Mutex::new(waiting_for.into()) })
    }

    fn set(&self, waiting_for: String) {
        if let Ok(mut current) = self.waiting_for.lock() {
            *current = waiting_for;
        }
    }

    fn get(&self) -> String {
        self.waiting_for.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

/// The starting server's one handler (see the module's comment): `GET /healthz` is ok,
/// anything else is 503. Not routes of the API (the OpenAPI document describes those).
pub fn router(starting: Arc<Starting>) -> Router {
    Router::new().fallback(move |method: Method, uri: Uri| {
        let starting = Arc::clone(&starting);
        async move {
            if uri.path() == "/healthz" && (method == Method::GET || method == Method::HEAD) {
                "ok".into_response()
            } else {
                not_yet(&starting.get())
            }
        }
    })
}

/// 503 in the API's error shape, without a warning logged per probe.
fn not_yet(waiting_for: &str) -> Response {
    let message = format!("the server is starting: {waiting_for}");
    let body = serde_json::json!({ "error": { "code": "unavailable", "message": message } });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// Loads the model (an error stops the server), then connects to Milvus and opens the catalog
/// until both answer, saying on `starting` and in the log what it waits for.
pub async fn open_index(command: &ServeCommand, starting: &Starting) -> anyhow::Result<ImageIndex> {
    starting.set("loading the model".into());
    let model = command.model.load(Workload::Latency).await?;
    let uri = &command.backend.milvus_uri;
    let mut delay = Duration::from_secs(1);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        starting.set("connecting to Milvus and opening the catalog".into());
        let opened = tokio::time::timeout(
            ATTEMPT_PATIENCE,
            ImageIndex::with_model(
                &command.backend,
                &command.collection,
                Arc::clone(&model),
                command.model.limits,
                command.index.clone(),
            ),
        )
        .await;
        let error = match opened {
            Ok(Ok(index)) => {
                if attempt > 1 {
                    tracing::info!(attempt, "Milvus and the catalog answer");
                }
                return Ok(index);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("Milvus at {uri} or the catalog did not answer within {} s", ATTEMPT_PATIENCE.as_secs()),
        };
        tracing::warn!(%error, attempt, retry_in_seconds = delay.as_secs(), "not ready: cannot open the index yet");
        starting.set(format!(
            "Milvus or the catalog does not answer yet (attempt {attempt}; the next in {} s; the server's log says why)",
            delay.as_secs()
        ));
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}
