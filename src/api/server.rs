//! The HTTP server loop: hyper's HTTP/1 connections with the limits a public-facing server
//! needs, which `axum::serve` does not expose. A client that opens a connection and then sends
//! its headers or its body slowly, or not at all (slowloris), is cut off; connections beyond a
//! cap are closed at once; shutdown lets requests in flight finish.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{ApiError, AppState};

/// Limits on what one client may hold of the server.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// From a connection's opening (or its previous response) to the end of the next request's
    /// headers; past it the connection is closed (hyper answers nothing: no request was read).
    pub header_timeout: Duration,
    /// Longest wait for the next piece of a request body; past it the request is answered 408
    /// and the connection closed. A wait between pieces, not a total: a slow but moving upload
    /// (a phone on a weak link) is not cut.
    pub body_idle_timeout: Duration,
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// Generous for real clients (nginx waits 60 s for headers; a phone upload pauses for
    /// seconds, not half a minute), small for a slowloris: 512 stalled connections cost it
    /// 10 s each, not forever.
    pub const DEFAULT: Self = Self {
        header_timeout: Duration::from_secs(10),
        body_idle_timeout: Duration::from_secs(30),
        max_connections: 512,
    };
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and waits for
/// the connections' requests in flight to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let ((), connections) = accept_until(&listener, app, limits, shutdown).await;
    drop(listener);
    connections.shutdown().await;
    Ok(())
}

/// Serves `app` on `listener` until `until` completes, and returns its output with the
/// connections still open (to be shut down gracefully). The listener stays the caller's: the
/// starting server hands it on to the real one, so the port never stops answering.
pub async fn accept_until<T>(
    listener: &TcpListener,
    app: Router,
    limits: ConnectionLimits,
    until: impl Future<Output = T>,
) -> (T, GracefulShutdown) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    tokio::pin!(until);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            output = &mut until => return (output, graceful),
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "connection refused: the server holds its maximum of open connections");
            drop(stream);
            continue;
        };
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            drop(slot);
        });
    }
}

/// Middleware: a request body that stops arriving for [`ConnectionLimits::body_idle_timeout`]
/// fails the request with 408 and closes the connection, instead of holding a handler (and an
/// query decoder, an upload lock) for as long as the client likes.
pub async fn body_idle_timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let idle = state.config.connection_limits.body_idle_timeout;
    let stalled = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let flag = Arc::clone(&stalled);
    let chunks = futures::stream::unfold((body.into_data_stream(), false), move |(mut chunks, ended)| {
        let flag = Arc::clone(&flag);
        async move {
            if ended {
                return None;
            }
            match tokio::time::timeout(idle, chunks.next()).await {
                Ok(Some(chunk)) => Some((chunk, (chunks, false))),
                Ok(None) => None,
                Err(_) => {
                    flag.store(true, Ordering::Relaxed);
                    let error = std::io::Error::new(std::io::ErrorKind::TimedOut, "the request body stopped arriving");
                    Some((Err(axum::Error::new(error)), (chunks, true)))
                }
            }
        }
    });
    let response = next.run(Request::from_parts(parts, Body::from_stream(chunks))).await;
    if stalled.load(Ordering::Relaxed) {
        let seconds = idle.as_secs_f64();
        let mut response = ApiError::RequestTimeout(format!(
            "the request body stopped arriving: nothing came for {seconds} s; send it again"
        ))
        .into_response();
        // The rest of a stalled body may still come; the connection is not reusable.
        response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        return response;
    }
    response
}
