//! The writer task: the only connection of a store that writes the log, doing group commit.
//!
//! Owns: its connection (and reconnecting it), the group transaction (one per turn, sent
//! pipelined), this node's group numbers (`ozbus_commits`), finding out after a lost
//! connection whether a group committed, the out-of-space state (full, probe, fence), the
//! call book's fence on the batches that write the book, and publishing commits (tail,
//! `last_seq`, tickets), in that order and only after the commit.
//! Never: reports a batch as committed before PostgreSQL's COMMIT succeeded (or, its answer
//! lost, before the group's row was read back), nor as failed when it may have committed;
//! never writes a batch of the book except under the epoch the lease (`book`) published, nor
//! changes the cursor of a persisted transaction another node took over since (see
//! `Statements::prepare`: cursors and releases apply only to a row this node owns).
//!
//! # A group's transaction
//!
//! ```text
//! BEGIN
//! INSERT INTO ozbus_commits (node, k)          -- claims the group's number: a second attempt
//!                                              -- waits for the first and then fails
//! SELECT ozbus_book_fence(epoch)               -- when a batch writes the book: passes while
//!                                              -- epoch is the book's, and keeps it so until
//!                                              -- the transaction ends (else SQLSTATE OZ001)
//! <the batches' other mutations, one statement each, in order; idempotency keys without a seq>
//! WITH h AS (UPDATE meta ... RETURNING ...)    -- takes the seqs: the row lock, taken late
//!      INSERT INTO outcomes SELECT ... unnest(...), UPDATE ingest_keys SET seq ...,
//!      UPDATE ozbus_commits ..., pg_notify(...)
//! COMMIT
//! ```
//!
//! All of it is sent before the first answer is read. A statement's failure aborts the
//! transaction, so the COMMIT then rolls back; a request that cannot even be sent makes the
//! writer send ROLLBACK instead of COMMIT.
//!
//! # Idempotency keys and their seqs
//!
//! A key (`Mutation::RememberKey`) is stored with the first seq its batch appended, and the
//! seqs are only known in the last statement, which takes them. So a key is inserted in its
//! batch's place, in order like every other mutation, without a seq; the writer notes, for the
//! keys of batches that append, where their batch's first outcome is in the group's arrays
//! (`KeySeqs`), and the last statement sets their seq from the seqs it took. That update only
//! touches rows the transaction has written already, so it never waits for a lock while the
//! meta row's is held (a key of another node's open transaction is waited for by the insert,
//! before the meta row is locked, as before). Written one batch at a time (with savepoints),
//! the seqs are known before each batch (the meta row is locked first), and keys go in with
//! theirs.
//!
//! # The call book's fence
//!
//! A batch writes the book when it changes call records, appends outcomes or remembers an
//! idempotency key ([`touches_book`]). The group takes the epoch under which this node holds
//! the book when it starts; while that is none (0), or an epoch the fence already refused, its
//! batches of the book fail untried with [`StoreError::NotHolder`], the others go on. Before
//! every further attempt at the group (after a lost connection whose group did not commit, or
//! a refusal for now), batches of the book fail the same way if the node no longer holds the
//! book under the group's epoch. When the fence refuses (another node took the book since),
//! the attempt rolls back, the book's batches fail with `NotHolder`, and the group runs again
//! without them, under the same number. `NotHolder` is not a fault of the store: it goes on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::error::{Severity, SqlState};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Row, Statement};

use super::{read, schema, Shared};
use crate::store::model::{CallRecord, Mutation, NewOutcome, Outcome};
use crate::store::rows::{class_code, from_sql_u64, outcome_size, state_code, to_sql_u64};
use crate::store::writer::{now_ms, record_commit, PROBE_BYTES, PROBE_INTERVAL};
use crate::store::StoreError;

/// First wait before reconnecting (or retrying a group PostgreSQL refused for now).
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between two tries.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Rows of `ozbus_commits` a node keeps (its latest groups); older ones go with each group.
const COMMITS_KEPT: i64 = 64;

/// What the writer task is asked to do.
pub(crate) enum Request {
    Batch {
        mutations: Vec<Mutation>,
        reply: BatchReply,
    },
    /// Read every open call record, as committed after every batch queued before this one,
    /// and lower the fence.
    Reload { reply: ReloadReply },
    /// Commit everything queued before this, and stop.
    Close,
}

type BatchReply = oneshot::Sender<Result<Vec<u64>, StoreError>>;
type ReloadReply = oneshot::Sender<Result<Vec<CallRecord>, StoreError>>;

/// What the store knows at open.
pub(crate) struct Start {
    pub(crate) last_seq: u64,
    /// Every seq up to this one is gone (or never was).
    pub(crate) trimmed: u64,
}

/// Reads the log's state in one snapshot (at open, and when the listener reconnects).
pub(crate) async fn load_start(client: &Client) -> Result<Start, StoreError> {
    let row = client
        .query_one(
            "SELECT last_seq, (SELECT min(seq) FROM outcomes), (SELECT max(seq) FROM outcomes) \
             FROM meta WHERE id = 0",
            &[],
        )
        .await?;
    let last_seq = from_sql_u64(row.get(0), "last_seq")?;
    let min: Option<i64> = row.get(1);
    let max: Option<i64> = row.get(2);
    if max.is_some_and(|max| max > row.get::<_, i64>(0)) {
        return Err(StoreError::Corrupt(format!(
            "log high-water mark {last_seq} is behind the newest outcome {max:?}"
        )));
    }
    let trimmed = match min {
        Some(min) => from_sql_u64(min, "seq")?.saturating_sub(1),
        None => last_seq,
    };
    Ok(Start { last_seq, trimmed })
}

/// Why an attempt at a group did not commit, as far as the writer can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The connection failed: the group may or may not have committed.
    Lost,
    /// PostgreSQL refused for now (deadlock, serialization, a cancelled statement): nothing
    /// was written; the same group may be tried again.
    Transient,
    /// SQLSTATE 53100: nothing was written; the store is out of space.
    Space,
    /// Any other refusal: nothing was written; trying the same again fails the same way.
    Persistent,
    /// The call book's fence refused (SQLSTATE [`FENCE_SQLSTATE`]): nothing was written;
    /// another node holds the book under a later epoch.
    NotHolder,
}

