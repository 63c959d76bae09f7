//! Producers: clients that report failure outcomes (CF) and keep track of what the server
//! acknowledged, each on connections authenticated as its tenant's user.
//!
//! Owns: each producer's history (what it sent, what got an MV, what got an ER), kept for the
//! checks. A producer is an [`sdmp_client::Session`]: the session gives every CF its token and
//! a receipt; the producer paces, bounds what is in flight, and reconnects.
//!
//! Never: sends an outcome twice. A CF whose connection broke before its answer stays "sent",
//! its fate unknown: the checks accept it delivered or not, but never refused and delivered.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use sdmp_client::{frame_text, Error, Session, SessionOptions};
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::world::World;
use crate::{CAMPAIGN, IO_PATIENCE, PRODUCER_LINGER};

/// Unacknowledged CF frames a producer may have in flight.
const WINDOW: usize = 200;
/// A producer with frames in flight and no MV/ER for this long gives the connection up.
const PRODUCER_STALL: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct ProducerLog {
    pub sent: HashSet<String>,
    pub acknowledged: HashSet<String>,
    /// SI -> the ER frame.
    pub errored: HashMap<String, String>,
    pub connections: u64,
}

/// Sends `CF` frames of `tenant` with unique SIs at about `rate` per second, with at most
/// WINDOW unacknowledged, reconnecting to whichever server is current, until `stop`.
pub async fn producer(
    world: Arc<World>,
    tenant: &'static str,
    index: usize,
    rate: f64,
    stop: CancellationToken,
    log: Arc<Mutex<ProducerLog>>,
) {
    let name = format!("producer {tenant}-{index}");
    let mut n: u64 = 0;
    let mut backoff = World::backoff();
    'connection: loop {
        if stop.is_cancelled() || world.abort.is_cancelled() {
            return;
        }
        let Some((_, conn)) = world.connect(tenant, &mut backoff).await else {
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
        // In flight on this connection: each receipt with its SI. When the connection breaks,
        // their fate is unknown (they stay "sent").
        let mut in_flight = FuturesUnordered::new();
        let mut tokens = 0.0f64;
        let mut refilled = Instant::now();
        let mut progress = Instant::now();
        let mut linger_until: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = world.abort.cancelled() => return,
                Some((si, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                    progress = Instant::now();
                    match answer {
                        Ok(()) => {
                            log.lock().unwrap().acknowledged.insert(si);
                        }
                        Err(Error::Refused(er)) => {
                            let er = String::from_utf8_lossy(&er.frame).into_owned();
                            log.lock().unwrap().errored.insert(si, er);
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
                    if stop.is_cancelled() {
                        let until = *linger_until.get_or_insert(now + PRODUCER_LINGER);
                        if in_flight.is_empty() || now >= until {
                            return;
                        }
                        continue;
                    }
                    if !in_flight.is_empty() && now - progress > PRODUCER_STALL {
                        continue 'connection;
                    }
                    tokens = (tokens + rate * (now - refilled).as_secs_f64()).min(WINDOW as f64);
                    refilled = now;
                    let count = (tokens as usize).min(WINDOW - in_flight.len());
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
                        // Recorded as sent before a byte of it can leave.
                        log.lock().unwrap().sent.insert(si.clone());
                        // No TD: the tenant is the one the connection authenticated in.
                        let frame = format!(r"CF\CA2\CN{CAMPAIGN}\SI{si}");
                        let sent = timeout(IO_PATIENCE, session.send(frame.as_bytes())).await;
                        let Ok(Ok(receipt)) = sent else {
                            continue 'connection;
                        };
                        in_flight.push(async move { (si, receipt.await) });
                    }
                }
            }
        }
    }
}
