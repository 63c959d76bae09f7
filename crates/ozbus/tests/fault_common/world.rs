//! The world the clients live in: one or more `ozbus serve` nodes, each one process at a time on
//! its own data directory (one node: its store as the suite runs, SQLite or the suite's
//! PostgreSQL; several: one PostgreSQL database they share), with one user per tenant in their
//! configuration file; their restarts (SIGKILL during the chaos, SIGTERM at the end) on new
//! ports; the address of each node's current process; the database, when the test has its own;
//! the chaos schedule; and the problems anyone saw.
//!
//! Owns: the configuration file (the users), starting, killing and stopping server processes,
//! always with time limits (a hung server must never hang the test), each with its log file,
//! noticing a process that exits by itself (a problem; the node is started again), publishing
//! which process is current on each node and when each process (generation) ended, connections
//! authenticated as a tenant's user, the moment the producers were done, each server's count
//! of re-sends without effect (`ozbus_ingest_duplicates_total`, read from its metrics endpoint
//! just before it is stopped, summed over the servers), and the chaos: kills, connection resets
//! and moves ordered to subscribers, restarts and a halt of the database.
//!
//! Never: judges the histories (`checks` does), or talks SDMP beyond opening connections and
//! authenticating them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sdmp::WireForm;
use sdmp_client::{Backoff, ConnectOptions, Connection, Credentials, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::calls::Script;
use super::database::PgCluster;
use super::{
    blocking, kill_servers_of, XorShift, CONNECT_PATIENCE, IO_PATIENCE, KEEP_VIOLATIONS,
    START_PATIENCE, STOP_PATIENCE, TENANTS,
};
use crate::server_common::ServerProcess;
use crate::users_common::{user, users_toml, PASSWORD};

/// Reconnecting while the server is down: from this pause, doubling, up to the next.
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
const BACKOFF_MOST: Duration = Duration::from_millis(500);
/// Reading a server's metrics before it is stopped: at most this long.
const SCRAPE_PATIENCE: Duration = Duration::from_secs(2);
/// The counter of re-sends a server answered without a second effect.
const DUPLICATES_METRIC: &str = "ozbus_ingest_duplicates_total";
/// A node that does not start (its database away) is tried again after this pause.
const START_RETRY: Duration = Duration::from_millis(250);
/// How long the database stays halted.
const HALT_FOR: Duration = Duration::from_secs(3);

/// A node's current process: (generation, 8-bit address); `None` while it is down.
type Published = Option<(u64, SocketAddr)>;

/// The PG of every tenant's user: system (MC, LC, CF, TC) and supervisor (EO, XA, EE).
const USER_PG: u16 = 8 | 2;

/// What the chaos does, and how often.
#[derive(Clone, Copy, Debug)]
pub struct ChaosPlan {
    /// A SIGKILL + restart of a node (a random one, when there are several) every this many
    /// milliseconds (a range).
    pub kill_every_ms: (u64, u64),
    /// A reset of a random subscriber's connection every this many milliseconds.
    pub reset_every_ms: (u64, u64),
    /// A random subscriber re-issues its transaction on another node while its connection
    /// still holds it (a takeover across nodes) every this many milliseconds; never with one
    /// node.
    pub move_every_ms: Option<(u64, u64)>,
    /// Once in the run the database is restarted (`pg-cluster restart`, immediate), and once
    /// halted for HALT_FOR and resumed; only with a database of the test's own.
    pub database: bool,
}

/// What the chaos tells a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Reset the connection (RST, no FIN), then re-issue.
    Reset,
    /// Re-issue on another node, keeping the connection that holds the transaction: it must
    /// get its EF, and stop receiving, within the takeover overlap.
    Move,
}

/// The user every client of `tenant` authenticates as.
pub fn credentials(tenant: &str) -> Credentials {
    Credentials {
        tenant: tenant.into(),
        name: user_name(tenant),
        password: PASSWORD.into(),
    }
}

fn user_name(tenant: &str) -> String {
    format!("{tenant}-feed")
}

