//! LC — Line Connected: the telephony layer connected a call, to an agent when it names one.
//!
//! Owns: the checks and effect of LC, including records created on the spot for calls nobody
//! announced with MC (inbound, or dialed by the switch). Never: producing an outcome; a connected
//! call is closed by TC, CF or the call timeout.

use sdmp::{ErrorCode, Lc, Rejection};

use super::book::{copy, copy_opt, known_tn, lossy, session_key, CallBook};
use crate::store::{CallRecord, Mutation, RecordState};

impl CallBook {
    pub(super) fn line_connected(
        &mut self,
        now_ms: i64,
        tenant_id: &[u8],
        lc: &Lc<'_>,
    ) -> Result<Vec<Mutation>, Rejection> {
        let tenant = self.tenant(tenant_id);
        // The agent is busy when it has a connected call other than this one.
        let busy = |agent: &[u8], si: &[u8]| {
            tenant
                .and_then(|t| t.current_call(agent))
                .is_some_and(|call| call.si[..] != *si)
        };
        let record = match tenant.and_then(|t| t.find(lc.cn, lc.si, lc.tn)) {
            Some(existing) => {
                let agent = match lc.an {
                    Some(an) => Some(copy(an)),
                    // A preview the agent is dialing connects to that agent even when the switch
                    // does not say so; otherwise its TC would find no call. If that agent took
                    // another call meanwhile, the switch must name the agent (no EC for an LC
                    // that named none).
                    None => existing.agent.clone().or_else(|| {
                        let dialing = existing.state == RecordState::Dialing;
                        let agent = existing.preview_agent.as_ref()?;
                        (dialing && !busy(agent, &existing.si)).then(|| agent.clone())
                    }),
                };
                CallRecord {
                    agent,
                    state: RecordState::Connected,
                    connected_ms: Some(now_ms),
                    ..existing.clone()
                }
            }
            None => {
                let si = session_key(lc.si, lc.tn);
                // The key is taken by a record the report does not match (another campaign, or
                // a record whose SI happens to equal this TN): a second record cannot share it.
                if tenant.and_then(|t| t.record(si)).is_some() {
                    return Err(Rejection::new(
                        ErrorCode::DuplicateSession,
                        format!("SI {} is open in the tenant for another call", lossy(si)),
                    ));
                }
                CallRecord {
                    tenant: copy(tenant_id),
                    si: copy(si),
                    cn: copy(lc.cn),
                    tn: copy_opt(known_tn(lc.tn)),
                    preview_agent: None,
                    agent: copy_opt(lc.an),
                    as_data: None,
                    dt: None,
                    state: RecordState::Connected,
                    created_ms: now_ms,
                    expires_ms: None,
                    connected_ms: Some(now_ms),
                }
            }
        };
        if let Some(an) = lc.an {
            if busy(an, &record.si) {
                return Err(Rejection::new(
                    ErrorCode::AgentBusy,
                    format!("agent {} already has an open call", lossy(an)),
                ));
            }
        }
        self.insert(record.clone());
        Ok(vec![Mutation::PutRecord(record)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::store::{NewOutcome, OutcomeClass::Success};

    /// The vendor's own example chain (messages.md, OZ).
    #[test]
    fn mc_lc_tc_gives_the_specs_example_outcome() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN001234567890");
        bench.now += 5_000;
        bench.ok(r"LC\CNSales1\TN001234567890\ANJoe");
        bench.now += 60_000;
        let mutations = bench.ok(r"TC\ANJoe\AO167");
        let want = NewOutcome {
            an: ob("Joe"),
            ao: Some(167),
            ..expected(Success, "Sales1", "001234567890", 10)
        };
        assert_eq!(
            mutations,
            vec![
                Mutation::DeleteRecord {
                    tenant: b("default"),
                    si: b("001234567890")
                },
                Mutation::Append(want)
            ]
        );
        assert_eq!(bench.book.open_records(), 0);
        assert_eq!(bench.book.next_deadline(), None);
    }

    #[test]
    fn lc_connects_an_existing_record() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN0123\SIs-1\DTdata\CE60");
        bench.now += 1_000;
        let mutations = bench.ok(r"LC\CNSales1\SIs-1\ANJoe\TItrunk\MA\OD1.25");
        let [Mutation::PutRecord(record)] = &mutations[..] else {
            panic!("{mutations:?}")
        };
        assert_eq!(record.state, RecordState::Connected);
        assert_eq!(record.agent, ob("Joe"));
        assert_eq!(record.connected_ms, Some(START_MS + 1_000));
        assert_eq!(record.created_ms, START_MS);
        assert_eq!(record.dt, ob("data"));
        // Connected: CE no longer applies, the call timeout does.
        assert_eq!(
            bench.book.next_deadline(),
            Some(START_MS + 1_000 + TIMEOUT_MS)
        );
    }

    #[test]
    fn lc_without_mc_creates_the_record() {
        let mut bench = Bench::new();
        let mutations = bench.ok(r"LC\CNInbound\TN0123\ANJoe\DN5555");
        let record = CallRecord {
            tenant: b("default"),
            si: b("0123"),
            cn: b("Inbound"),
            tn: ob("0123"),
            preview_agent: None,
            agent: ob("Joe"),
            as_data: None,
            dt: None,
            state: RecordState::Connected,
            created_ms: START_MS,
            expires_ms: None,
            connected_ms: Some(START_MS),
        };
        assert_eq!(mutations, vec![Mutation::PutRecord(record)]);
        let outcome = bench.outcome(r"TC\ANJoe");
        assert_eq!((outcome.re, outcome.ao, outcome.tn), (10, Some(0), None));

        // Without AN: a record with no agent, closed later by CF.
        bench.ok(r"LC\CNInbound\SIcall-7\TN0456");
        assert_eq!(bench.record("call-7").unwrap().agent, None);
        assert_eq!(bench.outcome(r"CF\CNInbound\SIcall-7\CA31").tn, ob("0456"));
    }

    #[test]
    fn an_agent_with_a_connected_call_is_414() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN1");
        bench.ok(r"MC\CNSales1\TN2");
        bench.ok(r"LC\CNSales1\TN1\ANJoe");
        assert_eq!(bench.ec(r"LC\CNSales1\TN2\ANJoe"), 414);
        assert_eq!(bench.ec(r"LC\CNSales1\TN3\ANJoe"), 414);
        // The same call reported again is no conflict.
        bench.ok(r"LC\CNSales1\TN1\ANJoe");
        // Another agent is free; another tenant's Joe is another agent.
        bench.ok(r"LC\CNSales1\TN2\ANAnn");
        bench.send_in(b"other", r"LC\CNSales1\TN1\ANJoe").unwrap();
        // Once Joe's call ends, Joe can take another.
        bench.outcome(r"TC\ANJoe");
        bench.ok(r"LC\CNSales1\TN3\ANJoe");
    }

