//! The call book: every open call record, and the indices that find a record from a report.
//!
//! Owns: the records themselves and every index over them (by TN, each agent's connected call,
//! each agent's pending previews, the deadlines of expiry and call timeout), kept consistent by
//! going through exactly two doors, [`CallBook::insert`] and [`CallBook::remove`]: every index
//! is a function of the record's own fields, so a restored book and a live one cannot differ.
//! Also: dispatch of call messages, the sweep, and building outcomes from records.
//! Never: I/O, clocks, the store. What must become durable leaves as [`Mutation`]s.
//!
//! The per-message rules live next door, one file per message family; each checks everything
//! before it changes anything, so a rejection leaves the book as it was.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use sdmp::{Message, Rejection};

use super::tables::OutcomeTables;
use crate::store::{CallRecord, Mutation, NewOutcome, OutcomeClass, RecordState};

/// (created_ms, si): orders records oldest first. The SI breaks ties between records created in
/// the same millisecond, so the order is a function of durable fields (the same after restore).
type Age = (i64, Bytes);

/// (deadline_ms, tenant, si).
type Deadline = (i64, Bytes, Bytes);

/// The open call records of every tenant, and the rules that close them with outcomes.
#[derive(Debug)]
pub struct CallBook {
    pub(super) tables: OutcomeTables,
    pub(super) call_timeout_ms: i64,
    tenants: HashMap<Bytes, Tenant>,
    deadlines: BTreeSet<Deadline>,
    open: usize,
}

/// One tenant's records. Tenants never see each other's records, SIs or agents.
#[derive(Debug, Default)]
pub(super) struct Tenant {
    records: HashMap<Bytes, CallRecord>,
    /// TN → the records with that TN (reports that carry only TN find them here).
    by_tn: HashMap<Bytes, BTreeSet<Age>>,
    /// Agent → the SI of its connected call (at most one: LC refuses a second with EC 414).
    current_call: HashMap<Bytes, Bytes>,
    /// Agent → its pending preview records, oldest first (BD takes the first).
    previews: HashMap<Bytes, BTreeSet<Age>>,
}

impl Tenant {
    pub(super) fn record(&self, si: &[u8]) -> Option<&CallRecord> {
        self.records.get(si)
    }

    /// The record a report names by CN and SI or TN: with SI, that record; with only TN, the
    /// oldest record of that TN in the campaign. A record of another campaign never matches.
    pub(super) fn find(
        &self,
        cn: &[u8],
        si: Option<&[u8]>,
        tn: Option<&[u8]>,
    ) -> Option<&CallRecord> {
        let same_campaign = |record: &&CallRecord| record.cn[..] == *cn;
        match (si, known_tn(tn)) {
            (Some(si), _) => self.records.get(si).filter(same_campaign),
            (None, Some(tn)) => self
                .by_tn
                .get(tn)?
                .iter()
                .filter_map(|(_, si)| self.records.get(si))
                .find(same_campaign),
            (None, None) => None,
        }
    }

    /// The agent's connected call.
    pub(super) fn current_call(&self, agent: &[u8]) -> Option<&CallRecord> {
        self.records.get(self.current_call.get(agent)?)
    }

    /// The agent's oldest pending preview record.
    pub(super) fn oldest_preview(&self, agent: &[u8]) -> Option<&CallRecord> {
        let (_, si) = self.previews.get(agent)?.first()?;
        self.records.get(si)
    }
}

impl CallBook {
    pub fn new(tables: OutcomeTables, call_timeout_ms: i64) -> CallBook {
        CallBook {
            tables,
            call_timeout_ms,
            tenants: HashMap::new(),
            deadlines: BTreeSet::new(),
            open: 0,
        }
    }

    /// The outcome tables in force.
    pub fn tables(&self) -> &OutcomeTables {
        &self.tables
    }

    /// Rebuilds the in-memory state from the records the store kept (start-up after a restart).
    /// Whatever the book held before is forgotten.
    pub fn restore(&mut self, mut records: Vec<CallRecord>) {
        self.tenants.clear();
        self.deadlines.clear();
        self.open = 0;
        // The store returns records in no promised order; a fixed order makes conflicts (which
        // only a damaged store can hold) resolve the same way on every start.
        records.sort_by(|a, b| {
            (&a.tenant, a.created_ms, &a.si).cmp(&(&b.tenant, b.created_ms, &b.si))
        });
        for record in records {
            if let (RecordState::Connected, Some(agent)) = (record.state, &record.agent) {
                let holder = self
                    .tenants
                    .get(&record.tenant)
                    .and_then(|t| t.current_call.get(agent));
                if holder.is_some_and(|si| *si != record.si) {
                    tracing::warn!(
                        tenant = %String::from_utf8_lossy(&record.tenant),
                        agent = %String::from_utf8_lossy(agent),
                        si = %String::from_utf8_lossy(&record.si),
                        "restored record names an agent that already has a connected call; \
                         the agent keeps the older one",
                    );
                }
            }
            self.insert(record);
        }
    }

