//! The one interface the service has to durable state, and the handle it holds: whichever
//! database keeps the state, the service above the store sees [`Store`] and nothing else.
//!
//! Owns: the [`Backend`] trait (what a store must do, with the promises each method makes),
//! its two implementations (by delegation to [`SqliteStore`] and [`PgStore`], which hold the
//! behaviour and document it), and the choice between them at open ([`Store::open`]: a
//! `postgres://` URL selects PostgreSQL, else SQLite in the data directory).
//!
//! Never: behaviour of its own. A method here only forwards; what a backend promises is
//! written once, on the trait, and kept by both (the same tests run against both).

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{broadcast, watch};

use super::model::{CallRecord, Mutation, Outcome, PersistedTransaction, UsedKey};
use super::postgres::{PgOptions, PgStore};
use super::{
    CommitTicket, OutcomePage, OutcomeQuery, SqliteStore, StoreError, StoreOptions, StoreStats,
};

/// One step of [`Backend::held_at_stop`]: the rows found, and where the next step starts.
pub type HeldStep = (Vec<PersistedTransaction>, Option<i64>);

/// Which node holds the call book: the one node that decides every call report and closes
/// calls that fall due. One store alone (SQLite) always holds it; nodes sharing a database
/// (PostgreSQL) hold it one at a time, each time under a new epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookHolder {
    /// This node, since it took the book under `epoch`. Its batches that change call records
    /// or append outcomes commit only while `epoch` is the database's; once another node took
    /// the book they fail with [`StoreError::NotHolder`], untried or at commit.
    Me { epoch: i64 },
    /// Another node, which takes reports at `addr` (its advertised SDMP address) from nodes
    /// that present the cluster's secret (see [`Backend::cluster_secret`]).
    Peer { node: i64, epoch: i64, addr: String },
    /// Nobody known: the database is away, or the holder went and nobody took over yet.
    Unknown,
}

/// Another node may have taken over (or ended) a persisted transaction: what a store shared by
/// nodes hears when one of them writes a transaction as held that another node held, or deletes
/// one that was held. Only a wake-up: whether this node still owns what it holds is read with
/// [`Backend::not_owned`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerChange {
    /// The node that owns it now (0: nobody, it was deleted).
    pub node: i64,
    /// Its (tenant, PS); `None`: any (check every one held).
    pub key: Option<(Bytes, Bytes)>,
}