/// Writes the servers' configuration file into `dir`: one user per tenant. Every client of the
/// test comes from 127.0.0.1 and logs in again after every kill and reset, so the limit on UA
/// per address is raised far above what a run makes. Returns its path.
fn write_config(dir: &Path) -> PathBuf {
    let users: Vec<_> = TENANTS
        .iter()
        .map(|tenant| user(tenant, &user_name(tenant), USER_PG))
        .collect();
    let config = format!(
        "[limits]\nua_per_address_per_minute = 100000\n\n{}",
        users_toml(&users)
    );
    let path = dir.join("ozbus.toml");
    std::fs::write(&path, config).expect("write the configuration file");
    path
}

/// A node's current process.
struct Running {
    process: ServerProcess,
    /// The port of its metrics endpoint.
    metrics_port: u16,
    generation: u64,
    /// Its standard error.
    log: PathBuf,
}

/// One node: its data directory, its current process, and that process's address.
struct Node {
    dir: PathBuf,
    /// Held while the node's process is stopped or started (by the chaos, the final restart,
    /// or the supervisor): one at a time.
    lifecycle: tokio::sync::Mutex<()>,
    server: Mutex<Option<Running>>,
    addr: watch::Sender<Published>,
}

/// What every task shares: the nodes and their addresses, the database, the stop signals, the
/// counters, and the problems seen on the wire.
pub struct World {
    /// The test's name, for what it prints.
    pub name: &'static str,
    /// The configuration file of every server process (`--config`): the users.
    config: PathBuf,
    /// The database the nodes share (`--store-url`); `None`: each node's store is as the suite
    /// runs (one node only).
    store_url: Option<String>,
    nodes: Vec<Node>,
    /// The test's own database, which the chaos restarts and halts.
    pub database: Option<Arc<PgCluster>>,
    /// The scripts the producers' calls follow, in turn.
    pub scripts: &'static [Script],
    /// When the world was made: the origin of the times the report gives.
    pub began: Instant,
    /// Every process started gets the next generation, on whichever node.
    generation: AtomicU64,
    /// Every attempt to start a process gets the next number (its log file's name).
    starts: AtomicU64,
    /// Where the processes' logs go (their standard error, one file each).
    logs: PathBuf,
    /// The first generation of the final, clean restart (0 before it): every process from it on
    /// is final.
    pub final_generation: AtomicU64,
    /// When each generation's process was killed or stopped.
    ended: Mutex<HashMap<u64, Instant>>,
    /// Stops everything (a fatal problem, or the end of the test).
    pub abort: CancellationToken,
    pub fatal: Mutex<Option<String>>,
    pub problems: Mutex<Vec<String>>,
    pub kills: AtomicU64,
    pub reset_orders: AtomicU64,
    pub resets: AtomicU64,
    pub move_orders: AtomicU64,
    /// Moves that took place: the new EO confirmed while the old connection held on.
    pub moves: AtomicU64,
    pub gaps: AtomicU64,
    pub slowest_restart_ms: AtomicU64,
    /// Starts of a node that failed (its database away) and were tried again.
    pub failed_starts: AtomicU64,
    /// Processes that exited by themselves (each a problem; the node is started again).
    pub self_exits: AtomicU64,
    /// Counts of things worth a line in the report (what became of the moves ordered, say).
    notes: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    pub database_restarts: AtomicU64,
    pub database_halts: AtomicU64,
    /// Re-sends the servers counted as having no effect, summed over every server read.
    pub duplicates_counted: AtomicU64,
    /// Servers whose metrics could not be read before they stopped.
    pub unscraped: AtomicU64,
    /// When every producer had stopped (each answered, or given up); the subscribers end their
    /// transactions only after it.
    pub producers_finished: OnceLock<Instant>,
}

