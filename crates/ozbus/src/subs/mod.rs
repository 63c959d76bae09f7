//! Transactions: what an EO asks for, the registry of transactions (TX uniqueness, EE,
//! PersistToken takeover, acknowledgements, TTL), and delivery of outcomes to each one as a
//! cursor over the log.
//!
//! A transaction never holds a queue of its own: its delivery task reads the log after its
//! cursor (the store's in-memory tail when it keeps up, SQLite when it lags), keeps what its
//! filter matches, and hands formatted OZ frames to its connection's bounded outbound channel.
//! A slow reader therefore only lags; it never blocks ingestion or other subscribers, and the
//! memory it can hold is bounded by that channel.
//!
//! A persisted transaction (EO with PS) is the same cursor, kept when no connection holds it.
//! Its durable cursor is what the connection's writer has handed to the operating system, or,
//! for transactions opened with XS, what the client acknowledged with XA.
//!
//! The [`Registry`] is plain state, like the call book: each method checks, changes the
//! registry, and returns its effects (store mutations to commit in the order returned, a
//! [`Delivery`] to start, transactions that [`Ended`]). It never locks, spawns, waits or
//! touches the store; the core does that, and submits the mutations under the same lock that
//! ordered them. Moved cursors are written lazily ([`Registry::cursor_mutations`]), never ahead
//! of the durable cursor.
//!
//! The registry is what the store's rows of persisted transactions must come to hold. When a
//! write of them fails for lack of space, the core says so ([`Registry::unsaved`]) and the
//! rows are written again later from what the registry holds then ([`Registry::resave`]), in
//! order with every other write of them, since that too is computed and submitted under the
//! registry's lock. A cursor that could not be written is therefore retried, never lost.
//!
//! Files: `delivery` (the task that reads the log for one transaction), `tests` with `testkit`.

mod delivery;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sdmp::{Dialect, Ef, Envelope, ErrorCode, Message, Rejection, SdmpCodec};
use tokio::sync::oneshot;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;

use crate::outbound::Outbound;
use crate::store::{Mutation, NewOutcome, OutcomeClass, PersistedTransaction};

/// The TX of a persisted transaction's request (the EO it was opened or last re-issued with);
/// `None` if it does not decode as an EO.
pub fn request_tx(request: &[u8]) -> Option<Bytes> {
    match sdmp::decode_request(request).ok()?.message {
        Message::Eo(eo) => Some(Bytes::copy_from_slice(eo.tx)),
        _ => None,
    }
}

pub use delivery::{deliver, encode_oz, Delivery};

/// Roll-forward rate when the EO gives no CS, in events per second.
pub const DEFAULT_RATE: u32 = 100;

/// Which outcomes a transaction receives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `None`: every tenant.
    pub tenant: Option<Bytes>,
    /// `None`: every campaign; compared exactly.
    pub campaign: Option<Bytes>,
    pub success: bool,
    pub failure: bool,
    pub management: bool,
}

impl Filter {
    pub fn matches(&self, outcome: &NewOutcome) -> bool {
        let class = match outcome.class {
            OutcomeClass::Success => self.success,
            OutcomeClass::Failure => self.failure,
            OutcomeClass::Management => self.management,
        };
        class
            && self.tenant.as_ref().is_none_or(|t| *t == outcome.tenant)
            && self.campaign.as_ref().is_none_or(|c| *c == outcome.cn)
    }
}

/// An open transaction's terms, owned (they outlive the EO's frame).
#[derive(Clone, Debug)]
pub struct Subscription {
    pub tx: Bytes,
    pub filter: Filter,
    /// OZ carries XS and XT.
    pub sequenced: bool,
    /// The EO's code form: its OZ use the same.
    pub dialect: Dialect,
    /// Roll-forward rate (CS), events per second.
    pub rate: u32,
}

