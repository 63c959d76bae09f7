//! What a subscriber's connection is sent through: the bounded channel of encoded frames that
//! every producer writes to (replies, events, keep-alives), the marks that tell a persisted
//! transaction how far its frames got, and the memory budget all connections' output shares.
//!
//! Every chunk in a channel holds a reservation of its bytes from the process-wide [`Budget`]
//! until the transport has written it: output waiting for slow or silent clients can never
//! exceed the budget, however many connections and transactions there are. A producer that
//! finds the budget spent waits (a delivery then lags and reads the log later).
//!
//! Owns the channel's shape, its bound, and the budget. Never: sockets, encoding, or what the
//! frames mean.
//! The front end that owns the connection drains the channel onto its transport (for SDMP,
//! `server::socket`); transactions (`subs`) only ever write into it, so this sits below both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use sdmp::WireForm;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Chunks queued for one connection: a peer that stops reading makes producers wait (and
/// delivery lag in the log), never makes the server buffer without limit.
const OUTBOUND_CHUNKS: usize = 8;

/// Bytes of output that every connection together may have buffered; see the module docs.
#[derive(Clone, Debug)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// Bytes held from the [`Budget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation(Option<OwnedSemaphorePermit>);

impl Reservation {
    /// Takes `bytes` of this reservation into a reservation of their own, if it holds that many.
    pub fn split(&mut self, bytes: usize) -> Option<Reservation> {
        if bytes == 0 {
            return Some(Reservation(None));
        }
        self.0.as_mut()?.split(bytes).map(|p| Reservation(Some(p)))
    }

    /// Nothing held (yet): what [`Reservation::merge`] grows.
    pub fn none() -> Reservation {
        Reservation(None)
    }

    /// Adds the bytes of `other` (from the same budget) to this reservation.
    pub fn merge(&mut self, other: Reservation) {
        match (&mut self.0, other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

impl Budget {
    pub fn new(total: u64) -> Budget {
        let total = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        Budget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Waits until `bytes` are free (at most the whole budget, so any request can be met) and
    /// holds them.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let wanted = u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX);
        // The semaphore is never closed.
        Reservation(self.bytes.clone().acquire_many_owned(wanted).await.ok())
    }

    /// Holds `bytes` if they are free now.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let wanted = u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX);
        self.bytes
            .clone()
            .try_acquire_many_owned(wanted)
            .ok()
            .map(|permit| Reservation(Some(permit)))
    }

    /// Bytes held now.
    pub fn in_use(&self) -> usize {
        self.total - self.bytes.available_permits()
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

/// Frames for the connection, already encoded, with what their delivery proves.
#[derive(Debug)]
pub struct Chunk {
    pub frames: Bytes,
    /// Raised to `seq` once the frames have been handed to the operating system: the
    /// delivered cursor of a persisted transaction.
    pub delivered: Option<(Arc<AtomicU64>, u64)>,
    /// The frames' bytes, held from the budget until the chunk is dropped (once written).
    pub held: Option<Reservation>,
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
            held: None,
        }
    }
}

/// A connection's outbound channel (the sending side; cheap to clone).
#[derive(Clone, Debug)]
pub struct Outbound {
    form: WireForm,
    chunks: mpsc::Sender<Chunk>,
    budget: Budget,
}

/// Creates a connection's outbound channel: the sender every producer shares, and the receiver
/// the transport drains. Its chunks hold their bytes from `budget`.
pub fn channel(form: WireForm, budget: Budget) -> (Outbound, mpsc::Receiver<Chunk>) {
    let (chunks, receiver) = mpsc::channel(OUTBOUND_CHUNKS);
    (
        Outbound {
            form,
            chunks,
            budget,
        },
        receiver,
    )
}

impl Outbound {
    /// The wire form the frames must be encoded in.
    pub fn form(&self) -> WireForm {
        self.form
    }

    /// Queues encoded frames; waits while the budget is spent or the channel is full. False
    /// once the connection is gone.
    pub async fn send(&self, chunk: impl Into<Chunk>) -> bool {
        let mut chunk = chunk.into();
        if chunk.held.is_none() {
            chunk.held = Some(self.budget.reserve(chunk.frames.len()).await);
        }
        self.chunks.send(chunk).await.is_ok()
    }

    /// Queues encoded frames unless the budget is spent or the channel is full (for
    /// keep-alives, which a peer that is not reading does not need).
    pub fn try_send(&self, chunk: impl Into<Chunk>) -> bool {
        let mut chunk = chunk.into();
        let Some(held) = self.budget.try_reserve(chunk.frames.len()) else {
            return false;
        };
        chunk.held = Some(held);
        self.chunks.try_send(chunk).is_ok()
    }

    /// The budget its chunks hold their bytes from.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }
}