impl World {
    /// A world of `nodes` nodes that keep their data in `dir/node-<i>` and read their users from
    /// a configuration file written into `dir`; with `database`, they share it.
    pub fn new(
        name: &'static str,
        dir: &Path,
        nodes: usize,
        database: Option<Arc<PgCluster>>,
        scripts: &'static [Script],
    ) -> World {
        assert!(nodes >= 1);
        assert!(
            nodes == 1 || database.is_some(),
            "several nodes share a database"
        );
        World {
            name,
            config: write_config(dir),
            store_url: database.as_ref().map(|db| db.url.clone()),
            nodes: (0..nodes)
                .map(|i| Node {
                    dir: dir.join(format!("node-{i}")),
                    lifecycle: tokio::sync::Mutex::new(()),
                    server: Mutex::new(None),
                    addr: watch::channel(None).0,
                })
                .collect(),
            database,
            scripts,
            began: Instant::now(),
            generation: AtomicU64::new(0),
            starts: AtomicU64::new(0),
            logs: dir.to_path_buf(),
            final_generation: AtomicU64::new(0),
            ended: Mutex::new(HashMap::new()),
            abort: CancellationToken::new(),
            fatal: Mutex::new(None),
            problems: Mutex::new(Vec::new()),
            kills: AtomicU64::new(0),
            reset_orders: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            move_orders: AtomicU64::new(0),
            moves: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            slowest_restart_ms: AtomicU64::new(0),
            failed_starts: AtomicU64::new(0),
            self_exits: AtomicU64::new(0),
            notes: Mutex::new(std::collections::BTreeMap::new()),
            database_restarts: AtomicU64::new(0),
            database_halts: AtomicU64::new(0),
            duplicates_counted: AtomicU64::new(0),
            unscraped: AtomicU64::new(0),
            producers_finished: OnceLock::new(),
        }
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Something the test does not accept; checked at the end.
    pub fn problem(&self, what: String) {
        eprintln!("{}: {what}", self.name);
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < KEEP_VIOLATIONS {
            problems.push(what);
        }
    }

    /// Something that makes going on pointless: recorded, and everything stops.
    pub fn fatal(&self, what: String) {
        self.problem(what.clone());
        self.fatal.lock().unwrap().get_or_insert(what);
        self.abort.cancel();
    }

    /// Counts `what` (see [`World::notes`]).
    pub fn note(&self, what: &'static str) {
        *self.notes.lock().unwrap().entry(what).or_default() += 1;
    }

    /// What was noted, and how often.
    pub fn notes(&self) -> Vec<(&'static str, u64)> {
        let notes = self.notes.lock().unwrap();
        notes.iter().map(|(&what, &count)| (what, count)).collect()
    }

    /// Milliseconds since the world began, for the report.
    pub fn ms(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.began).as_millis()
    }

    /// The back-off every client of this world uses between attempts.
    pub fn backoff() -> Backoff {
        Backoff::new(BACKOFF_FIRST, BACKOFF_MOST)
    }

    /// Whether the process of `generation` was still running at `at` (or has not ended).
    pub fn alive_at(&self, generation: u64, at: Instant) -> bool {
        self.ended
            .lock()
            .unwrap()
            .get(&generation)
            .is_none_or(|&ended| ended > at)
    }

    /// A connection authenticated as `tenant`'s user: to node `preferred` when it is up and
    /// answers, else to another one, retrying with back-off while none does (or each goes down
    /// during the UA); `None` once the run is aborted. Returns the node and its process's
    /// generation with it. A refused UA is fatal: the users are the test's own.
    pub async fn connect(
        &self,
        tenant: &str,
        preferred: usize,
        backoff: &mut Backoff,
    ) -> Option<(usize, u64, Connection)> {
        let count = self.nodes.len();
        loop {
            if self.abort.is_cancelled() {
                return None;
            }
            let mut receivers: Vec<_> = self.nodes.iter().map(|n| n.addr.subscribe()).collect();
            let mut tried = false;
            for k in 0..count {
                let node = (preferred + k) % count;
                let Some((generation, addr)) = *receivers[node].borrow_and_update() else {
                    continue;
                };
                tried = true;
                match self.log_in(tenant, addr).await? {
                    Ok(conn) => {
                        backoff.reset();
                        return Some((node, generation, conn));
                    }
                    Err(error) if !error.is_connection_failure() => {
                        self.fatal(format!("authenticating as {}: {error}", user_name(tenant)));
                        return None;
                    }
                    Err(_) => {}
                }
            }
            if tried {
                tokio::select! {
                    _ = self.abort.cancelled() => return None,
                    _ = backoff.wait() => {}
                }
            } else {
                // Every node is down: wait until one is published (or a second passes).
                let changed = futures::future::select_all(
                    receivers.iter_mut().map(|r| Box::pin(r.changed())),
                );
                tokio::select! {
                    _ = self.abort.cancelled() => return None,
                    _ = timeout(Duration::from_secs(1), changed) => {}
                }
            }
        }
    }

