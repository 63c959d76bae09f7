//! MC — Make Call: registers a pending call record that later reports close.
//!
//! Owns: the checks and effect of MC. Never: dialing anything; a record only waits here.

use sdmp::{ErrorCode, Mc, Rejection};

use super::book::{copy, copy_opt, known_tn, lossy, session_key, CallBook};
use crate::store::{CallRecord, Mutation, RecordState};

impl CallBook {
    pub(super) fn make_call(
        &mut self,
        now_ms: i64,
        tenant: &[u8],
        mc: &Mc<'_>,
    ) -> Result<Vec<Mutation>, Rejection> {
        let si = session_key(mc.si, mc.tn);
        if self.tenant(tenant).and_then(|t| t.record(si)).is_some() {
            return Err(Rejection::new(
                ErrorCode::DuplicateSession,
                format!("SI {} is already open in the tenant", lossy(si)),
            ));
        }
        let record = CallRecord {
            tenant: copy(tenant),
            si: copy(si),
            cn: copy(mc.cn),
            tn: copy_opt(known_tn(mc.tn)),
            preview_agent: copy_opt(mc.an),
            agent: None,
            as_data: copy_opt(mc.as_data),
            dt: copy_opt(mc.dt),
            state: RecordState::Pending,
            created_ms: now_ms,
            expires_ms: mc
                .ce
                .map(|seconds| now_ms.saturating_add(i64::from(seconds) * 1000)),
            connected_ms: None,
        };
        self.insert(record.clone());
        Ok(vec![Mutation::PutRecord(record)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn mc_registers_a_pending_record() {
        let mut bench = Bench::new();
        let mutations = bench.ok(r"MC\CNSales1\TN0123\SIs-1\ASapp\DTdata\CE60");
        let record = CallRecord {
            tenant: b("default"),
            si: b("s-1"),
            cn: b("Sales1"),
            tn: ob("0123"),
            preview_agent: None,
            agent: None,
            as_data: ob("app"),
            dt: ob("data"),
            state: RecordState::Pending,
            created_ms: START_MS,
            expires_ms: Some(START_MS + 60_000),
            connected_ms: None,
        };
        assert_eq!(mutations, vec![Mutation::PutRecord(record)]);
        assert_eq!(bench.book.open_records(), 1);
        assert_eq!(bench.book.next_deadline(), Some(START_MS + 60_000));
    }

    #[test]
    fn si_defaults_to_tn_and_an_makes_a_preview() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN0123\ANJoe");
        let record = bench.record("0123").unwrap();
        assert_eq!(record.tn, ob("0123"));
        assert_eq!(record.preview_agent, ob("Joe"));
        assert_eq!(record.agent, None);
        assert_eq!(record.expires_ms, None);
        assert_eq!(bench.book.next_deadline(), None);
    }

    #[test]
    fn an_empty_tn_is_no_tn() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN\SIs-1");
        assert_eq!(bench.record("s-1").unwrap().tn, None);
    }

    #[test]
    fn a_second_record_with_the_same_si_is_412() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN0123");
        assert_eq!(bench.ec(r"MC\CNSales1\TN0123"), 412);
        // SI is unique in the tenant, whatever the campaign, and SI defaulted from TN counts.
        assert_eq!(bench.ec(r"MC\CNSales2\SI0123\TN999"), 412);
        bench.ok(r"MC\CNSales1\SIs-2\TN0123");
        // Another tenant has its own SIs.
        bench.send_in(b"other", r"MC\CNSales1\TN0123").unwrap();
        assert_eq!(bench.book.open_records(), 3);
    }

    #[test]
    fn ce_is_capped_rather_than_overflowing() {
        let mut bench = Bench::new();
        bench.now = i64::MAX - 5;
        bench.ok(r"MC\CNSales1\TN1\CE2592000");
        assert_eq!(bench.book.next_deadline(), Some(i64::MAX));
    }
}
