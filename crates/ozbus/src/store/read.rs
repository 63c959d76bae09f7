//! Reads from SQLite on read-only connections.
//!
//! Owns: a small pool of read-only connections and the read queries. Never: writes (the
//! connections are opened read-only), and never runs on an async worker thread by itself: the
//! async callers in `mod.rs` move these calls onto the blocking pool. WAL lets these reads run
//! while the writer writes; each statement sees the last commit made before it started.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension};

use super::model::{CallRecord, Outcome, PersistedTransaction, UsedKey};
use super::rows::{self, outcome_columns, record_columns, transaction_columns};
use super::schema;
use super::StoreError;

/// Idle connections kept for reuse; more may be open at once under load, the extra ones are
/// closed after use rather than kept.
const MAX_IDLE: usize = 8;

pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(crate) fn new(path: PathBuf) -> Readers {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a pooled connection (opening one if none is idle).
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => schema::open_reader(&self.path)?,
        };
        let result = f(&conn);
        // A connection whose statement failed is still usable: rusqlite resets statements.
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        result
    }

    /// Closes idle connections (at close, so the final checkpoint is not held back by them).
    pub(crate) fn clear(&self) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

pub(crate) fn outcomes_after(
    conn: &Connection,
    after: u64,
    limit: usize,
    max_bytes: u64,
) -> Result<Vec<Arc<Outcome>>, StoreError> {
    // An `after` beyond i64 is past any seq ever written: nothing to read.
    let Ok(after) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        outcome_columns!(),
        " FROM outcomes WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let mut rows = stmt.query((after, limit))?;
    let mut out = Vec::new();
    let mut bytes = 0u64;
    // At least one outcome, however large, so that a reader always makes progress.
    while bytes < max_bytes {
        let Some(row) = rows.next()? else { break };
        let outcome = rows::outcome_from_row(row)?;
        bytes = bytes.saturating_add(rows::outcome_size(&outcome.outcome));
        out.push(Arc::new(outcome));
    }
    Ok(out)
}

/// The newest outcome of a session. One seek on `outcomes_by_si`: the rowid (seq) is the index's
/// last column, so "ORDER BY seq DESC LIMIT 1" reads one entry.
const LATEST_BY_SI: &str = concat!(
    "SELECT ",
    outcome_columns!(),
    " FROM outcomes WHERE tenant = ?1 AND cn = ?2 AND si = ?3 ORDER BY seq DESC LIMIT 1"
);

/// The newest outcome of a number: one whose tn is that number, or whose si is and which keeps
/// no tn of its own (an outcome keeps a tn only when it differs from si, so a call whose SI
/// defaulted to its TN has the number in si alone). Two seeks, each on an index every append
/// maintains anyway (`outcomes_by_tn` is partial: outcomes without a tn cost it nothing), and
/// the newer of the two; a missing side counts as seq 0, which no outcome has.
const LATEST_BY_NUMBER: &str = concat!(
    "SELECT ",
    outcome_columns!(),
    " FROM outcomes WHERE seq = max(\
       coalesce((SELECT seq FROM outcomes WHERE tenant = ?1 AND cn = ?2 AND tn = ?3 \
                 ORDER BY seq DESC LIMIT 1), 0), \
       coalesce((SELECT seq FROM outcomes WHERE tenant = ?1 AND cn = ?2 AND si = ?3 \
                 AND tn IS NULL ORDER BY seq DESC LIMIT 1), 0))"
);

pub(crate) fn latest_outcome(
    conn: &Connection,
    tenant: &[u8],
    cn: &[u8],
    si: Option<&[u8]>,
    tn: Option<&[u8]>,
) -> Result<Option<Outcome>, StoreError> {
    let (sql, key) = match (si, tn) {
        (Some(si), _) => (LATEST_BY_SI, si),
        (None, Some(tn)) => (LATEST_BY_NUMBER, tn),
        (None, None) => return Ok(None),
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query((tenant, cn, key))?;
    match rows.next()? {
        Some(row) => Ok(Some(rows::outcome_from_row(row)?)),
        None => Ok(None),
    }
}

pub(crate) fn records(conn: &Connection) -> Result<Vec<CallRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        record_columns!(),
        " FROM records ORDER BY rowid"
    ))?;
    let mut rows = stmt.query(())?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(rows::record_from_row(row)?);
    }
    Ok(out)
}

pub(crate) fn transactions(conn: &Connection) -> Result<Vec<PersistedTransaction>, StoreError> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        transaction_columns!(),
        " FROM transactions ORDER BY rowid"
    ))?;
    let mut rows = stmt.query(())?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(rows::transaction_from_row(row)?);
    }
    Ok(out)
}

