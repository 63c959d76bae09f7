//! The store's error type.
//!
//! Owns: every way a store operation can fail. Never: decides what the service answers (EC);
//! the service maps these to its own errors.

use std::sync::Arc;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused an operation.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused an operation, or the connection to it failed.
    #[error("postgres: {}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The data directory could not be created or used.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The store was closed (or its writer stopped); nothing more is accepted.
    #[error("the store is closed")]
    Closed,
    /// The group commit that held this batch failed, so none of it is durable. The same
    /// underlying error is reported to every batch of the group, hence the `Arc`.
    #[error("commit failed, batch not written: {0}")]
    CommitFailed(Arc<StoreError>),
    /// Something read from disk does not make sense (an unknown enum code, a negative sequence
    /// number...).
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The database was written by a newer ozbus with a schema this build does not know.
    #[error("store schema version {found} is newer than this build supports ({supported})")]
    UnsupportedSchema { found: i64, supported: i64 },
    /// A value does not fit the store's integer columns (SQLite integers are signed 64-bit).
    #[error("value out of range for the store: {0}")]
    OutOfRange(&'static str),
    /// Another process (or another `Store` in this one) has the data directory open.
    #[error("the data directory {0} is in use by another ozbus")]
    InUse(std::path::PathBuf),
    /// The writer thread panicked; nothing more is accepted.
    #[error("the store's writer thread panicked")]
    WriterPanicked,
    /// The batch was not written for lack of space (the file system is full, or the quota is
    /// used up): nothing of it is durable, and the store goes on; a later batch may succeed.
    /// The one failure that is not a reason to stop.
    #[error("out of space, batch not written: {0}")]
    OutOfSpace(Arc<StoreError>),
    /// Not tried: an earlier batch that changed call records or the log failed for lack of
    /// space, and later such batches may have been computed from what it would have changed.
    /// They fail until the service has read the call records back (`Store::reload_records`).
    #[error("an earlier write of call records failed for lack of space")]
    Fenced,
    /// Not written: the batch changes call records or appends outcomes, and this node does not
    /// hold the call book (another node took it over, or the database could not tell). Nothing
    /// of it is durable; the service goes on, and the report may be sent again.
    #[error("this node does not hold the call book")]
    NotHolder,
    /// Closing gave up waiting for the database: batches queued before the close and not yet
    /// committed are not stored (none of them was acknowledged).
    #[error("the database did not take the last writes within {0:?}; they are not stored")]
    CloseTimedOut(std::time::Duration),
    /// Not the store's own: a report this node forwarded to the node holding the call book
    /// was refused there, with this EC and reason (the answer to give, as it is).
    #[error("refused by the node holding the call book: EC {ec}: {reason}")]
    RefusedByHolder { ec: u16, reason: String },
    /// Not the store's own: a report this node forwarded to the node holding the call book got
    /// no answer before the link to that node was lost. It may or may not have taken effect.
    #[error("the link to the node holding the call book was lost before it answered")]
    Unanswered,
}

/// What PostgreSQL said, when it said something (tokio-postgres' own text is "db error").
fn postgres_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{db} ({})", db.code().code()),
        None => error.to_string(),
    }
}

impl StoreError {
    /// Whether the database could not be reached (its connection failed or closed, or the
    /// server is shutting down or not yet up): a state that passes by itself, unlike a
    /// refusal of what was asked, or a fault of the store.
    pub fn is_unreachable(&self) -> bool {
        let StoreError::Postgres(error) = self else {
            return false;
        };
        if let Some(db) = error.as_db_error() {
            let code = db.code().code();
            return code.starts_with("08") || code.starts_with("57P");
        }
        error.is_closed()
            || std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>())
    }

    /// Whether the store refused for lack of space (and goes on), rather than failed.
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, StoreError::OutOfSpace(_))
    }
}