/// What the service needs of a store.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Queues a batch; every mutation of it commits atomically, batches in submission order.
    /// The ticket resolves once the batch is durable (`Ok` with the seqs its `Append`s got, in
    /// order) or failed (nothing of it was written). Never blocks.
    fn submit(&self, batch: Vec<Mutation>) -> CommitTicket;

    /// A write failed for lack of space, and no probe found room since.
    fn is_full(&self) -> bool;

    /// Batches that change call records or the log fail untried, until
    /// [`reload_records`](Backend::reload_records) (after a batch of them failed for space).
    fn fenced(&self) -> bool;

    /// Every open call record as committed after every batch submitted before this call; lowers
    /// the fence.
    fn reload_records(&self) -> BoxFuture<'static, Result<Vec<CallRecord>, StoreError>>;

    /// Every open call record, at start.
    fn load_records(&self) -> BoxFuture<'_, Result<Vec<CallRecord>, StoreError>>;

    /// Every persisted transaction (tests and tools: the service reads them one at a time).
    fn load_transactions(&self) -> BoxFuture<'_, Result<Vec<PersistedTransaction>, StoreError>>;

    /// How many persisted transactions each tenant has (start-up: counted, none read).
    fn count_transactions(&self) -> BoxFuture<'_, Result<Vec<(Bytes, u64)>, StoreError>>;

    /// The persisted transactions of `tenant` with PersistToken `ps`, or TX `tx`: none, one, or
    /// two (one each way), as committed before the read starts; by index seeks, never a scan.
    fn find_transactions<'a>(
        &'a self,
        tenant: &'a [u8],
        ps: Option<&'a [u8]>,
        tx: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<PersistedTransaction>, StoreError>>;

    /// One page of persisted transactions in (tenant, TX) order: at most `limit` after
    /// `after` (exclusive; `None`: from the first), of `tenant` only when given; a range of an
    /// index, never a scan of the table (operators' lists).
    fn list_transactions<'a>(
        &'a self,
        tenant: Option<&'a [u8]>,
        after: Option<(&'a [u8], &'a [u8])>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<PersistedTransaction>, StoreError>>;

    /// At most `limit` persisted transactions that nobody has held since `cutoff_ms` or
    /// earlier, the longest released first (for the persist TTL).
    fn released_transactions(
        &self,
        cutoff_ms: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<PersistedTransaction>, StoreError>>;

    /// One step of a pass over every persisted transaction, for those still marked held by a
    /// holder that is gone: held when this store last stopped (SQLite), or by a node that is
    /// no longer alive (PostgreSQL). They count as released: from the `released_ms` a row
    /// comes with, or, without one, from the service's start. The step reads at most `scan`
    /// rows after position `after` (0: from the start) and returns those found, and the
    /// position of the next step (`None`: the pass is done). When the store is
    /// [`shared_by_nodes`](Backend::shared_by_nodes), a later pass can find more, and finds
    /// only what holders gone since the last complete pass began held (none gone: nothing).
    fn held_at_stop(&self, after: i64, scan: usize) -> BoxFuture<'_, Result<HeldStep, StoreError>>;

    /// Up to `limit` outcomes after `after`, in log order, and at most about `max_bytes` of
    /// them (always at least one, if there is one); from memory when they are recent.
    fn read_after_bounded(
        &self,
        after: u64,
        limit: usize,
        max_bytes: u64,
    ) -> BoxFuture<'_, Result<Vec<Arc<Outcome>>, StoreError>>;

    /// The last sequence number committed (by any node).
    fn last_seq(&self) -> u64;

    /// Follows [`last_seq`](Backend::last_seq).
    fn watch_last_seq(&self) -> watch::Receiver<u64>;

    /// The oldest sequence number retention kept; `None` while the log is empty.
    fn oldest_seq(&self) -> Option<u64>;

    /// Commits and their time since the store opened, and the log's size.
    fn stats(&self) -> StoreStats;

    /// The latest outcome of campaign `cn` in `tenant` with session `si`, or (without `si`)
    /// for number `tn` (see UO in docs/protocol.md).
    fn latest_outcome<'a>(
        &'a self,
        tenant: &'a [u8],
        cn: &'a [u8],
        si: Option<&'a [u8]>,
        tn: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Option<Arc<Outcome>>, StoreError>>;

    /// Idempotency key `key` of `tenant`, if it was committed at or after `since_ms`: with the
    /// first seq its batch appended.
    fn key_committed<'a>(
        &'a self,
        tenant: &'a [u8],
        key: &'a [u8],
        since_ms: i64,
    ) -> BoxFuture<'a, Result<Option<UsedKey>, StoreError>>;

    /// One page of the outcomes `query` asks for: cut by sequence number, never past the log
    /// end published before the read, so that paging is stable while outcomes are appended
    /// (see `query.rs`).
    fn outcomes(&self, query: OutcomeQuery) -> BoxFuture<'_, Result<OutcomePage, StoreError>>;

    /// The newest `limit` outcomes of campaign `cn` in `tenant` with session `si`, oldest
    /// first (corrections of the call among them).
    fn call_outcomes<'a>(
        &'a self,
        tenant: &'a [u8],
        cn: &'a [u8],
        si: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Arc<Outcome>>, StoreError>>;

    /// The open call record of `tenant` with session `si`, as last committed.
    fn open_record<'a>(
        &'a self,
        tenant: &'a [u8],
        si: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<CallRecord>, StoreError>>;

    /// Applies retention now, as of `now_ms`; returns how many outcomes it removed.
    fn trim(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Stops accepting, commits everything queued before the call, and releases the database.
    /// A second close, and everything after the first, fails with `StoreError::Closed`.
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Whether [`close`](Backend::close) was called.
    fn is_closed(&self) -> bool;

    /// Whether other nodes may use the same state at the same time (PostgreSQL): holders of
    /// persisted transactions can then go while this store is open.
    fn shared_by_nodes(&self) -> bool;

    /// Follows which node holds the call book. A store shared by nodes competes for it only
    /// once it was given the address at which it takes reports from its peers
    /// ([`advertise`](Backend::advertise)); until then it is never `Me`.
    fn book_holder(&self) -> watch::Receiver<BookHolder>;

    /// Offers to hold the call book, taking reports from peers at `addr` (an SDMP listener's
    /// address as other nodes reach it). Without effect on a store that is not shared.
    fn advertise(&self, addr: String);

    /// The secret a node presents to the book's holder (UA of user [`NODE_USER`] in the
    /// landlord tenant, PW the secret): the same for every node of one database, created with
    /// it, and known only to those who can read it. `None` when not shared.
    fn cluster_secret(&self) -> Option<Bytes>;

    /// Whether this node hears what other nodes announce: `None` while it cannot (its
    /// listening connection is down: a takeover may go unheard), then a number that changes
    /// each time it starts hearing again. A store that is not shared always hears.
    fn hearing(&self) -> watch::Receiver<Option<u64>>;

    /// Follows takeovers and ends of persisted transactions by other nodes, as heard (see
    /// [`OwnerChange`]); a store that is not shared never sends one.
    fn owner_changes(&self) -> broadcast::Receiver<OwnerChange>;

    /// Of the persisted transactions `keys` ((tenant, PS) each), those this node does not own
    /// any more, as committed before the read starts: another node wrote it as held since, it
    /// is written as released, or it is gone. One query. Always none on a store that is not
    /// shared.
    fn not_owned<'a>(
        &'a self,
        keys: &'a [(Bytes, Bytes)],
    ) -> BoxFuture<'a, Result<Vec<(Bytes, Bytes)>, StoreError>>;

    /// Whether another node that is alive has a transaction without PS open under TX `tx` in
    /// the TX namespace `tenant` (see [`Mutation::ClaimTx`]); an index seek. Always false on a
    /// store that is not shared.
    fn tx_active_elsewhere<'a>(
        &'a self,
        tenant: &'a [u8],
        tx: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// How many persisted transactions `tenant` has, as committed; a range of an index.
    fn count_persisted<'a>(&'a self, tenant: &'a [u8]) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// The backend itself, for tests that drive one backend's own hooks.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// The user name under which a node forwards reports to the book's holder.