    /// Applies MC, RN, LC, CF, TC or BD for `tenant` at `now_ms`. Returns the mutations to make
    /// durable (in order), or the rejection, in which case nothing changed.
    pub fn apply(
        &mut self,
        now_ms: i64,
        tenant: &[u8],
        message: &Message<'_>,
    ) -> Result<Vec<Mutation>, Rejection> {
        match message {
            Message::Mc(mc) => self.make_call(now_ms, tenant, mc),
            Message::Rn(rn) => self.remove_number(tenant, rn),
            Message::Lc(lc) => self.line_connected(now_ms, tenant, lc),
            Message::Cf(cf) => self.call_failed(tenant, cf),
            Message::Tc(tc) => self.transaction_complete(tenant, tc),
            Message::Bd(bd) => self.begin_dial(now_ms, tenant, bd),
            // The server routes only the six call messages here; anything else is its bug, loud in
            // debug builds and harmless (no effect) in release.
            other => {
                debug_assert!(false, "the call book was given {}", other.spec().code);
                Ok(Vec::new())
            }
        }
    }

    /// Closes what is due at `now_ms`: pending records whose CE expired (failure, RE 0), and
    /// dialing or connected records open for the call timeout (failure, RE 9, with their agent
    /// as AN).
    /// Returns DeleteRecord + Append per closed record, earliest deadline first.
    pub fn sweep(&mut self, now_ms: i64) -> Vec<Mutation> {
        let mut mutations = Vec::new();
        while self.deadlines.first().is_some_and(|(at, ..)| *at <= now_ms) {
            // Popped before the record is removed, so the loop ends even if an entry were stale.
            let Some((_, tenant, si)) = self.deadlines.pop_first() else {
                break;
            };
            let Some(record) = self.remove(&tenant, &si) else {
                continue;
            };
            let (re, an) = match record.state {
                RecordState::Pending => (RE_NOT_MADE, None),
                RecordState::Connected => (RE_TIMED_OUT, record.agent.clone()),
                // Dialed by its preview agent and never reported by the telephony layer.
                RecordState::Dialing => (RE_TIMED_OUT, record.preview_agent.clone()),
            };
            let mut outcome = self.record_outcome(&record, OutcomeClass::Failure, re);
            outcome.an = an;
            mutations.extend(closing(record, outcome));
        }
        mutations
    }

