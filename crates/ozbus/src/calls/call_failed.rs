//! CF — Call Failed: the telephony layer reports how a call ended without reaching an agent
//! (or, for a connected call, how it ended on the line).
//!
//! Owns: the checks and effect of CF. The telephony layer is the authority on what happened to a
//! call, so an unknown record still produces its outcome. Never: accepting a cause only ozbus
//! may produce (EC 406).

use sdmp::{Cf, ErrorCode, Rejection};

use super::book::{closing, copy, known_tn, session_key, CallBook};
use crate::store::{Mutation, NewOutcome, OutcomeClass};

impl CallBook {
    pub(super) fn call_failed(
        &mut self,
        tenant: &[u8],
        cf: &Cf<'_>,
    ) -> Result<Vec<Mutation>, Rejection> {
        match self.tables.dialing(cf.ca) {
            Some(outcome) if outcome.generated => {
                return Err(Rejection::new(
                    ErrorCode::InvalidCause,
                    format!("CA {} is produced by ozbus only", cf.ca),
                ));
            }
            None if self.tables.strict => {
                return Err(Rejection::new(
                    ErrorCode::InvalidCause,
                    format!("CA {} is not in the outcome table", cf.ca),
                ));
            }
            _ => {}
        }
        let si = self
            .tenant(tenant)
            .and_then(|t| t.find(cf.cn, cf.si, cf.tn))
            .map(|record| record.si.clone());
        if let Some(record) = si.and_then(|si| self.remove(tenant, &si)) {
            let outcome = self.record_outcome(&record, OutcomeClass::Failure, cf.ca);
            return Ok(closing(record, outcome).into());
        }
        let si = session_key(cf.si, cf.tn);
        let class = self.tables.class_of(OutcomeClass::Failure, cf.ca);
        let outcome = NewOutcome {
            tn: known_tn(cf.tn).filter(|tn| *tn != si).map(copy),
            ..NewOutcome::new(copy(tenant), class, copy(cf.cn), copy(si), cf.ca)
        };
        Ok(vec![Mutation::Append(outcome)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{OutcomeTables, OutcomesConfig};
    use super::*;
    use crate::store::OutcomeClass::{Failure, Success};

    #[test]
    fn cf_closes_a_pending_record_with_ca_as_re() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN0123\SIs-1\ASapp\DTdata\CE60\ANJoe");
        let outcome = bench.outcome(r"CF\CNSales1\SIs-1\CA2\IR17");
        let want = NewOutcome {
            tn: ob("0123"),
            as_data: ob("app"),
            dt: b("data"),
            ..expected(Failure, "Sales1", "s-1", 2)
        };
        assert_eq!(outcome, want);
        assert_eq!(bench.book.next_deadline(), None);
        assert_eq!(bench.ec(r"BD\ANJoe"), 410);
    }

    #[test]
    fn cf_on_a_connected_record_names_its_agent_and_frees_it() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN0123");
        bench.ok(r"LC\CNSales1\TN0123\ANJoe");
        let outcome = bench.outcome(r"CF\CNSales1\TN0123\CA31");
        assert_eq!(
            outcome,
            NewOutcome {
                an: ob("Joe"),
                ..expected(Failure, "Sales1", "0123", 31)
            }
        );
        assert_eq!(bench.ec(r"TC\ANJoe"), 410);
        bench.ok(r"LC\CNSales1\TN0456\ANJoe");
        assert_eq!(bench.book.open_records(), 1);
    }

    #[test]
    fn cf_on_an_unknown_record_still_gives_the_outcome() {
        let mut bench = Bench::new();
        let mutations = bench.ok(r"CF\CNSales1\TN0123\CA1");
        assert_eq!(
            mutations,
            vec![Mutation::Append(expected(Failure, "Sales1", "0123", 1))]
        );
        let outcome = bench.outcome(r"CF\CNSales1\SIs-9\TN0123\CA2");
        assert_eq!(
            outcome,
            NewOutcome {
                tn: ob("0123"),
                ..expected(Failure, "Sales1", "s-9", 2)
            }
        );
        // A record of another campaign is not this call: it stays open.
        bench.ok(r"MC\CNSales2\SIs-1");
        let mutations = bench.ok(r"CF\CNSales1\SIs-1\CA1");
        assert!(matches!(&mutations[..], [Mutation::Append(_)]));
        assert_eq!(bench.book.open_records(), 1);
        // Non-strict tables take a cause they do not know.
        assert_eq!(bench.outcome(r"CF\CNSales1\TN1\CA500").re, 500);
    }

    #[test]
    fn generated_causes_are_406() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN0123");
        assert_eq!(bench.ec(r"CF\CNSales1\TN0123\CA0"), 406);
        assert_eq!(bench.ec(r"CF\CNSales1\TN0123\CA9"), 406);
        assert_eq!(bench.ec(r"CF\CNSales1\TN9999\CA9"), 406);
        assert_eq!(bench.book.open_records(), 1);
        bench.outcome(r"CF\CNSales1\TN0123\CA1");
    }

    #[test]
    fn strict_tables_refuse_an_unknown_cause_with_406() {
        let tables = OutcomeTables::from_config(&OutcomesConfig {
            strict: true,
            ..OutcomesConfig::default()
        })
        .unwrap();
        let mut bench = Bench::with_tables(tables);
        bench.ok(r"MC\CNSales1\TN0123");
        assert_eq!(bench.ec(r"CF\CNSales1\TN0123\CA500"), 406);
        assert_eq!(bench.ec(r"CF\CNSales1\TN0123\CA11"), 406);
        assert_eq!(bench.outcome(r"CF\CNSales1\TN0123\CA99").re, 99);
    }

    #[test]
    fn classification_by_category_applies_to_cf() {
        let mut tables = OutcomeTables::default();
        tables.classification = super::super::Classification::Category;
        let mut bench = Bench::with_tables(tables);
        assert_eq!(bench.outcome(r"CF\CNSales1\TN1\CA10").class, Success);
        assert_eq!(bench.outcome(r"CF\CNSales1\TN1\CA33").class, Success);
        assert_eq!(bench.outcome(r"CF\CNSales1\TN1\CA5").class, Failure);
        assert_eq!(bench.outcome(r"CF\CNSales1\TN1\CA500").class, Failure);
    }
}
