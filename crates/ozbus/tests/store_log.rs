//! The outcome log as a user of the store observes it, on both backends (SQLite and
//! PostgreSQL, through `Store`): durable, byte-exact, ordered, with sequence numbers that never
//! go back, retention, the two read paths agreeing, and the history reads answering alike.

mod pg_common;
mod store_common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ozbus::store::{Mutation, NewOutcome, Outcome, Store, StoreOptions};
use store_common::{
    append, approximate_size, b, full_outcome, on_both_backends, open_with, outcome, seqs, Kind,
    Place, ReadAfter,
};

on_both_backends!(
    #[tokio::test]
    outcomes_survive_reopen_byte_exact,
    sequence_numbers_only_grow_across_reopen_and_full_trim,
    watch_follows_commits,
    read_after_agrees_between_tail_and_database,
    trim_by_age_removes_only_old_outcomes,
    trim_by_size_removes_oldest_until_under_the_limit,
    trim_removes_a_large_backlog_in_steps,
    latest_outcome_finds_the_newest_by_si_and_by_tn,
    latest_outcome_by_tn_finds_a_number_kept_only_as_si,
    closed_store_refuses_everything,
);

async fn outcomes_survive_reopen_byte_exact(kind: Kind) {
    let place = Place::new(kind).await;
    let mut written: Vec<NewOutcome> = (0..10).map(full_outcome).collect();
    let mut empty = outcome(b"", b"c\xff", b"\xfe\xff");
    empty.dt = Bytes::new();
    written.push(empty);

    let store = place.open().await;
    let seqs_given = append(&store, written.clone()).await;
    assert_eq!(seqs_given, (1..=11).collect::<Vec<_>>());
    let before = store.read_after(0, 100).await.unwrap();
    store.close().await.unwrap();

    let store = place.open().await;
    assert_eq!(store.last_seq(), 11);
    assert_eq!(store.oldest_seq(), Some(1));
    let after = store.read_after(0, 100).await.unwrap();
    let read: Vec<NewOutcome> = after.iter().map(|o| o.outcome.clone()).collect();
    assert_eq!(read, written);
    assert_eq!(seqs(&after), seqs_given);
    // Same accepted_ms as before the restart, and Some(empty) stays distinct from None.
    assert_eq!(after, before);
    assert_eq!(after[0].outcome.co, Some(Bytes::new()));
    assert_eq!(after[10].outcome.co, None);
    assert!(after[10].outcome.dt.is_empty());
    store.close().await.unwrap();
}

async fn sequence_numbers_only_grow_across_reopen_and_full_trim(kind: Kind) {
    let place = Place::new(kind).await;
    let store = place.open().await;
    assert_eq!(store.last_seq(), 0);
    assert_eq!(store.oldest_seq(), None);
    assert_eq!(
        append(&store, vec![outcome(b"t", b"c", b"1"); 3]).await,
        [1, 2, 3]
    );
    store.close().await.unwrap();

    let store = place.open().await;
    assert_eq!(store.last_seq(), 3);
    assert_eq!(append(&store, vec![outcome(b"t", b"c", b"2")]).await, [4]);
    // Far in the future: every outcome is older than the retention age.
    let removed = store.trim(i64::MAX).await.unwrap();
    assert_eq!(removed, 4);
    assert_eq!(store.oldest_seq(), None);
    assert_eq!(store.last_seq(), 4);
    assert!(store.read_after(0, 10).await.unwrap().is_empty());
    store.close().await.unwrap();

    let store = place.open().await;
    assert_eq!(store.last_seq(), 4);
    assert_eq!(store.oldest_seq(), None);
    assert_eq!(append(&store, vec![outcome(b"t", b"c", b"3")]).await, [5]);
    assert_eq!(store.oldest_seq(), Some(5));
    assert_eq!(seqs(&store.read_after(0, 10).await.unwrap()), [5]);
    store.close().await.unwrap();
}