    /// One attempt at a connection to node `node`, authenticated as `tenant`'s user; `None`
    /// when the node is down or the attempt fails (a refused UA is fatal, as above). Returns
    /// its process's generation with it.
    pub async fn connect_to(&self, tenant: &str, node: usize) -> Option<(u64, Connection)> {
        let (generation, addr) = (*self.nodes[node].addr.borrow())?;
        match self.log_in(tenant, addr).await? {
            Ok(conn) => Some((generation, conn)),
            Err(error) if !error.is_connection_failure() => {
                self.fatal(format!("authenticating as {}: {error}", user_name(tenant)));
                None
            }
            Err(_) => None,
        }
    }

    /// Connects to `addr` and authenticates as `tenant`'s user; `None` once the run is aborted.
    async fn log_in(&self, tenant: &str, addr: SocketAddr) -> Option<Result<Connection, Error>> {
        let options = ConnectOptions {
            connect_timeout: CONNECT_PATIENCE,
            ..ConnectOptions::default()
        };
        let credentials = credentials(tenant);
        let attempt = async {
            let mut conn =
                Connection::connect_with(&addr.to_string(), WireForm::Bits8, &options).await?;
            conn.log_in(&credentials, IO_PATIENCE).await?;
            Ok::<_, Error>(conn)
        };
        tokio::select! {
            _ = self.abort.cancelled() => None,
            attempt = attempt => Some(attempt),
        }
    }

    /// Stops node `node`'s current process (SIGKILL, or SIGTERM when `clean`) and starts a new
    /// one on the same data directory; it listens on new ports, published with a new
    /// generation.
    pub async fn restart(&self, node: usize, clean: bool) -> Result<(), String> {
        let began = Instant::now();
        let this = &self.nodes[node];
        let _lifecycle = this.lifecycle.lock().await;
        let old = this.server.lock().unwrap().take();
        this.addr.send_replace(None);
        if let Some(Running {
            process: mut old,
            metrics_port,
            generation,
            log,
        }) = old
        {
            self.count_duplicates(metrics_port).await;
            if let Some(status) = old.exited() {
                // It went before it was stopped.
                self.exited_by_itself(node, generation, status, &log);
            } else if clean {
                match blocking(STOP_PATIENCE, "SIGTERM", move || old.terminate()).await {
                    Ok(status) if status.success() => {}
                    Ok(status) => self.problem(format!(
                        "SIGTERM: node {node} did not exit cleanly: {status:?}; {}",
                        last_errors(&log)
                    )),
                    Err(error) => {
                        kill_servers_of(&this.dir);
                        return Err(error);
                    }
                }
            } else {
                if let Err(error) = blocking(STOP_PATIENCE, "SIGKILL", move || old.kill()).await {
                    kill_servers_of(&this.dir);
                    return Err(error);
                }
                self.kills.fetch_add(1, SeqCst);
            }
            self.ended
                .lock()
                .unwrap()
                .insert(generation, Instant::now());
        }
        self.start_locked(node).await?;
        let took = began.elapsed().as_millis() as u64;
        self.slowest_restart_ms.fetch_max(took, SeqCst);
        Ok(())
    }

