//! Producers: clients that report failure outcomes (CF), each under an idempotency key (XK),
//! keep track of what the server acknowledged, and re-send what it did not, each on connections
//! authenticated as its tenant's user.
//!
//! Owns: each producer's history (what it sent, what got an MV, what got an ER, how often it
//! re-sent), kept for the checks, and its pending messages: every CF sent and not yet answered
//! with MV or ER, at most WINDOW of them. A producer is an [`sdmp_client::Session`]: the session
//! gives every CF its token (TK) and a receipt; the producer paces, bounds what is pending,
//! reconnects, and re-sends.
//!
//! Every CF carries `XK<SI>`: its SI, unique per message, names it. When a connection breaks
//! (or stalls: messages in flight and no answer for PRODUCER_STALL), the producer reconnects
//! and first re-sends every pending message, oldest first, as the same frame under the same XK
//! (with the new session's TK), and only then sends new ones; it re-sends after every
//! reconnect until each message gets its MV or ER. Once told to stop, it sends nothing new and
//! goes on re-sending until nothing is pending, or until told to give up; what is pending then
//! stays "sent, fate unknown", and the history says whether its last connection was up.
//!
//! Never: sends an outcome under a second key, or without its key, so a re-send can never be
//! a second outcome for a server that keeps XK's promise; re-sends a message that got its MV or
//! its ER (an ER is final: it is recorded, not retried); or judges the histories.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use sdmp_client::{frame_text, Error, Receipt, Session, SessionOptions};
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::world::World;
use crate::{CAMPAIGN, IO_PATIENCE};

/// Messages a producer may have pending (sent, no MV or ER yet), across its connections.
const WINDOW: usize = 200;
/// A producer with frames in flight and no MV/ER for this long gives the connection up.
const PRODUCER_STALL: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct ProducerLog {
    /// The SI of every message sent (its first send).
    pub sent: HashSet<String>,
    pub acknowledged: HashSet<String>,
    /// SI -> the ER frame.
    pub errored: HashMap<String, String>,
    /// SI -> how many times it was re-sent (handed to a connection after its first send).
    pub resends: HashMap<String, u64>,
    /// Re-sends answered with MV.
    pub resends_acknowledged: u64,
    /// Re-sends made after `stop` (the chaos was over).
    pub resends_after_stop: u64,
    pub connections: u64,
    /// How the producer ended: everything answered, or given up (and whether its last
    /// connection was up then).
    pub end: &'static str,
}

/// A message sent and not yet answered with MV or ER.
struct Pending {
    si: String,
    /// The frame, XK included, without TK; every send of the message sends exactly this.
    frame: String,
}

/// The answer to send `number` of a message (`resent`: not its first), once it comes.
async fn answer(number: u64, resent: bool, receipt: Receipt) -> (u64, bool, Result<(), Error>) {
    (number, resent, receipt.await)
}

/// Sends `CF` frames of `tenant` with unique SIs, each under its SI as XK, at about `rate` per
/// second, with at most WINDOW pending, reconnecting to whichever server is current and
/// re-sending what is pending after every reconnect. After `stop`: no new messages; returns
/// once nothing is pending, or at `give_up`.
pub async fn producer(
    world: Arc<World>,
    tenant: &'static str,
    index: usize,
    rate: f64,
    stop: CancellationToken,
    give_up: CancellationToken,
    log: Arc<Mutex<ProducerLog>>,
) {
    let name = format!("producer {tenant}-{index}");
    let mut n: u64 = 0;
    // Keyed by the message's number: re-sent oldest first.
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut backoff = World::backoff();
    let end = 'connection: loop {
        if world.abort.is_cancelled() {
            return;
        }
        if stop.is_cancelled() && pending.is_empty() {
            break 'connection "every message answered";
        }
        if give_up.is_cancelled() {
            break 'connection "given up while reconnecting";
        }
        let connected = tokio::select! {
            _ = give_up.cancelled() => break 'connection "given up while reconnecting",
            connected = world.connect(tenant, &mut backoff) => connected,
        };
        let Some((_, conn)) = connected else {
            return;
        };
        log.lock().unwrap().connections += 1;
        let mut session = Session::new(
            conn,
            SessionOptions {
                window: WINDOW,
                ..SessionOptions::default()
            },
        );
        // In flight on this connection: each receipt with its message's number and whether it
        // is a re-send. When the connection breaks, they stay pending.
        let mut in_flight = FuturesUnordered::new();
        // First every pending message again, as it was sent, before anything new.
        let resend: Vec<u64> = pending.keys().copied().collect();
        for number in resend {
            let message = &pending[&number];
            let sent = timeout(IO_PATIENCE, session.send(message.frame.as_bytes())).await;
            let Ok(Ok(receipt)) = sent else {
                continue 'connection;
            };
            let mut log = log.lock().unwrap();
            *log.resends.entry(message.si.clone()).or_default() += 1;
            if stop.is_cancelled() {
                log.resends_after_stop += 1;
            }
            drop(log);
            in_flight.push(answer(number, true, receipt));
        }
        let mut tokens = 0.0f64;
        let mut refilled = Instant::now();
        let mut progress = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = world.abort.cancelled() => return,
                _ = give_up.cancelled() => break 'connection "given up while connected",
                Some((number, resent, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                    progress = Instant::now();
                    match answer {
                        Ok(()) => {
                            let message = pending.remove(&number).expect("in flight is pending");
                            let mut log = log.lock().unwrap();
                            log.acknowledged.insert(message.si);
                            if resent {
                                log.resends_acknowledged += 1;
                            }
                        }
                        Err(Error::Refused(er)) => {
                            let message = pending.remove(&number).expect("in flight is pending");
                            let er = String::from_utf8_lossy(&er.frame).into_owned();
                            log.lock().unwrap().errored.insert(message.si, er);
                        }
                        Err(_) => continue 'connection,
                    }
                }
                frame = session.next_frame() => {
                    // Anything but the answer to a CF in flight: an MV for nothing in flight,
                    // an ER that names no CF of ours, or any other frame.
                    let Some(frame) = frame else { continue 'connection };
                    world.problem(format!("{name}: unexpected frame: {}", frame_text(&frame)));
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if stop.is_cancelled() && pending.is_empty() {
                        break 'connection "every message answered";
                    }
                    if !in_flight.is_empty() && now - progress > PRODUCER_STALL {
                        continue 'connection;
                    }
                    if stop.is_cancelled() {
                        continue;
                    }
                    tokens = (tokens + rate * (now - refilled).as_secs_f64()).min(WINDOW as f64);
                    refilled = now;
                    let count = (tokens as usize).min(WINDOW - pending.len());
                    if count == 0 {
                        continue;
                    }
                    tokens -= count as f64;
                    if in_flight.is_empty() {
                        progress = now;
                    }
                    for _ in 0..count {
                        n += 1;
                        let si = format!("{tenant}-{index}-{n}");
                        // No TD: the tenant is the one the connection authenticated in. The SI
                        // is unique per message: it is the message's key too.
                        let frame = format!(r"CF\CA2\CN{CAMPAIGN}\SI{si}\XK{si}");
                        // Recorded as sent, and pending, before a byte of it can leave.
                        log.lock().unwrap().sent.insert(si.clone());
                        pending.insert(n, Pending { si, frame: frame.clone() });
                        let sent = timeout(IO_PATIENCE, session.send(frame.as_bytes())).await;
                        let Ok(Ok(receipt)) = sent else {
                            continue 'connection;
                        };
                        in_flight.push(answer(n, false, receipt));
                    }
                }
            }
        }
    };
    log.lock().unwrap().end = end;
}
