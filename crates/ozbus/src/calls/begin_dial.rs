//! BD — Begin Dial: an agent starts dialing its oldest pending preview record, or (DD) declines it.
//!
//! Owns: the checks and effect of BD. Never: choosing a preview other than the agent's oldest,
//! or declining with an agent outcome that says anything but "not made" (EC 407).

use sdmp::{Bd, ErrorCode, Rejection};

use super::book::{closing, copy, lossy, CallBook};
use super::tables::Category;
use crate::store::{CallRecord, Mutation, OutcomeClass, RecordState};

/// The AO of a preview reject that gives none.
const AO_PREVIEW_DECLINED: u16 = 200;

impl CallBook {
    pub(super) fn begin_dial(
        &mut self,
        now_ms: i64,
        tenant: &[u8],
        bd: &Bd<'_>,
    ) -> Result<Vec<Mutation>, Rejection> {
        let no_preview = || {
            Rejection::new(
                ErrorCode::NoCallForAgent,
                format!("agent {} has no pending preview", lossy(bd.an)),
            )
        };
        let si = self
            .tenant(tenant)
            .and_then(|t| t.oldest_preview(bd.an))
            .map(|record| record.si.clone())
            .ok_or_else(no_preview)?;
        if !bd.dd {
            let record = self.remove(tenant, &si).ok_or_else(no_preview)?;
            // CE no longer applies; the call timeout runs from now, so that a dial the
            // telephony layer never reports does not stay open for ever.
            let record = CallRecord {
                state: RecordState::Dialing,
                expires_ms: Some(now_ms.saturating_add(self.call_timeout_ms)),
                ..record
            };
            self.insert(record.clone());
            return Ok(vec![Mutation::PutRecord(record)]);
        }
        let ao = bd.ao.unwrap_or(AO_PREVIEW_DECLINED);
        let re = self.declined_preview_reason(ao)?;
        let record = self.remove(tenant, &si).ok_or_else(no_preview)?;
        let mut outcome = self.record_outcome(&record, OutcomeClass::Failure, re);
        outcome.an = Some(copy(bd.an));
        outcome.ao = Some(ao);
        outcome.dd = true;
        Ok(closing(record, outcome).into())
    }

    /// The RE of a declined preview: its AO must map to a "not made" outcome, or EC 407.
    fn declined_preview_reason(&self, ao: u16) -> Result<u16, Rejection> {
        // An AO the table does not know is a user-defined live outcome: never "not made".
        let re = self.tables.agent_reason(ao)?;
        let category = self.tables.dialing(re).map(|d| d.category);
        if category != Some(Category::NotMade) {
            return Err(Rejection::new(
                ErrorCode::AgentOutcomeNotAllowed,
                format!("AO {ao} does not map to a not-made outcome"),
            ));
        }
        Ok(re)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{AgentEntry, Category, DialingEntry, OutcomeTables, OutcomesConfig};
    use super::*;
    use crate::store::NewOutcome;
    use crate::store::OutcomeClass::{Failure, Success};

    #[test]
    fn bd_dials_the_agents_oldest_preview() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN1\ANJoe\CE60");
        bench.now += 1;
        bench.ok(r"MC\CNSales1\TN2\ANJoe");
        bench.ok(r"MC\CNSales1\TN3\ANAnn");
        let mutations = bench.ok(r"BD\ANJoe");
        let [Mutation::PutRecord(record)] = &mutations[..] else {
            panic!("{mutations:?}")
        };
        assert_eq!((&record.si, record.state), (&b("1"), RecordState::Dialing));
        // Dialing: CE no longer applies, the call timeout does.
        assert_eq!(bench.book.next_deadline(), Some(START_MS + 1 + TIMEOUT_MS));
        assert_eq!(bench.sweep(START_MS + 120_000), vec![]);
        bench.ok(r"BD\ANJoe");
        assert_eq!(bench.record("2").unwrap().state, RecordState::Dialing);
        assert_eq!(bench.ec(r"BD\ANJoe"), 410);
        assert_eq!(bench.record("3").unwrap().state, RecordState::Pending);
        // The dialed preview connects and completes as any call.
        bench.ok(r"LC\CNSales1\TN1\ANJoe");
        let outcome = bench.outcome(r"TC\ANJoe\AO102");
        assert_eq!((outcome.si, outcome.class), (b("1"), Success));
    }

