//! The durable log of outcomes, call records and persisted transactions.
//!
//! Owns the service's durable state on SQLite: (1) the outcome log, one ordered append-only
//! sequence whose sequence numbers only ever grow (also across restarts, and after retention
//! removed every row: the high-water mark lives in a meta row, not in `max(seq)`); (2) open call
//! records; (3) persisted transactions and their durable cursors, read one at a time (by
//! tenant and PersistToken or TX, or as due for the persist TTL), never all at once. Never knows
//! about sockets, SDMP parsing or what the values mean: values are byte strings, stored as
//! BLOBs, byte-exact (the one thing it needs read from SDMP, a persisted transaction's TX for
//! a migration, the service hands it: [`StoreOptions::request_tx`]).
//!
//! Files: `model` (the values), `writer` (the writer thread: group commit, retention),
//! `tail` (recent outcomes in memory), `read` (read-only connections and queries), `query`
//! (pages of outcomes by filters, a call's outcomes and record), `finder` (the thread that
//! looks up persisted transactions), `space` (out of space: full and fenced, for both
//! backends), `rows` (row ⇄ model), `schema` (connections, pragmas, schema versions; `schema.sql` creates version
//! 1, `schema_<n>.sql` brings the previous version to n), `error`.
//!
//! # The write path: group commit
//!
//! An outcome is accepted only once it is durable, and the durable step is an fsync, which
//! costs about the same whether it covers one outcome or thousands. So every write goes
//! through one writer thread that owns the only write connection: it blocks for the first
//! queued request, takes everything else already queued (up to `max_batch` mutations), runs
//! it all in ONE SQLite transaction (WAL, `synchronous=FULL`) with a savepoint per submitted
//! batch, commits once, and only then (a) pushes the new outcomes into the in-memory tail,
//! (b) publishes the new last sequence number on a `watch`, (c) resolves each batch's
//! ticket. Under load the groups grow by themselves and the fsync cost is shared; when idle a
//! lone batch commits at once, with no timer adding latency. A single writer also makes
//! sequence numbers trivially gap-free and ordered, and batches commit in submission order. If
//! the commit fails, every batch of the group fails (nothing is reported durable that is not),
//! and the writer carries on with the next group. Readers never wait for the writer: caught-up
//! ones read the tail, lagging ones use separate read-only connections, which WAL lets run
//! while the writer writes.
//!
//! A group that fails for lack of space is the one failure the service survives: it is
//! reported as [`StoreError::OutOfSpace`], the store counts as full ([`Store::is_full`]) until
//! the writer's probe finds room again, and batches that change call records or the log fail
//! untried after such a failure until the service re-reads the records
//! ([`Store::reload_records`]); see `writer`.
//!
//! Retention also runs on the writer, in bounded steps of its own transactions between
//! groups, so a large backlog of expired outcomes never stalls ingestion for long. Age
//! retention removes a prefix of the log (the writer keeps `accepted_ms` from going backwards
//! along the log, even if the clock does), so the log never has holes: a reader's only gap is
//! before `oldest_seq`. Size retention counts each outcome's bytes plus a fixed per-row
//! overhead, not the database file (SQLite reuses freed pages rather than shrinking the file).

mod backend;
mod error;
mod finder;
mod model;
pub mod postgres;
mod query;
mod read;
mod rows;
mod schema;
mod space;
#[cfg(test)]
mod space_tests;
mod tail;
mod writer;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

pub use backend::{Backend, BookHolder, OwnerChange, Store, NODE_USER};
pub use error::StoreError;
pub use model::{
    CallRecord, Mutation, NewOutcome, Outcome, OutcomeClass, PersistedTransaction, RecordState,
    Rendered, RequestTx, UsedKey,
};
pub use query::{OutcomePage, OutcomeQuery};

/// What a store did since it opened, as counters that only grow (but `log_bytes`): a reader
/// takes the difference of two snapshots for a rate or a mean.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Group commits that succeeded.
    pub commits: u64,
    /// The time they took together, in microseconds (fsync included).
    pub commit_micros: u64,
    /// The log's size as size retention counts it (on PostgreSQL: as of this node's last
    /// retention step).
    pub log_bytes: u64,
}

use read::Readers;
use space::Space;
use tail::Tail;
use writer::{Request, Retention, Shared, Writer};

/// The file whose lock marks the data directory as in use.
const LOCK_FILE: &str = "ozbus.lock";

