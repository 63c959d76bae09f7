//! Tests of what time does to records: CE expiry and the call timeout, through `sweep`.

use super::testkit::*;
use super::{Classification, OutcomeTables};
use crate::store::NewOutcome;
use crate::store::OutcomeClass::Failure;

#[test]
fn a_pending_record_expires_at_its_ce_with_re_0() {
    let mut bench = Bench::new();
    bench.ok(r"MC\CNSales1\SIs-1\TN0123\ASapp\DTdata\ANJoe\CE60");
    assert_eq!(bench.book.next_deadline(), Some(START_MS + 60_000));
    assert_eq!(bench.sweep(START_MS + 59_999), vec![]);
    let want = NewOutcome {
        tn: ob("0123"),
        as_data: ob("app"),
        dt: b("data"),
        ..expected(Failure, "Sales1", "s-1", 0)
    };
    assert_eq!(bench.sweep(START_MS + 60_000), vec![want]);
    assert_eq!(bench.book.open_records(), 0);
    assert_eq!(bench.book.next_deadline(), None);
    // The expired preview is gone from the agent's queue.
    assert_eq!(bench.ec(r"BD\ANJoe"), 410);
}

#[test]
fn a_connected_record_does_not_expire_by_ce() {
    let mut bench = Bench::new();
    bench.ok(r"MC\CNSales1\TN1\CE60");
    bench.now += 1_000;
    bench.ok(r"LC\CNSales1\TN1\ANJoe");
    assert_eq!(bench.sweep(START_MS + 3_600_000), vec![]);
    assert_eq!(
        bench.book.next_deadline(),
        Some(START_MS + 1_000 + TIMEOUT_MS)
    );
    assert_eq!(bench.outcome(r"TC\ANJoe").re, 10);
}

#[test]
fn a_dialing_record_does_not_expire_but_times_out_with_re_9_and_its_agent() {
    let mut bench = Bench::new();
    bench.ok(r"MC\CNSales1\TN1\ANJoe\CE60\DTd");
    bench.now += 1_000;
    bench.ok(r"BD\ANJoe");
    let due = START_MS + 1_000 + TIMEOUT_MS;
    assert_eq!(bench.book.next_deadline(), Some(due));
    // Past its CE, not yet past the call timeout: still open.
    assert_eq!(bench.sweep(START_MS + 120_000), vec![]);
    assert_eq!(bench.sweep(due - 1), vec![]);
    let want = NewOutcome {
        an: ob("Joe"),
        dt: b("d"),
        ..expected(Failure, "Sales1", "1", 9)
    };
    assert_eq!(bench.sweep(due), vec![want]);
    assert_eq!(bench.book.open_records(), 0);
}

#[test]
fn a_connected_record_times_out_with_re_9_and_its_agent() {
    let mut bench = Bench::new();
    bench.ok(r"MC\CNSales1\TN1\DTdata");
    bench.now += 5_000;
    bench.ok(r"LC\CNSales1\TN1\ANJoe");
    let due = START_MS + 5_000 + TIMEOUT_MS;
    assert_eq!(bench.book.next_deadline(), Some(due));
    assert_eq!(bench.sweep(due - 1), vec![]);
    let want = NewOutcome {
        an: ob("Joe"),
        dt: b("data"),
        ..expected(Failure, "Sales1", "1", 9)
    };
    assert_eq!(bench.sweep(due), vec![want]);
    // Joe is free.
    assert_eq!(bench.ec(r"TC\ANJoe"), 410);
    bench.ok(r"LC\CNSales1\TN2\ANJoe");

    // Without an agent: no AN.
    bench.ok(r"LC\CNSales1\TN3");
    let outcomes = bench.sweep(bench.now + TIMEOUT_MS);
    let ends: Vec<_> = outcomes
        .iter()
        .map(|o| (o.si.clone(), o.an.clone(), o.re))
        .collect();
    assert_eq!(ends, vec![(b("2"), ob("Joe"), 9), (b("3"), None, 9)]);
}

#[test]
fn a_later_lc_restarts_the_call_timeout() {
    let mut bench = Bench::new();
    bench.ok(r"LC\CNSales1\TN1\ANJoe");
    bench.now += 1_000;
    bench.ok(r"LC\CNSales1\TN1\ANAnn");
    assert_eq!(
        bench.book.next_deadline(),
        Some(START_MS + 1_000 + TIMEOUT_MS)
    );
    assert_eq!(bench.sweep(START_MS + TIMEOUT_MS), vec![]);
    assert_eq!(bench.sweep(START_MS + 1_000 + TIMEOUT_MS)[0].an, ob("Ann"));
}

#[test]
fn sweep_closes_everything_due_in_deadline_order_and_nothing_else() {
    let mut bench = Bench::new();
    bench.ok(r"MC\CNSales1\TNc\CE30");
    bench.ok(r"MC\CNSales1\TNa\CE10");
    bench.ok(r"MC\CNSales1\TNb\CE20");
    bench.ok(r"MC\CNSales1\TNd\CE40");
    bench.ok(r"MC\CNSales1\TNe");
    bench.send_in(b"other", r"MC\CNSales1\TNa\CE15").unwrap();
    assert_eq!(bench.book.next_deadline(), Some(START_MS + 10_000));
    let closed: Vec<_> = bench
        .sweep(START_MS + 30_000)
        .into_iter()
        .map(|o| (o.tenant, o.si))
        .collect();
    let want = [
        ("default", "a"),
        ("other", "a"),
        ("default", "b"),
        ("default", "c"),
    ];
    assert_eq!(closed, want.map(|(t, si)| (b(t), b(si))));
    assert_eq!(bench.book.next_deadline(), Some(START_MS + 40_000));
    assert_eq!(bench.book.open_records(), 2);
    // Sweeping again at the same time finds nothing; the clock going back changes nothing.
    assert_eq!(bench.sweep(START_MS + 30_000), vec![]);
    assert_eq!(bench.sweep(START_MS), vec![]);
}

#[test]
fn classification_by_category_keeps_expiry_and_timeout_failures() {
    let mut tables = OutcomeTables::default();
    tables.classification = Classification::Category;
    let mut bench = Bench::with_tables(tables);
    bench.ok(r"MC\CNSales1\TN1\CE1");
    bench.ok(r"LC\CNSales1\TN2\ANJoe");
    let outcomes = bench.sweep(START_MS + TIMEOUT_MS);
    let classes: Vec<_> = outcomes.iter().map(|o| (o.re, o.class)).collect();
    assert_eq!(classes, vec![(0, Failure), (9, Failure)]);
}