/// How many persisted transactions each tenant has. One pass over the (tenant, ps) index; no
/// row is read.
pub(crate) fn count_transactions(conn: &Connection) -> Result<Vec<(Bytes, u64)>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT tenant, count(*) FROM transactions GROUP BY tenant")?;
    let mut rows = stmt.query(())?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let tenant = match row.get_ref(0)? {
            rusqlite::types::ValueRef::Blob(tenant) => Bytes::copy_from_slice(tenant),
            _ => {
                return Err(StoreError::Corrupt(
                    "a transaction's tenant is not a blob".into(),
                ))
            }
        };
        out.push((tenant, rows::from_sql_u64(row.get(1)?, "count")?));
    }
    Ok(out)
}

/// The persisted transactions of `tenant` whose PersistToken is `ps` or whose TX is `tx`: at
/// most two, each found by one seek on an index; one seek when the transaction of `ps` has TX
/// `tx` (a re-issue under the same TX), since no other can have it.
pub(crate) fn find_transactions(
    conn: &Connection,
    tenant: &[u8],
    ps: Option<&[u8]>,
    tx: &[u8],
) -> Result<Vec<PersistedTransaction>, StoreError> {
    let mut out: Vec<PersistedTransaction> = Vec::new();
    if let Some(ps) = ps {
        let mut stmt = conn.prepare_cached(FIND_BY_PS)?;
        let mut rows = stmt.query((tenant, ps))?;
        if let Some(row) = rows.next()? {
            out.push(rows::transaction_from_row(row)?);
        }
    }
    if out.first().is_some_and(|found| found.tx == tx) {
        return Ok(out);
    }
    let mut stmt = conn.prepare_cached(FIND_BY_TX)?;
    let mut rows = stmt.query((tenant, tx))?;
    while let Some(row) = rows.next()? {
        let found = rows::transaction_from_row(row)?;
        // A row found both ways comes once.
        if !out.iter().any(|t| t.ps == found.ps) {
            out.push(found);
        }
    }
    Ok(out)
}

const FIND_BY_PS: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions WHERE tenant = ?1 AND ps = ?2"
);

const FIND_BY_TX: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions WHERE tenant = ?1 AND tx = ?2"
);

/// One page of persisted transactions in (tenant, TX) order: at most `limit` after
/// `after` (exclusive; `None`: from the first), of `tenant` only when given. A range of
/// `transactions_by_tx`, never a scan of the table.
pub(crate) fn list_transactions(
    conn: &Connection,
    tenant: Option<&[u8]>,
    after: Option<(&[u8], &[u8])>,
    limit: usize,
) -> Result<Vec<PersistedTransaction>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let (after_tenant, after_tx) = after.unwrap_or((b"", b""));
    let mut stmt;
    let mut rows = match tenant {
        Some(tenant) => {
            let from: &[u8] = match after_tenant.cmp(tenant) {
                std::cmp::Ordering::Less => b"",
                std::cmp::Ordering::Equal => after_tx,
                std::cmp::Ordering::Greater => return Ok(Vec::new()),
            };
            stmt = conn.prepare_cached(LIST_OF_TENANT)?;
            stmt.query((tenant, from, limit))?
        }
        None => {
            stmt = conn.prepare_cached(LIST)?;
            stmt.query((after_tenant, after_tx, limit))?
        }
    };
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(rows::transaction_from_row(row)?);
    }
    Ok(out)
}

const LIST: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions WHERE (tenant, tx) > (?1, ?2) ORDER BY tenant, tx LIMIT ?3"
);

const LIST_OF_TENANT: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions WHERE tenant = ?1 AND tx > ?2 ORDER BY tx LIMIT ?3"
);

/// At most `limit` persisted transactions nobody holds since `cutoff_ms` or earlier, oldest
/// release first: one seek on `transactions_by_release`, never a scan of the table.
pub(crate) fn released_transactions(
    conn: &Connection,
    cutoff_ms: i64,
    limit: usize,
) -> Result<Vec<PersistedTransaction>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(RELEASED_BEFORE)?;
    let mut rows = stmt.query((cutoff_ms, limit))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(rows::transaction_from_row(row)?);
    }
    Ok(out)
}

const RELEASED_BEFORE: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions WHERE released_ms <= ?1 ORDER BY released_ms LIMIT ?2"
);