    #[test]
    fn a_second_lc_naming_another_agent_moves_the_call() {
        let mut bench = Bench::new();
        bench.ok(r"LC\CNSales1\TN1\ANJoe");
        bench.ok(r"LC\CNSales1\TN1\ANAnn");
        assert_eq!(bench.ec(r"TC\ANJoe"), 410);
        // Joe is free again.
        bench.ok(r"LC\CNSales1\TN2\ANJoe");
        assert_eq!(bench.outcome(r"TC\ANAnn").si, b("1"));
        // A repeated LC without AN keeps the agent.
        bench.ok(r"LC\CNSales1\TN2");
        assert_eq!(bench.outcome(r"TC\ANJoe").si, b("2"));
    }

    #[test]
    fn a_connected_preview_leaves_the_agents_queue() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN1\ANJoe");
        bench.ok(r"LC\CNSales1\TN1\ANAnn");
        assert_eq!(bench.ec(r"BD\ANJoe"), 410);
        assert_eq!(bench.outcome(r"TC\ANAnn").an, ob("Ann"));
    }

    #[test]
    fn a_dialed_preview_connects_to_its_agent_when_lc_names_none() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\TN1\ANJoe");
        bench.ok(r"BD\ANJoe");
        bench.ok(r"LC\CNSales1\TN1");
        assert_eq!(bench.record("1").unwrap().agent, ob("Joe"));
        assert_eq!(bench.outcome(r"TC\ANJoe").si, b("1"));

        // Unless Joe took another call meanwhile: then the record connects with no agent.
        bench.ok(r"MC\CNSales1\TN2\ANJoe");
        bench.ok(r"BD\ANJoe");
        bench.ok(r"LC\CNSales1\TN3\ANJoe");
        bench.ok(r"LC\CNSales1\TN2");
        assert_eq!(bench.record("2").unwrap().agent, None);
        assert_eq!(bench.outcome(r"TC\ANJoe").si, b("3"));
    }

    #[test]
    fn lc_on_a_key_held_by_another_campaign_is_412() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\SIs-1");
        assert_eq!(bench.ec(r"LC\CNSales2\SIs-1\ANJoe"), 412);
        // A TN-only report whose TN is another record's SI (that record has no TN).
        assert_eq!(bench.ec(r"LC\CNSales1\TNs-1"), 412);
        bench.ok(r"LC\CNSales1\SIs-1\ANJoe");
    }

    #[test]
    fn tn_only_lc_matches_by_tn_and_campaign() {
        let mut bench = Bench::new();
        bench.ok(r"MC\CNSales1\SIs-1\TN0123");
        bench.ok(r"LC\CNSales1\TN0123\ANJoe");
        assert_eq!(bench.book.open_records(), 1);
        assert_eq!(bench.record("s-1").unwrap().state, RecordState::Connected);
        // Another campaign with the same TN: a new record, keyed by the TN.
        bench.ok(r"LC\CNSales2\TN0123\ANAnn");
        assert_eq!(bench.record("0123").unwrap().cn, b("Sales2"));
        let outcome = bench.outcome(r"TC\ANJoe");
        assert_eq!((outcome.si, outcome.tn), (b("s-1"), ob("0123")));
    }
}
