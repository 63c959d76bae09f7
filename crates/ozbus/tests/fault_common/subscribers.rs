//! Subscribers: persisted sequenced transactions that consume, acknowledge, lose their
//! connection (to a kill, or to a reset ordered by the chaos) and re-issue, each connection
//! authenticated as the transaction's tenant's user, to the subscriber's preferred node when it
//! is up, else to another; and, when the chaos orders a move, re-issue on another node while
//! the connection that holds the transaction is still open (a takeover), the old one read by a
//! task of its own until it gets its EF (or a bound passes).
//!
//! Owns: each transaction's history, one segment per holding (an EO, issue or re-issue, to the
//! loss or end of its connection), with the node, the time its EO was confirmed and every
//! delivery in the order it came, with the time it came. Each holding is an
//! [`sdmp_client::Subscription`]; the re-issuing is done here, with a new TX every time, so
//! that the history shows exactly what every connection delivered, repeats included.
//!
//! Never: drops or reorders a delivery (the checks need the raw history), acknowledges on a
//! connection that was taken over, or judges the history beyond noting frames that have no
//! place on the wire.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sdmp_client::{frame_text, Error, Event, Outcome, Subscribe, Subscription};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout_at, Instant, MissedTickBehavior};

use super::calls::expected_oz;
use super::world::{Order, World};
use super::{IO_PATIENCE, TAKEOVER_OVERLAP};

/// A subscriber acknowledges (XA) every this many events.
const XA_EVERY: usize = 50;
/// EC 816: the node could not reach the database to decide (an EO, an XA); nothing was done.
const STORE_UNREACHABLE: u16 = 816;
/// After an EC 816, the pause before the next attempt.
const UNREACHABLE_PAUSE: Duration = Duration::from_millis(200);
/// Subscribers ask for a DA every second: five seconds without any frame is a dead connection.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Final drain: a subscriber is done once idle this long on a final server.
const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// After a move, the connection taken over is read until its EF, or until this long after the
/// overlap allowed: then the test closes it (what came late is there for the checks).
const OLD_GRACE: Duration = Duration::from_secs(2);

/// One holding of the transaction: from an EO (issue or re-issue) to the loss of the connection.
pub struct Segment {
    pub tx: String,
    /// The node the connection went to, and its process's generation.
    pub node: usize,
    pub generation: u64,
    /// The highest XS whose XA got its MV before this EO: the cursor is at least there.
    pub confirmed_ack: Option<u64>,
    /// The highest XS ever sent in an XA before this EO: the cursor is at most there.
    pub max_xa_sent: Option<u64>,
    /// The EO got its MV, and when.
    pub issued: bool,
    pub issued_at: Option<Instant>,
    /// Opened by a move: the connection before it was open, and holding, meanwhile.
    pub moved: bool,
    /// When the test stopped reading the connection.
    pub closed_at: Option<Instant>,
    /// Why the connection was given up.
    pub end: &'static str,
}

pub struct Delivery {
    pub segment: usize,
    pub xs: u64,
    pub si: String,
    pub td: Option<String>,
    /// When it was read.
    pub at: Instant,
}

pub struct SubLog {
    pub tenant: &'static str,
    pub ps: String,
    /// The node it connects to first.
    pub home: usize,
    pub segments: Vec<Segment>,
    pub deliveries: Vec<Delivery>,
    pub confirmed_ack: Option<u64>,
    pub max_xa_sent: Option<u64>,
    pub xa_sent: u64,
    pub xa_confirmed: u64,
    pub resets: u64,
    /// Moves made (the new EO confirmed while the old connection held on).
    pub moves: u64,
    pub ended: bool,
}

impl SubLog {
    pub fn new(tenant: &'static str, ps: String, home: usize) -> SubLog {
        SubLog {
            tenant,
            ps,
            home,
            segments: Vec::new(),
            deliveries: Vec::new(),
            confirmed_ack: None,
            max_xa_sent: None,
            xa_sent: 0,
            xa_confirmed: 0,
            resets: 0,
            moves: 0,
            ended: false,
        }
    }

    /// A new segment (its EO about to be sent); its index.
    fn begin(&mut self, tx: &str, node: usize, generation: u64, moved: bool) -> usize {
        self.segments.push(Segment {
            tx: tx.into(),
            node,
            generation,
            confirmed_ack: self.confirmed_ack,
            max_xa_sent: self.max_xa_sent,
            issued: false,
            issued_at: None,
            moved,
            closed_at: None,
            end: "",
        });
        self.segments.len() - 1
    }

