//! One transaction's delivery: read the log after the cursor, filter, format OZ, hand them to
//! the connection. Ends when its stop token is cancelled or its connection goes away.
//!
//! A persisted transaction that resumes behind the log end rolls forward: the events up to the
//! log end at the time of the (re-)issue are paced at its rate (CS), in bursts of at most
//! max(1, CS/10); what arrived meanwhile queues behind them in log order, and once the cursor is
//! past that point delivery is unthrottled. Pacing is this task's own: it slows nobody else.
//!
//! A persisted transaction on a store shared by nodes delivers only while its gate is open:
//! while this node cannot hear the other nodes (one may be taking the transaction over), it
//! hands nothing more to its connection, and reads nothing more, until the gate opens again.

use std::io::Write as _;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sdmp::{Envelope, Oz, OzFrame, PreparedOz, SdmpCodec, Xg};
use tokio::sync::{oneshot, watch};
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;

use super::Subscription;
use crate::outbound::{Chunk, Outbound, Reservation};
use crate::store::{Outcome, Store};

/// Outcomes read from the log per step ...
const READ_BATCH: usize = 1024;
/// ... and about this many bytes of them (counted like size retention; at least one outcome).
const READ_BYTES: u64 = 256 * 1024;
/// Bytes of OZ handed to the connection at once.
const CHUNK_BYTES: usize = 64 * 1024;
/// What an OZ adds to its outcome's values: codes, separators, TX, XS and XT.
const OZ_OVERHEAD: usize = 160;
/// The tenant whose outcomes carry no TD.
const DEFAULT_TENANT: &[u8] = b"default";

/// Everything one delivery needs but the store: what [`Registry::open`](super::Registry::open)
/// returns for the core to start with [`deliver`].
pub struct Delivery {
    /// Open while it may deliver (see the module comment); `None`: always.
    pub gate: Option<watch::Receiver<bool>>,
    pub subscription: Subscription,
    /// Deliver after this sequence number.
    pub cursor: u64,
    /// Pace events up to this sequence number (the roll-forward).
    pub paced_until: Option<u64>,
    /// The persisted transaction's cursors: delivered (moved by the connection's writer once
    /// written) and queued (moved here, as frames are handed to the writer).
    pub cursors: Option<(Arc<AtomicU64>, Arc<AtomicU64>)>,
    pub out: Outbound,
    pub stop: CancellationToken,
    /// Dropped when the delivery ends: whoever ends the transaction waits for that.
    pub stopped: oneshot::Sender<()>,
    /// Raised to the cursor as the delivery moves it (read by the transactions list).
    pub progress: Arc<AtomicU64>,
}

