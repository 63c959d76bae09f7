//! TC — Transaction Complete: the agent ends its connected call with a success outcome.
//!
//! Owns: the checks and effect of TC, and the rule for which agent outcomes fit a call that
//! reached an agent. Never: completing a call that is not connected to that agent (EC 410).

use sdmp::{ErrorCode, Rejection, Tc};

use super::book::{closing, copy, copy_opt, lossy, CallBook};
use crate::store::{Mutation, OutcomeClass};

impl CallBook {
    pub(super) fn transaction_complete(
        &mut self,
        tenant: &[u8],
        tc: &Tc<'_>,
    ) -> Result<Vec<Mutation>, Rejection> {
        let no_call = || {
            Rejection::new(
                ErrorCode::NoCallForAgent,
                format!("agent {} has no connected call", lossy(tc.an)),
            )
        };
        let si = self
            .tenant(tenant)
            .and_then(|t| t.current_call(tc.an))
            .map(|record| record.si.clone())
            .ok_or_else(no_call)?;
        let ao = tc.ao.unwrap_or(0);
        let re = self.launched_call_reason(ao)?;
        let record = self.remove(tenant, &si).ok_or_else(no_call)?;
        let mut outcome = self.record_outcome(&record, OutcomeClass::Success, re);
        outcome.an = Some(copy(tc.an));
        outcome.ao = Some(ao);
        outcome.co = copy_opt(tc.co);
        outcome.ba = copy_opt(tc.ba);
        outcome.bn = copy_opt(tc.bn);
        outcome.bt = copy_opt(tc.bt);
        if let Some(dt) = tc.dt {
            outcome.dt = copy(dt);
        }
        Ok(closing(record, outcome).into())
    }

    /// The RE an agent outcome gives a call that reached the agent, or EC 407.
    fn launched_call_reason(&self, ao: u16) -> Result<u16, Rejection> {
        let re = self.tables.agent_reason(ao)?;
        let category = self.tables.dialing(re).map(|d| d.category);
        if category.is_some_and(|c| c.forbidden_for_launched_call()) {
            return Err(Rejection::new(
                ErrorCode::AgentOutcomeNotAllowed,
                format!("AO {ao} maps to RE {re}, which a connected call cannot have"),
            ));
        }
        Ok(re)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{AgentEntry, Classification, OutcomeTables, OutcomesConfig};
    use crate::store::NewOutcome;
    use crate::store::OutcomeClass::{Failure, Success};

    fn connected(bench: &mut Bench, tn: &str, agent: &str) {
        bench.ok(&format!(r"MC\CNSales1\TN{tn}"));
        bench.ok(&format!(r"LC\CNSales1\TN{tn}\AN{agent}"));
    }

    #[test]
    fn tc_carries_the_agents_data_and_the_records() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\SIs-1\TN0123\ASapp\DTold");
        bench.ok(r"LC\CNSales1\SIs-1\ANJoe");
        let outcome =
            bench.outcome(r"TC\ANJoe\AO105\DTnew\COsale\SR80\BAAnn\BN0999\BT2026-12-01\NL\CU");
        let want = NewOutcome {
            an: ob("Joe"),
            tn: ob("0123"),
            ao: Some(105),
            as_data: ob("app"),
            co: ob("sale"),
            ba: ob("Ann"),
            bn: ob("0999"),
            bt: ob("2026-12-01"),
            dt: b("new"),
            ..expected(Success, "Sales1", "s-1", 10)
        };
        assert_eq!(outcome, want);
    }

