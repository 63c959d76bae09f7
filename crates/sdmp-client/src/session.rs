//! The tracked layer: send messages and learn, for each one, whether the server accepted it.
//!
//! Owns: one connection driven by two tasks (a writer that puts whatever is queued into one
//! write, a reader that routes what arrives), the token (TK) it gives every tracked message,
//! the window that bounds how many are unanswered, and each message's [`Receipt`]: it resolves
//! on the MV with its token (accepted and durable), on the ER that names its token (refused:
//! EC and MS), or on the loss of the connection (unknown: it may or may not have taken effect).
//!
//! Never: sends a message again. A message whose connection broke may have taken effect, and
//! only the caller knows whether repeating it is safe (with an SI it usually is: the server
//! refuses a second open record with EC 412). Nor does it read events: a subscription has its
//! own connection ([`Subscription`](crate::Subscription)); other frames are handed over as
//! they come ([`Session::next_frame`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use sdmp::{Frame, MessageView, WireForm};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Credentials;
use crate::connection::{Connection, FrameReader, FrameWriter};
use crate::error::{Error, ErrorReply};
use crate::frames::{codes, frame_code};
use crate::servers::Servers;
use crate::subscription::CONFIRM_WAIT;

/// Frames queued for the writer task before `send` waits.
const OUTGOING: usize = 1024;

/// How a [`Session`] tracks its messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    /// Most tracked messages without an answer; `send` waits for a free place.
    pub window: usize,
    /// The session's tokens are this followed by a number. Messages sent untracked should not
    /// carry tokens that start with it.
    pub token_prefix: String,
    /// Frames that are not answers to tracked messages are kept up to this many for
    /// [`Session::next_frame`]; beyond, they are dropped and counted (so that a caller that
    /// never reads them cannot make the session hold memory without bound).
    pub keep_other_frames: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            window: 1000,
            token_prefix: "c".into(),
            keep_other_frames: 1024,
        }
    }
}

/// A connection that tracks the messages sent on it. Dropping it closes the connection.
#[derive(Debug)]
pub struct Session {
    outgoing: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    others: mpsc::Receiver<Frame>,
    window: usize,
    peer: String,
    stop: CancellationToken,
    writer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    prefix: String,
    next_token: AtomicU64,
    slots: Arc<Semaphore>,
    waiting: Mutex<Waiting>,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Waiting {
    by_token: HashMap<u64, Waiter>,
    closed: bool,
}

#[derive(Debug)]
struct Waiter {
    reply: oneshot::Sender<Result<Bytes, Error>>,
    /// The message's place in the window, given back when the waiter goes.
    _slot: OwnedSemaphorePermit,
}

impl Session {
    /// Connects to `addr` and starts a session with the default options.
    pub async fn connect(addr: &str, form: WireForm) -> Result<Session, Error> {
        let conn = Connection::connect(addr, form).await?;
        Ok(Session::new(conn, SessionOptions::default()))
    }

    /// Connects to the first of `servers` that answers (plain or TLS, as its options say),
    /// authenticates with `credentials` when given (a status other than RS 0 is
    /// [`Error::NotAuthenticated`]; the UA may take [`CONFIRM_WAIT`]), and starts a session.
    /// A session never reconnects: after losing it, call this again, which authenticates the
    /// new connection the same way.
    pub async fn connect_to(
        servers: &mut Servers,
        credentials: Option<&Credentials>,
        options: SessionOptions,
    ) -> Result<Session, Error> {
        let mut conn = servers.connect().await?;
        if let Some(credentials) = credentials {
            conn.log_in(credentials, CONFIRM_WAIT).await?;
        }
        Ok(Session::new(conn, options))
    }

