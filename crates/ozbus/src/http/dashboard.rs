//! The live dashboard at `/`: one page, its style sheet and its script, served from the
//! binary (`dashboard/`), with nothing fetched from elsewhere and no build step.
//!
//! Owns the three responses and their headers (a Content-Security-Policy that lets the page
//! load only its own script and style and talk only to this origin), and asking for
//! credentials before the page when users are configured (so that the browser's Basic
//! credentials are cached for the page's own requests). Never: data in the page (the script
//! reads `/v1/summary` and `/v1/transactions`, which apply the user's privileges), or logic of
//! the service (the script renders what those endpoints say, and ends a transaction through
//! `DELETE /v1/transactions/{tx}`).

use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::{auth, Http, Peer};

const PAGE: &str = include_str!("dashboard/index.html");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");

/// The page as served: without users configured, and with (the script asks for credentials
/// only then). Made once, not per request.
static PAGES: LazyLock<[String; 2]> =
    LazyLock::new(|| ["none", "users"].map(|auth| PAGE.replace("<!--auth-->", auth)));

/// Only this origin's script, style and requests; images only inline (the icon).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The dashboard: outcome rates, transactions, latest outcomes, refusals and the store's
/// health, updating live. With users configured, it asks for credentials (HTTP Basic, as the
/// API takes them) before it is served.
#[utoipa::path(
    get, path = "/", tag = "operations",
    responses(
        (status = 200, description = "HTML", body = String, content_type = "text/html"),
        (status = 401, description = "Users are configured and the request has no valid credentials (EC 811)", body = super::problem::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many authentication attempts from this address (EC 814)", body = super::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn page(
    State(http): State<Arc<Http>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    let users = http.core().requires_authentication();
    if users {
        if let Err(problem) = auth::session(&http, &headers, &peer).await {
            return problem.into_response();
        }
    }
    let mut response = asset("text/html; charset=utf-8", &PAGES[usize::from(users)]);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The dashboard's style sheet.
#[utoipa::path(
    get, path = "/dashboard.css", tag = "operations", security(()),
    responses((status = 200, description = "CSS", body = String, content_type = "text/css"))
)]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The dashboard's script.
#[utoipa::path(
    get, path = "/dashboard.js", tag = "operations", security(()),
    responses((status = 200, description = "JavaScript", body = String, content_type = "text/javascript"))
)]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}
