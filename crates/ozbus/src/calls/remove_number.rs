//! RN — Remove Number: the campaign layer withdraws a record that has not been dialed.
//!
//! Owns: the checks and effect of RN. Never: touching a record already dialing or connected;
//! the call is under way and only its own outcome may close it (EC 413).

use sdmp::{ErrorCode, Rejection, Rn};

use super::book::{closing, CallBook, RE_NOT_MADE};
use crate::store::{Mutation, OutcomeClass, RecordState};

impl CallBook {
    pub(super) fn remove_number(
        &mut self,
        tenant: &[u8],
        rn: &Rn<'_>,
    ) -> Result<Vec<Mutation>, Rejection> {
        let record = self
            .tenant(tenant)
            .and_then(|t| t.find(rn.cn, rn.si, rn.tn))
            .ok_or_else(|| {
                Rejection::new(
                    ErrorCode::NoSuchCall,
                    "no open call record matches CN and SI/TN",
                )
            })?;
        if record.state != RecordState::Pending {
            return Err(Rejection::new(
                ErrorCode::CallInProgress,
                "the call is already dialing or connected",
            ));
        }
        let si = record.si.clone();
        let Some(record) = self.remove(tenant, &si) else {
            return Ok(Vec::new());
        };
        let outcome = self.record_outcome(&record, OutcomeClass::Failure, RE_NOT_MADE);
        Ok(closing(record, outcome).into())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::store::OutcomeClass::Failure;

    #[test]
    fn rn_ends_a_pending_record_with_re_0() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN0123\SIs-1\ASapp\DTdata\CE60\ANJoe");
        let outcome = bench.outcome(r"RN\CNSales1\SIs-1");
        let want = expected(Failure, "Sales1", "s-1", 0);
        assert_eq!(
            outcome,
            crate::store::NewOutcome {
                tn: ob("0123"),
                as_data: ob("app"),
                dt: b("data"),
                ..want
            }
        );
        assert_eq!(bench.book.open_records(), 0);
        assert_eq!(bench.book.next_deadline(), None);
        // The preview is gone from Joe's queue too.
        assert_eq!(bench.ec(r"BD\ANJoe"), 410);
    }

    #[test]
    fn unknown_record_or_other_campaign_is_411() {
        let mut bench = Bench::new();
        assert_eq!(bench.ec(r"RN\CNSales1\TN0123"), 411);
        bench.ok(r"MC\CNSales1\TN0123");
        assert_eq!(bench.ec(r"RN\CNSales2\TN0123"), 411);
        assert_eq!(bench.ec(r"RN\CNSales2\SI0123"), 411);
        assert_eq!(bench.ec(r"RN\CNSales1\SI9999"), 411);
        assert_eq!(bench.ec(r"RN\CNSales1\TN9999"), 411);
        bench.outcome(r"RN\CNSales1\TN0123");
        assert_eq!(bench.ec(r"RN\CNSales1\TN0123"), 411);
    }

    #[test]
    fn dialing_or_connected_is_413() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN1\ANJoe");
        bench.ok(r"BD\ANJoe");
        assert_eq!(bench.ec(r"RN\CNSales1\TN1"), 413);
        bench.ok(r"MC\CNSales1\TN2");
        bench.ok(r"LC\CNSales1\TN2");
        assert_eq!(bench.ec(r"RN\CNSales1\SI2"), 413);
    }

    #[test]
    fn tn_only_reports_find_the_oldest_record_of_the_campaign() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales2\SIa\TN0123");
        bench.now += 1;
        bench.ok(r"MC\CNSales1\SIb\TN0123");
        bench.now += 1;
        bench.ok(r"MC\CNSales1\SIc\TN0123");
        // The oldest record with this TN is of Sales2; Sales1's oldest is b.
        assert_eq!(bench.outcome(r"RN\CNSales1\TN0123").si, b("b"));
        assert_eq!(bench.outcome(r"RN\CNSales1\TN0123").si, b("c"));
        assert_eq!(bench.ec(r"RN\CNSales1\TN0123"), 411);
        let outcome = bench.outcome(r"RN\CNSales2\TN0123");
        assert_eq!((outcome.si, outcome.tn), (b("a"), ob("0123")));
    }

    #[test]
    fn with_si_the_tn_given_is_not_used() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\SIa\TN0123");
        assert_eq!(bench.ec(r"RN\CNSales1\SIb\TN0123"), 411);
        assert_eq!(bench.outcome(r"RN\CNSales1\SIa\TN999").si, b("a"));
    }
}
