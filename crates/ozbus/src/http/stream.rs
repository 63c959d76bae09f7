//! What the two kinds of stream (Server-Sent Events, `sse`; WebSocket, `ws`) share: the query
//! parameters, opening the transaction as the EO they stand for, the events a delivery writes
//! decoded back from its frames, and letting go of the transaction when the stream ends.
//!
//! A stream is an SDMP transaction in every respect. Its parameters are written as the EO frame
//! they stand for and decoded by the codec (so they are refused exactly as that EO would be);
//! it is opened with `Core::open_transaction` in a session of its own, so one with a PS is the
//! same transaction as an SDMP EO with that PS (either takes it over from the other, and the
//! one that loses it gets EF); its delivery writes OZ, XG and EF frames into an outbound
//! channel like any connection's, which this module decodes into events. Owns the parameter
//! names and defaults (every class; sequenced; a TX of its own) and the keep-alive timer both
//! kinds of stream run. Never: decides what a
//! transaction does, touches the registry or the store, or holds more than the outbound
//! channel's bound (a client that does not read stops its delivery, which then lags in the
//! log, and is closed by the stall timeout).

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use password_hash::rand_core::{OsRng, RngCore};
use sdmp::{decode_request, ErrorCode, Message, Rejection, WireForm};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use utoipa::{IntoParams, ToSchema};

use super::events::{text, OutcomeJson};
use super::params::{self, shown};
use super::problem::Problem;
use super::{ingest, Http};
use crate::core::{now_ms, Session};
use crate::outbound::{self, Chunk};
use crate::store::CommitTicket;

/// The front end a stream's session is of, in the transactions list.
pub const FRONT_END: &str = "http";

/// The parameters of a stream (the EO it stands for). Every one is optional.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct StreamQuery {
    /// TX: names the transaction (unique among the tenant's active ones; EC 809). Default:
    /// `http-<persist>` for a persisted stream (so that reconnecting re-issues it under the
    /// same TX), else `http-` and 16 random hex digits.
    #[param(min_length = 1, max_length = 87, pattern = r"^[^\\\u0000\r\n]*$")]
    transaction: Option<String>,
    /// CN: only outcomes of this campaign.
    #[param(
        min_length = 1,
        max_length = 80,
        pattern = r#"^[^/\\:*?"<>|&%+!';\u0000\r\n]*$"#
    )]
    campaign: Option<String>,
    /// TD: only outcomes of this tenant (without: the user's tenant; a landlord's, or any on a
    /// server without users: every tenant).
    #[param(min_length = 1, max_length = 80, pattern = r"^[A-Za-z0-9_-]*$")]
    tenant: Option<String>,
    /// SO, FO, MO: a comma-separated list of `success`, `failure`, `management`. Default:
    /// all three; empty: EC 808.
    #[param(pattern = r"^(success|failure|management)(,(success|failure|management))*$")]
    classes: Option<String>,
    /// PS: keeps the transaction, and its events, while no stream or connection holds it;
    /// an SDMP EO with the same PS is the same transaction.
    #[param(
        min_length = 1,
        max_length = 80,
        pattern = r#"^[^/\\:*?"<>|&%+!';\u0000\r\n]*$"#
    )]
    persist: Option<String>,
    /// CS: events per second during the roll-forward of a re-issued persisted stream
    /// (default 100).
    #[param(minimum = 1, maximum = 1000000)]
    rate: Option<u32>,
    /// XS: every event carries its sequence number (`seq`, and the SSE event id), and a
    /// persisted stream's cursor moves only with acknowledgements (default `true`). With
    /// `false`, events have no sequence number, and a persisted stream's cursor moves as its
    /// events are handed to the connection.
    sequenced: Option<bool>,
    /// XR: start after this sequence number (a persisted stream: and set its cursor there).
    /// An SSE `Last-Event-ID` header takes its place.
    #[param(minimum = 0, maximum = 9223372036854775808_u64)]
    resume_after: Option<u64>,
}

