//! Reads from PostgreSQL on pooled connections, and rows decoded into the model.
//!
//! Owns: the read queries and decoding rows with every value from the database checked (a bad
//! value is `StoreError::Corrupt`, never a panic). Never: writes, and never uses the writer's
//! connection (a read must not wait for a group commit, nor a group commit for a read). Each
//! statement sees what was committed before it started.

use std::sync::Arc;

use bytes::Bytes;
use tokio_postgres::types::FromSql;
use tokio_postgres::{GenericClient, Row};

use crate::store::model::{
    CallRecord, NewOutcome, Outcome, OutcomeClass, PersistedTransaction, RecordState, UsedKey,
};
use crate::store::rows::{from_sql_u64, outcome_columns, record_columns, transaction_columns};
use crate::store::StoreError;

/// Outcomes after a position, at most `$2`, and only those before which fewer than `$3`
/// bytes were taken (counted like size retention, as the SQLite store stops reading): the
/// server sends no more than the reader keeps.
const OUTCOMES_AFTER: &str = concat!(
    "SELECT ",
    outcome_columns!(),
    " FROM (SELECT *, (sum(size) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING))::bigint - size \
       AS before FROM (SELECT * FROM outcomes WHERE seq > $1 ORDER BY seq LIMIT $2) page) counted \
     WHERE before < $3::bigint ORDER BY seq"
);

/// The newest outcome of a session: one backward seek on `outcomes_by_si`.
pub(crate) const LATEST_BY_SI: &str = concat!(
    "SELECT ",
    outcome_columns!(),
    " FROM outcomes WHERE tenant = $1 AND cn = $2 AND si = $3 ORDER BY seq DESC LIMIT 1"
);

/// The newest outcome of a number: one whose tn is that number, or whose si is and which keeps
/// no tn of its own (see the SQLite store's `read.rs`). A seek on each index and the newer of
/// the two; a missing side counts as seq 0, which no outcome has.
pub(crate) const LATEST_BY_NUMBER: &str = concat!(
    "SELECT ",
    outcome_columns!(),
    " FROM outcomes WHERE seq = greatest(\
       coalesce((SELECT seq FROM outcomes WHERE tenant = $1 AND cn = $2 AND tn = $3 \
                 ORDER BY seq DESC LIMIT 1), 0), \
       coalesce((SELECT seq FROM outcomes WHERE tenant = $1 AND cn = $2 AND si = $3 \
                 AND tn IS NULL ORDER BY seq DESC LIMIT 1), 0))"
);

pub(crate) const RECORDS: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM records ORDER BY tenant, si"
);

const TRANSACTIONS: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions ORDER BY tenant, ps"
);

const KEY_COMMITTED: &str =
    "SELECT seq FROM ingest_keys WHERE tenant = $1 AND key = $2 AND accepted_ms >= $3";

pub(crate) async fn outcomes_after(
    client: &deadpool_postgres::Client,
    after: u64,
    limit: usize,
    max_bytes: u64,
) -> Result<Vec<Arc<Outcome>>, StoreError> {
    // An `after` beyond i64 is past any seq ever written: nothing to read.
    let Ok(after) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    let stmt = client.prepare_cached(OUTCOMES_AFTER).await?;
    let rows = client.query(&stmt, &[&after, &limit, &max_bytes]).await?;
    rows.iter()
        .map(|row| outcome_from_row(row).map(Arc::new))
        .collect()
}

pub(crate) async fn latest_outcome(
    client: &deadpool_postgres::Client,
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
    let stmt = client.prepare_cached(sql).await?;
    match client.query_opt(&stmt, &[&tenant, &cn, &key]).await? {
        Some(row) => Ok(Some(outcome_from_row(&row)?)),
        None => Ok(None),
    }
}

/// Every open call record; on any client (the writer reads them too, in order with its
/// batches).
pub(crate) async fn records(client: &impl GenericClient) -> Result<Vec<CallRecord>, StoreError> {
    let rows = client.query(RECORDS, &[]).await?;
    rows.iter().map(record_from_row).collect()
}

pub(crate) async fn transactions(
    client: &deadpool_postgres::Client,
) -> Result<Vec<PersistedTransaction>, StoreError> {
    let stmt = client.prepare_cached(TRANSACTIONS).await?;
    let rows = client.query(&stmt, &[]).await?;
    rows.iter().map(transaction_from_row).collect()
}

