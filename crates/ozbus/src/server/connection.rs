//! One SDMP connection: read frames in order, hand each request to the core, and answer it.
//!
//! Every frame is handled to the end before the next is read, so messages from one connection
//! take effect in arrival order. The core submits each request's effect to the store and
//! returns the commit ticket; the MV then waits in the reply sequencer for that commit, while
//! the connection already reads the next frame. This file keeps only what is SDMP's: decoding,
//! turning every refusal of every kind into an ER in exactly one place (`er_frame`: refusals
//! of `Connection::handle`, and those the sequencer learns from a commit that failed for lack
//! of space, through a [`Refusal`]), reply order, EF and keep-alive. What a request does is
//! the core's.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sdmp::framing::Frame;
use sdmp::schema::FORBIDDEN_IN_NAMES;
use sdmp::{
    decode_request, Dialect, Ef, Envelope, Er, ErrorCode, FaultyFrame, Message, Mv, Rejection,
    SdmpCodec, Ua, Us, Vs, WireForm, WriteMessage,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Interval};
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;

use super::socket::{self, Replies, Reply, Then};
use super::Shared;
use crate::core::auth::Status;
use crate::core::{now_ms, Session, DEFAULT_TENANT};
use crate::outbound::{self, Outbound};
use crate::store::CommitTicket;
use crate::subs::Ended;

