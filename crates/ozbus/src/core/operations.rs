//! What operators ask of the core: the list of transactions (who holds each, how far it got,
//! how far behind it is), ending one from outside, and the gauges of `/metrics` that describe
//! the state rather than count events.
//!
//! Owns the tenant rules of those requests (a supervisor sees and ends its tenant's; a
//! landlord, or anyone on a server without users, every tenant's or the one it names) and the
//! sampling of the gauges. Never: changes a transaction other than by the registry's own EE,
//! holds the registry's lock longer than one pass over it, or holds it while the store is read.

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

/// The most transactions one page of the list holds.
pub const LIST_MAX: usize = 1000;

/// One page of the transactions list.
#[derive(Clone, Debug)]
pub struct TransactionPage {
    pub transactions: Vec<TransactionInfo>,
    /// The log's last sequence number when the page was read (backlogs are counted to it).
    pub log_end: u64,
    /// Where the next page starts (pass it as `after`); `None` on the last page.
    pub next: Option<TransactionKey>,
}

impl Core {
    /// One page of the transactions `session` may see (with `td`: of that tenant), in
    /// (tenant, TX) order: at most `limit` (1 to [`LIST_MAX`]) after `after`. Persisted
    /// transactions nobody has needed since the start are read from the store, a page of them
    /// (without the registry's lock). A landlord's page of one tenant may hold fewer than
    /// `limit` with a `next`: the tenant is matched after the page is cut.
    pub async fn transactions(
        &self,
        session: &Session,
        td: Option<&[u8]>,
        after: Option<&TransactionKey>,
        limit: usize,
    ) -> Result<TransactionPage, ReadError> {
        let limit = limit.clamp(1, LIST_MAX);
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
        // One more than the page from each side says whether a next page exists.
        let rows = if unloaded {
            let after = after.map(|key| (&key.namespace[..], &key.tx[..]));
            self.store
                .list_transactions(namespace.as_deref(), after, limit + 1)
                .await
                .map_err(ReadError::Store)?
        } else {
            Vec::new()
        };
        let mut views = {
            let registry = self.transactions.lock();
            let mut views = registry.snapshot(namespace.as_deref(), after, limit + 1);
            views.extend(registry.unloaded_views(rows));
            views
        };
        // Stable: a transaction in memory comes before a stored row of the same name, which
        // the dedup then drops (other nodes may have opened one under that name since).
        views.sort_by(|a, b| (&a.namespace, &a.tx).cmp(&(&b.namespace, &b.tx)));
        views.dedup_by(|b, a| a.namespace == b.namespace && a.tx == b.tx);
        let next = (views.len() > limit).then(|| {
            views.truncate(limit);
            let last = &views[limit - 1];
            TransactionKey::new(&last.namespace, &last.tx)
        });
        let holders = self.holders.lock();
        let transactions = views
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
        Ok(TransactionPage {
            transactions,
            log_end,
            next,
        })
    }

    /// Ends the transaction `tx` as an EE from `session` does, forgetting it if persisted
    /// (EC 810: none). A landlord names the tenant whose transaction it is with `td`; anyone
    /// else ends its own tenant's. The caller finishes the delivery that held it and tells
    /// that connection with EF.
    pub async fn end_transaction_of(
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
        loop {
            // On a store shared by nodes, a persisted transaction no connection holds here is
            // only in the store: read as for an EE.
            let found = match self.store.shared_by_nodes() {
                true => match self.look_up(&namespace, tx, None).await {
                    Ok(found) => found,
                    Err(error) => {
                        return Ok(Finished {
                            ticket: self
                                .read_failed("looking up a persisted transaction", &error)?,
                            ended: None,
                        })
                    }
                },
                false => None,
            };
            let mut registry = self.transactions.lock();
            if !self.load(&mut registry, found) {
                continue;
            }
            let result = registry.end(&TransactionKey::new(&namespace, tx));
            registry.shed();
            let (ended, mutations) = result?;
            return Ok(Finished {
                ticket: self.submit_registry(mutations),
                ended,
            });
        }
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
