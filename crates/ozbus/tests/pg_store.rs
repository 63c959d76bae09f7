//! The PostgreSQL store as a user of it observes it: the SQLite store's tests of the log, of
//! state and of concurrency run against `PgStore`, then what only a shared database has: two
//! stores on one log, sequence numbers in the order of visibility, a lost connection during
//! commits, and a database out of space. Each test has a database of its own on the server
//! named by `OZBUS_TEST_PG_URL` (`scripts/test` starts one).

mod pg_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ozbus::store::postgres::{PgOptions, PgStore};
use ozbus::store::{
    CallRecord, Mutation, NewOutcome, Outcome, OutcomeClass, PersistedTransaction, RecordState,
    StoreError,
};
use pg_common::{b, database, outcome, Mode, Proxy};

async fn append(store: &PgStore, outcomes: Vec<NewOutcome>) -> Vec<u64> {
    store
        .submit(outcomes.into_iter().map(Mutation::Append).collect())
        .await
        .expect("commit")
}

fn seqs(outcomes: &[Arc<Outcome>]) -> Vec<u64> {
    outcomes.iter().map(|o| o.seq).collect()
}

/// Everything set, with bytes that are not UTF-8 and edge values.
fn full_outcome(n: u32) -> NewOutcome {
    NewOutcome {
        tenant: b(b"acme"),
        class: OutcomeClass::Success,
        cn: b(b"Sales\xff1"),
        an: Some(b(b"Jo\xe9")),
        si: Bytes::from(format!("si-{n}").into_bytes()),
        tn: Some(b(b"\x00\x01+44 20")),
        re: u16::MAX,
        ao: Some(0),
        dd: true,
        as_data: Some(b(&[0xc3, 0x28, 0x00, 0xfe])),
        co: Some(Bytes::new()),
        ba: Some(b(b"agent\x80")),
        bn: Some(b(b"0123")),
        bt: Some(b(b"2026-11-25 17:00")),
        dt: Bytes::from(vec![n as u8; (n as usize % 5) * 1000]),
    }
}

fn record(si: &[u8], state: RecordState) -> CallRecord {
    CallRecord {
        tenant: b(b"t"),
        si: b(si),
        cn: b(b"Sales"),
        tn: Some(b(b"0123\xff")),
        preview_agent: None,
        agent: None,
        as_data: Some(b(b"\x00as")),
        dt: Some(Bytes::new()),
        state,
        created_ms: 1_700_000_000_000,
        expires_ms: Some(1_700_000_060_000),
        connected_ms: None,
    }
}

fn transaction(ps: &[u8], cursor: u64) -> PersistedTransaction {
    PersistedTransaction {
        tenant: b(b"t"),
        ps: b(ps),
        tx: b(b"a"),
        request: b(b"EO\\TXa\\FO\\PS\xe9"),
        cursor,
        released_ms: None,
    }
}

/// An outcome's size, roughly as retention counts it: what makes the byte bound of a read.
fn approximate_size(o: &NewOutcome) -> u64 {
    let optional = [&o.an, &o.tn, &o.as_data, &o.co, &o.ba, &o.bn, &o.bt];
    (o.tenant.len() + o.cn.len() + o.si.len() + o.dt.len()) as u64
        + optional
            .iter()
            .map(|v| v.as_ref().map_or(0, |b| b.len() as u64))
            .sum::<u64>()
}

// ---- the log (as tests/store_log.rs) ----

#[tokio::test]
async fn outcomes_survive_reopen_byte_exact() {
    let db = database().await;
    let mut written: Vec<NewOutcome> = (0..10).map(full_outcome).collect();
    let mut empty = outcome(b"", b"c\xff", b"\xfe\xff");
    empty.dt = Bytes::new();
    written.push(empty);

    let store = db.open().await;
    let seqs_given = append(&store, written.clone()).await;
    assert_eq!(seqs_given, (1..=11).collect::<Vec<_>>());
    let before = store.read_after(0, 100).await.unwrap();
    store.close().await.unwrap();

    let store = db.open().await;
    assert_eq!(store.last_seq(), 11);
    assert_eq!(store.oldest_seq(), Some(1));
    let after = store.read_after(0, 100).await.unwrap();
    let read: Vec<NewOutcome> = after.iter().map(|o| o.outcome.clone()).collect();
    assert_eq!(read, written);
    assert_eq!(seqs(&after), seqs_given);
    assert_eq!(after, before);
    assert_eq!(after[0].outcome.co, Some(Bytes::new()));
    assert_eq!(after[10].outcome.co, None);
    assert!(after[10].outcome.dt.is_empty());
    store.close().await.unwrap();
}

#[tokio::test]
async fn sequence_numbers_only_grow_across_reopen_and_full_trim() {
    let db = database().await;
    let store = db.open().await;
    assert_eq!(store.last_seq(), 0);
    assert_eq!(store.oldest_seq(), None);
    assert_eq!(
        append(&store, vec![outcome(b"t", b"c", b"1"); 3]).await,
        [1, 2, 3]
    );
    store.close().await.unwrap();

    let store = db.open().await;
    assert_eq!(store.last_seq(), 3);
    assert_eq!(append(&store, vec![outcome(b"t", b"c", b"2")]).await, [4]);
    let removed = store.trim(i64::MAX).await.unwrap();
    assert_eq!(removed, 4);
    assert_eq!(store.oldest_seq(), None);
    assert_eq!(store.last_seq(), 4);
    assert!(store.read_after(0, 10).await.unwrap().is_empty());
    store.close().await.unwrap();

    let store = db.open().await;
    assert_eq!(store.last_seq(), 4);
    assert_eq!(store.oldest_seq(), None);
    assert_eq!(append(&store, vec![outcome(b"t", b"c", b"3")]).await, [5]);
    assert_eq!(store.oldest_seq(), Some(5));
    assert_eq!(seqs(&store.read_after(0, 10).await.unwrap()), [5]);
    store.close().await.unwrap();
}

