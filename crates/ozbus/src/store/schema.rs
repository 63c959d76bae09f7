//! Opening SQLite connections and bringing the schema to the current version.
//!
//! Owns: connection settings (WAL, `synchronous=FULL`, timeouts, statement cache) and schema
//! versions (`PRAGMA user_version`). Never: reads or writes store data, except what a
//! migration fills in for rows it finds (schema 3: the TX of persisted transactions).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::model::RequestTx;
use super::StoreError;

/// Name of the database file inside the store's directory.
pub(crate) const DB_FILE: &str = "ozbus.sqlite3";

/// Fills in, on the migration's transaction, what a step's SQL alone cannot compute.
type Fill = fn(&rusqlite::Transaction<'_>, RequestTx) -> Result<(), StoreError>;

/// One step of the schema: its SQL, then the Rust that fills in what it adds, if any, in the
/// same transaction.
struct Migration {
    sql: &'static str,
    fill: Option<Fill>,
}

/// Schema versions in order; `MIGRATIONS[n]` brings version n to n + 1. Append, never edit.
const MIGRATIONS: &[Migration] = &[
    Migration {
        sql: include_str!("schema.sql"),
        fill: None,
    },
    Migration {
        sql: include_str!("schema_2.sql"),
        fill: None,
    },
    Migration {
        sql: include_str!("schema_3.sql"),
        fill: Some(fill_transaction_tx),
    },
    Migration {
        sql: include_str!("schema_4.sql"),
        fill: None,
    },
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Waiting beats failing when SQLite is briefly busy (a checkpoint, a WAL recovery at start-up).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Enough for every statement the writer or a reader prepares, so none is ever re-prepared.
const STATEMENT_CACHE: usize = 32;

/// Opens the only write connection, creating or migrating the schema; `request_tx` reads the
/// TX of a persisted transaction's request for the migration to schema 3.
pub(crate) fn open_writer(path: &Path, request_tx: RequestTx) -> Result<Connection, StoreError> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // WAL lets readers run while the writer writes; FULL makes every commit an fsync of the WAL,
    // which is what "accepted means durable" requires.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "cannot switch the database to WAL (journal_mode is {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    migrate(&mut conn, request_tx)?;
    Ok(conn)
}

/// Opens a read-only connection; the schema must exist (the writer is opened first).
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn migrate(conn: &mut Connection, request_tx: RequestTx) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::UnsupportedSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(StoreError::Corrupt(format!(
            "negative schema version {found}"
        )));
    }
    for (version, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        // Each step and its version bump commit together, so a crash never leaves a
        // half-migrated database that claims the old version.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        tx.execute_batch(step.sql)?;
        if let Some(fill) = step.fill {
            fill(&tx, request_tx)?;
        }
        tx.pragma_update(None, "user_version", version as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Schema 3: the `tx` column of every persisted transaction stored before it, read from its
/// request. A request whose TX cannot be read leaves the column empty (NULL): the row is then
/// found by its PersistToken only.
fn fill_transaction_tx(
    tx: &rusqlite::Transaction<'_>,
    request_tx: RequestTx,
) -> Result<(), StoreError> {
    let mut read = tx.prepare("SELECT rowid, request FROM transactions")?;
    let mut write = tx.prepare("UPDATE transactions SET tx = ?2 WHERE rowid = ?1")?;
    let mut rows = read.query(())?;
    while let Some(row) = rows.next()? {
        let rowid: i64 = row.get(0)?;
        let request = match row.get_ref(1)? {
            rusqlite::types::ValueRef::Blob(request) => request,
            _ => continue,
        };
        if let Some(found) = request_tx(request) {
            write.execute((rowid, found.as_ref()))?;
        }
    }
    Ok(())
}