/// What `ozbus_book_fence` raises when the epoch it is given is not the book's.
const FENCE_SQLSTATE: &str = "OZ001";

fn failure(error: &tokio_postgres::Error) -> Failure {
    let Some(db) = error.as_db_error() else {
        // Closed, I/O, a protocol error: the connection is not to be trusted any more.
        return Failure::Lost;
    };
    let code = db.code();
    if *code == SqlState::DISK_FULL {
        return Failure::Space;
    }
    if code.code() == FENCE_SQLSTATE {
        return Failure::NotHolder;
    }
    if [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::QUERY_CANCELED,
    ]
    .contains(code)
    {
        return Failure::Transient;
    }
    // The session ends with the error (a terminated backend, a shutdown, a crash), or the
    // connection itself failed.
    let fatal = matches!(
        db.parsed_severity(),
        Some(Severity::Fatal | Severity::Panic)
    );
    if fatal || code.code().starts_with("08") {
        return Failure::Lost;
    }
    Failure::Persistent
}

/// Whether a batch changes what the service's call book is computed from (see the SQLite
/// writer): call records, the log, idempotency keys. Only the book's holder writes these.
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

/// Checks what PostgreSQL could not store, before anything is sent: such a batch fails alone.
fn validate(mutations: &[Mutation]) -> Result<(), StoreError> {
    for mutation in mutations {
        match mutation {
            Mutation::PutTransaction(t) => {
                to_sql_u64(t.cursor, "cursor")?;
            }
            Mutation::MoveCursor { cursor, .. } | Mutation::RewindCursor { cursor, .. } => {
                to_sql_u64(*cursor, "cursor")?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The prepared statements of the writer's connection.
struct Statements {
    begin: Statement,
    commit: Statement,
    rollback: Statement,
    savepoint: Statement,
    release: Statement,
    rollback_to: Statement,
    claim: Statement,
    fence: Statement,
    committed: Statement,
    put_record: Statement,
    delete_record: Statement,
    put_transaction: Statement,
    move_cursor: Statement,
    rewind_cursor: Statement,
    claim_tx: Statement,
    unclaim_tx: Statement,
    delete_transaction: Statement,
    remember_key: Statement,
    append: Statement,
    lock_head: Statement,
    append_at: Statement,
    finish_isolated: Statement,
}

/// The columns of an outcome insert, and the arrays they come from (one per column).
macro_rules! outcome_arrays {
    () => {
        "(seq, accepted_ms, size, tenant, class, cn, an, si, tn, re, ao, dd, as_data, co, ba, bn, \
         bt, dt)"
    };
}

/// The arrays of an outcome insert as a table `u`, from parameter `$first` on: each array is
/// one column of the new outcomes, in `Arrays` order; `u.ord` counts them from 1.
fn unnest(first: usize) -> String {
    let types = [
        "bigint", "bytea", "smallint", "bytea", "bytea", "bytea", "bytea", "integer", "integer",
        "boolean", "bytea", "bytea", "bytea", "bytea", "bytea", "bytea",
    ];
    let args: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("${}::{ty}[]", first + i))
        .collect();
    format!(
        "unnest({}) WITH ORDINALITY AS u(size, tenant, class, cn, an, si, tn, re, ao, dd, \
         as_data, co, ba, bn, bt, dt, ord)",
        args.join(", ")
    )
}

/// The columns of `u` (see [`unnest`]) an outcome insert takes, after seq and accepted_ms.
const COLUMNS: &str = "u.size, u.tenant, u.class, u.cn, u.an, u.si, u.tn, u.re, u.ao, u.dd, \
                       u.as_data, u.co, u.ba, u.bn, u.bt, u.dt";

/// The group's last statement before COMMIT (see the module comment): takes the seqs, inserts
/// the outcomes, gives the keys of appending batches their seq, records them in the group's row
/// and announces them. $1 node, $2 k, $3 count, $4 now, $5 bytes, $6..$21 the outcomes' arrays,
/// $22..$24 the keys' (`KeySeqs`).
pub(super) fn append_sql() -> String {
    format!(
        "WITH h AS (
             UPDATE meta SET last_seq = last_seq + $3,
                 last_accepted_ms = greatest(last_accepted_ms, $4),
                 log_bytes = log_bytes + $5
             WHERE id = 0 RETURNING last_seq, last_accepted_ms
         ), o AS (
             INSERT INTO outcomes {cols}
             SELECT h.last_seq - $3 + u.ord, h.last_accepted_ms, {COLUMNS} FROM h, {unnest}
         ), x AS (
             UPDATE ingest_keys SET seq = h.last_seq - $3 + x.ord
             FROM h, unnest($22::bytea[], $23::bytea[], $24::bigint[]) AS x(tenant, key, ord)
             WHERE ingest_keys.tenant = x.tenant AND ingest_keys.key = x.key
         ), c AS (
             UPDATE ozbus_commits SET last_seq = h.last_seq, accepted_ms = h.last_accepted_ms
             FROM h WHERE node = $1 AND k = $2
         )
         SELECT h.last_seq, h.last_accepted_ms FROM h,
             LATERAL (SELECT pg_notify('{channel}',
                 'a ' || $1::bigint || ' ' || (h.last_seq - $3 + 1) || ' ' || h.last_seq)) n",
        cols = outcome_arrays!(),
        unnest = unnest(6),
        channel = schema::CHANNEL,
    )
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        let append = append_sql();
        // $1 the seq before the first, $2 accepted_ms, $3.. the arrays.
        let append_at = format!(
            "INSERT INTO outcomes {cols} SELECT $1::bigint + u.ord, $2::bigint, {COLUMNS} FROM {unnest}",
            cols = outcome_arrays!(),
            unnest = unnest(3),
        );
        let finish_isolated = format!(
            "WITH h AS (
                 UPDATE meta SET last_seq = $3, last_accepted_ms = $4, log_bytes = log_bytes + $5
                 WHERE id = 0 AND $3 > last_seq RETURNING last_seq
             ), n AS (
                 SELECT pg_notify('{channel}', 'a ' || $1::bigint || ' ' || $6::bigint || ' ' || $3::bigint) FROM h
             )
             UPDATE ozbus_commits SET last_seq = $3, accepted_ms = $4
             WHERE node = $1 AND k = $2 AND (SELECT count(*) FROM n) >= 0",
            channel = schema::CHANNEL,
        );
        Ok(Statements {
            begin: client.prepare("BEGIN").await?,
            commit: client.prepare("COMMIT").await?,
            rollback: client.prepare("ROLLBACK").await?,
            savepoint: client.prepare("SAVEPOINT batch").await?,
            release: client.prepare("RELEASE SAVEPOINT batch").await?,
            rollback_to: client.prepare("ROLLBACK TO SAVEPOINT batch").await?,
            claim: client
                .prepare(&format!(
                    "WITH old AS (DELETE FROM ozbus_commits \
                     WHERE node = $1::bigint AND k < $2::bigint - {COMMITS_KEPT}) \
                     INSERT INTO ozbus_commits (node, k) VALUES ($1, $2)"
                ))
                .await?,
            fence: client.prepare("SELECT ozbus_book_fence($1)").await?,
            committed: client
                .prepare(
                    "SELECT last_seq, accepted_ms FROM ozbus_commits WHERE node = $1 AND k = $2",
                )
                .await?,
            put_record: client
                .prepare(
                    "INSERT INTO records (tenant, si, cn, tn, preview_agent, agent, as_data, dt, \
                     state, created_ms, expires_ms, connected_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT (tenant, si) DO UPDATE SET cn = excluded.cn, \
                     tn = excluded.tn, preview_agent = excluded.preview_agent, \
                     agent = excluded.agent, as_data = excluded.as_data, dt = excluded.dt, \
                     state = excluded.state, created_ms = excluded.created_ms, \
                     expires_ms = excluded.expires_ms, connected_ms = excluded.connected_ms",
                )
                .await?,
            delete_record: client
                .prepare("DELETE FROM records WHERE tenant = $1 AND si = $2")
                .await?,
            put_transaction: client
                .prepare(
                    "INSERT INTO transactions (tenant, ps, tx, request, cursor, released_ms, node) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (tenant, ps) DO UPDATE SET tx = excluded.tx, \
                     request = excluded.request, \
                     cursor = greatest(transactions.cursor, excluded.cursor), \
                     released_ms = excluded.released_ms, node = excluded.node \
                     WHERE excluded.released_ms IS NULL OR transactions.node = excluded.node",
                )
                .await?,
            // Cursors (and releases, above) of a node that no longer owns the row change
            // nothing: another node took the transaction over (see `owners`).
            move_cursor: client
                .prepare(
                    "UPDATE transactions SET cursor = greatest(cursor, $3) \
                     WHERE tenant = $1 AND ps = $2 AND node = $4",
                )
                .await?,
            rewind_cursor: client
                .prepare(
                    "UPDATE transactions SET cursor = $3 \
                     WHERE tenant = $1 AND ps = $2 AND node = $4",
                )
                .await?,
            claim_tx: client
                .prepare(
                    "INSERT INTO active_transactions (tenant, tx, node) VALUES ($1, $2, $3) \
                     ON CONFLICT (tenant, tx) DO UPDATE SET node = excluded.node \
                     WHERE NOT ozbus_node_alive(active_transactions.node, $4)",
                )
                .await?,
            unclaim_tx: client
                .prepare(
                    "DELETE FROM active_transactions WHERE tenant = $1 AND tx = $2 AND node = $3",
                )
                .await?,
            delete_transaction: client
                .prepare("DELETE FROM transactions WHERE tenant = $1 AND ps = $2")
                .await?,
            remember_key: client
                .prepare(
                    "INSERT INTO ingest_keys (tenant, key, accepted_ms, seq) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, key) \
                     DO UPDATE SET accepted_ms = excluded.accepted_ms, seq = excluded.seq",
                )
                .await?,
            append: client.prepare(&append).await?,
            lock_head: client
                .prepare("SELECT last_seq, last_accepted_ms FROM meta WHERE id = 0 FOR UPDATE")
                .await?,
            append_at: client.prepare(&append_at).await?,
            finish_isolated: client.prepare(&finish_isolated).await?,
        })
    }
}