#[tokio::test]
async fn watch_follows_commits() {
    let db = database().await;
    let store = db.open().await;
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

#[tokio::test]
async fn read_after_agrees_between_tail_and_postgres() {
    let db = database().await;
    let small_tail = PgOptions {
        tail_capacity: 8,
        ..db.options()
    };
    let store = PgStore::open(small_tail.clone()).await.unwrap();
    for chunk in 0..10u32 {
        append(
            &store,
            (0..10).map(|i| full_outcome(chunk * 10 + i)).collect(),
        )
        .await;
    }
    assert_eq!(store.last_seq(), 100);

    // Positions 92.. come from the tail, the rest from PostgreSQL; a reopened store (empty
    // tail) reads everything from PostgreSQL. All must agree.
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

    let store = PgStore::open(small_tail).await.unwrap();
    let mut from_postgres = Vec::new();
    for after in 0..=101u64 {
        for limit in [1usize, 3, 8, 1000] {
            from_postgres.push(store.read_after(after, limit).await.unwrap());
        }
    }
    assert_eq!(from_running, from_postgres);
    // Bounded in bytes too: about that many, at least one.
    let all = store.read_after(0, 1000).await.unwrap();
    let sizes: Vec<u64> = all.iter().map(|o| approximate_size(&o.outcome)).collect();
    let first_three = sizes[0] + sizes[1] + sizes[2];
    let bounded = store
        .read_after_bounded(0, 1000, first_three)
        .await
        .unwrap();
    assert!((3..=4).contains(&bounded.len()), "{}", bounded.len());
    assert_eq!(store.read_after_bounded(0, 1000, 1).await.unwrap().len(), 1);

    // New outcomes after the reopen land in the tail; reading across the boundary gives one
    // contiguous answer.
    append(&store, (0..20).map(full_outcome).collect()).await;
    let across = store.read_after(95, 1000).await.unwrap();
    assert_eq!(seqs(&across), (96..=120).collect::<Vec<_>>());
    let tail_only = store.read_after(115, 1000).await.unwrap();
    assert_eq!(&across[across.len() - 5..], &tail_only[..]);
    store.close().await.unwrap();
}

/// Appends one outcome per call until its accepted_ms differs from `than`.
async fn append_after(store: &PgStore, than: i64, o: NewOutcome) -> Arc<Outcome> {
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
    let db = database().await;
    let max_age = Duration::from_secs(3600);
    let store = PgStore::open(PgOptions {
        retention_max_age: max_age,
        tail_capacity: 4,
        ..db.options()
    })
    .await
    .unwrap();
    append(&store, vec![outcome(b"t", b"c", b"old"); 10]).await;
    let last_old = store.read_after(9, 1).await.unwrap().remove(0);
    let first_new = append_after(&store, last_old.accepted_ms, outcome(b"t", b"c", b"new")).await;
    append(&store, vec![outcome(b"t", b"c", b"new"); 5]).await;
    let last = store.last_seq();

    let at_edge = last_old.accepted_ms + max_age.as_millis() as i64;
    assert_eq!(store.trim(at_edge).await.unwrap(), 0);
    assert_eq!(store.oldest_seq(), Some(1));

    let now = first_new.accepted_ms + max_age.as_millis() as i64;
    let removed = store.trim(now).await.unwrap();
    assert_eq!(removed, first_new.seq - 1);
    assert_eq!(store.oldest_seq(), Some(first_new.seq));
    let kept = store.read_after(0, 1000).await.unwrap();
    assert_eq!(seqs(&kept), (first_new.seq..=last).collect::<Vec<_>>());
    assert!(kept.iter().all(|o| o.outcome.si.as_ref() == b"new"));
    assert_eq!(store.read_after(3, 1).await.unwrap()[0].seq, first_new.seq);
    assert_eq!(store.trim(now).await.unwrap(), 0);
    store.close().await.unwrap();

    let store = db.open().await;
    assert_eq!(store.oldest_seq(), Some(first_new.seq));
    assert_eq!(store.last_seq(), last);
    store.close().await.unwrap();
}

#[tokio::test]
async fn trim_by_size_removes_oldest_until_under_the_limit() {
    let db = database().await;
    let store = PgStore::open(PgOptions {
        retention_max_bytes: Some(10_000),
        ..db.options()
    })
    .await
    .unwrap();
    let mut big = outcome(b"t", b"c", b"s");
    big.dt = Bytes::from(vec![b'x'; 1_000]);
    append(&store, vec![big; 50]).await;
    let removed = store.trim(0).await.unwrap();
    assert!(removed >= 41, "removed {removed}");
    let kept = store.read_after(0, 1000).await.unwrap();
    assert_eq!(kept.len() as u64, 50 - removed);
    assert_eq!(store.oldest_seq(), Some(removed + 1));
    assert_eq!(kept.last().unwrap().seq, 50);
    assert_eq!(store.trim(0).await.unwrap(), 0);
    store.close().await.unwrap();
}

#[tokio::test]
async fn trim_removes_a_large_backlog_in_steps() {
    let db = database().await;
    let store = PgStore::open(PgOptions {
        tail_capacity: 100,
        ..db.options()
    })
    .await
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
    store.close().await.unwrap();
}

#[tokio::test]
async fn latest_outcome_finds_the_newest_by_si_and_by_tn() {
    let db = database().await;
    let store = db.open().await;
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
    for (tenant, cn) in [(&b"t"[..], &b"SALES"[..]), (b"v", b"Sales")] {
        let found = store.latest_outcome(tenant, cn, Some(b"s1"), None).await;
        assert_eq!(found.unwrap(), None);
    }
    append(&store, vec![with_tn(b"s1", b"555", 4)]).await;
    assert_eq!(latest(None, Some(b"555")).await, Some((7, 4)));
    store.close().await.unwrap();
}

#[tokio::test]
async fn latest_outcome_by_tn_finds_a_number_kept_only_as_si() {
    let db = database().await;
    let store = db.open().await;
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
    append(&store, vec![numbered(b"s-9", Some(b"0123"), 3)]).await;
    assert_eq!(found(b"0123").await, Some((4, 3)));
    append(&store, vec![numbered(b"0123", None, 5)]).await;
    assert_eq!(found(b"0123").await, Some((5, 5)));
    let by_si = store
        .latest_outcome(b"t", b"Sales", Some(b"0123"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_si.seq, 5);
    store.close().await.unwrap();
}

#[tokio::test]
async fn closed_store_refuses_everything() {
    let db = database().await;
    let store = db.open().await;
    let other = store.clone();
    let queued = other.submit(vec![Mutation::Append(outcome(b"t", b"c", b"s"))]);
    store.close().await.unwrap();
    // Submitted before close: committed by it.
    assert_eq!(queued.await.unwrap(), [1]);
    assert!(matches!(
        other
            .submit(vec![Mutation::Append(outcome(b"t", b"c", b"s"))])
            .await,
        Err(StoreError::Closed)
    ));
    assert!(other.read_after(0, 1).await.is_err());
    assert!(other.load_records().await.is_err());
    assert!(other.trim(0).await.is_err());
    assert!(other.clone().close().await.is_err());

    let store = db.open().await;
    assert_eq!(store.last_seq(), 1);
    store.close().await.unwrap();
}

#[test]
fn store_is_shareable() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<PgStore>();
}

// ---- state (as tests/store_state.rs) ----

#[tokio::test]
async fn records_put_replace_delete_survive_reopen() {
    let db = database().await;
    let store = db.open().await;
    let mut other_tenant = record(b"1", RecordState::Pending);
    other_tenant.tenant = b(b"u");
    store
        .submit(vec![
            Mutation::PutRecord(record(b"1", RecordState::Pending)),
            Mutation::PutRecord(record(b"2", RecordState::Pending)),
            Mutation::PutRecord(record(b"3", RecordState::Pending)),
            Mutation::PutRecord(other_tenant.clone()),
        ])
        .await
        .unwrap();
    let mut connected = record(b"2", RecordState::Connected);
    connected.agent = Some(b(b"Joe"));
    connected.connected_ms = Some(1_700_000_001_000);
    connected.dt = None;
    connected.tn = None;
    store
        .submit(vec![Mutation::PutRecord(connected.clone())])
        .await
        .unwrap();
    store
        .submit(vec![
            Mutation::DeleteRecord {
                tenant: b(b"t"),
                si: b(b"3"),
            },
            Mutation::DeleteRecord {
                tenant: b(b"t"),
                si: b(b"nope"),
            },
        ])
        .await
        .unwrap();
    store.close().await.unwrap();

    let store = db.open().await;
    let mut records = store.load_records().await.unwrap();
    records.sort_by(|a, b| (&a.tenant, &a.si).cmp(&(&b.tenant, &b.si)));
    assert_eq!(
        records,
        vec![record(b"1", RecordState::Pending), connected, other_tenant]
    );
    assert_eq!(store.last_seq(), 0);
    store.close().await.unwrap();
}

#[tokio::test]
async fn transactions_and_cursor_moves_survive_reopen() {
    let db = database().await;
    let store = db.open().await;
    store
        .submit(vec![
            Mutation::PutTransaction(transaction(b"a", 0)),
            Mutation::PutTransaction(transaction(b"b", 5)),
            Mutation::PutTransaction(transaction(b"c", 9)),
        ])
        .await
        .unwrap();
    let mut released = transaction(b"b", 7);
    released.released_ms = Some(1_700_000_000_000);
    released.request = b(b"EO\\TXb2\\SO\\PSb");
    store
        .submit(vec![
            Mutation::MoveCursor {
                tenant: b(b"t"),
                ps: b(b"a"),
                cursor: 42,
            },
            Mutation::PutTransaction(released.clone()),
            Mutation::DeleteTransaction {
                tenant: b(b"t"),
                ps: b(b"c"),
            },
            Mutation::MoveCursor {
                tenant: b(b"t"),
                ps: b(b"c"),
                cursor: 100,
            },
        ])
        .await
        .unwrap();
    store.close().await.unwrap();

    let store = db.open().await;
    let mut transactions = store.load_transactions().await.unwrap();
    transactions.sort_by(|a, b| a.ps.cmp(&b.ps));
    assert_eq!(transactions, vec![transaction(b"a", 42), released]);
    store
        .submit(vec![Mutation::MoveCursor {
            tenant: b(b"t"),
            ps: b(b"a"),
            cursor: (1 << 63) - 1,
        }])
        .await
        .unwrap();
    store.close().await.unwrap();

    let store = db.open().await;
    let transactions = store.load_transactions().await.unwrap();
    assert_eq!(transactions[0].cursor, (1 << 63) - 1);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_stored_cursor_only_moves_back_when_rewound() {
    let db = database().await;
    let store = db.open().await;
    async fn cursor(store: &PgStore) -> u64 {
        store.load_transactions().await.unwrap()[0].cursor
    }
    store
        .submit(vec![Mutation::PutTransaction(transaction(b"p", 10))])
        .await
        .unwrap();
    let move_to = |cursor| Mutation::MoveCursor {
        tenant: b(b"t"),
        ps: b(b"p"),
        cursor,
    };
    store.submit(vec![move_to(7)]).await.unwrap();
    assert_eq!(cursor(&store).await, 10, "a late MoveCursor went back");
    let mut released = transaction(b"p", 4);
    released.released_ms = Some(1);
    store
        .submit(vec![Mutation::PutTransaction(released)])
        .await
        .unwrap();
    let kept = &store.load_transactions().await.unwrap()[0];
    assert_eq!((kept.cursor, kept.released_ms), (10, Some(1)));
    store.submit(vec![move_to(12)]).await.unwrap();
    assert_eq!(cursor(&store).await, 12);
    store
        .submit(vec![Mutation::RewindCursor {
            tenant: b(b"t"),
            ps: b(b"p"),
            cursor: 3,
        }])
        .await
        .unwrap();
    assert_eq!(cursor(&store).await, 3);
    store.close().await.unwrap();
    let store = db.open().await;
    assert_eq!(cursor(&store).await, 3);
    store.close().await.unwrap();
}

#[tokio::test]
async fn delete_record_and_append_commit_together() {
    let db = database().await;
    let store = db.open().await;
    store
        .submit(vec![
            Mutation::PutRecord(record(b"1", RecordState::Connected)),
            Mutation::PutRecord(record(b"2", RecordState::Connected)),
        ])
        .await
        .unwrap();
    // The middle batch holds a cursor PostgreSQL cannot store: none of it may stick, and the
    // batches around it must not notice.
    let first = store.submit(vec![
        Mutation::DeleteRecord {
            tenant: b(b"t"),
            si: b(b"1"),
        },
        Mutation::Append(outcome(b"t", b"Sales", b"1")),
    ]);
    let failing = store.submit(vec![
        Mutation::DeleteRecord {
            tenant: b(b"t"),
            si: b(b"2"),
        },
        Mutation::Append(outcome(b"t", b"Sales", b"2")),
        Mutation::PutTransaction(transaction(b"x", u64::MAX)),
    ]);
    let last = store.submit(vec![Mutation::Append(outcome(b"t", b"Sales", b"3"))]);
    assert_eq!(first.await.unwrap(), [1]);
    assert!(matches!(failing.await, Err(StoreError::OutOfRange(_))));
    assert_eq!(last.await.unwrap(), [2]);
    store.close().await.unwrap();

    let store = db.open().await;
    let records = store.load_records().await.unwrap();
    assert_eq!(records, vec![record(b"2", RecordState::Connected)]);
    assert!(store.load_transactions().await.unwrap().is_empty());
    let log = store.read_after(0, 10).await.unwrap();
    let sis: Vec<&[u8]> = log.iter().map(|o| o.outcome.si.as_ref()).collect();
    assert_eq!(sis, [b"1".as_slice(), b"3".as_slice()]);
    assert_eq!(store.last_seq(), 2);
    store.close().await.unwrap();
}

/// A batch PostgreSQL refuses for a reason that does not go away (here a trigger's check
/// violation, standing in for a constraint that should never be violated) fails alone: the
/// group is written again with a savepoint per batch, and the batches around it commit with
/// contiguous seqs.
#[tokio::test]
async fn a_batch_postgres_refuses_fails_alone() {
    let db = database().await;
    let store = db.open().await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.si = 'bad'::bytea THEN
                 RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_bad BEFORE INSERT ON records
               FOR EACH ROW EXECUTE FUNCTION refuse_bad();",
        )
        .await
        .unwrap();
    let mut tickets = Vec::new();
    for round in 0..3 {
        for si in [&b"ok-a"[..], b"bad", b"ok-b"] {
            let si = format!("{}-{round}", String::from_utf8_lossy(si));
            let si = if si.starts_with("bad") {
                "bad".into()
            } else {
                si
            };
            tickets.push((
                si.clone(),
                store.submit(vec![
                    Mutation::PutRecord(record(si.as_bytes(), RecordState::Pending)),
                    Mutation::Append(outcome(b"t", b"Sales", si.as_bytes())),
                ]),
            ));
        }
    }
    let mut next = 1;
    for (si, ticket) in tickets {
        match ticket.await {
            Ok(seqs) => {
                assert_ne!(si, "bad");
                assert_eq!(seqs, [next], "{si}");
                next += 1;
            }
            Err(error) => {
                assert_eq!(si, "bad");
                assert!(matches!(error, StoreError::Postgres(_)), "{error}");
                assert!(!error.is_out_of_space());
            }
        }
    }
    assert_eq!(next, 7);
    let log = store.read_after(0, 100).await.unwrap();
    assert_eq!(seqs(&log), (1..=6).collect::<Vec<_>>());
    assert!(log.iter().all(|o| o.outcome.si.as_ref() != b"bad"));
    assert_eq!(store.load_records().await.unwrap().len(), 6);
    assert!(!store.is_full() && !store.fenced());
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_newer_schema_is_refused_not_overwritten() {
    let db = database().await;
    db.open().await.close().await.unwrap();
    let admin = db.client().await;
    admin
        .batch_execute("UPDATE ozbus_schema SET version = 99")
        .await
        .unwrap();
    let opened = PgStore::open(db.options()).await;
    assert!(
        matches!(opened, Err(StoreError::UnsupportedSchema { found: 99, .. })),
        "{opened:?}"
    );
    let version: i64 = admin
        .query_one("SELECT version FROM ozbus_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 99);
}

/// Several nodes opening a new database at once: one creates the schema, the others find it.
#[tokio::test]
async fn nodes_opening_a_new_database_at_once_migrate_it_once() {
    let db = database().await;
    let opened = futures::future::join_all((0..4).map(|_| PgStore::open(db.options()))).await;
    let stores: Vec<PgStore> = opened.into_iter().map(|s| s.expect("open")).collect();
    let mut nodes: Vec<i64> = stores.iter().map(PgStore::node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(nodes.len(), 4, "node ids are unique");
    for store in stores {
        store.close().await.unwrap();
    }
}

#[tokio::test]
async fn idempotency_keys_commit_with_their_batch_and_expire_after_the_window() {
    let db = database().await;
    let window = Duration::from_secs(3600);
    let store = PgStore::open(PgOptions {
        dedup_window: window,
        ..db.options()
    })
    .await
    .unwrap();
    let remember = |key: &[u8]| Mutation::RememberKey {
        tenant: b(b"t"),
        key: b(key),
    };
    let before = ozbus::core::now_ms();
    store
        .submit(vec![
            Mutation::Append(outcome(b"t", b"c", b"1")),
            remember(b"k1"),
        ])
        .await
        .unwrap();
    let failing = store.submit(vec![
        Mutation::Append(outcome(b"t", b"c", b"2")),
        remember(b"k2"),
        Mutation::PutTransaction(transaction(b"x", u64::MAX)),
    ]);
    assert!(matches!(failing.await, Err(StoreError::OutOfRange(_))));

    assert!(store.key_committed(b"t", b"k1", before).await.unwrap());
    assert!(!store.key_committed(b"t", b"k2", 0).await.unwrap());
    assert!(!store.key_committed(b"u", b"k1", 0).await.unwrap());
    let after = ozbus::core::now_ms() + 1;
    assert!(!store.key_committed(b"t", b"k1", after).await.unwrap());

    let window_ms = window.as_millis() as i64;
    store.trim(after + window_ms).await.unwrap();
    assert!(store.key_committed(b"t", b"k1", 0).await.unwrap());
    store.trim(after + window_ms + 61_000).await.unwrap();
    assert!(!store.key_committed(b"t", b"k1", 0).await.unwrap());
    store.close().await.unwrap();
}

// ---- concurrency (as tests/store_concurrency.rs) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_concurrent_batches_get_exactly_their_seqs() {
    const SUBMITTERS: usize = 8;
    const PER_SUBMITTER: usize = 1_250;
    let db = database().await;
    let store = db.open().await;
    let mut tasks = Vec::new();
    for submitter in 0..SUBMITTERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut tickets = Vec::with_capacity(PER_SUBMITTER);
            for i in 0..PER_SUBMITTER {
                let si = format!("{submitter}-{i}");
                tickets.push(store.submit(vec![Mutation::Append(outcome(
                    b"t",
                    b"c",
                    si.as_bytes(),
                ))]));
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            let mut seqs = Vec::with_capacity(PER_SUBMITTER);
            for ticket in tickets {
                let got = ticket.await.expect("commit");
                assert_eq!(got.len(), 1);
                seqs.push(got[0]);
            }
            (submitter, seqs)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let (submitter, seqs) = task.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "submitter {submitter}: seqs out of submission order"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    let n = (SUBMITTERS * PER_SUBMITTER) as u64;
    assert_eq!(all, (1..=n).collect::<Vec<_>>());
    assert_eq!(store.last_seq(), n);
    let log = store.read_after(0, usize::MAX).await.unwrap();
    assert_eq!(log.len() as u64, n);
    for submitter in 0..SUBMITTERS {
        let prefix = format!("{submitter}-");
        let order: Vec<usize> = log
            .iter()
            .filter_map(|o| {
                let si = std::str::from_utf8(&o.outcome.si).ok()?;
                si.strip_prefix(&prefix)?.parse().ok()
            })
            .collect();
        assert_eq!(order, (0..PER_SUBMITTER).collect::<Vec<_>>());
    }
    store.close().await.unwrap();
}

// ---- several nodes on one database ----

/// Appends `count` single-outcome batches named `<name>-<i>`, `window` in flight at a time;
/// returns each one's seq, in submission order.
async fn produce(store: PgStore, name: &'static str, count: usize, window: usize) -> Vec<u64> {
    let mut pending = std::collections::VecDeque::new();
    let mut seqs = Vec::with_capacity(count);
    for i in 0..count {
        let si = format!("{name}-{i}");
        pending.push_back(store.submit(vec![Mutation::Append(outcome(b"t", b"c", si.as_bytes()))]));
        if pending.len() >= window {
            seqs.extend(pending.pop_front().unwrap().await.expect("commit"));
        }
    }
    for ticket in pending {
        seqs.extend(ticket.await.expect("commit"));
    }
    seqs
}

/// Follows `store`'s log from the start until `total` outcomes, the way delivery does (the
/// watch wakes, the read comes from the tail or the database); checks that it never skips or
/// repeats a seq.
async fn follow(store: PgStore, total: u64) -> Vec<Arc<Outcome>> {
    let mut watch = store.watch_last_seq();
    let mut seen = Vec::new();
    let mut cursor = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while cursor < total {
        assert!(Instant::now() < deadline, "stuck at {cursor} of {total}");
        if cursor >= *watch.borrow_and_update() {
            let _ = tokio::time::timeout(Duration::from_secs(1), watch.changed()).await;
            continue;
        }
        let batch = store.read_after(cursor, 100).await.unwrap();
        for outcome in batch {
            assert_eq!(outcome.seq, cursor + 1, "a gap or a repeat after {cursor}");
            cursor = outcome.seq;
            seen.push(outcome);
        }
    }
    seen
}

/// A reader of store A sees store B's outcomes (and A's own) in order, without gaps, as
/// they are committed: B's commits reach A through LISTEN/NOTIFY, and A's tail never holds
/// a run with B's outcomes missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_one_node_follows_every_node_in_order() {
    let db = database().await;
    let a = PgStore::open(PgOptions {
        tail_capacity: 256,
        ..db.options()
    })
    .await
    .unwrap();
    let b_store = db.open().await;
    const EACH: usize = 3_000;
    let reader = tokio::spawn(follow(a.clone(), 2 * EACH as u64));
    let from_a = tokio::spawn(produce(a.clone(), "a", EACH, 16));
    let from_b = tokio::spawn(produce(b_store.clone(), "b", EACH, 16));
    let seqs_a = from_a.await.unwrap();
    let seqs_b = from_b.await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reader of A saw everything")
        .unwrap();
    // What the reader saw is what each producer's tickets said, in each producer's order.
    let by_seq: HashMap<u64, &[u8]> = seen
        .iter()
        .map(|o| (o.seq, o.outcome.si.as_ref()))
        .collect();
    for (name, seqs) in [("a", &seqs_a), ("b", &seqs_b)] {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{name}");
        for (i, seq) in seqs.iter().enumerate() {
            assert_eq!(by_seq[seq], format!("{name}-{i}").as_bytes());
        }
    }
    // Both nodes know the whole log, and read it alike.
    assert_eq!(a.last_seq(), 2 * EACH as u64);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b_store.last_seq() < 2 * EACH as u64 {
        assert!(Instant::now() < deadline, "B never learned of A's commits");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        a.read_after(0, usize::MAX).await.unwrap(),
        b_store.read_after(0, usize::MAX).await.unwrap()
    );
    a.close().await.unwrap();
    b_store.close().await.unwrap();
}

/// Under concurrent appends from two nodes, sequence numbers become visible in order: at no
/// moment can a reader see a seq while a smaller one is still to come (every snapshot holds
/// exactly 1..=max). A sequence (BIGSERIAL) would fail this: numbers are taken before commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_are_handed_out_in_the_order_of_visibility() {
    let db = database().await;
    let a = db.open().await;
    let b_store = db.open().await;
    const EACH: usize = 4_000;
    let total = 2 * EACH as i64;
    let admin = db.client().await;
    let poller = tokio::spawn(async move {
        let mut polls = 0u64;
        let mut partial = 0u64;
        loop {
            let row = admin
                .query_one(
                    "SELECT count(*), coalesce(max(seq), 0), coalesce(min(seq), 1) FROM outcomes",
                    &[],
                )
                .await
                .unwrap();
            let (count, max, min): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            assert_eq!(min, 1, "the log starts at 1");
            assert_eq!(count, max, "a hole below seq {max} was visible");
            polls += 1;
            if count > 0 && count < total {
                partial += 1;
            }
            if count == total {
                return (polls, partial);
            }
        }
    });
    let from_a = tokio::spawn(produce(a.clone(), "a", EACH, 64));
    let from_b = tokio::spawn(produce(b_store.clone(), "b", EACH, 64));
    let (seqs_a, seqs_b) = (from_a.await.unwrap(), from_b.await.unwrap());
    let (polls, partial) = tokio::time::timeout(Duration::from_secs(60), poller)
        .await
        .expect("poller done")
        .unwrap();
    assert!(
        partial > 10,
        "the poller looked while both wrote ({partial} of {polls})"
    );
    let mut all: Vec<u64> = seqs_a.iter().chain(&seqs_b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=total as u64).collect::<Vec<_>>());
    // Both nodes took turns, rather than one writing everything first.
    let interleaved =
        seqs_a.iter().any(|&s| s > seqs_b[0]) && seqs_b.iter().any(|&s| s > seqs_a[0]);
    assert!(interleaved);
    a.close().await.unwrap();
    b_store.close().await.unwrap();
}

/// Retention applied by one node: the other learns the new oldest seq and stops serving the
/// removed outcomes from its tail.
#[tokio::test]
async fn retention_on_one_node_is_seen_by_the_other() {
    let db = database().await;
    let a = db.open().await;
    let b_store = db.open().await;
    append(&a, vec![outcome(b"t", b"c", b"1"); 10]).await;
    // B reads through its tail after learning of A's commit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b_store.last_seq() < 10 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(b_store.oldest_seq(), Some(1));
    assert_eq!(a.trim(i64::MAX).await.unwrap(), 10);
    while b_store.oldest_seq().is_some() {
        assert!(Instant::now() < deadline, "B never learned of the trim");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(b_store.read_after(0, 10).await.unwrap().is_empty());
    assert_eq!(
        append(&b_store, vec![outcome(b"t", b"c", b"2")]).await,
        [11]
    );
    assert_eq!(b_store.oldest_seq(), Some(11));
    a.close().await.unwrap();
    b_store.close().await.unwrap();
}

// ---- faults ----

/// Every connection of the store is killed, again and again, while batches are in flight:
/// every ticket resolves Ok exactly once, and the log holds every batch exactly once, at the
/// seq its ticket said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_nothing_and_apply_nothing_twice() {
    let db = database().await;
    let store = db.open().await;
    const PRODUCERS: usize = 4;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                // Until told to stop: single-outcome batches (with a record each, so that
                // groups hold more than appends), 32 in flight.
                let mut pending = std::collections::VecDeque::new();
                let mut seqs = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let si = format!("p{p}-{i}");
                    pending.push_back(store.submit(vec![
                        Mutation::PutRecord(record(si.as_bytes(), RecordState::Pending)),
                        Mutation::Append(outcome(b"t", b"c", si.as_bytes())),
                    ]));
                    if pending.len() >= 32 {
                        seqs.extend(pending.pop_front().unwrap().await.expect("commit"));
                    }
                    i += 1;
                }
                for ticket in pending {
                    seqs.extend(ticket.await.expect("commit"));
                }
                seqs
            })
        })
        .collect();
    let mut killed = 0;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        killed += db.terminate_connections().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(killed >= 8, "killed {killed} connections");
    let mut ticketed = HashMap::new();
    for (p, producer) in producers.into_iter().enumerate() {
        let seqs = tokio::time::timeout(Duration::from_secs(120), producer)
            .await
            .expect("every ticket resolved")
            .unwrap();
        for (i, seq) in seqs.into_iter().enumerate() {
            assert!(
                ticketed.insert(seq, format!("p{p}-{i}")).is_none(),
                "seq {seq} twice"
            );
        }
    }
    let admin = db.client().await;
    let rows = admin
        .query("SELECT seq, si FROM outcomes ORDER BY seq", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), ticketed.len(), "every batch exactly once");
    for (i, row) in rows.iter().enumerate() {
        let seq: i64 = row.get(0);
        let si: &[u8] = row.get(1);
        assert_eq!(seq, i as i64 + 1);
        assert_eq!(ticketed[&(seq as u64)].as_bytes(), si, "seq {seq}");
    }
    let records: i64 = admin
        .query_one("SELECT count(*) FROM records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(records as usize, ticketed.len());
    store.close().await.unwrap();
}

