//! The two tasks between a connection and its socket: the writer, which drains the
//! connection's outbound channel onto the socket, and the reply sequencer, which holds each MV
//! back until the commit it acknowledges, and refuses the request instead (ER) when that
//! commit failed for lack of space.
//!
//! Owns the socket's write half and reply order. Never: decides what a message means (the
//! core does) or what goes into the channel (the connection and the transactions do).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use sdmp::{Dialect, Envelope, SdmpCodec, WireForm};
use tokio_util::codec::Encoder;

use super::connection::Refusal;
use crate::core::CommitFailure;
use crate::outbound::{Chunk, Outbound};
use crate::store::CommitTicket;

/// What a queued reply costs beyond its bytes (its ticket, its place in the queue).
const REPLY_OVERHEAD: usize = 64;
/// Bytes gathered into one write when several chunks are waiting.
const WRITE_GATHER: usize = 256 * 1024;

/// Starts the task that writes the connection's outbound channel to `socket`. It ends when
/// every sender is gone and the channel is drained, or once `finish` is cancelled and what was
/// queued by then is written (senders that are still around, deliveries told to stop, do not
/// hold it up), or the peer fails or stalls (then `closed` is cancelled so the reader side
/// stops too).
pub fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(
    socket: W,
    chunks: mpsc::Receiver<Chunk>,
    stall_timeout: Duration,
    closed: CancellationToken,
    finish: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(write_loop(socket, chunks, stall_timeout, closed, finish))
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut socket: W,
    mut chunks: mpsc::Receiver<Chunk>,
    stall_timeout: Duration,
    closed: CancellationToken,
    finish: CancellationToken,
) {
    let mut gathered = BytesMut::new();
    let mut written = Vec::new();
    loop {
        let first = tokio::select! {
            // What is queued goes out first, also once told to finish.
            biased;
            chunk = chunks.recv() => chunk,
            _ = finish.cancelled() => chunks.try_recv().ok(),
        };
        let Some(first) = first else { break };
        // Whatever else is already queued goes out in the same write: one syscall for many frames.
        let data = match chunks.try_recv() {
            Ok(second) => {
                gathered.extend_from_slice(&first.frames);
                gathered.extend_from_slice(&second.frames);
                written.push(first);
                written.push(second);
                while gathered.len() < WRITE_GATHER {
                    match chunks.try_recv() {
                        Ok(more) => {
                            gathered.extend_from_slice(&more.frames);
                            written.push(more);
                        }
                        Err(_) => break,
                    }
                }
                gathered.split().freeze()
            }
            Err(_) => {
                let frames = first.frames.clone();
                written.push(first);
                frames
            }
        };
        match tokio::time::timeout(stall_timeout, socket.write_all(&data)).await {
            Ok(Ok(())) => written.drain(..).for_each(|chunk| chunk.mark_delivered()),
            Ok(Err(error)) => {
                tracing::debug!(%error, "connection write failed");
                break;
            }
            Err(_) => {
                tracing::warn!(?stall_timeout, "closing a connection that stopped reading");
                break;
            }
        }
    }
    closed.cancel();
    let _ = socket.shutdown().await;
}

/// A reply, in the order the requests came.
pub enum Reply {
    /// Send as soon as every earlier reply has gone.
    Now(Bytes),
    /// Wait for the commit, then send `then` (an MV) if any. A commit that failed for lack of
    /// space refuses the request (its ER, from `refusal`), as does one the core says to
    /// refuse; one whose effect is unknown closes the connection; any other is fatal.
    AfterCommit {
        ticket: CommitTicket,
        then: Option<Then>,
        refusal: Refusal,
    },
}

/// What follows a successful commit.
pub enum Then {
    /// This frame (an MV).
    Frame(Bytes),
    /// An MV with token `tk` and the XS of the outcome the commit appended, for another node
    /// that forwarded the report.
    MvWithSeq {
        dialect: Dialect,
        form: WireForm,
        tk: Bytes,
    },
}