async fn watch_follows_commits(kind: Kind) {
    let place = Place::new(kind).await;
    let store = place.open().await;
    let mut watch = store.watch_last_seq();
    assert_eq!(*watch.borrow_and_update(), 0);
    let seqs = append(&store, vec![outcome(b"t", b"c", b"1"); 2]).await;
    assert_eq!(seqs, [1, 2]);
    // The watch is published before the ticket resolves.
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), 2);
    assert_eq!(store.last_seq(), 2);
    // A batch without appends does not move the log.
    store
        .submit(vec![Mutation::DeleteRecord {
            tenant: b(b"t"),
            si: b(b"x"),
        }])
        .await
        .unwrap();
    assert!(!watch.has_changed().unwrap());
    store.close().await.unwrap();
}

async fn read_after_agrees_between_tail_and_database(kind: Kind) {
    let place = Place::new(kind).await;
    let small_tail = StoreOptions {
        tail_capacity: 8,
        ..place.options()
    };
    let store = open_with(small_tail.clone()).await;
    for chunk in 0..10u32 {
        append(
            &store,
            (0..10).map(|i| full_outcome(chunk * 10 + i)).collect(),
        )
        .await;
    }
    assert_eq!(store.last_seq(), 100);

    // Positions 92.. come from the tail, the rest from the database; a reopened store (empty
    // tail) reads everything from the database. All must agree.
    let mut from_running = Vec::new();
    for after in 0..=101u64 {
        for limit in [1usize, 3, 8, 1000] {
            let got = store.read_after(after, limit).await.unwrap();
            let expected: Vec<u64> = (after + 1..=100).take(limit).collect();
            assert_eq!(seqs(&got), expected, "after {after} limit {limit}");
            from_running.push(got);
        }
    }
    assert!(store.read_after(5, 0).await.unwrap().is_empty());
    store.close().await.unwrap();

    let store = open_with(small_tail).await;
    let mut from_database = Vec::new();
    for after in 0..=101u64 {
        for limit in [1usize, 3, 8, 1000] {
            from_database.push(store.read_after(after, limit).await.unwrap());
        }
    }
    assert_eq!(from_running, from_database);
    // Bounded in bytes too, from the database as from the tail: about that many, at least one.
    let all = store.read_after(0, 1000).await.unwrap();
    let sizes: Vec<u64> = all.iter().map(|o| approximate_size(&o.outcome)).collect();
    let first_three = sizes[0] + sizes[1] + sizes[2];
    let bounded = store
        .read_after_bounded(0, 1000, first_three)
        .await
        .unwrap();
    assert!((3..=4).contains(&bounded.len()), "{}", bounded.len());
    assert_eq!(store.read_after_bounded(0, 1000, 1).await.unwrap().len(), 1);

    // New outcomes after the reopen land in the tail; reading across the boundary between the
    // database part and the tail part gives one contiguous answer.
    append(&store, (0..20).map(full_outcome).collect()).await;
    let across = store.read_after(95, 1000).await.unwrap();
    assert_eq!(seqs(&across), (96..=120).collect::<Vec<_>>());
    let tail_only = store.read_after(115, 1000).await.unwrap();
    assert_eq!(&across[across.len() - 5..], &tail_only[..]);
    store.close().await.unwrap();
}

/// Appends one outcome per call until its accepted_ms differs from `than` (without asserting
/// anything about time: it only waits for the millisecond clock to move on).
async fn append_after(store: &Store, than: i64, o: NewOutcome) -> Arc<Outcome> {
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let seq = append(store, vec![o.clone()]).await[0];
        let got = store.read_after(seq - 1, 1).await.unwrap().remove(0);
        if got.accepted_ms > than {
            return got;
        }
    }
}