pub const NODE_USER: &str = "ozbus-node";

/// The store the service holds: one backend, shared by every task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store(Arc<dyn Backend>);

impl Store {
    /// Opens the backend `options` name: PostgreSQL for a `postgres://` (or `postgresql://`)
    /// URL, else SQLite in `options.dir`.
    pub async fn open(options: StoreOptions) -> Result<Store, StoreError> {
        match &options.url {
            Some(url) => {
                let store = PgStore::open(PgOptions::from_store_options(url, &options)).await?;
                Ok(Store(Arc::new(store)))
            }
            None => {
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(options))
                    .await
                    .map_err(|_| StoreError::WriterPanicked)??;
                Ok(Store(Arc::new(store)))
            }
        }
    }

    /// A store on a backend opened elsewhere (tests).
    pub fn from_backend(backend: impl Backend) -> Store {
        Store(Arc::new(backend))
    }

    /// The SQLite store underneath, for tests that use its hooks (it must be one).
    #[cfg(test)]
    pub(crate) fn sqlite(&self) -> &SqliteStore {
        self.0
            .as_any()
            .downcast_ref()
            .expect("a test of SQLite's hooks on another backend")
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &(dyn Backend + 'static) {
        &*self.0
    }
}

/// The methods both backends forward as they are: the same name, arguments and result on
/// `$store`'s own impl. (What differs, blocking SQLite calls moved off the runtime, is written
/// out in each impl below.)
macro_rules! forward {
    ($store:ident) => {
        fn submit(&self, batch: Vec<Mutation>) -> CommitTicket {
            $store::submit(self, batch)
        }

        fn is_full(&self) -> bool {
            $store::is_full(self)
        }

        fn fenced(&self) -> bool {
            $store::fenced(self)
        }

        fn reload_records(&self) -> BoxFuture<'static, Result<Vec<CallRecord>, StoreError>> {
            $store::reload_records(self).boxed()
        }

        fn read_after_bounded(
            &self,
            after: u64,
            limit: usize,
            max_bytes: u64,
        ) -> BoxFuture<'_, Result<Vec<Arc<Outcome>>, StoreError>> {
            $store::read_after_bounded(self, after, limit, max_bytes).boxed()
        }

        fn find_transactions<'a>(
            &'a self,
            tenant: &'a [u8],
            ps: Option<&'a [u8]>,
            tx: &'a [u8],
        ) -> BoxFuture<'a, Result<Vec<PersistedTransaction>, StoreError>> {
            $store::find_transactions(self, tenant, ps, tx).boxed()
        }

        fn list_transactions<'a>(
            &'a self,
            tenant: Option<&'a [u8]>,
            after: Option<(&'a [u8], &'a [u8])>,
            limit: usize,
        ) -> BoxFuture<'a, Result<Vec<PersistedTransaction>, StoreError>> {
            $store::list_transactions(self, tenant, after, limit).boxed()
        }

        fn released_transactions(
            &self,
            cutoff_ms: i64,
            limit: usize,
        ) -> BoxFuture<'_, Result<Vec<PersistedTransaction>, StoreError>> {
            $store::released_transactions(self, cutoff_ms, limit).boxed()
        }

        fn held_at_stop(
            &self,
            after: i64,
            scan: usize,
        ) -> BoxFuture<'_, Result<HeldStep, StoreError>> {
            $store::held_at_stop(self, after, scan).boxed()
        }

        fn last_seq(&self) -> u64 {
            $store::last_seq(self)
        }

        fn watch_last_seq(&self) -> watch::Receiver<u64> {
            $store::watch_last_seq(self)
        }

        fn oldest_seq(&self) -> Option<u64> {
            $store::oldest_seq(self)
        }

        fn stats(&self) -> StoreStats {
            $store::stats(self)
        }

        fn latest_outcome<'a>(
            &'a self,
            tenant: &'a [u8],
            cn: &'a [u8],
            si: Option<&'a [u8]>,
            tn: Option<&'a [u8]>,
        ) -> BoxFuture<'a, Result<Option<Arc<Outcome>>, StoreError>> {
            $store::latest_outcome(self, tenant, cn, si, tn).boxed()
        }

        fn key_committed<'a>(
            &'a self,
            tenant: &'a [u8],
            key: &'a [u8],
            since_ms: i64,
        ) -> BoxFuture<'a, Result<Option<UsedKey>, StoreError>> {
            $store::key_committed(self, tenant, key, since_ms).boxed()
        }

        fn outcomes(&self, query: OutcomeQuery) -> BoxFuture<'_, Result<OutcomePage, StoreError>> {
            $store::outcomes(self, query).boxed()
        }

        fn call_outcomes<'a>(
            &'a self,
            tenant: &'a [u8],
            cn: &'a [u8],
            si: &'a [u8],
            limit: usize,
        ) -> BoxFuture<'a, Result<Vec<Arc<Outcome>>, StoreError>> {
            $store::call_outcomes(self, tenant, cn, si, limit).boxed()
        }

        fn open_record<'a>(
            &'a self,
            tenant: &'a [u8],
            si: &'a [u8],
        ) -> BoxFuture<'a, Result<Option<CallRecord>, StoreError>> {
            $store::open_record(self, tenant, si).boxed()
        }

        fn trim(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
            $store::trim(self, now_ms).boxed()
        }

        fn is_closed(&self) -> bool {
            $store::is_closed(self)
        }

        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    };
}

