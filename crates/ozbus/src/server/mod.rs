//! The SDMP front end: listeners and connections.
//!
//! Owns the wiring: it opens the service core, binds the 8-bit and UTF-16 listeners, runs one
//! task per connection ([`connection`]) and the core's timed work, and shuts all of it down in
//! order (stop accepting, let connections send what they owe, close the core). What a message
//! means lives in the core and below it; this module only speaks SDMP.

pub mod connection;
pub mod socket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sdmp::WireForm;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::core::Core;

/// Why a server stopped by itself.
const COMMIT_FAILED: &str = "the store failed to commit; stopped to keep what was accepted intact";
/// How long shutdown waits for connections to send what they owe.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State every connection shares.
pub(crate) struct Shared {
    pub config: Config,
    pub core: Core,
    /// Cancelled to stop the server (signal, `shutdown`, or the core's failure).
    pub shutdown: CancellationToken,
}

/// A started server; see [`RunningServer::start`].
pub struct RunningServer {
    shared: Arc<Shared>,
    addr_8bit: SocketAddr,
    addr_utf16: SocketAddr,
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
        let (core, restored) = Core::open(&config).await?;
        let listener_8bit = TcpListener::bind(config.server.listen_8bit)
            .await
            .with_context(|| format!("listening on {} (8-bit)", config.server.listen_8bit))?;
        let listener_utf16 = TcpListener::bind(config.server.listen_utf16)
            .await
            .with_context(|| format!("listening on {} (UTF-16LE)", config.server.listen_utf16))?;
        let addr_8bit = listener_8bit.local_addr()?;
        let addr_utf16 = listener_utf16.local_addr()?;

        let shared = Arc::new(Shared {
            config,
            shutdown: core.failed().child_token(),
            core,
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
        let timers = shared.clone();
        tasks.spawn(async move { timers.core.run_timers(&timers.shutdown).await });
        tracing::info!(
            %addr_8bit, %addr_utf16, data = %data_dir.display(),
            open_calls = restored.open_calls,
            persisted_transactions = restored.persisted_transactions,
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
                let session = shared.core.session(peer);
                tracing::debug!(%peer, id = session.id(), ?form, "connection");
                metrics::counter!("ozbus_connections_total").increment(1);
                tasks.spawn(connection::serve(shared.clone(), socket, form, session));
            }
            Err(error) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