/// Query parameter → the EO parameter it is written as. `classes` and `sequenced` are flags of
/// their own.
const PARAMS: &[(&str, &str)] = &[
    ("transaction", "TX"),
    ("campaign", "CN"),
    ("tenant", "TD"),
    ("persist", "PS"),
    ("rate", "CS"),
    ("resume_after", "XR"),
];

/// The classes, by name, and their EO flags.
const CLASSES: &[(&str, &str)] = &[("success", "SO"), ("failure", "FO"), ("management", "MO")];

/// The EO a stream's query string and `Last-Event-ID` stand for, and the stream's TX.
/// Refusals: EC 801 (an unknown parameter or class), 802 (a parameter given twice), 806 (a
/// backslash, NUL, CR or LF, which no frame can carry), 807 (`sequenced` neither `true` nor
/// `false`); the codec checks everything else when the frame is decoded.
pub fn eo_frame(
    query: Option<&str>,
    last_event_id: Option<&str>,
) -> Result<(Vec<u8>, String), Rejection> {
    let pairs = params::query_pairs(query)?;
    let mut seen: Vec<&str> = Vec::new();
    let (mut tx, mut persist, mut resume_after) = (None, None, None);
    let (mut classes, mut sequenced) = (None, true);
    let mut params: Vec<(&str, &str)> = Vec::new();
    for (name, value) in &pairs {
        if seen.contains(&name.as_str()) {
            return Err(Rejection::new(
                ErrorCode::RepeatedParameter,
                format!("parameter {:?} given twice", shown(name)),
            ));
        }
        seen.push(name);
        if value.contains(['\\', '\0', '\r', '\n']) {
            return Err(Rejection::new(
                ErrorCode::ForbiddenCharacter,
                format!(
                    "parameter {:?} may not contain a backslash, NUL, CR or LF",
                    shown(name)
                ),
            ));
        }
        match name.as_str() {
            "classes" => classes = Some(value.as_str()),
            "sequenced" => {
                sequenced = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(Rejection::new(
                            ErrorCode::FlagWithValue,
                            "sequenced is true or false",
                        ))
                    }
                }
            }
            "transaction" => tx = Some(value.as_str()),
            "resume_after" => resume_after = Some(value.as_str()),
            other => {
                let Some((_, code)) = PARAMS.iter().find(|(n, _)| *n == other) else {
                    return Err(Rejection::new(
                        ErrorCode::UndefinedParameter,
                        format!("parameter {:?} is not defined for a stream", shown(name)),
                    ));
                };
                if *code == "PS" {
                    persist = Some(value.as_str());
                }
                params.push((code, value));
            }
        }
    }
    let tx = match (tx, persist) {
        (Some(tx), _) => tx.to_owned(),
        (None, Some(ps)) => format!("http-{ps}"),
        (None, None) => {
            let mut random = [0u8; 8];
            OsRng.fill_bytes(&mut random);
            let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
            format!("http-{hex}")
        }
    };
    let mut frame = b"EO\\TX".to_vec();
    frame.extend_from_slice(tx.as_bytes());
    for (code, value) in params {
        push(&mut frame, code, value);
    }
    let classes = classes.unwrap_or("success,failure,management");
    let mut named = Vec::new();
    for class in classes.split(',').filter(|c| !c.is_empty()) {
        // A class named twice is named once.
        if named.contains(&class) {
            continue;
        }
        named.push(class);
        let Some((_, flag)) = CLASSES.iter().find(|(name, _)| *name == class) else {
            return Err(Rejection::new(
                ErrorCode::UndefinedParameter,
                format!(
                    "unknown class {:?}: success, failure or management",
                    shown(class)
                ),
            ));
        };
        push(&mut frame, flag, "");
    }
    if sequenced {
        push(&mut frame, "XS", "");
    }
    // Last-Event-ID is the newer word: a browser reconnecting sends it with the URL it first
    // opened, resume_after and all (which must still be a valid XR).
    if let Some(after) = resume_after {
        let valid = !after.is_empty()
            && after.bytes().all(|b| b.is_ascii_digit())
            && after.parse::<u64>().is_ok_and(|n| n <= 1 << 63);
        if !valid {
            return Err(Rejection::new(
                ErrorCode::BadNumber,
                "resume_after must be a number in 0..9223372036854775808",
            ));
        }
    }
    match last_event_id.filter(|id| !id.is_empty()).or(resume_after) {
        Some(id) if id.contains(['\\', '\0', '\r', '\n']) => {
            return Err(Rejection::new(
                ErrorCode::ForbiddenCharacter,
                "Last-Event-ID may not contain a backslash, NUL, CR or LF",
            ))
        }
        Some(id) => push(&mut frame, "XR", id),
        None => {}
    }
    Ok((frame, tx))
}