/// Runs one transaction's delivery until it is stopped or its connection goes away.
pub async fn deliver(store: Store, delivery: Delivery) {
    let Delivery {
        mut gate,
        subscription,
        mut cursor,
        paced_until,
        cursors,
        out,
        stop,
        stopped: _stopped,
        progress,
    } = delivery;
    let mut log_end = store.watch_last_seq();
    let mut codec = SdmpCodec::new(out.form());
    let pacer = paced_until.map(|until| (until, pacer(subscription.rate)));
    let mut chunk = Batch {
        gate: gate.clone(),
        frames: BytesMut::new(),
        last_seq: cursor,
        out: &out,
        stop: &stop,
        cursors: cursors.as_ref(),
        step: None,
        newest_ms: None,
    };
    loop {
        if cursor >= *log_end.borrow_and_update() {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = log_end.changed() => if changed.is_err() { return },
            }
            continue;
        }
        if !open(&mut gate, &stop).await {
            return;
        }
        // What this step reads and encodes is held from the output budget before it is read,
        // and its chunks take their share of that: a delivery never holds memory the budget
        // has not granted, and never waits for more while holding some.
        let encoded_bytes = (READ_BYTES as usize + READ_BATCH * OZ_OVERHEAD)
            * match out.form() {
                sdmp::WireForm::Bits8 => 1,
                sdmp::WireForm::Utf16Le => 2,
            };
        chunk.step = tokio::select! {
            _ = stop.cancelled() => return,
            step = out.budget().reserve(encoded_bytes) => Some(step),
        };
        let batch = tokio::select! {
            _ = stop.cancelled() => return,
            batch = store.read_after_bounded(cursor, READ_BATCH, READ_BYTES) => match batch {
                Ok(batch) => batch,
                // The service is stopping: its deliveries are told to stop once the store is
                // closed, and there is nothing more to read.
                Err(_) if store.is_closed() => return,
                Err(error) => {
                    tracing::error!(%error, "reading the log for delivery failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(first) = batch.first() else {
            // Nothing after the cursor any more (retention removed it): wait for new outcomes.
            cursor = (*log_end.borrow()).max(cursor);
            progress.store(cursor, Ordering::Release);
            continue;
        };
        if first.seq > cursor + 1 {
            // The log has no holes, so a jump means retention removed what this cursor had not
            // reached. Never silent.
            let (from, to) = (cursor + 1, first.seq - 1);
            tracing::warn!(
                tx = %String::from_utf8_lossy(&subscription.tx), from, to,
                "outcomes removed by retention before this transaction received them"
            );
            metrics::counter!("ozbus_retention_gap_events_total").increment(to - from + 1);
            if subscription.sequenced {
                let gap = Xg {
                    tx: &subscription.tx,
                    xf: from,
                    xl: to,
                };
                let envelope = Envelope {
                    dialect: subscription.dialect,
                    message: gap.into(),
                };
                let _ = codec.encode(&envelope, &mut chunk.frames);
            }
        }
        for outcome in &batch {
            if subscription.filter.matches(&outcome.outcome) {
                if let Some((until, limiter)) = &pacer {
                    if outcome.seq <= *until && limiter.check().is_err() {
                        // Out of burst: what is allowed goes out now, the rest waits its turn.
                        if !chunk.flush().await {
                            return;
                        }
                        // Everything up to the cursor is handed on: say so while the rest of
                        // the step waits for its pace (a step may take minutes at a low CS).
                        progress.store(cursor, Ordering::Release);
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = limiter.until_ready() => {}
                        }
                    }
                }
                encode_oz(&mut codec, outcome, &subscription, &mut chunk.frames);
                chunk.newest_ms = Some(outcome.accepted_ms);
            }
            cursor = outcome.seq;
            chunk.last_seq = cursor;
            if chunk.frames.len() >= CHUNK_BYTES && !chunk.flush().await {
                return;
            }
        }
        if !chunk.flush().await {
            return;
        }
        chunk.step = None;
        progress.store(cursor, Ordering::Release);
    }
}

/// Waits until `gate` is open (at once without one); false when the delivery is to stop
/// meanwhile.
async fn open(gate: &mut Option<watch::Receiver<bool>>, stop: &CancellationToken) -> bool {
    let Some(gate) = gate else {
        return true;
    };
    tokio::select! {
        // A delivery stopped while it waited (its transaction went to another node) never
        // sends again, even if the gate opens at the same moment.
        biased;
        _ = stop.cancelled() => false,
        // The gate's sender lives as long as the registry: gone, the service is stopping.
        open = gate.wait_for(|open| *open) => open.is_ok(),
    }
}

/// A token bucket of `rate` per second with a burst of max(1, rate/10).
fn pacer(rate: u32) -> DefaultDirectRateLimiter {
    let per_second = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate / 10).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst))
}

/// OZ frames gathered for the connection, and the last sequence number they cover.
struct Batch<'a> {
    /// The delivery's gate: no chunk goes out while it is closed.
    gate: Option<watch::Receiver<bool>>,
    frames: BytesMut,
    last_seq: u64,
    out: &'a Outbound,
    stop: &'a CancellationToken,
    cursors: Option<&'a (Arc<AtomicU64>, Arc<AtomicU64>)>,
    /// What this step holds from the output budget; each chunk takes its bytes from it.
    step: Option<Reservation>,
    /// When the newest outcome among the frames was accepted (for the delivery lag).
    newest_ms: Option<i64>,
}