    fn issued(&mut self, segment: usize) {
        let segment = &mut self.segments[segment];
        segment.issued = true;
        segment.issued_at = Some(Instant::now());
    }

    fn close(&mut self, segment: usize, end: &'static str) {
        let segment = &mut self.segments[segment];
        segment.end = end;
        segment.closed_at.get_or_insert_with(Instant::now);
    }

    fn confirmed(&mut self, xs: u64) {
        self.xa_confirmed += 1;
        self.confirmed_ack = self.confirmed_ack.max(Some(xs));
    }
}

/// Records an OZ of transaction `tx` (segment `segment`); its XS, or None if it has none.
fn record_oz(
    world: &World,
    log: &Mutex<SubLog>,
    segment: usize,
    tx: &str,
    outcome: &Outcome,
) -> Option<u64> {
    let at = Instant::now();
    let frame = String::from_utf8_lossy(&outcome.frame);
    let tenant = log.lock().unwrap().tenant;
    let text = |value: &[u8]| String::from_utf8_lossy(value).into_owned();
    let Some(xs) = outcome.xs else {
        world.problem(format!("{tx}: OZ without XS: {frame}"));
        return None;
    };
    let (si, xt) = (
        text(&outcome.si),
        text(outcome.xt.as_deref().unwrap_or(b"")),
    );
    let want = expected_oz(tx, tenant, &si, xs, &xt);
    let xt_ok = xt.len() == 24 && xt.ends_with('Z') && xt.as_bytes()[10] == b'T';
    if want.as_deref() != Some(&*frame) || !xt_ok {
        world.problem(format!(
            "{tx}: OZ not of the form {want:?} (XT like 2026-11-25T17:27:57.123Z): {frame}"
        ));
    }
    log.lock().unwrap().deliveries.push(Delivery {
        segment,
        xs,
        si,
        td: outcome.td.as_deref().map(text),
        at,
    });
    Some(xs)
}

/// Sends `XA` for `xs`, with confirmation (its MV says the cursor is durable).
async fn acknowledge(
    subscription: &mut Subscription,
    xs: u64,
    log: &Mutex<SubLog>,
) -> Result<(), Error> {
    sent_xa(log, xs);
    subscription.acknowledge_confirmed(xs).await
}

fn sent_xa(log: &Mutex<SubLog>, xs: u64) {
    let mut log = log.lock().unwrap();
    log.xa_sent += 1;
    log.max_xa_sent = log.max_xa_sent.max(Some(xs));
}

/// The EO of one holding. No TD: the connection's user sees its own tenant only. Success
/// outcomes too when some call is completed by an agent.
fn eo(world: &World, ps: &str, tx: &str) -> Subscribe {
    Subscribe {
        failure: true,
        success: world.scripts.iter().any(|script| script.succeeds()),
        persist: Some(ps.into()),
        sequenced: true,
        rate: Some(1_000_000),
        keep_alive: Some(KEEP_ALIVE),
        ..Subscribe::new(tx)
    }
}

/// The connection that holds the transaction.
struct Holding {
    subscription: Subscription,
    segment: usize,
    tx: String,
    node: usize,
    generation: u64,
    /// The highest XS delivered on this connection.
    high: Option<u64>,
    since_xa: usize,
}

/// Reads a connection taken over by a move, acknowledging nothing on it, until its EF, its
/// loss, or `until` (then closes it), recording what it delivers; a task of its own, so that
/// it is read whatever becomes of the connection that took over.
async fn drain_taken_over(
    world: Arc<World>,
    log: Arc<Mutex<SubLog>>,
    mut subscription: Subscription,
    segment: usize,
    tx: String,
    until: Instant,
) {
    let end = loop {
        let event = tokio::select! {
            _ = world.abort.cancelled() => return,
            _ = sleep_until(until) => {
                world.note("move: the old connection got no EF (closed by the test)");
                break "taken over; no EF within the overlap: closed by the test";
            }
            event = subscription.next() => event,
        };
        match event {
            Ok(Some(Event::Outcome(outcome))) => {
                record_oz(&world, &log, segment, &tx, &outcome);
            }
            Ok(Some(Event::Finished { .. })) | Ok(None) => {
                world.note("move: the old connection got its EF");
                break "EF: taken over";
            }
            Ok(Some(Event::Acknowledged { .. })) => {}
            Ok(Some(other)) => {
                world.problem(format!("{tx}: after the move: unexpected {other:?}"));
            }
            Err(error) => {
                world.note("move: the old connection was lost (its node closed it), without EF");
                break match error {
                    Error::Silent(_) => "taken over; then silent (no DA)",
                    _ => "taken over; then closed by the server",
                };
            }
        }
    };
    log.lock().unwrap().close(segment, end);
}

