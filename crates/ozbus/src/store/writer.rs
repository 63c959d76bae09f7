//! The writer thread: the only connection that writes, doing group commit and retention.
//!
//! Owns: the write connection, sequence-number assignment, the log's high-water mark and byte
//! count, and publishing commits (tail, `watch`, tickets) — in that order, and only after the
//! commit returned. Never: reports a batch as committed before SQLite's COMMIT succeeded, and
//! never runs on an async worker thread (it blocks on fsync by design).
//!
//! # Out of space
//!
//! A write that fails for lack of space (SQLite's SQLITE_FULL, or a write refused with ENOSPC
//! or EDQUOT) fails its batch, or its group, like any failure: SQLite rolls back, the log state
//! is restored, nothing is published. Unlike other failures it is reported as
//! [`StoreError::OutOfSpace`], which the service answers by refusing ingestion rather than by
//! stopping, and the writer then (1) marks the store full (`space::Space`, the gauge
//! `ozbus_store_full`, one log line) and, every [`PROBE_INTERVAL`], tries whether
//! [`PROBE_BYTES`] can be written and synced in the data directory; once they can, the store is
//! no longer full (one log line). (2) If the batch changed call records or the log, it raises
//! the fence: such batches are computed from the service's call book, which already holds the
//! failed batch's changes, so every later one fails without being tried until the service
//! re-reads the records (`Request::Reload`) and with them rebuilds its book.
//!
//! A failed fsync is never "out of space", whatever its errno: after it the kernel may have
//! dropped the pages it could not write, so the file may lack what an earlier, successful
//! write put there; the service must stop. The same goes for every failure after which SQLite
//! cannot say whether the commit is on disk (growing the shared-memory index happens after the
//! WAL is synced, for one).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{ffi, Connection, OptionalExtension};
use tokio::sync::{oneshot, watch};

use super::model::{CallRecord, Mutation, NewOutcome, Outcome};
use super::rows::{
    self, class_code, outcome_insert, outcome_size, record_insert, state_code, to_sql_u64,
    transaction_insert,
};
use super::space::Space;
use super::tail::Tail;
use super::StoreError;

/// How often the writer applies retention by itself when nothing asked it to.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Most outcomes one retention step deletes, in its own transaction. Bounded so that a large
/// backlog of expired outcomes (after a long downtime, say) is removed a chunk at a time with
/// ingestion served in between, instead of one long transaction that stalls every commit.
pub(crate) const TRIM_CHUNK: u64 = 10_000;

/// While the store is full, how often the writer tries whether there is room again.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// What "room again" means: this many bytes can be written and synced. More than one large
/// report needs (a DT of 128,000 characters, in a record and then in an outcome), so that the
/// store does not flip between full and not full on every request while space is scarce.
pub(crate) const PROBE_BYTES: usize = 1 << 20;
/// The file the probe writes in the data directory, and removes.
const PROBE_FILE: &str = "ozbus.probe";

