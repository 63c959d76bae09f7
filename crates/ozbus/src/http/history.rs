//! History: pages of outcomes by filters, as JSON or CSV (`/v1/outcomes`), and one call with
//! its open record and its outcomes, each with the corrections made to it
//! (`/v1/calls/{campaign}/{session}`).
//!
//! Owns the parameters and bodies of these reads, the choice of JSON or CSV, the bound in
//! bytes of a page and of a call ([`PAGE_BYTES`]), and the grouping of a call's corrections
//! (UO) under the outcome they correct. Never: decides who may read what (the core does), or
//! reads the store itself.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sdmp::{ErrorCode, Rejection};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::events::{csv_header, csv_row, tenant_text, text, OutcomeJson, RecordJson};
use super::params::{self, SEQ_MAX};
use super::problem::Problem;
use super::Http;
use crate::store::{OutcomeClass, OutcomePage, OutcomeQuery};

/// Outcomes per page when the request does not say ...
const DEFAULT_LIMIT: u64 = 100;
/// ... and at most.
const MAX_LIMIT: u64 = 1000;
/// Sequence numbers of the log one page examines at most (so a page costs the same whatever
/// its filters; a filter that matches little makes more pages, each with `more`).
const SCAN: u64 = 20_000;
/// The bytes of outcomes a page holds at most: it ends once its body holds this many (with one
/// outcome at least), `more` then true and `next` its last outcome's sequence number. A call
/// likewise shows its newest outcomes up to this many bytes of them (`truncated`). A limit of
/// 1,000 outcomes with 128,000 characters of data each would otherwise make a body of hundreds
/// of megabytes, outside the memory budget.
pub const PAGE_BYTES: usize = 4 << 20;
/// The newest outcomes of one call that are shown.
const CALL_OUTCOMES: usize = 1000;
/// The media type of the CSV form.
pub const CSV: &str = "text/csv; charset=utf-8";

/// The filters of `/v1/outcomes`. Every one is optional.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct OutcomesQuery {
    /// Only outcomes with a sequence number above this (the `next` of the page before).
    #[param(minimum = 0, maximum = 9223372036854775807_u64)]
    after: Option<u64>,
    /// Only outcomes with a sequence number below this.
    #[param(minimum = 0, maximum = 9223372036854775807_u64)]
    before: Option<u64>,
    /// Only outcomes accepted at or after this time (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// Only outcomes accepted before this time (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Only outcomes of this campaign (CN, exactly).
    #[param(
        min_length = 1,
        max_length = 80,
        pattern = r#"^[^/\\:*?"<>|&%+!';\u0000\r\n]*$"#
    )]
    campaign: Option<String>,
    /// A comma-separated list of `success`, `failure`, `management`; default: all three.
    #[param(pattern = r"^(success|failure|management)(,(success|failure|management))*$")]
    classes: Option<String>,
    /// Only outcomes handled, declined or connected by this agent (AN).
    #[param(
        min_length = 1,
        max_length = 80,
        pattern = r#"^[^/\\:*?"<>|&%+!';\u0000\r\n]*$"#
    )]
    agent: Option<String>,
    /// Only outcomes of this number: their TN, or their SI when they have no TN (as UO finds a
    /// call by number).
    #[param(min_length = 1, max_length = 120, pattern = r"^[^\\\u0000\r\n]*$")]
    number: Option<String>,
    /// Only outcomes of this tenant (a user reads its own tenant; a landlord, or anyone
    /// without users configured, every tenant when none is named).
    #[param(min_length = 1, max_length = 80, pattern = r"^[A-Za-z0-9_-]*$")]
    tenant: Option<String>,
    /// Outcomes per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
    /// `json` (default) or `csv`; without it, the first of `application/json` and `text/csv`
    /// the Accept header names.
    #[param(inline)]
    format: Option<Format>,
}

/// The form of a page.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Csv,
}

/// One page of outcomes (the document's schema; [`page_body`] writes it, member for member).
#[derive(Serialize, ToSchema)]
pub struct OutcomesPage<'a> {
    /// The outcomes that match, ascending by sequence number.
    pub outcomes: Vec<OutcomeJson<'a>>,
    /// Every matching outcome up to this sequence number is on this page or an earlier one:
    /// the next page is the same request with `after` set to it (also once `more` is false, to
    /// read what was appended since).
    pub next: u64,
    /// Whether the range goes on in the log beyond `next` already (false: this page reached
    /// the end of the range, or of the log).
    pub more: bool,
}

fn classes_of(value: &str) -> Result<Vec<OutcomeClass>, Rejection> {
    let mut classes = Vec::new();
    for name in value.split(',') {
        let class = match name {
            "success" => OutcomeClass::Success,
            "failure" => OutcomeClass::Failure,
            "management" => OutcomeClass::Management,
            "" if value.is_empty() => {
                return Err(Rejection::new(
                    ErrorCode::NoOutcomeClass,
                    "classes names none of success, failure and management",
                ))
            }
            other => {
                let shown = params::cut(other, 20);
                return Err(Rejection::new(
                    ErrorCode::UndefinedParameter,
                    format!("unknown class {shown:?}: success, failure or management"),
                ));
            }
        };
        if !classes.contains(&class) {
            classes.push(class);
        }
    }
    Ok(classes)
}

