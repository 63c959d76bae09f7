//! What the registry holds, as operators see it: one view per transaction, held or persisted.
//!
//! Owns the shape of that view and reading it off the registry. Never: changes the registry,
//! locks, or knows connections beyond their ids (the core adds who holds them).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use sdmp::Message;

use super::{Filter, PersistKey, Registry, Subscription, TransactionKey};
use crate::store::PersistedTransaction;

/// One transaction as the registry holds it at one moment.
#[derive(Clone, Debug)]
pub struct TransactionView {
    /// The TX namespace (the tenant its TX and PS live in).
    pub namespace: Bytes,
    pub tx: Bytes,
    /// The PersistToken of a persisted transaction.
    pub persist: Option<Bytes>,
    /// The connection that holds it; `None` for a persisted transaction nobody holds.
    pub connection: Option<u64>,
    /// Its filter, sequencing and roll-forward rate (those of the EO that last opened it).
    pub filter: Filter,
    pub sequenced: bool,
    pub rate: u32,
    /// Held: the last sequence number its delivery read from the log and handed to its
    /// connection (or passed over). Not held: where a re-issue resumes.
    pub cursor: u64,
    /// Persisted: where a re-issue resumes (acknowledged with XS, delivered without).
    pub durable: Option<u64>,
    /// The roll-forward of a re-issue paces the events up to this sequence number.
    pub paced_until: Option<u64>,
    /// When its last connection let go of it (persisted, not held).
    pub released_ms: Option<i64>,
}

/// What the gauges of the registry say at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Transactions a connection holds.
    pub held: usize,
    /// Persisted transactions, held or not.
    pub persisted: usize,
    /// The most sequence numbers any transaction is behind the log end.
    pub max_backlog: u64,
}

impl Registry {
    /// The gauges, for a log that ends at `log_end`; one pass, nothing copied.
    pub fn gauges(&self, log_end: u64) -> Gauges {
        let mut gauges = Gauges::default();
        for transaction in self.by_tx.values() {
            let cursor = match (&transaction.holder, &transaction.persist) {
                (Some(holder), _) => holder.progress.load(Ordering::Acquire),
                (None, Some(persist)) => persist.durable(),
                (None, None) => log_end,
            };
            gauges.held += usize::from(transaction.holder.is_some());
            gauges.persisted += usize::from(transaction.persist.is_some());
            gauges.max_backlog = gauges.max_backlog.max(log_end.saturating_sub(cursor));
        }
        // Persisted transactions nobody has needed since the start are counted, not read: their
        // backlogs are unknown until one is loaded.
        gauges.persisted += self.unloaded.values().sum::<usize>();
        gauges
    }

    /// Whether persisted transactions of `namespace` (of any, without one) may be in the store
    /// but not in memory (always, on a store shared by nodes): a full list must read them.
    pub fn has_unloaded(&self, namespace: Option<&[u8]>) -> bool {
        if self.shared {
            return true;
        }
        match namespace {
            Some(namespace) => self.unloaded.contains_key(namespace),
            None => !self.unloaded.is_empty(),
        }
    }

    /// Views of the rows read from the store that are not in memory: persisted transactions
    /// nobody has needed since the start, as a re-issue would find them. Rows of transactions
    /// in memory (loaded since they were read, or being forgotten) are left out:
    /// [`Registry::snapshot`] has them, or they are gone.
    pub fn unloaded_views(&self, rows: Vec<PersistedTransaction>) -> Vec<TransactionView> {
        rows.into_iter()
            .filter(|row| {
                let key = PersistKey::of(row);
                !self.by_token.contains_key(&key)
                    && !self.forgetting.contains_key(&key)
                    && !self.unsaved.contains(&key)
            })
            .filter_map(|row| {
                let terms = terms_of(&row.request)?;
                Some(TransactionView {
                    namespace: row.tenant,
                    tx: row.tx,
                    persist: Some(row.ps),
                    connection: None,
                    filter: terms.filter,
                    sequenced: terms.sequenced,
                    rate: terms.rate,
                    cursor: row.cursor,
                    durable: Some(row.cursor),
                    paced_until: None,
                    released_ms: Some(row.released_ms.unwrap_or(self.started_ms)),
                })
            })
            .collect()
    }

    /// The transactions in memory, held or persisted, in (namespace, TX) order: at most
    /// `limit` after `after` (exclusive), of the namespace `namespace` only, when given.
    pub fn snapshot(
        &self,
        namespace: Option<&[u8]>,
        after: Option<&TransactionKey>,
        limit: usize,
    ) -> Vec<TransactionView> {
        let mut keys: Vec<&TransactionKey> = self
            .by_tx
            .keys()
            .filter(|key| namespace.is_none_or(|n| *n == key.namespace[..]))
            .filter(|key| after.is_none_or(|after| *key > after))
            .collect();
        keys.sort_unstable();
        let mut views = Vec::new();
        for key in keys {
            if views.len() == limit {
                break;
            }
            let transaction = &self.by_tx[key];
            let durable = transaction.persist.as_ref().map(|p| p.durable());
            let terms = match &transaction.holder {
                Some(holder) => Some(holder.subscription.clone()),
                None => transaction
                    .persist
                    .as_ref()
                    .and_then(|p| terms_of(&p.request)),
            };
            let Some(terms) = terms else { continue };
            views.push(TransactionView {
                namespace: key.namespace.clone(),
                tx: key.tx.clone(),
                persist: transaction.persist.as_ref().map(|p| p.token.clone()),
                connection: transaction.holder.as_ref().map(|h| h.connection),
                filter: terms.filter,
                sequenced: terms.sequenced,
                rate: terms.rate,
                cursor: match &transaction.holder {
                    Some(holder) => holder.progress.load(Ordering::Acquire),
                    None => durable.unwrap_or(0),
                },
                durable,
                paced_until: transaction.holder.as_ref().and_then(|h| h.paced_until),
                released_ms: transaction.persist.as_ref().and_then(|p| p.released_ms),
            });
        }
        views
    }
}

/// The terms of a persisted transaction's EO (its TD as the tenant filter).
fn terms_of(request: &[u8]) -> Option<Subscription> {
    let envelope = sdmp::decode_request(request).ok()?;
    let td = envelope.message.common().td;
    match envelope.message {
        Message::Eo(eo) => Some(Subscription::of(&eo, td, envelope.dialect)),
        _ => None,
    }
}