/// Creates `dir` if needed and locks it for this process (`StoreError::InUse` when another
/// holds it), for as long as the returned file is open. The operating system drops the lock
/// with the process, however it ends.
pub(crate) fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, StoreError> {
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    lock.try_lock()
        .map_err(|_| StoreError::InUse(dir.to_path_buf()))?;
    Ok(lock)
}

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Directory of the database; created if missing.
    pub dir: PathBuf,
    /// Outcomes older than this are removed (default 7 days).
    pub retention_max_age: Duration,
    /// When set, the oldest outcomes are removed while the log holds more than this many bytes
    /// (outcome values plus a fixed per-row overhead; not the file size).
    pub retention_max_bytes: Option<u64>,
    /// Most recent outcomes kept in memory for caught-up readers (default 65,536).
    pub tail_capacity: usize,
    /// ... and at most this many bytes of them (default 64 MiB; counted like size retention).
    pub tail_max_bytes: u64,
    /// Cap on the mutations one group commit takes from the queue (default 4,096). A single
    /// submitted batch larger than this still commits whole, alone.
    pub max_batch: usize,
    /// How long an idempotency key counts (default 24 hours); the writer removes it a while
    /// after (see `Store::key_committed`).
    pub dedup_window: Duration,
    /// A `postgres://` URL: the state lives in that PostgreSQL database (shared by every node
    /// given the same URL) instead of SQLite in `dir`.
    pub url: Option<String>,
    /// The TX of a persisted transaction's request, for the migration to schema 3 (default:
    /// none can be read, and such rows are found by PersistToken only).
    pub request_tx: RequestTx,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            dir: PathBuf::from("./ozbus-data"),
            retention_max_age: Duration::from_secs(7 * 24 * 60 * 60),
            retention_max_bytes: None,
            tail_capacity: 65_536,
            tail_max_bytes: 64 << 20,
            max_batch: 4096,
            dedup_window: Duration::from_secs(24 * 60 * 60),
            url: None,
            request_tx: |_| None,
        }
    }
}

/// Resolves once a submitted batch is durable (`Ok` with the seqs given to its `Append`
/// mutations, in order) or failed (nothing of it was written). A failure for lack of space is
/// [`StoreError::OutOfSpace`] (see [`StoreError::is_out_of_space`]), one of a batch of the call
/// book on a node that does not hold it [`StoreError::NotHolder`]; the store goes on after
/// either. Any other means that the store can no longer be trusted to keep what it is given.
#[must_use = "a batch is only known durable once its ticket resolves"]
pub struct CommitTicket(Pending);

enum Pending {
    /// The store could not take the batch at all.
    Refused,
    /// Waiting for the writer's reply.
    Writer(oneshot::Receiver<Result<Vec<u64>, StoreError>>),
    /// Whatever the service made of one or more writer replies (retried, shared).
    Future(Pin<Box<dyn Future<Output = Result<Vec<u64>, StoreError>> + Send>>),
}

impl CommitTicket {
    /// A ticket that resolves at once as failed: for a request the store could not take.
    pub fn failed() -> CommitTicket {
        CommitTicket(Pending::Refused)
    }

    /// A ticket that resolves as `future` does: for durability the service decides from
    /// other tickets (a write retried until it lands, a commit several requests wait for).
    pub fn from_future(
        future: impl Future<Output = Result<Vec<u64>, StoreError>> + Send + 'static,
    ) -> CommitTicket {
        CommitTicket(Pending::Future(Box::pin(future)))
    }
}

impl std::fmt::Debug for CommitTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.0 {
            Pending::Refused => "refused",
            Pending::Writer(_) => "writer",
            Pending::Future(_) => "future",
        };
        f.debug_tuple("CommitTicket").field(&state).finish()
    }
}

impl Future for CommitTicket {
    type Output = Result<Vec<u64>, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Pending::Refused => Poll::Ready(Err(StoreError::Closed)),
            // The writer dropping the reply means it stopped before committing this batch.
            Pending::Writer(reply) => Pin::new(reply)
                .poll(cx)
                .map(|result| result.unwrap_or(Err(StoreError::Closed))),
            Pending::Future(future) => future.as_mut().poll(cx),
        }
    }
}

