//! Ingest in JSON: one report per request, or many as JSON Lines, each handed to the core
//! exactly as the SDMP front end hands the same report over, and answered once its effect is
//! durable.
//!
//! Owns the request and response bodies of `/v1/reports` and `/v1/reports/bulk`, the order of a
//! bulk request's answers, and the answer a resolved commit makes (`settle`, `failed_commit`:
//! the streams and the transactions' DELETE use them too). Never: decides anything about a
//! report (the codec and the core do), answers before the report's commit resolved, or touches
//! the store.

use std::sync::Arc;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::BytesMut;
use futures::StreamExt;
use sdmp::{decode_request, ErrorCode, Message, Rejection};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::fields;
use super::openapi::Report;
use super::problem::Problem;
use super::Http;
use crate::core::{commit_failure, now_ms, CommitFailure, Session};
use crate::outbound::Reservation;
use crate::store::{CommitTicket, StoreError};

/// Largest body of a single report: more than any report the message tables allow needs,
/// even with every character escaped.
pub const MAX_REPORT_BYTES: usize = 4 << 20;
/// The media type of a bulk request and its answer.
pub const NDJSON: &str = "application/x-ndjson";

/// A report accepted and durable.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// The sequence number of the outcome the report produced; absent when it produced none
    /// (MC, LC, BD without DD). A re-send under a used idempotency key is answered with the
    /// first send's (it had its effect then), also after a restart (absent when the first send
    /// was committed by a version of ozbus that did not store it).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub seq: Option<u64>,
}

/// One line of a bulk answer: the report on line `line` of the request was accepted (status
/// 200, `seq` as for a single report) or refused (the problem document's members).
#[derive(Serialize, ToSchema)]
pub struct BulkResult {
    /// The line of the request (1 is the first).
    #[schema(minimum = 1)]
    pub line: usize,
    /// 200, or the status a single request with this report would have got.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub seq: Option<u64>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ec: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl BulkResult {
    fn of(line: usize, result: Result<Accepted, Problem>) -> BulkResult {
        match result {
            Ok(accepted) => BulkResult {
                line,
                status: 200,
                seq: accepted.seq,
                kind: None,
                title: None,
                detail: None,
                ec: None,
                reason: None,
            },
            Err(problem) => BulkResult {
                line,
                status: problem.status,
                seq: None,
                kind: Some(problem.kind),
                title: Some(problem.title),
                detail: Some(problem.detail),
                ec: problem.ec,
                reason: problem.reason,
            },
        }
    }
}

/// Whether the request's Content-Type is `expected` (parameters such as charset aside).
fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

fn unsupported(expected: &str) -> Problem {
    Problem::plain(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("send the body as {expected}"),
    )
}

fn too_large(what: String) -> Problem {
    Problem::of(&Rejection::new(ErrorCode::FrameTooLong, what))
}

/// A request body read whole, its bytes held from the server's memory budget (the one all
/// output shares, `[limits] memory_budget`) until the request is answered.
struct HeldBody {
    bytes: Bytes,
    held: Reservation,
}

/// A body did not arrive within the frame timeout: 408 (what is left of the body is not read,
/// so the connection closes after the answer).
fn too_slow(timeout: std::time::Duration) -> Problem {
    metrics::counter!("ozbus_limit_hits_total", "limit" => "frame_timeout").increment(1);
    Problem::plain(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within {} ([limits] frame_timeout)",
            humantime::format_duration(timeout)
        ),
    )
}

/// The budget had no room for a body: 429, EC 814, retry after a second (bodies and output
/// are released as requests end and clients read, not by the minute).
fn budget_spent() -> Problem {
    metrics::counter!("ozbus_limit_hits_total", "limit" => "memory_budget").increment(1);
    let mut problem = Problem::of(&Rejection::new(
        ErrorCode::LimitReached,
        "the server's memory budget has no room for this request body now; retry later",
    ));
    problem.retry_after = Some(1);
    problem
}