/// The answer to a COMMIT is lost (the connection breaks after the server received it): the
/// writer finds out that the group committed and reports it once, with its seqs. And when
/// the request itself is lost, the group is written again: once.
#[tokio::test]
async fn a_group_whose_answer_was_lost_is_found_committed_or_written_again() {
    let db = database().await;
    let proxy = Proxy::start(&db.url).await;
    let store = PgStore::open(PgOptions::new(proxy.url(&db.url)))
        .await
        .unwrap();
    assert_eq!(append(&store, vec![outcome(b"t", b"c", b"0")]).await, [1]);

    for (round, mode) in [Mode::DropAnswers, Mode::DropRequests, Mode::DropAnswers]
        .into_iter()
        .enumerate()
    {
        proxy.set(mode);
        let si = format!("lost-{round}");
        let ticket = store.submit(vec![
            Mutation::Append(outcome(b"t", b"c", si.as_bytes())),
            Mutation::PutRecord(record(si.as_bytes(), RecordState::Pending)),
        ]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.cut();
        let seqs = tokio::time::timeout(Duration::from_secs(30), ticket)
            .await
            .expect("the ticket resolves once the connection is back")
            .expect("committed");
        assert_eq!(seqs, [round as u64 + 2], "{mode:?}");
    }
    let admin = db.client().await;
    let sis: Vec<Vec<u8>> = admin
        .query("SELECT si FROM outcomes ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(sis, [&b"0"[..], b"lost-0", b"lost-1", b"lost-2"]);
    assert_eq!(store.load_records().await.unwrap().len(), 3);
    // And the store goes on as before.
    assert_eq!(append(&store, vec![outcome(b"t", b"c", b"4")]).await, [5]);
    store.close().await.unwrap();
}

/// The database away for a while: tickets wait (nothing is acknowledged), and the store
/// resumes by itself when it is back.
#[tokio::test]
async fn tickets_wait_while_the_database_is_away() {
    let db = database().await;
    let proxy = Proxy::start(&db.url).await;
    let store = PgStore::open(PgOptions::new(proxy.url(&db.url)))
        .await
        .unwrap();
    proxy.set(Mode::DropRequests);
    let ticket = store.submit(vec![Mutation::Append(outcome(b"t", b"c", b"1"))]);
    let mut ticket = Box::pin(ticket);
    // Broken and unreachable for a while: each reconnect attempt goes nowhere.
    for _ in 0..5 {
        proxy.cut();
        proxy.set(Mode::DropRequests);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut ticket)
                .await
                .is_err(),
            "acknowledged while the database was away"
        );
    }
    proxy.cut();
    let seqs = tokio::time::timeout(Duration::from_secs(30), ticket)
        .await
        .expect("resumed by itself")
        .unwrap();
    assert_eq!(seqs, [1]);
    store.close().await.unwrap();
}