    #[test]
    fn tc_without_dt_keeps_the_records_and_without_ao_is_ao_0() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN0123\DTold");
        bench.ok(r"LC\CNSales1\TN0123\ANJoe");
        let outcome = bench.outcome(r"TC\ANJoe");
        assert_eq!(
            (outcome.ao, outcome.re, outcome.dt),
            (Some(0), 10, b("old"))
        );
    }

    #[test]
    fn agent_outcomes_map_to_their_re_and_stay_success_by_path() {
        let mut bench = Bench::new();
        for (ao, re) in [(1, 34), (3, 3), (33, 33), (106, 99), (107, 98), (4321, 10)] {
            connected(&mut bench, "1", "Joe");
            let outcome = bench.outcome(&format!(r"TC\ANJoe\AO{ao}"));
            assert_eq!(
                (outcome.re, outcome.ao, outcome.class),
                (re, Some(ao), Success)
            );
        }
    }

    #[test]
    fn classification_by_category_applies_to_tc() {
        let mut tables = OutcomeTables::default();
        tables.classification = Classification::Category;
        let mut bench = Bench::with_tables(tables);
        for (ao, class) in [(0, Success), (1, Success), (3, Failure), (2, Failure)] {
            connected(&mut bench, "1", "Joe");
            assert_eq!(bench.outcome(&format!(r"TC\ANJoe\AO{ao}")).class, class);
        }
    }

    #[test]
    fn an_agent_without_a_connected_call_is_410() {
        let mut bench = Bench::new();
        assert_eq!(bench.ec(r"TC\ANJoe"), 410);
        // A pending or dialing preview is not a call to complete.
        bench.ok(r"MC\CNSales1\TN1\ANJoe");
        assert_eq!(bench.ec(r"TC\ANJoe"), 410);
        bench.ok(r"BD\ANJoe");
        assert_eq!(bench.ec(r"TC\ANJoe"), 410);
        // Another tenant's Joe.
        connected(&mut bench, "2", "Joe");
        assert!(bench.send_in(b"other", r"TC\ANJoe").is_err());
        bench.outcome(r"TC\ANJoe");
        assert_eq!(bench.ec(r"TC\ANJoe"), 410);
    }

    #[test]
    fn ao_200_is_407_on_a_connected_call() {
        let mut bench = Bench::new();
        connected(&mut bench, "1", "Joe");
        assert_eq!(bench.ec(r"TC\ANJoe\AO200"), 407);
        assert_eq!(bench.outcome(r"TC\ANJoe\AO120").re, 10);
    }

    #[test]
    fn an_ao_mapped_to_any_forbidden_category_is_407() {
        // One configured AO per forbidden category, through REs configured for the purpose.
        let forbidden = [
            (1, "notmade"),
            (2, "abandoned"),
            (3, "hostinterrupt"),
            (4, "timedout"),
            (5, "plannednotmade"),
            (6, "inbounddrop"),
            (7, "inboundabandon"),
        ];
        let mut text = String::from("[outcomes]\n");
        for (i, category) in forbidden {
            text += &format!(
                "[[outcomes.dialing]]\ncode = {}\nname = \"n\"\ncategory = \"{category}\"\n",
                500 + i
            );
            text += &format!(
                "[[outcomes.agent]]\ncode = {}\nname = \"a\"\nre = {}\n",
                300 + i,
                500 + i
            );
        }
        #[derive(serde::Deserialize)]
        struct File {
            outcomes: OutcomesConfig,
        }
        let config = toml::from_str::<File>(&text).unwrap().outcomes;
        let mut bench = Bench::with_tables(OutcomeTables::from_config(&config).unwrap());
        connected(&mut bench, "1", "Joe");
        for (i, _) in forbidden {
            assert_eq!(bench.ec(&format!(r"TC\ANJoe\AO{}", 300 + i)), 407);
        }
        // The default table's own: AO 200 (RE 0, notmade).
        assert_eq!(bench.ec(r"TC\ANJoe\AO200"), 407);
        bench.outcome(r"TC\ANJoe\AO5");
    }

    #[test]
    fn strict_tables_refuse_an_unknown_ao_with_407() {
        let config = OutcomesConfig {
            strict: true,
            agent: vec![AgentEntry {
                code: 4321,
                name: "callback tomorrow".into(),
                re: 10,
            }],
            ..OutcomesConfig::default()
        };
        let mut bench = Bench::with_tables(OutcomeTables::from_config(&config).unwrap());
        connected(&mut bench, "1", "Joe");
        assert_eq!(bench.ec(r"TC\ANJoe\AO4322"), 407);
        assert_eq!(bench.outcome(r"TC\ANJoe\AO4321").ao, Some(4321));
    }
}