async fn trim_by_age_removes_only_old_outcomes(kind: Kind) {
    let place = Place::new(kind).await;
    let max_age = Duration::from_secs(3600);
    let store = open_with(StoreOptions {
        retention_max_age: max_age,
        tail_capacity: 4,
        ..place.options()
    })
    .await;
    append(&store, vec![outcome(b"t", b"c", b"old"); 10]).await;
    let last_old = store.read_after(9, 1).await.unwrap().remove(0);
    let first_new = append_after(&store, last_old.accepted_ms, outcome(b"t", b"c", b"new")).await;
    append(&store, vec![outcome(b"t", b"c", b"new"); 5]).await;
    let last = store.last_seq();

    // At exactly max_age after the old ones nothing is older than max_age yet.
    let at_edge = last_old.accepted_ms + max_age.as_millis() as i64;
    assert_eq!(store.trim(at_edge).await.unwrap(), 0);
    assert_eq!(store.oldest_seq(), Some(1));

    // When the first new one is exactly max_age old, everything before it is older.
    let now = first_new.accepted_ms + max_age.as_millis() as i64;
    let removed = store.trim(now).await.unwrap();
    assert_eq!(removed, first_new.seq - 1);
    assert_eq!(store.oldest_seq(), Some(first_new.seq));
    let kept = store.read_after(0, 1000).await.unwrap();
    assert_eq!(seqs(&kept), (first_new.seq..=last).collect::<Vec<_>>());
    assert!(kept.iter().all(|o| o.outcome.si.as_ref() == b"new"));
    // A position inside the removed range reads from the oldest kept one.
    assert_eq!(store.read_after(3, 1).await.unwrap()[0].seq, first_new.seq);
    assert_eq!(store.trim(now).await.unwrap(), 0);
    store.close().await.unwrap();

    let store = place.open().await;
    assert_eq!(store.oldest_seq(), Some(first_new.seq));
    assert_eq!(store.last_seq(), last);
    store.close().await.unwrap();
}

async fn trim_by_size_removes_oldest_until_under_the_limit(kind: Kind) {
    let place = Place::new(kind).await;
    let store = open_with(StoreOptions {
        retention_max_bytes: Some(10_000),
        ..place.options()
    })
    .await;
    let mut big = outcome(b"t", b"c", b"s");
    big.dt = Bytes::from(vec![b'x'; 1_000]);
    append(&store, vec![big; 50]).await;
    let removed = store.trim(0).await.unwrap();
    // Each outcome counts a little over 1,000 bytes, so at most 9 fit in 10,000.
    assert!(removed >= 41, "removed {removed}");
    let kept = store.read_after(0, 1000).await.unwrap();
    assert_eq!(kept.len() as u64, 50 - removed);
    assert_eq!(store.oldest_seq(), Some(removed + 1));
    assert_eq!(kept.last().unwrap().seq, 50);
    assert_eq!(store.trim(0).await.unwrap(), 0);
    store.close().await.unwrap();
}

async fn trim_removes_a_large_backlog_in_steps(kind: Kind) {
    let place = Place::new(kind).await;
    let store = open_with(StoreOptions {
        tail_capacity: 100,
        ..place.options()
    })
    .await;
    for _ in 0..5 {
        append(&store, vec![outcome(b"t", b"c", b"s"); 5_000]).await;
    }
    assert_eq!(store.trim(i64::MAX).await.unwrap(), 25_000);
    assert_eq!(store.oldest_seq(), None);
    assert!(store.read_after(0, 10).await.unwrap().is_empty());
    assert!(store.read_after(24_990, 10).await.unwrap().is_empty());
    assert_eq!(
        append(&store, vec![outcome(b"t", b"c", b"s")]).await,
        [25_001]
    );
    store.close().await.unwrap();
}

async fn latest_outcome_finds_the_newest_by_si_and_by_tn(kind: Kind) {
    let place = Place::new(kind).await;
    let store = place.open().await;
    let with_tn = |si: &[u8], tn: &[u8], re: u16| {
        let mut o = outcome(b"t", b"Sales", si);
        o.tn = Some(b(tn));
        o.re = re;
        o
    };
    let mut other_campaign = with_tn(b"s1", b"555", 90);
    other_campaign.cn = b(b"sales");
    let mut other_tenant = with_tn(b"s1", b"555", 91);
    other_tenant.tenant = b(b"u");
    append(
        &store,
        vec![
            with_tn(b"s1", b"555", 1),
            with_tn(b"s2", b"555", 2),
            with_tn(b"s1", b"777", 3),
            other_campaign,
            other_tenant,
            outcome(b"t", b"Sales", b"s3"),
        ],
    )
    .await;

    let latest = |si: Option<&'static [u8]>, tn: Option<&'static [u8]>| {
        let store = store.clone();
        async move {
            store
                .latest_outcome(b"t", b"Sales", si, tn)
                .await
                .unwrap()
                .map(|o| (o.seq, o.outcome.re))
        }
    };
    assert_eq!(latest(Some(b"s1"), None).await, Some((3, 3)));
    // si wins over tn when both are given.
    assert_eq!(latest(Some(b"s2"), Some(b"777")).await, Some((2, 2)));
    assert_eq!(latest(None, Some(b"555")).await, Some((2, 2)));
    assert_eq!(latest(Some(b"nope"), None).await, None);
    assert_eq!(latest(None, Some(b"999")).await, None);
    assert_eq!(latest(None, None).await, None);
    // Another campaign (names are case-sensitive), another tenant.
    for (tenant, cn) in [(&b"t"[..], &b"SALES"[..]), (b"v", b"Sales")] {
        let found = store.latest_outcome(tenant, cn, Some(b"s1"), None).await;
        assert_eq!(found.unwrap(), None);
    }

    // A newer outcome for the same session replaces the answer.
    append(&store, vec![with_tn(b"s1", b"555", 4)]).await;
    assert_eq!(latest(None, Some(b"555")).await, Some((7, 4)));
    store.close().await.unwrap();
}

