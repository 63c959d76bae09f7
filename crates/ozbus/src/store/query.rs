//! Reads of the log for people and their tools: pages of outcomes chosen by filters, and one
//! call's outcomes and open record. The SQLite side is here; `postgres/query.rs` answers the same
//! questions with the same signatures (both behind `Backend`).
//!
//! Owns the questions ([`OutcomeQuery`], [`OutcomePage`]), how a page is cut from the log (the
//! same for both backends: [`Window`]), and the SQLite statements. Never: writes, decides who
//! may see what (the core sets the tenant), or reads past the log end it was given, so that a
//! page never holds an outcome a page before it could have missed.
//!
//! # Pages stable under appends
//!
//! A page covers a range of sequence numbers, never "the first n rows": it examines the log
//! after `after` up to at most `scan` sequence numbers further, and never beyond the last
//! sequence number published when the page began (every outcome up to it is committed and
//! visible, and none below it can appear later: the log has no holes, and numbers become
//! visible in order). The next page starts where this one stopped examining ([`OutcomePage::
//! next`]). So each outcome is on exactly one page, however many are appended meanwhile, and a
//! page costs at most `scan` rows whatever the filters (a filter no index serves, on a long log,
//! makes more pages, not slower ones). A time range becomes a range of sequence numbers first
//! (`accepted_ms` never goes backwards along the log): one index seek per bound.

use std::sync::Arc;

use bytes::Bytes;
use rusqlite::Connection;

use super::model::{CallRecord, Outcome, OutcomeClass};
use super::rows::{self, outcome_columns, record_columns, to_sql_u64};
use super::{SqliteStore, StoreError};

/// Which outcomes a page holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutcomeQuery {
    /// Only outcomes of this tenant; `None`: every tenant.
    pub tenant: Option<Bytes>,
    /// Only outcomes with a sequence number above this ...
    pub after: u64,
    /// ... and below this.
    pub before: Option<u64>,
    /// Only outcomes accepted at or after this (Unix milliseconds) ...
    pub from_ms: Option<i64>,
    /// ... and before this.
    pub to_ms: Option<i64>,
    /// Only outcomes of this campaign (exactly).
    pub campaign: Option<Bytes>,
    /// Only outcomes handled or declined by this agent.
    pub agent: Option<Bytes>,
    /// Only outcomes of this number: its TN, or its SI when it keeps no TN (as UO finds a
    /// call by number).
    pub number: Option<Bytes>,
    /// Only outcomes of these classes; empty: every class.
    pub classes: Vec<OutcomeClass>,
    /// At most this many outcomes (at least one) ...
    pub limit: usize,
    /// ... from at most this many sequence numbers of the log (at least one).
    pub scan: u64,
}

/// One page of outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutcomePage {
    /// The matching outcomes, ascending.
    pub outcomes: Vec<Outcome>,
    /// Every matching outcome with a sequence number up to this one is on this page or an
    /// earlier one: the next page is the query with `after` set to it.
    pub next: u64,
    /// Whether the range goes on past `next` in the log as it was when the page was read
    /// (false: the page reached the range's end, or the log's; later outcomes come after `next`).
    pub more: bool,
}

/// The part of the log a page examines: sequence numbers in `(lower, upper]`, of a range that
/// ends at `end` (inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    pub lower: u64,
    pub upper: u64,
    pub end: u64,
}

impl Window {
    /// The window of `query` on a log that ends at `last_seq` and keeps outcomes from `oldest`;
    /// `from_seq` and `to_seq` are the first sequence numbers accepted at or after `from_ms` and
    /// `to_ms` (`None`: no outcome was).
    pub(crate) fn of(
        query: &OutcomeQuery,
        last_seq: u64,
        oldest: Option<u64>,
        from_seq: Option<u64>,
        to_seq: Option<u64>,
    ) -> Window {
        let mut lower = query.after;
        if let Some(oldest) = oldest {
            lower = lower.max(oldest.saturating_sub(1));
        }
        if query.from_ms.is_some() {
            lower = lower.max(from_seq.map_or(last_seq, |seq| seq.saturating_sub(1)));
        }
        let mut end = last_seq;
        if let Some(before) = query.before {
            end = end.min(before.saturating_sub(1));
        }
        if let (Some(_), Some(to_seq)) = (query.to_ms, to_seq) {
            end = end.min(to_seq.saturating_sub(1));
        }
        let upper = end.min(lower.saturating_add(query.scan.max(1)));
        Window { lower, upper, end }
    }

    /// Whether it holds no sequence number at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.lower >= self.upper
    }

    /// The page of `outcomes` (those of this window that match, ascending, at most `limit`).
    pub(crate) fn page(&self, query: &OutcomeQuery, outcomes: Vec<Outcome>) -> OutcomePage {
        if self.is_empty() {
            return OutcomePage {
                outcomes,
                next: query.after.max(self.lower.min(self.end)),
                more: false,
            };
        }
        let next = match outcomes.last() {
            Some(last) if outcomes.len() >= query.limit.max(1) => last.seq,
            _ => self.upper,
        };
        OutcomePage {
            outcomes,
            next: next.max(query.after),
            more: next < self.end,
        }
    }
}