/// The outcomes of a group as one array per column, borrowing the batches.
#[derive(Default)]
struct Arrays<'a> {
    size: Vec<i64>,
    tenant: Vec<&'a [u8]>,
    class: Vec<i16>,
    cn: Vec<&'a [u8]>,
    an: Vec<Option<&'a [u8]>>,
    si: Vec<&'a [u8]>,
    tn: Vec<Option<&'a [u8]>>,
    re: Vec<i32>,
    ao: Vec<Option<i32>>,
    dd: Vec<bool>,
    as_data: Vec<Option<&'a [u8]>>,
    co: Vec<Option<&'a [u8]>>,
    ba: Vec<Option<&'a [u8]>>,
    bn: Vec<Option<&'a [u8]>>,
    bt: Vec<Option<&'a [u8]>>,
    dt: Vec<&'a [u8]>,
    bytes: i64,
}

impl<'a> Arrays<'a> {
    fn push(&mut self, o: &'a NewOutcome) {
        let size = i64::try_from(outcome_size(o)).unwrap_or(i64::MAX);
        self.size.push(size);
        self.bytes = self.bytes.saturating_add(size);
        self.tenant.push(&o.tenant);
        self.class.push(class_code(o.class) as i16);
        self.cn.push(&o.cn);
        self.an.push(o.an.as_deref());
        self.si.push(&o.si);
        self.tn.push(o.tn.as_deref());
        self.re.push(i32::from(o.re));
        self.ao.push(o.ao.map(i32::from));
        self.dd.push(o.dd);
        self.as_data.push(o.as_data.as_deref());
        self.co.push(o.co.as_deref());
        self.ba.push(o.ba.as_deref());
        self.bn.push(o.bn.as_deref());
        self.bt.push(o.bt.as_deref());
        self.dt.push(&o.dt);
    }

    fn len(&self) -> usize {
        self.size.len()
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.size,
            &self.tenant,
            &self.class,
            &self.cn,
            &self.an,
            &self.si,
            &self.tn,
            &self.re,
            &self.ao,
            &self.dd,
            &self.as_data,
            &self.co,
            &self.ba,
            &self.bn,
            &self.bt,
            &self.dt,
        ]
    }
}

