//! What a connection sends: the outbound channel every producer writes to (replies, events,
//! keep-alives), the task that writes it to the socket, and the reply sequencer that holds each
//! MV back until the commit it acknowledges.
//!
//! Producers hand over frames already encoded for the connection's wire form. The channel is
//! bounded: a peer that stops reading makes producers wait (and delivery lag in the log),
//! never makes the server buffer without limit; after the stall timeout the connection is
//! closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sdmp::WireForm;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::CommitTicket;

/// Chunks queued for one connection's socket.
const OUTBOUND_CHUNKS: usize = 8;
/// Replies in flight per connection (waiting for their commit).
const REPLIES_IN_FLIGHT: usize = 8192;
/// Bytes gathered into one write when several chunks are waiting.
const WRITE_GATHER: usize = 256 * 1024;

/// Frames for the socket, already encoded, with what their delivery proves.
#[derive(Debug)]
pub struct Chunk {
    pub frames: Bytes,
    /// Set to `seq` (if higher) once the frames have been handed to the operating system: the
    /// delivered cursor of a persisted transaction.
    pub delivered: Option<(Arc<AtomicU64>, u64)>,
}

impl From<Bytes> for Chunk {
    fn from(frames: Bytes) -> Chunk {
        Chunk {
            frames,
            delivered: None,
        }
    }
}

/// A connection's outbound channel.
#[derive(Clone, Debug)]
pub struct Outbound {
    form: WireForm,
    chunks: mpsc::Sender<Chunk>,
}

impl Outbound {
    pub fn form(&self) -> WireForm {
        self.form
    }

    /// Queues encoded frames; waits while the channel is full. False once the connection is gone.
    pub async fn send(&self, chunk: impl Into<Chunk>) -> bool {
        self.chunks.send(chunk.into()).await.is_ok()
    }

    /// Queues encoded frames unless the channel is full (for keep-alives, which a peer that is
    /// not reading does not need).
    pub fn try_send(&self, chunk: impl Into<Chunk>) -> bool {
        self.chunks.try_send(chunk.into()).is_ok()
    }
}

/// Creates a connection's outbound channel and starts the task that writes it to `socket`.
/// The task ends when every sender is gone and the channel is drained, or the peer fails or
/// stalls (then `closed` is cancelled so the reader side stops too).
pub fn start_writer(
    socket: OwnedWriteHalf,
    form: WireForm,
    stall_timeout: Duration,
    closed: CancellationToken,
) -> (Outbound, tokio::task::JoinHandle<()>) {
    let (chunks, receiver) = mpsc::channel(OUTBOUND_CHUNKS);
    let writer = tokio::spawn(write_loop(socket, receiver, stall_timeout, closed));
    (Outbound { form, chunks }, writer)
}

async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut chunks: mpsc::Receiver<Chunk>,
    stall_timeout: Duration,
    closed: CancellationToken,
) {
    let mut gathered = BytesMut::new();
    let mut marks = Vec::new();
    while let Some(first) = chunks.recv().await {
        // Whatever else is already queued goes out in the same write: one syscall for many frames.
        marks.extend(first.delivered);
        let data = match chunks.try_recv() {
            Ok(second) => {
                gathered.extend_from_slice(&first.frames);
                gathered.extend_from_slice(&second.frames);
                marks.extend(second.delivered);
                while gathered.len() < WRITE_GATHER {
                    match chunks.try_recv() {
                        Ok(more) => {
                            gathered.extend_from_slice(&more.frames);
                            marks.extend(more.delivered);
                        }
                        Err(_) => break,
                    }
                }
                gathered.split().freeze()
            }
            Err(_) => first.frames,
        };
        match tokio::time::timeout(stall_timeout, socket.write_all(&data)).await {
            Ok(Ok(())) => {
                for (cursor, seq) in marks.drain(..) {
                    cursor.fetch_max(seq, Ordering::Release);
                }
            }
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
    /// Wait for the commit, then send `then` (an MV) if any. A failed commit is fatal.
    AfterCommit {
        ticket: CommitTicket,
        then: Option<Bytes>,
    },
}

/// The reply sequencer of one connection; see [`start_replies`].
#[derive(Clone)]
pub struct Replies {
    replies: mpsc::Sender<Reply>,
}

impl Replies {
    /// Queues a reply; waits while too many are in flight (backpressure on a flooding sender).
    pub async fn send(&self, reply: Reply) -> bool {
        self.replies.send(reply).await.is_ok()
    }
}

/// Starts the reply sequencer: replies leave in request order, each MV only after its commit.
/// Commits complete in submission order, so waiting for them one by one adds no latency.
/// A commit that fails means the store can no longer make anything durable: `fatal` is
/// cancelled so the server stops rather than go on accepting what it cannot keep.
pub fn start_replies(
    out: Outbound,
    fatal: CancellationToken,
) -> (Replies, tokio::task::JoinHandle<()>) {
    let (replies, mut receiver) = mpsc::channel::<Reply>(REPLIES_IN_FLIGHT);
    let task = tokio::spawn(async move {
        while let Some(reply) = receiver.recv().await {
            let frame = match reply {
                Reply::Now(frame) => Some(frame),
                Reply::AfterCommit { ticket, then } => match ticket.await {
                    Ok(_) => then,
                    Err(error) => {
                        tracing::error!(%error, "commit failed: stopping the server");
                        fatal.cancel();
                        return;
                    }
                },
            };
            if let Some(frame) = frame {
                if !out.send(frame).await {
                    return;
                }
            }
        }
    });
    (Replies { replies }, task)
}