/// The classes as a bit mask over their stored codes (every class when none is named).
pub(crate) fn class_mask(classes: &[OutcomeClass]) -> i64 {
    let all = [
        OutcomeClass::Success,
        OutcomeClass::Failure,
        OutcomeClass::Management,
    ];
    let classes = if classes.is_empty() {
        &all[..]
    } else {
        classes
    };
    classes
        .iter()
        .fold(0, |mask, class| mask | (1 << rows::class_code(*class)))
}

/// The outcomes of one window that match; the filters a parameter leaves NULL do not apply.
/// NOT INDEXED: the window is a range of the rowid, read in order; an index for a filter
/// would read the filter's matches across the whole log instead.
const PAGE: &str = concat!(
    "SELECT ",
    outcome_columns!(),
    " FROM outcomes NOT INDEXED WHERE seq > ?1 AND seq <= ?2 \
       AND (?3 IS NULL OR tenant = ?3) AND (?4 IS NULL OR cn = ?4) AND (?5 IS NULL OR an = ?5) \
       AND (?6 IS NULL OR tn = ?6 OR (tn IS NULL AND si = ?6)) AND ((?7 >> class) & 1) = 1 \
     ORDER BY seq LIMIT ?8"
);

/// The first outcome accepted at or after a time: one seek on `outcomes_by_age`.
const FIRST_AT: &str =
    "SELECT seq FROM outcomes WHERE accepted_ms >= ?1 ORDER BY accepted_ms, seq LIMIT 1";

/// The newest outcomes of a session, oldest first: one range of `outcomes_by_si`.
const CALL_OUTCOMES: &str = concat!(
    "SELECT ",
    outcome_columns!(),
    " FROM (SELECT * FROM outcomes WHERE tenant = ?1 AND cn = ?2 AND si = ?3 \
       ORDER BY seq DESC LIMIT ?4) ORDER BY seq"
);

const OPEN_RECORD: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM records WHERE tenant = ?1 AND si = ?2"
);

fn first_at(conn: &Connection, ms: Option<i64>) -> Result<Option<u64>, StoreError> {
    let Some(ms) = ms else { return Ok(None) };
    let mut stmt = conn.prepare_cached(FIRST_AT)?;
    let mut rows = stmt.query([ms])?;
    match rows.next()? {
        Some(row) => Ok(Some(rows::from_sql_u64(row.get(0)?, "seq")?)),
        None => Ok(None),
    }
}

fn page(
    conn: &Connection,
    query: &OutcomeQuery,
    last_seq: u64,
    oldest: Option<u64>,
) -> Result<OutcomePage, StoreError> {
    let from_seq = first_at(conn, query.from_ms)?;
    let to_seq = first_at(conn, query.to_ms)?;
    let window = Window::of(query, last_seq, oldest, from_seq, to_seq);
    if window.is_empty() {
        return Ok(window.page(query, Vec::new()));
    }
    let mut stmt = conn.prepare_cached(PAGE)?;
    let mut rows = stmt.query(rusqlite::params![
        to_sql_u64(window.lower, "seq")?,
        to_sql_u64(window.upper, "seq")?,
        query.tenant.as_deref(),
        query.campaign.as_deref(),
        query.agent.as_deref(),
        query.number.as_deref(),
        class_mask(&query.classes),
        i64::try_from(query.limit.max(1)).unwrap_or(i64::MAX),
    ])?;
    let mut outcomes = Vec::new();
    while let Some(row) = rows.next()? {
        outcomes.push(rows::outcome_from_row(row)?);
    }
    Ok(window.page(query, outcomes))
}

fn call_outcomes(
    conn: &Connection,
    tenant: &[u8],
    cn: &[u8],
    si: &[u8],
    limit: usize,
) -> Result<Vec<Outcome>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(CALL_OUTCOMES)?;
    let mut rows = stmt.query((tenant, cn, si, limit))?;
    let mut outcomes = Vec::new();
    while let Some(row) = rows.next()? {
        outcomes.push(rows::outcome_from_row(row)?);
    }
    Ok(outcomes)
}

fn open_record(
    conn: &Connection,
    tenant: &[u8],
    si: &[u8],
) -> Result<Option<CallRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(OPEN_RECORD)?;
    let mut rows = stmt.query((tenant, si))?;
    match rows.next()? {
        Some(row) => Ok(Some(rows::record_from_row(row)?)),
        None => Ok(None),
    }
}

impl SqliteStore {
    /// One page of the outcomes `query` asks for (see the module documentation: a page covers
    /// a range of sequence numbers, so paging is stable while outcomes are appended).
    pub async fn outcomes(&self, query: OutcomeQuery) -> Result<OutcomePage, StoreError> {
        // Before the read: every outcome up to it is committed, so the page can be final.
        let (last_seq, oldest) = (self.last_seq(), self.oldest_seq());
        self.blocking_read(move |conn| page(conn, &query, last_seq, oldest))
            .await
    }