impl Subscription {
    /// The terms of an EO; `tenant` is its TD (none: every tenant).
    pub fn of(eo: &sdmp::Eo<'_>, tenant: Option<&[u8]>, dialect: Dialect) -> Subscription {
        Subscription {
            tx: Bytes::copy_from_slice(eo.tx),
            filter: Filter {
                tenant: tenant.map(Bytes::copy_from_slice),
                campaign: eo.cn.map(Bytes::copy_from_slice),
                success: eo.so,
                failure: eo.fo,
                management: eo.mo,
            },
            sequenced: eo.xs,
            dialect,
            rate: eo.cs.unwrap_or(DEFAULT_RATE),
        }
    }
}

/// A transaction's name: its TX within the TX namespace of its connection (the tenant).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TransactionKey {
    pub namespace: Bytes,
    pub tx: Bytes,
}

impl TransactionKey {
    pub fn new(namespace: &Bytes, tx: &[u8]) -> TransactionKey {
        TransactionKey {
            namespace: namespace.clone(),
            tx: Bytes::copy_from_slice(tx),
        }
    }
}

/// A persisted transaction's name: its PersistToken within the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PersistKey {
    namespace: Bytes,
    ps: Bytes,
}

/// What makes an EO persisted: its PS, and the EO frame that defines the transaction (kept to
/// re-create it after a restart).
#[derive(Clone, Debug)]
pub struct Persisting {
    pub token: Bytes,
    pub request: Bytes,
}

/// What a new EO asks of the registry.
pub struct Open {
    /// The TX namespace (the connection's tenant); the TX is the subscription's.
    pub namespace: Bytes,
    pub subscription: Subscription,
    /// XR: deliver after this sequence number.
    pub resume_after: Option<u64>,
    pub persist: Option<Persisting>,
    pub connection: u64,
    pub out: Outbound,
}

/// What opening did: mutations to make durable (before the MV), the delivery to start, and a
/// transaction taken over from another connection (to be finished, then told with EF).
pub struct Opened {
    pub mutations: Vec<Mutation>,
    pub delivery: Delivery,
    pub taken_over: Option<Ended>,
}

/// Delivery of one held transaction, as the registry keeps it.
struct Holder {
    connection: u64,
    stop: CancellationToken,
    /// Resolves once the delivery has stopped (its sender lives as long as the delivery).
    stopped: oneshot::Receiver<()>,
    out: Outbound,
    dialect: Dialect,
    tx: Bytes,
}

/// What keeps a persisted transaction between connections.
struct Persist {
    token: Bytes,
    request: Bytes,
    sequenced: bool,
    /// Last sequence number handed to the operating system (set by the connection's writer).
    delivered: Arc<AtomicU64>,
    /// Last sequence number handed to the connection's writer: a client cannot have seen more,
    /// and it may have seen that much before the writer's write returned.
    queued: Arc<AtomicU64>,
    /// Last sequence number acknowledged with XA.
    acknowledged: u64,
    /// The cursor last sent to the store (it only moves forward there; see the store's
    /// `MoveCursor`).
    stored: u64,
    released_ms: Option<i64>,
}

impl Persist {
    fn new(persisting: Persisting, sequenced: bool, cursor: u64) -> Persist {
        Persist {
            token: persisting.token,
            request: persisting.request,
            sequenced,
            delivered: Arc::new(AtomicU64::new(cursor)),
            queued: Arc::new(AtomicU64::new(cursor)),
            acknowledged: cursor,
            stored: cursor,
            released_ms: None,
        }
    }

    /// The cursor a re-issue resumes after.
    fn durable(&self) -> u64 {
        if self.sequenced {
            self.acknowledged
        } else {
            self.delivered.load(Ordering::Acquire)
        }
    }

    fn row(&self, key: &TransactionKey) -> PersistedTransaction {
        PersistedTransaction {
            tenant: key.namespace.clone(),
            ps: self.token.clone(),
            tx: key.tx.clone(),
            request: self.request.clone(),
            cursor: self.durable(),
            released_ms: self.released_ms,
        }
    }

    fn key(&self, namespace: &Bytes) -> PersistKey {
        PersistKey {
            namespace: namespace.clone(),
            ps: self.token.clone(),
        }
    }
}

struct Transaction {
    holder: Option<Holder>,
    persist: Option<Persist>,
}

/// A transaction no longer held by its connection; [`Ended::finish`] waits until its delivery
/// has stopped, so that nothing is sent for it after its EF.
pub struct Ended {
    holder: Holder,
}