    /// When [`CallBook::sweep`] next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<i64> {
        self.deadlines.first().map(|(at, ..)| *at)
    }

    pub fn open_records(&self) -> usize {
        self.open
    }

    pub(super) fn tenant(&self, tenant: &[u8]) -> Option<&Tenant> {
        self.tenants.get(tenant)
    }

    /// Adds a record and its index entries, replacing any record with the same (tenant, si).
    pub(super) fn insert(&mut self, record: CallRecord) {
        self.remove(&record.tenant, &record.si);
        if let Some(at) = self.deadline_of(&record) {
            let entry = (at, record.tenant.clone(), record.si.clone());
            self.deadlines.insert(entry);
        }
        let tenant = self.tenants.entry(record.tenant.clone()).or_default();
        let age = (record.created_ms, record.si.clone());
        if let Some(tn) = record.tn.clone().filter(|tn| !tn.is_empty()) {
            tenant.by_tn.entry(tn).or_default().insert(age.clone());
        }
        match (record.state, &record.preview_agent, &record.agent) {
            (RecordState::Pending, Some(agent), _) => {
                tenant
                    .previews
                    .entry(agent.clone())
                    .or_default()
                    .insert(age);
            }
            (RecordState::Connected, _, Some(agent)) => {
                // Only a damaged store can get here with the agent taken (see restore): the
                // agent keeps the call it had.
                tenant
                    .current_call
                    .entry(agent.clone())
                    .or_insert_with(|| record.si.clone());
            }
            _ => {}
        }
        tenant.records.insert(record.si.clone(), record);
        self.open += 1;
    }

    /// Takes a record out, with its index entries.
    pub(super) fn remove(&mut self, tenant_id: &[u8], si: &[u8]) -> Option<CallRecord> {
        let tenant = self.tenants.get_mut(tenant_id)?;
        let record = tenant.records.remove(si)?;
        self.open = self.open.saturating_sub(1);
        let age = (record.created_ms, record.si.clone());
        if let Some(tn) = known_tn(record.tn.as_deref()) {
            remove_from(&mut tenant.by_tn, tn, &age);
        }
        if let Some(agent) = &record.preview_agent {
            remove_from(&mut tenant.previews, agent, &age);
        }
        if let Some(agent) = &record.agent {
            if tenant.current_call.get(&agent[..]) == Some(&record.si) {
                tenant.current_call.remove(&agent[..]);
            }
        }
        if tenant.records.is_empty() {
            self.tenants.remove(tenant_id);
        }
        if let Some(at) = self.deadline_of(&record) {
            let entry = (at, record.tenant.clone(), record.si.clone());
            self.deadlines.remove(&entry);
        }
        Some(record)
    }

    /// When the record must be closed if nothing else closes it: its CE while pending, the call
    /// timeout once dialing (set when dialing starts, in `expires_ms`) or connected.
    fn deadline_of(&self, record: &CallRecord) -> Option<i64> {
        match record.state {
            RecordState::Pending | RecordState::Dialing => record.expires_ms,
            RecordState::Connected => {
                let since = record.connected_ms.unwrap_or(record.created_ms);
                Some(since.saturating_add(self.call_timeout_ms))
            }
        }
    }

    /// The outcome of closing `record` with `re`: the record's CN, SI, TN, AS and DT, and its
    /// agent as AN. Callers add what their message carries.
    pub(super) fn record_outcome(
        &self,
        record: &CallRecord,
        path: OutcomeClass,
        re: u16,
    ) -> NewOutcome {
        let class = self.tables.class_of(path, re);
        NewOutcome {
            an: record.agent.clone(),
            tn: outcome_tn(record.tn.as_ref(), &record.si),
            as_data: record.as_data.clone(),
            dt: record.dt.clone().unwrap_or_default(),
            ..NewOutcome::new(
                record.tenant.clone(),
                class,
                record.cn.clone(),
                record.si.clone(),
                re,
            )
        }
    }

    /// Every open record, in no particular order.
    #[cfg(test)]
    pub(super) fn records(&self) -> impl Iterator<Item = &CallRecord> {
        self.tenants.values().flat_map(|t| t.records.values())
    }

    /// A compact, ordered description of every record and index, for tests to compare books.
    #[cfg(test)]
    pub(super) fn snapshot(&self) -> String {
        let mut lines = Vec::new();
        for (id, tenant) in &self.tenants {
            let mut records: Vec<_> = tenant.records.values().collect();
            records.sort_by_key(|r| r.si.clone());
            for r in records {
                lines.push(format!("record {id:?} {r:?}"));
            }
            for (tn, ages) in &tenant.by_tn {
                lines.push(format!("tn {id:?} {tn:?} {ages:?}"));
            }
            for (agent, si) in &tenant.current_call {
                lines.push(format!("agent {id:?} {agent:?} {si:?}"));
            }
            for (agent, ages) in &tenant.previews {
                lines.push(format!("previews {id:?} {agent:?} {ages:?}"));
            }
        }
        lines.sort();
        lines.push(format!("deadlines {:?}", self.deadlines));
        lines.push(format!("open {}", self.open));
        lines.join("\n")
    }
}

/// RE of a record that ended without being dialed (RN, CE expiry).
pub(super) const RE_NOT_MADE: u16 = 0;
/// RE of a connected record left open past the call timeout.
pub(super) const RE_TIMED_OUT: u16 = 9;

/// DeleteRecord then Append: the store removes the record and logs its outcome in one batch.
pub(super) fn closing(record: CallRecord, outcome: NewOutcome) -> [Mutation; 2] {
    [
        Mutation::DeleteRecord {
            tenant: record.tenant,
            si: record.si,
        },
        Mutation::Append(outcome),
    ]
}

/// A record's key: SI, or TN when the report has no SI (the codec guarantees one of them).
pub(super) fn session_key<'a>(si: Option<&'a [u8]>, tn: Option<&'a [u8]>) -> &'a [u8] {
    si.or(tn).unwrap_or_default()
}

/// An empty TN says nothing about the number; it is treated as absent everywhere.
pub(super) fn known_tn(tn: Option<&[u8]>) -> Option<&[u8]> {
    tn.filter(|tn| !tn.is_empty())
}

/// OZ carries TN only when it is known and says something SI does not.
pub(super) fn outcome_tn(tn: Option<&Bytes>, si: &[u8]) -> Option<Bytes> {
    tn.filter(|tn| !tn.is_empty() && tn[..] != *si).cloned()
}

pub(super) fn copy(value: &[u8]) -> Bytes {
    Bytes::copy_from_slice(value)
}

pub(super) fn copy_opt(value: Option<&[u8]>) -> Option<Bytes> {
    value.map(Bytes::copy_from_slice)
}

/// For rejection reasons: values are bytes, logs are text.
pub(super) fn lossy(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

fn remove_from(index: &mut HashMap<Bytes, BTreeSet<Age>>, key: &[u8], age: &Age) {
    if let Some(set) = index.get_mut(key) {
        set.remove(age);
        if set.is_empty() {
            index.remove(key);
        }
    }
}
