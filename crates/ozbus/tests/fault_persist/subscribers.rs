//! Subscribers: persisted sequenced transactions that consume, acknowledge, lose their
//! connection (to a kill, or to a reset ordered by the chaos) and re-issue, each connection
//! authenticated as the transaction's tenant's user.
//!
//! Owns: each transaction's history, one segment per holding (an EO, issue or re-issue, to the
//! loss of its connection), with every delivery in the order it came. Each holding is an
//! [`sdmp_client::Subscription`]; the re-issuing is done here, with a new TX every time, so
//! that the history shows exactly what every connection delivered, repeats included.
//!
//! Never: drops or reorders a delivery (the checks need the raw history), or judges it.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sdmp_client::{frame_text, Error, Event, Outcome, Subscribe, Subscription};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout_at, Instant, MissedTickBehavior};

use crate::world::World;
use crate::{CAMPAIGN, IO_PATIENCE};

/// A subscriber acknowledges (XA) every this many events.
const XA_EVERY: usize = 50;
/// Subscribers ask for a DA every second: five seconds without any frame is a dead connection.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Final drain: a subscriber is done once idle this long on the last server.
const DRAIN_IDLE: Duration = Duration::from_secs(2);

/// One holding of the transaction: from an EO (issue or re-issue) to the loss of the connection.
pub struct Segment {
    pub tx: String,
    pub generation: u64,
    /// The highest XS whose XA got its MV before this EO: the cursor is at least there.
    pub confirmed_ack: Option<u64>,
    /// The highest XS ever sent in an XA before this EO: the cursor is at most there.
    pub max_xa_sent: Option<u64>,
    /// The EO got its MV.
    pub issued: bool,
    /// Why the connection was given up.
    pub end: &'static str,
}

pub struct Delivery {
    pub segment: usize,
    pub xs: u64,
    pub si: String,
    pub td: Option<String>,
}

pub struct SubLog {
    pub tenant: &'static str,
    pub ps: String,
    pub segments: Vec<Segment>,
    pub deliveries: Vec<Delivery>,
    pub confirmed_ack: Option<u64>,
    pub max_xa_sent: Option<u64>,
    pub xa_sent: u64,
    pub xa_confirmed: u64,
    pub resets: u64,
    pub ended: bool,
}