/// The body, if it fits in `limit` bytes, its bytes held from the memory budget as they come:
/// its declared length (Content-Length) before anything is read, or each part as it arrives.
/// When the budget has no room (or the body is larger than the whole budget), the request is
/// refused with EC 814 (429): what came is dropped and the rest of the body read and dropped
/// (up to `limit`), so that the client, which sends its body before it reads the answer, gets
/// the refusal rather than a reset connection.
async fn read_body(http: &Http, body: Body, limit: usize) -> Result<HeldBody, Problem> {
    let larger = || too_large(format!("the request body is larger than {limit} bytes"));
    let budget = http.core().budget();
    let mut held = Reservation::none();
    let room = |held: &mut Reservation, bytes: usize| -> bool {
        if bytes <= held.bytes() {
            return true;
        }
        if bytes > budget.total() {
            return false;
        }
        match budget.try_reserve(bytes - held.bytes()) {
            Some(more) => {
                held.merge(more);
                true
            }
            None => false,
        }
    };
    let declared = HttpBody::size_hint(&body).exact();
    let mut refused = false;
    let mut buffer = BytesMut::new();
    if let Some(length) = declared {
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if length > limit {
            return Err(larger());
        }
        refused = !room(&mut held, length);
        if !refused {
            buffer.reserve(length);
        }
    }
    let mut parts = body.into_data_stream();
    let mut read = 0usize;
    // A body must arrive within the frame timeout, as a frame must: a client that sends one
    // slowly would otherwise hold its part of the budget for as long as it likes.
    let deadline = tokio::time::Instant::now() + http.config().limits.frame_timeout;
    loop {
        let part = match tokio::time::timeout_at(deadline, parts.next()).await {
            Ok(Some(part)) => part,
            Ok(None) => break,
            Err(_) => return Err(too_slow(http.config().limits.frame_timeout)),
        };
        let part = part.map_err(|e| {
            Problem::plain(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            )
        })?;
        read = read.saturating_add(part.len());
        if read > limit {
            return Err(larger());
        }
        if refused {
            continue;
        }
        if !room(&mut held, read) {
            refused = true;
            buffer = BytesMut::new();
            held = Reservation::none();
            continue;
        }
        buffer.extend_from_slice(&part);
    }
    if refused {
        return Err(budget_spent());
    }
    Ok(HeldBody {
        bytes: buffer.freeze(),
        held,
    })
}

/// One report, from JSON to the SDMP frame it stands for: everything about the report that
/// needs no state, but for the codec's checks, which decoding the frame makes.
fn frame(http: &Http, text: &[u8], key_header: Option<&str>) -> Result<Vec<u8>, Rejection> {
    let fields = fields::parse(text)?;
    fields::frame_of(&fields, key_header, http.config().server.max_frame)
}

/// A line of a bulk request that is no valid report: the problem, naming the line.
fn refused_line(line: usize, rejection: &Rejection) -> Problem {
    let mut problem = Problem::of(rejection);
    problem.detail = format!("line {line}: {}", problem.detail);
    problem.line = Some(line);
    problem
}

/// One report, decoded from its frame, to the core; the commit to wait for.
async fn submit(
    http: &Http,
    session: &Session,
    message: Message<'_>,
) -> Result<CommitTicket, Problem> {
    let td = message.common().td;
    Ok(http.core().report(session, td, &message, now_ms()).await?)
}

/// The answer once the commit resolved: accepted (with the outcome's seq), refused (for lack
/// of space, EC 813, or as the core says), 503 when whether it took effect is unknown (a report
/// forwarded to the node holding the call book, whose link broke), or, for any other failure,
/// the service stops (as it does for SDMP).
pub(super) async fn settle(http: &Http, ticket: CommitTicket) -> Result<Accepted, Problem> {
    match ticket.await {
        Ok(seqs) => Ok(Accepted {
            seq: seqs.first().copied(),
        }),
        Err(error) => Err(match failed_commit(http, &error) {
            CommitFailure::Refuse(rejection) => Problem::of(&rejection),
            CommitFailure::Unknown => Problem::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node holding the call book did not answer: the report may or may not have \
                 taken effect; send it again, with an idempotency key to be safe",
            ),
            CommitFailure::Fatal => Problem::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store failed to commit; the server is stopping",
            ),
        }),
    }
}

/// A commit that failed, and what to make of it (see [`commit_failure`]); a fatal failure
/// stops the service (as it does for SDMP).
pub(super) fn failed_commit(http: &Http, error: &StoreError) -> CommitFailure {
    let failure = commit_failure(error);
    if matches!(failure, CommitFailure::Fatal) {
        tracing::error!(%error, "commit failed: stopping the server");
        http.core().failed().cancel();
    }
    failure
}

