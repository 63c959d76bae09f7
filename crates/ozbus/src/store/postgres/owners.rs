//! Which node owns what among the transactions: the reads that let nodes sharing the database
//! keep a transaction's TX unique and a persisted transaction delivered by one node at a time.
//!
//! Owns: whether this node still owns the persisted transactions it holds (`not_owned`: the
//! row's `node` is this node's and the row is held), whether another node that is alive has a
//! transaction without PS open under a TX (`active_transactions`, see `schema_5.sql`), how many
//! persisted transactions a tenant has, and the pass that marks rows held by nodes that are
//! gone as released (from when their node was last seen), so that the persist TTL finds them by
//! their release time like any other. That pass is the one write here: it only ever sets
//! `released_ms` of a row still held by a node that is gone, never of one another node wrote
//! meanwhile. Never: decides what to do about a transaction (the service does), nor writes
//! anything else.

use bytes::Bytes;

use super::read::transaction_from_row_at;
use crate::store::model::PersistedTransaction;
use crate::store::rows::transaction_columns;
use crate::store::StoreError;

/// Of the keys given ((tenant, PS) as two arrays), those whose row is missing, released, or
/// written as held by another node than `$3`: a seek on the primary key per key.
pub(crate) const NOT_OWNED: &str =
    "SELECT k.tenant, k.ps FROM unnest($1::bytea[], $2::bytea[]) AS k(tenant, ps) \
     LEFT JOIN transactions t ON t.tenant = k.tenant AND t.ps = k.ps \
     WHERE t.ps IS NULL OR t.node <> $3 OR t.released_ms IS NOT NULL";

/// Whether a node other than `$3` that is alive (its row refreshed within `$4` ms) has a
/// transaction without PS open under TX `$2` of namespace `$1`: one seek on the primary key.
pub(crate) const ACTIVE_ELSEWHERE: &str = "SELECT EXISTS (SELECT 1 FROM active_transactions \
     WHERE tenant = $1 AND tx = $2 AND node <> $3 AND ozbus_node_alive(node, $4))";

/// How many persisted transactions a tenant has: a range of the primary key.
pub(crate) const COUNT_OF_TENANT: &str = "SELECT count(*) FROM transactions WHERE tenant = $1";

/// One bounded step of a pass over the table in `id` order: of the next `$2` rows after id
/// `$1`, those still held (released_ms NULL) by a node other than `$3` that is gone (stopped,
/// its row not refreshed in the last `$4` ms by the database's clock, or its row removed) are
/// written as released from when their node was last seen alive (or now, when nothing is known
/// of it), unless another node wrote them meanwhile. One row per row of the step, in no
/// particular order: its id, whether it was released by this step, and then its columns as
/// released.
pub(crate) const RELEASE_HELD_BY_GONE: &str = concat!(
    "WITH page AS (SELECT id FROM transactions WHERE id > $1 ORDER BY id LIMIT $2), \
     gone AS (SELECT t.id, t.node, coalesce(n.seen_ms, ozbus_now_ms()) AS seen \
       FROM transactions t JOIN page ON page.id = t.id LEFT JOIN nodes n ON n.node = t.node \
       WHERE t.released_ms IS NULL AND t.node <> $3 \
       AND coalesce(n.stopped OR n.seen_ms < ozbus_now_ms() - $4, true)), \
     released AS (UPDATE transactions t SET released_ms = gone.seen FROM gone \
       WHERE t.id = gone.id AND t.released_ms IS NULL AND t.node = gone.node \
       RETURNING t.id, ",
    transaction_columns!(),
    ") SELECT page.id, released.id IS NOT NULL, released.tenant, released.ps, released.tx, \
       released.request, released.cursor, released.released_ms \
     FROM page LEFT JOIN released ON released.id = page.id"
);

pub(crate) async fn not_owned(
    client: &deadpool_postgres::Client,
    node: i64,
    keys: &[(Bytes, Bytes)],
) -> Result<Vec<(Bytes, Bytes)>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&[u8]> = keys.iter().map(|(tenant, _)| &tenant[..]).collect();
    let tokens: Vec<&[u8]> = keys.iter().map(|(_, ps)| &ps[..]).collect();
    let stmt = client.prepare_cached(NOT_OWNED).await?;
    let rows = client.query(&stmt, &[&tenants, &tokens, &node]).await?;
    rows.iter()
        .map(|row| {
            let tenant: &[u8] = row.try_get(0)?;
            let ps: &[u8] = row.try_get(1)?;
            Ok((Bytes::copy_from_slice(tenant), Bytes::copy_from_slice(ps)))
        })
        .collect()
}

pub(crate) async fn active_elsewhere(
    client: &deadpool_postgres::Client,
    node: i64,
    lease_ms: i64,
    tenant: &[u8],
    tx: &[u8],
) -> Result<bool, StoreError> {
    let stmt = client.prepare_cached(ACTIVE_ELSEWHERE).await?;
    let row = client
        .query_one(&stmt, &[&tenant, &tx, &node, &lease_ms])
        .await?;
    Ok(row.try_get(0)?)
}

pub(crate) async fn count_of_tenant(
    client: &deadpool_postgres::Client,
    tenant: &[u8],
) -> Result<u64, StoreError> {
    let stmt = client.prepare_cached(COUNT_OF_TENANT).await?;
    let row = client.query_one(&stmt, &[&tenant]).await?;
    crate::store::rows::from_sql_u64(row.try_get(0)?, "count")
}

/// One step of the pass for rows held by nodes that are gone ([`RELEASE_HELD_BY_GONE`]): the
/// rows it released, each with the `released_ms` it was given, and where the next step starts
/// (`None`: the pass reached the end).
pub(crate) async fn release_held_by_gone(
    client: &deadpool_postgres::Client,
    node: i64,
    lease_ms: i64,
    after: i64,
    scan: usize,
) -> Result<(Vec<PersistedTransaction>, Option<i64>), StoreError> {
    let scan = i64::try_from(scan).unwrap_or(i64::MAX);
    let stmt = client.prepare_cached(RELEASE_HELD_BY_GONE).await?;
    let rows = client
        .query(&stmt, &[&after, &scan, &node, &lease_ms])
        .await?;
    let (mut out, mut last) = (Vec::new(), after);
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        last = last.max(id);
        if row.try_get::<_, bool>(1)? {
            out.push((id, transaction_from_row_at(row, 2)?));
        }
    }
    out.sort_unstable_by_key(|(id, _)| *id);
    let out = out.into_iter().map(|(_, row)| row).collect();
    let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) == scan;
    Ok((out, more.then_some(last)))
}
