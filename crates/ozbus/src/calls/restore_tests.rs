//! Tests that a book rebuilt from the store's records behaves exactly as the one that wrote them,
//! and that refused messages leave no trace.

use sdmp::Rejection;

use super::testkit::*;
use crate::store::Mutation;

/// A busy tenant: previews queued for two agents (two created in the same millisecond), a
/// connected call, records sharing a TN across campaigns, expiries, a dialing preview, and a
/// second tenant with the same names.
fn busy_day(bench: &mut Bench) {
    bench.ok(r"MC\CNSales1\SIp1\TN100\ANAnn\CE600");
    bench.ok(r"MC\CNSales1\SIp3\TN101\ANAnn");
    bench.ok(r"MC\CNSales1\SIp2\TN102\ANAnn");
    bench.now += 1;
    bench.ok(r"MC\CNSales1\SIp0\TN103\ANAnn\CE30");
    bench.ok(r"MC\CNSales1\SIq1\TN200\ANBob");
    bench.ok(r"MC\CNSales1\SIq2\TN201\ANBob");
    bench.ok(r"BD\ANBob");
    bench.now += 1;
    bench.ok(r"MC\CNSales1\SIc1\TN300\DTbefore\CE60");
    bench.ok(r"LC\CNSales1\SIc1\ANJoe");
    bench.ok(r"MC\CNSales2\SIt1\TN400");
    bench.now += 1;
    bench.ok(r"MC\CNSales1\SIt2\TN400\CE90");
    bench.ok(r"MC\CNSales1\SIt3\TN400");
    bench.ok(r"LC\CNInbound\TN500");
    bench
        .send_in(b"other", r"MC\CNSales1\SIp1\TN100\ANAnn")
        .unwrap();
    bench.send_in(b"other", r"LC\CNSales1\SIc1\ANJoe").unwrap();
    bench.now += 1_000;
}

/// What happens next; every result (mutations or EC) is recorded, in order.
fn next_day(bench: &mut Bench) -> Vec<Result<Vec<Mutation>, Rejection>> {
    let mut results = Vec::new();
    let frames = [
        r"LC\CNSales1\TN200\ANJoe",
        r"TC\ANJoe\AO105\COsale",
        r"TC\ANJoe",
        r"BD\ANAnn\DD",
        r"BD\ANAnn",
        r"BD\ANBob",
        r"RN\CNSales1\TN400",
        r"RN\CNSales1\SIq1",
        r"CF\CNSales1\TN400\CA2",
        r"LC\CNSales1\SIq1",
        r"TC\ANBob",
    ];
    for frame in frames {
        results.push(bench.send(frame));
    }
    for at in [29_000, 60_000, 600_000, TIMEOUT_MS, 2 * TIMEOUT_MS] {
        let mutations = bench.book.sweep(START_MS + at);
        bench.store.apply(&mutations);
        results.push(Ok(mutations));
    }
    results.push(bench.send(r"TC\ANBob"));
    results.push(bench.send(r"BD\ANAnn"));
    results.push(bench.send(r"BD\ANAnn"));
    results.push(bench.send_in(b"other", r"BD\ANAnn\DD"));
    results.push(bench.send_in(b"other", r"TC\ANJoe"));
    results
}

#[test]
fn a_restored_book_behaves_as_the_one_that_wrote_the_records() {
    let mut live = Bench::new();
    busy_day(&mut live);
    let mut restarted = Bench::new();
    busy_day(&mut restarted);
    restarted.restart();
    assert_eq!(live.book.snapshot(), restarted.book.snapshot());
    assert_eq!(live.book.next_deadline(), restarted.book.next_deadline());

    let expected = next_day(&mut live);
    assert_eq!(next_day(&mut restarted), expected);
    assert_eq!(live.store.log, restarted.store.log);
    // The scenario did exercise something: outcomes from TC, BD+DD, RN, CF and both sweeps.
    let log = &live.store.log;
    assert!(log.iter().any(|o| o.ao == Some(105) && o.dt == b("before")));
    assert!(log.iter().any(|o| o.dd && o.si == b("p1")));
    assert!(
        log.iter().any(|o| o.re == 0 && o.si == b("p0")),
        "p0 expired"
    );
    assert!(log.iter().any(|o| o.re == 9 && o.an == ob("Joe")));
}

#[test]
fn restore_mid_way_and_again_changes_nothing() {
    let mut bench = Bench::new();
    busy_day(&mut bench);
    bench.restart();
    bench.restart();
    let mut live = Bench::new();
    busy_day(&mut live);
    assert_eq!(bench.book.snapshot(), live.book.snapshot());
    // TC after the restart still produces the outcome with the record's DT.
    let outcome = bench.outcome(r"TC\ANJoe");
    assert_eq!((outcome.si, outcome.dt), (b("c1"), b("before")));
}

#[test]
fn restore_replaces_what_the_book_held() {
    let mut bench = Bench::new();
    busy_day(&mut bench);
    bench.book.restore(Vec::new());
    assert_eq!(bench.book.open_records(), 0);
    assert_eq!(bench.book.next_deadline(), None);
    assert_eq!(bench.book.sweep(i64::MAX), vec![]);
}

#[test]
fn refused_messages_leave_no_trace() {
    let mut clean = Bench::new();
    busy_day(&mut clean);
    let mut noisy = Bench::new();
    busy_day(&mut noisy);
    // Every refusal the book can give, each after full checks (the bench also compares the book
    // before and after each one).
    let refused = [
        (r"CF\CNSales1\SIc1\CA0", 406),
        (r"CF\CNSales1\SIc1\CA9", 406),
        (r"TC\ANJoe\AO200", 407),
        (r"BD\ANAnn\DD\AO1", 407),
        (r"BD\ANAnn\DD\AO4321", 407),
        (r"TC\ANAnn", 410),
        (r"BD\ANJoe", 410),
        (r"RN\CNSales2\SIc1", 411),
        (r"MC\CNSales2\SIp1\ANJoe", 412),
        (r"LC\CNSales2\SIp2\ANBob", 412),
        (r"RN\CNSales1\SIc1", 413),
        (r"RN\CNSales1\SIq1", 413),
        (r"LC\CNSales1\SIp1\ANJoe", 414),
        (r"LC\CNSales1\TN999\ANJoe", 414),
    ];
    for (frame, ec) in refused {
        assert_eq!(noisy.ec(frame), ec, "{frame}");
    }
    assert_eq!(noisy.store.log, clean.store.log);
    assert_eq!(next_day(&mut noisy), next_day(&mut clean));
}