/// A database out of space (SQLSTATE 53100, raised here by triggers, deterministically):
/// the group fails as out of space, the store is full and fenced as the SQLite store is, a
/// write of cursors alone goes on, the reload lowers the fence, and the probe finds room again
/// once there is.
#[tokio::test]
async fn out_of_space_fails_the_group_fences_the_book_and_is_probed_away() {
    let db = database().await;
    let store = db.open().await;
    store
        .submit(vec![
            Mutation::PutRecord(record(b"kept", RecordState::Pending)),
            Mutation::PutTransaction(transaction(b"p", 0)),
        ])
        .await
        .unwrap();
    let admin = db.client().await;
    admin
        .batch_execute(
            "CREATE FUNCTION no_room() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; END $$;
             CREATE TRIGGER no_room BEFORE INSERT ON outcomes
               FOR EACH STATEMENT EXECUTE FUNCTION no_room();
             CREATE TRIGGER no_room BEFORE INSERT OR UPDATE ON records
               FOR EACH STATEMENT EXECUTE FUNCTION no_room();
             CREATE TRIGGER no_room BEFORE INSERT ON ozbus_probe
               FOR EACH STATEMENT EXECUTE FUNCTION no_room();",
        )
        .await
        .unwrap();
    let failed = store
        .submit(vec![
            Mutation::PutRecord(record(b"big", RecordState::Pending)),
            Mutation::Append(outcome(b"t", b"c", b"big")),
        ])
        .await
        .unwrap_err();
    assert!(failed.is_out_of_space(), "{failed}");
    assert!(store.is_full() && store.fenced());
    assert_eq!(store.last_seq(), 0);
    let small = store
        .submit(vec![Mutation::DeleteRecord {
            tenant: b(b"t"),
            si: b(b"kept"),
        }])
        .await
        .unwrap_err();
    assert!(
        matches!(&small, StoreError::OutOfSpace(cause) if matches!(**cause, StoreError::Fenced)),
        "{small}"
    );
    let cursor = store.submit(vec![Mutation::MoveCursor {
        tenant: b(b"t"),
        ps: b(b"p"),
        cursor: 7,
    }]);
    assert_eq!(cursor.await.unwrap(), Vec::<u64>::new());
    let records = store.reload_records().await.unwrap();
    let sis: Vec<&[u8]> = records.iter().map(|r| r.si.as_ref()).collect();
    assert_eq!(sis, [b"kept".as_slice()]);
    assert!(!store.fenced(), "the reload lowers the fence");
    // Still full: the probe fails like the writes.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(store.is_full());

    admin
        .batch_execute(
            "DROP TRIGGER no_room ON outcomes; DROP TRIGGER no_room ON records; \
             DROP TRIGGER no_room ON ozbus_probe;",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.is_full() {
        assert!(Instant::now() < deadline, "still full");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let probes: i64 = admin
        .query_one("SELECT count(*) FROM ozbus_probe", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(probes, 0, "the probe cleans up after itself");
    assert_eq!(
        append(&store, vec![outcome(b"t", b"c", b"after")]).await,
        [1]
    );
    assert_eq!(store.load_transactions().await.unwrap()[0].cursor, 7);
    store.close().await.unwrap();
}

// ---- throughput ----

/// Not a test (nothing is asserted about time): appends 1,000,000 outcomes like the bench's
/// CF outcomes through 4 producers with 256 single-outcome batches in flight each, on
/// PostgreSQL and on SQLite, and prints outcomes/s. Release build:
/// `cargo test --release -p ozbus --test pg_store -- --ignored --nocapture report_throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn report_throughput_postgres_and_sqlite() {
    let n: usize = std::env::var("OZBUS_BENCH_OUTCOMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    const PRODUCERS: usize = 4;
    const WINDOW: usize = 256;
    fn cf(p: usize, i: usize) -> Mutation {
        let si = format!("{p}-{}", 1_700_000_000_000_000usize + i);
        let mut o = NewOutcome::new(
            b(b"default"),
            OutcomeClass::Failure,
            b(b"bench"),
            Bytes::from(si),
            2,
        );
        o.ao = None;
        Mutation::Append(o)
    }
    async fn run<F, T>(submit: F, n: usize) -> f64
    where
        F: Fn(Vec<Mutation>) -> T + Clone + Send + 'static,
        T: std::future::Future<Output = Result<Vec<u64>, StoreError>> + Send + 'static,
    {
        let started = Instant::now();
        let tasks: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let submit = submit.clone();
                tokio::spawn(async move {
                    let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
                    for i in 0..n / PRODUCERS {
                        pending.push_back(submit(vec![cf(p, i)]));
                        if pending.len() >= WINDOW {
                            pending.pop_front().unwrap().await.unwrap();
                        }
                    }
                    for ticket in pending {
                        ticket.await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        n as f64 / started.elapsed().as_secs_f64()
    }

    let db = database().await;
    let store = db.open().await;
    let pg = {
        let store = store.clone();
        run(move |batch| store.submit(batch), n).await
    };
    assert_eq!(store.last_seq(), n as u64);
    store.close().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let sqlite = ozbus::store::SqliteStore::open(ozbus::store::StoreOptions {
        dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    let lite = {
        let store = sqlite.clone();
        run(move |batch| store.submit(batch), n).await
    };
    tokio::task::spawn_blocking(move || sqlite.close().unwrap())
        .await
        .unwrap();
    println!("{n} outcomes: postgres {pg:.0}/s, sqlite {lite:.0}/s");
}

/// The history reads of both backends: the same pages, calls and records from the same log.
mod history {
    use super::*;
    use ozbus::store::{OutcomePage, OutcomeQuery, SqliteStore, StoreOptions};

    /// What the history reads need of a store; the same methods on both backends.
    trait Reads {
        async fn page(&self, query: OutcomeQuery) -> OutcomePage;
        async fn call(&self, tenant: &[u8], cn: &[u8], si: &[u8], limit: usize) -> Vec<u64>;
        async fn record(&self, tenant: &[u8], si: &[u8]) -> Option<CallRecord>;
        async fn write(&self, mutations: Vec<Mutation>) -> Vec<u64>;
    }

    impl Reads for SqliteStore {
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

    impl Reads for PgStore {
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

    async fn exercise(store: &impl Reads) -> Vec<i64> {
        let mut accepted = Vec::new();
        // Three commits, a few milliseconds apart: three times to cut a time range at.
        for (from, to) in [(1, 10), (11, 20), (21, 30)] {
            let seqs = store
                .write((from..=to).map(|n| Mutation::Append(nth(n))).collect())
                .await;
            assert_eq!(seqs, (from..=to).collect::<Vec<_>>());
            accepted.push(crate::now_ms());
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
    async fn times(store: &impl Reads, first_commit_ms: i64) {
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
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteStore::open(StoreOptions {
            dir: dir.path().to_path_buf(),
            ..StoreOptions::default()
        })
        .unwrap();
        let first = exercise(&sqlite).await;
        times(&sqlite, first[0]).await;
        let db = database().await;
        let pg = db.open().await;
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
        tokio::task::spawn_blocking(move || sqlite.close().unwrap())
            .await
            .unwrap();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Persisted transactions are found one at a time (by PersistToken or TX, counted per
/// tenant, due for the TTL), as on SQLite (`store_state.rs`).
#[tokio::test]
async fn persisted_transactions_are_found_one_at_a_time() {
    let db = database().await;
    let store = db.open().await;
    let mut other = transaction(b"b", 2);
    other.tx = b(b"x");
    other.released_ms = Some(5_000);
    let mut elsewhere = transaction(b"a", 3);
    elsewhere.tenant = b(b"u");
    store
        .submit(vec![
            Mutation::PutTransaction(transaction(b"a", 1)),
            Mutation::PutTransaction(other.clone()),
            Mutation::PutTransaction(elsewhere),
        ])
        .await
        .unwrap();
    let mut counts = store.count_transactions().await.unwrap();
    counts.sort();
    assert_eq!(counts, vec![(b(b"t"), 2), (b(b"u"), 1)]);
    let found = |ps: Option<&'static [u8]>, tx: &'static [u8]| {
        let store = store.clone();
        async move {
            let mut rows = store.find_transactions(b"t", ps, tx).await.unwrap();
            rows.sort_by(|a, b| a.ps.cmp(&b.ps));
            rows.into_iter().map(|t| t.ps).collect::<Vec<_>>()
        }
    };
    assert_eq!(found(Some(b"a"), b"a").await, [b(b"a")]);
    assert_eq!(found(Some(b"a"), b"x").await, [b(b"a"), b(b"b")]);
    assert_eq!(found(None, b"x").await, [b(b"b")]);
    assert!(found(Some(b"z"), b"z").await.is_empty());
    let due = |cutoff| {
        let store = store.clone();
        async move {
            let rows = store.released_transactions(cutoff, 10).await.unwrap();
            rows.into_iter().map(|t| t.ps).collect::<Vec<_>>()
        }
    };
    assert!(due(4_999).await.is_empty());
    assert_eq!(due(5_000).await, [b(b"b")]);
    // This node holds the held ones: none of them was held by a node that is gone.
    assert_eq!(store.held_at_stop(0, 10).await.unwrap(), (vec![], None));
    store.close().await.unwrap();
}

/// A held row counts as held at a stop once the node that wrote it is gone: closed (its row in
/// `nodes` removed) or dead (its heartbeat older than the lease); never while it is alive.
#[tokio::test]
async fn rows_held_by_a_node_that_is_gone_are_found_by_the_pass() {
    let db = database().await;
    let first = db.open().await;
    first
        .submit(vec![Mutation::PutTransaction(transaction(b"a", 1))])
        .await
        .unwrap();
    let second = db.open().await;
    second
        .submit(vec![Mutation::PutTransaction(PersistedTransaction {
            tx: b(b"second"),
            ..transaction(b"s", 4)
        })])
        .await
        .unwrap();
    // Both alive: nothing is held by a node that is gone.
    assert_eq!(second.held_at_stop(0, 10).await.unwrap(), (vec![], None));
    assert_eq!(first.held_at_stop(0, 10).await.unwrap(), (vec![], None));

    // The first dies without closing: alive until its heartbeat is older than the lease.
    let first_node = first.node();
    drop(first);
    assert_eq!(second.held_at_stop(0, 10).await.unwrap(), (vec![], None));
    db.client()
        .await
        .execute(
            "UPDATE nodes SET seen_ms = seen_ms - 60000 WHERE node = $1",
            &[&first_node],
        )
        .await
        .unwrap();
    let (held, end) = second.held_at_stop(0, 10).await.unwrap();
    assert_eq!(end, None);
    assert_eq!(
        held.iter().map(|t| &t.ps[..]).collect::<Vec<_>>(),
        [b"a"],
        "{held:?}"
    );
    // A step at a time: one row a step, then the end.
    let (mut steps, mut at) = (Vec::new(), 0);
    loop {
        let (rows, next) = second.held_at_stop(at, 1).await.unwrap();
        steps.push(rows);
        match next {
            Some(next) => at = next,
            None => break,
        }
    }
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert_eq!(steps.concat(), held);

    // The second closes: a node opened later finds its row too.
    second.close().await.unwrap();
    let third = db.open().await;
    let (held, _) = third.held_at_stop(0, 10).await.unwrap();
    let mut names = held.iter().map(|t| &t.ps[..]).collect::<Vec<_>>();
    names.sort();
    assert_eq!(names, [&b"a"[..], b"s"]);
    third.close().await.unwrap();
}

/// Rows stored without a TX (before schema 2) get it from their request when a store opens,
/// read by the service's `request_tx`; a request it cannot read leaves none.
#[tokio::test]
async fn opening_fills_in_the_tx_of_rows_stored_without_one() {
    let db = database().await;
    db.open().await.close().await.unwrap();
    db.client()
        .await
        .batch_execute(
            "INSERT INTO transactions (tenant, ps, request, cursor, released_ms) VALUES \
             ('t', 'p', convert_to('EO\\TXold\\FO\\PSp', 'UTF8'), 7, NULL), \
             ('t', 'q', 'garbage', 8, 1)",
        )
        .await
        .unwrap();
    let store = PgStore::open(PgOptions {
        request_tx: ozbus::subs::request_tx,
        ..db.options()
    })
    .await
    .unwrap();
    let found = store.find_transactions(b"t", None, b"old").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (&found[0].ps[..], &found[0].tx[..], found[0].cursor),
        (&b"p"[..], &b"old"[..], 7)
    );
    let unread = store
        .find_transactions(b"t", Some(b"q"), b"")
        .await
        .unwrap();
    assert_eq!(unread.len(), 1);
    assert!(unread[0].tx.is_empty());
    store.close().await.unwrap();
}