fn push(frame: &mut Vec<u8>, code: &str, value: &str) {
    frame.push(b'\\');
    frame.extend_from_slice(code.as_bytes());
    frame.extend_from_slice(value.as_bytes());
}

/// What a stream's client learns first: the transaction it is.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Opened {
    /// TX.
    pub transaction: String,
    /// PS, for a persisted stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist: Option<String>,
}

/// How a stream's transaction ended.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Ended {
    /// TX.
    pub transaction: String,
    /// Why: `ended` (EF: ended with EE or DELETE /v1/transactions, taken over by another
    /// stream or SDMP connection with the same PS, or expired), or `end` (the client's own
    /// `{"end": true}`).
    pub reason: &'static str,
}

/// Outcomes XF to XL were removed by retention before the stream received them (XG).
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct Gap {
    /// XF: the first sequence number lost.
    pub first: u64,
    /// XL: the last sequence number lost.
    pub last: u64,
}

/// One thing a stream tells its client.
// Events live only between decoding a chunk and writing it: boxing the outcome would cost an
// allocation per outcome to save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Event<'a> {
    Outcome(OutcomeJson<'a>),
    Gap(Gap),
    Ended(Ended),
}

/// The events of a chunk of frames the delivery wrote (8-bit form: each ends with NUL).
pub fn events(frames: &[u8]) -> Vec<Event<'_>> {
    let mut events = Vec::new();
    for frame in frames.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let envelope = match sdmp::decode(frame) {
            Ok(envelope) => envelope,
            Err(rejection) => {
                tracing::error!(reason = %rejection.reason, "a frame for a stream does not decode");
                continue;
            }
        };
        match envelope.message {
            Message::Oz(oz) => events.push(Event::Outcome(OutcomeJson::of_oz(&oz))),
            Message::Xg(xg) => events.push(Event::Gap(Gap {
                first: xg.xf,
                last: xg.xl,
            })),
            Message::Ef(ef) => events.push(Event::Ended(Ended {
                transaction: text(ef.tx),
                reason: "ended",
            })),
            _ => {}
        }
    }
    events
}

/// An open stream: its transaction, held by a session of its own, and the channel its delivery
/// writes into. Dropping it lets go of the transaction (a persisted one is kept).
pub struct Stream {
    hold: Hold,
    pub chunks: mpsc::Receiver<Chunk>,
    pub opened: Opened,
    /// TD, as the stream's own acknowledgements and EE name it (with `opened`'s TX).
    td: Option<Bytes>,
}

/// Opens the stream a request of the client of `session` asks for: writes its parameters as
/// an EO, opens (or re-issues, taking over) the transaction, and waits until it is stored, as
/// the EO's MV would. A refusal is the problem document of the ER that EO would get.
pub async fn open(
    http: &Arc<Http>,
    session: &Session,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Stream, Problem> {
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            Rejection::new(ErrorCode::BadNumber, "Last-Event-ID is a sequence number")
        })?),
    };
    let (frame, tx) = eo_frame(query, last_event_id)?;
    let envelope = decode_request(&frame)?;
    let td = envelope.message.common().td;
    let Message::Eo(eo) = envelope.message else {
        return Err(Rejection::new(ErrorCode::UnknownMessage, "not an EO").into());
    };
    let core = http.core();
    let session = core.stream_session(session, FRONT_END);
    let (out, chunks) = outbound::channel(WireForm::Bits8, core.budget().clone());
    let opened = core
        .open_transaction(&session, &eo, td, envelope.dialect, &frame, out)
        .await?;
    // From here on, the transaction is this stream's until it is dropped.
    let hold = Hold {
        http: http.clone(),
        session,
    };
    if let Some(previous) = opened.taken_over {
        // Another stream or connection held it: it learns that it lost it.
        previous.finish_with_ef(None).await;
    }
    ingest::settle(http, opened.ticket).await?;
    Ok(Stream {
        hold,
        chunks,
        opened: Opened {
            transaction: tx,
            persist: eo.ps.map(text),
        },
        td: td.map(Bytes::copy_from_slice),
    })
}

