//! What operators and their tools ask of the HTTP listener: is the process alive, can it take
//! reports, and its Prometheus metrics.
//!
//! Owns `/healthz`, `/readyz` and `/metrics`. Never: changes anything, or asks the store more
//! than the core tells (whether it is full, whether it failed).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sdmp::{ErrorCode, Rejection};
use serde::Serialize;
use utoipa::ToSchema;

use super::problem::Problem;
use super::Http;

/// The state of the service.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` (alive) or `ready` (takes reports).
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Alive: the process answers.
#[utoipa::path(
    get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "The process is up", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready: reports can be made durable now (the store is writable).
#[utoipa::path(
    get, path = "/readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "Reports are taken", body = Health),
        (status = 503, description = "The store is out of space (EC 813: reports are refused until there is room) or failed (the server is stopping)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(http): State<Arc<Http>>) -> Response {
    let core = http.core();
    if core.failed().is_cancelled() {
        return Problem::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store failed to commit; the server is stopping",
        )
        .into_response();
    }
    if core.store_full() {
        let rejection = Rejection::new(
            ErrorCode::StoreFull,
            "the store is out of space: nothing was accepted; retry later",
        );
        return Problem::describe(&rejection).into_response();
    }
    Json(Health { status: "ready" }).into_response()
}

/// The Prometheus metrics of the process (the ones `[server] metrics_listen` serves too).
#[utoipa::path(
    get, path = "/metrics", tag = "operations", security(()),
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"),
        (status = 404, description = "This process collects no metrics (ozbus embedded in a program that did not install ozbus's recorder)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn metrics() -> Response {
    match super::METRICS.get() {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            handle.render(),
        )
            .into_response(),
        None => Problem::plain(
            StatusCode::NOT_FOUND,
            "this process collects no metrics: its program installed no recorder",
        )
        .into_response(),
    }
}
