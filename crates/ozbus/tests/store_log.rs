//! The outcome log as a user of the store observes it: durable, byte-exact, ordered, with
//! sequence numbers that never go back, retention, and the two read paths agreeing.

mod store_common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ozbus::store::{Mutation, NewOutcome, Outcome, SqliteStore, StoreOptions};
use store_common::{b, full_outcome, open, options, outcome};

async fn append(store: &SqliteStore, outcomes: Vec<NewOutcome>) -> Vec<u64> {
    store
        .submit(outcomes.into_iter().map(Mutation::Append).collect())
        .await
        .expect("commit")
}

fn seqs(outcomes: &[Arc<Outcome>]) -> Vec<u64> {
    outcomes.iter().map(|o| o.seq).collect()
}

#[tokio::test]
async fn outcomes_survive_reopen_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut written: Vec<NewOutcome> = (0..10).map(full_outcome).collect();
    let mut empty = outcome(b"", b"c\xff", b"\xfe\xff");
    empty.dt = Bytes::new();
    written.push(empty);

    let store = open(&dir);
    let seqs_given = append(&store, written.clone()).await;
    assert_eq!(seqs_given, (1..=11).collect::<Vec<_>>());
    let before = store.read_after(0, 100).await.unwrap();
    store.close().unwrap();

    let store = open(&dir);
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
    store.close().unwrap();
}

#[tokio::test]
async fn sequence_numbers_only_grow_across_reopen_and_full_trim() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(store.last_seq(), 0);
    assert_eq!(store.oldest_seq(), None);
    assert_eq!(
        append(&store, vec![outcome(b"t", b"c", b"1"); 3]).await,
        [1, 2, 3]
    );
    store.close().unwrap();

    let store = open(&dir);
    assert_eq!(store.last_seq(), 3);
    assert_eq!(append(&store, vec![outcome(b"t", b"c", b"2")]).await, [4]);
    // Far in the future: every outcome is older than the retention age.
    let removed = store.trim(i64::MAX).await.unwrap();
    assert_eq!(removed, 4);
    assert_eq!(store.oldest_seq(), None);
    assert_eq!(store.last_seq(), 4);
    assert!(store.read_after(0, 10).await.unwrap().is_empty());
    store.close().unwrap();

    let store = open(&dir);
    assert_eq!(store.last_seq(), 4);
    assert_eq!(store.oldest_seq(), None);
    assert_eq!(append(&store, vec![outcome(b"t", b"c", b"3")]).await, [5]);
    assert_eq!(store.oldest_seq(), Some(5));
    assert_eq!(seqs(&store.read_after(0, 10).await.unwrap()), [5]);
    store.close().unwrap();
}

#[tokio::test]
async fn watch_follows_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
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
    store.close().unwrap();
}

#[tokio::test]
async fn read_after_agrees_between_tail_and_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let small_tail = StoreOptions {
        tail_capacity: 8,
        ..options(&dir)
    };
    let store = SqliteStore::open(small_tail.clone()).unwrap();
    for chunk in 0..10u32 {
        append(
            &store,
            (0..10).map(|i| full_outcome(chunk * 10 + i)).collect(),
        )
        .await;
    }
    assert_eq!(store.last_seq(), 100);

    // Positions 92.. come from the tail, the rest from SQLite; a reopened store (empty tail)
    // reads everything from SQLite. All must agree.
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
    store.close().unwrap();

    let store = SqliteStore::open(small_tail).unwrap();
    let mut from_sqlite = Vec::new();
    for after in 0..=101u64 {
        for limit in [1usize, 3, 8, 1000] {
            from_sqlite.push(store.read_after(after, limit).await.unwrap());
        }
    }
    assert_eq!(from_running, from_sqlite);
    // Bounded in bytes too, from SQLite as from the tail: about that many, at least one.
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
    // SQLite part and the tail part gives one contiguous answer.
    append(&store, (0..20).map(full_outcome).collect()).await;
    let across = store.read_after(95, 1000).await.unwrap();
    assert_eq!(seqs(&across), (96..=120).collect::<Vec<_>>());
    let tail_only = store.read_after(115, 1000).await.unwrap();
    assert_eq!(&across[across.len() - 5..], &tail_only[..]);
    store.close().unwrap();
}

