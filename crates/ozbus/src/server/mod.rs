//! The SDMP front end: listeners and connections.
//!
//! Owns the wiring: it opens the service core, binds the 8-bit and UTF-16 listeners, runs one
//! task per connection ([`connection`]; the listeners' and those handed over with
//! [`RunningServer::serve_stream`] alike) and the core's timed work, and shuts all of it down in
//! order (stop accepting, let connections send what they owe, close the core). It starts the
//! HTTP front end ([`crate::http`]) on the same core too. What a message
//! means lives in the core and below it; this module only speaks SDMP.

pub mod connection;
pub mod socket;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use anyhow::Context as _;
use sdmp::WireForm;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::core::{Core, Session};
use tls::Tls;

/// Why a server stopped by itself.
const COMMIT_FAILED: &str = "the store failed to commit; stopped to keep what was accepted intact";
/// How long shutdown waits for connections to send what they owe.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State every connection shares.
pub(crate) struct Shared {
    pub config: Config,
    pub core: Core,
    /// Connections open now: in total, and per source address.
    connections: Mutex<Connections>,
    /// The TLS listeners' certificates, when there are TLS listeners.
    pub tls: Option<Tls>,
    /// Cancelled to stop the server (signal, `shutdown`, or the core's failure).
    pub shutdown: CancellationToken,
}

impl Shared {
    /// The session of a new connection from `peer`, counted and logged.
    fn open_session(&self, peer: SocketAddr, form: WireForm, secure: bool) -> Session {
        let session = self.core.session(peer);
        tracing::debug!(%peer, id = session.id(), ?form, secure, "connection");
        metrics::counter!("ozbus_connections_total").increment(1);
        session
    }
}

/// A started server; see [`RunningServer::start`].
pub struct RunningServer {
    shared: Arc<Shared>,
    addr_8bit: SocketAddr,
    addr_utf16: SocketAddr,
    tls_8bit: Option<SocketAddr>,
    tls_utf16: Option<SocketAddr>,
    http: Option<SocketAddr>,
    tasks: TaskTracker,
}