impl Then {
    fn bytes(&self) -> usize {
        match self {
            Then::Frame(frame) => frame.len(),
            Then::MvWithSeq { tk, .. } => tk.len() + 32,
        }
    }

    fn frame(self, seqs: &[u64]) -> Bytes {
        match self {
            Then::Frame(frame) => frame,
            Then::MvWithSeq { dialect, form, tk } => {
                let mv = sdmp::Mv {
                    tk: &tk,
                    xs: seqs.first().copied(),
                };
                let mut frame = BytesMut::new();
                // Encoding into memory cannot fail.
                let _ = SdmpCodec::new(form).encode(
                    &Envelope {
                        dialect,
                        message: mv.into(),
                    },
                    &mut frame,
                );
                frame.freeze()
            }
        }
    }
}

/// The reply sequencer of one connection; see [`start_replies`].
#[derive(Clone)]
pub struct Replies {
    replies: mpsc::UnboundedSender<(Reply, OwnedSemaphorePermit)>,
    /// Bytes of replies the connection may have queued.
    room: Arc<Semaphore>,
    capacity: usize,
}

impl Replies {
    /// Queues a reply; waits while the connection's replies fill their room (a client that
    /// sends faster than it reads is no longer read from). False once the connection is gone.
    pub async fn send(&self, reply: Reply) -> bool {
        let bytes = match &reply {
            Reply::Now(frame) => frame.len(),
            Reply::AfterCommit { then, refusal, .. } => {
                then.as_ref().map_or(0, Then::bytes) + refusal.bytes()
            }
        };
        let cost = u32::try_from((bytes + REPLY_OVERHEAD).min(self.capacity)).unwrap_or(u32::MAX);
        let Ok(permit) = self.room.clone().acquire_many_owned(cost).await else {
            return false;
        };
        self.replies.send((reply, permit)).is_ok()
    }
}

/// Starts the reply sequencer: replies leave in request order, each MV only after its commit.
/// Commits complete in submission order, so waiting for them one by one adds no latency.
/// At most `room` bytes of replies wait in it.
/// A commit that failed for lack of space refused the request: nothing of it was written, and
/// it gets the ER the core's refusal says (so does one the core refuses for another reason).
/// One whose effect is unknown ends the replies and cancels `close`: the connection closes,
/// as if the server had gone, and the client knows to send again. Any other failed commit
/// means the store can no longer be trusted to keep anything: `fatal` is cancelled so the
/// server stops rather than go on accepting what it cannot keep.
pub fn start_replies(
    out: Outbound,
    fatal: CancellationToken,
    close: CancellationToken,
    room: usize,
) -> (Replies, tokio::task::JoinHandle<()>) {
    let (replies, mut receiver) = mpsc::unbounded_channel::<(Reply, OwnedSemaphorePermit)>();
    let capacity = room.clamp(REPLY_OVERHEAD * 4, Semaphore::MAX_PERMITS);
    let task = tokio::spawn(async move {
        while let Some((reply, _room)) = receiver.recv().await {
            let frame = match reply {
                Reply::Now(frame) => Some(frame),
                Reply::AfterCommit {
                    ticket,
                    then,
                    refusal,
                } => match ticket.await {
                    Ok(seqs) => then.map(|then| then.frame(&seqs)),
                    Err(error) => match crate::core::commit_failure(&error) {
                        CommitFailure::Refuse(rejection) => Some(refusal.er(&rejection)),
                        CommitFailure::Unknown => {
                            tracing::info!(%error, "closing a connection: a report's effect is unknown");
                            close.cancel();
                            return;
                        }
                        CommitFailure::Fatal => {
                            tracing::error!(%error, "commit failed: stopping the server");
                            fatal.cancel();
                            return;
                        }
                    },
                },
            };
            if let Some(frame) = frame {
                if !out.send(frame).await {
                    return;
                }
            }
        }
    });
    (
        Replies {
            replies,
            room: Arc::new(Semaphore::new(capacity)),
            capacity,
        },
        task,
    )
}