    fn exited_by_itself(
        &self,
        node: usize,
        generation: u64,
        status: std::process::ExitStatus,
        log: &Path,
    ) {
        self.self_exits.fetch_add(1, SeqCst);
        self.problem(format!(
            "node {node} (generation {generation}) exited by itself ({status}), noticed at {} ms; \
             {}",
            self.ms(Instant::now()),
            last_errors(log)
        ));
    }

    /// Until the run is aborted: every 100 ms, whether a node's process exited by itself;
    /// such a node is a problem, and is started again (as a service manager would), so the
    /// run goes on.
    pub async fn supervise(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.abort.cancelled() => return,
                _ = sleep(Duration::from_millis(100)) => {}
            }
            for (node, this) in self.nodes.iter().enumerate() {
                let gone = |server: &mut Option<Running>| {
                    let running = server.as_mut()?;
                    let status = running.process.exited()?;
                    Some((running.generation, status, running.log.clone()))
                };
                if gone(&mut this.server.lock().unwrap()).is_none() {
                    continue;
                }
                let _lifecycle = this.lifecycle.lock().await;
                // Still the same process, now that nobody else is stopping or starting it?
                let exited = {
                    let mut server = this.server.lock().unwrap();
                    let exited = gone(&mut server);
                    if exited.is_some() {
                        *server = None;
                    }
                    exited
                };
                let Some((generation, status, log)) = exited else {
                    continue;
                };
                this.addr.send_replace(None);
                self.ended
                    .lock()
                    .unwrap()
                    .insert(generation, Instant::now());
                self.unscraped.fetch_add(1, SeqCst);
                self.exited_by_itself(node, generation, status, &log);
                if let Err(error) = self.start_locked(node).await {
                    if !self.abort.is_cancelled() {
                        self.fatal(format!("starting node {node} again: {error}"));
                    }
                    return;
                }
            }
        }
    }

    /// Restarts every node cleanly (SIGTERM), one after the other: the final processes, of
    /// generation `final_generation` and later.
    pub async fn restart_final(&self) -> Result<(), String> {
        // Before any final process is published: a subscriber that sees one knows it is final.
        self.final_generation
            .store(self.generation.load(SeqCst) + 1, SeqCst);
        for node in 0..self.nodes.len() {
            self.restart(node, true).await?;
        }
        Ok(())
    }

    /// Starts a process on node `node`. When the nodes share the test's database, a start that
    /// fails (the database is away, or recovering) is tried again until START_PATIENCE.
    pub async fn start(&self, node: usize) -> Result<(), String> {
        let _lifecycle = self.nodes[node].lifecycle.lock().await;
        self.start_locked(node).await
    }

    /// [`World::start`], with the node's lifecycle lock held.
    async fn start_locked(&self, node: usize) -> Result<(), String> {
        let began = Instant::now();
        loop {
            match self.start_once(node).await {
                Ok(()) => return Ok(()),
                Err(error)
                    if self.database.is_some()
                        && !self.abort.is_cancelled()
                        && began.elapsed() < START_PATIENCE =>
                {
                    self.failed_starts.fetch_add(1, SeqCst);
                    eprintln!("{}: node {node} did not start ({error}); again", self.name);
                    sleep(START_RETRY).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn start_once(&self, node: usize) -> Result<(), String> {
        if self.abort.is_cancelled() {
            return Err("aborting".into());
        }
        let this = &self.nodes[node];
        let dir = this.dir.clone();
        let config = self.config.to_string_lossy().into_owned();
        // The test's database, or the store the suite runs against (SQLite: none).
        let url = self
            .store_url
            .clone()
            .or_else(|| ozbus::config::test_store_url(&dir));
        let metrics_port = free_port()?;
        let metrics = format!("127.0.0.1:{metrics_port}");
        let start = self.starts.fetch_add(1, SeqCst) + 1;
        let log = self.logs.join(format!("node-{node}.start-{start}.log"));
        let file = std::fs::File::create(&log).map_err(|error| format!("{log:?}: {error}"))?;
        let started = blocking(START_PATIENCE, "starting ozbus serve", move || {
            let extra = ["--config", &config, "--metrics-listen", &metrics];
            ServerProcess::try_start_with_store(&dir, url, &extra, Some(file))
        })
        .await
        .and_then(|started| started);
        let process = match started {
            Ok(process) => process,
            Err(error) => {
                kill_servers_of(&this.dir);
                return Err(format!("{error}; {}", last_errors(&log)));
            }
        };
        if self.abort.is_cancelled() {
            return Err("aborting".into()); // `process` is dropped: killed.
        }
        let generation = self.generation.fetch_add(1, SeqCst) + 1;
        this.addr
            .send_replace(Some((generation, process.addr_8bit)));
        *this.server.lock().unwrap() = Some(Running {
            process,
            metrics_port,
            generation,
            log,
        });
        Ok(())
    }

    /// Kills whatever server is running (every exit path of the test comes here).
    pub async fn shut_down(&self) {
        self.abort.cancel();
        for node in &self.nodes {
            let server = node.server.lock().unwrap().take();
            node.addr.send_replace(None);
            if let Some(mut running) = server {
                if let Some(status) = running.process.exited() {
                    let index = self.nodes.iter().position(|n| std::ptr::eq(n, node));
                    let (generation, log) = (running.generation, &running.log);
                    self.exited_by_itself(index.unwrap_or(0), generation, status, log);
                    continue;
                }
                self.count_duplicates(running.metrics_port).await;
                let server = running.process;
                if blocking(STOP_PATIENCE, "SIGKILL", move || server.kill())
                    .await
                    .is_err()
                {
                    kill_servers_of(&node.dir);
                }
            }
            let stray = kill_servers_of(&node.dir);
            if stray > 0 {
                eprintln!("{}: killed {stray} stray server process(es)", self.name);
            }
        }
    }
}

impl World {
    /// Adds the server's count of re-sends without effect, read from its metrics endpoint on
    /// `port`; a server that does not answer within SCRAPE_PATIENCE is counted as unread.
    async fn count_duplicates(&self, port: u16) {
        match timeout(SCRAPE_PATIENCE, scrape(port, DUPLICATES_METRIC)).await {
            Ok(Some(count)) => {
                self.duplicates_counted.fetch_add(count, SeqCst);
            }
            _ => {
                self.unscraped.fetch_add(1, SeqCst);
            }
        }
    }
}

/// What a process's log says went wrong: its ERROR lines and its own last words (lines
/// `ozbus: ...`), the last few of them.
fn last_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(" ERROR ") || line.starts_with("ozbus: "))
        .collect();
    match lines.len() {
        0 => "its log has no error".into(),
        n => format!("its log says: {}", lines[n.saturating_sub(4)..].join(" | ")),
    }
}

/// A port on 127.0.0.1 that was free a moment ago, for a server's metrics endpoint.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| format!("finding a free port: {error}"))
}

