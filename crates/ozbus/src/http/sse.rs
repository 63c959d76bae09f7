//! `GET /v1/stream`: outcomes as Server-Sent Events.
//!
//! Owns the event stream's format: `open` first (the transaction), then `outcome` events whose
//! id is the outcome's sequence number (so a reconnecting `EventSource` sends it back as
//! `Last-Event-ID` and resumes after it, acknowledging it when the stream is persisted), `gap`
//! (XG, id the last sequence number lost), `end` (EF) before the response ends, and a comment
//! line every `[http] stream_keepalive` so that proxies keep an idle stream open. Never: opens
//! or ends a transaction other than through `stream` (the core decides), or buffers beyond the
//! stream's outbound channel: hyper takes the next event only when the connection has room.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::auth::Caller;
use super::problem::Problem;
use super::stream::{self, Event, Stream, StreamQuery};
use super::Http;

/// The media type of an event stream.
pub const EVENT_STREAM: &str = "text/event-stream";

/// The kinds of event a stream sends.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum EventKind {
    /// First: which transaction the stream is (`Opened`).
    Open,
    /// An outcome (`OutcomeJson`).
    Outcome,
    /// Outcomes removed by retention before the stream received them (`Gap`).
    Gap,
    /// The transaction ended; the response ends after it (`Ended`).
    End,
}

/// One event of the stream, as an `EventSource` sees it.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct StreamEvent {
    pub event: EventKind,
    /// The sequence number of an outcome (XS), or the last one lost for a gap; a client that
    /// reconnects sends the last one it received as `Last-Event-ID`.
    #[schema(pattern = "^[0-9]+$")]
    pub id: Option<String>,
    /// One line of JSON: `Opened`, `OutcomeJson`, `Gap` or `Ended`, by the event's kind.
    pub data: String,
}

/// A stream of outcomes as Server-Sent Events (`text/event-stream`). Events: `open` (data: the
/// transaction), `outcome` (id: the sequence number; data: the outcome as JSON), `gap` (id:
/// the last sequence number lost; data: `{"first","last"}`), `end` (data: `{"transaction",
/// "reason"}`; the response ends after it), and a comment line while idle. Reconnecting with
/// `Last-Event-ID` resumes after that sequence number (XR) and, for a persisted stream,
/// acknowledges everything up to it. Refusals come before the stream starts, as problem
/// documents with the EC the EO would get.
#[utoipa::path(
    get, path = "/v1/stream", tag = "streams",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, nullable = false, minimum = 0, maximum = 9223372036854775808_u64, description = "The id of the last event received: resume after it (XR), acknowledging it for a persisted stream; takes the place of resume_after"),
    ),
    responses(
        (status = 200, description = "The event stream; it goes on until the transaction ends, the client leaves, or the server stops", body = StreamEvent, content_type = "text/event-stream"),
        (status = 400, description = "A parameter the EO would refuse (EC 801-808)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials missing or refused (EC 811)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The user may not subscribe (supervisor), or not in that tenant (EC 811, 812)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The transaction names another active transaction (EC 809)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A limit: persisted transactions of the tenant, authentication attempts (EC 814)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is out of space: the persisted transaction could not be stored (EC 813)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn sse(
    State(http): State<Arc<Http>>,
    Caller(session): Caller,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, Problem> {
    let stream = stream::open(&http, &session, &headers, query.as_deref()).await?;
    let body = Body::from_stream(body(stream));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Proxies that buffer responses (nginx) pass this one through as it comes.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response())
}

/// The events of `stream`, as hyper asks for them. Dropped (the client left, or stalled past
/// the stall timeout), it lets go of the transaction.
fn body(stream: Stream) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
    let shutdown: CancellationToken = stream.http().shared.shutdown.clone();
    let keepalive = stream.keepalive();
    let mut first = Vec::new();
    write_event(&mut first, "open", None, &stream.opened);
    let state = Pump {
        stream,
        keepalive,
        shutdown,
        first: Some(Bytes::from(first)),
    };
    futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        if let Some(first) = state.first.take() {
            return Some((Ok(first), Some(state)));
        }
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => return None,
                _ = state.keepalive.tick() => {
                    return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), Some(state)));
                }
                chunk = state.stream.chunks.recv() => {
                    let chunk = chunk?;
                    let mut out = Vec::with_capacity(chunk.frames.len() * 2);
                    let ended = format(&stream::events(&chunk.frames), &mut out);
                    // Handed to hyper, which writes it as the connection takes it.
                    chunk.mark_delivered();
                    drop(chunk);
                    if out.is_empty() {
                        continue;
                    }
                    state.keepalive.reset();
                    let next = (!ended).then_some(state);
                    return Some((Ok(Bytes::from(out)), next));
                }
            }
        }
    })
}

struct Pump {
    stream: Stream,
    keepalive: tokio::time::Interval,
    shutdown: CancellationToken,
    first: Option<Bytes>,
}

/// Writes the events; true once the transaction ended (nothing follows its `end`).
fn format(events: &[Event], out: &mut Vec<u8>) -> bool {
    for event in events {
        match event {
            Event::Outcome(outcome) => write_event(out, "outcome", outcome.seq, outcome),
            Event::Gap(gap) => write_event(out, "gap", Some(gap.last), gap),
            Event::Ended(ended) => {
                write_event(out, "end", None, ended);
                return true;
            }
        }
    }
    false
}

/// One event: its type, its id if any, its data as one line of JSON (JSON escapes line ends).
fn write_event(out: &mut Vec<u8>, event: &str, id: Option<u64>, data: &impl serde::Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    if let Some(id) = id {
        // Into the buffer, without a string of its own (writing to memory cannot fail).
        let _ = write!(out, "\nid: {id}");
    }
    out.extend_from_slice(b"\ndata: ");
    // Serializing these types into memory cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}