/// How a move ended.
enum Moved {
    /// The new EO was confirmed: the new holding (the old one, while still open, is read by a
    /// task of its own).
    Done(Box<Holding>, Option<tokio::task::JoinHandle<()>>),
    /// No move (no other node up, or its EO not confirmed): the holding goes on.
    Kept(Box<Holding>),
    /// The holding's connection was lost meanwhile, for this reason.
    Lost(Box<Holding>, &'static str),
    Aborted,
}

/// Whether an EF on segment `segment` can be a takeover by an EO of ours: one whose MV never
/// came, sent to a process still running when this segment's EO was confirmed, may have been
/// processed after it.
fn late_eo_possible(world: &World, log: &SubLog, segment: usize) -> bool {
    let issued_at = log.segments[segment].issued_at.unwrap_or_else(Instant::now);
    log.segments.iter().enumerate().any(|(index, other)| {
        index != segment && !other.issued && world.alive_at(other.generation, issued_at)
    })
}

/// One persisted sequenced transaction of `tenant`: issues it, consumes it, acknowledges every
/// XA_EVERY events, and re-issues it (with a new TX every time) whenever the connection is lost;
/// resets its connection, or moves to another node, when told to. Once connected to a final
/// server, with the producers finished, and idle for DRAIN_IDLE, ends it with EE.
pub async fn subscriber(
    world: Arc<World>,
    log: Arc<Mutex<SubLog>>,
    mut orders: mpsc::UnboundedReceiver<Order>,
    mut ready: Option<oneshot::Sender<()>>,
) {
    let (tenant, ps, home) = {
        let log = log.lock().unwrap();
        (log.tenant, log.ps.clone(), log.home)
    };
    let mut backoff = World::backoff();
    let mut attempt = 0u32;
    let mut orders_open = true;
    // The task reading the connection the last move took over, while it runs.
    let mut draining: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        if world.abort.is_cancelled() {
            return;
        }
        let Some((node, generation, conn)) = world.connect(tenant, home, &mut backoff).await else {
            return;
        };
        // Orders given while no connection was up are moot.
        while orders.try_recv().is_ok() {
            world.note("order given while no connection was up: dropped");
        }
        attempt += 1;
        let tx = format!("{ps}-{attempt}");
        let segment = log.lock().unwrap().begin(&tx, node, generation, false);
        // Open: the EO and its MV (events that come first are kept for `next`).
        let subscribe = eo(&world, &ps, &tx);
        let opened = tokio::select! {
            _ = world.abort.cancelled() => return,
            opened = Subscription::open_within(conn, &subscribe, IO_PATIENCE) => opened,
        };
        let subscription = match opened {
            Ok(subscription) => subscription,
            Err(Error::Refused(er)) if er.ec == STORE_UNREACHABLE => {
                // The node could not read the database to decide: nothing was done.
                log.lock()
                    .unwrap()
                    .close(segment, "EO refused for now (EC 816)");
                tokio::time::sleep(UNREACHABLE_PAUSE).await;
                continue;
            }
            Err(Error::Refused(er)) => {
                world.fatal(format!("{tx}: the EO was refused: {er}"));
                return;
            }
            Err(_) => {
                log.lock().unwrap().close(segment, "EO not confirmed");
                continue;
            }
        };
        log.lock().unwrap().issued(segment);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        let mut current = Holding {
            subscription,
            segment,
            tx,
            node,
            generation,
            high: None,
            since_xa: 0,
        };
        let mut last_oz = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let end = 'held: loop {
            tokio::select! {
                biased;
                _ = world.abort.cancelled() => return,
                order = orders.recv(), if orders_open => {
                    match order {
                        None => orders_open = false,
                        Some(Order::Reset) => {
                            // Acknowledge what was processed, then vanish without a FIN.
                            if let Some(xs) = current.high {
                                let _ = acknowledge(&mut current.subscription, xs, &log).await;
                            }
                            current.subscription.into_connection().reset();
                            log.lock().unwrap().resets += 1;
                            world.resets.fetch_add(1, SeqCst);
                            break 'held "reset by the test";
                        }
                        Some(Order::Move)
                            if world.node_count() > 1
                                && draining.as_ref().is_none_or(|task| task.is_finished()) =>
                        {
                            match move_holding(&world, &log, &ps, &mut attempt, current).await {
                                Moved::Done(new, taken_over) => {
                                    current = *new;
                                    draining = taken_over;
                                    last_oz = Instant::now();
                                }
                                Moved::Kept(kept) => current = *kept,
                                Moved::Lost(lost, why) => {
                                    current = *lost;
                                    break 'held why;
                                }
                                Moved::Aborted => return,
                            }
                        }
                        Some(Order::Move) => world.note("move not made: the last one is not over"),
                    }
                }
                event = current.subscription.next() => {
                    let tx = current.tx.as_str();
                    let event = match event {
                        Ok(Some(event)) => event,
                        Ok(None) => break 'held "ended",
                        Err(Error::Silent(_)) => break 'held "silent (no DA)",
                        Err(Error::ConnectionLost) => break 'held "closed by the server",
                        Err(Error::Refused(er)) => {
                            world.fatal(format!("{tx}: the EO was refused: {er}"));
                            return;
                        }
                        Err(_) => break 'held "read error",
                    };
                    match event {
                        Event::Outcome(outcome) => {
                            last_oz = Instant::now();
                            let Some(xs) = record_oz(&world, &log, current.segment, tx, &outcome)
                            else {
                                continue;
                            };
                            let top = current.high.map_or(xs, |high| high.max(xs));
                            current.high = Some(top);
                            current.since_xa += 1;
                            if current.since_xa >= XA_EVERY {
                                current.since_xa = 0;
                                if acknowledge(&mut current.subscription, top, &log).await.is_err() {
                                    break 'held "XA not sent";
                                }
                            }
                        }
                        Event::Acknowledged { xs } => log.lock().unwrap().confirmed(xs),
                        Event::Gap(gap) => {
                            world.gaps.fetch_add(1, SeqCst);
                            world.problem(format!(
                                "{tx}: gap notice: {}",
                                String::from_utf8_lossy(&gap.frame)
                            ));
                        }
                        Event::Finished { .. } => {
                            // Legitimate only if an EO of ours whose MV never came may have
                            // been processed after this one's, and taken the transaction over.
                            let log = log.lock().unwrap();
                            if !late_eo_possible(&world, &log, current.segment) {
                                world.problem(format!(
                                    "{tx}: EF while this connection held it (node {}, generation \
                                     {}), and no EO of ours without its MV was outstanding",
                                    current.node, current.generation
                                ));
                            }
                            break 'held "EF";
                        }
                        Event::Refused(er) => world.problem(format!("{tx}: {er}")),
                        Event::Unreadable { frame, reason } => world.problem(format!(
                            "{tx}: unreadable frame ({reason}): {}",
                            frame_text(&frame)
                        )),
                        Event::Other(frame) => world.problem(format!(
                            "{tx}: unexpected frame: {}",
                            frame_text(&frame)
                        )),
                    }
                }
                _ = tick.tick() => {
                    if draining.as_ref().is_some_and(|task| !task.is_finished()) {
                        // The connection a move took over is still read: not done yet.
                        continue;
                    }
                    // Done once on a final server, the producers finished (nothing more will
                    // be reported) at least DRAIN_IDLE ago, and idle as long.
                    let last = world.final_generation.load(SeqCst);
                    let quiet = world
                        .producers_finished
                        .get()
                        .is_some_and(|at| at.elapsed() >= DRAIN_IDLE);
                    if last != 0
                        && current.generation >= last
                        && quiet
                        && last_oz.elapsed() >= DRAIN_IDLE
                    {
                        let (segment, tx) = (current.segment, current.tx.clone());
                        let ended =
                            end_transaction(&world, &mut current.subscription, &tx, &log, segment)
                                .await;
                        match ended {
                            Ok(()) => log.lock().unwrap().ended = true,
                            Err(error) => world.problem(format!("{tx}: EE: {error}")),
                        }
                        log.lock().unwrap().close(segment, "ended with EE");
                        return;
                    }
                }
            }
        };
        log.lock().unwrap().close(current.segment, end);
    }
}

