//! The durable log of outcomes, call records and persisted transactions on PostgreSQL: the
//! store's second backend, shared by several ozbus nodes.
//!
//! Owns the same durable state as the SQLite store (`store/mod.rs`), with the same behaviour
//! seen through the same methods ([`PgStore`] mirrors `Store`), in one PostgreSQL database
//! that every node appends to: one log, one order. Never knows about sockets, SDMP parsing or
//! what the values mean (values are `bytea`, byte-exact); never lets a node acknowledge what
//! PostgreSQL has not committed.
//!
//! Files: `schema` (connections, schema versions and their migration; `schema_1.sql` creates
//! version 1), `writer` (the writer task: group commit, sequence numbers, faults, out of
//! space), `read` (pooled reads, rows ⇄ model), `query` (pages of outcomes by filters, a
//! call's outcomes and record), `listen` (other nodes' commits and takeovers),
//! `retention` (age and size retention, idempotency keys), `nodes` (which nodes are alive),
//! `book` (which node holds the call book: the lease, and the epoch the writer fences with),
//! `owners` (which node owns a persisted transaction, which TX is open on another node).
//!
//! # One log, one order
//!
//! Sequence numbers are taken inside the appending transaction from the one `meta` row
//! (`UPDATE meta SET last_seq = last_seq + n ... RETURNING`), never from a sequence: the row
//! lock makes a second node's append wait until the first one's transaction has ended, so
//! numbers are handed out in the order in which they become visible, and an aborted
//! transaction gives its numbers back. The log therefore has no holes, and a reader that saw
//! seq n never later finds a newly committed outcome below n. The lock is taken late: the
//! group's other writes come first, then the one statement that takes the numbers, inserts
//! the outcomes (and gives the group's idempotency keys their seq, see `writer`) and announces
//! them, then COMMIT, all sent at once (pipelined), so it is held for about one round trip plus
//! the commit's WAL flush. `accepted_ms` is clamped in the same
//! statement to the row's `last_accepted_ms`, so it never goes backwards along the log, across
//! nodes too.
//!
//! # The write path: group commit
//!
//! As on SQLite: one writer task per store, owning one connection, takes everything queued (up
//! to `max_batch` mutations), writes it in ONE transaction, commits once, and only then pushes
//! the outcomes into the in-memory tail, publishes `last_seq` and resolves the tickets. The
//! outcomes of a group go in as one multi-row insert (`unnest` of one array per column).
//! Batches whose values cannot be stored (a cursor beyond 2^63) fail alone before the
//! transaction starts, as they do on SQLite. Should PostgreSQL refuse a statement for another
//! persistent reason (a constraint that should never be violated), the group is run again
//! with a savepoint per batch, so that only the batch at fault fails, as on SQLite.
//!
//! # Other nodes
//!
//! Every commit that moves the log sends a NOTIFY (delivered at commit), and a listener
//! connection per store advances `last_seq` when another node committed. The in-memory tail
//! only ever holds a contiguous run of the log: outcomes of other nodes are not in it, so when
//! the log moved past it the tail is restarted after the new end, and readers of positions
//! before that read from PostgreSQL (the log is the truth; the notification only wakes).
//!
//! # Transactions across nodes
//!
//! A persisted transaction belongs to the node that last wrote it as held (`transactions.node`,
//! `released_ms` NULL): a re-issue on another node takes it over with its write, and a trigger
//! (`schema_5.sql`) announces that at the commit on the same channel, as it announces the
//! delete of a held one. The listener passes those announcements on
//! ([`PgStore::owner_changes`]) and says whether it hears at all ([`PgStore::hearing`]); what a
//! node holds is checked against the rows with [`PgStore::not_owned`]. The writer fences what a
//! node that lost a transaction still writes of it: a cursor (moved or rewound) and a release
//! change only a row the node owns; a write as held always applies (it is a takeover).
//! Transactions without PS claim their TX in `active_transactions`, for the other nodes to
//! refuse it ([`PgStore::tx_active_elsewhere`]); claims of nodes that are not alive count for
//! nothing, and the nodes' heartbeats remove them (`nodes`).
//!
//! # Faults
//!
//! When the writer's connection fails, the batches in hand are neither failed nor reported:
//! a COMMIT whose answer was lost may have committed. The writer reconnects with back-off
//! (50 ms doubling to 2 s, for as long as it takes), ends any backend of its earlier
//! connections still running, and reads whether the group committed: the first statement of
//! every group transaction inserts the row (node, k) into `ozbus_commits` (node: this store's
//! id, taken at open; k: the group's number), which also records the sequence numbers the
//! group took. Found: the group is published as committed. Not found: it runs again, under the
//! same (node, k), so two attempts of one group can never both commit. Meanwhile tickets wait
//! (no MV without a commit), and the store resumes by itself when the database is back. Reads
//! fail while the database is away (callers retry). Deadlocks, serialization failures and
//! cancelled statements are retried the same way, without the need to ask.
//!
//! A group that fails for lack of space (SQLSTATE 53100, disk_full) is reported as
//! [`StoreError::OutOfSpace`] and behaves as on SQLite: the store counts as full
//! ([`PgStore::is_full`]) until a probe (a committed write of `PROBE_BYTES`, every
//! `PROBE_INTERVAL`) succeeds, and batches that change call records or the log fail untried
//! after such a failure until the service re-reads the records ([`PgStore::reload_records`]).
//! A database that cannot write its WAL stops (PostgreSQL's own rule); to the store that is a
//! lost connection. Any other error PostgreSQL reports for a group fails its batch (see
//! above) with [`StoreError::Postgres`], a reason for the service to stop.
//!
//! # The call book
//!
//! One node at a time holds the call book (the one that decides call reports): the node whose
//! lease connection holds an advisory lock, under an epoch of its own that it wrote into the
//! `book_lease` row when it took the lock ([`PgStore::book_holder`]; see `book`). A node bids
//! only once it was given the address at which its peers reach it ([`PgStore::advertise`]).
//! Every group transaction that changes call records, appends outcomes or remembers
//! idempotency keys passes `ozbus_book_fence(epoch)` first: a batch of the book commits only
//! while this node's epoch is the database's; it fails with [`StoreError::NotHolder`], untried
//! when the node knows it does not hold the book, at commit when another node took it
//! meanwhile (the group's other batches commit). The nodes of one database share a secret,
//! made with the schema ([`PgStore::cluster_secret`]).
//!
//! # Retention
//!
//! Age and size retention and the removal of old idempotency keys run in bounded steps, as on
//! SQLite, on a pooled connection (ingestion goes on meanwhile), and on one node at a time: a
//! step holds an advisory lock for its transaction. The periodic sweep skips a step when
//! another node holds it; [`PgStore::trim`] waits for it. Every node learns what was removed
//! from the step's NOTIFY and publishes the new `oldest_seq`.