impl Backend for SqliteStore {
    forward!(SqliteStore);

    fn load_records(&self) -> BoxFuture<'_, Result<Vec<CallRecord>, StoreError>> {
        let store = self.clone();
        blocking(move || store.load_records())
    }

    fn load_transactions(&self) -> BoxFuture<'_, Result<Vec<PersistedTransaction>, StoreError>> {
        let store = self.clone();
        blocking(move || store.load_transactions())
    }

    fn count_transactions(&self) -> BoxFuture<'_, Result<Vec<(Bytes, u64)>, StoreError>> {
        let store = self.clone();
        blocking(move || store.count_transactions())
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let store = self.clone();
        blocking(move || store.close())
    }

    fn shared_by_nodes(&self) -> bool {
        false
    }

    fn book_holder(&self) -> watch::Receiver<BookHolder> {
        // Alone on its directory: the book is this store's for as long as it is open.
        watch::channel(BookHolder::Me { epoch: 0 }).1
    }

    fn advertise(&self, _addr: String) {}

    fn cluster_secret(&self) -> Option<Bytes> {
        None
    }

    fn hearing(&self) -> watch::Receiver<Option<u64>> {
        // Alone: there is nobody to hear, and nothing to miss.
        watch::channel(Some(0)).1
    }

    fn owner_changes(&self) -> broadcast::Receiver<OwnerChange> {
        broadcast::channel(1).1
    }

    fn not_owned<'a>(
        &'a self,
        _keys: &'a [(Bytes, Bytes)],
    ) -> BoxFuture<'a, Result<Vec<(Bytes, Bytes)>, StoreError>> {
        async { Ok(Vec::new()) }.boxed()
    }

    fn tx_active_elsewhere<'a>(
        &'a self,
        _tenant: &'a [u8],
        _tx: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async { Ok(false) }.boxed()
    }

    fn count_persisted<'a>(&'a self, tenant: &'a [u8]) -> BoxFuture<'a, Result<u64, StoreError>> {
        let (store, tenant) = (self.clone(), tenant.to_vec());
        blocking(move || {
            let counts = store.count_transactions()?;
            Ok(counts
                .into_iter()
                .find(|(t, _)| *t == tenant[..])
                .map_or(0, |(_, count)| count))
        })
    }
}