/// How many persisted transactions each tenant has (start-up: counted, none read).
pub(crate) async fn count_transactions(
    client: &deadpool_postgres::Client,
) -> Result<Vec<(Bytes, u64)>, StoreError> {
    let stmt = client
        .prepare_cached("SELECT tenant, count(*) FROM transactions GROUP BY tenant")
        .await?;
    let rows = client.query(&stmt, &[]).await?;
    rows.iter()
        .map(|row| Ok((blob(row, 0)?, from_sql_u64(get(row, 1)?, "count")?)))
        .collect()
}

/// The persisted transactions of `tenant` whose PersistToken is `ps` or whose TX is `tx`: at
/// most two, each found by one index seek; one when the transaction of `ps` has TX `tx`.
pub(crate) async fn find_transactions(
    client: &deadpool_postgres::Client,
    tenant: &[u8],
    ps: Option<&[u8]>,
    tx: &[u8],
) -> Result<Vec<PersistedTransaction>, StoreError> {
    let mut out: Vec<PersistedTransaction> = Vec::new();
    if let Some(ps) = ps {
        let stmt = client.prepare_cached(FIND_BY_PS).await?;
        if let Some(row) = client.query_opt(&stmt, &[&tenant, &ps]).await? {
            out.push(transaction_from_row(&row)?);
        }
    }
    if out.first().is_some_and(|found| found.tx == tx) {
        return Ok(out);
    }
    let stmt = client.prepare_cached(FIND_BY_TX).await?;
    for row in client.query(&stmt, &[&tenant, &tx]).await? {
        let found = transaction_from_row(&row)?;
        // A row found both ways comes once.
        if !out.iter().any(|t| t.ps == found.ps) {
            out.push(found);
        }
    }
    Ok(out)
}

pub(crate) const FIND_BY_PS: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions WHERE tenant = $1 AND ps = $2"
);

pub(crate) const FIND_BY_TX: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions WHERE tenant = $1 AND tx = $2"
);

/// One page of persisted transactions in (tenant, TX) order, as the SQLite store's
/// `read::list_transactions`: a range of `transactions_by_tx`.
pub(crate) async fn list_transactions(
    client: &deadpool_postgres::Client,
    tenant: Option<&[u8]>,
    after: Option<(&[u8], &[u8])>,
    limit: usize,
) -> Result<Vec<PersistedTransaction>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let (after_tenant, after_tx) = after.unwrap_or((b"", b""));
    let rows = match tenant {
        Some(tenant) => {
            let from: &[u8] = match after_tenant.cmp(tenant) {
                std::cmp::Ordering::Less => b"",
                std::cmp::Ordering::Equal => after_tx,
                std::cmp::Ordering::Greater => return Ok(Vec::new()),
            };
            let stmt = client.prepare_cached(LIST_OF_TENANT).await?;
            client.query(&stmt, &[&tenant, &from, &limit]).await?
        }
        None => {
            let stmt = client.prepare_cached(LIST).await?;
            client
                .query(&stmt, &[&after_tenant, &after_tx, &limit])
                .await?
        }
    };
    rows.iter().map(transaction_from_row).collect()
}

pub(crate) const LIST: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions WHERE (tenant, tx) > ($1, $2) ORDER BY tenant, tx LIMIT $3"
);

pub(crate) const LIST_OF_TENANT: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions WHERE tenant = $1 AND tx > $2 ORDER BY tx LIMIT $3"
);

/// At most `limit` persisted transactions nobody holds since `cutoff_ms` or earlier, oldest
/// release first (a seek on `transactions_by_release`).
pub(crate) async fn released_transactions(
    client: &deadpool_postgres::Client,
    cutoff_ms: i64,
    limit: usize,
) -> Result<Vec<PersistedTransaction>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let stmt = client.prepare_cached(RELEASED_BEFORE).await?;
    let rows = client.query(&stmt, &[&cutoff_ms, &limit]).await?;
    rows.iter().map(transaction_from_row).collect()
}

pub(crate) const RELEASED_BEFORE: &str = concat!(
    "SELECT ",
    transaction_columns!(),
    " FROM transactions WHERE released_ms <= $1 ORDER BY released_ms LIMIT $2"
);