pub(crate) async fn serve<R, W>(
    shared: Arc<Shared>,
    read: R,
    write: W,
    form: WireForm,
    session: Session,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (closed, finish) = (CancellationToken::new(), CancellationToken::new());
    let (out, chunks) = outbound::channel(form, shared.core.budget().clone());
    let writer = socket::spawn_writer(
        write,
        chunks,
        shared.config.server.stall_timeout,
        closed.clone(),
        finish.clone(),
    );
    let (replies, sequencer) = socket::start_replies(
        out.clone(),
        shared.core.failed().clone(),
        closed.clone(),
        shared.config.limits.reply_bytes as usize,
    );
    let mut frames = FramedRead::new(
        read,
        SdmpCodec::new(form).with_max_frame(shared.config.server.max_frame),
    );
    let mut connection = Connection {
        shared: shared.clone(),
        session,
        form,
        out,
        replies,
        codec: SdmpCodec::new(form),
        keepalive: None,
    };
    // With users configured, a connection has this long to authenticate.
    let authenticate_by = shared
        .core
        .requires_authentication()
        .then(|| Instant::now() + shared.config.auth.timeout);
    // A frame that has begun must end within the frame timeout: a client that keeps a partial
    // frame open holds its buffer, and many of them would hold a lot. One timer per period,
    // not per frame: a connection is closed when two checks a period apart both find bytes of
    // an unfinished frame and no frame finished in between (so a frame gets between one and
    // two periods).
    let frame_timeout = shared.config.limits.frame_timeout;
    let frame_check = tokio::time::sleep(frame_timeout);
    tokio::pin!(frame_check);
    let (mut frames_done, mut frames_at_check, mut partial_at_check) = (0u64, 0u64, false);
    loop {
        let keepalive = async {
            match connection.keepalive.as_mut() {
                Some(interval) => interval.tick().await,
                None => std::future::pending().await,
            }
        };
        let unauthenticated = async {
            match authenticate_by {
                Some(deadline) if connection.session.principal().is_none() => {
                    tokio::time::sleep_until(deadline).await
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = closed.cancelled() => break,
            _ = &mut frame_check => {
                let partial = !frames.read_buffer().is_empty();
                if !(partial && partial_at_check && frames_done == frames_at_check) {
                    (frames_at_check, partial_at_check) = (frames_done, partial);
                    frame_check.as_mut().reset(Instant::now() + frame_timeout);
                    continue;
                }
                metrics::counter!("ozbus_limit_hits_total", "limit" => "frame_timeout").increment(1);
                tracing::info!(
                    peer = %connection.session.peer(), ?frame_timeout,
                    "closing a connection whose frame did not end in time"
                );
                break;
            }
            _ = unauthenticated => {
                tracing::info!(
                    target: "ozbus::audit", peer = %connection.session.peer(),
                    "closing a connection that did not authenticate in time"
                );
                break;
            }
            _ = keepalive => connection.send_keepalive(),
            frame = frames.next() => match frame {
                Some(Ok(frame)) => {
                    frames_done += 1;
                    if !connection.handle(frame).await {
                        break;
                    }
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, id = connection.session.id(), "connection read failed");
                    break;
                }
                None => break,
            },
        }
    }
    // A transaction without PS ends with its connection, a persisted one is released; their
    // deliveries stop before the connection's output closes, so that what they sent is written.
    // (When the server stops, what the connection holds stays held and its deliveries run on
    // until the core stops them all; nothing they send from now on is written.)
    Ended::finish_all(shared.core.release(&connection.session, now_ms())).await;
    let id = connection.session.id();
    // Dropping its senders lets the sequencer send the MVs it still owes, then the writer
    // write what is queued and close the socket.
    drop(connection);
    let _ = sequencer.await;
    finish.cancel();
    let _ = writer.await;
    tracing::debug!(id, "connection closed");
}

struct Connection {
    shared: Arc<Shared>,
    session: Session,
    form: WireForm,
    out: Outbound,
    replies: Replies,
    /// Encodes this connection's replies (keeps the UTF-16 scratch buffer between them).
    codec: SdmpCodec,
    keepalive: Option<Interval>,
}

impl Connection {
    /// Handles one frame; false when the connection should close.
    async fn handle(&mut self, frame: Frame) -> bool {
        match frame {
            Frame::Message(frame) => {
                let outcome = match decode_request(&frame) {
                    Ok(envelope) => self.dispatch(envelope, &frame).await,
                    Err(rejection) => Err(rejection),
                };
                match outcome {
                    Ok(()) => true,
                    Err(rejection) => {
                        let er = Er::for_frame(&rejection, &frame, self.form);
                        let er = er_frame(&mut self.codec, Dialect::of_frame(&frame), er);
                        self.replies.send(Reply::Now(er)).await
                    }
                }
            }
            other => match other.error_reply(self.shared.config.server.max_frame, self.form) {
                Some(er) => {
                    let frame = encode(&mut self.codec, &er[..]);
                    self.replies.send(Reply::Now(frame)).await
                }
                None => true,
            },
        }
    }

    /// Carries out one valid request; a refusal comes back as the rejection to report.
    async fn dispatch(&mut self, envelope: Envelope<'_>, frame: &Bytes) -> Result<(), Rejection> {
        let Envelope { dialect, message } = envelope;
        let common = message.common();
        let (token, tenant) = (common.tk, common.td);
        let shared = self.shared.clone();
        let core = &shared.core;
        match message {
            Message::Mc(_)
            | Message::Rn(_)
            | Message::Lc(_)
            | Message::Cf(_)
            | Message::Tc(_)
            | Message::Bd(_)
            | Message::Uo(_) => {
                let ticket = core
                    .report(&self.session, tenant, &message, now_ms())
                    .await?;
                self.after_commit(dialect, ticket, token, frame).await;
            }
            Message::Eo(eo) => {
                let opened = core
                    .open_transaction(&self.session, &eo, tenant, dialect, frame, self.out.clone())
                    .await?;
                if let Some(previous) = opened.taken_over {
                    if previous.connection() == self.session.id() && previous.tx() == eo.tx {
                        // Re-issued where it is held, under the same TX: it goes on.
                        previous.finish().await;
                    } else {
                        // The connection that held it learns it lost it.
                        previous.finish_with_ef(None).await;
                    }
                }
                self.after_commit(dialect, opened.ticket, token, frame)
                    .await;
            }
            Message::Ee(ee) => {
                let finished = core.end_transaction(&self.session, ee.tx, tenant).await?;
                if let Some(ended) = finished.ended {
                    // Nothing may be sent for the transaction after its EF; the connection that
                    // held it, if another, learns that it ended too.
                    if ended.connection() == self.session.id() {
                        ended.finish().await;
                    } else {
                        ended.finish_with_ef(tenant).await;
                    }
                }
                let ef = Ef {
                    tx: ee.tx,
                    td: tenant,
                };
                self.reply(dialect, ef.into()).await;
                self.after_commit(dialect, finished.ticket, token, frame)
                    .await;
            }
            Message::Xa(xa) => {
                // With TK the cursor is written now (MV after its commit), else lazily.
                match core
                    .acknowledge(&self.session, xa.tx, tenant, xa.xs, token.is_some())
                    .await?
                {
                    Some(ticket) => self.after_commit(dialect, ticket, token, frame).await,
                    None => self.acknowledge(dialect, token).await,
                }
            }
            Message::Vs(vs) => {
                self.keep_alive(dialect, &vs).await;
                self.acknowledge(dialect, token).await;
            }
            Message::Ua(ua) => {
                let status = core
                    .authenticate(&mut self.session, &ua, tenant, now_ms())
                    .await?;
                let us = Us {
                    td: tenant.unwrap_or(DEFAULT_TENANT),
                    an: named(&ua),
                    rs: status.rs(),
                    pg: match &status {
                        Status::Authenticated(principal) => Some(principal.pg),
                        _ => None,
                    },
                };
                self.reply(dialect, us.into()).await;
                self.acknowledge(dialect, token).await;
            }
            Message::Oz(_)
            | Message::Ef(_)
            | Message::Er(_)
            | Message::Mv(_)
            | Message::Da(_)
            | Message::Us(_)
            | Message::Xg(_) => {
                // decode_request refuses these already; kept for the match to be complete.
                return Err(Rejection::new(
                    ErrorCode::UnknownMessage,
                    "sent by ozbus, not to it",
                ));
            }
        }
        Ok(())
    }

    async fn keep_alive(&mut self, dialect: Dialect, vs: &Vs<'_>) {
        match vs.vi {
            None => {
                self.reply(dialect, sdmp::Da {}.into()).await;
            }
            Some(0) => self.keepalive = None,
            Some(seconds) => {
                let period = Duration::from_secs(u64::from(seconds));
                self.keepalive = Some(tokio::time::interval_at(Instant::now() + period, period));
            }
        }
    }

    fn send_keepalive(&mut self) {
        let da = encode(
            &mut self.codec,
            &Envelope {
                dialect: Dialect::V1,
                message: sdmp::Da {}.into(),
            },
        );
        // A peer that is not reading does not need keep-alives piling up.
        self.out.try_send(da);
    }

    /// MV once the commit that makes the request's effect durable is done (if it had TK); an
    /// ER for `frame` instead if that commit fails for lack of space.
    async fn after_commit(
        &mut self,
        dialect: Dialect,
        ticket: CommitTicket,
        token: Option<&[u8]>,
        frame: &[u8],
    ) {
        let then = token.map(|tk| match self.session.is_node() {
            true => Then::MvWithSeq {
                dialect,
                form: self.form,
                tk: Bytes::copy_from_slice(tk),
            },
            false => Then::Frame(self.encode(dialect, Mv { tk, xs: None }.into())),
        });
        let refusal = Refusal {
            dialect,
            faulty: FaultyFrame::keep(frame, self.form),
            form: self.form,
        };
        self.replies
            .send(Reply::AfterCommit {
                ticket,
                then,
                refusal,
            })
            .await;
    }

    /// MV for a request whose effect needs no commit.
    async fn acknowledge(&mut self, dialect: Dialect, token: Option<&[u8]>) {
        if let Some(tk) = token {
            self.reply(dialect, Mv { tk, xs: None }.into()).await;
        }
    }

    /// Queues a reply behind every earlier one; false when the connection is gone.
    async fn reply(&mut self, dialect: Dialect, message: Message<'_>) -> bool {
        let frame = self.encode(dialect, message);
        self.replies.send(Reply::Now(frame)).await
    }

    fn encode(&mut self, dialect: Dialect, message: Message<'_>) -> Bytes {
        encode(&mut self.codec, &Envelope { dialect, message })
    }
}

/// How to refuse a request once its commit failed for lack of space: what its ER needs of its
/// frame (at most FM's 4,000 characters), kept after the frame is gone.
pub struct Refusal {
    dialect: Dialect,
    faulty: FaultyFrame,
    form: WireForm,
}

impl Refusal {
    /// What it holds, for the connection's room for replies.
    pub fn bytes(&self) -> usize {
        self.faulty.bytes()
    }

    /// The ER refusing the request for `rejection`.
    pub fn er(&self, rejection: &Rejection) -> Bytes {
        let er = self.faulty.er(rejection);
        er_frame(&mut SdmpCodec::new(self.form), self.dialect, er)
    }
}

/// Every ER this front end sends, counted by EC.
fn er_frame(codec: &mut SdmpCodec, dialect: Dialect, er: Er<'_>) -> Bytes {
    match sdmp::ErrorCode::from_number(er.ec) {
        Some(code) => crate::core::rejected(code),
        None => metrics::counter!("ozbus_rejections_total", "ec" => er.ec.to_string()).increment(1),
    }
    encode(
        codec,
        &Envelope {
            dialect,
            message: er.into(),
        },
    )
}

/// The AN of the US that answers `ua`: the name it gave, as AN or as QI. A QI is any text while
/// a name may not contain `/ : * ? " < > | & % + ! ' ;`: such a QI names no user, and echoed as
/// AN it would make a US that no SDMP reader accepts, so the US goes without AN.
fn named<'a>(ua: &Ua<'a>) -> Option<&'a [u8]> {
    ua.an.or(ua
        .qi
        .filter(|qi| !qi.iter().any(|b| FORBIDDEN_IN_NAMES.contains(b))))
}

fn encode(codec: &mut SdmpCodec, message: &(impl WriteMessage + ?Sized)) -> Bytes {
    let mut frame = BytesMut::new();
    // Encoding into memory cannot fail.
    let _ = codec.encode(message, &mut frame);
    frame.freeze()
}