/// Appends one outcome per call until its accepted_ms differs from `than` (without asserting
/// anything about time: it only waits for the millisecond clock to move on).
async fn append_after(store: &SqliteStore, than: i64, o: NewOutcome) -> Arc<Outcome> {
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let seq = append(store, vec![o.clone()]).await[0];
        let got = store.read_after(seq - 1, 1).await.unwrap().remove(0);
        if got.accepted_ms > than {
            return got;
        }
    }
}

#[tokio::test]
async fn trim_by_age_removes_only_old_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let max_age = Duration::from_secs(3600);
    let store = SqliteStore::open(StoreOptions {
        retention_max_age: max_age,
        tail_capacity: 4,
        ..options(&dir)
    })
    .unwrap();
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
    store.close().unwrap();

    let store = open(&dir);
    assert_eq!(store.oldest_seq(), Some(first_new.seq));
    assert_eq!(store.last_seq(), last);
    store.close().unwrap();
}

#[tokio::test]
async fn trim_by_size_removes_oldest_until_under_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(StoreOptions {
        retention_max_bytes: Some(10_000),
        ..options(&dir)
    })
    .unwrap();
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
    store.close().unwrap();
}

#[tokio::test]
async fn trim_removes_a_large_backlog_in_steps() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(StoreOptions {
        tail_capacity: 100,
        ..options(&dir)
    })
    .unwrap();
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
    store.close().unwrap();
}

#[tokio::test]
async fn latest_outcome_finds_the_newest_by_si_and_by_tn() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
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

    let by_si = store
        .latest_outcome(b"t", b"Sales", Some(b"s1"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((by_si.seq, by_si.outcome.re), (3, 3));
    // si wins over tn when both are given.
    let by_si = store
        .latest_outcome(b"t", b"Sales", Some(b"s2"), Some(b"777"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_si.seq, 2);
    let by_tn = store
        .latest_outcome(b"t", b"Sales", None, Some(b"555"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((by_tn.seq, by_tn.outcome.re), (2, 2));
    let none = [
        store
            .latest_outcome(b"t", b"Sales", Some(b"nope"), None)
            .await,
        store
            .latest_outcome(b"t", b"Sales", None, Some(b"999"))
            .await,
        store
            .latest_outcome(b"t", b"SALES", Some(b"s1"), None)
            .await,
        store
            .latest_outcome(b"v", b"Sales", Some(b"s1"), None)
            .await,
        store.latest_outcome(b"t", b"Sales", None, None).await,
    ];
    for found in none {
        assert_eq!(found.unwrap(), None);
    }

    // A newer outcome for the same session replaces the answer.
    append(&store, vec![with_tn(b"s1", b"555", 4)]).await;
    let newest = store
        .latest_outcome(b"t", b"Sales", None, Some(b"555"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((newest.seq, newest.outcome.re), (7, 4));
    store.close().unwrap();
}

#[tokio::test]
async fn latest_outcome_by_tn_finds_a_number_kept_only_as_si() {
    // An outcome keeps no TN when its SI is the number (MC without SI, or TN equal to SI): a
    // lookup by that number finds it all the same, and the newest of both kinds wins.
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
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
    store.close().unwrap();
}

#[tokio::test]
async fn closed_store_refuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let other = store.clone();
    let queued = other.submit(vec![Mutation::Append(outcome(b"t", b"c", b"s"))]);
    store.close().unwrap();
    // Submitted before close: committed by it.
    assert_eq!(queued.await.unwrap(), [1]);
    assert!(matches!(
        other
            .submit(vec![Mutation::Append(outcome(b"t", b"c", b"s"))])
            .await,
        Err(ozbus::store::StoreError::Closed)
    ));
    assert!(other.read_after(0, 1).await.is_err());
    assert!(other.load_records().is_err());
    assert!(other.trim(0).await.is_err());
    assert!(other.clone().close().is_err());

    let store = open(&dir);
    assert_eq!(store.last_seq(), 1);
    store.close().unwrap();
}

#[test]
fn store_is_shareable() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<SqliteStore>();
    shareable::<ozbus::store::Store>();
}

/// An outcome's size, roughly as retention counts it: what makes the byte bound of a read.
fn approximate_size(o: &ozbus::store::NewOutcome) -> u64 {
    let optional = [&o.an, &o.tn, &o.as_data, &o.co, &o.ba, &o.bn, &o.bt];
    (o.tenant.len() + o.cn.len() + o.si.len() + o.dt.len()) as u64
        + optional
            .iter()
            .map(|v| v.as_ref().map_or(0, |b| b.len() as u64))
            .sum::<u64>()
}