impl Batch<'_> {
    /// Hands what is gathered to the connection; false once delivery must end. Even with no
    /// frames (everything read was filtered out) a persisted transaction's cursor may move past
    /// what was read, once what went before it has been written.
    async fn flush(&mut self) -> bool {
        let newest_ms = self.newest_ms.take();
        let sent = match self.cursors {
            None if self.frames.is_empty() => return true,
            None => {
                let chunk = self.chunk(None);
                self.send(chunk).await
            }
            Some((delivered, queued)) => {
                queued.fetch_max(self.last_seq, Ordering::Release);
                let chunk = self.chunk(Some((delivered.clone(), self.last_seq)));
                self.send(chunk).await
            }
        };
        if let (true, Some(accepted_ms)) = (sent, newest_ms) {
            // Once per chunk, not per outcome: from the newest outcome's commit to the moment
            // its connection took it (waiting for a slow reader counts).
            let now_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let lag_ms = now_ms.saturating_sub(accepted_ms).max(0);
            metrics::histogram!("ozbus_delivery_lag_seconds").record(lag_ms as f64 / 1000.0);
        }
        sent
    }

    /// The gathered frames as a chunk, holding their bytes from the step's reservation (when
    /// an outcome encoded larger than foreseen, `Outbound::send` reserves the rest).
    fn chunk(&mut self, delivered: Option<(Arc<AtomicU64>, u64)>) -> Chunk {
        let frames = self.frames.split().freeze();
        let held = self.step.as_mut().and_then(|step| step.split(frames.len()));
        Chunk {
            frames,
            delivered,
            held,
        }
    }

    async fn send(&mut self, chunk: Chunk) -> bool {
        if !open(&mut self.gate, self.stop).await {
            return false;
        }
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            sent = self.out.send(chunk) => sent,
        }
    }
}

/// Appends the OZ of `outcome` for one transaction to `dst`, encoded for the connection.
///
/// Everything after TX is the same for every transaction with the same XS choice: it is
/// formatted once, kept next to the outcome (shared by every reader of the in-memory tail), and
/// each transaction only adds its code and TX.
pub fn encode_oz(
    codec: &mut SdmpCodec,
    outcome: &Outcome,
    subscription: &Subscription,
    dst: &mut BytesMut,
) {
    let tail = outcome
        .rendered
        .get_or_init(usize::from(subscription.sequenced), || {
            prepare_oz(outcome, subscription.sequenced).into_tail()
        });
    let frame = OzFrame::from_tail(tail, subscription.dialect, &subscription.tx);
    // Encoding into memory cannot fail.
    let _ = codec.encode(&frame, dst);
}

/// The OZ of `outcome` without its TX.
fn prepare_oz(outcome: &Outcome, sequenced: bool) -> PreparedOz {
    let o = &outcome.outcome;
    let mut time = [0u8; 32];
    let time_len = if sequenced {
        let accepted = SystemTime::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(outcome.accepted_ms).unwrap_or(0));
        let mut cursor = std::io::Cursor::new(&mut time[..]);
        // An RFC 3339 time with milliseconds is 24 characters: it always fits.
        let _ = write!(cursor, "{}", humantime::format_rfc3339_millis(accepted));
        cursor.position() as usize
    } else {
        0
    };
    PreparedOz::new(&Oz {
        tx: b"",
        td: (o.tenant != DEFAULT_TENANT).then_some(&o.tenant[..]),
        cn: &o.cn,
        an: o.an.as_deref(),
        si: &o.si,
        tn: o.tn.as_deref().filter(|tn| *tn != &o.si[..]),
        re: o.re,
        ao: o.ao,
        dd: o.dd,
        as_data: o.as_data.as_deref(),
        co: o.co.as_deref(),
        ba: o.ba.as_deref(),
        bn: o.bn.as_deref(),
        bt: o.bt.as_deref(),
        xs: sequenced.then_some(outcome.seq),
        xt: sequenced.then_some(&time[..time_len]),
        dt: &o.dt,
    })
}
