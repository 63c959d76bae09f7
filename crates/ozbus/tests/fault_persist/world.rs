//! The world the clients live in: one `ozbus serve` process at a time on one data directory,
//! with one user per tenant in its configuration file, its restarts (SIGKILL during the chaos,
//! SIGTERM at the end) on new ports, the address of the current one, the chaos schedule, and
//! the problems anyone saw.
//!
//! Owns: the configuration file (the users), starting, killing and stopping server processes,
//! always with time limits (a hung server must never hang the test), publishing which server is
//! current, connections authenticated as a tenant's user, the moment the producers were done,
//! and each server's count of re-sends without effect (`ozbus_ingest_duplicates_total`, read
//! from its metrics endpoint just before it is stopped, summed over the servers).
//!
//! Never: judges the histories (`checks` does), or talks SDMP beyond opening connections and
//! authenticating them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use sdmp::WireForm;
use sdmp_client::{Backoff, ConnectOptions, Connection, Credentials, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::fault_common::{blocking, kill_servers_of, XorShift};
use crate::server_common::ServerProcess;
use crate::users_common::{user, users_toml, PASSWORD};
use crate::{
    CONNECT_PATIENCE, IO_PATIENCE, KEEP_VIOLATIONS, START_PATIENCE, STOP_PATIENCE, TENANTS,
};

/// Chaos: a SIGKILL + restart every 1.5–2.5 s (so 30 s give at least 10 kills), and a reset of a
/// random subscriber's connection every 2.5–3.5 s.
const KILL_EVERY_MS: (u64, u64) = (1500, 2500);
const RESET_EVERY_MS: (u64, u64) = (2500, 3500);
/// Reconnecting while the server is down: from this pause, doubling, up to the next.
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
const BACKOFF_MOST: Duration = Duration::from_millis(500);
/// Reading a server's metrics before it is stopped: at most this long.
const SCRAPE_PATIENCE: Duration = Duration::from_secs(2);
/// The counter of re-sends a server answered without a second effect.
const DUPLICATES_METRIC: &str = "ozbus_ingest_duplicates_total";

/// The current server: (generation, 8-bit address); `None` while it is down.
type Published = Option<(u64, SocketAddr)>;

/// The PG of every tenant's user: system (CF) and supervisor (EO, XA, EE).
const USER_PG: u16 = 8 | 2;

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

/// Writes the server's configuration file into `dir`: one user per tenant. Every client of the
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

/// What every task shares: the server process and its address, the stop signals, the counters,
/// and the problems seen on the wire.
pub struct World {
    /// The data directory of every server process.
    dir: PathBuf,
    /// Its configuration file (`--config`): the users.
    config: PathBuf,
    /// The current server process, with the port of its metrics endpoint.
    server: Mutex<Option<(ServerProcess, u16)>>,
    addr: watch::Sender<Published>,
    generation: AtomicU64,
    /// The generation of the final, clean restart (0 before it).
    pub final_generation: AtomicU64,
    /// Stops everything (a fatal problem, or the end of the test).
    pub abort: CancellationToken,
    pub fatal: Mutex<Option<String>>,
    pub problems: Mutex<Vec<String>>,
    pub kills: AtomicU64,
    pub reset_orders: AtomicU64,
    pub resets: AtomicU64,
    pub gaps: AtomicU64,
    pub slowest_restart_ms: AtomicU64,
    /// Re-sends the servers counted as having no effect, summed over every server read.
    pub duplicates_counted: AtomicU64,
    /// Servers whose metrics could not be read before they stopped.
    pub unscraped: AtomicU64,
    /// When every producer had stopped (each answered, or given up); the subscribers end their
    /// transactions only after it.
    pub producers_finished: OnceLock<Instant>,
}

impl World {
    /// A world whose servers keep their data in `dir/data` and read their users from a
    /// configuration file written into `dir`.
    pub fn new(dir: &Path) -> World {
        World {
            config: write_config(dir),
            dir: dir.join("data"),
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
            duplicates_counted: AtomicU64::new(0),
            unscraped: AtomicU64::new(0),
            producers_finished: OnceLock::new(),
        }
    }

    /// Something the test does not accept; checked at the end.
    pub fn problem(&self, what: String) {
        eprintln!("fault_persist: {what}");
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

    /// The back-off every client of this world uses between attempts.
    pub fn backoff() -> Backoff {
        Backoff::new(BACKOFF_FIRST, BACKOFF_MOST)
    }

    /// A connection to the current server, authenticated as `tenant`'s user, retrying with
    /// back-off while the server is down (or goes down during the UA); `None` once the run is
    /// aborted. Returns the server's generation with it. A refused UA is fatal: the users are
    /// the test's own.
    pub async fn connect(&self, tenant: &str, backoff: &mut Backoff) -> Option<(u64, Connection)> {
        let options = ConnectOptions {
            connect_timeout: CONNECT_PATIENCE,
            ..ConnectOptions::default()
        };
        let credentials = credentials(tenant);
        loop {
            let (generation, addr) = self.server_addr().await?;
            let attempt = async {
                let mut conn =
                    Connection::connect_with(&addr.to_string(), WireForm::Bits8, &options).await?;
                conn.log_in(&credentials, IO_PATIENCE).await?;
                Ok::<_, Error>(conn)
            };
            let attempt = tokio::select! {
                _ = self.abort.cancelled() => return None,
                attempt = attempt => attempt,
            };
            match attempt {
                Ok(conn) => {
                    backoff.reset();
                    return Some((generation, conn));
                }
                Err(error) if !error.is_connection_failure() => {
                    self.fatal(format!("authenticating as {}: {error}", credentials.name));
                    return None;
                }
                Err(_) => {
                    tokio::select! {
                        _ = self.abort.cancelled() => return None,
                        _ = backoff.wait() => {}
                    }
                }
            }
        }
    }

    /// The current server, waiting while it is down; `None` once the test is aborting.
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
    pub async fn restart(&self, clean: bool) -> Result<(), String> {
        let began = Instant::now();
        let old = self.server.lock().unwrap().take();
        self.addr.send_replace(None);
        if let Some((old, metrics_port)) = old {
            self.count_duplicates(metrics_port).await;
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

    pub async fn start(&self, last: bool) -> Result<(), String> {
        if self.abort.is_cancelled() {
            return Err("aborting".into());
        }
        let generation = self.generation.fetch_add(1, SeqCst) + 1;
        if last {
            // Before the address is published: a subscriber that sees it knows it is the last.
            self.final_generation.store(generation, SeqCst);
        }
        let dir = self.dir.clone();
        let config = self.config.to_string_lossy().into_owned();
        let metrics_port = free_port()?;
        let metrics = format!("127.0.0.1:{metrics_port}");
        let server = match blocking(START_PATIENCE, "starting ozbus serve", move || {
            ServerProcess::start(&dir, &["--config", &config, "--metrics-listen", &metrics])
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
        *self.server.lock().unwrap() = Some((server, metrics_port));
        Ok(())
    }

    /// Kills whatever server is running (every exit path of the test comes here).
    pub async fn shut_down(&self) {
        self.abort.cancel();
        let server = self.server.lock().unwrap().take();
        self.addr.send_replace(None);
        if let Some((server, metrics_port)) = server {
            self.count_duplicates(metrics_port).await;
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

/// Until `stop`: SIGKILL + restart the server every KILL_EVERY_MS, and reset the connection of a
/// random subscriber every RESET_EVERY_MS, on a schedule drawn from `seed`.
pub async fn chaos(
    world: std::sync::Arc<World>,
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