impl Ended {
    /// The connection that held the transaction.
    pub fn connection(&self) -> u64 {
        self.holder.connection
    }

    /// The TX it was held under.
    pub fn tx(&self) -> &[u8] {
        &self.holder.tx
    }

    pub async fn finish(self) {
        self.holder.stop.cancel();
        // A delivery that panicked, or was never started, has stopped all the same.
        let _ = self.holder.stopped.await;
    }

    /// Stops the delivery, then tells the connection that held the transaction with EF (in
    /// the form of its EO), so that the EF is the last it hears of it.
    pub async fn finish_with_ef(self, td: Option<&[u8]>) {
        let (owner, dialect, tx) = (
            self.holder.out.clone(),
            self.holder.dialect,
            self.holder.tx.clone(),
        );
        self.finish().await;
        let ef = Envelope {
            dialect,
            message: Ef { tx: &tx, td }.into(),
        };
        let mut frame = BytesMut::new();
        // Encoding into memory cannot fail.
        let _ = SdmpCodec::new(owner.form()).encode(&ef, &mut frame);
        owner.send(frame.freeze()).await;
    }
}

/// How many transactions a connection may hold, and a tenant may keep persisted.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub per_connection: usize,
    pub persisted_per_tenant: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_connection: usize::MAX,
            persisted_per_tenant: usize::MAX,
        }
    }
}

/// Every transaction of the service: held ones, and persisted ones nobody holds.
#[derive(Default)]
pub struct Registry {
    by_tx: HashMap<TransactionKey, Transaction>,
    /// (namespace, PS) → TX of the persisted transaction.
    by_token: HashMap<PersistKey, Bytes>,
    limits: Limits,
    /// Transactions each connection holds.
    held: HashMap<u64, usize>,
    /// Persisted transactions of each namespace.
    persisted: HashMap<Bytes, usize>,
    /// Persisted transactions (or ones forgotten since) whose stored row may differ from the
    /// registry: a write of it failed for lack of space. At most one entry per transaction.
    unsaved: HashSet<PersistKey>,
}

fn limit_reached(what: &'static str) -> Rejection {
    metrics::counter!("ozbus_limit_hits_total", "limit" => what).increment(1);
    Rejection::new(
        ErrorCode::LimitReached,
        match what {
            "transactions_per_connection" => "this connection holds as many transactions as it may",
            _ => "the tenant has as many persisted transactions as it may",
        },
    )
}

fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = counts.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(key);
        }
    }
}

/// The persisted transaction a mutation writes, if any.
fn written_key(mutation: &Mutation) -> Option<PersistKey> {
    let (namespace, ps) = match mutation {
        Mutation::PutTransaction(row) => (&row.tenant, &row.ps),
        Mutation::MoveCursor { tenant, ps, .. }
        | Mutation::RewindCursor { tenant, ps, .. }
        | Mutation::DeleteTransaction { tenant, ps } => (tenant, ps),
        _ => return None,
    };
    Some(PersistKey {
        namespace: namespace.clone(),
        ps: ps.clone(),
    })
}

fn no_transaction() -> Rejection {
    Rejection::new(
        ErrorCode::NoSuchTransaction,
        "no active transaction of that TX",
    )
}

fn tx_taken() -> Rejection {
    Rejection::new(
        ErrorCode::TransactionExists,
        "TX already names an active transaction",
    )
}

impl Registry {
    pub fn new(limits: Limits) -> Registry {
        Registry {
            limits,
            ..Registry::default()
        }
    }

