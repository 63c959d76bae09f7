//! Reads of the log for people and their tools on PostgreSQL: pages of outcomes chosen by
//! filters, and one call's outcomes and open record; the same questions, signatures and
//! answers as the SQLite store's `query.rs`, whose documentation says how a page is cut.
//!
//! Owns the PostgreSQL statements. Never: writes, or reads past the log end this node knows
//! committed (every number up to it is visible, none below it can appear later).

use std::sync::Arc;

use super::read::{outcome_from_row, record_from_row};
use super::PgStore;
use crate::store::model::{CallRecord, Outcome};
use crate::store::query::{class_mask, OutcomePage, OutcomeQuery, Window};
use crate::store::rows::{outcome_columns, record_columns, to_sql_u64};
use crate::store::StoreError;

/// The outcomes of one window that match; a NULL parameter leaves its filter out. The window is
/// a range of the primary key, read in order.
pub(crate) const PAGE: &str = concat!(
    "SELECT ",
    outcome_columns!(),
    " FROM outcomes WHERE seq > $1 AND seq <= $2 \
       AND ($3::bytea IS NULL OR tenant = $3) AND ($4::bytea IS NULL OR cn = $4) \
       AND ($5::bytea IS NULL OR an = $5) \
       AND ($6::bytea IS NULL OR tn = $6 OR (tn IS NULL AND si = $6)) \
       AND (($7::bigint >> class::int) & 1) = 1 \
     ORDER BY seq LIMIT $8"
);

/// The first outcome accepted at or after a time: one seek on `outcomes_by_age`.
pub(crate) const FIRST_AT: &str =
    "SELECT seq FROM outcomes WHERE accepted_ms >= $1 ORDER BY accepted_ms, seq LIMIT 1";

/// The newest outcomes of a session, oldest first: one range of `outcomes_by_si`.
pub(crate) const CALL_OUTCOMES: &str = concat!(
    "SELECT ",
    outcome_columns!(),
    " FROM (SELECT * FROM outcomes WHERE tenant = $1 AND cn = $2 AND si = $3 \
       ORDER BY seq DESC LIMIT $4) newest ORDER BY seq"
);

pub(crate) const OPEN_RECORD: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM records WHERE tenant = $1 AND si = $2"
);

async fn first_at(
    client: &deadpool_postgres::Client,
    ms: Option<i64>,
) -> Result<Option<u64>, StoreError> {
    let Some(ms) = ms else { return Ok(None) };
    let stmt = client.prepare_cached(FIRST_AT).await?;
    match client.query_opt(&stmt, &[&ms]).await? {
        Some(row) => {
            let seq: i64 = row.try_get(0)?;
            Ok(Some(crate::store::rows::from_sql_u64(seq, "seq")?))
        }
        None => Ok(None),
    }
}

impl PgStore {
    /// One page of the outcomes `query` asks for; as `SqliteStore::outcomes`.
    pub async fn outcomes(&self, query: OutcomeQuery) -> Result<OutcomePage, StoreError> {
        // Before the read: every outcome up to it is committed and visible.
        let (last_seq, oldest) = (self.last_seq(), self.oldest_seq());
        let client = self.reader().await?;
        let from_seq = first_at(&client, query.from_ms).await?;
        let to_seq = first_at(&client, query.to_ms).await?;
        let window = Window::of(&query, last_seq, oldest, from_seq, to_seq);
        if window.is_empty() {
            return Ok(window.page(&query, Vec::new()));
        }
        let (lower, upper) = (
            to_sql_u64(window.lower, "seq")?,
            to_sql_u64(window.upper, "seq")?,
        );
        let (tenant, campaign, agent, number) = (
            query.tenant.as_deref(),
            query.campaign.as_deref(),
            query.agent.as_deref(),
            query.number.as_deref(),
        );
        let mask = class_mask(&query.classes);
        let limit = i64::try_from(query.limit.max(1)).unwrap_or(i64::MAX);
        let stmt = client.prepare_cached(PAGE).await?;
        let rows = client
            .query(
                &stmt,
                &[
                    &lower, &upper, &tenant, &campaign, &agent, &number, &mask, &limit,
                ],
            )
            .await?;
        let outcomes = rows
            .iter()
            .map(outcome_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(window.page(&query, outcomes))
    }

    /// The newest `limit` outcomes of the call (tenant, campaign `cn`, session `si`), oldest
    /// first; as `SqliteStore::call_outcomes`.
    pub async fn call_outcomes(
        &self,
        tenant: &[u8],
        cn: &[u8],
        si: &[u8],
        limit: usize,
    ) -> Result<Vec<Arc<Outcome>>, StoreError> {
        let client = self.reader().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let stmt = client.prepare_cached(CALL_OUTCOMES).await?;
        let rows = client.query(&stmt, &[&tenant, &cn, &si, &limit]).await?;
        rows.iter()
            .map(|row| outcome_from_row(row).map(Arc::new))
            .collect()
    }

    /// The open call record of `tenant` with session `si`, as last committed; as
    /// `SqliteStore::open_record`.
    pub async fn open_record(
        &self,
        tenant: &[u8],
        si: &[u8],
    ) -> Result<Option<CallRecord>, StoreError> {
        let client = self.reader().await?;
        let stmt = client.prepare_cached(OPEN_RECORD).await?;
        match client.query_opt(&stmt, &[&tenant, &si]).await? {
            Some(row) => Ok(Some(record_from_row(&row)?)),
            None => Ok(None),
        }
    }
}