    /// Starts a session on `conn` (already authenticated, when the server wants that). Must be
    /// called within a tokio runtime: it spawns the reader and writer tasks.
    pub fn new(conn: Connection, options: SessionOptions) -> Session {
        let window = options.window.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            prefix: options.token_prefix,
            next_token: AtomicU64::new(1),
            slots: Arc::new(Semaphore::new(window)),
            waiting: Mutex::new(Waiting::default()),
            dropped: AtomicU64::new(0),
        });
        let peer = conn.peer().to_owned();
        let (reader, writer) = conn.split();
        let (outgoing, queued) = mpsc::channel(OUTGOING);
        let (others_tx, others) = mpsc::channel(options.keep_other_frames.max(1));
        let stop = CancellationToken::new();
        tokio::spawn(read(reader, shared.clone(), others_tx, stop.clone()));
        let writer = tokio::spawn(write(writer, queued, shared.clone(), stop.clone()));
        Session {
            outgoing,
            shared,
            others,
            window,
            peer,
            stop,
            writer: Some(writer),
        }
    }

    /// The address of the connection.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Sends `frame` (a message without TK, 8-bit form, no terminator) with a token of the
    /// session's, once the window has room. The [`Receipt`] resolves with the server's answer.
    pub async fn send(&self, frame: &[u8]) -> Result<Receipt, Error> {
        if MessageView::parse(frame).is_ok_and(|view| view.first(codes::TK).is_some()) {
            return Err(Error::Invalid {
                what: "tracked message",
                reason: "it has a TK of its own; the session gives each message its token".into(),
            });
        }
        let slot = self
            .shared
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::ConnectionLost)?;
        let number = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        {
            let mut waiting = self.shared.waiting();
            if waiting.closed {
                return Err(Error::ConnectionLost);
            }
            // Registered before the frame can leave, so the answer always finds it.
            waiting
                .by_token
                .insert(number, Waiter { reply, _slot: slot });
        }
        let token = format!("{}{number}", self.shared.prefix);
        let mut tracked = BytesMut::with_capacity(frame.len() + 3 + token.len());
        tracked.extend_from_slice(frame);
        tracked.extend_from_slice(b"\\TK");
        tracked.extend_from_slice(token.as_bytes());
        if self.outgoing.send(tracked.freeze()).await.is_err() {
            self.shared.waiting().by_token.remove(&number);
            return Err(Error::ConnectionLost);
        }
        Ok(Receipt { token, answer })
    }

    /// Sends `frame` as given, untracked (its answers, if any, come from
    /// [`next_frame`](Self::next_frame)).
    pub async fn send_untracked(&self, frame: &[u8]) -> Result<(), Error> {
        self.outgoing
            .send(Bytes::copy_from_slice(frame))
            .await
            .map_err(|_| Error::ConnectionLost)
    }

    /// The next frame that is not the answer to a tracked message (DA, an MV or ER for a token
    /// that is not the session's, anything else), in arrival order; `None` once the connection
    /// has ended and every such frame was taken.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        self.others.recv().await
    }

    /// Tracked messages sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.window - self.shared.slots.available_permits()
    }

    /// True once the connection has ended (every unanswered receipt then resolved with
    /// [`Error::ConnectionLost`]).
    pub fn is_closed(&self) -> bool {
        self.shared.waiting().closed
    }

    /// Frames dropped because [`SessionOptions::keep_other_frames`] were already waiting.
    pub fn dropped_frames(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Ends the connection now, also while others share the session: receipts not yet
    /// answered resolve with [`Error::ConnectionLost`].
    pub fn abort(&self) {
        self.stop.cancel();
        self.shared.close();
    }

    /// Writes everything queued, then closes the connection. Receipts not yet answered resolve
    /// with [`Error::ConnectionLost`]; to learn their fate, await them before closing.
    pub async fn close(mut self) {
        // Closing the queue lets the writer finish what it holds, flush, and end.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.outgoing, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.close();
    }
}

impl Shared {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        // A panic while holding the lock leaves the map consistent (every change is one call).
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The connection is over: every waiter learns it, and no one waits for the window again.
    fn close(&self) {
        let waiters: Vec<Waiter> = {
            let mut waiting = self.waiting();
            waiting.closed = true;
            waiting.by_token.drain().map(|(_, waiter)| waiter).collect()
        };
        for waiter in waiters {
            let _ = waiter.reply.send(Err(Error::ConnectionLost));
        }
        self.slots.close();
    }