/// The keys of a group's appending batches, for the append statement to give them their
/// batch's first seq: one array per column, `ord` the place of that outcome in the group's
/// `Arrays` (from 1, as `u.ord`).
#[derive(Default)]
struct KeySeqs<'a> {
    tenant: Vec<&'a [u8]>,
    key: Vec<&'a [u8]>,
    ord: Vec<i64>,
}

impl<'a> KeySeqs<'a> {
    /// Adds the keys of `batch`, whose first outcome is the `ord`th of the group's arrays.
    fn push(&mut self, batch: &'a [Mutation], ord: i64) {
        for mutation in batch {
            if let Mutation::RememberKey { tenant, key } = mutation {
                self.tenant.push(tenant);
                self.key.push(key);
                self.ord.push(ord);
            }
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 3] {
        [&self.tenant, &self.key, &self.ord]
    }
}

/// One statement of a pipeline: its rows (for the statements that return some).
type Step<'a> = Pin<Box<dyn Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a>>;

type Param<'a> = Box<dyn ToSql + Sync + Send + 'a>;

fn execute<'a>(client: &'a Client, statement: &'a Statement, params: Vec<Param<'a>>) -> Step<'a> {
    Box::pin(async move {
        client.execute_raw(statement, params).await?;
        Ok(Vec::new())
    })
}

fn query<'a>(
    client: &'a Client,
    statement: &'a Statement,
    params: Vec<&'a (dyn ToSql + Sync)>,
) -> Step<'a> {
    Box::pin(async move {
        use futures::TryStreamExt;
        client
            .query_raw(statement, params)
            .await?
            .try_collect()
            .await
    })
}

/// Statements sent in order before any answer is awaited (tokio-postgres sends a request when
/// its future is first polled), then their answers in order.
struct Pipeline<'a> {
    slots: Vec<Slot<'a>>,
}

enum Slot<'a> {
    Waiting(Step<'a>),
    /// Failed as it was being sent: on our side (a value that could not be encoded, a closed
    /// connection), never by PostgreSQL's answer.
    Early(Result<Vec<Row>, tokio_postgres::Error>),
}

/// A statement's answer, and whether it failed before it was sent.
type Answer = (Result<Vec<Row>, tokio_postgres::Error>, bool);

impl<'a> Pipeline<'a> {
    fn new() -> Pipeline<'a> {
        Pipeline { slots: Vec::new() }
    }

    /// Sends `steps` (polls each once, in order).
    async fn send(&mut self, steps: Vec<Step<'a>>) {
        let start = self.slots.len();
        self.slots.extend(steps.into_iter().map(Slot::Waiting));
        let slots = &mut self.slots[start..];
        std::future::poll_fn(|cx| {
            for slot in slots.iter_mut() {
                if let Slot::Waiting(step) = slot {
                    if let Poll::Ready(result) = step.as_mut().poll(cx) {
                        *slot = Slot::Early(result);
                    }
                }
            }
            Poll::Ready(())
        })
        .await;
    }

    /// Whether a statement failed before it could be sent.
    fn failed_early(&self) -> bool {
        self.slots
            .iter()
            .any(|slot| matches!(slot, Slot::Early(Err(_))))
    }

    /// Every answer, in order.
    async fn finish(self) -> Vec<Answer> {
        let mut answers = Vec::with_capacity(self.slots.len());
        for slot in self.slots {
            answers.push(match slot {
                Slot::Waiting(step) => (step.await, false),
                Slot::Early(result) => (result, true),
            });
        }
        answers
    }
}

/// Why an attempt failed, what the writer makes of it, and (for an attempt with a savepoint
/// per batch) which batches it had written and which not.
type Fail = (Failure, StoreError, Option<Vec<Option<StoreError>>>);

/// Classifies an error of the connection; one that happened before the request was sent on
/// a connection still open is our own (it cannot be cured by trying again).
fn classify(error: tokio_postgres::Error, early: bool) -> (Failure, StoreError) {
    let kind = match early && !error.is_closed() && error.as_db_error().is_none() {
        true => Failure::Persistent,
        false => failure(&error),
    };
    (kind, StoreError::Postgres(error))
}

/// Judges a pipelined transaction from its answers: it committed if every statement did,
/// the last one being COMMIT. A statement's failure aborts the transaction (PostgreSQL then
/// answers the COMMIT with a rollback), and the first one says why; when that is the
/// connection, the COMMIT may or may not have been carried out (`Failure::Lost`).
fn judge(answers: &mut [Answer]) -> Result<(), (Failure, StoreError)> {
    for (result, early) in answers.iter_mut() {
        if result.is_err() {
            let error = std::mem::replace(result, Ok(Vec::new())).unwrap_err();
            return Err(classify(error, *early));
        }
    }
    Ok(())
}

/// Reads the last seq and accepted_ms that the group's append statement returned.
fn head_of(rows: &[Row]) -> Result<(u64, i64), StoreError> {
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("the meta row is missing".into()))?;
    Ok((from_sql_u64(row.try_get(0)?, "last_seq")?, row.try_get(1)?))
}

/// The writer's connection and its statements.
struct Conn {
    client: Client,
    driver: JoinHandle<()>,
    st: Statements,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The batches of one turn, and what became of each.
struct Group {
    batches: Vec<Vec<Mutation>>,
    replies: Vec<BatchReply>,
    /// Per batch: failed before anything was sent (fenced, not the book's holder, a value out
    /// of range).
    refused: Vec<Option<StoreError>>,
    /// The epoch under which this node held the call book when the group started (0: none);
    /// the fence of the group's attempts.
    epoch: i64,
}

impl Group {
    /// Its batches still to write.
    fn live(&self) -> impl Iterator<Item = &Vec<Mutation>> {
        self.batches
            .iter()
            .zip(&self.refused)
            .filter(|(_, refused)| refused.is_none())
            .map(|(batch, _)| batch)
    }

    /// Whether a batch still to write writes the call book: the attempt passes the fence.
    fn writes_book(&self) -> bool {
        self.live().any(|batch| touches_book(batch))
    }

