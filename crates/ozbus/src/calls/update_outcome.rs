//! UO — Update Outcomes: a management correction of a call's latest outcome.
//!
//! Owns: turning a UO and the outcome it corrects into the management outcome. Never: finding the
//! original outcome (the server asks the store, and answers 411 when there is none), nor touching
//! call records (the call is closed already).

use sdmp::{ErrorCode, Rejection, Uo};

use super::book::{copy, copy_opt, CallBook};
use crate::store::{NewOutcome, Outcome, OutcomeClass};

impl CallBook {
    /// The management outcome for UO, given the latest outcome of that call. Strict tables: an
    /// unknown RE is EC 406, an unknown AO EC 407.
    ///
    /// The UO states the call's new outcome: with RE, that RE and no AO; with AO, that AO and
    /// the RE it maps to. DT replaces the original's; AS and CO replace it when given. The call's
    /// identity (CN, SI, TN), its agent and its callback request come from the original.
    pub fn update_outcome(
        &self,
        tenant: &[u8],
        uo: &Uo<'_>,
        original: &Outcome,
    ) -> Result<NewOutcome, Rejection> {
        let tables = &self.tables;
        let (re, ao) = match (uo.re, uo.ao) {
            (Some(re), _) => {
                if tables.strict && tables.dialing(re).is_none() {
                    return Err(Rejection::new(
                        ErrorCode::InvalidCause,
                        format!("RE {re} is not in the outcome table"),
                    ));
                }
                (re, None)
            }
            (None, Some(ao)) => (tables.agent_reason(ao)?, Some(ao)),
            // The codec refuses a UO with neither (EC 30); refuse it here as well, never guess.
            (None, None) => {
                return Err(Rejection::new(
                    ErrorCode::MissingParameter,
                    "RE or AO required",
                ));
            }
        };
        let before = &original.outcome;
        Ok(NewOutcome {
            tenant: copy(tenant),
            class: OutcomeClass::Management,
            cn: before.cn.clone(),
            an: before.an.clone(),
            si: before.si.clone(),
            tn: before.tn.clone(),
            re,
            ao,
            dd: false,
            as_data: copy_opt(uo.as_data).or_else(|| before.as_data.clone()),
            co: copy_opt(uo.co).or_else(|| before.co.clone()),
            ba: before.ba.clone(),
            bn: before.bn.clone(),
            bt: before.bt.clone(),
            dt: copy(uo.dt),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{Classification, OutcomeTables, OutcomesConfig};
    use super::*;
    use sdmp::{decode_request, Message};

    fn uo(bench: &Bench, frame: &str, original: &NewOutcome) -> Result<NewOutcome, u16> {
        let envelope = decode_request(frame.as_bytes()).unwrap();
        let Message::Uo(uo) = envelope.message else {
            panic!("{frame} is not UO")
        };
        let original = Outcome {
            seq: 7,
            accepted_ms: START_MS,
            outcome: original.clone(),
            rendered: Default::default(),
        };
        bench
            .book
            .update_outcome(T, &uo, &original)
            .map_err(|r| r.code.number())
    }

    fn completed(bench: &mut Bench) -> NewOutcome {
        bench.ok(r"MC\CNSales1\SIs-1\TN0123\ASapp\DTold");
        bench.ok(r"LC\CNSales1\SIs-1\ANJoe");
        bench.outcome(r"TC\ANJoe\AO105\COsale\BAAnn\BN0999\BTtomorrow")
    }

    #[test]
    fn uo_with_re_replaces_re_and_drops_ao() {
        let mut bench = Bench::new();
        let original = completed(&mut bench);
        let updated = uo(
            &bench,
            r"UO\TXfix-1\CNSales1\SIs-1\RE99\DTcorrected",
            &original,
        );
        let want = NewOutcome {
            class: OutcomeClass::Management,
            re: 99,
            ao: None,
            dt: b("corrected"),
            ..original
        };
        assert_eq!(updated, Ok(want));
    }

    #[test]
    fn uo_with_ao_takes_its_re() {
        let mut bench = Bench::new();
        let original = completed(&mut bench);
        let updated = uo(
            &bench,
            r"UO\TXfix-1\CNSales1\TN0123\AO107\DTx\COnone\ASapp2",
            &original,
        )
        .unwrap();
        assert_eq!((updated.re, updated.ao), (98, Some(107)));
        assert_eq!((updated.co, updated.as_data), (ob("none"), ob("app2")));
        assert_eq!((updated.an, updated.ba), (ob("Joe"), ob("Ann")));
        // Unknown AO, non-strict: a user-defined live outcome; AO 200 is allowed to management.
        assert_eq!(
            uo(&bench, r"UO\TXf\CNSales1\SIs-1\AO4321\DTx", &original).map(|o| o.re),
            Ok(10)
        );
        assert_eq!(
            uo(&bench, r"UO\TXf\CNSales1\SIs-1\AO200\DTx", &original).map(|o| o.re),
            Ok(0)
        );
        // Non-strict: an RE outside the table, and generated REs, are management's call.
        assert_eq!(
            uo(&bench, r"UO\TXf\CNSales1\SIs-1\RE500\DTx", &original).map(|o| o.re),
            Ok(500)
        );
        assert_eq!(
            uo(&bench, r"UO\TXf\CNSales1\SIs-1\RE9\DTx", &original).map(|o| o.re),
            Ok(9)
        );
    }

    #[test]
    fn uo_of_a_preview_reject_is_no_longer_a_reject() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN1\ANJoe");
        let original = bench.outcome(r"BD\ANJoe\DD");
        let updated = uo(&bench, r"UO\TXf\CNSales1\TN1\AO102\DTx", &original).unwrap();
        assert_eq!((updated.re, updated.ao, updated.dd), (10, Some(102), false));
    }

    #[test]
    fn strict_tables_refuse_unknown_re_with_406_and_unknown_ao_with_407() {
        let config = OutcomesConfig {
            strict: true,
            classification: Classification::Category,
            ..OutcomesConfig::default()
        };
        let mut bench = Bench::with_tables(OutcomeTables::from_config(&config).unwrap());
        let original = completed(&mut bench);
        assert_eq!(
            uo(&bench, r"UO\TXf\CNSales1\SIs-1\RE500\DTx", &original),
            Err(406)
        );
        assert_eq!(
            uo(&bench, r"UO\TXf\CNSales1\SIs-1\AO4321\DTx", &original),
            Err(407)
        );
        // Management stays management under classification by category.
        let updated = uo(&bench, r"UO\TXf\CNSales1\SIs-1\RE10\DTx", &original).unwrap();
        assert_eq!(updated.class, OutcomeClass::Management);
    }
}