    #[test]
    fn previews_created_in_the_same_millisecond_go_by_si() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\SIb\ANJoe");
        bench.ok(r"MC\CNSales1\SIa\ANJoe");
        assert_eq!(bench.outcome(r"BD\ANJoe\DD").si, b("a"));
        assert_eq!(bench.outcome(r"BD\ANJoe\DD").si, b("b"));
    }

    #[test]
    fn bd_dd_declines_with_ao_200_by_default() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN0123\SIs-1\ASapp\DTdata\ANJoe\CE60");
        let outcome = bench.outcome(r"BD\ANJoe\DD");
        let want = NewOutcome {
            an: ob("Joe"),
            tn: ob("0123"),
            ao: Some(200),
            dd: true,
            as_data: ob("app"),
            dt: b("data"),
            ..expected(Failure, "Sales1", "s-1", 0)
        };
        assert_eq!(outcome, want);
        assert_eq!(bench.book.next_deadline(), None);
        assert_eq!(bench.ec(r"BD\ANJoe\DD"), 410);
    }

    #[test]
    fn bd_dd_takes_only_not_made_agent_outcomes() {
        let config = OutcomesConfig {
            dialing: vec![DialingEntry {
                code: 40,
                name: "declined: wrong time zone".into(),
                category: Category::NotMade,
                generated: true,
            }],
            agent: vec![AgentEntry {
                code: 201,
                name: "declined: wrong time zone".into(),
                re: 40,
            }],
            ..OutcomesConfig::default()
        };
        let mut bench = Bench::with_tables(OutcomeTables::from_config(&config).unwrap());
        bench.ok(r"MC\CNSales1\TN1\ANJoe");
        assert_eq!(bench.ec(r"BD\ANJoe\DD\AO5"), 407);
        assert_eq!(bench.ec(r"BD\ANJoe\DD\AO0"), 407);
        // Unknown AO: a user-defined live outcome (RE 10), not "not made".
        assert_eq!(bench.ec(r"BD\ANJoe\DD\AO4321"), 407);
        let outcome = bench.outcome(r"BD\ANJoe\DD\AO201");
        assert_eq!((outcome.re, outcome.ao, outcome.dd), (40, Some(201), true));
    }

    #[test]
    fn strict_tables_refuse_an_unknown_ao_with_407() {
        let config = OutcomesConfig {
            strict: true,
            ..OutcomesConfig::default()
        };
        let mut bench = Bench::with_tables(OutcomeTables::from_config(&config).unwrap());
        bench.ok(r"MC\CNSales1\TN1\ANJoe");
        assert_eq!(bench.ec(r"BD\ANJoe\DD\AO4321"), 407);
        assert_eq!(bench.outcome(r"BD\ANJoe\DD\AO200").re, 0);
    }

    #[test]
    fn an_agent_without_a_pending_preview_is_410() {
        let mut bench = Bench::new();
        assert_eq!(bench.ec(r"BD\ANJoe"), 410);
        assert_eq!(bench.ec(r"BD\ANJoe\DD"), 410);
        // A record without AN is nobody's preview; Ann's preview is not Joe's.
        bench.ok(r"MC\CNSales1\TN1");
        bench.ok(r"MC\CNSales1\TN2\ANAnn");
        assert_eq!(bench.ec(r"BD\ANJoe"), 410);
        // Nor is another tenant's.
        assert!(bench.send_in(b"other", r"BD\ANAnn").is_err());
        bench.ok(r"BD\ANAnn");
    }
}
