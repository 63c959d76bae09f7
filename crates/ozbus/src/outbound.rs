//! What a subscriber's connection is sent through: the bounded channel of encoded frames that
//! every producer writes to (replies, events, keep-alives), and the marks that tell a persisted
//! transaction how far its frames got.
//!
//! Owns the channel's shape and its bound. Never: sockets, encoding, or what the frames mean.
//! The front end that owns the connection drains the channel onto its transport (for SDMP,
//! `server::socket`); transactions (`subs`) only ever write into it, so this sits below both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sdmp::WireForm;
use tokio::sync::mpsc;

/// Chunks queued for one connection: a peer that stops reading makes producers wait (and
/// delivery lag in the log), never makes the server buffer without limit.
const OUTBOUND_CHUNKS: usize = 8;

/// Frames for the connection, already encoded, with what their delivery proves.
#[derive(Debug)]
pub struct Chunk {
    pub frames: Bytes,
    /// Raised to `seq` once the frames have been handed to the operating system: the
    /// delivered cursor of a persisted transaction.
    pub delivered: Option<(Arc<AtomicU64>, u64)>,
}

impl Chunk {
    /// Records that the chunk's frames were handed over (called by the transport's writer).
    pub fn mark_delivered(&self) {
        if let Some((cursor, seq)) = &self.delivered {
            cursor.fetch_max(*seq, Ordering::Release);
        }
    }
}

impl From<Bytes> for Chunk {
    fn from(frames: Bytes) -> Chunk {
        Chunk {
            frames,
            delivered: None,
        }
    }
}

/// A connection's outbound channel (the sending side; cheap to clone).
#[derive(Clone, Debug)]
pub struct Outbound {
    form: WireForm,
    chunks: mpsc::Sender<Chunk>,
}

/// Creates a connection's outbound channel: the sender every producer shares, and the receiver
/// the transport drains.
pub fn channel(form: WireForm) -> (Outbound, mpsc::Receiver<Chunk>) {
    let (chunks, receiver) = mpsc::channel(OUTBOUND_CHUNKS);
    (Outbound { form, chunks }, receiver)
}

impl Outbound {
    /// The wire form the frames must be encoded in.
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