async fn latest_outcome_by_tn_finds_a_number_kept_only_as_si(kind: Kind) {
    // An outcome keeps no TN when its SI is the number (MC without SI, or TN equal to SI): a
    // lookup by that number finds it all the same, and the newest of both kinds wins.
    let place = Place::new(kind).await;
    let store = place.open().await;
    let numbered = |si: &[u8], tn: Option<&[u8]>, re: u16| {
        let mut o = outcome(b"t", b"Sales", si);
        o.tn = tn.map(b);
        o.re = re;
        o
    };
    let mut other_campaign = numbered(b"0123", None, 90);
    other_campaign.cn = b(b"Sales2");
    append(
        &store,
        vec![
            numbered(b"0123", None, 1),
            // Its own TN is another number: not a call to 0123, whatever its SI says.
            numbered(b"0123", Some(b"0999"), 2),
            other_campaign,
        ],
    )
    .await;
    let found = |tn: &'static [u8]| {
        let store = store.clone();
        async move {
            store
                .latest_outcome(b"t", b"Sales", None, Some(tn))
                .await
                .unwrap()
                .map(|o| (o.seq, o.outcome.re))
        }
    };
    assert_eq!(found(b"0123").await, Some((1, 1)));
    assert_eq!(found(b"0999").await, Some((2, 2)));

    // Newer outcomes of the number, one with it as TN, one with it as SI only: the newest wins.
    append(&store, vec![numbered(b"s-9", Some(b"0123"), 3)]).await;
    assert_eq!(found(b"0123").await, Some((4, 3)));
    append(&store, vec![numbered(b"0123", None, 5)]).await;
    assert_eq!(found(b"0123").await, Some((5, 5)));
    // Looked up by SI, the outcome with a TN of its own counts too: SI names the session.
    let by_si = store
        .latest_outcome(b"t", b"Sales", Some(b"0123"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_si.seq, 5);
    store.close().await.unwrap();
}

async fn closed_store_refuses_everything(kind: Kind) {
    let place = Place::new(kind).await;
    let store = place.open().await;
    let other = store.clone();
    let queued = other.submit(vec![Mutation::Append(outcome(b"t", b"c", b"s"))]);
    store.close().await.unwrap();
    // Submitted before close: committed by it.
    assert_eq!(queued.await.unwrap(), [1]);
    assert!(matches!(
        other
            .submit(vec![Mutation::Append(outcome(b"t", b"c", b"s"))])
            .await,
        Err(ozbus::store::StoreError::Closed)
    ));
    assert!(other.read_after(0, 1).await.is_err());
    assert!(other.load_records().await.is_err());
    assert!(other.trim(0).await.is_err());
    assert!(other.clone().close().await.is_err());

    let store = place.open().await;
    assert_eq!(store.last_seq(), 1);
    store.close().await.unwrap();
}

#[test]
fn store_is_shareable() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<ozbus::store::SqliteStore>();
    shareable::<ozbus::store::postgres::PgStore>();
    shareable::<Store>();
}

/// The history reads of both backends: the same pages, calls and records from the same log.
mod history {
    use super::*;
    use ozbus::store::{CallRecord, OutcomeClass, OutcomePage, OutcomeQuery, RecordState};

