//! Producers: clients that report calls (each a script of reports: see `calls`), each report
//! under its own idempotency key (XK), keep track of what the servers acknowledged, and re-send
//! what they did not, each on connections authenticated as its tenant's user, to its preferred
//! node when it is up, else to another.
//!
//! Owns: each producer's history (the calls it began, those whose outcome got its MV, those
//! refused with an ER, how often it re-sent), kept for the checks, and its calls in progress: at
//! most WINDOW of them, each with exactly one report pending at a time (sent, or due to be sent,
//! and not yet answered with MV or ER). A producer is an [`sdmp_client::Session`]: the session
//! gives every report its token (TK) and a receipt; the producer paces, bounds what is pending,
//! reconnects, and re-sends.
//!
//! A call's next report is sent once the one before got its MV (so an MC is never overtaken by
//! its CF, even through another node); its last report's MV acknowledges its outcome. When a
//! connection breaks (or stalls: reports in flight and no answer for PRODUCER_STALL; or a node
//! closes it without an answer, as it does when a report it forwarded has an unknown effect),
//! the producer reconnects and first re-sends every pending report, oldest call first, as the
//! same frame under the same XK (with the new session's TK), and only then begins new calls;
//! it re-sends after every reconnect until each report gets its MV or ER. An ER with EC 815
//! (no node holds the call book now) or 816 (the node could not reach the database to decide),
//! which both say nothing was done, is no answer: the report is sent again,
//! the same, after a back-off (NO_HOLDER_BACKOFF). Once told to stop, it begins nothing new and
//! goes on re-sending until nothing is pending, or until told to give up; what is pending then
//! stays "sent, fate unknown", and the history says whether its last connection was up.
//!
//! Never: sends a report under a second key, or without its key, so a re-send can never be a
//! second effect for a server that keeps XK's promise; re-sends a report that got its MV or an
//! ER other than EC 815 or 816 (such an ER is final: it is recorded, not retried, and the call goes no
//! further); lends an agent to a second call before the first one's TC got its MV; or judges
//! the histories.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use sdmp_client::{frame_text, Error, Receipt, Session, SessionOptions};
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::calls::{call, Script};
use super::world::World;
use super::IO_PATIENCE;

/// Calls a producer may have in progress (begun, outcome not yet acknowledged or refused),
/// across its connections; each has one report pending at most.
const WINDOW: usize = 200;
/// A producer with reports in flight and no MV/ER for this long gives the connection up.
const PRODUCER_STALL: Duration = Duration::from_secs(10);
/// Agents of each producer, for the calls an agent completes: one call at a time each.
const AGENTS: usize = 64;
/// A report answered with EC 815 is sent again after this pause (doubling with each EC 815 in a
/// row for it, up to the second).
const NO_HOLDER_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_millis(1000));
/// EC 815: no node holds the call book now; nothing was done.
const NO_HOLDER: u16 = 815;
/// EC 816: the node could not reach the database to decide (a keyed report's key); nothing was
/// done. Sent again the same way.
const STORE_UNREACHABLE: u16 = 816;

#[derive(Default)]
pub struct ProducerLog {
    /// The SI of every call begun.
    pub sent: HashSet<String>,
    /// The calls whose last report got its MV: their outcome is acknowledged.
    pub acknowledged: HashSet<String>,
    /// SI -> the ER frame that ended the call (any EC but 815).
    pub errored: HashMap<String, String>,
    /// Reports sent (first sends).
    pub reports: u64,
    /// SI -> how many times a report of the call was re-sent (handed to a connection after its
    /// first send: after a reconnect, or after an EC 815).
    pub resends: HashMap<String, u64>,
    /// Re-sends answered with MV.
    pub resends_acknowledged: u64,
    /// Re-sends made after `stop` (the chaos was over).
    pub resends_after_stop: u64,
    /// Answers with EC 815, each followed by a re-send.
    pub no_holder: u64,
    pub connections: u64,
    /// How the producer ended: everything answered, or given up (and whether its last
    /// connection was up then).
    pub end: &'static str,
}