/// Reports one call event (MC, RN, LC, CF, TC, BD) or outcome correction (UO), given as JSON
/// with the fields listed in the protocol document. The answer comes once the report's effect
/// is durable; a refusal carries the EC and reason of the SDMP ER. A re-send under a used
/// idempotency key has no second effect and is answered as the first send was, with its `seq`.
/// The key may also come as the `Idempotency-Key` header (visible ASCII); given both ways, the
/// two must be the same key (else EC 802, 400).
#[utoipa::path(
    post, path = "/v1/reports", tag = "ingest",
    request_body(content = Report, content_type = "application/json"),
    responses(
        (status = 200, description = "Accepted and durable", body = Accepted),
        (status = 400, description = "Not a readable report, or one that breaks its message's syntax (EC 30, 120, 800-808)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials missing or refused (EC 811)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The user may not send this report, or not in that tenant (EC 811, 812)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No call matches (EC 411)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The call's or the agent's state does not allow it (EC 410, 412, 413, 414)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than allowed (EC 850)", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A code the outcome tables do not allow (EC 406, 407)", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within `[limits] frame_timeout`: nothing was taken", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many authentication attempts from this address, or no room in the memory budget for the body now (EC 814; nothing was taken, retry after Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is out of space: nothing was accepted; retry later (EC 813)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn report(
    State(http): State<Arc<Http>>,
    Caller(session): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Accepted>, Problem> {
    if !content_type_is(&headers, "application/json") {
        return Err(unsupported("application/json"));
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            Rejection::new(
                ErrorCode::ForbiddenCharacter,
                "the Idempotency-Key header must be visible ASCII",
            )
        })?),
    };
    let HeldBody { bytes, held: _held } = read_body(&http, body, MAX_REPORT_BYTES).await?;
    let frame = frame(&http, &bytes, key)?;
    // The frame takes the body's place (it is shorter) within the bytes held for it.
    drop(bytes);
    let envelope = decode_request(&frame)?;
    let ticket = submit(&http, &session, envelope.message).await?;
    Ok(Json(settle(&http, ticket).await?))
}

/// Reports many call events and corrections: one JSON report per line (JSON Lines). Every
/// line is read and checked first: a line that is no valid report (what a single request
/// would refuse with 400 or 413) refuses the whole request, naming the line, and nothing is
/// taken. Then the reports are taken in order, as one SDMP connection's messages are, and the
/// answer has one line per report, in the same order, each written once that report's effect
/// is durable or it was refused for what it means (404, 409, 422, 403, 503); such a refusal
/// does not stop the others. At most `[http] bulk_max_lines` reports and `bulk_max_bytes`
/// bytes (413 beyond, nothing taken).
#[utoipa::path(
    post, path = "/v1/reports/bulk", tag = "ingest",
    request_body(content = Vec<Report>, content_type = "application/x-ndjson", description = "One report per line (each line one JSON object as for /v1/reports); empty lines are skipped"),
    responses(
        (status = 200, description = "One line per report of the request, in order", body = Vec<BulkResult>, content_type = "application/x-ndjson"),
        (status = 400, description = "A line is no valid report (`line` names it; EC 30, 120, 800-808), or an Idempotency-Key header came (give `idempotency_key` per report instead); nothing was taken", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials missing or refused (EC 811)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "More bytes or reports than allowed, or a report longer than the largest frame (EC 850); nothing was taken", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/x-ndjson", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within `[limits] frame_timeout`: nothing was taken", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many authentication attempts from this address, or no room in the memory budget for the body now (EC 814; nothing was taken, retry after Retry-After)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn bulk(
    State(http): State<Arc<Http>>,
    Caller(session): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    if !content_type_is(&headers, NDJSON) {
        return Err(unsupported(NDJSON));
    }
    if headers.contains_key("idempotency-key") {
        return Err(Problem::of(&Rejection::new(
            ErrorCode::UndefinedParameter,
            "an Idempotency-Key header names one report: give each report its idempotency_key",
        )));
    }
    let limits = &http.config().http;
    let body = read_body(&http, body, limits.bulk_max_bytes).await?;
    // Held until the answer is made: first for the body, then for the frames made of it
    // (each shorter than its line) and the answer.
    let _held = body.held;
    let body = body.bytes;
    let lines: Vec<(usize, &[u8])> = body
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.strip_suffix(b"\r").unwrap_or(line)))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    if lines.len() > limits.bulk_max_lines {
        return Err(too_large(format!(
            "{} reports in one request; at most {}",
            lines.len(),
            limits.bulk_max_lines
        )));
    }
    // Every line is written as its frame, and each frame decoded (checked by the codec) once,
    // in the order of the lines: the first line that is no valid report refuses the request.
    let mut frames = Vec::with_capacity(lines.len());
    let mut unwritten = None;
    for (line, text) in lines {
        match frame(&http, text, None) {
            Ok(frame) => frames.push((line, frame)),
            Err(rejection) => {
                unwritten = Some((line, rejection));
                break;
            }
        }
    }
    drop(body);
    let mut reports = Vec::with_capacity(frames.len());
    for (line, frame) in &frames {
        match decode_request(frame) {
            Ok(envelope) => reports.push((*line, envelope.message)),
            Err(rejection) => return Err(refused_line(*line, &rejection)),
        }
    }
    if let Some((line, rejection)) = unwritten {
        return Err(refused_line(line, &rejection));
    }
    // Every report is handed to the core in order before any commit is waited for, as an SDMP
    // connection reads on while its MVs wait: the commits overlap.
    let mut pending = Vec::with_capacity(reports.len());
    for (line, message) in reports {
        pending.push((line, submit(&http, &session, message).await));
    }
    let mut answer = Vec::with_capacity(pending.len() * 32);
    for (line, submitted) in pending {
        let result = match submitted {
            Ok(ticket) => settle(&http, ticket).await,
            Err(problem) => Err(problem),
        };
        let _ = serde_json::to_writer(&mut answer, &BulkResult::of(line, result));
        answer.push(b'\n');
    }
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON))],
        answer,
    )
        .into_response())
}