    /// What the history reads need of a store, in short.
    trait Reads {
        async fn page(&self, query: OutcomeQuery) -> OutcomePage;
        async fn call(&self, tenant: &[u8], cn: &[u8], si: &[u8], limit: usize) -> Vec<u64>;
        async fn record(&self, tenant: &[u8], si: &[u8]) -> Option<CallRecord>;
        async fn write(&self, mutations: Vec<Mutation>) -> Vec<u64>;
    }

    impl Reads for Store {
        async fn page(&self, query: OutcomeQuery) -> OutcomePage {
            self.outcomes(query).await.unwrap()
        }
        async fn call(&self, tenant: &[u8], cn: &[u8], si: &[u8], limit: usize) -> Vec<u64> {
            seqs(&self.call_outcomes(tenant, cn, si, limit).await.unwrap())
        }
        async fn record(&self, tenant: &[u8], si: &[u8]) -> Option<CallRecord> {
            self.open_record(tenant, si).await.unwrap()
        }
        async fn write(&self, mutations: Vec<Mutation>) -> Vec<u64> {
            self.submit(mutations).await.unwrap()
        }
    }

    fn query(limit: usize, scan: u64) -> OutcomeQuery {
        OutcomeQuery {
            limit,
            scan,
            ..OutcomeQuery::default()
        }
    }

    fn page_seqs(page: &OutcomePage) -> (Vec<u64>, u64, bool) {
        (
            page.outcomes.iter().map(|o| o.seq).collect(),
            page.next,
            page.more,
        )
    }

    /// Outcome n (1-based) of the log both stores get: tenants t and u, campaigns A and B,
    /// agents, numbers kept as TN or only as SI, every class.
    fn nth(n: u64) -> NewOutcome {
        let tenant: &[u8] = if n.is_multiple_of(5) { b"u" } else { b"t" };
        let cn: &[u8] = if n.is_multiple_of(2) { b"A" } else { b"B" };
        let mut o = outcome(tenant, cn, format!("s{}", n % 7).as_bytes());
        o.class = match n % 3 {
            0 => OutcomeClass::Success,
            1 => OutcomeClass::Failure,
            _ => OutcomeClass::Management,
        };
        o.an = (n.is_multiple_of(4)).then(|| b(b"Joe"));
        if n.is_multiple_of(6) {
            o.tn = Some(b(b"555"));
        } else if n == 7 {
            o.si = b(b"555");
        }
        o
    }