    /// Its batches of the book still to write fail untried: this node does not hold the book
    /// under the group's epoch. Whether any batch is left.
    fn refuse_book(&mut self) -> bool {
        for (batch, refused) in self.batches.iter().zip(&mut self.refused) {
            if refused.is_none() && touches_book(batch) {
                *refused = Some(StoreError::NotHolder);
            }
        }
        self.refused.iter().any(Option::is_none)
    }
}

pub(crate) struct Writer {
    config: Config,
    node: i64,
    conn: Option<Conn>,
    /// The number of the next group (`ozbus_commits.k`).
    k: i64,
    shared: Arc<Shared>,
    max_batch: usize,
    /// While the store is full (`Shared::space`): when to probe for room next.
    next_probe: Instant,
    /// The last epoch the call book's fence refused: this node holds the book under it no
    /// more, whatever the lease has published so far.
    fenced_out: i64,
}

/// The application name of a node's writer connections: how a new one finds the backends
/// of its earlier ones.
fn application_name(node: i64) -> String {
    format!("ozbus-writer-{node}")
}

impl Writer {
    /// Connects (the first connection must succeed: a store that cannot reach its database
    /// at open does not open).
    pub(crate) async fn connect(
        config: Config,
        node: i64,
        shared: Arc<Shared>,
        max_batch: usize,
    ) -> Result<Writer, StoreError> {
        let mut writer = Writer {
            config,
            node,
            conn: None,
            k: 1,
            shared,
            max_batch: max_batch.max(1),
            next_probe: Instant::now(),
            fenced_out: 0,
        };
        writer.conn = Some(writer.try_connect().await?);
        Ok(writer)
    }

    async fn try_connect(&self) -> Result<Conn, StoreError> {
        let name = application_name(self.node);
        let (client, driver) = schema::connect(&self.config, &name).await?;
        // A backend of an earlier connection of ours may still be running a group whose
        // answer we lost (its client end is gone, the server has not noticed yet). End it,
        // and wait until it is gone, so that what we read next is final. (Should that not be
        // allowed, the group's row still keeps two attempts from both committing.)
        let others = "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity \
                      WHERE datname = current_database() AND application_name = $1 \
                      AND pid <> pg_backend_pid()";
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match client.query(others, &[&name]).await {
                Ok(rows) if rows.is_empty() => break,
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok(_) => {
                    tracing::warn!(
                        node = self.node,
                        "an earlier writer connection does not end"
                    );
                    break;
                }
                Err(error) if error.as_db_error().is_some() => {
                    tracing::warn!(%error, "cannot end an earlier writer connection");
                    break;
                }
                Err(error) => return Err(error.into()),
            }
        }
        let st = Statements::prepare(&client).await?;
        Ok(Conn { client, driver, st })
    }