/// The value of the counter `metric` on the metrics endpoint at `port` (0 while the counter
/// was never incremented: it is not listed then); `None` if the endpoint does not answer.
async fn scrape(port: u16, metric: &str) -> Option<u64> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    let value = response.lines().find_map(|line| {
        line.strip_prefix(metric)?
            .strip_prefix(' ')?
            .trim()
            .parse::<f64>()
            .ok()
    });
    Some(value.map_or(0, |value| value as u64))
}

/// Until `stop`: SIGKILL + restart a node every `plan.kill_every_ms`, reset the connection of a
/// random subscriber every `plan.reset_every_ms`, and move a random one to another node every
/// `plan.move_every_ms`, on a schedule drawn from `seed`; meanwhile, with `plan.database`, the
/// database's restart and halt (in a task of their own, since a node does not start while the
/// database is away). `length` is how long the chaos is to last: the database's turns fall
/// within it.
pub async fn chaos(
    world: Arc<World>,
    plan: ChaosPlan,
    seed: u64,
    length: Duration,
    stop: CancellationToken,
    orders: Vec<mpsc::UnboundedSender<Order>>,
) {
    let database = match (&world.database, plan.database) {
        (Some(_), true) => Some(tokio::spawn(database_chaos(
            world.clone(),
            seed,
            length,
            stop.clone(),
        ))),
        _ => None,
    };
    // One node draws nothing for its victim, and moves have an RNG of their own: one node's
    // schedule is the same as it always was for a seed.
    let mut rng = XorShift::new(seed);
    let mut move_rng = XorShift::new(seed ^ 0x6d6f_7665);
    let nodes = world.node_count() as u64;
    let moves = plan.move_every_ms.filter(|_| nodes > 1);
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let (kill, reset) = (plan.kill_every_ms, plan.reset_every_ms);
    let mut next_kill = Instant::now() + rng.millis_between(kill.0, kill.1);
    let mut next_reset = Instant::now() + rng.millis_between(reset.0, reset.1);
    let mut next_move = moves.map_or(far, |(lo, hi)| {
        Instant::now() + move_rng.millis_between(lo, hi)
    });
    loop {
        let next = next_kill.min(next_reset).min(next_move);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = world.abort.cancelled() => break,
            _ = sleep_until(next) => {}
        }
        if next == next_kill {
            let victim = if nodes > 1 {
                rng.below(nodes) as usize
            } else {
                0
            };
            if let Err(error) = world.restart(victim, false).await {
                world.fatal(format!("chaos: {error}"));
                break;
            }
            next_kill = Instant::now() + rng.millis_between(kill.0, kill.1);
        } else if next == next_reset {
            let victim = rng.below(orders.len() as u64) as usize;
            let _ = orders[victim].send(Order::Reset);
            world.reset_orders.fetch_add(1, SeqCst);
            next_reset = Instant::now() + rng.millis_between(reset.0, reset.1);
        } else if let Some((lo, hi)) = moves {
            let victim = move_rng.below(orders.len() as u64) as usize;
            let _ = orders[victim].send(Order::Move);
            world.move_orders.fetch_add(1, SeqCst);
            next_move = Instant::now() + move_rng.millis_between(lo, hi);
        }
    }
    if let Some(task) = database {
        let _ = task.await;
    }
}