/// The SQLite store: one process, one data directory. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    requests: mpsc::Sender<Request>,
    closed: AtomicBool,
    writer: Mutex<Option<JoinHandle<Result<(), StoreError>>>>,
    shared: Arc<Shared>,
    readers: Readers,
    /// This run of the store (`meta.run`): counts its opens.
    run: i64,
    /// The finder thread's queue (`finder`), until `close`.
    finds: RwLock<Option<mpsc::Sender<finder::Find>>>,
    finder: Mutex<Option<JoinHandle<()>>>,
    /// Held until `close`: the data directory is this store's alone.
    lock: Mutex<Option<std::fs::File>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("last_seq", &self.last_seq())
            .field("oldest_seq", &self.oldest_seq())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating the directory and schema if needed) and starts the writer thread.
    /// Blocking: call it at start-up, or from blocking code.
    pub fn open(options: StoreOptions) -> Result<SqliteStore, StoreError> {
        // One writer per database: a second one would hand out the same sequence numbers.
        let lock = lock_dir(&options.dir)?;
        let path = options.dir.join(schema::DB_FILE);
        let conn = schema::open_writer(&path, options.request_tx)?;
        let state = writer::load_state(&conn)?;
        let run = writer::begin_run(&conn)?;
        let shared = Arc::new(Shared {
            tail: RwLock::new(Tail::new(
                options.tail_capacity,
                options.tail_max_bytes,
                state.last_seq,
            )),
            last_seq: watch::Sender::new(state.last_seq),
            oldest: AtomicU64::new(state.oldest.unwrap_or(0)),
            space: Space::new(),
            stats: writer::StatsCounters::default(),
        });
        shared.stats.set_log_bytes(state.log_bytes);
        let retention = Retention {
            max_age_ms: i64::try_from(options.retention_max_age.as_millis()).unwrap_or(i64::MAX),
            max_bytes: options.retention_max_bytes,
            key_max_age_ms: i64::try_from(options.dedup_window.as_millis())
                .unwrap_or(i64::MAX)
                .saturating_add(writer::KEY_GRACE_MS),
        };
        let writer = Writer::new(
            conn,
            state,
            run,
            shared.clone(),
            retention,
            options.max_batch,
            options.dir.clone(),
        );
        let (finds, finder) = finder::start(&path)?;
        let (requests, queue) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("ozbus-store-writer".into())
            .spawn(move || writer.run(queue))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                requests,
                closed: AtomicBool::new(false),
                writer: Mutex::new(Some(handle)),
                shared,
                readers: Readers::new(path),
                run,
                finds: RwLock::new(Some(finds)),
                finder: Mutex::new(Some(finder)),
                lock: Mutex::new(Some(lock)),
            }),
        })
    }

    /// Runs `sql` on the writer's connection, in order with the batches (tests only).
    #[cfg(test)]
    pub(crate) async fn writer_sql(&self, sql: &str) -> Result<(), StoreError> {
        let (reply, receiver) = oneshot::channel();
        self.inner
            .requests
            .send(Request::Sql {
                sql: sql.to_owned(),
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        receiver.await.map_err(|_| StoreError::Closed)?
    }

    /// Lets the database grow by nothing more (tests: SQLite then fails writes that need a new
    /// page with SQLITE_FULL, as on a full disk), or by anything again.
    #[cfg(test)]
    pub(crate) async fn limit_growth(&self, limited: bool) {
        let sql = match limited {
            // SQLite never sets the limit below the current size: 1 means "as it is now".
            true => "PRAGMA max_page_count = 1",
            false => "PRAGMA max_page_count = 4294967294",
        };
        self.writer_sql(sql).await.expect("pragma");
    }

    /// Whether the store was closed: it takes nothing more.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// Enqueues one atomic group of mutations and returns at once. The ticket resolves once
    /// they are committed durably, with the seqs given to the batch's `Append` mutations, in
    /// order. Batches commit in submission order. If anything in the batch fails, none of it
    /// is written.
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
        self.inner.shared.space.is_full()
    }

    /// Whether a batch that changed call records or the log failed for lack of space since
    /// the last [`Store::reload_records`]: until then, every such batch fails untried (as
    /// out of space), because the service may have computed it from what the failed one
    /// would have changed.
    pub fn fenced(&self) -> bool {
        self.inner.shared.space.fenced()
    }

    /// Every open call record as committed once every batch submitted before this call is
    /// committed or failed; lowers the fence. Queued like a batch, so it is ordered with them:
    /// submit it under the lock that orders the batches it must see.
    pub fn reload_records(
        &self,
    ) -> impl Future<Output = Result<Vec<CallRecord>, StoreError>> + Send + 'static {
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

    /// Every open call record (start-up). Blocking.
    pub fn load_records(&self) -> Result<Vec<CallRecord>, StoreError> {
        self.check_open()?;
        self.inner.readers.with(read::records)
    }

    /// Every persisted transaction with its cursor (tests and tools: the service reads them
    /// one at a time). Blocking.
    pub fn load_transactions(&self) -> Result<Vec<PersistedTransaction>, StoreError> {
        self.check_open()?;
        self.inner.readers.with(read::transactions)
    }

    /// One page of persisted transactions in (tenant, TX) order; as
    /// `Backend::list_transactions`.
    pub async fn list_transactions(
        &self,
        tenant: Option<&[u8]>,
        after: Option<(&[u8], &[u8])>,
        limit: usize,
    ) -> Result<Vec<PersistedTransaction>, StoreError> {
        let tenant = tenant.map(<[u8]>::to_vec);
        let after = after.map(|(t, x)| (t.to_vec(), x.to_vec()));
        self.blocking_read(move |conn| {
            let after = after.as_ref().map(|(t, x)| (&t[..], &x[..]));
            read::list_transactions(conn, tenant.as_deref(), after, limit)
        })
        .await
    }

    /// How many persisted transactions each tenant has (start-up: counted, none read).
    /// Blocking.
    pub fn count_transactions(&self) -> Result<Vec<(bytes::Bytes, u64)>, StoreError> {
        self.check_open()?;
        self.inner.readers.with(read::count_transactions)
    }

    /// The persisted transactions of `tenant` with PersistToken `ps`, or TX `tx`: none, one, or
    /// two (one each way). Reads the last commit made before the read starts.
    pub async fn find_transactions(
        &self,
        tenant: &[u8],
        ps: Option<&[u8]>,
        tx: &[u8],
    ) -> Result<Vec<PersistedTransaction>, StoreError> {
        self.check_open()?;
        let (reply, receiver) = oneshot::channel();
        let find = finder::Find {
            tenant: tenant.to_vec(),
            ps: ps.map(<[u8]>::to_vec),
            tx: tx.to_vec(),
            reply,
        };
        let sent = match &*self
            .inner
            .finds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(finds) => finds.send(find).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::Closed);
        }
        receiver.await.map_err(|_| StoreError::Closed)?
    }

    /// At most `limit` persisted transactions that nobody has held since `cutoff_ms` or
    /// earlier, the longest released first.
    pub async fn released_transactions(
        &self,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<PersistedTransaction>, StoreError> {
        self.blocking_read(move |conn| read::released_transactions(conn, cutoff_ms, limit))
            .await
    }

    /// One step of a pass over every persisted transaction, for those that were held when the
    /// store was last closed (or the service stopped): the store keeps them as held
    /// (`released_ms` `None`) and knows them apart from those held now by the run that wrote
    /// them. The step reads at most `scan` rows after position `after` (0: from the start),
    /// and returns those, and the position of the next step (`None`: the pass is done; a row
    /// written from now on is never one of them).
    pub async fn held_at_stop(
        &self,
        after: i64,
        scan: usize,
    ) -> Result<(Vec<PersistedTransaction>, Option<i64>), StoreError> {
        let run = self.inner.run;
        self.blocking_read(move |conn| read::held_before_run(conn, run, after, scan))
            .await
    }

    /// Runs a blocking read on a pooled read-only connection, off the async worker threads.
    async fn blocking_read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.check_open()?;
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.inner.readers.with(f)).await {
            Ok(result) => result,
            // A bug in a read must not pass for a closed store.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// [`Store::read_after_bounded`] without a bound in bytes.
    pub async fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Outcome>>, StoreError> {
        self.read_after_bounded(after, limit, u64::MAX).await
    }

    /// Outcomes with seq > `after`, ascending, at most `limit`: from the in-memory tail when it
    /// covers `after` (shared, nothing copied), else from SQLite, then also no more than about
    /// `max_bytes` of them (counted like size retention; always at least one). A position
    /// before the oldest retained outcome reads from the oldest one (compare with `oldest_seq`
    /// to detect the gap).
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
            .shared
            .tail
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .read_after(after, limit, max_bytes);
        if let Some(outcomes) = from_tail {
            return Ok(outcomes);
        }
        self.blocking_read(move |conn| read::outcomes_after(conn, after, limit, max_bytes))
            .await
    }

    /// What the store did since it opened; see [`Backend::stats`].
    pub fn stats(&self) -> StoreStats {
        self.inner.shared.stats.snapshot()
    }

    /// The last committed (and published) sequence number; 0 before the first outcome ever.
    pub fn last_seq(&self) -> u64 {
        *self.inner.shared.last_seq.borrow()
    }

    /// Wakes whenever new outcomes are committed; the value is `last_seq`.
    pub fn watch_last_seq(&self) -> watch::Receiver<u64> {
        self.inner.shared.last_seq.subscribe()
    }

    /// The oldest outcome still retained, `None` when the log is empty.
    pub fn oldest_seq(&self) -> Option<u64> {
        match self.inner.shared.oldest.load(Ordering::Acquire) {
            0 => None,
            seq => Some(seq),
        }
    }

    /// The most recent outcome of (tenant, cn) whose si equals `si` or, when `si` is `None`,
    /// whose number is `tn`: its tn, or its si when it stores no tn (an outcome keeps a tn only
    /// when it differs from si, so a call whose SI defaulted to its TN has the number in si
    /// alone). `None` when there is none (or neither key is given).
    pub async fn latest_outcome(
        &self,
        tenant: &[u8],
        cn: &[u8],
        si: Option<&[u8]>,
        tn: Option<&[u8]>,
    ) -> Result<Option<Arc<Outcome>>, StoreError> {
        let (tenant, cn) = (tenant.to_vec(), cn.to_vec());
        let (si, tn) = (si.map(<[u8]>::to_vec), tn.map(<[u8]>::to_vec));
        let found = self
            .blocking_read(move |conn| {
                read::latest_outcome(conn, &tenant, &cn, si.as_deref(), tn.as_deref())
            })
            .await?;
        Ok(found.map(Arc::new))
    }

    /// The idempotency key `key` of `tenant`, with the first seq its batch appended, if it was
    /// committed at `since_ms` or later (it counts only so long; older uses are as good as
    /// none). Reads the last commit made before the read starts. The writer removes a key only
    /// a minute after the window, so a key inside the window when the caller read its clock is
    /// still there.
    pub async fn key_committed(
        &self,
        tenant: &[u8],
        key: &[u8],
        since_ms: i64,
    ) -> Result<Option<UsedKey>, StoreError> {
        let (tenant, key) = (tenant.to_vec(), key.to_vec());
        self.blocking_read(move |conn| read::key_committed(conn, &tenant, &key, since_ms))
            .await
    }

    /// Applies retention now: age relative to `now_ms`, then size; idempotency keys past the
    /// dedup window too. Returns how many outcomes it removed. Runs on the writer in bounded steps, with other writes served in between.
    /// The writer also does this by itself every few seconds.
    pub async fn trim(&self, now_ms: i64) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            self.check_open()?;
            let (reply, receiver) = oneshot::channel();
            self.inner
                .requests
                .send(Request::Trim { now_ms, reply })
                .map_err(|_| StoreError::Closed)?;
            let step = receiver.await.map_err(|_| StoreError::Closed)??;
            removed += step.removed;
            if !step.more {
                return Ok(removed);
            }
        }
    }

    /// Stops accepting, commits everything queued before this call, checkpoints, and joins the
    /// writer thread. Other clones then get `StoreError::Closed`, as does a second `close`.
    /// Blocking (it waits for the last commit); it needs no async runtime.
    pub fn close(self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Err(StoreError::Closed);
        }
        // Ignored error: the writer already stopped; joining it reports why.
        let _ = self.inner.requests.send(Request::Close);
        self.inner.readers.clear();
        // The finder ends with its queue.
        drop(
            self.inner
                .finds
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let finder = self
            .inner
            .finder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if finder.is_some_and(|finder| finder.join().is_err()) {
            tracing::error!("the store's finder thread panicked");
        }
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let closed = match handle {
            Some(handle) => handle.join().map_err(|_| StoreError::WriterPanicked)?,
            None => Err(StoreError::Closed),
        };
        // Closed: another store may open the directory now.
        drop(
            self.inner
                .lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        closed
    }
}