impl RunningServer {
    /// Opens the core (store, open calls, persisted transactions), binds both listeners;
    /// returns once they listen.
    pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
        config.check_exposure()?;
        if config.users.is_empty() && config.server.insecure {
            tracing::warn!(
                "--insecure: no users are configured, so anyone who can reach {} may read and \
                 change every tenant's calls",
                config
                    .listen_addresses()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let data_dir = config.store.data_dir.clone();
        let tls = match config.tls_needed() {
            true => Some(Tls::load(&config.tls).context("TLS")?),
            false => None,
        };
        let (core, restored) = Core::open(&config).await?;
        let mut listeners = Vec::new();
        for (addr, form, secure) in [
            (Some(config.server.listen_8bit), WireForm::Bits8, false),
            (Some(config.server.listen_utf16), WireForm::Utf16Le, false),
            (config.tls.listen_8bit, WireForm::Bits8, true),
            (config.tls.listen_utf16, WireForm::Utf16Le, true),
        ] {
            let Some(addr) = addr else { continue };
            let listener = listen(addr, config.server.listen_backlog).with_context(|| {
                let tls = if secure { ", TLS" } else { "" };
                format!("listening on {addr} ({form:?}{tls})")
            })?;
            listeners.push((listener.local_addr()?, listener, form, secure));
        }
        let bound = |form, secure| {
            listeners
                .iter()
                .find(|l| l.2 == form && l.3 == secure)
                .map(|l| l.0)
        };
        let (addr_8bit, addr_utf16) = (
            bound(WireForm::Bits8, false).context("8-bit listener")?,
            bound(WireForm::Utf16Le, false).context("UTF-16 listener")?,
        );
        let (tls_8bit, tls_utf16) = (bound(WireForm::Bits8, true), bound(WireForm::Utf16Le, true));
        let http_listener = match config.http.listen {
            Some(addr) => Some(
                listen(addr, config.server.listen_backlog)
                    .with_context(|| format!("listening on {addr} (HTTP)"))?,
            ),
            None => None,
        };
        let http = match &http_listener {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };

        let shared = Arc::new(Shared {
            connections: Mutex::new(Connections::default()),
            config,
            shutdown: core.failed().child_token(),
            core,
            tls,
        });
        let tasks = TaskTracker::new();
        for (_, listener, form, secure) in listeners {
            tasks.spawn(accept_loop(
                shared.clone(),
                listener,
                form,
                secure,
                tasks.clone(),
            ));
        }
        if let Some(listener) = http_listener {
            tasks.spawn(crate::http::accept_loop(
                shared.clone(),
                listener,
                shared.config.http.tls,
                crate::http::router(shared.clone()),
                tasks.clone(),
            ));
        }
        // Nodes sharing a database compete for the call book once they can take reports.
        shared.core.advertise(advertised(&shared.config, addr_8bit));
        let timers = shared.clone();
        tasks.spawn(async move { timers.core.run_timers(&timers.shutdown).await });
        let gauges = shared.clone();
        tasks.spawn(async move { gauges.core.run_gauges(&gauges.shutdown).await });
        tracing::info!(
            %addr_8bit, %addr_utf16, tls_8bit = ?tls_8bit, tls_utf16 = ?tls_utf16, http = ?http,
            data = %data_dir.display(),
            open_calls = restored.open_calls,
            persisted_transactions = restored.persisted_transactions,
            "ozbus {} listening", env!("CARGO_PKG_VERSION")
        );
        Ok(RunningServer {
            shared,
            addr_8bit,
            addr_utf16,
            tls_8bit,
            tls_utf16,
            http,
            tasks,
        })
    }

    pub fn addr_8bit(&self) -> SocketAddr {
        self.addr_8bit
    }

    pub fn addr_utf16(&self) -> SocketAddr {
        self.addr_utf16
    }

    /// The 8-bit TLS listener, when configured.
    pub fn tls_addr_8bit(&self) -> Option<SocketAddr> {
        self.tls_8bit
    }

    /// The UTF-16LE TLS listener, when configured.
    pub fn tls_addr_utf16(&self) -> Option<SocketAddr> {
        self.tls_utf16
    }

    /// The HTTP listener, unless turned off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// Whether the HTTP listener speaks TLS (HTTPS).
    pub fn http_secure(&self) -> bool {
        self.shared.config.http.tls
    }

    /// Serves one SDMP connection that was accepted elsewhere: by an embedding program's own
    /// listener, or set up in memory by a test or a fuzzer (`tokio::io::duplex`). `peer` is the
    /// address it came from (what authentication lock-outs and log lines name). The connection
    /// is the same as one from the server's listeners: same core, same per-connection limits
    /// (it does not count toward `[limits] connections`, which guard the listeners), and shutdown
    /// waits for it like for the others. The future ends when the peer closes its side, fails or
    /// stalls, or the server stops; run it on the server's runtime (it spawns the connection's
    /// writer and reply tasks).
    pub fn serve_stream<S>(
        &self,
        stream: S,
        form: WireForm,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        self.serve_halves(read, write, form, peer)
    }

    /// [`serve_stream`](Self::serve_stream) for a transport that comes as separate read and
    /// write halves.
    pub fn serve_halves<R, W>(
        &self,
        read: R,
        write: W,
        form: WireForm,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let session = self.shared.open_session(peer, form, false);
        self.tasks.track_future(connection::serve(
            self.shared.clone(),
            read,
            write,
            form,
            session,
        ))
    }

    /// Reads the TLS certificate, key and client CAs again (SIGHUP): new connections use them,
    /// established ones go on. An error keeps the configuration in force.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        match &self.shared.tls {
            Some(tls) => tls.reload(),
            None => anyhow::bail!("no TLS listener is configured"),
        }
    }

    #[cfg(test)]
    pub(crate) fn core(&self) -> &Core {
        &self.shared.core
    }

    /// Resolves when the server has been asked to stop, or must stop (then with an error).
    pub async fn stopped(&self) -> anyhow::Result<()> {
        self.shared.shutdown.cancelled().await;
        if self.shared.core.failed().is_cancelled() {
            anyhow::bail!(COMMIT_FAILED)
        }
        Ok(())
    }

    /// Stops accepting, lets every connection send the replies it owes, then closes the core
    /// (deliveries, cursors, store).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.close().await
    }

    /// What [`RunningServer::shutdown`] does, leaving the server's memory to be freed when it
    /// is dropped. A process that ends right after may leave it to the operating system
    /// instead (`ozbus serve` does: freeing what a million transactions held, piece by piece,
    /// takes seconds). Call once.
    pub async fn close(&self) -> anyhow::Result<()> {
        // Before the connections close: what they hold stays as held when the server stopped.
        self.shared.core.stopping();
        self.shared.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections did not finish within {SHUTDOWN_GRACE:?}");
        }
        self.shared.core.close().await?;
        tracing::info!("ozbus stopped");
        if self.shared.core.failed().is_cancelled() {
            anyhow::bail!(COMMIT_FAILED);
        }
        Ok(())
    }
}