/// Once `pg-cluster restart` (immediate) of the database, and once `halt` for HALT_FOR then
/// `resume`, at times drawn from `seed` within `length`: one of them between 20 and 40 % of it,
/// the other between 55 and 70 %, which one first drawn too. A halt still on at `stop` (or at an
/// abort) is resumed at once.
async fn database_chaos(world: Arc<World>, seed: u64, length: Duration, stop: CancellationToken) {
    let Some(database) = world.database.clone() else {
        return;
    };
    let mut rng = XorShift::new(seed ^ 0x6461_7461);
    let began = Instant::now();
    let at = |percent: u64| began + length * percent as u32 / 100;
    let (early, late) = (at(20 + rng.below(21)), at(55 + rng.below(16)));
    let (restart_at, halt_at) = match rng.below(2) {
        0 => (early, late),
        _ => (late, early),
    };
    let mut events = [(restart_at, "restart"), (halt_at, "halt")];
    events.sort();
    for (when, what) in events {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = world.abort.cancelled() => return,
            _ = sleep_until(when) => {}
        }
        eprintln!(
            "{}: the database: {what} at {} ms",
            world.name,
            world.ms(Instant::now())
        );
        let done = if what == "restart" {
            let done = database.restart().await;
            world.database_restarts.fetch_add(1, SeqCst);
            done
        } else {
            match database.halt().await {
                Ok(()) => {
                    world.database_halts.fetch_add(1, SeqCst);
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = world.abort.cancelled() => {}
                        _ = sleep(HALT_FOR) => {}
                    }
                    eprintln!(
                        "{}: the database: resume at {} ms",
                        world.name,
                        world.ms(Instant::now())
                    );
                    database.resume().await
                }
                Err(error) => Err(error),
            }
        };
        if let Err(error) = done {
            world.fatal(format!("chaos: the database: {error}"));
            return;
        }
    }
}
