//! The HTTP front end: a JSON API beside the SDMP listeners, on the same core.
//!
//! Owns the HTTP listener (plain or TLS, with the certificates of `[tls]`), the routes, and the
//! translation between HTTP/JSON and the core: a report in JSON becomes the SDMP frame it
//! stands for ([`fields`]), decoded by the codec and handed to the same core method the SDMP
//! front end calls; a refusal becomes a problem document with the ER's EC and reason
//! ([`problem`]). Every request acts in a core [`Session`](crate::core::Session): its user's
//! (HTTP Basic or a bearer token, [`auth`]), or nobody's when no users are configured. Never:
//! application logic, or touching the store, the call book or the registry (only the core
//! does); never answers a report before its commit resolved.
//!
//! Routes: `/v1/reports` and `/v1/reports/bulk` (ingest), `/v1/stream` (SSE) and `/v1/ws`
//! (WebSocket): streams of outcomes, each an SDMP transaction ([`stream`]); `/v1/outcomes` and
//! `/v1/calls/{campaign}/{session}` (history); `/v1/transactions` (list, end one);
//! `/v1/summary` (the recent activity, [`summary`]); `/` (the live dashboard, [`dashboard`]);
//! `/v1/tokens`, `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`. Every connection
//! is closed once it takes nothing of what is written to it for the stall timeout ([`stall`]).

// A refusal is made once per refused request and answered at once: a problem document by
// value costs nothing that boxing it would save.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod dashboard;
pub mod events;
pub mod fields;
pub mod history;
pub mod ingest;
pub mod openapi;
pub mod ops;
pub mod params;
pub mod problem;
pub mod sse;
pub mod stall;
pub mod stream;
pub mod summary;
pub mod transactions;
pub mod ws;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tower_service::Service as _;

use crate::config::Config;
use crate::core::Core;
use crate::server::Shared;
use problem::Problem;

/// The metrics of this process, as `/metrics` renders them; set by [`install_metrics`].
static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs ozbus's Prometheus recorder for this process, for `/metrics` of the HTTP listener
/// and, with `listen`, an HTTP listener of its own that serves only the metrics (`[server]
/// metrics_listen`). Once per process; call it on the runtime that runs the server.
pub fn install_metrics(listen: Option<SocketAddr>) -> anyhow::Result<()> {
    // Histograms with buckets (not summaries), so that they add up across nodes: latencies
    // from half a millisecond to ten seconds, batch sizes in powers of two.
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_string()),
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("ozbus_store_commit_batch_size".to_string()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
            ],
        )?;
    let handle = match listen {
        Some(addr) => {
            let (recorder, exporter) = builder.with_http_listener(addr).build()?;
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)?;
            tokio::spawn(exporter);
            handle
        }
        None => builder.install_recorder()?,
    };
    let _ = METRICS.set(handle);
    Ok(())
}

/// How long a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown lets a connection finish the request it is in.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where a request came from: its connection's peer.
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
}

/// What every handler shares.
pub struct Http {
    shared: Arc<Shared>,
    tokens: auth::Tokens,
    /// `/openapi.json`, made once.
    document: Bytes,
}

impl Http {
    fn core(&self) -> &Core {
        &self.shared.core
    }

    fn config(&self) -> &Config {
        &self.shared.config
    }
}

/// The routes, on `shared`'s core.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let document = serde_json::to_vec(&openapi::document_for(&shared.config)).unwrap_or_default();
    let http = Arc::new(Http {
        tokens: auth::Tokens::new(shared.config.http.token_ttl, shared.config.http.max_tokens),
        shared,
        document: Bytes::from(document),
    });
    Router::new()
        .route("/v1/reports", post(ingest::report))
        .route("/v1/reports/bulk", post(ingest::bulk))
        .route("/v1/stream", get(sse::sse))
        .route("/v1/ws", get(ws::ws))
        .route("/v1/outcomes", get(history::outcomes))
        .route("/v1/calls/{campaign}/{session}", get(history::call))
        .route("/v1/transactions", get(transactions::list))
        .route("/v1/transactions/{tx}", delete(transactions::end))
        .route("/v1/summary", get(summary::summary))
        .route("/", get(dashboard::page))
        .route("/dashboard.css", get(dashboard::style))
        .route("/dashboard.js", get(dashboard::script))
        .route("/v1/tokens", post(auth::issue).delete(auth::revoke))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/docs", get(openapi::page))
        .fallback(not_found)
        .layer(middleware::from_fn(count))
        .with_state(http)
}

async fn not_found() -> Response {
    Problem::plain(StatusCode::NOT_FOUND, "no such path: see /docs").into_response()
}

/// Counts every request by route and status.
async fn count(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics::counter!(
        "ozbus_http_requests_total",
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// Accepts HTTP connections on `listener` until shutdown, each served by `router` (over TLS
/// when `secure`), counted against the connection limits like the SDMP listeners' connections.
pub(crate) async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    secure: bool,
    router: Router,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "HTTP accept failed");
                metrics::counter!("ozbus_accept_failures_total").increment(1);
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Some(admitted) = crate::server::admit(&shared, addr.ip()) else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        let (shared, router) = (shared.clone(), router.clone());
        tasks.spawn(async move {
            let peer = Peer { addr };
            if secure {
                let Some(tls) = &shared.tls else { return };
                let handshake = tls.acceptor().accept(socket);
                match tokio::time::timeout(shared.config.tls.handshake_timeout, handshake).await {
                    Ok(Ok(stream)) => serve_connection(&shared, stream, peer, router).await,
                    Ok(Err(error)) => tracing::info!(peer = %addr, %error, "TLS handshake failed"),
                    Err(_) => tracing::info!(peer = %addr, "TLS handshake timed out"),
                }
            } else {
                serve_connection(&shared, socket, peer, router).await;
            }
            drop(admitted);
        });
    }
}

/// HTTP/1.1 on one connection, until the client closes it or shutdown (which lets the request
/// in progress finish, for a while).
async fn serve_connection<S>(shared: &Shared, stream: S, peer: Peer, router: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(peer);
        let mut router = router.clone();
        async move { router.call(request).await }
    });
    let stream = stall::StallGuard::new(stream, shared.config.server.stall_timeout);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(peer = %peer.addr, %error, "HTTP connection ended");
            }
        }
        _ = shared.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
        }
    }
}