/// A move: acknowledges (and waits for the confirmation of) what `current` delivered, opens a
/// connection to another node and re-issues the transaction there under a new TX, reading
/// `current` meanwhile (it still holds the transaction) without acknowledging anything on it.
async fn move_holding(
    world: &Arc<World>,
    log: &Arc<Mutex<SubLog>>,
    ps: &str,
    attempt: &mut u32,
    mut current: Holding,
) -> Moved {
    let tenant = log.lock().unwrap().tenant;
    if let Some(xs) = current.high {
        sent_xa(log, xs);
        let confirmed = tokio::select! {
            _ = world.abort.cancelled() => return Moved::Aborted,
            confirmed = current.subscription.acknowledge_and_wait(xs, IO_PATIENCE) => confirmed,
        };
        match confirmed {
            Ok(()) => log.lock().unwrap().confirmed(xs),
            Err(Error::Refused(er)) if er.ec == STORE_UNREACHABLE => {
                return Moved::Lost(Box::new(current), "XA refused for now (EC 816)");
            }
            Err(Error::Refused(er)) => {
                world.problem(format!("{}: XA refused: {er}", current.tx));
                return Moved::Lost(Box::new(current), "XA refused");
            }
            Err(_) => return Moved::Lost(Box::new(current), "XA not confirmed"),
        }
    }
    let target = (current.node + 1) % world.node_count();
    let Some((generation, conn)) = world.connect_to(tenant, target).await else {
        world.note("move not made: the other node is down");
        return Moved::Kept(Box::new(current));
    };
    *attempt += 1;
    let tx = format!("{ps}-{attempt}");
    let segment = log.lock().unwrap().begin(&tx, target, generation, true);
    let subscribe = eo(world, ps, &tx);
    let open = Subscription::open_within(conn, &subscribe, IO_PATIENCE);
    tokio::pin!(open);
    // Until the new EO is confirmed, `current` is read as ever (nothing acknowledged).
    let mut lost: Option<&'static str> = None;
    let opened = loop {
        tokio::select! {
            _ = world.abort.cancelled() => return Moved::Aborted,
            opened = &mut open => break opened,
            event = current.subscription.next(), if lost.is_none() => match event {
                Ok(Some(Event::Outcome(outcome))) => {
                    record_oz(world, log, current.segment, &current.tx, &outcome);
                }
                Ok(Some(Event::Acknowledged { xs })) => log.lock().unwrap().confirmed(xs),
                Ok(Some(Event::Finished { .. })) | Ok(None) => lost = Some("EF: taken over"),
                Ok(Some(other)) => {
                    world.problem(format!("{}: during a move: unexpected {other:?}", current.tx));
                }
                Err(Error::Silent(_)) => lost = Some("silent (no DA)"),
                Err(_) => lost = Some("closed by the server"),
            },
        }
    };
    match opened {
        Ok(subscription) => {
            {
                let mut log = log.lock().unwrap();
                log.issued(segment);
                log.moves += 1;
            }
            world.moves.fetch_add(1, SeqCst);
            let old = match lost {
                Some(end) => {
                    world.note(match end {
                        "EF: taken over" => {
                            "move: the old connection got its EF before the new EO's MV"
                        }
                        _ => "move: the old connection was lost before the new EO's MV",
                    });
                    log.lock().unwrap().close(current.segment, end);
                    None
                }
                None => Some(tokio::spawn(drain_taken_over(
                    world.clone(),
                    log.clone(),
                    current.subscription,
                    current.segment,
                    current.tx,
                    Instant::now() + TAKEOVER_OVERLAP + OLD_GRACE,
                ))),
            };
            let new = Holding {
                subscription,
                segment,
                tx,
                node: target,
                generation,
                high: None,
                since_xa: 0,
            };
            Moved::Done(Box::new(new), old)
        }
        Err(error) => {
            match &error {
                // The node could not read the database to decide: nothing was done.
                Error::Refused(er) if er.ec == STORE_UNREACHABLE => {}
                Error::Refused(er) => world.problem(format!(
                    "{tx}: the EO of a move to node {target} was refused: {er}"
                )),
                _ => {}
            }
            world.note("move not made: its EO was not confirmed");
            log.lock()
                .unwrap()
                .close(segment, "EO (a move) not confirmed");
            match lost {
                Some(end) => Moved::Lost(Box::new(current), end),
                None => Moved::Kept(Box::new(current)),
            }
        }
    }
}

/// `EE` for the transaction; waits for its EF and MV (recording any OZ still arriving).
async fn end_transaction(
    world: &World,
    subscription: &mut Subscription,
    tx: &str,
    log: &Mutex<SubLog>,
    segment: usize,
) -> Result<(), String> {
    subscription.end().await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + IO_PATIENCE;
    loop {
        let event = match timeout_at(deadline, subscription.next()).await {
            Err(_) => return Err(format!("no EF and MV within {IO_PATIENCE:?}")),
            Ok(Ok(Some(event))) => event,
            Ok(Ok(None)) | Ok(Err(_)) => return Err("the connection closed".into()),
        };
        match event {
            // The EF has come, and the EE's MV too.
            Event::Finished { .. } => return Ok(()),
            Event::Outcome(outcome) => {
                record_oz(world, log, segment, tx, &outcome);
            }
            Event::Acknowledged { .. } => {}
            other => world.problem(format!("{tx}: unexpected while ending: {other:?}")),
        }
    }
}