mod book;
mod listen;
mod nodes;
mod owners;
mod query;
mod read;
mod retention;
mod schema;
mod writer;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::model::{CallRecord, Mutation, Outcome, PersistedTransaction, UsedKey};
use super::space::Space;
use super::tail::Tail;
use super::writer::StatsCounters;
use super::{CommitTicket, OwnerChange, Pending, StoreError, StoreOptions};
use retention::Retention;
use writer::{Request, Writer};

/// How long opening tries a database that cannot be reached before it gives up.
const OPEN_PATIENCE: Duration = Duration::from_secs(60);
/// How long closing waits for the writer to commit what was queued before it gives up (the
/// database away): a stop must not hang on a database that does not come back.
const CLOSE_PATIENCE: Duration = Duration::from_secs(10);
/// How long closing waits for each of the store's other tasks (lease, listener, nodes).
const TASK_PATIENCE: Duration = Duration::from_secs(2);

/// How a PostgreSQL store is opened: the database, and the same settings as the SQLite store.
/// Its `Debug` leaves out the password of the URL.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user:password@host:port/database?...` (libpq's URL or key=value form).
    /// The database must exist; the store creates and migrates its tables in it.
    pub url: String,
    /// Outcomes older than this are removed (default 7 days).
    pub retention_max_age: Duration,
    /// When set, the oldest outcomes are removed while the log holds more than this many bytes
    /// (outcome values plus a fixed per-row overhead; not the size of the tables).
    pub retention_max_bytes: Option<u64>,
    /// Most recent outcomes kept in memory for caught-up readers (default 65,536).
    pub tail_capacity: usize,
    /// ... and at most this many bytes of them (default 64 MiB).
    pub tail_max_bytes: u64,
    /// Cap on the mutations one group commit takes from the queue (default 4,096). A single
    /// submitted batch larger than this still commits whole, alone.
    pub max_batch: usize,
    /// How long an idempotency key counts (default 24 hours).
    pub dedup_window: Duration,
    /// Connections kept for reads (default 8); the writer, the listener and the call book's
    /// lease have one each.
    pub read_connections: usize,
    /// The TX of a persisted transaction's request, for rows stored before schema 2 (see
    /// `StoreOptions::request_tx`).
    pub request_tx: super::RequestTx,
    /// This node's directory (the data directory): locked while the store is open, so that
    /// one node runs in it at a time, it keeps the node's id, so that the node that starts in
    /// it next knows at once that the one before is gone (see `nodes`). `None`: no directory
    /// (a node found gone only once its lease ran out).
    pub dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redacted(&self.url))
            .field("retention_max_age", &self.retention_max_age)
            .field("retention_max_bytes", &self.retention_max_bytes)
            .field("tail_capacity", &self.tail_capacity)
            .field("tail_max_bytes", &self.tail_max_bytes)
            .field("max_batch", &self.max_batch)
            .field("dedup_window", &self.dedup_window)
            .field("read_connections", &self.read_connections)
            .field("dir", &self.dir)
            .finish()
    }
}

