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
//! # Loaded on demand
//!
//! A persisted transaction is in memory once a request has needed it since the start, and
//! from then on until it is forgotten. At start the registry knows only how many each tenant
//! has ([`Registry::restore`]); the rest stay in the store, unloaded. A request that may name
//! an unloaded one (an EO, EE or XA whose TX, or PS, is not in memory, in a tenant that has
//! unloaded ones) gets a [`Lookup`] from [`Registry::lookup`]; the core asks the store for the
//! rows of that tenant with that PS or TX, with no lock held, and hands them to
//! [`Registry::load`] under the lock, which loads the ones it does not hold yet (a second
//! request that read the same row finds it loaded) and then decides as if they had always been
//! in memory: a re-issue resumes at the stored cursor, a TX that names one is taken (EC 809).
//! The persist TTL reaches unloaded ones the same way: the core reads the rows due
//! ([`Registry::lookup_unloaded`]) and loads them, and [`Registry::expire`] forgets them.
//!
//! A row read without the lock may be outdated by the time it is loaded: the transaction may
//! have been loaded and forgotten meanwhile (its delete not yet committed, or failed for lack of
//! space). Every decision to forget one, and every settled delete ([`Registry::settled`]),
//! moves an epoch; a load whose lookup was taken in another epoch is [`Stale`] (the core looks
//! up again), and a row of a transaction being forgotten, or whose row is unsaved, is never
//! loaded. On a store alone, only rows that were in the store at start can be unloaded:
//! everything opened since is in memory.
//!
//! # Several nodes
//!
//! On a store shared by nodes ([`Registry::set_shared`]) the store is what the nodes agree on,
//! so memory keeps only what this node is using. A persisted transaction no connection holds
//! here any more is written as released and leaves memory once that write has settled
//! ([`Registry::settled`]); one loaded only to decide a request leaves it once the request is
//! decided ([`Registry::shed`]). The next request that names it reads the store: the cursor,
//! and the owner, another node may have written since. So `persisted_per_tenant` is counted in
//! the store (the core passes the count with the [`Open`]), the persist TTL reads what is due
//! there, and a write done again after a failure removes a row only if this node forgot that
//! transaction (EE, TTL) and its delete has not committed yet.
//!
//! A persisted transaction belongs to the node that last wrote it as held. When another node
//! takes over (or ends) one held here, the core learns so from the store and hands it to
//! [`Registry::lost`], which ends its delivery as a takeover by another connection here would.
//! While the core cannot be sure to hear of takeovers, deliveries of persisted transactions
//! wait at their gate ([`Registry::pause_persisted`], [`Registry::resume_persisted`]; the gate
//! is open on a store alone). A transaction without PS claims its TX for this node in the
//! store ([`Mutation::ClaimTx`] with its EO's mutations, [`Mutation::UnclaimTx`] when it ends),
//! so that the other nodes refuse that TX; a claim whose write failed for lack of space is
//! written again as it is then, like a row.
//!
//! Files: `delivery` (the task that reads the log for one transaction), `snapshot` (what the
//! registry holds, as operators see it), `tests` with `testkit`.

mod delivery;
mod snapshot;
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
    decode_persisted(request).map(|(tx, _)| tx)
}

/// The TX and XS of a persisted transaction's request.
fn decode_persisted(request: &[u8]) -> Option<(Bytes, bool)> {
    match sdmp::decode_request(request).ok()?.message {
        Message::Eo(eo) => Some((Bytes::copy_from_slice(eo.tx), eo.xs)),
        _ => None,
    }
}

pub use delivery::{deliver, encode_oz, Delivery};
pub use snapshot::{Gauges, TransactionView};

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
/// Ordered by namespace, then TX (the order of the transactions list).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

impl PersistKey {
    fn of(row: &PersistedTransaction) -> PersistKey {
        PersistKey {
            namespace: row.tenant.clone(),
            ps: row.ps.clone(),
        }
    }
}

