//! Reads from SQLite on read-only connections.
//!
//! Owns: a small pool of read-only connections and the read queries. Never: writes (the
//! connections are opened read-only), and never runs on an async worker thread by itself: the
//! async callers in `mod.rs` move these calls onto the blocking pool. WAL lets these reads run
//! while the writer writes; each statement sees the last commit made before it started.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;

use super::model::{CallRecord, Outcome, PersistedTransaction};
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

/// Whether `key` of `tenant` was committed at `since_ms` or later.
pub(crate) fn key_committed(
    conn: &Connection,
    tenant: &[u8],
    key: &[u8],
    since_ms: i64,
) -> Result<bool, StoreError> {
    let found = conn
        .prepare_cached(
            "SELECT 1 FROM ingest_keys WHERE tenant = ?1 AND key = ?2 AND accepted_ms >= ?3",
        )?
        .exists((tenant, key, since_ms))?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How SQLite runs `sql` on a freshly created store: the detail column of each plan step.
    fn plan(sql: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let conn = schema::open_writer(&dir.path().join(schema::DB_FILE)).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let mut rows = stmt.query((b"t", b"c", b"k")).unwrap();
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
}
