//! Mapping between the model and SQLite rows.
//!
//! Owns: column lists, integer codes of enums, and decoding rows into the model with every
//! value from disk checked (a bad value is `StoreError::Corrupt`, never a panic). Never: decides
//! what to read or write, or when.

use bytes::Bytes;
use rusqlite::types::ValueRef;
use rusqlite::Row;

use super::model::{
    CallRecord, NewOutcome, Outcome, OutcomeClass, PersistedTransaction, RecordState,
};
use super::StoreError;

// Column lists as macros (not consts) so statements can be built with `concat!` into
// `&'static str` and looked up in the statement cache without formatting a string per statement.

/// Columns selected for an `Outcome`, in the order `outcome_from_row` reads them.
macro_rules! outcome_columns {
    () => {
        "seq, accepted_ms, tenant, class, cn, an, si, tn, re, ao, dd, as_data, co, ba, bn, bt, dt"
    };
}

/// Columns selected for a `CallRecord`, in the order `record_from_row` reads them.
macro_rules! record_columns {
    () => {
        "tenant, si, cn, tn, preview_agent, agent, as_data, dt, \
         state, created_ms, expires_ms, connected_ms"
    };
}

/// Columns selected for a `PersistedTransaction`, in the order `transaction_from_row` reads them.
macro_rules! transaction_columns {
    () => {
        "tenant, ps, tx, request, cursor, released_ms"
    };
}

/// Columns written for a new outcome and their placeholders, in the order the writer binds them
/// (`size` is stored for retention and never read back into the model).
macro_rules! outcome_insert {
    () => {
        "(seq, accepted_ms, size, tenant, class, cn, an, si, tn, re, \
         ao, dd, as_data, co, ba, bn, bt, dt) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
    };
}

/// Columns written for a `CallRecord` and their placeholders, in the order the writer binds them.
macro_rules! record_insert {
    () => {
        "(tenant, si, cn, tn, preview_agent, agent, as_data, dt, \
         state, created_ms, expires_ms, connected_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    };
}

/// Columns written for a `PersistedTransaction` and their placeholders, in the order the writer
/// binds them; `run` is the store's run that writes the row.
macro_rules! transaction_insert {
    () => {
        "(tenant, ps, tx, request, cursor, released_ms, run) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    };
}

pub(crate) use {outcome_columns, record_columns, transaction_columns};
pub(crate) use {outcome_insert, record_insert, transaction_insert};

pub(crate) fn class_code(class: OutcomeClass) -> i64 {
    match class {
        OutcomeClass::Success => 1,
        OutcomeClass::Failure => 2,
        OutcomeClass::Management => 3,
    }
}

fn class_from_code(code: i64) -> Result<OutcomeClass, StoreError> {
    match code {
        1 => Ok(OutcomeClass::Success),
        2 => Ok(OutcomeClass::Failure),
        3 => Ok(OutcomeClass::Management),
        other => Err(StoreError::Corrupt(format!(
            "unknown outcome class {other}"
        ))),
    }
}

pub(crate) fn state_code(state: RecordState) -> i64 {
    match state {
        RecordState::Pending => 1,
        RecordState::Dialing => 2,
        RecordState::Connected => 3,
    }
}

fn state_from_code(code: i64) -> Result<RecordState, StoreError> {
    match code {
        1 => Ok(RecordState::Pending),
        2 => Ok(RecordState::Dialing),
        3 => Ok(RecordState::Connected),
        other => Err(StoreError::Corrupt(format!("unknown record state {other}"))),
    }
}

/// What an outcome counts for size retention: its bytes plus a fixed per-row overhead (key,
/// integers, index entries), so that many tiny outcomes are not free.
pub(crate) fn outcome_size(o: &NewOutcome) -> u64 {
    const ROW_OVERHEAD: usize = 64;
    let opt = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
    let len = ROW_OVERHEAD
        + o.tenant.len()
        + o.cn.len()
        + opt(&o.an)
        + o.si.len()
        + opt(&o.tn)
        + opt(&o.as_data)
        + opt(&o.co)
        + opt(&o.ba)
        + opt(&o.bn)
        + opt(&o.bt)
        + o.dt.len();
    len as u64
}

/// A sequence number or cursor as SQLite stores it (signed 64-bit).
pub(crate) fn to_sql_u64(value: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange(what))
}

pub(crate) fn from_sql_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what}: {value}")))
}

