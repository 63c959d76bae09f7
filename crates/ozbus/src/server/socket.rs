//! The two tasks between a connection and its socket: the writer, which drains the
//! connection's outbound channel onto the socket, and the reply sequencer, which holds each MV
//! back until the commit it acknowledges.
//!
//! Owns the socket's write half and reply order. Never: decides what a message means (the
//! core does) or what goes into the channel (the connection and the transactions do).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::outbound::{Chunk, Outbound};
use crate::store::CommitTicket;

/// Replies in flight per connection (waiting for their commit).
const REPLIES_IN_FLIGHT: usize = 8192;
/// Bytes gathered into one write when several chunks are waiting.
const WRITE_GATHER: usize = 256 * 1024;

/// Starts the task that writes the connection's outbound channel to `socket`. It ends when
/// every sender is gone and the channel is drained, or the peer fails or stalls (then `closed`
/// is cancelled so the reader side stops too).
pub fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(
    socket: W,
    chunks: mpsc::Receiver<Chunk>,
    stall_timeout: Duration,
    closed: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(write_loop(socket, chunks, stall_timeout, closed))
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut socket: W,
    mut chunks: mpsc::Receiver<Chunk>,
    stall_timeout: Duration,
    closed: CancellationToken,
) {
    let mut gathered = BytesMut::new();
    let mut written = Vec::new();
    while let Some(first) = chunks.recv().await {
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