/// `url` without its password (`postgres://user:***@host/db`, `password=***`).
pub fn redacted(url: &str) -> String {
    if let Some(scheme) = url.find("://") {
        let rest = &url[scheme + 3..];
        let authority = rest.find(['/', '?']).map_or(rest, |end| &rest[..end]);
        if let Some(at) = authority.rfind('@') {
            if let Some(colon) = authority[..at].find(':') {
                let start = scheme + 3 + colon + 1;
                return format!("{}***{}", &url[..start], &url[scheme + 3 + at..]);
            }
        }
        return url.to_owned();
    }
    url.split(' ')
        .map(|word| match word.split_once('=') {
            Some((key, _)) if key.trim() == "password" => format!("{key}=***"),
            _ => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl PgOptions {
    /// The default settings, on the database at `url`.
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            dir: None,
            ..PgOptions::from_store_options(url, &StoreOptions::default())
        }
    }

    /// The settings of `options` (all but its directory), on the database at `url`.
    pub fn from_store_options(url: impl Into<String>, options: &StoreOptions) -> PgOptions {
        PgOptions {
            url: url.into(),
            retention_max_age: options.retention_max_age,
            retention_max_bytes: options.retention_max_bytes,
            tail_capacity: options.tail_capacity,
            tail_max_bytes: options.tail_max_bytes,
            max_batch: options.max_batch,
            dedup_window: options.dedup_window,
            read_connections: 8,
            request_tx: options.request_tx,
            dir: Some(options.dir.clone()),
        }
    }
}

/// Announced takeovers a slow follower may have in hand before it lags (and then checks every
/// transaction it holds).
const OWNER_CHANGES_QUEUED: usize = 1024;

/// What this node knows of the log and of the call book's holder, shared by the writer, the
/// listener, retention, the lease and every handle.
pub(crate) struct Shared {
    view: RwLock<View>,
    /// The last seq this node knows committed (its own commits and other nodes'); changed
    /// only under the `view` lock, after the tail.
    last_seq: watch::Sender<u64>,
    /// Every seq up to this one was removed by retention (or never existed). Only grows; with
    /// `last_seq` it gives `oldest_seq`, because the log has no holes.
    trimmed: AtomicU64,
    /// Out of space, and the fence on batches that change call records or the log.
    space: Space,
    /// Who holds the call book, and the epoch this node holds it under.
    book: book::Book,
    stats: StatsCounters,
    tail_capacity: usize,
    tail_max_bytes: u64,
    /// Whether the listener hears other nodes now (see `Backend::hearing`): `None` while its
    /// connection is down, else the number of the connection it hears on.
    hearing: watch::Sender<Option<u64>>,
    /// Takeovers and ends of persisted transactions other nodes announced (see `owners`).
    owners: broadcast::Sender<OwnerChange>,
}

/// The tail and the end of the log it was last brought to.
struct View {
    /// Holds every committed outcome with seq > its start, up to `end`.
    tail: Tail,
    end: u64,
}

impl Shared {
    fn new(options: &PgOptions, last_seq: u64, trimmed: u64) -> Shared {
        Shared {
            view: RwLock::new(View {
                tail: Tail::new(options.tail_capacity, options.tail_max_bytes, last_seq),
                end: last_seq,
            }),
            last_seq: watch::Sender::new(last_seq),
            trimmed: AtomicU64::new(trimmed),
            space: Space::new(),
            book: book::Book::new(),
            stats: StatsCounters::default(),
            tail_capacity: options.tail_capacity,
            tail_max_bytes: options.tail_max_bytes,
            hearing: watch::Sender::new(None),
            owners: broadcast::Sender::new(OWNER_CHANGES_QUEUED),
        }
    }

    fn view(&self) -> std::sync::RwLockWriteGuard<'_, View> {
        self.view.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn raise_last_seq(&self, last: u64) {
        self.last_seq.send_if_modified(|seq| {
            let raised = last > *seq;
            if raised {
                *seq = last;
            }
            raised
        });
    }

    /// This node committed `outcomes` (ascending, contiguous seqs). They go into the tail only
    /// if they follow what it holds; after other nodes' outcomes the tail starts again with
    /// them; if a later commit is known already, the log alone has them.
    fn publish_own(&self, outcomes: Vec<Arc<Outcome>>) {
        let (Some(first), Some(last)) = (outcomes.first(), outcomes.last()) else {
            return;
        };
        let (first, last) = (first.seq, last.seq);
        let mut view = self.view();
        if first > view.end {
            if first != view.end + 1 {
                view.tail = Tail::new(self.tail_capacity, self.tail_max_bytes, first - 1);
            }
            view.tail.extend(outcomes);
            view.end = last;
        }
        self.raise_last_seq(last);
    }

    /// Another node committed up to `last`: the tail cannot hold what it did not see, so it
    /// starts again after `last`.
    fn learn_remote(&self, last: u64) {
        let mut view = self.view();
        if last > view.end {
            view.tail = Tail::new(self.tail_capacity, self.tail_max_bytes, last);
            view.end = last;
        }
        self.raise_last_seq(last);
    }

    /// Retention (on any node) removed every outcome up to `upto`.
    fn publish_trimmed(&self, upto: u64) {
        let mut view = self.view();
        self.trimmed.fetch_max(upto, Ordering::AcqRel);
        view.tail.forget_upto(upto);
    }

    fn oldest_seq(&self) -> Option<u64> {
        let last = *self.last_seq.borrow();
        let trimmed = self.trimmed.load(Ordering::Acquire);
        (last > trimmed).then_some(trimmed + 1)
    }
}

/// What the background tasks of a store share: the database, this node's id, the state.
pub(crate) struct Context {
    pool: deadpool_postgres::Pool,
    shared: Arc<Shared>,
    node: i64,
    retention: Retention,
}

/// Which nodes were gone when the pass under way began, and when the last pass that reached
/// its end began.
#[derive(Default)]
struct Passes {
    started: Option<nodes::Gone>,
    done: Option<nodes::Gone>,
}

/// A handle on the PostgreSQL store; cheap to clone, shared by every task of the service.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    requests: mpsc::UnboundedSender<Request>,
    closed: AtomicBool,
    writer: Mutex<Option<JoinHandle<Result<(), StoreError>>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    ctx: Arc<Context>,
    /// Stops the listener and the retention sweep.
    stop: CancellationToken,
    /// This node's directory, locked until `close`.
    place: Mutex<Option<nodes::Place>>,
    /// The passes for rows held by nodes that are gone (`held_at_stop`).
    passes: Mutex<Passes>,
    /// The cluster's secret, as read at open.
    secret: bytes::Bytes,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("node", &self.inner.ctx.node)
            .field("last_seq", &self.last_seq())
            .field("oldest_seq", &self.oldest_seq())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, creates or migrates the schema, takes a node id, and starts the writer, the
    /// listener, the retention sweep, the heartbeat and the call book's lease on the current
    /// tokio runtime.
    pub async fn open(options: PgOptions) -> Result<PgStore, StoreError> {
        let place = match &options.dir {
            Some(dir) => Some(nodes::Place::take(dir)?),
            None => None,
        };
        let config = schema::config(&options.url)?;
        let (mut client, driver) = connect_at_open(&config).await?;
        schema::migrate(&mut client, schema::MIGRATIONS).await?;
        let node: i64 = client
            .query_one("SELECT nextval('ozbus_node_ids')", &[])
            .await?
            .get(0);
        let start = writer::load_start(&client).await?;
        nodes::register(&client, node, place.as_ref()).await?;
        fill_transaction_tx(&client, options.request_tx).await?;
        let secret: String = client
            .query_one("SELECT secret FROM ozbus_cluster WHERE id = 0", &[])
            .await?
            .get(0);
        drop(client);
        let _ = driver.await;

        let shared = Arc::new(Shared::new(&options, start.last_seq, start.trimmed));
        let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::from_config(
            {
                let mut config = config.clone();
                config.application_name(format!("ozbus-read-{node}"));
                config
            },
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        ))
        .max_size(options.read_connections.max(1))
        .build()
        .map_err(|error| StoreError::Corrupt(format!("postgres pool: {error}")))?;
        let ctx = Arc::new(Context {
            pool,
            shared: shared.clone(),
            node,
            retention: Retention::new(&options),
        });
        let stop = CancellationToken::new();
        let writer =
            Writer::connect(config.clone(), node, shared.clone(), options.max_batch).await?;
        let lease = book::Lease::connect(&config, node, shared.clone()).await?;
        let (requests, queue) = mpsc::unbounded_channel();
        let writer = tokio::spawn(writer.run(queue));
        let tasks = vec![
            tokio::spawn(listen::run(config, ctx.clone(), stop.clone())),
            tokio::spawn(retention::sweep(ctx.clone(), stop.clone())),
            tokio::spawn(nodes::heartbeat(ctx.clone(), stop.clone())),
            tokio::spawn(lease.run(stop.clone())),
        ];
        Ok(PgStore {
            inner: Arc::new(Inner {
                requests,
                closed: AtomicBool::new(false),
                writer: Mutex::new(Some(writer)),
                tasks: Mutex::new(tasks),
                ctx,
                stop,
                place: Mutex::new(place),
                passes: Mutex::new(Passes::default()),
                secret: bytes::Bytes::from(secret),
            }),
        })
    }

    /// This store's node id: unique among every store that ever opened the database.
    pub fn node(&self) -> i64 {
        self.inner.ctx.node
    }

    /// Whether the store was closed: it takes nothing more.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.is_closed() {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// Enqueues one atomic group of mutations and returns at once; as `Store::submit`. The
    /// ticket resolves once they are committed, with the seqs given to the batch's `Append`
    /// mutations, in order; while the database is unreachable it waits.
    pub fn submit(&self, batch: Vec<Mutation>) -> CommitTicket {
        if self.check_open().is_err() {
            return CommitTicket::failed();
        }
        let (reply, receiver) = oneshot::channel();
        let request = Request::Batch {
            mutations: batch,
            reply,
        };
        match self.inner.requests.send(request) {
            Ok(()) => CommitTicket(Pending::Writer(receiver)),
            Err(_) => CommitTicket::failed(),
        }
    }

    /// Whether a write failed for lack of space and the writer has not found room since (it
    /// tries every second). Batches may still be submitted; they are tried.
    pub fn is_full(&self) -> bool {
        self.inner.ctx.shared.space.is_full()
    }

    /// Whether a batch that changed call records or the log failed for lack of space since
    /// the last [`PgStore::reload_records`]; as `Store::fenced`.
    pub fn fenced(&self) -> bool {
        self.inner.ctx.shared.space.fenced()
    }

    /// Every open call record as committed once every batch submitted before this call is
    /// committed or failed; lowers the fence. Queued like a batch, so ordered with them.
    pub fn reload_records(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<CallRecord>, StoreError>> + Send + 'static
    {
        let (reply, receiver) = oneshot::channel();
        let sent = self.check_open().and_then(|()| {
            self.inner
                .requests
                .send(Request::Reload { reply })
                .map_err(|_| StoreError::Closed)
        });
        async move {
            sent?;
            receiver.await.map_err(|_| StoreError::Closed)?
        }
    }

    async fn reader(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.check_open()?;
        self.inner.ctx.pool.get().await.map_err(pool_error)
    }

    /// Every open call record (start-up).
    pub async fn load_records(&self) -> Result<Vec<CallRecord>, StoreError> {
        let client = self.reader().await?;
        read::records(&**client).await
    }

    /// Every persisted transaction with its cursor (start-up).
    pub async fn load_transactions(&self) -> Result<Vec<PersistedTransaction>, StoreError> {
        let client = self.reader().await?;
        read::transactions(&client).await
    }

    /// How many persisted transactions each tenant has (start-up: counted, none read).
    pub async fn count_transactions(&self) -> Result<Vec<(bytes::Bytes, u64)>, StoreError> {
        let client = self.reader().await?;
        read::count_transactions(&client).await
    }

    /// The persisted transactions of `tenant` with PersistToken `ps`, or TX `tx`: none, one,
    /// or two (one each way). Reads what was committed before the read starts.
    pub async fn find_transactions(
        &self,
        tenant: &[u8],
        ps: Option<&[u8]>,
        tx: &[u8],
    ) -> Result<Vec<PersistedTransaction>, StoreError> {
        let client = self.reader().await?;
        read::find_transactions(&client, tenant, ps, tx).await
    }

    /// One page of persisted transactions in (tenant, TX) order; as
    /// `Backend::list_transactions`.
    pub async fn list_transactions(
        &self,
        tenant: Option<&[u8]>,
        after: Option<(&[u8], &[u8])>,
        limit: usize,
    ) -> Result<Vec<PersistedTransaction>, StoreError> {
        let client = self.reader().await?;
        read::list_transactions(&client, tenant, after, limit).await
    }

    /// At most `limit` persisted transactions that nobody has held since `cutoff_ms` or
    /// earlier, the longest released first.
    pub async fn released_transactions(
        &self,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<PersistedTransaction>, StoreError> {
        let client = self.reader().await?;
        read::released_transactions(&client, cutoff_ms, limit).await
    }

    /// One step of a pass over every persisted transaction, for those held by a node that is no
    /// longer alive (it stopped, or died, while a connection held them; see `nodes`): they
    /// count as released from when it was last seen, and are written so (`owners`), so that
    /// [`PgStore::released_transactions`] finds them when they are due and a node that needs
    /// one reads it released. Reads at most `scan` rows after position `after` (0: from the
    /// start); returns those, and the position of the next step (`None`: the pass is done). A pass finds anything only when the nodes that are gone changed
    /// since the last pass that reached its end began (else it ends at once): the service
    /// passes again every few seconds, and only a node going can make a row one of those.
    pub async fn held_at_stop(
        &self,
        after: i64,
        scan: usize,
    ) -> Result<(Vec<PersistedTransaction>, Option<i64>), StoreError> {
        let client = self.reader().await?;
        let passes = &self.inner.passes;
        if after == 0 {
            let gone = nodes::gone(&client).await?;
            let mut passes = passes.lock().unwrap_or_else(PoisonError::into_inner);
            if passes.done == Some(gone) {
                return Ok((Vec::new(), None));
            }
            passes.started = Some(gone);
        }
        let (held, next) = owners::release_held_by_gone(
            &client,
            self.inner.ctx.node,
            nodes::lease_ms(),
            after,
            scan,
        )
        .await?;
        if next.is_none() {
            let mut passes = passes.lock().unwrap_or_else(PoisonError::into_inner);
            passes.done = passes.started;
        }
        Ok((held, next))
    }

    /// Follows whether this node hears the other nodes (see `Backend::hearing`).
    pub fn hearing(&self) -> watch::Receiver<Option<u64>> {
        self.inner.ctx.shared.hearing.subscribe()
    }

    /// Follows the takeovers and ends of persisted transactions other nodes announce.
    pub fn owner_changes(&self) -> broadcast::Receiver<OwnerChange> {
        self.inner.ctx.shared.owners.subscribe()
    }

    /// Of the persisted transactions `keys`, those this node does not own any more: gone,
    /// released, or written as held by another node. One query.
    pub async fn not_owned(
        &self,
        keys: &[(bytes::Bytes, bytes::Bytes)],
    ) -> Result<Vec<(bytes::Bytes, bytes::Bytes)>, StoreError> {
        let client = self.reader().await?;
        owners::not_owned(&client, self.inner.ctx.node, keys).await
    }

    /// Whether another node that is alive has a transaction without PS open under TX `tx` in
    /// the namespace `tenant`.
    pub async fn tx_active_elsewhere(&self, tenant: &[u8], tx: &[u8]) -> Result<bool, StoreError> {
        let client = self.reader().await?;
        owners::active_elsewhere(&client, self.inner.ctx.node, nodes::lease_ms(), tenant, tx).await
    }

    /// How many persisted transactions `tenant` has, as committed.
    pub async fn count_persisted(&self, tenant: &[u8]) -> Result<u64, StoreError> {
        let client = self.reader().await?;
        owners::count_of_tenant(&client, tenant).await
    }

    /// [`PgStore::read_after_bounded`] without a bound in bytes.
    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Outcome>>, StoreError> {
        self.read_after_bounded(after, limit, u64::MAX).await
    }

    /// Outcomes with seq > `after`, ascending, at most `limit`: from the in-memory tail when it
    /// covers `after`, else from PostgreSQL, then also no more than about `max_bytes` of them
    /// (always at least one). As `Store::read_after_bounded`.
    pub async fn read_after_bounded(
        &self,
        after: u64,
        limit: usize,
        max_bytes: u64,
    ) -> Result<Vec<Arc<Outcome>>, StoreError> {
        self.check_open()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let from_tail = self
            .inner
            .ctx
            .shared
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .tail
            .read_after(after, limit, max_bytes);
        if let Some(outcomes) = from_tail {
            return Ok(outcomes);
        }
        let client = self.reader().await?;
        read::outcomes_after(&client, after, limit, max_bytes).await
    }

    /// The last committed sequence number this node knows of (its own commits and, through
    /// the listener, other nodes'); 0 before the first outcome ever.
    pub fn last_seq(&self) -> u64 {
        *self.inner.ctx.shared.last_seq.borrow()
    }

    /// Wakes whenever the log moves on; the value is `last_seq`.
    pub fn watch_last_seq(&self) -> watch::Receiver<u64> {
        self.inner.ctx.shared.last_seq.subscribe()
    }

    /// The oldest outcome still retained, `None` when the log is empty.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.inner.ctx.shared.oldest_seq()
    }

    /// What this node's writer did since it opened, and the log's size as of its last
    /// retention step; see `Backend::stats`.
    pub fn stats(&self) -> crate::store::StoreStats {
        self.inner.ctx.shared.stats.snapshot()
    }

    /// The most recent outcome of (tenant, cn) by `si`, or else by number `tn`; as
    /// `Store::latest_outcome`.
    pub async fn latest_outcome(
        &self,
        tenant: &[u8],
        cn: &[u8],
        si: Option<&[u8]>,
        tn: Option<&[u8]>,
    ) -> Result<Option<Arc<Outcome>>, StoreError> {
        let client = self.reader().await?;
        let found = read::latest_outcome(&client, tenant, cn, si, tn).await?;
        Ok(found.map(Arc::new))
    }

    /// The idempotency key `key` of `tenant`, with the first seq its batch appended, if it was
    /// committed at `since_ms` or later; as `Store::key_committed` (keys are shared by every
    /// node).
    pub async fn key_committed(
        &self,
        tenant: &[u8],
        key: &[u8],
        since_ms: i64,
    ) -> Result<Option<UsedKey>, StoreError> {
        let client = self.reader().await?;
        read::key_committed(&client, tenant, key, since_ms).await
    }

    /// Applies retention now: age relative to `now_ms`, then size; idempotency keys past the
    /// dedup window too. Returns how many outcomes it removed. Runs in bounded steps, each
    /// waiting its turn if another node is applying retention. The store also does this by
    /// itself every few seconds (on one node at a time).
    pub async fn trim(&self, now_ms: i64) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            self.check_open()?;
            let step = retention::step(&self.inner.ctx, now_ms, true).await?;
            removed += step.removed;
            if !step.more {
                return Ok(removed);
            }
        }
    }

    /// Stops accepting, commits everything queued before this call (waiting for the database
    /// if it is away), and stops the writer, then the listener, the sweep, the heartbeat and
    /// the lease (a holder lets go of the call book, after its last commit). Other clones then
    /// get `StoreError::Closed`, as does a second `close`.
    pub async fn close(self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Err(StoreError::Closed);
        }
        // Ignored error: the writer already stopped; joining it reports why.
        let _ = self.inner.requests.send(Request::Close);
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The writer waits for the database as long as it takes; a close does not. What it
        // gives up was never acknowledged (no MV without a commit).
        let closed = match handle {
            Some(mut handle) => match tokio::time::timeout(CLOSE_PATIENCE, &mut handle).await {
                Ok(joined) => joined.unwrap_or(Err(StoreError::WriterPanicked)),
                Err(_) => {
                    handle.abort();
                    Err(StoreError::CloseTimedOut(CLOSE_PATIENCE))
                }
            },
            None => Err(StoreError::Closed),
        };
        self.inner.stop.cancel();
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for mut task in tasks {
            if tokio::time::timeout(TASK_PATIENCE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        let _ = tokio::time::timeout(TASK_PATIENCE, nodes::unregister(&self.inner.ctx)).await;
        self.inner.ctx.pool.close();
        drop(
            self.inner
                .place
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        closed
    }
}

/// Schema 2: the `tx` column of every persisted transaction stored before it, read from its
/// request (only the service can read one; see `StoreOptions::request_tx`). Rows whose TX
/// cannot be read keep none: they are found by PersistToken only. Idempotent: a node that
/// opens later finds nothing left to fill.
async fn fill_transaction_tx(
    client: &tokio_postgres::Client,
    request_tx: super::RequestTx,
) -> Result<(), StoreError> {
    let rows = client
        .query(
            "SELECT tenant, ps, request FROM transactions WHERE tx IS NULL",
            &[],
        )
        .await?;
    for row in rows {
        let (tenant, ps, request): (&[u8], &[u8], &[u8]) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if let Some(tx) = request_tx(request) {
            client
                .execute(
                    "UPDATE transactions SET tx = $3 WHERE tenant = $1 AND ps = $2 AND tx IS NULL",
                    &[&tenant, &ps, &tx.as_ref()],
                )
                .await?;
        }
    }
    Ok(())
}

/// The first connection of a store: a database that cannot be reached yet (it is starting,
/// or restarting) is tried again with back-off for up to [`OPEN_PATIENCE`], so that a node
/// started while the database is away comes up once it is back.
async fn connect_at_open(
    config: &tokio_postgres::Config,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), StoreError> {
    let give_up = tokio::time::Instant::now() + OPEN_PATIENCE;
    let mut backoff = Duration::from_millis(100);
    loop {
        match schema::connect_creating(config, "ozbus-open").await {
            Err(error) if error.is_unreachable() && tokio::time::Instant::now() < give_up => {
                tracing::warn!(%error, "the database cannot be reached yet; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            result => return result,
        }
    }
}

pub(crate) fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => StoreError::Postgres(error),
        deadpool_postgres::PoolError::Closed => StoreError::Closed,
        other => StoreError::Io(std::io::Error::other(other.to_string())),
    }
}

impl PgStore {
    /// Follows which node holds the call book (see `book`): `Me` from when this node's raise of
    /// the epoch committed, until it can no longer tell that it holds the lock; `Peer` while
    /// the row names another node and somebody holds the lock; else `Unknown` (also once
    /// closed).
    pub fn book_holder(&self) -> watch::Receiver<crate::store::BookHolder> {
        self.inner.ctx.shared.book.subscribe()
    }

    /// Bids for the call book from now on, taking reports from peers at `addr`; a node that
    /// holds it already names the new address in the row.
    pub fn advertise(&self, addr: String) {
        self.inner.ctx.shared.book.advertise(addr);
    }

    /// The cluster's secret (64 hex digits, read at open): the same for every node of the
    /// database.
    pub fn cluster_secret(&self) -> bytes::Bytes {
        self.inner.secret.clone()
    }
}