/// SQLite's blocking calls (a read at start, the close that waits for the last commit) on
/// the runtime's blocking threads.
fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> BoxFuture<'static, Result<T, StoreError>> {
    async move {
        tokio::task::spawn_blocking(call)
            .await
            .map_err(|_| StoreError::WriterPanicked)?
    }
    .boxed()
}

impl Backend for PgStore {
    forward!(PgStore);

    fn load_records(&self) -> BoxFuture<'_, Result<Vec<CallRecord>, StoreError>> {
        PgStore::load_records(self).boxed()
    }

    fn load_transactions(&self) -> BoxFuture<'_, Result<Vec<PersistedTransaction>, StoreError>> {
        PgStore::load_transactions(self).boxed()
    }

    fn count_transactions(&self) -> BoxFuture<'_, Result<Vec<(Bytes, u64)>, StoreError>> {
        PgStore::count_transactions(self).boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        PgStore::close(self.clone()).boxed()
    }

    fn shared_by_nodes(&self) -> bool {
        true
    }

    fn book_holder(&self) -> watch::Receiver<BookHolder> {
        PgStore::book_holder(self)
    }

    fn advertise(&self, addr: String) {
        PgStore::advertise(self, addr)
    }

    fn cluster_secret(&self) -> Option<Bytes> {
        Some(PgStore::cluster_secret(self))
    }

    fn hearing(&self) -> watch::Receiver<Option<u64>> {
        PgStore::hearing(self)
    }

    fn owner_changes(&self) -> broadcast::Receiver<OwnerChange> {
        PgStore::owner_changes(self)
    }

    fn not_owned<'a>(
        &'a self,
        keys: &'a [(Bytes, Bytes)],
    ) -> BoxFuture<'a, Result<Vec<(Bytes, Bytes)>, StoreError>> {
        PgStore::not_owned(self, keys).boxed()
    }

    fn tx_active_elsewhere<'a>(
        &'a self,
        tenant: &'a [u8],
        tx: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        PgStore::tx_active_elsewhere(self, tenant, tx).boxed()
    }

    fn count_persisted<'a>(&'a self, tenant: &'a [u8]) -> BoxFuture<'a, Result<u64, StoreError>> {
        PgStore::count_persisted(self, tenant).boxed()
    }
}
