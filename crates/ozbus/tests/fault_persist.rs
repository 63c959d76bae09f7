//! Persisted sequenced transactions (EO with PS and XS, acknowledged with XA) under faults, in the
//! style of a Jepsen queue test.
//!
//! A real `ozbus serve` process takes failure outcomes (CF) of two tenants from four producers
//! while four persisted transactions (two per tenant) consume them; meanwhile the server is
//! SIGKILLed and restarted on the same data directory (on new ports) again and again, and
//! subscriber connections are reset (RST). At the end the server is restarted cleanly, every
//! transaction re-issues and drains, and the histories are checked:
//!
//! - every acknowledged (MV) outcome of tenant T reached every persisted transaction of T;
//! - per transaction, XS strictly increases while one connection holds it; after a re-issue it
//!   may go back, but never to or below an XS whose XA was confirmed (MV), and the events after
//!   the last XA sent come again (nothing skipped); the same XS is always the same event;
//! - no transaction received another tenant's outcome (TD of the OZ);
//! - every delivered outcome was sent by a producer, and none that got an ER was delivered;
//! - no gap notice (XG), no unexpected frame, and a clean final SIGTERM.
//!
//! Default run: about 40 s (30 s of chaos). A longer run:
//!
//! ```text
//! OZBUS_FAULT_SECONDS=600 cargo test --release -p ozbus --test fault_persist -- --nocapture
//! ```
//!
//! Knobs (environment): `OZBUS_FAULT_SECONDS` chaos phase in seconds (default 30);
//! `OZBUS_FAULT_SEED` seed of the chaos schedule (default: from the clock; printed, to replay a
//! schedule); `OZBUS_FAULT_RATE` outcomes per second per producer (default 500).

mod fault_common;
mod server_common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fault_common::{
    blocking, kill_servers_of, param, parse_er, raw_param, split, Backoff, Conn, XorShift,
};
use server_common::ServerProcess;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

const TENANTS: [&str; 2] = ["t1", "t2"];
const PRODUCERS_PER_TENANT: usize = 2;
const TRANSACTIONS_PER_TENANT: [&str; 2] = ["a", "b"];
const CAMPAIGN: &str = "fault";

/// Unacknowledged CF frames a producer may have in flight.
const WINDOW: usize = 200;
/// A subscriber acknowledges (XA) every this many events.
const XA_EVERY: usize = 50;

const CONNECT_PATIENCE: Duration = Duration::from_secs(2);
const IO_PATIENCE: Duration = Duration::from_secs(5);
/// Subscribers ask for a DA every second: this long without any frame means a dead connection.
const LIVENESS: Duration = Duration::from_secs(5);
/// A producer with frames in flight and no MV/ER for this long gives the connection up.
const PRODUCER_STALL: Duration = Duration::from_secs(10);
/// After the producers are told to stop, how long they wait for the MVs of what is in flight.
const PRODUCER_LINGER: Duration = Duration::from_secs(5);
const START_PATIENCE: Duration = Duration::from_secs(30);
const STOP_PATIENCE: Duration = Duration::from_secs(15);
const SETUP_PATIENCE: Duration = Duration::from_secs(15);
/// Final drain: a subscriber is done once idle this long on the last server.
const DRAIN_IDLE: Duration = Duration::from_secs(2);
/// ... and every subscriber must be done within this.
const DRAIN_BOUND: Duration = Duration::from_secs(20);
/// Chaos: a SIGKILL + restart every 1.5–2.5 s (so 30 s give at least 10 kills), and a reset of a
/// random subscriber's connection every 2.5–3.5 s.
const KILL_EVERY_MS: (u64, u64) = (1500, 2500);
const RESET_EVERY_MS: (u64, u64) = (2500, 3500);
/// Violations kept for the report (all are counted).
const KEEP_VIOLATIONS: usize = 60;

/// The current server: (generation, 8-bit address); `None` while it is down.
type Published = Option<(u64, SocketAddr)>;

/// What every task shares: the server process and its address, the stop signals, the counters,
/// and the problems seen on the wire.
struct World {
    dir: PathBuf,
    server: Mutex<Option<ServerProcess>>,
    addr: watch::Sender<Published>,
    generation: AtomicU64,
    /// The generation of the final, clean restart (0 before it).
    final_generation: AtomicU64,
    /// Stops everything (a fatal problem, or the end of the test).
    abort: CancellationToken,
    fatal: Mutex<Option<String>>,
    problems: Mutex<Vec<String>>,
    kills: AtomicU64,
    reset_orders: AtomicU64,
    resets: AtomicU64,
    gaps: AtomicU64,
    slowest_restart_ms: AtomicU64,
}