    /// Settles the receipt a frame answers; gives the frame back when it answers none.
    fn settle(&self, frame: Frame) -> Option<Frame> {
        let Frame::Message(bytes) = &frame else {
            return Some(frame);
        };
        let (token, answer) = match frame_code(bytes) {
            Some(codes::MV) => match MessageView::parse(bytes)
                .ok()
                .and_then(|view| view.first(codes::TK))
            {
                Some(token) => (token.to_vec(), Ok(bytes.clone())),
                None => return Some(frame),
            },
            Some(codes::ER) => match ErrorReply::parse(bytes) {
                Some(er) => match er.tk.clone() {
                    Some(token) => (token.to_vec(), Err(Error::Refused(Box::new(er)))),
                    None => return Some(frame),
                },
                None => return Some(frame),
            },
            _ => return Some(frame),
        };
        let waiter = self
            .token_number(&token)
            .and_then(|number| self.waiting().by_token.remove(&number));
        match waiter {
            Some(waiter) => {
                let _ = waiter.reply.send(answer);
                None
            }
            None => Some(frame),
        }
    }

    fn token_number(&self, token: &[u8]) -> Option<u64> {
        let digits = token.strip_prefix(self.prefix.as_bytes())?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }
}

/// The reader task: answers settle receipts, other frames go to `others`.
async fn read(
    mut reader: FrameReader,
    shared: Arc<Shared>,
    others: mpsc::Sender<Frame>,
    stop: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            () = stop.cancelled() => break,
            item = reader.next() => item,
        };
        let frame = match item {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!("session: reading failed: {e}");
                break;
            }
            None => break,
        };
        let Some(frame) = shared.settle(frame) else {
            continue;
        };
        if let Err(mpsc::error::TrySendError::Full(frame)) = others.try_send(frame) {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "session: dropped a frame nobody read: {}",
                crate::frames::frame_text(&frame)
            );
        }
    }
    shared.close();
    stop.cancel();
}