fn column_name(row: &Row<'_>, idx: usize) -> String {
    row.as_ref()
        .column_name(idx)
        .map_or_else(|_| format!("column {idx}"), str::to_owned)
}

fn blob(row: &Row<'_>, idx: usize) -> Result<Bytes, StoreError> {
    match row.get_ref(idx)? {
        ValueRef::Blob(b) => Ok(Bytes::copy_from_slice(b)),
        _ => Err(StoreError::Corrupt(format!(
            "{} is not a blob",
            column_name(row, idx)
        ))),
    }
}

fn opt_blob(row: &Row<'_>, idx: usize) -> Result<Option<Bytes>, StoreError> {
    match row.get_ref(idx)? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) => Ok(Some(Bytes::copy_from_slice(b))),
        _ => Err(StoreError::Corrupt(format!(
            "{} is neither a blob nor null",
            column_name(row, idx)
        ))),
    }
}

fn int(row: &Row<'_>, idx: usize) -> Result<i64, StoreError> {
    match row.get_ref(idx)? {
        ValueRef::Integer(i) => Ok(i),
        _ => Err(StoreError::Corrupt(format!(
            "{} is not an integer",
            column_name(row, idx)
        ))),
    }
}

fn opt_int(row: &Row<'_>, idx: usize) -> Result<Option<i64>, StoreError> {
    match row.get_ref(idx)? {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(i) => Ok(Some(i)),
        _ => Err(StoreError::Corrupt(format!(
            "{} is neither an integer nor null",
            column_name(row, idx)
        ))),
    }
}

fn code_u16(row: &Row<'_>, idx: usize, value: i64) -> Result<u16, StoreError> {
    u16::try_from(value).map_err(|_| {
        StoreError::Corrupt(format!("{} out of range: {value}", column_name(row, idx)))
    })
}

pub(crate) fn outcome_from_row(row: &Row<'_>) -> Result<Outcome, StoreError> {
    let ao = match opt_int(row, 9)? {
        Some(v) => Some(code_u16(row, 9, v)?),
        None => None,
    };
    Ok(Outcome {
        seq: from_sql_u64(int(row, 0)?, "seq")?,
        accepted_ms: int(row, 1)?,
        outcome: NewOutcome {
            tenant: blob(row, 2)?,
            class: class_from_code(int(row, 3)?)?,
            cn: blob(row, 4)?,
            an: opt_blob(row, 5)?,
            si: blob(row, 6)?,
            tn: opt_blob(row, 7)?,
            re: code_u16(row, 8, int(row, 8)?)?,
            ao,
            dd: int(row, 10)? != 0,
            as_data: opt_blob(row, 11)?,
            co: opt_blob(row, 12)?,
            ba: opt_blob(row, 13)?,
            bn: opt_blob(row, 14)?,
            bt: opt_blob(row, 15)?,
            dt: blob(row, 16)?,
        },
        rendered: Default::default(),
    })
}

pub(crate) fn record_from_row(row: &Row<'_>) -> Result<CallRecord, StoreError> {
    Ok(CallRecord {
        tenant: blob(row, 0)?,
        si: blob(row, 1)?,
        cn: blob(row, 2)?,
        tn: opt_blob(row, 3)?,
        preview_agent: opt_blob(row, 4)?,
        agent: opt_blob(row, 5)?,
        as_data: opt_blob(row, 6)?,
        dt: opt_blob(row, 7)?,
        state: state_from_code(int(row, 8)?)?,
        created_ms: int(row, 9)?,
        expires_ms: opt_int(row, 10)?,
        connected_ms: opt_int(row, 11)?,
    })
}

pub(crate) fn transaction_from_row(row: &Row<'_>) -> Result<PersistedTransaction, StoreError> {
    transaction_from_row_at(row, 0)
}

/// [`transaction_from_row`] for `transaction_columns!` starting at column `at`.
pub(crate) fn transaction_from_row_at(
    row: &Row<'_>,
    at: usize,
) -> Result<PersistedTransaction, StoreError> {
    Ok(PersistedTransaction {
        tenant: blob(row, at)?,
        ps: blob(row, at + 1)?,
        tx: opt_blob(row, at + 2)?.unwrap_or_default(),
        request: blob(row, at + 3)?,
        cursor: from_sql_u64(int(row, at + 4)?, "cursor")?,
        released_ms: opt_int(row, at + 5)?,
    })
}