    /// The newest `limit` outcomes of the call (tenant, campaign `cn`, session `si`), oldest
    /// first; corrections (UO) of the call among them.
    pub async fn call_outcomes(
        &self,
        tenant: &[u8],
        cn: &[u8],
        si: &[u8],
        limit: usize,
    ) -> Result<Vec<Arc<Outcome>>, StoreError> {
        let (tenant, cn, si) = (tenant.to_vec(), cn.to_vec(), si.to_vec());
        let outcomes = self
            .blocking_read(move |conn| call_outcomes(conn, &tenant, &cn, &si, limit))
            .await?;
        Ok(outcomes.into_iter().map(Arc::new).collect())
    }

    /// The open call record of `tenant` with session `si`, as last committed.
    pub async fn open_record(
        &self,
        tenant: &[u8],
        si: &[u8],
    ) -> Result<Option<CallRecord>, StoreError> {
        let (tenant, si) = (tenant.to_vec(), si.to_vec());
        self.blocking_read(move |conn| open_record(conn, &tenant, &si))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(after: u64, limit: usize, scan: u64) -> OutcomeQuery {
        OutcomeQuery {
            after,
            limit,
            scan,
            ..OutcomeQuery::default()
        }
    }

    #[test]
    fn a_window_never_passes_the_log_end_the_range_or_the_scan() {
        let q = query(10, 5, 100);
        assert_eq!(
            Window::of(&q, 50, Some(1), None, None),
            Window {
                lower: 10,
                upper: 50,
                end: 50
            }
        );
        let q = query(10, 5, 20);
        assert_eq!(Window::of(&q, 50, Some(1), None, None).upper, 30);
        // Retention removed everything up to 39: the window starts there.
        assert_eq!(Window::of(&q, 50, Some(40), None, None).lower, 39);
        let q = OutcomeQuery {
            before: Some(20),
            ..query(10, 5, 100)
        };
        assert_eq!(Window::of(&q, 50, None, None, None).end, 19);
        // A time range: from the first outcome at or after `from`, to before the first at or
        // after `to`; nothing accepted since `from`: nothing before the log end.
        let q = OutcomeQuery {
            from_ms: Some(1),
            to_ms: Some(2),
            ..query(0, 5, 100)
        };
        let w = Window::of(&q, 50, Some(1), Some(12), Some(30));
        assert_eq!((w.lower, w.end), (11, 29));
        let w = Window::of(&q, 50, Some(1), None, None);
        assert!(w.is_empty());
        assert_eq!(w.page(&q, Vec::new()).next, 50);
    }

    #[test]
    fn a_page_says_where_the_next_one_starts() {
        let q = query(10, 2, 100);
        let w = Window::of(&q, 50, None, None, None);
        let outcome = |seq| Outcome {
            seq,
            accepted_ms: 0,
            outcome: crate::store::NewOutcome::new(
                Bytes::new(),
                OutcomeClass::Failure,
                Bytes::new(),
                Bytes::new(),
                0,
            ),
            rendered: Default::default(),
        };
        // Full: the next page starts after its last outcome.
        let page = w.page(&q, vec![outcome(12), outcome(17)]);
        assert_eq!((page.next, page.more), (17, true));
        // Not full: everything in the window was examined.
        let page = w.page(&q, vec![outcome(12)]);
        assert_eq!((page.next, page.more), (50, false));
        let q = query(10, 2, 5);
        let w = Window::of(&q, 50, None, None, None);
        assert_eq!(w.page(&q, Vec::new()).next, 15);
        assert!(w.page(&q, Vec::new()).more);
        // Past the end: nothing, and the cursor never goes back.
        let q = query(60, 2, 5);
        let w = Window::of(&q, 50, None, None, None);
        assert_eq!(
            (w.page(&q, Vec::new()).next, w.page(&q, Vec::new()).more),
            (60, false)
        );
    }

    #[test]
    fn a_page_reads_a_range_of_the_rowid_and_the_bounds_of_a_time_range_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::schema::open_writer(
            &dir.path().join(super::super::schema::DB_FILE),
            |_| None,
        )
        .unwrap();
        let plan = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut rows = stmt.query(params).unwrap();
            let mut details = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                details.push(row.get::<_, String>(3).unwrap());
            }
            details.join(" | ")
        };
        let b: &[u8] = b"x";
        let page = plan(PAGE, &[&1, &2, &b, &b, &b, &b, &14, &10]);
        assert!(
            page.contains("USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
            "{page}"
        );
        assert!(!page.contains("TEMP B-TREE"), "{page}");
        let first = plan(FIRST_AT, &[&1]);
        assert!(first.contains("INDEX outcomes_by_age"), "{first}");
        assert!(!first.contains("TEMP B-TREE"), "{first}");
        let call = plan(CALL_OUTCOMES, &[&b, &b, &b, &10]);
        assert!(call.contains("INDEX outcomes_by_si"), "{call}");
        let record = plan(OPEN_RECORD, &[&b, &b]);
        assert!(record.contains("USING INDEX"), "{record}");
    }
}
