//! The verdict: what the producers know, what every transaction received, and whether the
//! histories keep the promises of semantics.md and docs/protocol.md (listed in each test's top
//! comment).
//!
//! Owns: every check on the histories, after the run, and the report (counts, details, the
//! violations found).
//!
//! Never: talks to a server or changes a history; it reads what the clients recorded.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::producers::ProducerLog;
use super::subscribers::{Segment, SubLog};
use super::world::{ChaosPlan, World};
use super::{KEEP_VIOLATIONS, TAKEOVER_OVERLAP};

/// One segment, for a message.
fn describe(world: &World, s: &Segment) -> String {
    format!(
        "TX {} on node {} generation {} (EO confirmed: {}{}{}, ended: {:?}{}, cursor between {:?} \
         and {:?} at its EO)",
        s.tx,
        s.node,
        s.generation,
        s.issued,
        s.issued_at
            .map_or(String::new(), |at| format!(" at {} ms", world.ms(at))),
        if s.moved { ", a move" } else { "" },
        s.end,
        s.closed_at
            .map_or(String::new(), |at| format!(" at {} ms", world.ms(at))),
        s.confirmed_ack,
        s.max_xa_sent
    )
}

/// Segment `index` and the one before it, for a violation message.
fn history(world: &World, segments: &[Segment], index: usize) -> String {
    match index {
        0 => describe(world, &segments[0]),
        _ => format!(
            "{}, after {}",
            describe(world, &segments[index]),
            describe(world, &segments[index - 1])
        ),
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
    plan: &ChaosPlan,
    producers: &[(&'static str, usize, Arc<Mutex<ProducerLog>>)],
    subscribers: &[Arc<Mutex<SubLog>>],
) -> Report {
    let mut violations = Vec::new();
    let violation_count = std::cell::Cell::new(0usize);
    let mut violation = |what: String| {
        violation_count.set(violation_count.get() + 1);
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
    let (mut reports, mut no_holder) = (0u64, 0u64);
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
        reports += log.reports;
        no_holder += log.no_holder;
        // Sent and neither acknowledged nor refused: its fate is unknown.
        let mut left: Vec<String> = log
            .sent
            .iter()
            .filter(|si| !log.acknowledged.contains(*si) && !log.errored.contains_key(*si))
            .cloned()
            .collect();
        left.sort();
        details.push(format!(
            "producer {tenant}-{index}: calls={} reports={} acknowledged={} errored={} resent={resends} \
             (of {} calls; {} after the chaos) resent_acknowledged={} no_holder={} unacknowledged={} \
             connections={} end={:?}",
            log.sent.len(),
            log.reports,
            log.acknowledged.len(),
            log.errored.len(),
            log.resends.len(),
            log.resends_after_stop,
            log.resends_acknowledged,
            log.no_holder,
            left.len(),
            log.connections,
            log.end,
        ));
        if !left.is_empty() {
            violation(format!(
                "producer {tenant}-{index}: {} call(s) begun and their outcome never acknowledged \
                 (ended: {:?}), e.g. {:?}",
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

    // One event per sequence number, and one sequence number per call, across every
    // transaction (sequence numbers are global; every SI names one call, whose reports however
    // often they were re-sent under their XK take effect once, and make one outcome: a second
    // effect, or a second outcome of the call, is a second XS).
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
            "call {si}: {} outcomes, under sequence numbers {xs:?} (its reports re-sent {resends} \
             time(s)): one call, one outcome",
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
        let violations_before = violation_count.get();
        delivered_total += sub.deliveries.len();
        reissues += sub.segments.len().saturating_sub(1);
        let mut seen: HashSet<u64> = HashSet::new();
        let mut delivered_sis: HashSet<&str> = HashSet::new();
        let mut duplicates = 0usize;
        let mut foreign = 0usize;
        // Per segment: the XS delivered, and the last one so far.
        let mut per_segment: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); sub.segments.len()];
        let mut last_of: Vec<Option<u64>> = vec![None; sub.segments.len()];
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
            // Order, per connection.
            match last_of[d.segment] {
                None => {
                    let segment = &sub.segments[d.segment];
                    if let Some(acked) = segment.confirmed_ack {
                        if d.xs <= acked {
                            violation(format!(
                                "{name}: delivery restarted at XS {}, at or before XS {acked} whose XA was \
                                 confirmed; {}",
                                d.xs,
                                history(world, &sub.segments, d.segment)
                            ));
                        }
                    }
                }
                Some(last) if d.xs <= last => violation(format!(
                    "{name}: XS went from {last} to {} on one connection; {}",
                    d.xs,
                    history(world, &sub.segments, d.segment)
                )),
                Some(_) => {}
            }
            last_of[d.segment] = Some(d.xs);
        }
        // One connection at a time, but for the takeover overlap: once a re-issue's EO is
        // confirmed at t, no connection that held the transaction before receives an OZ after
        // t + TAKEOVER_OVERLAP.
        let mut late_total = 0usize;
        // The longest an earlier connection went on receiving after a re-issue was confirmed.
        let mut overlap_max = Duration::ZERO;
        for (index, segment) in sub.segments.iter().enumerate() {
            let Some(taken) = segment.issued_at else {
                continue;
            };
            let bound = taken + TAKEOVER_OVERLAP;
            for (before, earlier) in sub.segments[..index].iter().enumerate() {
                let last_after = sub
                    .deliveries
                    .iter()
                    .filter(|d| d.segment == before && d.at > taken)
                    .map(|d| d.at - taken)
                    .max();
                overlap_max = overlap_max.max(last_after.unwrap_or_default());
                let late: Vec<_> = sub
                    .deliveries
                    .iter()
                    .filter(|d| d.segment == before && d.at > bound)
                    .collect();
                let (Some(first), Some(last)) = (late.first(), late.last()) else {
                    continue;
                };
                late_total += late.len();
                violation(format!(
                    "{name}: two connections delivered at once: TX {} on node {} (generation {}) \
                     received {} OZ (XS {} to {}) from {} ms to {} ms, after TX {} on node {} \
                     (generation {}{}) had the transaction at {} ms (its EO's MV); the overlap \
                     allowed ends at {} ms; the earlier connection then: {:?}, closed at {:?} ms",
                    earlier.tx,
                    earlier.node,
                    earlier.generation,
                    late.len(),
                    first.xs,
                    last.xs,
                    world.ms(first.at),
                    world.ms(last.at),
                    segment.tx,
                    segment.node,
                    segment.generation,
                    if segment.moved { ", a move" } else { "" },
                    world.ms(taken),
                    world.ms(bound),
                    earlier.end,
                    earlier.closed_at.map(|at| world.ms(at)),
                ));
            }
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
                        history(world, &sub.segments, index)
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
        if violation_count.get() > violations_before {
            // The whole history of a transaction found at fault, a segment a line.
            details.push(format!("{name}: its history"));
            for (index, segment) in sub.segments.iter().enumerate() {
                let got = &per_segment[index];
                details.push(format!(
                    "    {} {}: XS {:?}..{:?} ({} OZ)",
                    index,
                    describe(world, segment),
                    got.first(),
                    got.last(),
                    sub.deliveries.iter().filter(|d| d.segment == index).count(),
                ));
            }
        }
        details.push(format!(
            "{name}: delivered={} unique={} redelivered={} issues={} resets={} moves={} xa_sent={} \
             xa_confirmed={} confirmed_ack={:?} missing_acknowledged={} skipped={} foreign={} \
             longest_overlap={}ms late_after_takeover={} ended={}",
            sub.deliveries.len(),
            seen.len(),
            duplicates,
            sub.segments.len(),
            sub.resets,
            sub.moves,
            sub.xa_sent,
            sub.xa_confirmed,
            sub.confirmed_ack,
            missing.len(),
            skipped,
            foreign,
            overlap_max.as_millis(),
            late_total,
            sub.ended,
        ));
    }

    let gaps = world.gaps.load(SeqCst);
    if gaps > 0 {
        violation(format!("{gaps} gap notice(s) (XG) received"));
    }
    let kills = world.kills.load(SeqCst);
    // One kill per the longest pause between kills and half a second for the restart.
    let wanted_kills = (chaos.as_millis() as u64 / (plan.kill_every_ms.1 + 500)).max(1);
    if world.fatal.lock().unwrap().is_none() && kills < wanted_kills {
        violation(format!(
            "only {kills} kills (wanted at least {wanted_kills})"
        ));
    }
    if subscribers.iter().any(|s| !s.ended) && world.fatal.lock().unwrap().is_none() {
        violation("not every transaction was ended with EE".into());
    }
    let (restarts, halts) = (
        world.database_restarts.load(SeqCst),
        world.database_halts.load(SeqCst),
    );
    if plan.database && world.fatal.lock().unwrap().is_none() && (restarts, halts) != (1, 1) {
        violation(format!(
            "the database was restarted {restarts} time(s) and halted {halts} time(s) (wanted once each)"
        ));
    }

    let unscraped = world.unscraped.load(SeqCst);
    let mut counts = format!(
        "{}: sent={} acknowledged={} errored={} unacknowledged={} resent={} (of {} calls, \
         at most {} each; {} after the chaos) resent_acknowledged={} resent_duplicates={}{} delivered={} \
         unique_outcomes_delivered={} duplicated_outcomes={} redelivered={} \
         kills={} resets={} (ordered {}) reissues={} producer_connections={} gaps={} slowest_restart={}ms",
        world.name,
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
    for (what, count) in world.notes() {
        details.push(format!("{what}: {count}"));
    }
    if world.node_count() > 1 || plan.database {
        counts.push_str(&format!(
            " nodes={} reports={reports} no_holder={no_holder} moves={} (ordered {}) \
             database_restarts={restarts} database_halts={halts} failed_starts={} \
             exited_by_themselves={}",
            world.node_count(),
            world.moves.load(SeqCst),
            world.move_orders.load(SeqCst),
            world.failed_starts.load(SeqCst),
            world.self_exits.load(SeqCst),
        ));
    }
    Report {
        counts,
        details,
        violations,
        violation_count: violation_count.get(),
    }
}
