//! The verdict: what the producers know, what every transaction received, and whether the
//! histories keep the promises of semantics.md (listed in the test's top comment).
//!
//! Owns: every check on the histories, after the run, and the report (counts, details, the
//! violations found).
//!
//! Never: talks to a server or changes a history; it reads what the clients recorded.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::producers::ProducerLog;
use crate::subscribers::{Delivery, Segment, SubLog};
use crate::world::World;
use crate::KEEP_VIOLATIONS;

/// Segment `index` and the one before it, for a violation message.
fn history(segments: &[Segment], index: usize) -> String {
    let describe = |i: usize| {
        let s = &segments[i];
        format!(
            "TX {} on server generation {} (EO confirmed: {}, ended: {:?}, cursor between {:?} and {:?} at its EO)",
            s.tx, s.generation, s.issued, s.end, s.confirmed_ack, s.max_xa_sent
        )
    };
    match index {
        0 => describe(0),
        _ => format!("{}, after {}", describe(index), describe(index - 1)),
    }
}

pub struct Report {
    pub counts: String,
    pub details: Vec<String>,
    pub violations: Vec<String>,
    pub violation_count: usize,
}

pub fn check(
    world: &World,
    chaos: Duration,
    producers: &[(&'static str, usize, Arc<Mutex<ProducerLog>>)],
    subscribers: &[Arc<Mutex<SubLog>>],
) -> Report {
    let mut violations = Vec::new();
    let mut violation_count = 0usize;
    let mut violation = |what: String| {
        violation_count += 1;
        if violations.len() < KEEP_VIOLATIONS {
            violations.push(what);
        }
    };

    // What the producers know.
    let mut sent: HashSet<String> = HashSet::new();
    let mut acknowledged: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut errored: HashMap<String, String> = HashMap::new();
    let mut producer_connections = 0;
    let (mut resent, mut resent_messages, mut most_resends, mut resent_acknowledged) =
        (0u64, 0usize, 0u64, 0u64);
    let mut resent_after_chaos = 0u64;
    let mut unanswered: Vec<String> = Vec::new();
    let mut details = Vec::new();
    for (tenant, index, log) in producers {
        let log = log.lock().unwrap();
        sent.extend(log.sent.iter().cloned());
        acknowledged
            .entry(*tenant)
            .or_default()
            .extend(log.acknowledged.iter().cloned());
        errored.extend(log.errored.iter().map(|(si, er)| (si.clone(), er.clone())));
        producer_connections += log.connections;
        let resends: u64 = log.resends.values().sum();
        resent += resends;
        resent_messages += log.resends.len();
        most_resends = most_resends.max(log.resends.values().copied().max().unwrap_or(0));
        resent_acknowledged += log.resends_acknowledged;
        resent_after_chaos += log.resends_after_stop;
        // Sent and neither acknowledged nor refused: its fate is unknown.
        let mut left: Vec<String> = log
            .sent
            .iter()
            .filter(|si| !log.acknowledged.contains(*si) && !log.errored.contains_key(*si))
            .cloned()
            .collect();
        left.sort();
        details.push(format!(
            "producer {tenant}-{index}: sent={} acknowledged={} errored={} resent={resends} \
             (of {} messages; {} after the chaos) resent_acknowledged={} unacknowledged={} connections={} \
             end={:?}",
            log.sent.len(),
            log.acknowledged.len(),
            log.errored.len(),
            log.resends.len(),
            log.resends_after_stop,
            log.resends_acknowledged,
            left.len(),
            log.connections,
            log.end,
        ));
        if !left.is_empty() {
            violation(format!(
                "producer {tenant}-{index}: {} outcome(s) sent and never acknowledged (ended: {:?}), \
                 e.g. {:?}",
                left.len(),
                log.end,
                &left[..left.len().min(10)]
            ));
        }
        unanswered.extend(left);
    }
    let acknowledged_count: usize = acknowledged.values().map(HashSet::len).sum();
    // Nothing here is refused for a reason a producer could know of: an ER is a lost outcome.
    let mut refused: Vec<(&String, &String)> = errored.iter().collect();
    refused.sort();
    for (si, er) in &refused {
        violation(format!("outcome {si} was refused: {er}"));
    }

    let subscribers: Vec<_> = subscribers.iter().map(|log| log.lock().unwrap()).collect();

    // One event per sequence number, and one sequence number per outcome, across every
    // transaction (sequence numbers are global; every SI names one message, which however
    // often it was re-sent under its XK takes effect once: a second effect is a second XS).
    let mut event_of: HashMap<u64, (Option<&str>, &str)> = HashMap::new();
    let mut xs_of: HashMap<&str, BTreeSet<u64>> = HashMap::new();
    for sub in &subscribers {
        for d in &sub.deliveries {
            let event = (d.td.as_deref(), d.si.as_str());
            match event_of.get(&d.xs) {
                Some(&known) if known != event => violation(format!(
                    "XS {} is {:?} for one delivery and {:?} for another",
                    d.xs, known, event
                )),
                Some(_) => {}
                None => {
                    event_of.insert(d.xs, event);
                }
            }
            xs_of.entry(d.si.as_str()).or_default().insert(d.xs);
        }
    }
    let mut duplicated: Vec<(&str, &BTreeSet<u64>)> = xs_of
        .iter()
        .filter(|(_, xs)| xs.len() > 1)
        .map(|(si, xs)| (*si, xs))
        .collect();
    duplicated.sort();
    for (si, xs) in &duplicated {
        let resends = producers
            .iter()
            .find_map(|(_, _, log)| log.lock().unwrap().resends.get(*si).copied())
            .unwrap_or(0);
        violation(format!(
            "outcome {si} delivered under {} sequence numbers {xs:?} (re-sent {resends} time(s)): \
             it took effect more than once",
            xs.len()
        ));
    }
    let resent_duplicates = world.duplicates_counted.load(SeqCst);
    if resent_duplicates > resent {
        violation(format!(
            "the servers counted {resent_duplicates} re-sends without effect, and only {resent} were made"
        ));
    }
    // The sequence numbers of each tenant's events that anyone saw.
    let mut tenant_events: HashMap<&str, BTreeSet<u64>> = HashMap::new();
    for (&xs, &(td, _)) in &event_of {
        tenant_events
            .entry(td.unwrap_or("default"))
            .or_default()
            .insert(xs);
    }

    let mut delivered_total = 0usize;
    let mut duplicates_total = 0usize;
    let mut reissues = 0usize;
    for sub in &subscribers {
        let name = format!("{}/{}", sub.tenant, sub.ps);
        delivered_total += sub.deliveries.len();
        reissues += sub.segments.len().saturating_sub(1);
        let mut seen: HashSet<u64> = HashSet::new();
        let mut delivered_sis: HashSet<&str> = HashSet::new();
        let mut duplicates = 0usize;
        let mut foreign = 0usize;
        let mut previous: Option<&Delivery> = None;
        // Per segment: the XS delivered.
        let mut per_segment: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); sub.segments.len()];
        for d in &sub.deliveries {
            if !seen.insert(d.xs) {
                duplicates += 1;
            }
            delivered_sis.insert(&d.si);
            per_segment[d.segment].insert(d.xs);
            // Tenant isolation.
            if d.td.as_deref() != Some(sub.tenant) || !d.si.starts_with(&format!("{}-", sub.tenant))
            {
                foreign += 1;
                violation(format!(
                    "{name}: received {} (TD {:?}) of another tenant",
                    d.si, d.td
                ));
            }
            // Only what was sent, and nothing refused.
            if !sent.contains(&d.si) {
                violation(format!("{name}: delivered {} that no producer sent", d.si));
            }
            if let Some(er) = errored.get(&d.si) {
                violation(format!("{name}: delivered {} that was refused: {er}", d.si));
            }
            // Order.
            let resumed = previous.is_none_or(|p| p.segment != d.segment);
            if resumed {
                let segment = &sub.segments[d.segment];
                if let Some(acked) = segment.confirmed_ack {
                    if d.xs <= acked {
                        violation(format!(
                            "{name}: delivery restarted at XS {}, at or before XS {acked} whose XA was \
                             confirmed; {}",
                            d.xs,
                            history(&sub.segments, d.segment)
                        ));
                    }
                }
            } else if let Some(p) = previous {
                if d.xs <= p.xs {
                    violation(format!(
                        "{name}: XS went from {} to {} on one connection; {}",
                        p.xs,
                        d.xs,
                        history(&sub.segments, d.segment)
                    ));
                }
            }
            previous = Some(d);
        }
        // Nothing skipped: while a connection holds the transaction, it gets every event of the
        // tenant after the cursor, and the cursor is at most the highest XS ever sent in an XA
        // (0 for the first EO: the transaction was opened before any outcome was reported).
        let events = tenant_events.get(sub.tenant).cloned().unwrap_or_default();
        let mut skipped = 0usize;
        for (index, (segment, got)) in sub.segments.iter().zip(&per_segment).enumerate() {
            let Some(&high) = got.last() else { continue };
            let low = if index == 0 {
                0
            } else {
                segment.max_xa_sent.unwrap_or(0)
            };
            for &xs in events.range(low + 1..=high) {
                if !got.contains(&xs) {
                    skipped += 1;
                    violation(format!(
                        "{name}: skipped XS {xs} ({:?}): the cursor was at most {low} and delivery went on \
                         to XS {high}; {}",
                        event_of[&xs],
                        history(&sub.segments, index)
                    ));
                }
            }
        }
        // Every acknowledged outcome of the tenant arrived.
        let mut missing: Vec<&String> = acknowledged
            .get(sub.tenant)
            .map(|acked| {
                acked
                    .iter()
                    .filter(|si| !delivered_sis.contains(si.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        missing.sort();
        if !missing.is_empty() {
            violation(format!(
                "{name}: {} acknowledged outcome(s) never delivered, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
        duplicates_total += duplicates;
        details.push(format!(
            "{name}: delivered={} unique={} redelivered={} issues={} resets={} xa_sent={} xa_confirmed={} \
             confirmed_ack={:?} missing_acknowledged={} skipped={} foreign={} ended={}",
            sub.deliveries.len(),
            seen.len(),
            duplicates,
            sub.segments.len(),
            sub.resets,
            sub.xa_sent,
            sub.xa_confirmed,
            sub.confirmed_ack,
            missing.len(),
            skipped,
            foreign,
            sub.ended,
        ));
    }

    let gaps = world.gaps.load(SeqCst);
    if gaps > 0 {
        violation(format!("{gaps} gap notice(s) (XG) received"));
    }
    let kills = world.kills.load(SeqCst);
    let wanted_kills = (chaos.as_secs() / 3).max(1);
    if world.fatal.lock().unwrap().is_none() && kills < wanted_kills {
        violation(format!(
            "only {kills} kills (wanted at least {wanted_kills})"
        ));
    }
    if subscribers.iter().any(|s| !s.ended) && world.fatal.lock().unwrap().is_none() {
        violation("not every transaction was ended with EE".into());
    }

    let unscraped = world.unscraped.load(SeqCst);
    let counts = format!(
        "fault_persist: sent={} acknowledged={} errored={} unacknowledged={} resent={} (of {} messages, \
         at most {} each; {} after the chaos) resent_acknowledged={} resent_duplicates={}{} delivered={} \
         unique_outcomes_delivered={} duplicated_outcomes={} redelivered={} \
         kills={} resets={} (ordered {}) reissues={} producer_connections={} gaps={} slowest_restart={}ms",
        sent.len(),
        acknowledged_count,
        errored.len(),
        unanswered.len(),
        resent,
        resent_messages,
        most_resends,
        resent_after_chaos,
        resent_acknowledged,
        resent_duplicates,
        match unscraped {
            0 => String::new(),
            n => format!(" ({n} server(s) unread)"),
        },
        delivered_total,
        xs_of.len(),
        duplicated.len(),
        duplicates_total,
        kills,
        world.resets.load(SeqCst),
        world.reset_orders.load(SeqCst),
        reissues,
        producer_connections,
        gaps,
        world.slowest_restart_ms.load(SeqCst),
    );
    Report {
        counts,
        details,
        violations,
        violation_count,
    }
}