/// One bounded step of a pass over the table in rowid order: of the next `scan` rows after
/// rowid `after`, those still held (released_ms NULL) by a run before `run`, and where the
/// next step starts (`None`: the pass reached the end).
pub(crate) fn held_before_run(
    conn: &Connection,
    run: i64,
    after: i64,
    scan: usize,
) -> Result<(Vec<PersistedTransaction>, Option<i64>), StoreError> {
    let scan = i64::try_from(scan).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(HELD_STEP)?;
    let mut rows = stmt.query((after, scan))?;
    let (mut out, mut last, mut seen) = (Vec::new(), after, 0);
    while let Some(row) = rows.next()? {
        seen += 1;
        last = row.get(0)?;
        let released: Option<i64> = row.get(1)?;
        let written_by: i64 = row.get(2)?;
        if released.is_none() && written_by < run {
            out.push(rows::transaction_from_row_at(row, 3)?);
        }
    }
    Ok((out, (seen == scan).then_some(last)))
}

const HELD_STEP: &str = concat!(
    "SELECT rowid, released_ms, run, ",
    transaction_columns!(),
    " FROM transactions WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
);

/// `key` of `tenant`, if it was committed at `since_ms` or later.
pub(crate) fn key_committed(
    conn: &Connection,
    tenant: &[u8],
    key: &[u8],
    since_ms: i64,
) -> Result<Option<UsedKey>, StoreError> {
    let seq: Option<Option<i64>> = conn
        .prepare_cached(
            "SELECT seq FROM ingest_keys WHERE tenant = ?1 AND key = ?2 AND accepted_ms >= ?3",
        )?
        .query_row((tenant, key, since_ms), |row| row.get(0))
        .optional()?;
    seq.map(|seq| {
        Ok(UsedKey {
            seq: seq.map(|s| rows::from_sql_u64(s, "seq")).transpose()?,
        })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How SQLite runs `sql` on a freshly created store: the detail column of each plan step.
    fn plan(sql: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let conn = schema::open_writer(&dir.path().join(schema::DB_FILE), |_| None).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let params = [&b"t"[..], b"c", b"k"];
        let mut rows = stmt
            .query(rusqlite::params_from_iter(
                &params[..stmt.parameter_count()],
            ))
            .unwrap();
        let mut details = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            details.push(row.get::<_, String>(3).unwrap());
        }
        details
    }

    #[test]
    fn the_latest_outcome_is_found_by_index_seeks_by_si_and_by_number() {
        // By SI: one step, a search on the index, and no sort (a sort would read every match).
        let by_si = plan(LATEST_BY_SI);
        assert_eq!(by_si.len(), 1, "{by_si:?}");
        assert!(
            by_si[0].starts_with("SEARCH outcomes USING INDEX outcomes_by_si ("),
            "{by_si:?}"
        );
        // By number: a seek on each index and one by seq; never a scan, never a sort.
        let by_number = plan(LATEST_BY_NUMBER).join(" | ");
        for step in [
            "INDEX outcomes_by_tn (",
            "USING INDEX outcomes_by_si (",
            "USING INTEGER PRIMARY KEY (rowid=?)",
        ] {
            assert!(by_number.contains(step), "{step}: {by_number}");
        }
        assert!(
            !by_number.contains("SCAN") && !by_number.contains("TEMP B-TREE"),
            "{by_number}"
        );
    }

    #[test]
    fn persisted_transactions_are_found_by_index_seeks_never_by_a_scan() {
        for sql in [
            FIND_BY_PS,
            FIND_BY_TX,
            RELEASED_BEFORE,
            HELD_STEP,
            LIST,
            LIST_OF_TENANT,
        ] {
            let steps = plan(sql).join(" | ");
            assert!(
                steps.contains("SEARCH transactions USING"),
                "{sql}: {steps}"
            );
            assert!(!steps.contains("SCAN"), "{sql}: {steps}");
        }
        for sql in [FIND_BY_TX, LIST, LIST_OF_TENANT] {
            let steps = plan(sql).join(" | ");
            assert!(
                steps.contains("transactions_by_tx") && !steps.contains("TEMP B-TREE"),
                "{sql}: {steps}"
            );
        }
        let released = plan(RELEASED_BEFORE).join(" | ");
        assert!(
            released.contains("transactions_by_release") && !released.contains("TEMP B-TREE"),
            "{released}"
        );
        // The pass for rows held at a stop reads a range of rowids a step at a time.
        let step = plan(HELD_STEP).join(" | ");
        assert!(step.contains("INTEGER PRIMARY KEY (rowid>?)"), "{step}");
    }
}