    /// Re-creates the persisted transactions the store kept; none is held. One that was held
    /// when the server stopped counts as released now (its TTL starts again).
    pub fn restore(&mut self, rows: Vec<PersistedTransaction>, now_ms: i64) {
        for row in rows {
            let Ok(envelope) = sdmp::decode_request(&row.request) else {
                tracing::warn!(ps = %String::from_utf8_lossy(&row.ps), "dropping a persisted transaction whose EO no longer decodes");
                continue;
            };
            let Message::Eo(eo) = envelope.message else {
                continue;
            };
            let key = TransactionKey::new(&row.tenant, eo.tx);
            let persisting = Persisting {
                token: row.ps.clone(),
                request: row.request.clone(),
            };
            let mut persist = Persist::new(persisting, eo.xs, row.cursor);
            persist.released_ms = Some(row.released_ms.unwrap_or(now_ms));
            self.by_token
                .insert(persist.key(&row.tenant), key.tx.clone());
            *self.persisted.entry(row.tenant.clone()).or_default() += 1;
            self.by_tx.insert(
                key,
                Transaction {
                    holder: None,
                    persist: Some(persist),
                },
            );
        }
    }

    /// Opens a transaction, or re-issues a persisted one (same namespace and PS), whose
    /// delivery starts at the cursor on `open.out`; `log_end` is the log's last sequence number.
    pub fn open(&mut self, open: Open, log_end: u64) -> Result<Opened, Rejection> {
        let key = TransactionKey {
            namespace: open.namespace.clone(),
            tx: open.subscription.tx.clone(),
        };
        let previous_tx = open.persist.as_ref().and_then(|p| {
            self.by_token.get(&PersistKey {
                namespace: open.namespace.clone(),
                ps: p.token.clone(),
            })
        });
        // TX is unique among the namespace's transactions, except that a re-issue may keep its own.
        if previous_tx != Some(&key.tx) && self.by_tx.contains_key(&key) {
            return Err(tx_taken());
        }
        // A re-issue where the transaction is held already takes no further place.
        let held_here = previous_tx
            .and_then(|tx| {
                self.by_tx.get(&TransactionKey {
                    namespace: open.namespace.clone(),
                    tx: tx.clone(),
                })
            })
            .and_then(|t| t.holder.as_ref())
            .is_some_and(|h| h.connection == open.connection);
        let holds = self.held.get(&open.connection).copied().unwrap_or(0);
        if holds - usize::from(held_here) >= self.limits.per_connection {
            return Err(limit_reached("transactions_per_connection"));
        }
        if open.persist.is_some()
            && previous_tx.is_none()
            && self.persisted.get(&open.namespace).copied().unwrap_or(0)
                >= self.limits.persisted_per_tenant
        {
            return Err(limit_reached("persisted_per_tenant"));
        }
        let previous = previous_tx.cloned().and_then(|tx| {
            self.by_tx.remove(&TransactionKey {
                namespace: open.namespace.clone(),
                tx,
            })
        });
        let (previous_persist, taken_over) = match previous {
            Some(Transaction { holder, persist }) => {
                if let Some(holder) = &holder {
                    decrement(&mut self.held, &holder.connection);
                }
                (persist, holder.map(|holder| Ended { holder }))
            }
            None => (None, None),
        };
        if open.persist.is_some() && previous_persist.is_none() {
            *self.persisted.entry(open.namespace.clone()).or_default() += 1;
        }
        let cursor = open
            .resume_after
            .or_else(|| previous_persist.as_ref().map(Persist::durable))
            .unwrap_or(log_end);

        let mut mutations = Vec::new();
        // The new EO's terms apply from now on, from the cursor it resumes after.
        let persist = open.persist.map(|persisting| {
            let persist = Persist::new(persisting, open.subscription.sequenced, cursor);
            mutations.push(Mutation::PutTransaction(persist.row(&key)));
            if open.resume_after.is_some() {
                // Only a client that asks with XR moves its stored cursor back.
                mutations.push(Mutation::RewindCursor {
                    tenant: key.namespace.clone(),
                    ps: persist.token.clone(),
                    cursor,
                });
            }
            self.by_token
                .insert(persist.key(&key.namespace), key.tx.clone());
            persist
        });

        let stop = CancellationToken::new();
        let (stopped_tx, stopped) = oneshot::channel();
        let delivery = Delivery {
            subscription: open.subscription.clone(),
            cursor,
            // A persisted transaction rolls its backlog forward at its rate; live events follow.
            paced_until: persist
                .as_ref()
                .map(|_| log_end)
                .filter(|end| *end > cursor),
            cursors: persist
                .as_ref()
                .map(|p| (p.delivered.clone(), p.queued.clone())),
            out: open.out.clone(),
            stop: stop.clone(),
            stopped: stopped_tx,
        };
        *self.held.entry(open.connection).or_default() += 1;
        self.by_tx.insert(
            key,
            Transaction {
                holder: Some(Holder {
                    connection: open.connection,
                    stop,
                    stopped,
                    out: open.out,
                    dialect: open.subscription.dialect,
                    tx: open.subscription.tx,
                }),
                persist,
            },
        );
        Ok(Opened {
            mutations,
            delivery,
            taken_over,
        })
    }