/// What the writer thread is asked to do.
pub(crate) enum Request {
    Batch {
        mutations: Vec<Mutation>,
        reply: BatchReply,
    },
    Trim {
        now_ms: i64,
        reply: TrimReply,
    },
    /// Read every open call record, as committed after every batch queued before this one,
    /// and lower the fence (see the module comment).
    Reload {
        reply: ReloadReply,
    },
    /// Commit everything queued before this, checkpoint, and stop.
    Close,
    /// Run SQL on the write connection (tests: `PRAGMA max_page_count` makes SQLite run out
    /// of space on any file system).
    #[cfg(test)]
    Sql {
        sql: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The result of one bounded retention step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrimStep {
    pub(crate) removed: u64,
    /// The step stopped at its bound; more outcomes are due for removal.
    pub(crate) more: bool,
}

/// State shared between the writer (which updates it after each commit) and `Store` handles.
pub(crate) struct Shared {
    pub(crate) tail: RwLock<Tail>,
    pub(crate) last_seq: watch::Sender<u64>,
    /// Oldest retained seq; 0 when the log is empty (seqs start at 1).
    pub(crate) oldest: AtomicU64,
    /// Out of space, and the fence (see the module comment).
    pub(crate) space: Space,
    pub(crate) stats: StatsCounters,
}

impl Shared {
    fn publish_oldest(&self, oldest: Option<u64>) {
        self.oldest.store(oldest.unwrap_or(0), Ordering::Release);
    }
}

/// Counts one group commit that succeeded: how long it took (from its first statement to its
/// answer, fsync included) and how many submitted batches it made durable at once, in the
/// histograms of `/metrics` and in the store's own `stats`. For both backends.
pub(crate) fn record_commit(stats: &StatsCounters, took: Duration, batches: usize) {
    metrics::histogram!("ozbus_store_commit_seconds").record(took.as_secs_f64());
    metrics::histogram!("ozbus_store_commit_batch_size").record(batches as f64);
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.commit_micros.fetch_add(
        u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// Counters of the store's own work since it opened, for [`Backend::stats`]: raised by the
/// writer (commits) and by whoever learns the log's size (`ozbus_log_bytes`).
///
/// [`Backend::stats`]: super::Backend::stats
#[derive(Default)]
pub(crate) struct StatsCounters {
    commits: AtomicU64,
    commit_micros: AtomicU64,
    log_bytes: AtomicU64,
}

impl StatsCounters {
    /// The log's size as size retention counts it, in `ozbus_log_bytes` too.
    pub(crate) fn set_log_bytes(&self, bytes: u64) {
        metrics::gauge!("ozbus_log_bytes").set(bytes as f64);
        self.log_bytes.store(bytes, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> super::StoreStats {
        super::StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            commit_micros: self.commit_micros.load(Ordering::Relaxed),
            log_bytes: self.log_bytes.load(Ordering::Relaxed),
        }
    }
}

/// Retention limits, as the writer applies them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub(crate) max_age_ms: i64,
    pub(crate) max_bytes: Option<u64>,
    /// Idempotency keys older than this are removed (the dedup window plus [`KEY_GRACE_MS`]).
    pub(crate) key_max_age_ms: i64,
}

/// How long after the dedup window a key is still kept on disk. Whether a key counts is
/// decided by its age when a request looks it up (`Store::key_committed`), on a clock read a
/// moment before; the writer removes keys on its own clock, later. Removing them only a while
/// after the window makes sure a key still inside the window when a request looked is there.
pub(crate) const KEY_GRACE_MS: i64 = 60_000;

/// What the writer knows about the committed log. Copied before a transaction and restored
/// when it fails, so memory never runs ahead of disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogState {
    pub(crate) last_seq: u64,
    pub(crate) last_accepted_ms: i64,
    pub(crate) log_bytes: u64,
    pub(crate) oldest: Option<u64>,
}

type BatchReply = oneshot::Sender<Result<Vec<u64>, StoreError>>;
type TrimReply = oneshot::Sender<Result<TrimStep, StoreError>>;
type ReloadReply = oneshot::Sender<Result<Vec<CallRecord>, StoreError>>;

/// What one turn of the writer loop serves: the batches of one group commit, then any trim
/// requests that were queued among them, then possibly the close.
#[derive(Default)]
struct Turn {
    batches: Vec<(Vec<Mutation>, BatchReply)>,
    trims: Vec<(i64, TrimReply)>,
    /// Mutations taken so far, for the group cap (an empty batch counts as one).
    mutations: usize,
    /// A reload ends the turn: it reads what the batches before it left, none after it.
    reload: Option<ReloadReply>,
    close: bool,
    #[cfg(test)]
    sql: Vec<(String, oneshot::Sender<Result<(), StoreError>>)>,
}

impl Turn {
    fn take(&mut self, request: Request) {
        match request {
            Request::Batch { mutations, reply } => {
                self.mutations += mutations.len().max(1);
                self.batches.push((mutations, reply));
            }
            Request::Trim { now_ms, reply } => self.trims.push((now_ms, reply)),
            Request::Reload { reply } => self.reload = Some(reply),
            Request::Close => self.close = true,
            #[cfg(test)]
            Request::Sql { sql, reply } => self.sql.push((sql, reply)),
        }
    }

    /// Whether this turn takes no more requests.
    fn ended(&self) -> bool {
        self.close || self.reload.is_some()
    }
}

pub(crate) struct Writer {
    conn: Connection,
    state: LogState,
    /// This run of the store, written into every persisted transaction it puts.
    run: i64,
    shared: Arc<Shared>,
    retention: Retention,
    max_batch: usize,
    /// The data directory, where the probe writes.
    dir: PathBuf,
    /// While the store is full (`Shared::space`): when to probe for room next.
    next_probe: Instant,
}

/// Whether a batch changes what the service's call book is computed from: call records, or
/// the log (whose latest outcomes UO reads).
/// Idempotency keys count too: they come in the same batches, and the service's memory of keys
/// in flight is what the failed batch leaves behind as well.
fn touches_book(mutations: &[Mutation]) -> bool {
    mutations.iter().any(|m| {
        matches!(
            m,
            Mutation::Append(_)
                | Mutation::PutRecord(_)
                | Mutation::DeleteRecord { .. }
                | Mutation::RememberKey { .. }
        )
    })
}

fn is_lack_of_space(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// The operating system's error code behind the connection's last I/O error.
fn system_errno(conn: &Connection) -> i32 {
    // SAFETY: the handle is of a connection that is open for as long as `conn` is borrowed,
    // and used by this thread only (the writer's connection never leaves it);
    // sqlite3_system_errno only reads a field of it.
    unsafe { ffi::sqlite3_system_errno(conn.handle()) }
}

pub(crate) fn now_ms() -> i64 {
    // A clock before 1970 is a broken clock; 0 keeps accepted_ms monotone via the clamp.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads the committed log state from a freshly opened (and migrated) write connection.
pub(crate) fn load_state(conn: &Connection) -> Result<LogState, StoreError> {
    let (last_seq, last_accepted_ms, log_bytes): (i64, i64, i64) = conn.query_row(
        "SELECT last_seq, last_accepted_ms, log_bytes FROM meta WHERE id = 0",
        [],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    let (min_seq, max_seq): (Option<i64>, Option<i64>) = conn.query_row(
        "SELECT (SELECT min(seq) FROM outcomes), (SELECT max(seq) FROM outcomes)",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let last_seq = rows::from_sql_u64(last_seq, "last_seq")?;
    let max_seq = max_seq.map(|s| rows::from_sql_u64(s, "seq")).transpose()?;
    // The high-water mark is written in the same transaction as every append, so it can never
    // be behind; if it somehow were, trusting it would reuse a sequence number.
    if max_seq.is_some_and(|max| max > last_seq) {
        return Err(StoreError::Corrupt(format!(
            "log high-water mark {last_seq} is behind the newest outcome {max_seq:?}"
        )));
    }
    Ok(LogState {
        last_seq,
        last_accepted_ms,
        log_bytes: rows::from_sql_u64(log_bytes, "log_bytes")?,
        oldest: min_seq.map(|s| rows::from_sql_u64(s, "seq")).transpose()?,
    })
}

/// Counts a start of the store and returns its number: a persisted transaction written as held
/// by an earlier run was held when that run ended.
pub(crate) fn begin_run(conn: &Connection) -> Result<i64, StoreError> {
    let run = conn.query_row(
        "UPDATE meta SET run = run + 1 WHERE id = 0 RETURNING run",
        [],
        |row| row.get(0),
    )?;
    Ok(run)
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        state: LogState,
        run: i64,
        shared: Arc<Shared>,
        retention: Retention,
        max_batch: usize,
        dir: PathBuf,
    ) -> Writer {
        Writer {
            conn,
            state,
            run,
            shared,
            retention,
            max_batch: max_batch.max(1),
            dir,
            next_probe: Instant::now(),
        }
    }

    /// The thread's body: serve requests until `Close` or until every `Store` handle is gone.
    pub(crate) fn run(mut self, requests: Receiver<Request>) -> Result<(), StoreError> {
        let mut next_trim = Instant::now() + TRIM_INTERVAL;
        loop {
            let mut turn = Turn::default();
            let wake = match self.shared.space.is_full() {
                true => next_trim.min(self.next_probe),
                false => next_trim,
            };
            match requests.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(first) => {
                    // Group commit: whatever is already queued rides along with the first
                    // request, up to the cap, so one fsync covers many batches.
                    turn.take(first);
                    while !turn.ended() && turn.mutations < self.max_batch {
                        match requests.try_recv() {
                            Ok(request) => turn.take(request),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if !turn.batches.is_empty() {
                self.commit_group(turn.batches);
            }
            for (now_ms, reply) in turn.trims {
                let _ = reply.send(self.retention_step(now_ms, TRIM_CHUNK));
            }
            if let Some(reply) = turn.reload {
                let _ = reply.send(self.reload());
            }
            #[cfg(test)]
            for (sql, reply) in turn.sql {
                let _ = reply.send(self.conn.execute_batch(&sql).map_err(StoreError::from));
            }
            if turn.close {
                break;
            }
            if self.shared.space.is_full() && Instant::now() >= self.next_probe {
                self.probe_for_room();
            }
            if Instant::now() >= next_trim {
                next_trim = match self.retention_step(now_ms(), TRIM_CHUNK) {
                    // Due work left: come back right after serving what is queued meanwhile.
                    Ok(step) if step.more => Instant::now(),
                    Ok(_) => Instant::now() + TRIM_INTERVAL,
                    Err(error) => {
                        // Out of space is said once, when it starts; not every few seconds.
                        if self.out_of_space(&error) {
                            tracing::debug!(%error, "store retention failed; will retry");
                        } else {
                            tracing::warn!(%error, "store retention failed; will retry");
                        }
                        Instant::now() + TRIM_INTERVAL
                    }
                };
            }
        }
        self.finish()
    }

    /// Whether `error`, just returned by the write connection, means that there was no room
    /// to write: SQLITE_FULL, or a write(2) refused with ENOSPC or EDQUOT (SQLite reports the
    /// latter as a plain write error). Never a failed fsync, nor anything after which the
    /// commit may be on disk (see the module comment).
    fn out_of_space(&self, error: &StoreError) -> bool {
        match error {
            StoreError::OutOfSpace(_) => true,
            StoreError::Io(error) => is_lack_of_space(error),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => match failure.code {
                rusqlite::ErrorCode::DiskFull => true,
                rusqlite::ErrorCode::SystemIoFailure => {
                    failure.extended_code == ffi::SQLITE_IOERR_WRITE
                        && is_lack_of_space(&std::io::Error::from_raw_os_error(system_errno(
                            &self.conn,
                        )))
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// A write failed for lack of space; `book`: it changed call records or the log.
    fn ran_out_of_space(&mut self, book: bool) {
        if self.shared.space.ran_out(book, self.dir.display()) {
            self.next_probe = Instant::now() + PROBE_INTERVAL;
        }
    }

    /// Whether [`PROBE_BYTES`] can be written and synced in the data directory now; if so,
    /// the store is no longer full.
    fn probe_for_room(&mut self) {
        let path = self.dir.join(PROBE_FILE);
        let written = (|| {
            let mut file = std::fs::File::create(&path)?;
            let chunk = [0u8; 64 * 1024];
            for _ in 0..PROBE_BYTES / chunk.len() {
                file.write_all(&chunk)?;
            }
            // Some file systems only find out at writeback that the blocks are not there.
            file.sync_all()
        })();
        let removed = std::fs::remove_file(&path);
        match written.and(removed) {
            Ok(()) => self.shared.space.room_again(self.dir.display()),
            Err(error) => {
                tracing::debug!(%error, "the store is still out of space");
                self.next_probe = Instant::now() + PROBE_INTERVAL;
            }
        }
    }

    /// Every open call record as committed now, for the service to rebuild its call book
    /// from; lowers the fence.
    fn reload(&mut self) -> Result<Vec<CallRecord>, StoreError> {
        let records = super::read::records(&self.conn)?;
        self.shared.space.lower_fence();
        Ok(records)
    }

    fn finish(self) -> Result<(), StoreError> {
        // TRUNCATE leaves an empty WAL behind, so the next open has nothing to recover. A reader
        // still busy elsewhere only makes it partial ("busy"), which is harmless.
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        if busy != 0 {
            tracing::debug!("store checkpoint at close was partial: readers were active");
        }
        self.conn.close().map_err(|(_, error)| error)?;
        Ok(())
    }

    fn exec(&self, sql: &'static str) -> Result<(), StoreError> {
        self.conn.prepare_cached(sql)?.execute(())?;
        Ok(())
    }

    /// Runs every batch of the group in one transaction (a savepoint each, so one bad batch
    /// fails alone), commits once, then publishes.
    fn commit_group(&mut self, group: Vec<(Vec<Mutation>, BatchReply)>) {
        let started = Instant::now();
        let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let group_touches_book = batches.iter().any(|b| touches_book(b));
        let before = self.state;
        let mut state = before;
        let accepted_ms = now_ms().max(before.last_accepted_ms);
        let mut appended: Vec<Arc<Outcome>> = Vec::new();
        let mut results: Vec<Result<Vec<u64>, StoreError>> = Vec::with_capacity(batches.len());

        let written = (|| -> Result<(), StoreError> {
            self.exec("BEGIN IMMEDIATE")?;
            for mutations in batches {
                let book = touches_book(&mutations);
                if book && self.shared.space.fenced() {
                    results.push(Err(StoreError::OutOfSpace(Arc::new(StoreError::Fenced))));
                    continue;
                }
                self.exec("SAVEPOINT batch")?;
                let mark = (state, appended.len());
                match self.apply(mutations, &mut state, &mut appended, accepted_ms) {
                    Ok(seqs) => {
                        self.exec("RELEASE batch")?;
                        results.push(Ok(seqs));
                    }
                    Err(error) => {
                        let error = match self.out_of_space(&error) {
                            true => {
                                // Raises the fence before the next batch of this group.
                                self.ran_out_of_space(book);
                                StoreError::OutOfSpace(Arc::new(error))
                            }
                            false => error,
                        };
                        if error.is_out_of_space() && self.conn.is_autocommit() {
                            // SQLite rolled the whole transaction back: the group fails for
                            // this batch's reason.
                            return Err(error);
                        }
                        // If SQLite already rolled the whole transaction back (it may, on I/O
                        // errors), the savepoint is gone: this fails, and with it the whole
                        // group, which is then not durable either.
                        self.exec("ROLLBACK TO batch")?;
                        self.exec("RELEASE batch")?;
                        state = mark.0;
                        appended.truncate(mark.1);
                        results.push(Err(error));
                    }
                }
            }
            if state != before {
                let changed = self
                    .conn
                    .prepare_cached(
                        "UPDATE meta SET last_seq = ?1, last_accepted_ms = ?2, log_bytes = ?3 \
                         WHERE id = 0",
                    )?
                    .execute((
                        to_sql_u64(state.last_seq, "seq")?,
                        state.last_accepted_ms,
                        to_sql_u64(state.log_bytes, "log_bytes")?,
                    ))?;
                if changed != 1 {
                    return Err(StoreError::Corrupt("the meta row is missing".into()));
                }
            }
            self.exec("COMMIT")?;
            Ok(())
        })();

        if let Err(error) = written {
            // Classified before the rollback, which may leave an error code of its own.
            let (space, cause) = match error {
                StoreError::OutOfSpace(cause) => (true, cause),
                error => (self.out_of_space(&error), Arc::new(error)),
            };
            self.rollback_after(&cause);
            if space {
                self.ran_out_of_space(group_touches_book);
                // Said once, when the store becomes full; not for every batch refused after.
                tracing::debug!(error = %cause, batches = replies.len(), "store commit failed: out of space");
            } else {
                tracing::error!(error = %cause, batches = replies.len(), "store commit failed");
            }
            for reply in replies {
                let _ = reply.send(Err(match space {
                    true => StoreError::OutOfSpace(cause.clone()),
                    false => StoreError::CommitFailed(cause.clone()),
                }));
            }
            return;
        }

        self.state = state;
        record_commit(&self.shared.stats, started.elapsed(), replies.len());
        self.shared.stats.set_log_bytes(state.log_bytes);
        metrics::counter!("ozbus_store_commits_total").increment(1);
        metrics::counter!("ozbus_outcomes_committed_total").increment(appended.len() as u64);
        if !appended.is_empty() {
            self.shared
                .tail
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(appended);
            self.shared.publish_oldest(state.oldest);
            self.shared.last_seq.send_replace(state.last_seq);
        }
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }

    /// Ends a transaction that failed part-way, if SQLite has not ended it already.
    fn rollback_after(&self, error: &StoreError) {
        if !self.conn.is_autocommit() {
            if let Err(rollback) = self.exec("ROLLBACK") {
                tracing::error!(%error, %rollback, "store rollback after a failure failed");
            }
        }
    }

    /// Applies one batch inside the open transaction, returning the seqs of its appends.
    fn apply(
        &self,
        mutations: Vec<Mutation>,
        state: &mut LogState,
        appended: &mut Vec<Arc<Outcome>>,
        accepted_ms: i64,
    ) -> Result<Vec<u64>, StoreError> {
        let mut seqs = Vec::new();
        // The seq the batch's first append takes, which its key (if any) is stored with.
        let first_seq = match mutations.iter().any(|m| matches!(m, Mutation::Append(_))) {
            true => Some(to_sql_u64(
                state
                    .last_seq
                    .checked_add(1)
                    .ok_or(StoreError::OutOfRange("seq"))?,
                "seq",
            )?),
            false => None,
        };
        for mutation in mutations {
            match mutation {
                Mutation::Append(outcome) => {
                    let seq = state
                        .last_seq
                        .checked_add(1)
                        .ok_or(StoreError::OutOfRange("seq"))?;
                    let size = outcome_size(&outcome);
                    self.insert_outcome(seq, accepted_ms, size, &outcome)?;
                    state.last_seq = seq;
                    state.last_accepted_ms = accepted_ms;
                    state.log_bytes = state.log_bytes.saturating_add(size);
                    state.oldest.get_or_insert(seq);
                    seqs.push(seq);
                    appended.push(Arc::new(Outcome {
                        seq,
                        accepted_ms,
                        outcome,
                        rendered: Default::default(),
                    }));
                }
                Mutation::PutRecord(r) => {
                    self.conn
                        .prepare_cached(concat!(
                            "INSERT INTO records ",
                            record_insert!(),
                            " ON CONFLICT (tenant, si) DO UPDATE SET cn = excluded.cn, \
                             tn = excluded.tn, preview_agent = excluded.preview_agent, \
                             agent = excluded.agent, as_data = excluded.as_data, dt = excluded.dt, \
                             state = excluded.state, created_ms = excluded.created_ms, \
                             expires_ms = excluded.expires_ms, connected_ms = excluded.connected_ms"
                        ))?
                        .execute((
                            r.tenant.as_ref(),
                            r.si.as_ref(),
                            r.cn.as_ref(),
                            r.tn.as_deref(),
                            r.preview_agent.as_deref(),
                            r.agent.as_deref(),
                            r.as_data.as_deref(),
                            r.dt.as_deref(),
                            state_code(r.state),
                            r.created_ms,
                            r.expires_ms,
                            r.connected_ms,
                        ))?;
                }
                Mutation::DeleteRecord { tenant, si } => {
                    self.conn
                        .prepare_cached("DELETE FROM records WHERE tenant = ?1 AND si = ?2")?
                        .execute((tenant.as_ref(), si.as_ref()))?;
                }
                Mutation::PutTransaction(t) => {
                    let params = (
                        t.tenant.as_ref(),
                        t.ps.as_ref(),
                        t.tx.as_ref(),
                        t.request.as_ref(),
                        to_sql_u64(t.cursor, "cursor")?,
                        t.released_ms,
                        self.run,
                    );
                    // Most puts keep the row's TX (a release, a re-issue under the same TX):
                    // leaving it out of the SET leaves its index entry alone.
                    let kept_tx = self
                        .conn
                        .prepare_cached(
                            "UPDATE transactions SET request = ?4, cursor = max(cursor, ?5), \
                             released_ms = ?6, run = ?7 \
                             WHERE tenant = ?1 AND ps = ?2 AND tx IS ?3",
                        )?
                        .execute(params)?;
                    if kept_tx == 0 {
                        self.conn
                            .prepare_cached(concat!(
                                "INSERT INTO transactions ",
                                transaction_insert!(),
                                " ON CONFLICT (tenant, ps) DO UPDATE SET tx = excluded.tx, \
                                 request = excluded.request, \
                                 cursor = max(cursor, excluded.cursor), \
                                 released_ms = excluded.released_ms, run = excluded.run"
                            ))?
                            .execute(params)?;
                    }
                }
                Mutation::MoveCursor { tenant, ps, cursor } => {
                    self.conn
                        .prepare_cached(
                            "UPDATE transactions SET cursor = max(cursor, ?3) \
                             WHERE tenant = ?1 AND ps = ?2",
                        )?
                        .execute((tenant.as_ref(), ps.as_ref(), to_sql_u64(cursor, "cursor")?))?;
                }
                Mutation::RewindCursor { tenant, ps, cursor } => {
                    self.conn
                        .prepare_cached(
                            "UPDATE transactions SET cursor = ?3 WHERE tenant = ?1 AND ps = ?2",
                        )?
                        .execute((tenant.as_ref(), ps.as_ref(), to_sql_u64(cursor, "cursor")?))?;
                }
                Mutation::DeleteTransaction { tenant, ps } => {
                    self.conn
                        .prepare_cached("DELETE FROM transactions WHERE tenant = ?1 AND ps = ?2")?
                        .execute((tenant.as_ref(), ps.as_ref()))?;
                }
                // Only stores shared by nodes keep who holds a TX.
                Mutation::ClaimTx { .. } | Mutation::UnclaimTx { .. } => {}
                Mutation::RememberKey { tenant, key } => {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO ingest_keys (tenant, key, accepted_ms, seq) \
                             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tenant, key) \
                             DO UPDATE SET accepted_ms = excluded.accepted_ms, seq = excluded.seq",
                        )?
                        .execute((tenant.as_ref(), key.as_ref(), accepted_ms, first_seq))?;
                }
            }
        }
        Ok(seqs)
    }

    fn insert_outcome(
        &self,
        seq: u64,
        accepted_ms: i64,
        size: u64,
        o: &NewOutcome,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(concat!("INSERT INTO outcomes ", outcome_insert!()))?
            .execute(rusqlite::params![
                to_sql_u64(seq, "seq")?,
                accepted_ms,
                to_sql_u64(size, "size")?,
                o.tenant.as_ref(),
                class_code(o.class),
                o.cn.as_ref(),
                o.an.as_deref(),
                o.si.as_ref(),
                o.tn.as_deref(),
                o.re,
                o.ao,
                o.dd,
                o.as_data.as_deref(),
                o.co.as_deref(),
                o.ba.as_deref(),
                o.bn.as_deref(),
                o.bt.as_deref(),
                o.dt.as_ref(),
            ])?;
        Ok(())
    }

    /// One bounded step of retention: idempotency keys past their time, then the log, each at
    /// most `limit` rows in a transaction of its own.
    pub(crate) fn retention_step(
        &mut self,
        now_ms: i64,
        limit: u64,
    ) -> Result<TrimStep, StoreError> {
        let keys_left = self.expire_keys(now_ms, limit)?;
        let mut step = self.trim_step(now_ms, limit)?;
        step.more |= keys_left;
        Ok(step)
    }

    /// Removes at most `limit` idempotency keys older than the dedup window (and its grace);
    /// true when more are due.
    fn expire_keys(&mut self, now_ms: i64, limit: u64) -> Result<bool, StoreError> {
        let cutoff = now_ms.saturating_sub(self.retention.key_max_age_ms);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.exec("BEGIN IMMEDIATE")?;
        let removed = self
            .conn
            .prepare_cached(
                "DELETE FROM ingest_keys WHERE rowid IN \
                 (SELECT rowid FROM ingest_keys WHERE accepted_ms < ?1 ORDER BY accepted_ms LIMIT ?2)",
            )
            .and_then(|mut stmt| stmt.execute((cutoff, limit)))
            .map_err(StoreError::from)
            .and_then(|removed| self.exec("COMMIT").map(|()| removed));
        match removed {
            Ok(removed) => Ok(i64::try_from(removed).unwrap_or(i64::MAX) >= limit),
            Err(error) => {
                self.rollback_after(&error);
                Err(error)
            }
        }
    }

    /// One bounded retention step in its own transaction: removes a prefix of the log (by age
    /// relative to `now_ms`, then by size), at most `limit` outcomes.
    pub(crate) fn trim_step(&mut self, now_ms: i64, limit: u64) -> Result<TrimStep, StoreError> {
        let Some(oldest) = self.state.oldest else {
            return Ok(TrimStep {
                removed: 0,
                more: false,
            });
        };
        self.exec("BEGIN IMMEDIATE")?;
        match self.trim_in_transaction(oldest, now_ms, limit) {
            Ok((step, upto, state)) => {
                self.state = state;
                self.shared.stats.set_log_bytes(state.log_bytes);
                self.shared
                    .tail
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .forget_upto(upto);
                self.shared.publish_oldest(state.oldest);
                Ok(step)
            }
            Err(error) => {
                self.rollback_after(&error);
                Err(error)
            }
        }
    }

    fn trim_in_transaction(
        &self,
        oldest: u64,
        now_ms: i64,
        limit: u64,
    ) -> Result<(TrimStep, u64, LogState), StoreError> {
        let mut state = self.state;
        let oldest_sql = to_sql_u64(oldest, "seq")?;
        // Seqs in [oldest, bound] are at most `limit` rows, whatever gaps the log has.
        let bound = oldest_sql.saturating_add(i64::try_from(limit).unwrap_or(i64::MAX) - 1);
        let cutoff = now_ms.saturating_sub(self.retention.max_age_ms);

        // accepted_ms never decreases along the log (the writer clamps it), so everything up to
        // the newest too-old outcome is too old: age retention removes a prefix, never a hole.
        let newest_expired: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT seq FROM outcomes WHERE accepted_ms < ?1 \
                 ORDER BY accepted_ms DESC, seq DESC LIMIT 1",
            )?
            .query_row([cutoff], |row| row.get(0))
            .optional()?;
        let mut upto = oldest_sql - 1;
        let mut age_limited = false;
        if let Some(expired) = newest_expired {
            upto = expired.min(bound);
            age_limited = expired > bound;
        }
        let mut removed_bytes: u64 = if upto >= oldest_sql {
            let sum: i64 = self
                .conn
                .prepare_cached(
                    "SELECT coalesce(sum(size), 0) FROM outcomes WHERE seq BETWEEN ?1 AND ?2",
                )?
                .query_row((oldest_sql, upto), |row| row.get(0))?;
            rows::from_sql_u64(sum, "size")?
        } else {
            0
        };

        let mut size_limited = false;
        if let Some(max_bytes) = self.retention.max_bytes {
            let excess = state
                .log_bytes
                .saturating_sub(removed_bytes)
                .saturating_sub(max_bytes);
            if excess > 0 && upto < bound {
                // Rows left in this step's budget (the age part took at most upto - oldest + 1).
                let room = bound - upto;
                let mut stmt = self.conn.prepare_cached(
                    "SELECT seq, size FROM outcomes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                let mut rows = stmt.query((upto, room))?;
                let mut freed = 0u64;
                let mut taken = 0i64;
                while freed < excess {
                    let Some(row) = rows.next()? else { break };
                    upto = row.get(0)?;
                    freed = freed.saturating_add(rows::from_sql_u64(row.get(1)?, "size")?);
                    taken += 1;
                }
                // Stopped by the budget, not by running out of log: another step is due.
                size_limited = freed < excess && taken == room;
                removed_bytes = removed_bytes.saturating_add(freed);
            }
        }

        let removed = if upto >= oldest_sql {
            self.conn
                .prepare_cached("DELETE FROM outcomes WHERE seq BETWEEN ?1 AND ?2")?
                .execute((oldest_sql, upto))? as u64
        } else {
            0
        };
        if removed == 0 {
            self.exec("COMMIT")?;
            return Ok((
                TrimStep {
                    removed: 0,
                    more: false,
                },
                0,
                state,
            ));
        }
        state.log_bytes = state.log_bytes.saturating_sub(removed_bytes);
        let next: Option<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM outcomes WHERE seq > ?1 ORDER BY seq LIMIT 1")?
            .query_row([upto], |row| row.get(0))
            .optional()?;
        state.oldest = next.map(|s| rows::from_sql_u64(s, "seq")).transpose()?;
        if state.oldest.is_none() {
            // An empty log holds no bytes, whatever rounding the running count accumulated.
            state.log_bytes = 0;
        }
        self.conn
            .prepare_cached("UPDATE meta SET log_bytes = ?1 WHERE id = 0")?
            .execute([to_sql_u64(state.log_bytes, "log_bytes")?])?;
        let upto = rows::from_sql_u64(upto, "seq")?;
        self.exec("COMMIT")?;
        Ok((
            TrimStep {
                removed,
                more: age_limited || size_limited,
            },
            upto,
            state,
        ))
    }
}