/// A call in progress.
struct Pending {
    si: String,
    /// Its reports, XK included, without TK; every send of a report sends exactly this.
    frames: Vec<String>,
    /// The report pending: the index of the first without an MV.
    step: usize,
    /// It was handed to a connection already: the next send is a re-send.
    step_sent: bool,
    /// Its last send was a re-send.
    resent_last: bool,
    /// In flight on the current connection.
    in_flight: bool,
    /// Not to be sent before this (after an EC 815).
    not_before: Option<Instant>,
    /// EC 815 answers in a row to this report.
    no_holder: u32,
    /// The agent the call holds, given back when its outcome is acknowledged.
    agent: Option<usize>,
}

/// The answer to report `step` of call `number` (`resent`: not its first send), once it comes.
async fn answer(
    number: u64,
    step: usize,
    resent: bool,
    receipt: Receipt,
) -> (u64, usize, bool, Result<(), Error>) {
    (number, step, resent, receipt.await)
}

/// Reports calls of `tenant` (following `world.scripts` in turn) with unique SIs, at about
/// `rate` calls per second, with at most WINDOW in progress, reconnecting (to node `home` when
/// it is up, else another) and re-sending what is pending after every reconnect. After `stop`:
/// no new calls; returns once nothing is pending, or at `give_up`.
#[allow(clippy::too_many_arguments)]
pub async fn producer(
    world: Arc<World>,
    tenant: &'static str,
    index: usize,
    home: usize,
    rate: f64,
    stop: CancellationToken,
    give_up: CancellationToken,
    log: Arc<Mutex<ProducerLog>>,
) {
    let name = format!("producer {tenant}-{index}");
    let scripts = world.scripts;
    let mut n: u64 = 0;
    // Keyed by the call's number: re-sent oldest first.
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut free_agents: Vec<usize> = (0..AGENTS).rev().collect();
    let mut backoff = World::backoff();
    let end = 'connection: loop {
        if world.abort.is_cancelled() {
            return;
        }
        if stop.is_cancelled() && pending.is_empty() {
            break 'connection "every call answered";
        }
        if give_up.is_cancelled() {
            break 'connection "given up while reconnecting";
        }
        let connected = tokio::select! {
            _ = give_up.cancelled() => break 'connection "given up while reconnecting",
            connected = world.connect(tenant, home, &mut backoff) => connected,
        };
        let Some((_, _, conn)) = connected else {
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
        // In flight on this connection: each receipt with its call's number, the report's
        // step, and whether it is a re-send. When the connection breaks, they stay pending.
        let mut in_flight = FuturesUnordered::new();
        for call in pending.values_mut() {
            call.in_flight = false;
        }
        // First every pending report again, as it was sent, before anything new (a report
        // waiting out an EC 815 waits on).
        let now = Instant::now();
        let due: Vec<u64> = pending
            .iter()
            .filter(|(_, call)| call.not_before.is_none_or(|at| at <= now))
            .map(|(&number, _)| number)
            .collect();
        for number in due {
            let call = pending.get_mut(&number).expect("due is pending");
            let Some(receipt) = send(&session, call, &log, &stop).await else {
                continue 'connection;
            };
            in_flight.push(answer_of(number, call, receipt));
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
                Some((number, step, resent, answer)) = in_flight.next(), if !in_flight.is_empty() => {
                    progress = Instant::now();
                    let call = pending.get_mut(&number).expect("in flight is pending");
                    debug_assert_eq!(call.step, step);
                    call.in_flight = false;
                    match answer {
                        Ok(()) => {
                            if resent {
                                log.lock().unwrap().resends_acknowledged += 1;
                            }
                            call.step += 1;
                            call.step_sent = false;
                            call.no_holder = 0;
                            if call.step < call.frames.len() {
                                // The call's next report, at once.
                                let Some(receipt) = send(&session, call, &log, &stop).await else {
                                    continue 'connection;
                                };
                                in_flight.push(answer_of(number, call, receipt));
                                continue;
                            }
                            let call = pending.remove(&number).expect("pending");
                            free_agents.extend(call.agent);
                            log.lock().unwrap().acknowledged.insert(call.si);
                        }
                        Err(Error::Refused(er)) if er.ec == NO_HOLDER || er.ec == STORE_UNREACHABLE => {
                            // Nothing was done: the same report again after a back-off.
                            let pause = NO_HOLDER_BACKOFF.0 * 2u32.pow(call.no_holder.min(4));
                            call.no_holder += 1;
                            call.not_before = Some(Instant::now() + pause.min(NO_HOLDER_BACKOFF.1));
                            log.lock().unwrap().no_holder += 1;
                        }
                        Err(Error::Refused(er)) => {
                            // Final: the call goes no further (its agent is not lent again).
                            let call = pending.remove(&number).expect("pending");
                            let er = String::from_utf8_lossy(&er.frame).into_owned();
                            log.lock().unwrap().errored.insert(call.si, er);
                        }
                        Err(_) => continue 'connection,
                    }
                }
                frame = session.next_frame() => {
                    // Anything but the answer to a report in flight: an MV for nothing in
                    // flight, an ER that names no report of ours, or any other frame.
                    let Some(frame) = frame else { continue 'connection };
                    world.problem(format!("{name}: unexpected frame: {}", frame_text(&frame)));
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if stop.is_cancelled() && pending.is_empty() {
                        break 'connection "every call answered";
                    }
                    if !in_flight.is_empty() && now - progress > PRODUCER_STALL {
                        continue 'connection;
                    }
                    // Reports whose EC 815 back-off is over.
                    let due: Vec<u64> = pending
                        .iter()
                        .filter(|(_, call)| {
                            !call.in_flight && call.not_before.is_some_and(|at| at <= now)
                        })
                        .map(|(&number, _)| number)
                        .collect();
                    for number in due {
                        let call = pending.get_mut(&number).expect("due is pending");
                        let Some(receipt) = send(&session, call, &log, &stop).await else {
                            continue 'connection;
                        };
                        if in_flight.is_empty() {
                            progress = now;
                        }
                        in_flight.push(answer_of(number, call, receipt));
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
                        let mut script = scripts[(n % scripts.len() as u64) as usize];
                        let agent = match script.needs_agent() {
                            true => free_agents.pop(),
                            false => None,
                        };
                        if script.needs_agent() && agent.is_none() {
                            // Every agent is busy: a call without one.
                            script = Script::MadeFailed;
                        }
                        let made = call(script, tenant, index, n, agent);
                        // Recorded as begun, and pending, before a byte of it can leave.
                        log.lock().unwrap().sent.insert(made.si.clone());
                        let call = pending.entry(n).or_insert(Pending {
                            si: made.si,
                            frames: made.frames,
                            step: 0,
                            step_sent: false,
                            resent_last: false,
                            in_flight: false,
                            not_before: None,
                            no_holder: 0,
                            agent,
                        });
                        let Some(receipt) = send(&session, call, &log, &stop).await else {
                            continue 'connection;
                        };
                        in_flight.push(answer_of(n, call, receipt));
                    }
                }
            }
        }
    };
    log.lock().unwrap().end = end;
}

/// The answer to the report of `call` just sent.
fn answer_of(
    number: u64,
    call: &Pending,
    receipt: Receipt,
) -> impl std::future::Future<Output = (u64, usize, bool, Result<(), Error>)> {
    answer(number, call.step, call.resent_last, receipt)
}

/// Sends the pending report of `call` on `session`, recording it (a first send, or a re-send);
/// its receipt, or `None` when the connection is gone.
async fn send(
    session: &Session,
    call: &mut Pending,
    log: &Mutex<ProducerLog>,
    stop: &CancellationToken,
) -> Option<Receipt> {
    let frame = &call.frames[call.step];
    let sent = timeout(IO_PATIENCE, session.send(frame.as_bytes())).await;
    let Ok(Ok(receipt)) = sent else {
        return None;
    };
    let mut log = log.lock().unwrap();
    call.resent_last = call.step_sent;
    if call.step_sent {
        *log.resends.entry(call.si.clone()).or_default() += 1;
        if stop.is_cancelled() {
            log.resends_after_stop += 1;
        }
    } else {
        log.reports += 1;
    }
    call.step_sent = true;
    call.in_flight = true;
    call.not_before = None;
    Some(receipt)
}