impl World {
    fn new(dir: PathBuf) -> World {
        World {
            dir,
            server: Mutex::new(None),
            addr: watch::channel(None).0,
            generation: AtomicU64::new(0),
            final_generation: AtomicU64::new(0),
            abort: CancellationToken::new(),
            fatal: Mutex::new(None),
            problems: Mutex::new(Vec::new()),
            kills: AtomicU64::new(0),
            reset_orders: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            slowest_restart_ms: AtomicU64::new(0),
        }
    }

    /// Something the test does not accept; checked at the end.
    fn problem(&self, what: String) {
        eprintln!("fault_persist: {what}");
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < KEEP_VIOLATIONS {
            problems.push(what);
        }
    }

    /// Something that makes going on pointless: recorded, and everything stops.
    fn fatal(&self, what: String) {
        self.problem(what.clone());
        self.fatal.lock().unwrap().get_or_insert(what);
        self.abort.cancel();
    }

    /// The current server, waiting while it is down; `None` once the test is aborting.
    /// A connection to the current server, retrying with back-off while it is down; `None`
    /// once the run is aborted. Returns the server's generation with it.
    async fn connect(&self, backoff: &mut Backoff) -> Option<(u64, Conn)> {
        loop {
            let (generation, addr) = self.server_addr().await?;
            match Conn::connect(addr, CONNECT_PATIENCE).await {
                Ok(conn) => {
                    backoff.reset();
                    return Some((generation, conn));
                }
                Err(_) => {
                    if !backoff.wait(&self.abort).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn server_addr(&self) -> Option<(u64, SocketAddr)> {
        let mut published = self.addr.subscribe();
        loop {
            if self.abort.is_cancelled() {
                return None;
            }
            if let Some(current) = *published.borrow_and_update() {
                return Some(current);
            }
            tokio::select! {
                _ = self.abort.cancelled() => return None,
                _ = timeout(Duration::from_secs(1), published.changed()) => {}
            }
        }
    }

    /// Stops the current server (SIGKILL, or SIGTERM when `clean`) and starts a new one on the
    /// same data directory; it listens on new ports, published with a new generation.
    async fn restart(&self, clean: bool) -> Result<(), String> {
        let began = Instant::now();
        let old = self.server.lock().unwrap().take();
        self.addr.send_replace(None);
        if let Some(old) = old {
            if clean {
                match blocking(STOP_PATIENCE, "SIGTERM", move || old.terminate()).await {
                    Ok(status) if status.success() => {}
                    Ok(status) => self.problem(format!(
                        "SIGTERM: the server did not exit cleanly: {status:?}"
                    )),
                    Err(error) => {
                        kill_servers_of(&self.dir);
                        return Err(error);
                    }
                }
            } else {
                if let Err(error) = blocking(STOP_PATIENCE, "SIGKILL", move || old.kill()).await {
                    kill_servers_of(&self.dir);
                    return Err(error);
                }
                self.kills.fetch_add(1, SeqCst);
            }
        }
        self.start(clean).await?;
        let took = began.elapsed().as_millis() as u64;
        self.slowest_restart_ms.fetch_max(took, SeqCst);
        Ok(())
    }

    async fn start(&self, last: bool) -> Result<(), String> {
        if self.abort.is_cancelled() {
            return Err("aborting".into());
        }
        let generation = self.generation.fetch_add(1, SeqCst) + 1;
        if last {
            // Before the address is published: a subscriber that sees it knows it is the last.
            self.final_generation.store(generation, SeqCst);
        }
        let dir = self.dir.clone();
        let server = match blocking(START_PATIENCE, "starting ozbus serve", move || {
            ServerProcess::start(&dir, &[])
        })
        .await
        {
            Ok(server) => server,
            Err(error) => {
                kill_servers_of(&self.dir);
                return Err(error);
            }
        };
        if self.abort.is_cancelled() {
            return Err("aborting".into()); // `server` is dropped: killed.
        }
        self.addr.send_replace(Some((generation, server.addr_8bit)));
        *self.server.lock().unwrap() = Some(server);
        Ok(())
    }

    /// Kills whatever server is running (every exit path of the test comes here).
    async fn shut_down(&self) {
        self.abort.cancel();
        let server = self.server.lock().unwrap().take();
        self.addr.send_replace(None);
        if let Some(server) = server {
            if blocking(STOP_PATIENCE, "SIGKILL", move || server.kill())
                .await
                .is_err()
            {
                kill_servers_of(&self.dir);
            }
        }
        let stray = kill_servers_of(&self.dir);
        if stray > 0 {
            eprintln!("fault_persist: killed {stray} stray server process(es)");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Producers

#[derive(Default)]
struct ProducerLog {
    sent: HashSet<String>,
    acknowledged: HashSet<String>,
    /// SI -> the ER frame.
    errored: HashMap<String, String>,
    connections: u64,
}

/// Sends `CF` frames of `tenant` with unique SIs (TK = SI) at about `rate` per second, with at most
/// WINDOW unacknowledged, reconnecting to whichever server is current, until `stop`.
async fn producer(
    world: Arc<World>,
    tenant: &'static str,
    index: usize,
    rate: f64,
    stop: CancellationToken,
    log: Arc<Mutex<ProducerLog>>,
) {
    let mut n: u64 = 0;
    let mut backoff = Backoff::new();
    'connection: loop {
        if stop.is_cancelled() || world.abort.is_cancelled() {
            return;
        }
        let Some((_, mut conn)) = world.connect(&mut backoff).await else {
            return;
        };
        log.lock().unwrap().connections += 1;
        // In flight on this connection; when it breaks, their fate is unknown (they stay "sent").
        let mut in_flight: HashSet<String> = HashSet::new();
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
                frame = conn.next_frame() => {
                    let Some(Ok(frame)) = frame else { continue 'connection };
                    progress = Instant::now();
                    if let Some(si) = frame.strip_prefix(r"MV\TK") {
                        if in_flight.remove(si) {
                            log.lock().unwrap().acknowledged.insert(si.to_string());
                        } else {
                            world.problem(format!("producer {tenant}-{index}: MV for nothing in flight: {frame}"));
                        }
                    } else if let Some(si) = parse_er(&frame).and_then(|(_, fm)| raw_param(fm, "TK")) {
                        in_flight.remove(si);
                        log.lock().unwrap().errored.insert(si.to_string(), frame.clone());
                    } else {
                        world.problem(format!("producer {tenant}-{index}: unexpected frame: {frame}"));
                    }
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
                        let frame = format!(r"CF\CA2\CN{CAMPAIGN}\SI{si}\TD{tenant}\TK{si}");
                        in_flight.insert(si);
                        if conn.feed(&frame, IO_PATIENCE).await.is_err() {
                            continue 'connection;
                        }
                    }
                    if conn.flush(IO_PATIENCE).await.is_err() {
                        continue 'connection;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Subscribers

/// One holding of the transaction: from an EO (issue or re-issue) to the loss of the connection.
struct Segment {
    tx: String,
    generation: u64,
    /// The highest XS whose XA got its MV before this EO: the cursor is at least there.
    confirmed_ack: Option<u64>,
    /// The highest XS ever sent in an XA before this EO: the cursor is at most there.
    max_xa_sent: Option<u64>,
    /// The EO got its MV.
    issued: bool,
    /// Why the connection was given up.
    end: &'static str,
}

struct Delivery {
    segment: usize,
    xs: u64,
    si: String,
    td: Option<String>,
}

struct SubLog {
    tenant: &'static str,
    ps: String,
    segments: Vec<Segment>,
    deliveries: Vec<Delivery>,
    confirmed_ack: Option<u64>,
    max_xa_sent: Option<u64>,
    xa_sent: u64,
    xa_confirmed: u64,
    resets: u64,
    ended: bool,
}

impl SubLog {
    fn new(tenant: &'static str, ps: String) -> SubLog {
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
    frame: &str,
) -> Option<u64> {
    let (_, params) = split(frame);
    let tenant = log.lock().unwrap().tenant;
    let td = param(&params, "TD");
    let si = param(&params, "SI");
    let xs = param(&params, "XS").and_then(|xs| xs.parse::<u64>().ok());
    let xt = param(&params, "XT").unwrap_or("");
    let (Some(si), Some(xs)) = (si, xs) else {
        world.problem(format!("{tx}: OZ without SI or XS: {frame}"));
        return None;
    };
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
        si: si.to_string(),
        td: td.map(str::to_string),
    });
    Some(xs)
}

/// Sends `XA` for `xs` (with a TK, so its MV says the cursor is durable).
async fn acknowledge(
    conn: &mut Conn,
    tx: &str,
    xs: u64,
    log: &Mutex<SubLog>,
) -> std::io::Result<()> {
    {
        let mut log = log.lock().unwrap();
        log.xa_sent += 1;
        log.max_xa_sent = log.max_xa_sent.max(Some(xs));
    }
    conn.send(&format!(r"XA\TX{tx}\XS{xs}\TKxa-{xs}"), IO_PATIENCE)
        .await
}

/// One persisted sequenced transaction of `tenant`: issues it, consumes it, acknowledges every
/// XA_EVERY events, and re-issues it (with a new TX every time) whenever the connection is lost;
/// resets its connection when told to. Once connected to the final server and idle for
/// DRAIN_IDLE, ends it with EE.
async fn subscriber(
    world: Arc<World>,
    log: Arc<Mutex<SubLog>>,
    mut reset_orders: mpsc::UnboundedReceiver<()>,
    mut ready: Option<oneshot::Sender<()>>,
) {
    let (tenant, ps) = {
        let log = log.lock().unwrap();
        (log.tenant, log.ps.clone())
    };
    let mut backoff = Backoff::new();
    let mut attempt = 0u32;
    let mut orders_open = true;
    loop {
        if world.abort.is_cancelled() {
            return;
        }
        let Some((generation, mut conn)) = world.connect(&mut backoff).await else {
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
        let eo = format!(r"EO\TX{tx}\FO\TD{tenant}\PS{ps}\XS\CS1000000\TKeo-{attempt}");
        if conn.send(&eo, IO_PATIENCE).await.is_err()
            || conn.send(r"VS\VI1", IO_PATIENCE).await.is_err()
        {
            log.lock().unwrap().segments[segment].end = "EO not sent";
            continue;
        }
        let eo_mv = format!(r"MV\TKeo-{attempt}");
        let unexpected_ef = format!(r"EF\TX{tx}");
        let mut issued = false;
        let mut high: Option<u64> = None; // the highest XS delivered on this connection
        let mut since_xa = 0usize;
        let mut last_frame = Instant::now();
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
                        let _ = acknowledge(&mut conn, &tx, xs, &log).await;
                    }
                    conn.reset();
                    log.lock().unwrap().resets += 1;
                    world.resets.fetch_add(1, SeqCst);
                    break 'held "reset by the test";
                }
                frame = conn.next_frame() => {
                    let frame = match frame {
                        Some(Ok(frame)) => frame,
                        Some(Err(_)) => break 'held "read error",
                        None => break 'held "closed by the server",
                    };
                    last_frame = Instant::now();
                    if frame.starts_with(r"OZ\") {
                        last_oz = last_frame;
                        let Some(xs) = record_oz(&world, &log, segment, &tx, &frame) else { continue };
                        high = high.max(Some(xs));
                        since_xa += 1;
                        if since_xa >= XA_EVERY {
                            since_xa = 0;
                            if acknowledge(&mut conn, &tx, high.unwrap(), &log).await.is_err() {
                                break 'held "XA not sent";
                            }
                        }
                    } else if frame == "DA" {
                    } else if frame == eo_mv {
                        issued = true;
                        log.lock().unwrap().segments[segment].issued = true;
                        last_oz = last_frame;
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    } else if let Some(xs) = frame.strip_prefix(r"MV\TKxa-").and_then(|xs| xs.parse::<u64>().ok()) {
                        let mut log = log.lock().unwrap();
                        log.xa_confirmed += 1;
                        log.confirmed_ack = log.confirmed_ack.max(Some(xs));
                    } else if frame.starts_with(r"XG\") {
                        world.gaps.fetch_add(1, SeqCst);
                        world.problem(format!("{tx}: gap notice: {frame}"));
                    } else if frame == unexpected_ef {
                        // Legitimate only if an EO of ours sent on an earlier connection to this
                        // same server was still unprocessed (no MV) when this one was issued: it
                        // may be processed after this EO and take the transaction over.
                        let log = log.lock().unwrap();
                        let late_eo = log.segments[..segment]
                            .iter()
                            .any(|earlier| earlier.generation == generation && !earlier.issued);
                        if !late_eo {
                            world.problem(format!(
                                "{tx}: EF while this connection held it, and no earlier EO of ours \
                                 to server generation {generation} was outstanding"
                            ));
                        }
                        break 'held "EF";
                    } else if let Some((_, fm)) = parse_er(&frame) {
                        if fm.starts_with(r"EO\") {
                            world.fatal(format!("{tx}: the EO was refused: {frame}"));
                            return;
                        }
                        world.problem(format!("{tx}: {frame}"));
                    } else {
                        world.problem(format!("{tx}: unexpected frame: {frame}"));
                    }
                }
                _ = tick.tick() => {
                    if last_frame.elapsed() > LIVENESS {
                        break 'held "silent (no DA)";
                    }
                    let last = world.final_generation.load(SeqCst);
                    if last != 0 && generation == last && issued && last_oz.elapsed() >= DRAIN_IDLE {
                        match end_transaction(&world, &mut conn, &tx, &log, segment).await {
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
    conn: &mut Conn,
    tx: &str,
    log: &Mutex<SubLog>,
    segment: usize,
) -> Result<(), String> {
    conn.send(&format!(r"EE\TX{tx}\TKee"), IO_PATIENCE)
        .await
        .map_err(|e| e.to_string())?;
    let (ef, mv) = (format!(r"EF\TX{tx}"), r"MV\TKee");
    let (mut got_ef, mut got_mv) = (false, false);
    let deadline = Instant::now() + IO_PATIENCE;
    while !(got_ef && got_mv) {
        let frame = match timeout_at(deadline, conn.next_frame()).await {
            Err(_) => return Err(format!("no {ef} and {mv} within {IO_PATIENCE:?}")),
            Ok(None) | Ok(Some(Err(_))) => return Err("the connection closed".into()),
            Ok(Some(Ok(frame))) => frame,
        };
        if frame == ef {
            got_ef = true;
        } else if frame == mv {
            got_mv = true;
        } else if frame.starts_with(r"OZ\") {
            record_oz(world, log, segment, tx, &frame);
        } else if frame == "DA" || frame.starts_with(r"MV\TKxa-") {
        } else {
            world.problem(format!("{tx}: unexpected frame while ending: {frame}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Chaos

/// Until `stop`: SIGKILL + restart the server every KILL_EVERY_MS, and reset the connection of a
/// random subscriber every RESET_EVERY_MS, on a schedule drawn from `seed`.
async fn chaos(
    world: Arc<World>,
    seed: u64,
    stop: CancellationToken,
    resets: Vec<mpsc::UnboundedSender<()>>,
) {
    let mut rng = XorShift::new(seed);
    let mut next_kill = Instant::now() + rng.millis_between(KILL_EVERY_MS.0, KILL_EVERY_MS.1);
    let mut next_reset = Instant::now() + rng.millis_between(RESET_EVERY_MS.0, RESET_EVERY_MS.1);
    loop {
        let next = next_kill.min(next_reset);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = world.abort.cancelled() => return,
            _ = sleep_until(next) => {}
        }
        if next == next_kill {
            if let Err(error) = world.restart(false).await {
                world.fatal(format!("chaos: {error}"));
                return;
            }
            next_kill = Instant::now() + rng.millis_between(KILL_EVERY_MS.0, KILL_EVERY_MS.1);
        } else {
            let victim = rng.below(resets.len() as u64) as usize;
            let _ = resets[victim].send(());
            world.reset_orders.fetch_add(1, SeqCst);
            next_reset = Instant::now() + rng.millis_between(RESET_EVERY_MS.0, RESET_EVERY_MS.1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test

struct Settings {
    chaos: Duration,
    seed: u64,
    rate: f64,
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// Setup, chaos, final clean restart and drain. Problems go to `world`.
async fn run(
    world: &Arc<World>,
    settings: &Settings,
    producers: &[(&'static str, usize, Arc<Mutex<ProducerLog>>)],
    subscribers: &[Arc<Mutex<SubLog>>],
) {
    if let Err(error) = world.start(false).await {
        world.fatal(format!("first start: {error}"));
        return;
    }

    // The transactions exist (their EO confirmed) before the first outcome is reported, so
    // every outcome is theirs to receive.
    let mut reset_senders = Vec::new();
    let mut subscriber_tasks = Vec::new();
    let mut readiness = Vec::new();
    for log in subscribers {
        let (reset_tx, reset_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        reset_senders.push(reset_tx);
        readiness.push(ready_rx);
        subscriber_tasks.push(tokio::spawn(subscriber(
            world.clone(),
            log.clone(),
            reset_rx,
            Some(ready_tx),
        )));
    }
    let all_ready = async {
        for ready in readiness {
            let _ = ready.await;
        }
    };
    tokio::select! {
        _ = world.abort.cancelled() => return,
        ready = timeout(SETUP_PATIENCE, all_ready) => if ready.is_err() {
            world.fatal(format!("the transactions were not all opened within {SETUP_PATIENCE:?}"));
            return;
        },
    }
    println!(
        "fault_persist: {} transactions open; chaos for {:?}",
        subscribers.len(),
        settings.chaos
    );

    let stop_producers = CancellationToken::new();
    let producer_tasks: Vec<_> = producers
        .iter()
        .map(|(tenant, index, log)| {
            tokio::spawn(producer(
                world.clone(),
                tenant,
                *index,
                settings.rate,
                stop_producers.clone(),
                log.clone(),
            ))
        })
        .collect();
    let stop_chaos = CancellationToken::new();
    let chaos_task = tokio::spawn(chaos(
        world.clone(),
        settings.seed,
        stop_chaos.clone(),
        reset_senders,
    ));

    tokio::select! {
        _ = world.abort.cancelled() => {}
        _ = sleep(settings.chaos) => {}
    }

    // Stop the chaos (a restart under way completes) and the producers (they wait a little for
    // the MVs of what is in flight).
    stop_chaos.cancel();
    stop_producers.cancel();
    if timeout(START_PATIENCE + STOP_PATIENCE, chaos_task)
        .await
        .is_err()
    {
        world.fatal("the chaos task did not stop".into());
    }
    for task in producer_tasks {
        if timeout(PRODUCER_LINGER + IO_PATIENCE + CONNECT_PATIENCE, task)
            .await
            .is_err()
        {
            world.fatal("a producer did not stop".into());
        }
    }
    if world.abort.is_cancelled() {
        return;
    }

    // One last restart, clean this time; every transaction re-issues on it and drains.
    println!("fault_persist: chaos over; final clean restart and drain");
    if let Err(error) = world.restart(true).await {
        world.fatal(format!("final restart: {error}"));
        return;
    }
    let drained = timeout(DRAIN_BOUND, async {
        for task in subscriber_tasks {
            let _ = task.await;
        }
    })
    .await;
    if drained.is_err() {
        let late: Vec<String> = subscribers
            .iter()
            .map(|log| log.lock().unwrap())
            .filter(|log| !log.ended)
            .map(|log| log.ps.clone())
            .collect();
        world.problem(format!(
            "not drained and ended within {DRAIN_BOUND:?}: {late:?}"
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_transactions_lose_nothing_acknowledged_under_kills_and_resets() {
    let settings = Settings {
        chaos: Duration::from_secs(env_number("OZBUS_FAULT_SECONDS").unwrap_or(30)),
        seed: env_number("OZBUS_FAULT_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        }),
        rate: env_number("OZBUS_FAULT_RATE").unwrap_or(500) as f64,
    };
    println!(
        "fault_persist: seed={} chaos={:?} rate={}/s per producer (replay: OZBUS_FAULT_SEED={})",
        settings.seed, settings.chaos, settings.rate, settings.seed
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let world = Arc::new(World::new(dir.path().to_path_buf()));

    let producers: Vec<_> = TENANTS
        .iter()
        .flat_map(|&tenant| {
            (0..PRODUCERS_PER_TENANT)
                .map(move |index| (tenant, index, Arc::new(Mutex::new(ProducerLog::default()))))
        })
        .collect();
    let subscribers: Vec<_> = TENANTS
        .iter()
        .flat_map(|&tenant| {
            TRANSACTIONS_PER_TENANT.iter().map(move |name| {
                Arc::new(Mutex::new(SubLog::new(
                    tenant,
                    format!("ps-{tenant}-{name}"),
                )))
            })
        })
        .collect();

    let hard_cap = settings.chaos + Duration::from_secs(60);
    let finished = timeout(hard_cap, run(&world, &settings, &producers, &subscribers)).await;
    world.shut_down().await;

    let report = check(&world, &settings, &producers, &subscribers);
    println!("{}", report.counts);
    for line in &report.details {
        println!("  {line}");
    }
    let problems = world.problems.lock().unwrap().clone();
    if let Some(fatal) = world.fatal.lock().unwrap().clone() {
        panic!("stopped early: {fatal}");
    }
    assert!(
        finished.is_ok(),
        "the test hit its hard cap of {hard_cap:?}"
    );
    for violation in &report.violations {
        println!("VIOLATION {violation}");
    }
    for problem in &problems {
        println!("PROBLEM {problem}");
    }
    assert!(
        report.violations.is_empty() && problems.is_empty(),
        "{} violation(s), {} problem(s) on the wire (listed above); first: {:?}",
        report.violation_count,
        problems.len(),
        report.violations.first().or(problems.first())
    );
}

// ---------------------------------------------------------------------------------------------
// Checks

/// Segment `index` and the one before it, for a violation message.
fn history(segments: &[Segment], index: usize) -> String {
    let describe = |i: usize| {
        let s = &segments[i];
        format!(
            "TX {} on server generation {} (EO confirmed: {}, ended: {:?}, cursor between {:?} and {:?} at its EO)",
            s.tx, s.generation, s.issued, s.end, s.confirmed_ack, s.max_xa_sent
        )
    };
    match index {
        0 => describe(0),
        _ => format!("{}, after {}", describe(index), describe(index - 1)),
    }
}

struct Report {
    counts: String,
    details: Vec<String>,
    violations: Vec<String>,
    violation_count: usize,
}

fn check(
    world: &World,
    settings: &Settings,
    producers: &[(&'static str, usize, Arc<Mutex<ProducerLog>>)],
    subscribers: &[Arc<Mutex<SubLog>>],
) -> Report {
    let mut violations = Vec::new();
    let mut violation_count = 0usize;
    let mut violation = |what: String| {
        violation_count += 1;
        if violations.len() < KEEP_VIOLATIONS {
            violations.push(what);
        }
    };

    // What the producers know.
    let mut sent: HashSet<String> = HashSet::new();
    let mut acknowledged: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut errored: HashMap<String, String> = HashMap::new();
    let mut producer_connections = 0;
    for (tenant, _, log) in producers {
        let log = log.lock().unwrap();
        sent.extend(log.sent.iter().cloned());
        acknowledged
            .entry(*tenant)
            .or_default()
            .extend(log.acknowledged.iter().cloned());
        errored.extend(log.errored.iter().map(|(si, er)| (si.clone(), er.clone())));
        producer_connections += log.connections;
    }
    let acknowledged_count: usize = acknowledged.values().map(HashSet::len).sum();

    let subscribers: Vec<_> = subscribers.iter().map(|log| log.lock().unwrap()).collect();

    // One event per sequence number, and one sequence number per outcome, across every
    // transaction (sequence numbers are global; every SI was reported once).
    let mut event_of: HashMap<u64, (Option<&str>, &str)> = HashMap::new();
    let mut xs_of: HashMap<&str, u64> = HashMap::new();
    for sub in &subscribers {
        for d in &sub.deliveries {
            let event = (d.td.as_deref(), d.si.as_str());
            match event_of.get(&d.xs) {
                Some(&known) if known != event => violation(format!(
                    "XS {} is {:?} for one delivery and {:?} for another",
                    d.xs, known, event
                )),
                Some(_) => {}
                None => {
                    event_of.insert(d.xs, event);
                }
            }
            match xs_of.get(d.si.as_str()) {
                Some(&xs) if xs != d.xs => violation(format!(
                    "outcome {} delivered with XS {} and with XS {}",
                    d.si, xs, d.xs
                )),
                Some(_) => {}
                None => {
                    xs_of.insert(d.si.as_str(), d.xs);
                }
            }
        }
    }
    // The sequence numbers of each tenant's events that anyone saw.
    let mut tenant_events: HashMap<&str, BTreeSet<u64>> = HashMap::new();
    for (&xs, &(td, _)) in &event_of {
        tenant_events
            .entry(td.unwrap_or("default"))
            .or_default()
            .insert(xs);
    }

    let mut delivered_total = 0usize;
    let mut duplicates_total = 0usize;
    let mut reissues = 0usize;
    let mut details = Vec::new();
    for sub in &subscribers {
        let name = format!("{}/{}", sub.tenant, sub.ps);
        delivered_total += sub.deliveries.len();
        reissues += sub.segments.len().saturating_sub(1);
        let mut seen: HashSet<u64> = HashSet::new();
        let mut delivered_sis: HashSet<&str> = HashSet::new();
        let mut duplicates = 0usize;
        let mut foreign = 0usize;
        let mut previous: Option<&Delivery> = None;
        // Per segment: the XS delivered.
        let mut per_segment: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); sub.segments.len()];
        for d in &sub.deliveries {
            if !seen.insert(d.xs) {
                duplicates += 1;
            }
            delivered_sis.insert(&d.si);
            per_segment[d.segment].insert(d.xs);
            // Tenant isolation.
            if d.td.as_deref() != Some(sub.tenant) || !d.si.starts_with(&format!("{}-", sub.tenant))
            {
                foreign += 1;
                violation(format!(
                    "{name}: received {} (TD {:?}) of another tenant",
                    d.si, d.td
                ));
            }
            // Only what was sent, and nothing refused.
            if !sent.contains(&d.si) {
                violation(format!("{name}: delivered {} that no producer sent", d.si));
            }
            if let Some(er) = errored.get(&d.si) {
                violation(format!("{name}: delivered {} that was refused: {er}", d.si));
            }
            // Order.
            let resumed = previous.is_none_or(|p| p.segment != d.segment);
            if resumed {
                let segment = &sub.segments[d.segment];
                if let Some(acked) = segment.confirmed_ack {
                    if d.xs <= acked {
                        violation(format!(
                            "{name}: delivery restarted at XS {}, at or before XS {acked} whose XA was \
                             confirmed; {}",
                            d.xs,
                            history(&sub.segments, d.segment)
                        ));
                    }
                }
            } else if let Some(p) = previous {
                if d.xs <= p.xs {
                    violation(format!(
                        "{name}: XS went from {} to {} on one connection; {}",
                        p.xs,
                        d.xs,
                        history(&sub.segments, d.segment)
                    ));
                }
            }
            previous = Some(d);
        }
        // Nothing skipped: while a connection holds the transaction, it gets every event of the
        // tenant after the cursor, and the cursor is at most the highest XS ever sent in an XA
        // (0 for the first EO: the transaction was opened before any outcome was reported).
        let events = tenant_events.get(sub.tenant).cloned().unwrap_or_default();
        let mut skipped = 0usize;
        for (index, (segment, got)) in sub.segments.iter().zip(&per_segment).enumerate() {
            let Some(&high) = got.last() else { continue };
            let low = if index == 0 {
                0
            } else {
                segment.max_xa_sent.unwrap_or(0)
            };
            for &xs in events.range(low + 1..=high) {
                if !got.contains(&xs) {
                    skipped += 1;
                    violation(format!(
                        "{name}: skipped XS {xs} ({:?}): the cursor was at most {low} and delivery went on \
                         to XS {high}; {}",
                        event_of[&xs],
                        history(&sub.segments, index)
                    ));
                }
            }
        }
        // Every acknowledged outcome of the tenant arrived.
        let mut missing: Vec<&String> = acknowledged
            .get(sub.tenant)
            .map(|acked| {
                acked
                    .iter()
                    .filter(|si| !delivered_sis.contains(si.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        missing.sort();
        if !missing.is_empty() {
            violation(format!(
                "{name}: {} acknowledged outcome(s) never delivered, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
        duplicates_total += duplicates;
        details.push(format!(
            "{name}: delivered={} unique={} duplicates={} issues={} resets={} xa_sent={} xa_confirmed={} \
             confirmed_ack={:?} missing_acknowledged={} skipped={} foreign={} ended={}",
            sub.deliveries.len(),
            seen.len(),
            duplicates,
            sub.segments.len(),
            sub.resets,
            sub.xa_sent,
            sub.xa_confirmed,
            sub.confirmed_ack,
            missing.len(),
            skipped,
            foreign,
            sub.ended,
        ));
    }

    for (si, er) in errored.iter().take(5) {
        details.push(format!("refused outcome {si}: {er}"));
    }
    let gaps = world.gaps.load(SeqCst);
    if gaps > 0 {
        violation(format!("{gaps} gap notice(s) (XG) received"));
    }
    let kills = world.kills.load(SeqCst);
    let wanted_kills = (settings.chaos.as_secs() / 3).max(1);
    if world.fatal.lock().unwrap().is_none() && kills < wanted_kills {
        violation(format!(
            "only {kills} kills (wanted at least {wanted_kills})"
        ));
    }
    if subscribers.iter().any(|s| !s.ended) && world.fatal.lock().unwrap().is_none() {
        violation("not every transaction was ended with EE".into());
    }

    let counts = format!(
        "fault_persist: sent={} acknowledged={} errored={} delivered={} unique_outcomes_delivered={} duplicates={} \
         kills={} resets={} (ordered {}) reissues={} producer_connections={} gaps={} slowest_restart={}ms",
        sent.len(),
        acknowledged_count,
        errored.len(),
        delivered_total,
        xs_of.len(),
        duplicates_total,
        kills,
        world.resets.load(SeqCst),
        world.reset_orders.load(SeqCst),
        reissues,
        producer_connections,
        gaps,
        world.slowest_restart_ms.load(SeqCst),
    );
    Report {
        counts,
        details,
        violations,
        violation_count,
    }
}