impl SubLog {
    pub fn new(tenant: &'static str, ps: String) -> SubLog {
        SubLog {
            tenant,
            ps,
            segments: Vec::new(),
            deliveries: Vec::new(),
            confirmed_ack: None,
            max_xa_sent: None,
            xa_sent: 0,
            xa_confirmed: 0,
            resets: 0,
            ended: false,
        }
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
    // messages.md fixes the order; TD is there because the tenant is not `default`.
    let want = format!(r"OZ\TX{tx}\TD{tenant}\CN{CAMPAIGN}\SI{si}\RE2\XS{xs}\XT{xt}\DT");
    let xt_ok = xt.len() == 24 && xt.ends_with('Z') && xt.as_bytes()[10] == b'T';
    if frame != want || !xt_ok {
        world.problem(format!(
            "{tx}: OZ not of the form {want:?} (XT like 2026-11-25T17:27:57.123Z): {frame}"
        ));
    }
    log.lock().unwrap().deliveries.push(Delivery {
        segment,
        xs,
        si,
        td: outcome.td.as_deref().map(text),
    });
    Some(xs)
}

/// Sends `XA` for `xs`, with confirmation (its MV says the cursor is durable).
async fn acknowledge(
    subscription: &mut Subscription,
    xs: u64,
    log: &Mutex<SubLog>,
) -> Result<(), Error> {
    {
        let mut log = log.lock().unwrap();
        log.xa_sent += 1;
        log.max_xa_sent = log.max_xa_sent.max(Some(xs));
    }
    subscription.acknowledge_confirmed(xs).await
}

/// The EO of one holding. No TD: the connection's user sees its own tenant only.
fn eo(ps: &str, tx: &str) -> Subscribe {
    Subscribe {
        failure: true,
        persist: Some(ps.into()),
        sequenced: true,
        rate: Some(1_000_000),
        keep_alive: Some(KEEP_ALIVE),
        ..Subscribe::new(tx)
    }
}

/// One persisted sequenced transaction of `tenant`: issues it, consumes it, acknowledges every
/// XA_EVERY events, and re-issues it (with a new TX every time) whenever the connection is lost;
/// resets its connection when told to. Once connected to the final server, with the producers
/// finished, and idle for DRAIN_IDLE, ends it with EE.
pub async fn subscriber(
    world: Arc<World>,
    log: Arc<Mutex<SubLog>>,
    mut reset_orders: mpsc::UnboundedReceiver<()>,
    mut ready: Option<oneshot::Sender<()>>,
) {
    let (tenant, ps) = {
        let log = log.lock().unwrap();
        (log.tenant, log.ps.clone())
    };
    let mut backoff = World::backoff();
    let mut attempt = 0u32;
    let mut orders_open = true;
    loop {
        if world.abort.is_cancelled() {
            return;
        }
        let Some((generation, conn)) = world.connect(tenant, &mut backoff).await else {
            return;
        };
        // Orders given while no connection was up are moot.
        while reset_orders.try_recv().is_ok() {}
        attempt += 1;
        let tx = format!("{ps}-{attempt}");
        let segment = {
            let mut log = log.lock().unwrap();
            let segment = Segment {
                tx: tx.clone(),
                generation,
                confirmed_ack: log.confirmed_ack,
                max_xa_sent: log.max_xa_sent,
                issued: false,
                end: "",
            };
            log.segments.push(segment);
            log.segments.len() - 1
        };
        // Open: the EO and its MV (events that come first are kept for `next`).
        let subscribe = eo(&ps, &tx);
        let opened = tokio::select! {
            _ = world.abort.cancelled() => return,
            opened = Subscription::open_within(conn, &subscribe, IO_PATIENCE) => opened,
        };
        let mut subscription = match opened {
            Ok(subscription) => subscription,
            Err(Error::Refused(er)) => {
                world.fatal(format!("{tx}: the EO was refused: {er}"));
                return;
            }
            Err(_) => {
                log.lock().unwrap().segments[segment].end = "EO not confirmed";
                continue;
            }
        };
        log.lock().unwrap().segments[segment].issued = true;
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        let mut high: Option<u64> = None; // the highest XS delivered on this connection
        let mut since_xa = 0usize;
        let mut last_oz = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let end = 'held: loop {
            tokio::select! {
                biased;
                _ = world.abort.cancelled() => return,
                order = reset_orders.recv(), if orders_open => {
                    if order.is_none() {
                        orders_open = false;
                        continue;
                    }
                    // Acknowledge what was processed, then vanish without a FIN.
                    if let Some(xs) = high {
                        let _ = acknowledge(&mut subscription, xs, &log).await;
                    }
                    subscription.into_connection().reset();
                    log.lock().unwrap().resets += 1;
                    world.resets.fetch_add(1, SeqCst);
                    break 'held "reset by the test";
                }
                event = subscription.next() => {
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
                            let Some(xs) = record_oz(&world, &log, segment, &tx, &outcome) else {
                                continue;
                            };
                            let top = high.map_or(xs, |high| high.max(xs));
                            high = Some(top);
                            since_xa += 1;
                            if since_xa >= XA_EVERY {
                                since_xa = 0;
                                if acknowledge(&mut subscription, top, &log).await.is_err() {
                                    break 'held "XA not sent";
                                }
                            }
                        }
                        Event::Acknowledged { xs } => {
                            let mut log = log.lock().unwrap();
                            log.xa_confirmed += 1;
                            log.confirmed_ack = log.confirmed_ack.max(Some(xs));
                        }
                        Event::Gap(gap) => {
                            world.gaps.fetch_add(1, SeqCst);
                            world.problem(format!(
                                "{tx}: gap notice: {}",
                                String::from_utf8_lossy(&gap.frame)
                            ));
                        }
                        Event::Finished { .. } => {
                            // Legitimate only if an EO of ours sent on an earlier connection to
                            // this same server was still unprocessed (no MV) when this one was
                            // issued: it may be processed after this EO and take the
                            // transaction over.
                            let log = log.lock().unwrap();
                            let late_eo = log.segments[..segment]
                                .iter()
                                .any(|earlier| earlier.generation == generation && !earlier.issued);
                            if !late_eo {
                                world.problem(format!(
                                    "{tx}: EF while this connection held it, and no earlier EO of \
                                     ours to server generation {generation} was outstanding"
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
                    // Done once on the last server, the producers finished (nothing more will
                    // be reported) at least DRAIN_IDLE ago, and idle as long.
                    let last = world.final_generation.load(SeqCst);
                    let quiet = world
                        .producers_finished
                        .get()
                        .is_some_and(|at| at.elapsed() >= DRAIN_IDLE);
                    if last != 0 && generation == last && quiet && last_oz.elapsed() >= DRAIN_IDLE {
                        match end_transaction(&world, &mut subscription, &tx, &log, segment).await {
                            Ok(()) => log.lock().unwrap().ended = true,
                            Err(error) => world.problem(format!("{tx}: EE: {error}")),
                        }
                        return;
                    }
                }
            }
        };
        log.lock().unwrap().segments[segment].end = end;
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