    async fn exercise(store: &Store) -> Vec<i64> {
        let mut accepted = Vec::new();
        // Three commits, a few milliseconds apart: three times to cut a time range at.
        for (from, to) in [(1, 10), (11, 20), (21, 30)] {
            let seqs = store
                .write((from..=to).map(|n| Mutation::Append(nth(n))).collect())
                .await;
            assert_eq!(seqs, (from..=to).collect::<Vec<_>>());
            accepted.push(ozbus::core::now_ms());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all =
            |filter: &dyn Fn(u64) -> bool| (1..=30).filter(|n| filter(*n)).collect::<Vec<_>>();

        // Pages of the whole log: by limit, then by scan, and past the end.
        assert_eq!(
            page_seqs(&store.page(query(4, 100)).await),
            (vec![1, 2, 3, 4], 4, true)
        );
        let mut q = query(4, 100);
        q.after = 28;
        assert_eq!(
            page_seqs(&store.page(q.clone()).await),
            (vec![29, 30], 30, false)
        );
        q.after = 40;
        assert_eq!(page_seqs(&store.page(q).await), (vec![], 40, false));
        let mut q = query(100, 5);
        q.after = 10;
        assert_eq!(
            page_seqs(&store.page(q).await),
            (vec![11, 12, 13, 14, 15], 15, true)
        );

        // Each filter.
        let mut q = query(100, 100);
        q.tenant = Some(b(b"u"));
        assert_eq!(
            page_seqs(&store.page(q).await).0,
            all(&|n| n.is_multiple_of(5))
        );
        let mut q = query(100, 100);
        q.campaign = Some(b(b"A"));
        q.agent = Some(b(b"Joe"));
        assert_eq!(
            page_seqs(&store.page(q).await).0,
            all(&|n| n.is_multiple_of(4))
        );
        let mut q = query(100, 100);
        q.classes = vec![OutcomeClass::Success, OutcomeClass::Management];
        assert_eq!(page_seqs(&store.page(q).await).0, all(&|n| n % 3 != 1));
        // A number: its TN, or its SI when it has no TN.
        let mut q = query(100, 100);
        q.number = Some(b(b"555"));
        assert_eq!(
            page_seqs(&store.page(q).await).0,
            all(&|n| n.is_multiple_of(6) || n == 7)
        );
        let mut q = query(100, 100);
        q.before = Some(4);
        q.after = 1;
        assert_eq!(page_seqs(&store.page(q).await), (vec![2, 3], 3, false));
        // A filter that matches little, with a small scan: pages walk on with `more`.
        let mut q = query(100, 8);
        q.tenant = Some(b(b"u"));
        assert_eq!(page_seqs(&store.page(q.clone()).await), (vec![5], 8, true));
        q.after = 8;
        assert_eq!(page_seqs(&store.page(q).await), (vec![10, 15], 16, true));

        // A call: its outcomes by campaign and session, the newest `limit`, oldest first.
        assert_eq!(
            store.call(b"t", b"B", b"s1", 10).await,
            all(&|n| n % 2 == 1 && n % 7 == 1 && n % 5 != 0)
        );
        assert_eq!(
            store.call(b"t", b"A", b"s2", 10).await,
            all(&|n| n.is_multiple_of(2) && n % 7 == 2 && n % 5 != 0)
        );
        assert_eq!(store.call(b"t", b"A", b"s2", 1).await, vec![16]);
        assert!(store.call(b"t", b"C", b"s1", 10).await.is_empty());

        // An open record, by tenant and session.
        let record = CallRecord {
            tenant: b(b"t"),
            si: b(b"open-1"),
            cn: b(b"A"),
            tn: Some(b(b"0123")),
            preview_agent: None,
            agent: Some(b(b"Joe")),
            as_data: None,
            dt: Some(b(b"lead")),
            state: RecordState::Connected,
            created_ms: 5,
            expires_ms: None,
            connected_ms: Some(6),
        };
        store.write(vec![Mutation::PutRecord(record.clone())]).await;
        assert_eq!(store.record(b"t", b"open-1").await, Some(record));
        assert_eq!(store.record(b"u", b"open-1").await, None);
        accepted
    }

    /// Time ranges: the commits' times cut the log where they were made.
    async fn times(store: &Store, first_commit_ms: i64) {
        let mut q = query(100, 100);
        q.from_ms = Some(first_commit_ms + 1);
        let page = store.page(q.clone()).await;
        assert_eq!(page.outcomes.first().map(|o| o.seq), Some(11));
        q.to_ms = Some(page.outcomes[10].accepted_ms);
        assert_eq!(
            page_seqs(&store.page(q).await),
            ((11..=20).collect(), 20, false)
        );
        let mut q = query(100, 100);
        q.from_ms = Some(i64::MAX);
        assert_eq!(page_seqs(&store.page(q).await), (vec![], 30, false));
    }

    #[tokio::test]
    async fn both_backends_answer_the_history_reads_alike() {
        let sqlite_place = Place::new(Kind::Sqlite).await;
        let sqlite = sqlite_place.open().await;
        let first = exercise(&sqlite).await;
        times(&sqlite, first[0]).await;
        let pg_place = Place::new(Kind::Postgres).await;
        let pg = pg_place.open().await;
        let first = exercise(&pg).await;
        times(&pg, first[0]).await;
        // The very same pages.
        for (tenant, number) in [(None, None), (Some(b(b"t")), Some(b(b"555")))] {
            let mut q = query(7, 13);
            q.tenant = tenant;
            q.number = number;
            let (a, b) = (sqlite.outcomes(q.clone()).await, pg.outcomes(q).await);
            let (a, b) = (a.unwrap(), b.unwrap());
            let strip = |p: OutcomePage| {
                (
                    p.outcomes
                        .into_iter()
                        .map(|o| (o.seq, o.outcome))
                        .collect::<Vec<_>>(),
                    p.next,
                    p.more,
                )
            };
            assert_eq!(strip(a), strip(b));
        }
        pg.close().await.unwrap();
        sqlite.close().await.unwrap();
    }
}