/// A question for the store the registry needs answered before it can decide a request: the
/// persisted transactions nobody has loaded that the request may name. Taken under the
/// registry's lock ([`Registry::lookup`], [`Registry::lookup_unloaded`]), answered with no lock
/// held, and handed back with the rows found to [`Registry::load`].
#[derive(Debug)]
pub struct Lookup {
    epoch: u64,
}

/// The rows a [`Lookup`] found may be outdated (a persisted transaction was forgotten, or its
/// delete settled, since it was taken): look up again.
#[derive(Debug, PartialEq, Eq)]
pub struct Stale;

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
    /// On a store shared by nodes, how many persisted transactions the namespace has in the
    /// store, counted before deciding an EO with a PS the store does not have (what
    /// `persisted_per_tenant` limits there); `None` otherwise.
    pub stored_persisted: Option<u64>,
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
    /// Which opening of the transaction this is (one number per [`Registry::open`]).
    generation: u64,
    stop: CancellationToken,
    /// Resolves once the delivery has stopped (its sender lives as long as the delivery).
    stopped: oneshot::Receiver<()>,
    out: Outbound,
    dialect: Dialect,
    tx: Bytes,
    /// Its terms, and how far its delivery got (for [`Registry::snapshot`]).
    subscription: Subscription,
    progress: Arc<AtomicU64>,
    paced_until: Option<u64>,
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
    /// On a store shared by nodes: writes of it as released that have not settled yet. Once
    /// the last one has, and no connection holds it again, it leaves memory.
    releasing: usize,
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
            releasing: 0,
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

    /// [`Ended::finish`] for many at once: every delivery is told to stop before any is waited
    /// for, so they stop together rather than one after another.
    pub async fn finish_all(ended: Vec<Ended>) {
        for ended in &ended {
            ended.holder.stop.cancel();
        }
        for ended in ended {
            let _ = ended.holder.stopped.await;
        }
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

/// Every transaction of the service in memory: held ones, and persisted ones nobody holds that
/// were opened or loaded since the start; and how many persisted ones the store holds that
/// are not loaded yet.
#[derive(Default)]
pub struct Registry {
    by_tx: HashMap<TransactionKey, Transaction>,
    /// (namespace, PS) → TX of the persisted transaction.
    by_token: HashMap<PersistKey, Bytes>,
    limits: Limits,
    /// Transactions each connection holds.
    held: HashMap<u64, HashSet<TransactionKey>>,
    /// Persisted transactions of each namespace, loaded or not (a store alone: on a store
    /// shared by nodes, the store counts them).
    persisted: HashMap<Bytes, usize>,
    /// Of those, the ones only the store holds (not loaded since the start).
    unloaded: HashMap<Bytes, usize>,
    /// When the service started: a persisted transaction held when it last stopped counts as
    /// released then.
    started_ms: i64,
    /// Moves with every decision to forget a persisted transaction and every settled delete of
    /// one: rows read in another epoch may be outdated.
    epoch: u64,
    /// Persisted transactions forgotten whose delete has not settled yet, and how many deletes
    /// of each are in flight: their rows may still be in the store, but are not to be loaded.
    forgetting: HashMap<PersistKey, usize>,
    /// Persisted transactions (or ones forgotten since) whose stored row may differ from the
    /// registry: a write of it failed for lack of space. At most one entry per transaction.
    unsaved: HashSet<PersistKey>,
    /// Every delivery's stop token is a child of this one.
    deliveries: CancellationToken,
    /// Other nodes share the store: it may hold persisted transactions this registry never
    /// counted (opened through another node since the start), so a request about a TX or PS
    /// not in memory always looks in the store, and so does the persist TTL.
    shared: bool,
    /// Shared store: persisted transactions loaded for a request, to leave memory again once
    /// it is decided unless a connection holds them then ([`Registry::shed`]).
    loose: Vec<PersistKey>,
    /// Shared store: open while deliveries of persisted transactions may go on (this node
    /// hears the other nodes' takeovers), closed while they pause.
    gate: Option<tokio::sync::watch::Sender<bool>>,
    /// The last [`Holder::generation`] given.
    generations: u64,
    /// Shared store: persisted transactions forgotten here whose delete has not committed
    /// yet. Only these may be deleted by a write done again ([`Registry::resave`]): a row of a
    /// transaction that left memory otherwise (released, or owned by another node now) is not
    /// this node's to remove.
    deleting: HashSet<PersistKey>,
    /// Shared store: TX claims whose write failed for lack of space, to be written again as
    /// they are then ([`Registry::resave`]).
    unsaved_claims: HashSet<TransactionKey>,
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

/// The TX a claim (or its release) is about, if the mutation is one.
fn claimed_key(mutation: &Mutation) -> Option<TransactionKey> {
    match mutation {
        Mutation::ClaimTx { tenant, tx } | Mutation::UnclaimTx { tenant, tx } => {
            Some(TransactionKey {
                namespace: tenant.clone(),
                tx: tx.clone(),
            })
        }
        _ => None,
    }
}

fn no_transaction() -> Rejection {
    Rejection::new(
        ErrorCode::NoSuchTransaction,
        "no active transaction of that TX",
    )
}

/// EC 809: TX names a transaction that is active (here or on another node).
pub fn tx_taken() -> Rejection {
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

    /// What the store held at start: how many persisted transactions each namespace has, none
    /// of them loaded. One that was held when the service stopped counts as released at
    /// `started_ms` (its TTL starts again).
    pub fn restore(&mut self, counts: Vec<(Bytes, u64)>, started_ms: i64) {
        for (namespace, count) in counts {
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            if count == 0 {
                continue;
            }
            *self.persisted.entry(namespace.clone()).or_default() += count;
            *self.unloaded.entry(namespace).or_default() += count;
        }
        self.started_ms = started_ms;
    }

    /// Whether deciding a request of `namespace` about `tx` (and `ps`, for an EO with PS) needs
    /// the store first: only if the namespace has persisted transactions that are not loaded
    /// (or the store is shared), and `tx` or `ps` names nothing in memory (a TX or PS in
    /// memory names no unloaded one).
    pub fn lookup(&self, namespace: &Bytes, tx: &[u8], ps: Option<&[u8]>) -> Option<Lookup> {
        if !self.shared && !self.unloaded.contains_key(namespace) {
            return None;
        }
        let tx_known = self.by_tx.contains_key(&TransactionKey::new(namespace, tx));
        let ps_known = ps.is_none_or(|ps| {
            self.by_token.contains_key(&PersistKey {
                namespace: namespace.clone(),
                ps: Bytes::copy_from_slice(ps),
            })
        });
        (!(tx_known && ps_known)).then_some(Lookup { epoch: self.epoch })
    }

    /// A lookup of any unloaded persisted transactions (those due for the persist TTL); none
    /// when every one is loaded.
    pub fn lookup_unloaded(&self) -> Option<Lookup> {
        (self.shared || !self.unloaded.is_empty()).then_some(Lookup { epoch: self.epoch })
    }

    /// Other nodes share the store (see the field): the store counts the persisted
    /// transactions, not memory; deliveries of persisted transactions wait until
    /// [`Registry::resume_persisted`].
    pub fn set_shared(&mut self) {
        self.shared = true;
        self.persisted.clear();
        self.unloaded.clear();
        self.gate = Some(tokio::sync::watch::Sender::new(false));
    }

    /// When a persisted transaction held when the service last stopped counts as released.
    pub fn started_ms(&self) -> i64 {
        self.started_ms
    }

    /// Loads the rows `lookup` found that are not in memory, as persisted transactions nobody
    /// holds, each with its stored cursor. Rows of transactions loaded already (by another
    /// request since) are left as they are; rows of transactions being forgotten, or whose row
    /// is unsaved, are not theirs any more and are ignored. [`Stale`] when such a row may be
    /// outdated: look up again. Returns the mutations to submit: a row that cannot be loaded
    /// (its EO no longer decodes, or its TX names another transaction) is forgotten.
    pub fn load(
        &mut self,
        lookup: &Lookup,
        rows: Vec<PersistedTransaction>,
    ) -> Result<Vec<Mutation>, Stale> {
        let fresh: Vec<PersistedTransaction> = rows
            .into_iter()
            .filter(|row| {
                let key = PersistKey::of(row);
                !self.by_token.contains_key(&key)
                    && !self.forgetting.contains_key(&key)
                    && !self.unsaved.contains(&key)
            })
            .collect();
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        if lookup.epoch != self.epoch {
            return Err(Stale);
        }
        let mut mutations = Vec::new();
        for row in fresh {
            let key = PersistKey::of(&row);
            decrement(&mut self.unloaded, &row.tenant);
            let decoded = decode_persisted(&row.request)
                .map(|(tx, xs)| (TransactionKey::new(&row.tenant, &tx), xs))
                .filter(|(tx, _)| !self.by_tx.contains_key(tx));
            let Some((tx_key, sequenced)) = decoded else {
                tracing::warn!(
                    tenant = %String::from_utf8_lossy(&row.tenant),
                    ps = %String::from_utf8_lossy(&row.ps),
                    "forgetting a persisted transaction whose EO no longer decodes, or whose TX \
                     names another transaction"
                );
                decrement(&mut self.persisted, &row.tenant);
                mutations.push(self.forget(key));
                continue;
            };
            let persisting = Persisting {
                token: row.ps,
                request: row.request,
            };
            let mut persist = Persist::new(persisting, sequenced, row.cursor);
            persist.released_ms = Some(row.released_ms.unwrap_or(self.started_ms));
            if self.shared {
                self.loose.push(key.clone());
            }
            self.by_token.insert(key, tx_key.tx.clone());
            self.by_tx.insert(
                tx_key,
                Transaction {
                    holder: None,
                    persist: Some(persist),
                },
            );
        }
        Ok(mutations)
    }

    /// Opens a transaction, or re-issues a persisted one (same namespace and PS), whose
    /// delivery starts at the cursor on `open.out`; `log_end` is the log's last sequence number.
    /// Decides from what is in memory: the core loads first what [`Registry::lookup`] asks for.
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
        let holds = self.held.get(&open.connection).map_or(0, HashSet::len);
        if holds - usize::from(held_here) >= self.limits.per_connection {
            return Err(limit_reached("transactions_per_connection"));
        }
        let persisted = match self.shared {
            // Every node's count: the store's.
            true => open
                .stored_persisted
                .map_or(0, |count| usize::try_from(count).unwrap_or(usize::MAX)),
            false => self.persisted.get(&open.namespace).copied().unwrap_or(0),
        };
        if open.persist.is_some()
            && previous_tx.is_none()
            && persisted >= self.limits.persisted_per_tenant
        {
            return Err(limit_reached("persisted_per_tenant"));
        }
        let previous_key = previous_tx.cloned().map(|tx| TransactionKey {
            namespace: open.namespace.clone(),
            tx,
        });
        let previous = previous_key.and_then(|previous_key| {
            let previous = self.by_tx.remove(&previous_key)?;
            if let Some(holder) = &previous.holder {
                self.unhold(holder.connection, &previous_key);
            }
            Some(previous)
        });
        let (previous_persist, taken_over) = match previous {
            Some(Transaction { holder, persist }) => {
                (persist, holder.map(|holder| Ended { holder }))
            }
            None => (None, None),
        };
        if open.persist.is_some() && previous_persist.is_none() && !self.shared {
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
        if persist.is_none() && self.shared {
            // The other nodes refuse its TX while it is open here.
            mutations.push(Mutation::ClaimTx {
                tenant: key.namespace.clone(),
                tx: key.tx.clone(),
            });
        }
        self.generations += 1;
        let generation = self.generations;

        let stop = self.deliveries.child_token();
        let (stopped_tx, stopped) = oneshot::channel();
        // A persisted transaction rolls its backlog forward at its rate; live events follow.
        let paced_until = persist
            .as_ref()
            .map(|_| log_end)
            .filter(|end| *end > cursor);
        let progress = Arc::new(AtomicU64::new(cursor));
        let gate = match (&persist, &self.gate) {
            (Some(_), Some(gate)) => Some(gate.subscribe()),
            _ => None,
        };
        let delivery = Delivery {
            gate,
            subscription: open.subscription.clone(),
            cursor,
            paced_until,
            cursors: persist
                .as_ref()
                .map(|p| (p.delivered.clone(), p.queued.clone())),
            out: open.out.clone(),
            stop: stop.clone(),
            stopped: stopped_tx,
            progress: progress.clone(),
        };
        self.held
            .entry(open.connection)
            .or_default()
            .insert(key.clone());
        self.by_tx.insert(
            key,
            Transaction {
                holder: Some(Holder {
                    connection: open.connection,
                    generation,
                    stop,
                    stopped,
                    out: open.out,
                    dialect: open.subscription.dialect,
                    tx: open.subscription.tx.clone(),
                    subscription: open.subscription,
                    progress,
                    paced_until,
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
            self.unhold(holder.connection, key);
        }
        let mut mutations = Vec::new();
        match transaction.persist {
            Some(persist) => {
                decrement(&mut self.persisted, &key.namespace);
                let persist_key = persist.key(&key.namespace);
                self.by_token.remove(&persist_key);
                mutations.push(self.forget(persist_key));
            }
            None if self.shared => mutations.push(Mutation::UnclaimTx {
                tenant: key.namespace.clone(),
                tx: key.tx.clone(),
            }),
            None => {}
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
        let held = self.held.remove(&connection).unwrap_or_default();
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
                    if self.shared {
                        // Leaves memory once that is written (see `settled`).
                        persist.releasing += 1;
                    }
                }
                None => {
                    self.by_tx.remove(&key);
                    if self.shared {
                        mutations.push(Mutation::UnclaimTx {
                            tenant: key.namespace.clone(),
                            tx: key.tx.clone(),
                        });
                    }
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

    /// Forgets persisted transactions in memory nobody has held for `ttl_ms` (unloaded ones
    /// once loaded: see [`Registry::lookup_unloaded`]).
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
            let persist_key = persist.key(&key.namespace);
            self.by_token.remove(&persist_key);
            tracing::info!(
                tenant = %String::from_utf8_lossy(&key.namespace),
                ps = %String::from_utf8_lossy(&persist.token),
                "persisted transaction expired: no connection held it for the persist TTL"
            );
            metrics::counter!("ozbus_persisted_transactions_expired_total").increment(1);
            mutations.push(self.forget(persist_key));
        }
        mutations
    }

    /// The writes in `failed` did not reach the store (it is out of space): the rows they
    /// wrote are to be written again, from what the registry then holds.
    pub fn unsaved(&mut self, failed: &[Mutation]) {
        self.unsaved.extend(failed.iter().filter_map(written_key));
        self.unsaved_claims
            .extend(failed.iter().filter_map(claimed_key));
    }

    /// Registry mutations the core submitted have settled: committed, or failed (for lack of
    /// space when `out_of_space`: then their rows are [`Registry::unsaved`]). Call exactly once
    /// for every batch of them, in one go with that (under the same lock).
    pub fn settled(&mut self, mutations: &[Mutation], out_of_space: bool) {
        if out_of_space {
            self.unsaved(mutations);
        }
        let mut deletes = false;
        for mutation in mutations {
            match mutation {
                Mutation::DeleteTransaction { tenant, ps } => {
                    let key = PersistKey {
                        namespace: tenant.clone(),
                        ps: ps.clone(),
                    };
                    decrement(&mut self.forgetting, &key);
                    if !out_of_space {
                        self.deleting.remove(&key);
                    }
                    deletes = true;
                }
                Mutation::PutTransaction(row) if self.shared && row.released_ms.is_some() => {
                    self.released(PersistKey::of(row));
                }
                _ => {}
            }
        }
        if deletes {
            self.epoch += 1;
        }
    }

    /// Shared store: a write of `key` as released settled. Once none is in flight, a
    /// transaction no connection holds again leaves memory, unless its row is still to be
    /// written (unsaved): the next request that names it reads the store, which has it as
    /// every node does.
    fn released(&mut self, key: PersistKey) {
        let Some(tx_key) = self.tx_key(&key) else {
            return;
        };
        let Some(transaction) = self.by_tx.get_mut(&tx_key) else {
            return;
        };
        let Some(persist) = transaction.persist.as_mut() else {
            return;
        };
        persist.releasing = persist.releasing.saturating_sub(1);
        if persist.releasing == 0 && transaction.holder.is_none() && !self.unsaved.contains(&key) {
            self.by_tx.remove(&tx_key);
            self.by_token.remove(&key);
            // A row read before that write committed is outdated.
            self.epoch += 1;
        }
    }

    /// The name of the persisted transaction `key`, if it is in memory.
    fn tx_key(&self, key: &PersistKey) -> Option<TransactionKey> {
        self.by_token.get(key).map(|tx| TransactionKey {
            namespace: key.namespace.clone(),
            tx: tx.clone(),
        })
    }

    /// Shared store: the persisted transactions loaded for the requests decided since the
    /// last call leave memory, unless a connection holds them now (or their row is in flight
    /// or unsaved). Call once a request is decided, under the same lock.
    pub fn shed(&mut self) {
        for key in std::mem::take(&mut self.loose) {
            let Some(tx_key) = self.tx_key(&key) else {
                continue;
            };
            let idle = self.by_tx.get(&tx_key).is_some_and(|t| {
                t.holder.is_none() && t.persist.as_ref().is_some_and(|p| p.releasing == 0)
            });
            if idle && !self.unsaved.contains(&key) {
                self.by_tx.remove(&tx_key);
                self.by_token.remove(&key);
            }
        }
    }

    /// Shared store: the persisted transactions a connection holds here ((tenant, PS), and
    /// which opening holds it), all of them or those of `only`.
    pub fn held_persisted(&self, only: Option<&[(Bytes, Bytes)]>) -> Vec<((Bytes, Bytes), u64)> {
        let held = |key: &PersistKey| {
            let tx_key = self.tx_key(key)?;
            let holder = self.by_tx.get(&tx_key)?.holder.as_ref()?;
            Some(((key.namespace.clone(), key.ps.clone()), holder.generation))
        };
        match only {
            Some(keys) => keys
                .iter()
                .filter_map(|(namespace, ps)| {
                    held(&PersistKey {
                        namespace: namespace.clone(),
                        ps: ps.clone(),
                    })
                })
                .collect(),
            None => self.by_token.keys().filter_map(held).collect(),
        }
    }

    /// Shared store: another node owns these persisted transactions now (it took them over,
    /// or they were ended there). Each one still held by the same opening leaves this node
    /// altogether: its delivery ends (as when another connection takes it over here: the
    /// connection is told with EF), and nothing more is written of it.
    pub fn lost(&mut self, keys: Vec<((Bytes, Bytes), u64)>) -> Vec<Ended> {
        let mut ended = Vec::new();
        for ((namespace, ps), generation) in keys {
            let key = PersistKey { namespace, ps };
            let Some(tx_key) = self.tx_key(&key) else {
                continue;
            };
            let same = self
                .by_tx
                .get(&tx_key)
                .and_then(|t| t.holder.as_ref())
                .is_some_and(|h| h.generation == generation);
            if !same {
                continue;
            }
            let Some(transaction) = self.by_tx.remove(&tx_key) else {
                continue;
            };
            self.by_token.remove(&key);
            self.unsaved.remove(&key);
            self.epoch += 1;
            if let Some(holder) = transaction.holder {
                self.unhold(holder.connection, &tx_key);
                // Stopped now, under the lock: a gate that opens before whoever finishes it
                // gets to it must not let it send again.
                holder.stop.cancel();
                ended.push(Ended { holder });
            }
        }
        ended
    }

    /// Shared store: deliveries of persisted transactions pause (this node may not hear that
    /// another node takes one over)...
    pub fn pause_persisted(&self) {
        if let Some(gate) = &self.gate {
            gate.send_replace(false);
        }
    }

    /// ... and go on (this node hears again, and has checked what it holds).
    pub fn resume_persisted(&self) {
        if let Some(gate) = &self.gate {
            gate.send_replace(true);
        }
    }

    /// Writes that bring the stored rows of the transactions `of` writes to what the registry
    /// holds now, and count them as saved: the whole row, with its cursor set exactly (never
    /// behind what was confirmed to a client: the registry's cursor is at or beyond anything
    /// it confirmed), or the row's removal if the transaction is gone.
    pub fn resave(&mut self, of: &[Mutation]) -> Vec<Mutation> {
        let keys: HashSet<PersistKey> = of.iter().filter_map(written_key).collect();
        let claims: HashSet<TransactionKey> = of.iter().filter_map(claimed_key).collect();
        let mut mutations: Vec<Mutation> = keys
            .into_iter()
            .flat_map(|key| self.resave_one(key))
            .collect();
        mutations.extend(claims.into_iter().map(|key| self.resave_claim(key)));
        mutations
    }

    /// [`Registry::resave`] for every row [`Registry::unsaved`] was told of.
    pub fn resave_unsaved(&mut self) -> Vec<Mutation> {
        let keys: Vec<PersistKey> = self.unsaved.drain().collect();
        let mut mutations: Vec<Mutation> = keys
            .into_iter()
            .flat_map(|key| self.resave_one(key))
            .collect();
        let claims: Vec<TransactionKey> = self.unsaved_claims.drain().collect();
        mutations.extend(claims.into_iter().map(|key| self.resave_claim(key)));
        mutations
    }

    /// The claim of TX `key` as it is now: this node's while a transaction without PS is open
    /// under it here, else none.
    fn resave_claim(&mut self, key: TransactionKey) -> Mutation {
        self.unsaved_claims.remove(&key);
        let open = self.by_tx.get(&key).is_some_and(|t| t.persist.is_none());
        let TransactionKey { namespace, tx } = key;
        match open {
            true => Mutation::ClaimTx {
                tenant: namespace,
                tx,
            },
            false => Mutation::UnclaimTx {
                tenant: namespace,
                tx,
            },
        }
    }

    fn resave_one(&mut self, key: PersistKey) -> Vec<Mutation> {
        self.unsaved.remove(&key);
        let shared = self.shared;
        let mut held = false;
        let found = self.by_token.get(&key).cloned().and_then(|tx| {
            let tx_key = TransactionKey {
                namespace: key.namespace.clone(),
                tx,
            };
            let transaction = self.by_tx.get_mut(&tx_key)?;
            held = transaction.holder.is_some();
            let persist = transaction.persist.as_mut()?;
            Some((tx_key, persist))
        });
        match found {
            Some((tx_key, persist)) => {
                let row = persist.row(&tx_key);
                if shared && row.released_ms.is_some() && !held {
                    persist.releasing += 1;
                }
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
            None if self.shared && !self.deleting.contains(&key) => Vec::new(),
            None => vec![self.forget(key)],
        }
    }

    /// The delete of a persisted transaction the registry no longer holds, counted as in
    /// flight until it settles.
    fn forget(&mut self, key: PersistKey) -> Mutation {
        *self.forgetting.entry(key.clone()).or_default() += 1;
        if self.shared {
            self.deleting.insert(key.clone());
        }
        self.epoch += 1;
        Mutation::DeleteTransaction {
            tenant: key.namespace,
            ps: key.ps,
        }
    }

    /// `key` is no longer held by `connection`.
    fn unhold(&mut self, connection: u64, key: &TransactionKey) {
        if let Some(held) = self.held.get_mut(&connection) {
            held.remove(key);
            if held.is_empty() {
                self.held.remove(&connection);
            }
        }
    }

    /// What stops every delivery at once when cancelled (the service is stopping); the
    /// transactions stay as they are, held ones as held when it stopped.
    pub fn deliveries(&self) -> CancellationToken {
        self.deliveries.clone()
    }
}
