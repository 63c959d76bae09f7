//! The OpenAPI 3.1 document of the HTTP API, generated from the handlers and their types
//! (utoipa) and, for the reports, from the sdmp message tables; and a page that renders it.
//!
//! Owns `/openapi.json` and `/docs`. Never: describes a route or a field by hand that the code
//! can describe (a handler's annotations, a type's derive, a message's table), or fetches
//! anything from elsewhere at run time (the page is served from the binary).

use std::borrow::Cow;
use std::fmt::Write as _;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use sdmp::ErrorCode;
use serde_json::{json, Value};
use utoipa::openapi::schema::{Discriminator, OneOf, Ref, Schema};
use utoipa::openapi::RefOr;
use utoipa::{OpenApi, PartialSchema, ToSchema};

use super::{
    auth, dashboard, events, fields, history, ingest, ops, problem, sse, stream, summary,
    transactions, ws,
};
use crate::config::Config;

/// Any report: one of the message codes, told apart by `type`.
pub struct Report;

/// The component name of one report's schema.
fn report_component(code: &str) -> String {
    format!("Report{code}")
}

impl PartialSchema for Report {
    fn schema() -> RefOr<Schema> {
        let mut one_of = OneOf::new();
        for code in fields::REPORTS {
            one_of
                .items
                .push(RefOr::Ref(Ref::from_schema_name(report_component(code))));
        }
        let mut discriminator = Discriminator::new(fields::TYPE_FIELD);
        for code in fields::REPORTS {
            discriminator.mapping.insert(
                code.to_string(),
                format!("#/components/schemas/{}", report_component(code)),
            );
        }
        one_of.discriminator = Some(discriminator);
        one_of.description = Some(
            "A report, as JSON: `type` is its SDMP message code, every other field one of its \
             parameters under the name the protocol document lists beside the code."
                .to_string(),
        );
        RefOr::T(Schema::OneOf(one_of))
    }
}

impl ToSchema for Report {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Report")
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ozbus",
        description = "Call outcomes over HTTP: the reports a dialer sends over SDMP, in JSON; \
            streams of outcomes (Server-Sent Events, WebSocket) that are SDMP transactions; \
            the history of outcomes and calls; the transactions. Field names, messages, EC → \
            status table and authentication: docs/protocol.md, section HTTP; every error code: \
            /docs.",
    ),
    paths(
        ingest::report, ingest::bulk, sse::sse, ws::ws, history::outcomes, history::call,
        transactions::list, transactions::end, summary::summary, auth::issue, auth::revoke,
        ops::healthz, ops::readyz, ops::metrics, document, page,
        dashboard::page, dashboard::style, dashboard::script,
    ),
    components(schemas(
        problem::Problem, ingest::Accepted, ingest::BulkResult, auth::Token, ops::Health, Report,
        events::OutcomeJson, events::RecordJson, stream::Opened, stream::Ended, stream::Gap,
        sse::StreamEvent, sse::EventKind,
        history::OutcomesPage, history::CallJson, history::CallOutcome, history::Format,
        transactions::TransactionList, transactions::TransactionJson, transactions::HolderJson,
        transactions::FilterJson, transactions::RollForwardJson,
        summary::SummaryJson, summary::ClassRates, summary::CampaignRateJson,
        summary::RejectionJson, summary::StoreJson,
    )),
    tags(
        (name = "ingest", description = "Reports of call events and outcome corrections"),
        (name = "streams", description = "Outcomes as they are accepted: SDMP transactions over Server-Sent Events and WebSocket"),
        (name = "history", description = "Outcomes and calls as the log holds them"),
        (name = "authentication", description = "Bearer tokens for users"),
        (name = "operations", description = "Transactions, the recent activity, health, readiness, metrics, this document, the dashboard"),
    ),
)]
struct ApiDoc;

/// The document for a server configured as `config`: with users, every report needs
/// credentials; without, none is needed.
pub fn document_for(config: &Config) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    doc["info"]["version"] = Value::from(env!("CARGO_PKG_VERSION"));
    let schemas = &mut doc["components"]["schemas"];
    for code in fields::REPORTS {
        if let Some(spec) = fields::report_spec(code) {
            schemas[report_component(code)] = fields::report_schema(spec);
        }
    }
    doc["components"]["securitySchemes"] = json!({
        "basic": {
            "type": "http", "scheme": "basic",
            "description": "user name as name@tenant, and the password; over TLS (or on loopback)",
        },
        "bearer": {
            "type": "http", "scheme": "bearer",
            "description": "a token from POST /v1/tokens",
        },
    });
    doc["security"] = match config.users.is_empty() {
        false => json!([{ "basic": [] }, { "bearer": [] }]),
        // Nobody exists to authenticate as: credentials are refused (401), none are needed.
        true => json!([{}]),
    };
    doc
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this server", body = Object, content_type = "application/json"))
)]
pub async fn document(
    axum::extract::State(http): axum::extract::State<std::sync::Arc<super::Http>>,
) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        http.document.clone(),
    )
        .into_response()
}

/// A page that renders this document, and lists every error code.
#[utoipa::path(
    get, path = "/docs", tag = "operations", security(()),
    responses((status = 200, description = "HTML", body = String, content_type = "text/html"))
)]
pub async fn page() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        PAGE.as_str(),
    )
        .into_response()
}

static PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let mut codes = String::new();
    for ec in ErrorCode::ALL {
        let _ = write!(
            codes,
            "<tr id=\"ec-{n}\"><td>{n}</td><td>{status}</td><td>{meaning}</td></tr>",
            n = ec.number(),
            status = problem::status_of(ec).as_u16(),
            meaning = escape(ec.meaning()),
        );
    }
    include_str!("docs.html").replace("<!--error codes-->", &codes)
});

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