/// The writer task: everything queued goes out in one write.
async fn write(
    mut writer: FrameWriter,
    mut queued: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let written = async {
        while let Some(frame) = queued.recv().await {
            writer.feed(&frame).await?;
            while let Ok(frame) = queued.try_recv() {
                writer.feed(&frame).await?;
            }
            SinkExt::<&[u8]>::flush(&mut writer).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    let failed = tokio::select! {
        () = stop.cancelled() => false,
        result = written => match result {
            Ok(()) => false,
            Err(e) => {
                tracing::debug!("session: writing failed: {e}");
                true
            }
        },
    };
    if failed {
        shared.close();
        stop.cancel();
    }
}

/// The answer to one tracked message: a future that resolves to `Ok(())` on its MV,
/// [`Error::Refused`] on its ER, and [`Error::ConnectionLost`] when the connection ended first.
#[derive(Debug)]
pub struct Receipt {
    token: String,
    answer: oneshot::Receiver<Result<Bytes, Error>>,
}

impl Receipt {
    /// The TK the message was sent with.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Receipt {
    /// Resolves as the receipt does, with the MV itself on acceptance (a server may say more
    /// in it than the token, as ozbus does to its nodes).
    pub async fn accepted(self) -> Result<Bytes, Error> {
        self.answer.await.unwrap_or(Err(Error::ConnectionLost))
    }
}

impl Future for Receipt {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.answer)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(Error::ConnectionLost)).map(drop))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::{read_text, write_all, TestServer};

    fn options(window: usize) -> SessionOptions {
        SessionOptions {
            window,
            ..SessionOptions::default()
        }
    }

    async fn session(server: &TestServer, window: usize) -> Session {
        let conn = Connection::connect(&server.addr, WireForm::Bits8)
            .await
            .unwrap();
        Session::new(conn, options(window))
    }

    #[tokio::test]
    async fn receipts_resolve_on_their_own_answer_in_any_order() {
        let (server, log) = TestServer::scripted(WireForm::Bits8, |_, log, mut conn| async move {
            for _ in 0..3 {
                log.push(&read_text(&mut conn).await.unwrap());
            }
            // Answers in another order than sent, with frames that answer nothing between.
            write_all(
                &mut conn,
                &[
                    "ER\\EC406\\MSinvalid cause\\FM\"CF\\CA1\\CNa\\SI2\\TKc2\"",
                    "DA",
                    "MV\\TKc3",
                    "MV\\TKnot-ours",
                    "MV\\TKc1",
                ],
            )
            .await;
            while read_text(&mut conn).await.is_some() {}
        })
        .await;
        let mut session = session(&server, 10).await;
        let first = session.send(b"MC\\CNa\\SI1").await.unwrap();
        let second = session.send(b"CF\\CA1\\CNa\\SI2").await.unwrap();
        let third = session.send(b"VS").await.unwrap();
        assert_eq!(
            (first.token(), second.token(), third.token()),
            ("c1", "c2", "c3")
        );
        third.await.expect("MV");
        match second.await {
            Err(Error::Refused(er)) => assert_eq!((er.ec, er.ms.as_str()), (406, "invalid cause")),
            other => panic!("{other:?}"),
        }
        first.await.expect("MV");
        assert_eq!(session.in_flight(), 0);
        for want in ["DA", "MV\\TKnot-ours"] {
            let frame = session.next_frame().await.expect("a frame");
            assert_eq!(crate::frame_text(&frame), want);
        }
        assert_eq!(
            log.frames(),
            ["MC\\CNa\\SI1\\TKc1", "CF\\CA1\\CNa\\SI2\\TKc2", "VS\\TKc3"]
        );
        assert!(matches!(
            session.send(b"VS\\TKmine").await,
            Err(Error::Invalid { .. })
        ));
    }

    #[tokio::test]
    async fn the_window_bounds_what_is_unanswered() {
        // Answers nothing until it reads `go`, then everything it read.
        let server = TestServer::start(WireForm::Bits8, |mut conn| async move {
            let mut tokens = Vec::new();
            while let Some(frame) = read_text(&mut conn).await {
                if frame == "go" {
                    let answers: Vec<String> =
                        tokens.drain(..).map(|tk| format!("MV\\TK{tk}")).collect();
                    let answers: Vec<&str> = answers.iter().map(String::as_str).collect();
                    write_all(&mut conn, &answers).await;
                } else if let Some((_, tk)) = frame.rsplit_once("\\TK") {
                    tokens.push(tk.to_owned());
                }
            }
        })
        .await;
        let session = session(&server, 2).await;
        let first = session.send(b"VS").await.unwrap();
        let _second = session.send(b"VS").await.unwrap();
        assert_eq!(session.in_flight(), 2);
        let third = tokio::time::timeout(Duration::from_millis(200), session.send(b"VS")).await;
        assert!(third.is_err(), "a third message must wait for room");
        session.send_untracked(b"go").await.unwrap();
        first.await.unwrap();
        let third = session.send(b"VS").await.unwrap();
        assert_eq!(
            third.token(),
            "c3",
            "a send that gave up waiting took no token"
        );
        session.send_untracked(b"go").await.unwrap();
        third.await.unwrap();
        assert_eq!(session.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_lost_connection_resolves_every_receipt() {
        let server = TestServer::start(WireForm::Bits8, |mut conn| async move {
            read_text(&mut conn).await;
            write_all(&mut conn, &["DA"]).await;
            read_text(&mut conn).await;
            // Returning drops the connection: both messages stay unanswered.
        })
        .await;
        let mut session = session(&server, 10).await;
        let receipts = [
            session.send(b"VS").await.unwrap(),
            session.send(b"VS").await.unwrap(),
        ];
        for receipt in receipts {
            assert!(matches!(receipt.await, Err(Error::ConnectionLost)));
        }
        assert!(session.is_closed());
        let frame = session.next_frame().await.expect("the DA");
        assert_eq!(crate::frame_text(&frame), "DA");
        assert!(session.next_frame().await.is_none());
        assert!(matches!(
            session.send(b"VS").await,
            Err(Error::ConnectionLost)
        ));
    }

    #[tokio::test]
    async fn close_writes_what_is_queued_first() {
        let (server, log) = TestServer::scripted(WireForm::Bits8, |_, log, mut conn| async move {
            while let Some(frame) = read_text(&mut conn).await {
                log.push(&frame);
            }
            log.push("closed");
        })
        .await;
        let session = session(&server, 10).await;
        for n in 0..100 {
            session
                .send_untracked(format!("VS\\VI{n}").as_bytes())
                .await
                .unwrap();
        }
        session.close().await;
        for _ in 0..200 {
            if log.frames().last().map(String::as_str) == Some("closed") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let frames = log.frames();
        assert_eq!(frames.len(), 101, "{frames:?}");
        assert_eq!(frames[99], "VS\\VI99");
    }
}