/// What `/v1/outcomes` was asked: the store's query, the tenant named, the form.
fn outcomes_query(
    pairs: &[(String, String)],
    headers: &HeaderMap,
) -> Result<(OutcomeQuery, Option<Vec<u8>>, Format), Rejection> {
    let mut query = OutcomeQuery {
        limit: DEFAULT_LIMIT as usize,
        scan: SCAN,
        ..OutcomeQuery::default()
    };
    let (mut tenant, mut format) = (None, None);
    for (name, value) in pairs {
        match name.as_str() {
            "after" => query.after = params::number("after", value, 0, SEQ_MAX)?,
            "before" => query.before = Some(params::number("before", value, 0, SEQ_MAX)?),
            "from" => query.from_ms = Some(params::time("from", value)?),
            "to" => query.to_ms = Some(params::time("to", value)?),
            "campaign" => query.campaign = Some(params::name("campaign", value)?.into()),
            "agent" => query.agent = Some(params::name("agent", value)?.into()),
            "number" => query.number = Some(params::text("number", value, 1, 120)?.into()),
            "classes" => query.classes = classes_of(value)?,
            "tenant" => tenant = Some(params::tenant(value)?),
            "limit" => query.limit = params::number("limit", value, 1, MAX_LIMIT)? as usize,
            "format" => {
                format = Some(match value.as_str() {
                    "json" => Format::Json,
                    "csv" => Format::Csv,
                    _ => {
                        return Err(Rejection::new(
                            ErrorCode::UndefinedParameter,
                            "format is json or csv",
                        ))
                    }
                })
            }
            _ => {}
        }
    }
    let format = format.unwrap_or_else(|| accepted(headers));
    Ok((query, tenant, format))
}

/// The body of a page, as JSON or CSV, and its `next` and `more`: the store's page, its
/// outcomes written one at a time until the body holds [`PAGE_BYTES`] (then cut after the
/// last one written, which `next` names, with `more`).
fn page_body(page: &OutcomePage, format: Format) -> (String, u64, bool) {
    let mut body = String::new();
    match format {
        Format::Json => body.push_str("{\"outcomes\":["),
        Format::Csv => csv_header(&mut body),
    }
    let (mut next, mut more) = (page.next, page.more);
    for (i, outcome) in page.outcomes.iter().enumerate() {
        if i > 0 && body.len() >= PAGE_BYTES {
            (next, more) = (page.outcomes[i - 1].seq, true);
            break;
        }
        let outcome = OutcomeJson::of_outcome(outcome);
        match format {
            Format::Json => {
                if i > 0 {
                    body.push(',');
                }
                // Serializing an outcome into memory cannot fail.
                body.push_str(&serde_json::to_string(&outcome).unwrap_or_default());
            }
            Format::Csv => csv_row(&outcome, &mut body),
        }
    }
    if format == Format::Json {
        let _ = write!(body, "],\"next\":{next},\"more\":{more}}}");
    }
    (body, next, more)
}

