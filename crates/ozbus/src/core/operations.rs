//! What operators ask of the core: the list of transactions (who holds each, how far it got,
//! how far behind it is), ending one from outside, and the gauges of `/metrics` that describe
//! the state rather than count events.
//!
//! Owns the tenant rules of those requests (a supervisor sees and ends its tenant's; a
//! landlord, or anyone on a server without users, every tenant's or the one it names) and the
//! sampling of the gauges. Never: changes a transaction other than by the registry's own EE,
//! or holds the registry's lock longer than one pass over it.

use std::net::SocketAddr;
use std::time::Duration;

use sdmp::Rejection;
use tokio_util::sync::CancellationToken;

use super::auth::Act;
use super::{Core, Finished, ReadError, Session};
use crate::subs::{TransactionKey, TransactionView};

/// How often the gauges are sampled.
const GAUGE_PERIOD: Duration = Duration::from_secs(1);

/// One transaction, with who holds it.
#[derive(Clone, Debug)]
pub struct TransactionInfo {
    pub view: TransactionView,
    /// The address of the client whose connection holds it, and its front end (`sdmp`,
    /// `http`).
    pub holder: Option<(SocketAddr, &'static str)>,
}

impl Core {
    /// Every transaction `session` may see (with `td`: of that tenant), and the log's last
    /// sequence number when they were read. Persisted transactions nobody has needed since
    /// the start are read from the store (without the registry's lock).
    pub async fn transactions(
        &self,
        session: &Session,
        td: Option<&[u8]>,
    ) -> Result<(Vec<TransactionInfo>, u64), ReadError> {
        let tenant = self.admit(session, Act::Supervise, td)?;
        let everyone = session.principal.as_ref().is_none_or(|p| p.is_landlord());
        // A supervisor sees its namespace; a landlord (or anyone without users) every one, or
        // those of the tenant it names: by namespace or by the tenant the EO filtered on.
        let (namespace, filter) = match (everyone, td) {
            (false, _) => (Some(tenant), None),
            (true, None) => (None, None),
            (true, Some(_)) => (None, Some(tenant)),
        };
        let log_end = self.store.last_seq();
        let unloaded = self.transactions.lock().has_unloaded(namespace.as_deref());
        let rows = if unloaded {
            self.store
                .load_transactions()
                .await
                .map_err(ReadError::Store)?
        } else {
            Vec::new()
        };
        let views = {
            let registry = self.transactions.lock();
            let mut views = registry.snapshot(namespace.as_deref());
            views.extend(registry.unloaded_views(namespace.as_deref(), rows));
            views.sort_by(|a, b| (&a.namespace, &a.tx).cmp(&(&b.namespace, &b.tx)));
            views
        };
        let holders = self.holders.lock();
        let infos = views
            .into_iter()
            .filter(|view| {
                filter.as_ref().is_none_or(|t| {
                    view.namespace == t || view.filter.tenant.as_ref().is_some_and(|f| f == t)
                })
            })
            .map(|view| TransactionInfo {
                holder: view.connection.and_then(|c| holders.get(&c).copied()),
                view,
            })
            .collect();
        Ok((infos, log_end))
    }

    /// Ends the transaction `tx` as an EE from `session` does, forgetting it if persisted
    /// (EC 810: none). A landlord names the tenant whose transaction it is with `td`; anyone
    /// else ends its own tenant's. The caller finishes the delivery that held it and tells
    /// that connection with EF.
    pub fn end_transaction_of(
        &self,
        session: &Session,
        td: Option<&[u8]>,
        tx: &[u8],
    ) -> Result<Finished, Rejection> {
        let tenant = self.admit(session, Act::Supervise, td)?;
        let namespace = match (&session.principal, td) {
            (Some(principal), Some(_)) if principal.is_landlord() => tenant,
            _ => session.namespace.clone(),
        };
        let mut registry = self.transactions.lock();
        let (ended, mutations) = registry.end(&TransactionKey::new(&namespace, tx))?;
        Ok(Finished {
            ticket: self.submit_registry(mutations),
            ended,
        })
    }

    /// Samples the gauges every second, and counts the outcomes committed for
    /// [`Core::summary`], until `stop`.
    pub async fn run_gauges(&self, stop: &CancellationToken) {
        let gauges = async {
            let mut tick = tokio::time::interval(GAUGE_PERIOD);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => self.sample_gauges(),
                }
            }
        };
        tokio::join!(gauges, self.activity.follow(&self.store, stop));
    }

    /// Transactions held and persisted, the largest backlog, the log's first and last
    /// sequence numbers.
    pub fn sample_gauges(&self) {
        let log_end = self.store.last_seq();
        let gauges = self.transactions.lock().gauges(log_end);
        metrics::gauge!("ozbus_transactions_held").set(gauges.held as f64);
        metrics::gauge!("ozbus_transactions_persisted").set(gauges.persisted as f64);
        metrics::gauge!("ozbus_transaction_backlog_max").set(gauges.max_backlog as f64);
        metrics::gauge!("ozbus_log_last_seq").set(log_end as f64);
        metrics::gauge!("ozbus_log_first_seq").set(self.store.oldest_seq().unwrap_or(0) as f64);
        self.activity
            .sample_store(self.store.stats(), super::now_ms());
    }
}