    /// Ends the transaction `key` (EE): a persisted one is forgotten completely. Returns its
    /// delivery, if a connection held it, and the mutations that forget it.
    pub fn end(
        &mut self,
        key: &TransactionKey,
    ) -> Result<(Option<Ended>, Vec<Mutation>), Rejection> {
        let transaction = self.by_tx.remove(key).ok_or_else(no_transaction)?;
        if let Some(holder) = &transaction.holder {
            decrement(&mut self.held, &holder.connection);
        }
        let mut mutations = Vec::new();
        if let Some(persist) = transaction.persist {
            decrement(&mut self.persisted, &key.namespace);
            self.by_token.remove(&persist.key(&key.namespace));
            mutations.push(Mutation::DeleteTransaction {
                tenant: key.namespace.clone(),
                ps: persist.token,
            });
        }
        Ok((transaction.holder.map(|holder| Ended { holder }), mutations))
    }

    /// XA: the client processed everything of `key` up to `seq`. Only for transactions opened
    /// with PS and XS (else EC 810). The cursor never moves past what was sent. With
    /// `durable_now` it returns the cursor mutation to commit before the MV (always one, so the
    /// MV also waits for any lazy write of the same cursor still in flight); otherwise the
    /// cursor is written lazily.
    pub fn acknowledge(
        &mut self,
        key: &TransactionKey,
        seq: u64,
        durable_now: bool,
    ) -> Result<Option<Mutation>, Rejection> {
        let persist = self
            .by_tx
            .get_mut(key)
            .and_then(|t| t.persist.as_mut())
            .filter(|p| p.sequenced)
            .ok_or_else(|| {
                Rejection::new(
                    ErrorCode::NoSuchTransaction,
                    "no transaction of that TX opened with PS and XS",
                )
            })?;
        let sent = persist.queued.load(Ordering::Acquire);
        persist.acknowledged = persist.acknowledged.max(seq.min(sent));
        if durable_now {
            persist.stored = persist.stored.max(persist.acknowledged);
            return Ok(Some(Mutation::MoveCursor {
                tenant: key.namespace.clone(),
                ps: persist.token.clone(),
                cursor: persist.acknowledged,
            }));
        }
        Ok(None)
    }

    /// A connection closed: its transactions without PS end, persisted ones are released (kept,
    /// with their cursor, for a re-issue). Returns the deliveries to finish and the mutations.
    pub fn release_all_of(&mut self, connection: u64, now_ms: i64) -> (Vec<Ended>, Vec<Mutation>) {
        let held: Vec<TransactionKey> = self
            .by_tx
            .iter()
            .filter(|(_, t)| {
                t.holder
                    .as_ref()
                    .is_some_and(|h| h.connection == connection)
            })
            .map(|(k, _)| k.clone())
            .collect();
        self.held.remove(&connection);
        let mut ended = Vec::new();
        let mut mutations = Vec::new();
        for key in held {
            let Some(transaction) = self.by_tx.get_mut(&key) else {
                continue;
            };
            ended.extend(transaction.holder.take().map(|holder| Ended { holder }));
            match transaction.persist.as_mut() {
                Some(persist) => {
                    persist.released_ms = Some(now_ms);
                    persist.stored = persist.stored.max(persist.durable());
                    mutations.push(Mutation::PutTransaction(persist.row(&key)));
                }
                None => {
                    self.by_tx.remove(&key);
                }
            }
        }
        (ended, mutations)
    }