/// The first of JSON and CSV the Accept header names (JSON when it names neither).
fn accepted(headers: &HeaderMap) -> Format {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|range| {
            range
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    for range in accept {
        match range.as_str() {
            "text/csv" => return Format::Csv,
            "application/json" => return Format::Json,
            _ => {}
        }
    }
    Format::Json
}

/// The outcomes that match the filters, a page at a time, ascending by sequence number, as
/// JSON or CSV. Pages are cut by sequence number: appends while a client pages never make it
/// miss or repeat an outcome. A page examines at most 20,000 sequence numbers of the log, so it
/// may hold fewer than `limit` outcomes, even none, while `more` is true; and it ends once it
/// holds 4 MiB of outcomes (with one at least), `more` then true. The CSV form has a
/// header row, one row per outcome, every column always (the members of the JSON form); the
/// next page is in the `Link` header (`rel="next"`, while `more`) and `Ozbus-Next`.
#[utoipa::path(
    get, path = "/v1/outcomes", tag = "history",
    params(OutcomesQuery),
    responses(
        (status = 200, description = "One page", content(
            (OutcomesPage = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "A parameter that cannot be read (EC 801, 802, 804-806, 808)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials missing or refused (EC 811)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The user may not read outcomes (supervisor), or not of that tenant (EC 811, 812)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many authentication attempts from this address (EC 814)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store could not be read; retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn outcomes(
    State(http): State<Arc<Http>>,
    Caller(session): Caller,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let known = [
        "after", "before", "from", "to", "campaign", "classes", "agent", "number", "tenant",
        "limit", "format",
    ];
    let pairs = params::pairs(raw.as_deref(), &known)?;
    let (query, tenant, format) = outcomes_query(&pairs, &headers)?;
    let page = http
        .core()
        .outcomes(&session, tenant.as_deref(), query)
        .await?;
    let (body, next, more) = page_body(&page, format);
    let content_type = match format {
        Format::Json => HeaderValue::from_static("application/json"),
        Format::Csv => HeaderValue::from_static(CSV),
    };
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    if format == Format::Csv {
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("inline; filename=\"outcomes.csv\""),
        );
    }
    headers.insert("ozbus-next", HeaderValue::from(next));
    if more {
        let mut query: Vec<(String, String)> = pairs
            .into_iter()
            .filter(|(name, _)| name != "after")
            .collect();
        query.push(("after".to_string(), next.to_string()));
        if let Ok(query) = serde_urlencoded::to_string(&query) {
            if let Ok(link) =
                HeaderValue::from_str(&format!("</v1/outcomes?{query}>; rel=\"next\""))
            {
                headers.insert(header::LINK, link);
            }
        }
    }
    Ok(response)
}

/// The tenant of a call (a landlord names it; without users, it selects it).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TenantQuery {
    /// The tenant (default: the user's; without users, `default`).
    #[param(min_length = 1, max_length = 80, pattern = r"^[A-Za-z0-9_-]*$")]
    tenant: Option<String>,
}

/// One call: its open record, if it is still open, and its outcomes, oldest first, each with
/// the corrections (UO) made to it after it.
#[derive(Serialize, ToSchema)]
pub struct CallJson<'a> {
    /// CN.
    pub campaign: String,
    /// SI.
    pub session: String,
    /// TD, when it is not `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The open record; null once the call has closed (its outcome is in `outcomes`).
    pub record: Option<RecordJson>,
    /// The call's outcomes (the newest 1,000, and about 4 MiB of them), each followed by its
    /// corrections.
    pub outcomes: Vec<CallOutcome<'a>>,
    /// More outcomes of this session are in the log than are shown.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// An outcome of a call, and the corrections made to it.
#[derive(Serialize, ToSchema)]
pub struct CallOutcome<'a> {
    #[serde(flatten)]
    pub outcome: OutcomeJson<'a>,
    /// The corrections (UO, class `management`) made to it, in order: each corrects the one
    /// before it, the last is the call's outcome now.
    pub corrections: Vec<OutcomeJson<'a>>,
}

/// The length of `value` as JSON, counted without writing it anywhere.
fn json_length(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Counting cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A call's outcomes grouped: each correction under the outcome before it that is not one
/// (a UO corrects the call's latest outcome, an earlier correction included).
fn grouped(outcomes: Vec<OutcomeJson<'_>>) -> Vec<CallOutcome<'_>> {
    let mut calls: Vec<CallOutcome> = Vec::new();
    for outcome in outcomes {
        match calls.last_mut() {
            Some(last) if outcome.class == Some("management") => last.corrections.push(outcome),
            _ => calls.push(CallOutcome {
                outcome,
                corrections: Vec::new(),
            }),
        }
    }
    calls
}

/// A call by campaign and session (SI; the number when the call was registered without one):
/// its open record and its outcomes with their corrections. 404 (EC 411) when the store has
/// neither.
#[utoipa::path(
    get, path = "/v1/calls/{campaign}/{session}", tag = "history",
    params(
        ("campaign" = String, Path, description = "CN", min_length = 1, max_length = 80, pattern = r#"^[^/\\:*?"<>|&%+!';\u0000\r\n]*$"#),
        ("session" = String, Path, description = "SI", min_length = 1, max_length = 120, pattern = r"^[^\\\u0000\r\n]*$"),
        TenantQuery,
    ),
    responses(
        (status = 200, description = "The call", body = CallJson),
        (status = 400, description = "A parameter that cannot be read (EC 801, 802, 804, 806)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials missing or refused (EC 811)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The user may not read calls (supervisor), or not of that tenant (EC 811, 812)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No open record and no outcome of that call (EC 411)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many authentication attempts from this address (EC 814)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store could not be read; retry later", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn call(
    State(http): State<Arc<Http>>,
    Caller(session): Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let Path((campaign, session_id)) = path?;
    let tenant = params::tenant_only(raw.as_deref())?;
    let cn = params::name("campaign", &campaign)?;
    let si = params::text("session", &session_id, 1, 120)?;
    let call = http
        .core()
        .call(&session, tenant.as_deref(), &cn, &si, CALL_OUTCOMES)
        .await?;
    // The newest outcomes, up to PAGE_BYTES of their JSON (one at least), oldest first.
    let (mut outcomes, mut bytes, mut truncated) = (Vec::new(), 0, call.truncated);
    for outcome in call.outcomes.iter().rev() {
        if !outcomes.is_empty() && bytes >= PAGE_BYTES {
            truncated = true;
            break;
        }
        let outcome = OutcomeJson::of_outcome(outcome);
        bytes += json_length(&outcome);
        outcomes.push(outcome);
    }
    outcomes.reverse();
    Ok(Json(CallJson {
        campaign: text(&cn),
        session: text(&si),
        tenant: tenant_text(&call.tenant).map(String::from),
        record: call.record.as_ref().map(RecordJson::of),
        outcomes: grouped(outcomes),
        truncated,
    })
    .into_response())
}
