//! One connection: read frames in order, answer each, and clean up when it closes.
//!
//! Every frame is handled to the end before the next is read, so messages from one connection
//! take effect in arrival order. A call report changes the call book and is submitted to the
//! store under the book's lock (so the store commits changes in the order the book made them);
//! its MV then waits in the reply sequencer for the commit, while the connection already reads
//! the next frame. Every refusal of every kind becomes an ER in exactly one place, `Connection::handle`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sdmp::framing::Frame;
use sdmp::{
    decode_request, Dialect, Ee, Ef, Envelope, Eo, Er, ErrorCode, Message, Mv, Rejection,
    SdmpCodec, Uo, Us, Vs, WireForm, WriteMessage,
};
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval};
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;

use super::outbound::{self, Outbound, Replies, Reply};
use super::{now_ms, Shared};
use crate::store::Mutation;
use crate::subs::{Open, Subscription};

/// The tenant of requests without TD, and the TX namespace of an unauthenticated connection.
const DEFAULT_TENANT: &[u8] = b"default";

pub(crate) async fn serve(shared: Arc<Shared>, socket: TcpStream, form: WireForm, id: u64) {
    // Replies are small and latency matters more than packet count; writes are batched anyway.
    let _ = socket.set_nodelay(true);
    let (read, write) = socket.into_split();
    let closed = CancellationToken::new();
    let (out, writer) = outbound::start_writer(
        write,
        form,
        shared.config.server.stall_timeout,
        closed.clone(),
    );
    let (replies, sequencer) = outbound::start_replies(out.clone(), shared.fatal.clone());
    let mut frames = FramedRead::new(
        read,
        SdmpCodec::new(form).with_max_frame(shared.config.server.max_frame),
    );
    let mut connection = Connection {
        shared: shared.clone(),
        id,
        form,
        out,
        replies,
        codec: SdmpCodec::new(form),
        keepalive: None,
    };
    loop {
        let keepalive = async {
            match connection.keepalive.as_mut() {
                Some(interval) => interval.tick().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            _ = closed.cancelled() => break,
            _ = keepalive => connection.send_keepalive(),
            frame = frames.next() => match frame {
                Some(Ok(frame)) => {
                    if !connection.handle(frame).await {
                        break;
                    }
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, id, "connection read failed");
                    break;
                }
                None => break,
            },
        }
    }
    // A transaction without PS ends with its connection, a persisted one is released; their
    // deliveries must stop before the outbound channel can close.
    let (ended, mutations) = shared.transactions.release_all_of(id, now_ms());
    for ended in ended {
        ended.finish().await;
    }
    if !mutations.is_empty() {
        super::watch_commit(&shared, shared.store.submit(mutations));
    }
    // Dropping the last senders lets the sequencer send the MVs it still owes, then the writer
    // flush and close the socket.
    drop(connection);
    let _ = sequencer.await;
    let _ = writer.await;
    tracing::debug!(id, "connection closed");
}