    /// Cursors that moved since they were last written (lazy persistence).
    pub fn cursor_mutations(&mut self) -> Vec<Mutation> {
        let mut mutations = Vec::new();
        for (key, transaction) in self.by_tx.iter_mut() {
            if let Some(persist) = transaction.persist.as_mut() {
                let durable = persist.durable();
                if durable > persist.stored {
                    persist.stored = durable;
                    mutations.push(Mutation::MoveCursor {
                        tenant: key.namespace.clone(),
                        ps: persist.token.clone(),
                        cursor: durable,
                    });
                }
            }
        }
        mutations
    }

    /// Forgets persisted transactions nobody has held for `ttl_ms`.
    pub fn expire(&mut self, now_ms: i64, ttl_ms: i64) -> Vec<Mutation> {
        let due: Vec<TransactionKey> = self
            .by_tx
            .iter()
            .filter(|(_, t)| {
                t.holder.is_none()
                    && t.persist
                        .as_ref()
                        .and_then(|p| p.released_ms)
                        .is_some_and(|released| now_ms.saturating_sub(released) >= ttl_ms)
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut mutations = Vec::new();
        for key in due {
            let Some(persist) = self.by_tx.remove(&key).and_then(|t| t.persist) else {
                continue;
            };
            decrement(&mut self.persisted, &key.namespace);
            self.by_token.remove(&persist.key(&key.namespace));
            tracing::info!(
                tenant = %String::from_utf8_lossy(&key.namespace),
                ps = %String::from_utf8_lossy(&persist.token),
                "persisted transaction expired: no connection held it for the persist TTL"
            );
            metrics::counter!("ozbus_persisted_transactions_expired_total").increment(1);
            mutations.push(Mutation::DeleteTransaction {
                tenant: key.namespace,
                ps: persist.token,
            });
        }
        mutations
    }

    /// The writes in `failed` did not reach the store (it is out of space): the rows they
    /// wrote are to be written again, from what the registry then holds.
    pub fn unsaved(&mut self, failed: &[Mutation]) {
        self.unsaved.extend(failed.iter().filter_map(written_key));
    }

    /// Writes that bring the stored rows of the transactions `of` writes to what the registry
    /// holds now, and count them as saved: the whole row, with its cursor set exactly (never
    /// behind what was confirmed to a client: the registry's cursor is at or beyond anything
    /// it confirmed), or the row's removal if the transaction is gone.
    pub fn resave(&mut self, of: &[Mutation]) -> Vec<Mutation> {
        let keys: HashSet<PersistKey> = of.iter().filter_map(written_key).collect();
        keys.into_iter()
            .flat_map(|key| self.resave_one(key))
            .collect()
    }

    /// [`Registry::resave`] for every row [`Registry::unsaved`] was told of.
    pub fn resave_unsaved(&mut self) -> Vec<Mutation> {
        let keys: Vec<PersistKey> = self.unsaved.drain().collect();
        keys.into_iter()
            .flat_map(|key| self.resave_one(key))
            .collect()
    }

    fn resave_one(&mut self, key: PersistKey) -> Vec<Mutation> {
        self.unsaved.remove(&key);
        let found = self.by_token.get(&key).cloned().and_then(|tx| {
            let tx_key = TransactionKey {
                namespace: key.namespace.clone(),
                tx,
            };
            let persist = self.by_tx.get_mut(&tx_key)?.persist.as_mut()?;
            Some((tx_key, persist))
        });
        match found {
            Some((tx_key, persist)) => {
                let row = persist.row(&tx_key);
                persist.stored = row.cursor;
                let cursor = row.cursor;
                vec![
                    Mutation::PutTransaction(row),
                    Mutation::RewindCursor {
                        tenant: key.namespace,
                        ps: key.ps,
                        cursor,
                    },
                ]
            }
            None => vec![Mutation::DeleteTransaction {
                tenant: key.namespace,
                ps: key.ps,
            }],
        }
    }

    /// Stops every delivery (server shutdown); persisted transactions stay as they are.
    pub fn stop_all(&mut self) -> Vec<Ended> {
        self.held.clear();
        self.by_tx
            .values_mut()
            .filter_map(|t| t.holder.take())
            .map(|holder| Ended { holder })
            .collect()
    }
}