/// The connections open now, counted for the limits.
#[derive(Default)]
struct Connections {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
    /// Refused since the last log line about it, and when that was.
    refused: u64,
    logged: Option<Instant>,
}

/// A connection's place in the count; given back when the connection ends.
pub(crate) struct Admitted {
    shared: Arc<Shared>,
    address: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut connections = self.shared.connections.lock();
        connections.total -= 1;
        metrics::gauge!("ozbus_connections_open").set(connections.total as f64);
        if let Some(count) = connections.by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                connections.by_address.remove(&self.address);
            }
        }
    }
}

/// Counts a new connection from `address`, or refuses it (with a metric, and a log line at most
/// once a second) when the total or the address's share is used up.
pub(crate) fn admit(shared: &Arc<Shared>, address: IpAddr) -> Option<Admitted> {
    let limits = &shared.config.limits;
    let mut connections = shared.connections.lock();
    let from_address = connections.by_address.get(&address).copied().unwrap_or(0);
    let refusal = if connections.total >= limits.connections {
        Some("connections")
    } else if from_address >= limits.connections_per_address {
        Some("connections_per_address")
    } else {
        None
    };
    if let Some(limit) = refusal {
        metrics::counter!("ozbus_limit_hits_total", "limit" => limit).increment(1);
        connections.refused += 1;
        if connections
            .logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(
                %address, limit, refused = connections.refused,
                "connections refused: the limit is reached ([limits] {limit})"
            );
            connections.refused = 0;
            connections.logged = Some(Instant::now());
        }
        return None;
    }
    connections.total += 1;
    metrics::gauge!("ozbus_connections_open").set(connections.total as f64);
    *connections.by_address.entry(address).or_default() += 1;
    Some(Admitted {
        shared: shared.clone(),
        address,
    })
}

/// The longest pause after a failed accept (out of file descriptors and the like).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    form: WireForm,
    secure: bool,
    tasks: TaskTracker,
) {
    let mut backoff: Option<Duration> = None;
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                if backoff.take().is_some() {
                    tracing::info!(?form, secure, "accepting connections again");
                }
                // Refused: the socket closes as it drops.
                let Some(admitted) = admit(&shared, peer.ip()) else {
                    continue;
                };
                let session = shared.open_session(peer, form, secure);
                // Replies are small and latency matters more than packet count; writes are
                // batched anyway.
                let _ = socket.set_nodelay(true);
                let shared = shared.clone();
                if secure {
                    tasks.spawn(async move {
                        serve_tls(shared, socket, form, session).await;
                        drop(admitted);
                    });
                } else {
                    let (read, write) = socket.into_split();
                    tasks.spawn(async move {
                        connection::serve(shared, read, write, form, session).await;
                        drop(admitted);
                    });
                }
            }
            Err(error) => {
                // Out of file descriptors and the like: the connections that exist go on being
                // served; accepting waits, longer each time, and says so once.
                let pause = match backoff {
                    None => {
                        tracing::warn!(%error, ?form, secure, "accept failed; backing off until it works again");
                        Duration::from_millis(10)
                    }
                    Some(pause) => (pause * 2).min(ACCEPT_BACKOFF_MAX),
                };
                backoff = Some(pause);
                metrics::counter!("ozbus_accept_failures_total").increment(1);
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// The TLS handshake (bounded in time), then the connection as on a plain listener.
async fn serve_tls(
    shared: Arc<Shared>,
    socket: tokio::net::TcpStream,
    form: WireForm,
    session: Session,
) {
    let Some(tls) = &shared.tls else { return };
    let handshake = tls.acceptor().accept(socket);
    let stream = match tokio::time::timeout(shared.config.tls.handshake_timeout, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::info!(peer = %session.peer(), %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(peer = %session.peer(), "TLS handshake timed out");
            return;
        }
    };
    let (read, write) = tokio::io::split(stream);
    connection::serve(shared.clone(), read, write, form, session).await;
}

/// Where other nodes reach this node's 8-bit listener: `[server] advertise`, else the address
/// it is bound to (loopback when bound to every address).
fn advertised(config: &Config, bound: SocketAddr) -> String {
    if let Some(addr) = &config.server.advertise {
        return addr.clone();
    }
    let mut addr = bound;
    if addr.ip().is_unspecified() {
        if config.store.url.is_some() {
            tracing::warn!(
                %bound,
                "the 8-bit listener listens on every address and [server] advertise is not set: \
                 other nodes are told to reach this one on loopback"
            );
        }
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr.to_string()
}

/// A listener on `addr` with room for `backlog` connections waiting to be accepted (the
/// runtime's own bind, as the standard library's, leaves room for 128).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As the runtime's bind does: a restarted server can take its port again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