pub(crate) async fn key_committed(
    client: &deadpool_postgres::Client,
    tenant: &[u8],
    key: &[u8],
    since_ms: i64,
) -> Result<Option<UsedKey>, StoreError> {
    let stmt = client.prepare_cached(KEY_COMMITTED).await?;
    let Some(row) = client.query_opt(&stmt, &[&tenant, &key, &since_ms]).await? else {
        return Ok(None);
    };
    let seq: Option<i64> = get(&row, 0)?;
    Ok(Some(UsedKey {
        seq: seq.map(|seq| from_sql_u64(seq, "seq")).transpose()?,
    }))
}

/// A column's value, or `Corrupt` saying which column did not decode.
fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T, StoreError> {
    row.try_get(idx).map_err(|error| {
        let name = row
            .columns()
            .get(idx)
            .map_or_else(|| format!("column {idx}"), |c| c.name().to_owned());
        StoreError::Corrupt(format!("{name}: {error}"))
    })
}

fn blob(row: &Row, idx: usize) -> Result<Bytes, StoreError> {
    get::<&[u8]>(row, idx).map(Bytes::copy_from_slice)
}

fn opt_blob(row: &Row, idx: usize) -> Result<Option<Bytes>, StoreError> {
    get::<Option<&[u8]>>(row, idx).map(|b| b.map(Bytes::copy_from_slice))
}

fn code_u16(row: &Row, idx: usize, value: i32) -> Result<u16, StoreError> {
    u16::try_from(value).map_err(|_| {
        let name = row.columns().get(idx).map_or("?", |c| c.name());
        StoreError::Corrupt(format!("{name} out of range: {value}"))
    })
}

fn class_from_code(code: i16) -> Result<OutcomeClass, StoreError> {
    match code {
        1 => Ok(OutcomeClass::Success),
        2 => Ok(OutcomeClass::Failure),
        3 => Ok(OutcomeClass::Management),
        other => Err(StoreError::Corrupt(format!(
            "unknown outcome class {other}"
        ))),
    }
}

fn state_from_code(code: i16) -> Result<RecordState, StoreError> {
    match code {
        1 => Ok(RecordState::Pending),
        2 => Ok(RecordState::Dialing),
        3 => Ok(RecordState::Connected),
        other => Err(StoreError::Corrupt(format!("unknown record state {other}"))),
    }
}

/// The columns of `outcome_columns!`, in order.
pub(crate) fn outcome_from_row(row: &Row) -> Result<Outcome, StoreError> {
    let ao = match get::<Option<i32>>(row, 9)? {
        Some(v) => Some(code_u16(row, 9, v)?),
        None => None,
    };
    Ok(Outcome {
        seq: from_sql_u64(get(row, 0)?, "seq")?,
        accepted_ms: get(row, 1)?,
        outcome: NewOutcome {
            tenant: blob(row, 2)?,
            class: class_from_code(get(row, 3)?)?,
            cn: blob(row, 4)?,
            an: opt_blob(row, 5)?,
            si: blob(row, 6)?,
            tn: opt_blob(row, 7)?,
            re: code_u16(row, 8, get(row, 8)?)?,
            ao,
            dd: get(row, 10)?,
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

/// The columns of `record_columns!`, in order.
pub(crate) fn record_from_row(row: &Row) -> Result<CallRecord, StoreError> {
    Ok(CallRecord {
        tenant: blob(row, 0)?,
        si: blob(row, 1)?,
        cn: blob(row, 2)?,
        tn: opt_blob(row, 3)?,
        preview_agent: opt_blob(row, 4)?,
        agent: opt_blob(row, 5)?,
        as_data: opt_blob(row, 6)?,
        dt: opt_blob(row, 7)?,
        state: state_from_code(get(row, 8)?)?,
        created_ms: get(row, 9)?,
        expires_ms: get(row, 10)?,
        connected_ms: get(row, 11)?,
    })
}

/// The columns of `transaction_columns!`, in order.
fn transaction_from_row(row: &Row) -> Result<PersistedTransaction, StoreError> {
    transaction_from_row_at(row, 0)
}

/// [`transaction_from_row`] for `transaction_columns!` starting at column `at`.
pub(crate) fn transaction_from_row_at(
    row: &Row,
    at: usize,
) -> Result<PersistedTransaction, StoreError> {
    Ok(PersistedTransaction {
        tenant: blob(row, at)?,
        ps: blob(row, at + 1)?,
        tx: opt_blob(row, at + 2)?.unwrap_or_default(),
        request: blob(row, at + 3)?,
        cursor: from_sql_u64(get(row, at + 4)?, "cursor")?,
        released_ms: get(row, at + 5)?,
    })
}