    /// Connects, retrying with back-off for as long as it takes.
    async fn reconnect(&mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut said = false;
        loop {
            match self.try_connect().await {
                Ok(conn) => {
                    if said {
                        tracing::info!(node = self.node, "the store reached postgres again");
                    }
                    self.conn = Some(conn);
                    return;
                }
                Err(error) => {
                    if !said {
                        tracing::warn!(
                            %error, node = self.node,
                            "the store cannot reach postgres: nothing is acknowledged until it \
                             can; retrying"
                        );
                        said = true;
                    } else {
                        tracing::debug!(%error, "postgres still unreachable");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn conn(&mut self) -> &Conn {
        if self.conn.is_none() {
            self.reconnect().await;
        }
        self.conn.as_ref().expect("connected")
    }

    /// The task's body: serve requests until `Close` or until every handle is gone.
    pub(crate) async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Request>,
    ) -> Result<(), StoreError> {
        loop {
            let first = if self.shared.space.is_full() {
                tokio::select! {
                    request = requests.recv() => request,
                    () = tokio::time::sleep_until(self.next_probe) => {
                        self.probe_for_room().await;
                        continue;
                    }
                }
            } else {
                requests.recv().await
            };
            let Some(first) = first else { break };
            let mut batches = Vec::new();
            let mut mutations = 0;
            let mut reload = None;
            let mut close = false;
            let mut next = Some(first);
            // Group commit: whatever is already queued rides along, up to the cap.
            while let Some(request) = next.take() {
                match request {
                    Request::Batch {
                        mutations: batch,
                        reply,
                    } => {
                        mutations += batch.len().max(1);
                        batches.push((batch, reply));
                    }
                    // A reload reads what the batches before it left, none after it.
                    Request::Reload { reply } => {
                        reload = Some(reply);
                        break;
                    }
                    Request::Close => {
                        close = true;
                        break;
                    }
                }
                if mutations < self.max_batch {
                    next = requests.try_recv().ok();
                }
            }
            if !batches.is_empty() {
                self.commit_group(batches).await;
            }
            if let Some(reply) = reload {
                let _ = reply.send(self.reload().await);
            }
            if close {
                break;
            }
            if self.shared.space.is_full() && Instant::now() >= self.next_probe {
                self.probe_for_room().await;
            }
        }
        self.finish().await;
        Ok(())
    }

    /// The epoch under which this node holds the call book now, as far as the writer knows;
    /// 0: it does not.
    fn epoch(&self) -> i64 {
        match self.shared.book.epoch() {
            epoch if epoch == self.fenced_out => 0,
            epoch => epoch,
        }
    }

    /// Writes one group: tries it until it is known committed or known failed.
    async fn commit_group(&mut self, group: Vec<(Vec<Mutation>, BatchReply)>) {
        let started = std::time::Instant::now();
        let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let epoch = self.epoch();
        let refused = batches
            .iter()
            .map(|mutations| {
                if touches_book(mutations) && epoch == 0 {
                    Some(StoreError::NotHolder)
                } else if self.shared.space.fenced() && touches_book(mutations) {
                    Some(StoreError::OutOfSpace(Arc::new(StoreError::Fenced)))
                } else {
                    validate(mutations).err()
                }
            })
            .collect();
        let mut group = Group {
            batches,
            replies,
            refused,
            epoch,
        };
        if group.refused.iter().all(Option::is_some) {
            return self.fail_refused(group);
        }
        let mut isolated = false;
        let mut backoff = BACKOFF_MIN;
        loop {
            // The book may have changed hands since the group started: its batches then
            // cannot commit (the fence would refuse them), and are not tried.
            if group.writes_book() && self.epoch() != group.epoch && !group.refuse_book() {
                return self.fail_refused(group);
            }
            let attempt = match isolated {
                false => self.attempt(&group).await.map(|head| (head, None)),
                true => self
                    .attempt_isolated(&group)
                    .await
                    .map(|(head, failed)| (head, Some(failed))),
            };
            match attempt {
                Ok((head, failed)) => {
                    record_commit(&self.shared.stats, started.elapsed(), group.replies.len());
                    return self.publish(group, head, failed);
                }
                Err((Failure::Lost, error, failed)) => {
                    // Whether the group committed is not known: ask, over a new connection.
                    tracing::warn!(
                        %error, node = self.node, k = self.k,
                        "the store lost its postgres connection during a commit"
                    );
                    self.conn = None;
                    match self.resolve().await {
                        Some(head) => {
                            record_commit(
                                &self.shared.stats,
                                started.elapsed(),
                                group.replies.len(),
                            );
                            return self.publish(group, head, failed);
                        }
                        None => continue,
                    }
                }
                Err((Failure::NotHolder, error, _)) => {
                    // Another node took the book: nothing was written; the group's other
                    // batches are written without those of the book.
                    tracing::debug!(%error, epoch = group.epoch, "the call book's fence refused a group");
                    self.fenced_out = group.epoch;
                    self.shared.book.fenced_out(group.epoch);
                    if !group.refuse_book() {
                        return self.fail_refused(group);
                    }
                }
                Err((Failure::Transient, error, _)) => {
                    tracing::debug!(%error, "postgres refused a group for now; trying it again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err((Failure::Persistent, error, _)) if !isolated => {
                    // Find the batch at fault: each batch in a savepoint of its own.
                    tracing::debug!(%error, "a group failed; writing its batches one by one");
                    isolated = true;
                }
                Err((kind, error, _)) => return self.fail_group(group, kind, error),
            }
        }
    }

    /// After a lost connection: reconnects and reads whether the group committed (its
    /// `ozbus_commits` row), and if so where its appends ended. `None`: it did not, and
    /// cannot any more (the backend that ran it is gone).
    async fn resolve(&mut self) -> Option<Option<(u64, i64)>> {
        let (node, k) = (self.node, self.k);
        let mut backoff = BACKOFF_MIN;
        loop {
            let conn = self.conn().await;
            match conn
                .client
                .query_opt(&conn.st.committed, &[&node, &k])
                .await
            {
                Ok(None) => return None,
                Ok(Some(row)) => {
                    let last_seq: Option<i64> = row.get(0);
                    let accepted_ms: Option<i64> = row.get(1);
                    tracing::info!(
                        node,
                        k,
                        "a group whose commit went unanswered had committed"
                    );
                    return Some(match (last_seq, accepted_ms) {
                        (Some(seq), Some(ms)) => Some((seq.max(0) as u64, ms)),
                        _ => None,
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read whether a group committed; retrying");
                    self.conn = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// The statements of a batch's mutations other than appends (which the group writes
    /// together), in order; `node` writes persisted transactions, keys are written with
    /// `key_seq` (none: no seq, or not known yet).
    fn statements<'a>(
        conn: &'a Conn,
        mutations: &'a [Mutation],
        node: i64,
        now: i64,
        key_seq: Option<i64>,
        steps: &mut Vec<Step<'a>>,
    ) {
        let (c, st) = (&conn.client, &conn.st);
        fn p<'a, T: ToSql + Sync + Send + 'a>(value: T) -> Param<'a> {
            Box::new(value)
        }
        for mutation in mutations {
            // Cursors were validated before the group started (`validate`).
            let sql_u64 = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
            let step = match mutation {
                Mutation::Append(_) => continue,
                Mutation::PutRecord(r) => execute(
                    c,
                    &st.put_record,
                    vec![
                        p(r.tenant.as_ref()),
                        p(r.si.as_ref()),
                        p(r.cn.as_ref()),
                        p(r.tn.as_deref()),
                        p(r.preview_agent.as_deref()),
                        p(r.agent.as_deref()),
                        p(r.as_data.as_deref()),
                        p(r.dt.as_deref()),
                        p(state_code(r.state) as i16),
                        p(r.created_ms),
                        p(r.expires_ms),
                        p(r.connected_ms),
                    ],
                ),
                Mutation::DeleteRecord { tenant, si } => execute(
                    c,
                    &st.delete_record,
                    vec![p(tenant.as_ref()), p(si.as_ref())],
                ),
                Mutation::PutTransaction(t) => execute(
                    c,
                    &st.put_transaction,
                    vec![
                        p(t.tenant.as_ref()),
                        p(t.ps.as_ref()),
                        p(t.tx.as_ref()),
                        p(t.request.as_ref()),
                        p(sql_u64(t.cursor)),
                        p(t.released_ms),
                        p(node),
                    ],
                ),
                Mutation::MoveCursor { tenant, ps, cursor } => execute(
                    c,
                    &st.move_cursor,
                    vec![
                        p(tenant.as_ref()),
                        p(ps.as_ref()),
                        p(sql_u64(*cursor)),
                        p(node),
                    ],
                ),
                Mutation::RewindCursor { tenant, ps, cursor } => execute(
                    c,
                    &st.rewind_cursor,
                    vec![
                        p(tenant.as_ref()),
                        p(ps.as_ref()),
                        p(sql_u64(*cursor)),
                        p(node),
                    ],
                ),
                Mutation::ClaimTx { tenant, tx } => execute(
                    c,
                    &st.claim_tx,
                    vec![
                        p(tenant.as_ref()),
                        p(tx.as_ref()),
                        p(node),
                        p(super::nodes::lease_ms()),
                    ],
                ),
                Mutation::UnclaimTx { tenant, tx } => execute(
                    c,
                    &st.unclaim_tx,
                    vec![p(tenant.as_ref()), p(tx.as_ref()), p(node)],
                ),
                Mutation::DeleteTransaction { tenant, ps } => execute(
                    c,
                    &st.delete_transaction,
                    vec![p(tenant.as_ref()), p(ps.as_ref())],
                ),
                Mutation::RememberKey { tenant, key } => execute(
                    c,
                    &st.remember_key,
                    vec![p(tenant.as_ref()), p(key.as_ref()), p(now), p(key_seq)],
                ),
            };
            steps.push(step);
        }
    }

    /// One attempt at the whole group in one pipelined transaction (see the module comment).
    /// `Ok`: committed, with the last seq and accepted_ms of its appends, if any.
    async fn attempt(&mut self, group: &Group) -> Result<Option<(u64, i64)>, Fail> {
        let (node, k) = (self.node, self.k);
        let now = now_ms();
        let fence = group.writes_book();
        let conn = self.conn().await;
        let (c, st) = (&conn.client, &conn.st);
        let mut arrays = Arrays::default();
        let mut keys = KeySeqs::default();
        for batch in group.live() {
            let first = arrays.len();
            for mutation in batch {
                if let Mutation::Append(outcome) = mutation {
                    arrays.push(outcome);
                }
            }
            if arrays.len() > first {
                keys.push(batch, first as i64 + 1);
            }
        }
        let count = arrays.len() as i64;
        let bytes = arrays.bytes;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&node, &k, &count, &now, &bytes];
        params.extend(arrays.params());
        params.extend(keys.params());

        let mut steps: Vec<Step<'_>> = vec![
            execute(c, &st.begin, Vec::new()),
            execute(c, &st.claim, vec![Box::new(node), Box::new(k)]),
        ];
        if fence {
            steps.push(execute(c, &st.fence, vec![Box::new(group.epoch)]));
        }
        // Keys go in without their seq: the append statement gives it to those of batches
        // that append, once it has taken the seqs.
        for batch in group.live() {
            Self::statements(conn, batch, node, now, None, &mut steps);
        }
        let appends = count > 0;
        if appends {
            steps.push(query(c, &st.append, params));
        }
        let mut pipeline = Pipeline::new();
        pipeline.send(steps).await;
        let end = match pipeline.failed_early() {
            false => &st.commit,
            // A statement that was never sent must not be left out of a committed group.
            true => &st.rollback,
        };
        pipeline.send(vec![execute(c, end, Vec::new())]).await;
        let mut answers = pipeline.finish().await;
        judge(&mut answers).map_err(|(kind, error)| (kind, error, None))?;
        if !appends {
            return Ok(None);
        }
        let rows = answers
            .iter()
            .rev()
            .nth(1)
            .and_then(|(result, _)| result.as_ref().ok())
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Committed, its seqs unreadable (cannot happen with a sound schema): the group's row
        // has them too.
        head_of(rows)
            .map(Some)
            .map_err(|error| (Failure::Lost, error, None))
    }

    /// One attempt at the group with a savepoint per batch, one batch at a time, so that a
    /// batch PostgreSQL refuses fails alone. Slow, and only run after the whole group failed
    /// for a reason that is not transient. Returns, with the head, which batches failed.
    async fn attempt_isolated(
        &mut self,
        group: &Group,
    ) -> Result<(Option<(u64, i64)>, Vec<Option<StoreError>>), Fail> {
        let (node, k) = (self.node, self.k);
        let now = now_ms();
        let mut fenced = self.shared.space.fenced();
        let fence = group.writes_book();
        let conn = self.conn().await;
        let (c, st) = (&conn.client, &conn.st);
        let mut failed: Vec<Option<StoreError>> = group.batches.iter().map(|_| None).collect();
        let sent = |error: tokio_postgres::Error| {
            let (kind, error) = classify(error, false);
            (kind, error, None)
        };

        let mut steps = vec![
            execute(c, &st.begin, Vec::new()),
            execute(c, &st.claim, vec![Box::new(node), Box::new(k)]),
        ];
        if fence {
            steps.push(execute(c, &st.fence, vec![Box::new(group.epoch)]));
        }
        steps.push(query(c, &st.lock_head, Vec::new()));
        let mut pipeline = Pipeline::new();
        pipeline.send(steps).await;
        let mut answers = pipeline.finish().await;
        judge(&mut answers).map_err(|(kind, error)| (kind, error, None))?;
        let (mut last_seq, last_ms) = answers
            .last()
            .and_then(|(result, _)| result.as_ref().ok())
            .map(|rows| head_of(rows))
            .transpose()
            .map_err(|error| (Failure::Lost, error, None))?
            .unwrap_or((0, 0));
        let first_seq = last_seq + 1;
        let accepted_ms = now.max(last_ms);
        let mut bytes = 0i64;
        for (i, batch) in group.batches.iter().enumerate() {
            if group.refused[i].is_some() {
                continue;
            }
            let book = touches_book(batch);
            if fenced && book {
                failed[i] = Some(StoreError::OutOfSpace(Arc::new(StoreError::Fenced)));
                continue;
            }
            let mut arrays = Arrays::default();
            for mutation in batch {
                if let Mutation::Append(outcome) = mutation {
                    arrays.push(outcome);
                }
            }
            let before = i64::try_from(last_seq).unwrap_or(i64::MAX);
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&before, &accepted_ms];
            params.extend(arrays.params());
            // The seqs are known here (the meta row is locked): keys go in with theirs.
            let key_seq = (arrays.len() > 0).then(|| before.saturating_add(1));
            let mut steps = vec![execute(c, &st.savepoint, Vec::new())];
            Self::statements(conn, batch, node, now, key_seq, &mut steps);
            if arrays.len() > 0 {
                steps.push(query(c, &st.append_at, params));
            }
            steps.push(execute(c, &st.release, Vec::new()));
            let mut pipeline = Pipeline::new();
            pipeline.send(steps).await;
            let mut answers = pipeline.finish().await;
            let Err((kind, error)) = judge(&mut answers) else {
                last_seq += arrays.len() as u64;
                bytes = bytes.saturating_add(arrays.bytes);
                continue;
            };
            match kind {
                Failure::Lost | Failure::Transient | Failure::NotHolder => {
                    return Err((kind, error, None))
                }
                Failure::Space | Failure::Persistent => {
                    c.execute(&st.rollback_to, &[]).await.map_err(sent)?;
                    c.execute(&st.release, &[]).await.map_err(sent)?;
                    failed[i] = Some(match kind {
                        Failure::Space => {
                            // Later batches of the book in this group are not tried.
                            fenced |= book;
                            StoreError::OutOfSpace(Arc::new(error))
                        }
                        _ => error,
                    });
                }
            }
        }
        let last = i64::try_from(last_seq).unwrap_or(i64::MAX);
        let first = i64::try_from(first_seq).unwrap_or(i64::MAX);
        let mut pipeline = Pipeline::new();
        pipeline
            .send(vec![
                execute(
                    c,
                    &st.finish_isolated,
                    vec![
                        Box::new(node),
                        Box::new(k),
                        Box::new(last),
                        Box::new(accepted_ms),
                        Box::new(bytes),
                        Box::new(first),
                    ],
                ),
                execute(c, &st.commit, Vec::new()),
            ])
            .await;
        let mut answers = pipeline.finish().await;
        let head = (last_seq >= first_seq).then_some((last_seq, accepted_ms));
        match judge(&mut answers) {
            Ok(()) => Ok((head, failed)),
            Err((kind, error)) => Err((kind, error, Some(failed))),
        }
    }

    /// Resolves every ticket of a committed group: the batches that were written get their
    /// seqs (the group's appends end at `head`'s seq), the others their failure.
    fn publish(
        &mut self,
        group: Group,
        head: Option<(u64, i64)>,
        failed: Option<Vec<Option<StoreError>>>,
    ) {
        self.k += 1;
        let Group {
            batches,
            replies,
            refused,
            ..
        } = group;
        let mut failed = failed.unwrap_or_else(|| batches.iter().map(|_| None).collect());
        // A batch that failed for lack of space (with a savepoint of its own) makes the store
        // full, and raises the fence if it changed the book.
        for (batch, failure) in batches.iter().zip(&failed) {
            if let Some(StoreError::OutOfSpace(cause)) = failure {
                if !matches!(**cause, StoreError::Fenced) {
                    self.ran_out_of_space(touches_book(batch));
                }
            }
        }
        let count: u64 = batches
            .iter()
            .zip(refused.iter().zip(&failed))
            .filter(|(_, (refusal, failure))| refusal.is_none() && failure.is_none())
            .map(|(batch, _)| {
                batch
                    .iter()
                    .filter(|m| matches!(m, Mutation::Append(_)))
                    .count() as u64
            })
            .sum();
        let (last_seq, accepted_ms) = head.unwrap_or((0, 0));
        let mut seq = (last_seq + 1).saturating_sub(count);
        let mut appended = Vec::with_capacity(count as usize);
        let mut results = Vec::with_capacity(batches.len());
        for ((batch, refusal), failure) in batches.into_iter().zip(refused).zip(&mut failed) {
            if let Some(error) = refusal.or_else(|| failure.take()) {
                results.push(Err(error));
                continue;
            }
            let mut seqs = Vec::new();
            for mutation in batch {
                if let Mutation::Append(outcome) = mutation {
                    seqs.push(seq);
                    appended.push(Arc::new(Outcome {
                        seq,
                        accepted_ms,
                        outcome,
                        rendered: Default::default(),
                    }));
                    seq += 1;
                }
            }
            results.push(Ok(seqs));
        }
        metrics::counter!("ozbus_store_commits_total").increment(1);
        metrics::counter!("ozbus_outcomes_committed_total").increment(appended.len() as u64);
        self.shared.publish_own(appended);
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }

    /// Every batch refused before anything was sent: answered as such.
    fn fail_refused(&mut self, group: Group) {
        for (reply, refusal) in group.replies.into_iter().zip(group.refused) {
            let _ = reply.send(Err(refusal.unwrap_or(StoreError::Closed)));
        }
    }

    /// The group is known not committed and trying it again would not help.
    fn fail_group(&mut self, group: Group, kind: Failure, error: StoreError) {
        let cause = Arc::new(error);
        let space = kind == Failure::Space;
        if space {
            let book = group
                .batches
                .iter()
                .zip(&group.refused)
                .any(|(batch, refused)| refused.is_none() && touches_book(batch));
            self.ran_out_of_space(book);
            tracing::debug!(error = %cause, batches = group.replies.len(), "store commit failed: out of space");
        } else {
            tracing::error!(error = %cause, batches = group.replies.len(), "store commit failed");
        }
        for (reply, refusal) in group.replies.into_iter().zip(group.refused) {
            let _ = reply.send(Err(match (refusal, space) {
                (Some(refusal), _) => refusal,
                (None, true) => StoreError::OutOfSpace(cause.clone()),
                (None, false) => StoreError::CommitFailed(cause.clone()),
            }));
        }
    }

    /// A write failed for lack of space; `book`: it changed call records or the log.
    fn ran_out_of_space(&mut self, book: bool) {
        if self.shared.space.ran_out(book, "postgres") {
            self.next_probe = Instant::now() + PROBE_INTERVAL;
        }
    }

    /// Whether [`PROBE_BYTES`] can be written and committed now; if so, the store is no
    /// longer full.
    async fn probe_for_room(&mut self) {
        self.next_probe = Instant::now() + PROBE_INTERVAL;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let node = self.node;
        let data = vec![0u8; PROBE_BYTES];
        let written = async {
            let tx = conn.client.transaction().await?;
            tx.execute("DELETE FROM ozbus_probe WHERE node = $1", &[&node])
                .await?;
            tx.execute(
                "INSERT INTO ozbus_probe (node, data) VALUES ($1, $2)",
                &[&node, &data],
            )
            .await?;
            tx.commit().await?;
            conn.client
                .execute("DELETE FROM ozbus_probe WHERE node = $1", &[&node])
                .await
        }
        .await;
        match written {
            Ok(_) => self.shared.space.room_again("postgres"),
            Err(error) => {
                if failure(&error) == Failure::Lost {
                    self.conn = None;
                }
                tracing::debug!(%error, "the postgres store is still out of space");
            }
        }
    }

    /// Every open call record as committed now; lowers the fence.
    async fn reload(&mut self) -> Result<Vec<CallRecord>, StoreError> {
        let mut backoff = BACKOFF_MIN;
        let records = loop {
            let conn = self.conn().await;
            match read::records(&conn.client).await {
                Ok(records) => break records,
                Err(StoreError::Postgres(error)) if failure(&error) == Failure::Lost => {
                    self.conn = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(error) => return Err(error),
            }
        };
        self.shared.space.lower_fence();
        Ok(records)
    }

    /// Forgets this node's group rows (best effort: a node that does not get to do this leaves
    /// a few rows behind, which nothing reads).
    async fn finish(mut self) {
        if let Some(conn) = self.conn.take() {
            let forgotten = conn
                .client
                .execute("DELETE FROM ozbus_commits WHERE node = $1", &[&self.node])
                .await;
            if let Err(error) = forgotten {
                tracing::debug!(%error, "could not remove this node's commit rows");
            }
        }
    }
}