impl Stream {
    /// XA: the client processed every event up to `seq`. With `durable`, the cursor is
    /// written now and the ticket says when it is durable.
    pub async fn acknowledge(
        &self,
        seq: u64,
        durable: bool,
    ) -> Result<Option<CommitTicket>, Rejection> {
        self.hold
            .http
            .core()
            .acknowledge(
                &self.hold.session,
                self.opened.transaction.as_bytes(),
                self.td.as_deref(),
                seq,
                durable,
            )
            .await
    }

    /// EE: ends the transaction (a persisted one is forgotten); its delivery has stopped when
    /// this returns. The ticket says when that is stored.
    pub async fn end(&self) -> Result<CommitTicket, Rejection> {
        let finished = self
            .hold
            .http
            .core()
            .end_transaction(
                &self.hold.session,
                self.opened.transaction.as_bytes(),
                self.td.as_deref(),
            )
            .await?;
        if let Some(ended) = finished.ended {
            ended.finish().await;
        }
        Ok(finished.ticket)
    }

    /// What the shared state of the front end says about stopping and keep-alives.
    pub fn http(&self) -> &Arc<Http> {
        &self.hold.http
    }

    /// The stream's keep-alive timer: it ticks every `[http] stream_keepalive` (10 ms at the
    /// least), first one period from now, and never in bursts after a pause.
    pub fn keepalive(&self) -> Interval {
        let period = self
            .http()
            .config()
            .http
            .stream_keepalive
            .max(Duration::from_millis(10));
        let mut keepalive = tokio::time::interval_at(Instant::now() + period, period);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        keepalive
    }
}

/// A stream's hold on its transaction: dropped, it releases the session (a transaction
/// without PS ends, a persisted one is kept with its cursor), as a closed SDMP connection does.
pub struct Hold {
    http: Arc<Http>,
    session: Session,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let ended = self.http.core().release(&self.session, now_ms());
        if ended.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                for ended in ended {
                    ended.finish().await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(query: &str, last: Option<&str>) -> Result<String, u16> {
        eo_frame(Some(query), last)
            .map(|(f, _)| String::from_utf8(f).unwrap())
            .map_err(|r| r.code.number())
    }

    #[test]
    fn the_parameters_are_written_as_the_eo_they_stand_for() {
        assert_eq!(
            frame("transaction=t&campaign=Sales1&persist=p&rate=5", None).unwrap(),
            r"EO\TXt\CNSales1\PSp\CS5\SO\FO\MO\XS"
        );
        assert_eq!(
            frame("persist=p&classes=failure&sequenced=false", None).unwrap(),
            r"EO\TXhttp-p\PSp\FO"
        );
        // Last-Event-ID wins over resume_after.
        assert_eq!(
            frame("transaction=t&resume_after=3&classes=success", Some("7")).unwrap(),
            r"EO\TXt\SO\XS\XR7"
        );
        let (random, tx) = eo_frame(None, None).unwrap();
        assert!(tx.starts_with("http-") && tx.len() == 21, "{tx}");
        assert!(String::from_utf8(random)
            .unwrap()
            .ends_with(r"\SO\FO\MO\XS"));
    }

    #[test]
    fn what_no_eo_can_say_is_refused_with_the_ec_sdmp_would_give() {
        assert_eq!(frame("colour=red", None), Err(801));
        assert_eq!(frame("classes=gold", None), Err(801));
        assert_eq!(frame("campaign=a&campaign=b", None), Err(802));
        assert_eq!(frame("campaign=a%5Cb", None), Err(806));
        assert_eq!(frame("sequenced=yes", None), Err(807));
        assert_eq!(frame("", Some("1\\TDx")), Err(806));
    }
}
