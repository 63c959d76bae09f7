//! `GET /v1/ws`: outcomes over a WebSocket, with acknowledgements and an end the client sends.
//!
//! Owns the messages (JSON text frames). From ozbus: `{"opened": {...}}` first, then each
//! outcome as its JSON object, `{"gap": {"first", "last"}}` (XG), `{"acked": seq}` once an
//! acknowledgement asked to be durable is, `{"error": <problem>}` for a client message that
//! was refused (the stream goes on), and `{"ended": {"transaction", "reason"}}` followed by a
//! close frame when the transaction ends. From the client: `{"ack": seq}` (XA; with
//! `"durable": true` the cursor is written now and `{"acked": seq}` follows) and
//! `{"end": true}` (EE). A ping goes out every `[http] stream_keepalive`. Never: decides what
//! an acknowledgement or an end does (the core does, as for XA and EE), or reads the next
//! outcome while the socket has no room for the last one.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use sdmp::{ErrorCode, Rejection};
use serde::Deserialize;
use serde_json::json;

use super::ingest::{self, failed_commit};
use super::problem::Problem;
use super::stream::{self, Ended, Event, Stream, StreamQuery};
use super::{auth, Http, Peer};

/// Durable acknowledgements waiting for their commit, at most; beyond, the client's next
/// message is read once the oldest is answered.
const PENDING_ACKS: usize = 64;
/// The largest message (and frame) a client may send: its messages are acknowledgements and an
/// end, tens of bytes. A larger one closes the connection; without this bound the WebSocket
/// library would buffer up to 64 MiB of one message, outside the memory budget.
pub const MAX_CLIENT_MESSAGE: usize = 64 << 10;
/// How long a closing WebSocket may take to send its last frames.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A stream of outcomes over a WebSocket: the same parameters, refusals and transaction as
/// `/v1/stream`, with acknowledgements (`{"ack": seq}`, as XA) and an end (`{"end": true}`,
/// as EE) sent by the client. Refusals come before the upgrade, as problem documents.
#[utoipa::path(
    get, path = "/v1/ws", tag = "streams",
    params(StreamQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; the messages are described in docs/protocol.md"),
        (status = 400, description = "A parameter the EO would refuse (EC 801-808)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials missing or refused (EC 811)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The user may not subscribe (supervisor), or not in that tenant (EC 811, 812)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The transaction names another active transaction (EC 809)", body = Problem, content_type = "application/problem+json"),
        (status = 426, description = "Not a WebSocket upgrade request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "A limit: persisted transactions of the tenant, authentication attempts (EC 814)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is out of space: the persisted transaction could not be stored (EC 813)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ws(
    State(http): State<Arc<Http>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return Problem::plain(
            StatusCode::UPGRADE_REQUIRED,
            "a WebSocket upgrade request (GET with Upgrade: websocket) is needed here",
        )
        .into_response();
    };
    // Credentials are checked once the request is known to be an upgrade.
    let opened = async {
        let session = auth::session(&http, &headers, &peer).await?;
        stream::open(&http, &session, &headers, query.as_deref()).await
    };
    let stream = match opened.await {
        Ok(stream) => stream,
        Err(problem) => return problem.into_response(),
    };
    // If the upgrade fails, the closure is dropped with the stream in it: released.
    upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_failed_upgrade(|error| tracing::debug!(%error, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| serve(socket, stream))
}

/// What a client may send.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    ack: Option<u64>,
    #[serde(default)]
    durable: bool,
    end: Option<bool>,
}

/// Why the loop stopped.
enum Stop {
    /// The transaction ended: tell the client, then close.
    Ended(Ended),
    /// The client left, the socket failed or stalled, or the server stops.
    Quietly,
}

async fn serve(socket: WebSocket, mut stream: Stream) {
    let http = stream.http().clone();
    let shutdown = http.shared.shutdown.clone();
    let mut keepalive = stream.keepalive();
    let (mut sink, mut incoming) = socket.split();
    let mut acks = FuturesOrdered::new();
    let opened = json!({ "opened": stream.opened });
    if sink.send(text(&opened)).await.is_err() {
        return;
    }
    let stop = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = sink.send(Message::Close(Some(CloseFrame {
                    code: 1001,
                    reason: Utf8Bytes::from_static("the server is stopping"),
                }))).await;
                break Stop::Quietly;
            }
            _ = keepalive.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break Stop::Quietly;
                }
            }
            chunk = stream.chunks.recv() => {
                let Some(chunk) = chunk else { break Stop::Quietly };
                let mut ended = None;
                let mut failed = false;
                for event in stream::events(&chunk.frames) {
                    let message = match event {
                        Event::Outcome(outcome) => text(&outcome),
                        Event::Gap(gap) => text(&json!({ "gap": gap })),
                        Event::Ended(end) => {
                            ended = Some(end);
                            break;
                        }
                    };
                    // Queued, not flushed: the chunk's messages leave in as few writes as fit.
                    if sink.feed(message).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || sink.flush().await.is_err() {
                    break Stop::Quietly;
                }
                chunk.mark_delivered();
                if let Some(ended) = ended {
                    break Stop::Ended(ended);
                }
            }
            Some((seq, result)) = acks.next(), if !acks.is_empty() => {
                let answer = match result {
                    Ok(()) => json!({ "acked": seq }),
                    Err(problem) => json!({ "error": problem }),
                };
                if sink.send(text(&answer)).await.is_err() {
                    break Stop::Quietly;
                }
            }
            message = incoming.next(), if acks.len() < PENDING_ACKS => {
                let message = match message {
                    Some(Ok(Message::Text(message))) => message,
                    Some(Ok(Message::Binary(_))) => {
                        let refusal = refused(ErrorCode::UnknownMessage, "send JSON text messages");
                        if sink.send(refusal).await.is_err() {
                            break Stop::Quietly;
                        }
                        continue;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Stop::Quietly,
                };
                match serde_json::from_str::<ClientMessage>(message.as_str()) {
                    Ok(ClientMessage { ack: Some(seq), durable, end: None }) => {
                        match stream.acknowledge(seq, durable).await {
                            Ok(None) => {}
                            Ok(Some(ticket)) => {
                                let http = http.clone();
                                acks.push_back(async move {
                                    (seq, ingest::settle(&http, ticket).await.map(|_| ()))
                                });
                            }
                            Err(rejection) => {
                                if sink.send(error(&rejection)).await.is_err() {
                                    break Stop::Quietly;
                                }
                            }
                        }
                    }
                    Ok(ClientMessage { ack: None, end: Some(true), .. }) => match stream.end().await {
                        Ok(ticket) => {
                            // Ended either way; stored or refused for lack of space, the
                            // client is told it ended.
                            if let Err(error) = ticket.await {
                                failed_commit(&http, &error);
                            }
                            break Stop::Ended(Ended {
                                transaction: stream.opened.transaction.clone(),
                                reason: "end",
                            });
                        }
                        Err(rejection) => {
                            if sink.send(error(&rejection)).await.is_err() {
                                break Stop::Quietly;
                            }
                        }
                    },
                    _ => {
                        let refusal = refused(
                            ErrorCode::UnknownMessage,
                            "unknown message: send {\"ack\": <seq>} (with \"durable\": true to have it written now) or {\"end\": true}",
                        );
                        if sink.send(refusal).await.is_err() {
                            break Stop::Quietly;
                        }
                    }
                }
            }
        }
    };
    match stop {
        Stop::Ended(ended) => {
            let _ = sink.send(text(&json!({ "ended": ended }))).await;
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: Utf8Bytes::from_static("the transaction ended"),
                })))
                .await;
        }
        // The client's close is answered (the WebSocket queued the answer), briefly.
        Stop::Quietly => {
            let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
        }
    }
    // The stream (and its hold on the transaction) is dropped here.
    drop(stream);
}

fn text(value: &impl serde::Serialize) -> Message {
    Message::Text(serde_json::to_string(value).unwrap_or_default().into())
}

fn error(rejection: &Rejection) -> Message {
    text(&json!({ "error": Problem::of(rejection) }))
}

fn refused(code: ErrorCode, reason: &'static str) -> Message {
    error(&Rejection::new(code, reason))
}