struct Connection {
    shared: Arc<Shared>,
    id: u64,
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
                        metrics::counter!("ozbus_rejections_total", "ec" => rejection.code.number().to_string()).increment(1);
                        let er = Er::for_frame(&rejection, &frame, self.form);
                        self.reply(Dialect::of_frame(&frame), er.into()).await
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
        match message {
            Message::Mc(_)
            | Message::Rn(_)
            | Message::Lc(_)
            | Message::Cf(_)
            | Message::Tc(_)
            | Message::Bd(_) => {
                let tenant = tenant.unwrap_or(DEFAULT_TENANT);
                let ticket = {
                    let mut book = self.shared.calls.lock();
                    let mutations = book.apply(now_ms(), tenant, &message)?;
                    // Submitted under the book's lock: the store commits in the book's order.
                    self.shared.store.submit(mutations)
                };
                self.after_commit(dialect, ticket, token).await;
            }
            Message::Uo(uo) => self.update_outcome(dialect, tenant, &uo, token).await?,
            Message::Eo(eo) => {
                self.open_transaction(dialect, tenant, &eo, frame, token)
                    .await?
            }
            Message::Ee(ee) => self.end_transaction(dialect, tenant, &ee, token).await?,
            Message::Xa(xa) => {
                let key = (
                    Bytes::from_static(DEFAULT_TENANT),
                    Bytes::copy_from_slice(xa.tx),
                );
                // With TK the cursor is written now (MV after its commit), else lazily.
                let mutation =
                    self.shared
                        .transactions
                        .acknowledge(&key, xa.xs, token.is_some())?;
                if let Some(mutation) = mutation {
                    let ticket = self.shared.store.submit(vec![mutation]);
                    self.after_commit(dialect, ticket, token).await;
                } else {
                    self.acknowledge(dialect, token).await;
                }
            }
            Message::Vs(vs) => {
                self.keep_alive(dialect, &vs).await;
                self.acknowledge(dialect, token).await;
            }
            Message::Ua(ua) => {
                // No user directory is configured: nobody can authenticate.
                let us = Us {
                    td: tenant.unwrap_or(DEFAULT_TENANT),
                    an: ua.an,
                    rs: 1,
                    pg: None,
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

    /// EO: a new transaction, or the re-issue of a persisted one (which takes it over from the
    /// connection that holds it, if any).
    async fn open_transaction(
        &mut self,
        dialect: Dialect,
        tenant: Option<&[u8]>,
        eo: &Eo<'_>,
        frame: &Bytes,
        token: Option<&[u8]>,
    ) -> Result<(), Rejection> {
        // No TD on an unauthenticated server: every tenant.
        let subscription = Subscription::of(eo, tenant, dialect);
        let opened = self.shared.transactions.open(
            &self.shared.store,
            Open {
                namespace: Bytes::from_static(DEFAULT_TENANT),
                subscription,
                resume_after: eo.xr,
                // Copied: the frame shares the connection's read buffer, the transaction may outlive it.
                persist: eo
                    .ps
                    .map(|ps| (Bytes::copy_from_slice(ps), Bytes::copy_from_slice(frame))),
                connection: self.id,
                out: self.out.clone(),
            },
        )?;
        if let Some(previous) = opened.taken_over {
            // The connection that held it learns it lost it.
            previous.finish_with_ef(None).await;
        }
        let ticket = self.shared.store.submit(opened.mutations);
        self.after_commit(dialect, ticket, token).await;
        Ok(())
    }

    /// EE: ends the transaction (forgetting a persisted one), EF to whoever should know.
    async fn end_transaction(
        &mut self,
        dialect: Dialect,
        tenant: Option<&[u8]>,
        ee: &Ee<'_>,
        token: Option<&[u8]>,
    ) -> Result<(), Rejection> {
        let key = (
            Bytes::from_static(DEFAULT_TENANT),
            Bytes::copy_from_slice(ee.tx),
        );
        let (ended, mutations) = self.shared.transactions.end(&key)?;
        let ef = Ef {
            tx: ee.tx,
            td: tenant,
        };
        if let Some(ended) = ended {
            // Nothing may be sent for the transaction after its EF; the connection that held
            // it, if another, learns that it ended too.
            if ended.connection() == self.id {
                ended.finish().await;
            } else {
                ended.finish_with_ef(tenant).await;
            }
        }
        self.reply(dialect, ef.into()).await;
        let ticket = self.shared.store.submit(mutations);
        self.after_commit(dialect, ticket, token).await;
        Ok(())
    }

    async fn update_outcome(
        &mut self,
        dialect: Dialect,
        tenant: Option<&[u8]>,
        uo: &Uo<'_>,
        token: Option<&[u8]>,
    ) -> Result<(), Rejection> {
        let tenant = tenant.unwrap_or(DEFAULT_TENANT);
        let store = &self.shared.store;
        // Outcomes reported before this UO (on any connection) are committed before it looks.
        if store.submit(Vec::new()).await.is_err() {
            self.shared.fatal.cancel();
            return Ok(());
        }
        let original = match store.latest_outcome(tenant, uo.cn, uo.si, uo.tn).await {
            Ok(Some(original)) => original,
            Ok(None) => {
                return Err(Rejection::new(
                    ErrorCode::NoSuchCall,
                    "no call with a known outcome matches CN and SI/TN",
                ))
            }
            Err(error) => {
                tracing::error!(%error, "looking up an outcome failed");
                self.shared.fatal.cancel();
                return Ok(());
            }
        };
        let ticket = {
            let book = self.shared.calls.lock();
            let outcome = book.update_outcome(tenant, uo, &original)?;
            store.submit(vec![Mutation::Append(outcome)])
        };
        self.after_commit(dialect, ticket, token).await;
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

    /// MV once the commit that makes the request's effect durable is done (if it had TK).
    async fn after_commit(
        &mut self,
        dialect: Dialect,
        ticket: crate::store::CommitTicket,
        token: Option<&[u8]>,
    ) {
        let then = token.map(|tk| self.encode(dialect, Mv { tk }.into()));
        self.replies.send(Reply::AfterCommit { ticket, then }).await;
    }

    /// MV for a request whose effect needs no commit.
    async fn acknowledge(&mut self, dialect: Dialect, token: Option<&[u8]>) {
        if let Some(tk) = token {
            self.reply(dialect, Mv { tk }.into()).await;
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

fn encode(codec: &mut SdmpCodec, message: &(impl WriteMessage + ?Sized)) -> Bytes {
    let mut frame = BytesMut::new();
    // Encoding into memory cannot fail.
    let _ = codec.encode(message, &mut frame);
    frame.freeze()
}
