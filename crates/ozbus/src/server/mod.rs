//! The running service: listeners, connections, and the background work that closes calls.
//!
//! Owns the wiring: it opens the store, restores the call book from it, binds the 8-bit and
//! UTF-16 listeners, runs one task per connection ([`connection`]) and one sweeper for call
//! expiry and timeouts, and shuts all of it down in order (stop accepting, let connections send
//! what they owe, close the store). What a message means lives in `calls` and `subs`.

pub mod connection;
pub mod outbound;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use parking_lot::Mutex;
use sdmp::WireForm;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::calls::{CallBook, OutcomeTables};
use crate::config::Config;
use crate::store::Store;
use crate::subs::Registry;

/// The longest the sweeper sleeps when no call is due, so a clock that jumps is noticed.
const SWEEP_IDLE: Duration = Duration::from_secs(1);
/// How often moved cursors of persisted transactions are written.
const CURSOR_FLUSH: Duration = Duration::from_millis(500);
/// Why a server stopped by itself.
const COMMIT_FAILED: &str = "the store failed to commit; stopped to keep what was accepted intact";
/// How long shutdown waits for connections to send what they owe.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State every connection shares.
pub(crate) struct Shared {
    pub config: Config,
    pub store: Store,
    pub calls: Mutex<CallBook>,
    pub transactions: Registry,
    /// Cancelled when the server must stop because it can no longer keep what it accepts.
    pub fatal: CancellationToken,
    /// Cancelled to stop the server (signal, `shutdown`, or `fatal`).
    pub shutdown: CancellationToken,
    next_connection: AtomicU64,
}

impl Shared {
    fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A started server; see [`RunningServer::start`].
pub struct RunningServer {
    shared: Arc<Shared>,
    addr_8bit: SocketAddr,
    addr_utf16: SocketAddr,
    tasks: TaskTracker,
}

impl RunningServer {
    /// Opens the store, restores open calls, binds both listeners; returns once they listen.
    pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
        let tables = OutcomeTables::from_config(&config.outcomes).context("outcome tables")?;
        let options = config.store_options();
        let data_dir = options.dir.clone();
        let (store, records, persisted_rows) = tokio::task::spawn_blocking(move || {
            let store = Store::open(options)?;
            let records = store.load_records()?;
            let persisted = store.load_transactions()?;
            Ok::<_, crate::store::StoreError>((store, records, persisted))
        })
        .await?
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
        let call_timeout_ms =
            i64::try_from(config.calls.call_timeout.as_millis()).unwrap_or(i64::MAX);
        let mut book = CallBook::new(tables, call_timeout_ms);
        let restored = records.len();
        book.restore(records);

        let listener_8bit = TcpListener::bind(config.server.listen_8bit)
            .await
            .with_context(|| format!("listening on {} (8-bit)", config.server.listen_8bit))?;
        let listener_utf16 = TcpListener::bind(config.server.listen_utf16)
            .await
            .with_context(|| format!("listening on {} (UTF-16LE)", config.server.listen_utf16))?;
        let addr_8bit = listener_8bit.local_addr()?;
        let addr_utf16 = listener_utf16.local_addr()?;

        let transactions = Registry::default();
        let persisted = persisted_rows.len();
        transactions.restore(persisted_rows, now_ms());
        let fatal = CancellationToken::new();
        let shared = Arc::new(Shared {
            config,
            store,
            calls: Mutex::new(book),
            transactions,
            shutdown: fatal.child_token(),
            fatal,
            next_connection: AtomicU64::new(1),
        });
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(
            shared.clone(),
            listener_8bit,
            WireForm::Bits8,
            tasks.clone(),
        ));
        tasks.spawn(accept_loop(
            shared.clone(),
            listener_utf16,
            WireForm::Utf16Le,
            tasks.clone(),
        ));
        tasks.spawn(sweep_loop(shared.clone()));
        tasks.spawn(cursor_loop(shared.clone()));
        tracing::info!(
            %addr_8bit, %addr_utf16, data = %data_dir.display(), open_calls = restored,
            persisted_transactions = persisted,
            "ozbus {} listening", env!("CARGO_PKG_VERSION")
        );
        Ok(RunningServer {
            shared,
            addr_8bit,
            addr_utf16,
            tasks,
        })
    }

    pub fn addr_8bit(&self) -> SocketAddr {
        self.addr_8bit
    }

    pub fn addr_utf16(&self) -> SocketAddr {
        self.addr_utf16
    }

    /// Resolves when the server has been asked to stop, or must stop (then with an error).
    pub async fn stopped(&self) -> anyhow::Result<()> {
        self.shared.shutdown.cancelled().await;
        if self.shared.fatal.is_cancelled() {
            anyhow::bail!(COMMIT_FAILED)
        }
        Ok(())
    }

    /// Stops accepting, lets every connection send the replies it owes, closes connections
    /// and transactions, then flushes and closes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shared.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections did not finish within {SHUTDOWN_GRACE:?}");
        }
        for ended in self.shared.transactions.stop_all() {
            ended.finish().await;
        }
        // Persisted cursors as far as they got.
        let cursors = self.shared.transactions.cursor_mutations();
        if !cursors.is_empty() && self.shared.store.submit(cursors).await.is_err() {
            self.shared.fatal.cancel();
        }
        let failed = self.shared.fatal.is_cancelled();
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await?
            .context("closing the store")?;
        tracing::info!("ozbus stopped");
        if failed {
            anyhow::bail!(COMMIT_FAILED);
        }
        Ok(())
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    form: WireForm,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                let id = shared.next_connection_id();
                tracing::debug!(%peer, id, ?form, "connection");
                metrics::counter!("ozbus_connections_total").increment(1);
                tasks.spawn(connection::serve(shared.clone(), socket, form, id));
            }
            Err(error) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Closes calls that are due (CE expiry, call timeout) as time passes.
async fn sweep_loop(shared: Arc<Shared>) {
    loop {
        let now = now_ms();
        let next = shared.calls.lock().next_deadline();
        let wait = next.map_or(SWEEP_IDLE, |at| {
            Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
                .min(SWEEP_IDLE)
        });
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let ticket = {
            let mut book = shared.calls.lock();
            let mutations = book.sweep(now_ms());
            if mutations.is_empty() {
                continue;
            }
            shared.store.submit(mutations)
        };
        watch_commit(&shared, ticket);
    }
}

/// Writes moved cursors of persisted transactions, and forgets those past the persist TTL.
async fn cursor_loop(shared: Arc<Shared>) {
    let ttl_ms =
        i64::try_from(shared.config.transactions.persist_ttl.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(CURSOR_FLUSH);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut mutations = shared.transactions.cursor_mutations();
        mutations.extend(shared.transactions.expire(now_ms(), ttl_ms));
        if !mutations.is_empty() {
            watch_commit(&shared, shared.store.submit(mutations));
        }
    }
}

/// Waits for a commit nobody else waits for; a failure stops the server.
pub(crate) fn watch_commit(shared: &Shared, ticket: crate::store::CommitTicket) {
    let fatal = shared.fatal.clone();
    tokio::spawn(async move {
        if let Err(error) = ticket.await {
            tracing::error!(%error, "commit failed: stopping the server");
            fatal.cancel();
        }
    });
}
