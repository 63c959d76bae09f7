//! What only the PostgreSQL store has, as a user of it observes it (the tests both backends
//! share, through `Store`, are in `store_log.rs`, `store_state.rs` and `store_concurrency.rs`;
//! the call book's lease is in `pg_book.rs`): a batch PostgreSQL refuses (and the idempotency
//! keys of its group), its schema table, nodes opening a database at once, two stores on one
//! log, sequence numbers in the order of visibility, lost connections during commits, a
//! database out of space, rows held by a node that is gone, takeovers of persisted
//! transactions between nodes and TX claims, and the TX filled in at open. A store that writes
//! call records or the log holds the call book first (`pg_common::hold_book`). Each test has a
//! database of its own on the server named by `OZBUS_TEST_PG_URL` (`scripts/test` starts one).

mod pg_common;
mod store_common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ozbus::store::postgres::{PgOptions, PgStore};
use ozbus::store::BookHolder;
use ozbus::store::{
    Mutation, NewOutcome, Outcome, OutcomeClass, PersistedTransaction, RecordState, Store,
    StoreError,
};
use pg_common::{database, hold_book, wait_for_holder, Mode, Proxy};
use store_common::{
    append, b, check_the_tx_filled_in, held_in_steps_of_one, outcome, record, seqs, transaction,
    Kind, Place,
};

// ---- one store ----

/// A trigger that refuses every call record whose SI is `bad`, standing in for a constraint
/// that should never be violated.
const REFUSE_BAD: &str = "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
       IF NEW.si = 'bad'::bytea THEN
         RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation';
       END IF;
       RETURN NEW;
     END $$;
     CREATE TRIGGER refuse_bad BEFORE INSERT ON records
       FOR EACH ROW EXECUTE FUNCTION refuse_bad();";

/// A batch PostgreSQL refuses for a reason that does not go away (here a trigger's check
/// violation, standing in for a constraint that should never be violated) fails alone: the
/// group is written again with a savepoint per batch, and the batches around it commit with
/// contiguous seqs.
#[tokio::test]
async fn a_batch_postgres_refuses_fails_alone() {
    let db = database().await;
    let store = db.open_holding().await;
    let admin = db.client().await;
    admin.batch_execute(REFUSE_BAD).await.unwrap();
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

/// Idempotency keys get the first seq of their batch also when a group is written again a
/// batch at a time (one of its batches refused); the refused batch's key is not stored.
#[tokio::test]
async fn keys_of_a_group_written_batch_by_batch_get_their_seqs() {
    let db = database().await;
    let store = db.open_holding().await;
    db.client().await.batch_execute(REFUSE_BAD).await.unwrap();
    // One group (nothing runs before the first await): a keyed record without an outcome, a
    // keyed outcome, the refused batch, a keyed outcome after it.
    let batch = |si: &[u8], append: bool| {
        let mut batch = vec![Mutation::PutRecord(record(si, RecordState::Pending))];
        if append {
            batch.push(Mutation::Append(outcome(b"t", b"c", si)));
        }
        batch.push(Mutation::RememberKey {
            tenant: b(b"t"),
            key: b(si),
        });
        batch
    };
    let tickets = [
        store.submit(batch(b"mc", false)),
        store.submit(batch(b"a", true)),
        store.submit(batch(b"bad", true)),
        store.submit(batch(b"b", true)),
    ];
    let results = futures::future::join_all(tickets).await;
    assert!(results[2].is_err(), "{:?}", results[2]);
    let seqs: Vec<_> = [0, 1, 3]
        .map(|i| results[i].as_ref().unwrap().clone())
        .into();
    assert_eq!(seqs, [vec![], vec![1], vec![2]]);
    for (key, seq) in [
        (&b"mc"[..], Some(None)),
        (b"a", Some(Some(1))),
        (b"bad", None),
        (b"b", Some(Some(2))),
    ] {
        let found = store.key_committed(b"t", key, 0).await.unwrap();
        assert_eq!(found.map(|used| used.seq), seq, "{key:?}");
    }
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
    check_the_tx_filled_in(&store).await;
    store.close().await.unwrap();
}

// ---- several nodes on one database ----

/// Appends `count` single-outcome batches named `<name>-<i>`, `window` in flight at a time;
/// returns each one's seq, in submission order. The store holds the book.
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

/// Takes the book from the node holding it (`from`, by ending its lease connection) and waits
/// until `to` holds it.
async fn hand_over(db: &pg_common::TestDb, from: &PgStore, to: &PgStore) {
    db.kill_lease(from.node()).await;
    wait_for_holder(to, Duration::from_secs(10), |holder| {
        matches!(holder, BookHolder::Me { .. })
    })
    .await;
}

/// A reader of store A sees store B's outcomes, then A's own once the book passed to A, in
/// order, without gaps, as they are committed: B's commits reach A through LISTEN/NOTIFY, and
/// A's tail never holds a run with B's outcomes missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_one_node_follows_every_node_in_order() {
    let db = database().await;
    let a = PgStore::open(PgOptions {
        tail_capacity: 256,
        ..db.options()
    })
    .await
    .unwrap();
    let b_store = db.open_holding().await;
    a.advertise("a".into());
    const EACH: usize = 3_000;
    let reader = tokio::spawn(follow(a.clone(), 2 * EACH as u64));
    let seqs_b = produce(b_store.clone(), "b", EACH, 16).await;
    hand_over(&db, &b_store, &a).await;
    let seqs_a = produce(a.clone(), "a", EACH, 16).await;
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

/// Appends single-outcome batches named `<name>-<i>`, 64 in flight, until `stop`; a batch
/// refused because the node does not hold the book is not written, and the producer waits
/// until it holds it again. Returns the seqs of the batches written, with their names.
async fn produce_while_holding(
    store: PgStore,
    name: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<(u64, String)>, usize) {
    let mut pending = std::collections::VecDeque::new();
    let mut written = Vec::new();
    let mut refused = 0;
    let mut i = 0;
    let mut settle = |si: String, result: Result<Vec<u64>, StoreError>| match result {
        Ok(seqs) => written.push((seqs[0], si)),
        Err(StoreError::NotHolder) => refused += 1,
        Err(error) => panic!("{si}: {error}"),
    };
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if !matches!(*store.book_holder().borrow(), BookHolder::Me { .. }) {
            while let Some((si, ticket)) = pending.pop_front() {
                settle(si, ticket.await);
            }
            let mut holder = store.book_holder();
            let _ = tokio::time::timeout(
                Duration::from_millis(100),
                holder.wait_for(|h| matches!(h, BookHolder::Me { .. })),
            )
            .await;
            continue;
        }
        let si = format!("{name}-{i}");
        i += 1;
        let ticket = store.submit(vec![Mutation::Append(outcome(b"t", b"c", si.as_bytes()))]);
        pending.push_back((si, ticket));
        if pending.len() >= 64 {
            let (si, ticket) = pending.pop_front().unwrap();
            settle(si, ticket.await);
        }
    }
    for (si, ticket) in pending {
        settle(si, ticket.await);
    }
    (written, refused)
}

/// While the book passes from node to node under load, sequence numbers become visible in
/// order: at no moment can a reader see a seq while a smaller one is still to come (every
/// snapshot holds exactly 1..=max). A sequence (BIGSERIAL) would fail this: numbers are taken
/// before commit. A batch refused as not the holder's is not written and takes no number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_are_handed_out_in_the_order_of_visibility() {
    let db = database().await;
    let a = db.open_holding().await;
    let b_store = db.open().await;
    b_store.advertise("b".into());
    let admin = db.client().await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = tokio::spawn({
        let done = done.clone();
        async move {
            let mut polls = 0u64;
            let mut partial = 0u64;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::Acquire);
                let row = admin
                    .query_one(
                        "SELECT count(*), coalesce(max(seq), 0), coalesce(min(seq), 1) \
                         FROM outcomes",
                        &[],
                    )
                    .await
                    .unwrap();
                let (count, max, min): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
                assert_eq!(min, 1, "the log starts at 1");
                assert_eq!(count, max, "a hole below seq {max} was visible");
                polls += 1;
                if count > 0 {
                    partial += 1;
                }
                if finished {
                    return (polls, partial, count);
                }
            }
        }
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let from_a = tokio::spawn(produce_while_holding(a.clone(), "a", stop.clone()));
    let from_b = tokio::spawn(produce_while_holding(b_store.clone(), "b", stop.clone()));
    // The book goes from A to B and back, twice, while both write.
    for (from, to) in [
        (&a, &b_store),
        (&b_store, &a),
        (&a, &b_store),
        (&b_store, &a),
    ] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        hand_over(&db, from, to).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (written_a, _) = from_a.await.unwrap();
    let (written_b, _) = from_b.await.unwrap();
    done.store(true, std::sync::atomic::Ordering::Release);
    let (polls, partial, count) = tokio::time::timeout(Duration::from_secs(60), poller)
        .await
        .expect("poller done")
        .unwrap();
    assert!(
        partial > 10,
        "the poller looked while they wrote ({partial} of {polls})"
    );
    // Every batch written holds a seq of its own, and nothing else is in the log.
    let mut all: Vec<u64> = written_a.iter().chain(&written_b).map(|w| w.0).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=count as u64).collect::<Vec<_>>());
    let sis: HashMap<u64, &str> = written_a
        .iter()
        .chain(&written_b)
        .map(|(seq, si)| (*seq, si.as_str()))
        .collect();
    let rows = db
        .client()
        .await
        .query("SELECT seq, si FROM outcomes ORDER BY seq", &[])
        .await
        .unwrap();
    for row in rows {
        let (seq, si): (i64, &[u8]) = (row.get(0), row.get(1));
        assert_eq!(sis[&(seq as u64)].as_bytes(), si, "seq {seq}");
    }
    // Both nodes took turns, rather than one writing everything.
    let (first_a, first_b) = (written_a[0].0, written_b[0].0);
    assert!(written_a.iter().any(|w| w.0 > first_b) && written_b.iter().any(|w| w.0 > first_a));
    a.close().await.unwrap();
    b_store.close().await.unwrap();
}

/// Retention applied by one node: the other learns the new oldest seq and stops serving the
/// removed outcomes from its tail, also once it holds the book and appends.
#[tokio::test]
async fn retention_on_one_node_is_seen_by_the_other() {
    let db = database().await;
    let a = db.open_holding().await;
    let b_store = db.open().await;
    b_store.advertise("b".into());
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
    hand_over(&db, &a, &b_store).await;
    assert_eq!(
        append(&b_store, vec![outcome(b"t", b"c", b"2")]).await,
        [11]
    );
    assert_eq!(b_store.oldest_seq(), Some(11));
    a.close().await.unwrap();
    b_store.close().await.unwrap();
}

/// A held row counts as held at a stop once the node that wrote it is gone: closed (its row in
/// `nodes` removed) or dead (its heartbeat older than the lease); never while it is alive. The
/// pass that finds it writes it released, from when its node was last seen: from then on the
/// persist TTL finds it by its release time, as any released one.
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
    // A step at a time: one row a step, then the end.
    let steps = held_in_steps_of_one(&second).await;
    assert_eq!(steps.len(), 3, "{steps:?}");
    let held = steps.concat();
    assert_eq!(
        held.iter().map(|t| &t.ps[..]).collect::<Vec<_>>(),
        [b"a"],
        "{held:?}"
    );
    // No node has gone since that pass began: the next one (the service passes again every
    // few seconds) reads nothing.
    assert_eq!(second.held_at_stop(0, 10).await.unwrap(), (vec![], None));

    // Written released by that pass, at the time its node was last seen.
    let released = second.released_transactions(i64::MAX, 10).await.unwrap();
    assert_eq!(released, held, "{released:?}");

    // The second closes: a node opened later finds its row (the first's is released already).
    second.close().await.unwrap();
    let third = db.open().await;
    let (held, _) = third.held_at_stop(0, 10).await.unwrap();
    let names = held.iter().map(|t| &t.ps[..]).collect::<Vec<_>>();
    assert_eq!(names, [&b"s"[..]]);
    let mut released = third.released_transactions(i64::MAX, 10).await.unwrap();
    released.sort_by(|a, b| a.ps.cmp(&b.ps));
    assert_eq!(
        released.iter().map(|t| &t.ps[..]).collect::<Vec<_>>(),
        [&b"a"[..], b"s"]
    );
    third.close().await.unwrap();
}

/// A node that writes a persisted transaction as held takes it over: the node that held it
/// hears so (a wake-up naming the transaction), no longer owns it, and its cursor writes and
/// its release change nothing any more. Deleting a held one is announced too.
#[tokio::test]
async fn a_takeover_is_announced_and_fences_the_node_that_held_it() {
    let db = database().await;
    let first = db.open().await;
    let second = db.open().await;
    let key = (b(b"t"), b(b"k"));
    let keys = std::slice::from_ref(&key);
    first
        .submit(vec![Mutation::PutTransaction(transaction(b"k", 3))])
        .await
        .unwrap();
    assert_eq!(first.not_owned(keys).await.unwrap(), []);
    assert_eq!(second.not_owned(keys).await.unwrap(), keys);
    let mut heard = first.owner_changes();
    second
        .submit(vec![Mutation::PutTransaction(transaction(b"k", 5))])
        .await
        .unwrap();
    let change = tokio::time::timeout(Duration::from_secs(10), heard.recv())
        .await
        .expect("announced")
        .unwrap();
    assert_eq!(change.node, second.node());
    assert_eq!(change.key, Some(key.clone()));
    assert_eq!(first.not_owned(keys).await.unwrap(), keys);
    assert_eq!(second.not_owned(keys).await.unwrap(), []);

    // What the first node still writes of it changes nothing.
    let mut released = transaction(b"k", 9);
    released.released_ms = Some(1);
    first
        .submit(vec![
            Mutation::MoveCursor {
                tenant: b(b"t"),
                ps: b(b"k"),
                cursor: 9,
            },
            Mutation::PutTransaction(released),
            Mutation::RewindCursor {
                tenant: b(b"t"),
                ps: b(b"k"),
                cursor: 0,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        second.load_transactions().await.unwrap(),
        [transaction(b"k", 5)]
    );
    // The owner's do.
    second
        .submit(vec![Mutation::MoveCursor {
            tenant: b(b"t"),
            ps: b(b"k"),
            cursor: 7,
        }])
        .await
        .unwrap();
    assert_eq!(second.load_transactions().await.unwrap()[0].cursor, 7);

    // Ended while held: every node hears it, with nobody as the owner.
    let mut heard = second.owner_changes();
    first
        .submit(vec![Mutation::DeleteTransaction {
            tenant: b(b"t"),
            ps: b(b"k"),
        }])
        .await
        .unwrap();
    let change = tokio::time::timeout(Duration::from_secs(10), heard.recv())
        .await
        .expect("announced")
        .unwrap();
    assert_eq!((change.node, change.key), (0, Some(key.clone())));
    assert_eq!(second.not_owned(keys).await.unwrap(), [key]);
    first.close().await.unwrap();
    second.close().await.unwrap();
}

/// A transaction without PS claims its TX for its node: the other nodes see it taken while
/// that node is alive and has not let it go; a claim never replaces another live node's.
#[tokio::test]
async fn a_tx_claimed_by_a_node_is_taken_for_the_others_while_it_is_alive() {
    let db = database().await;
    let first = db.open().await;
    let second = db.open().await;
    let claim = |tx: &'static [u8]| Mutation::ClaimTx {
        tenant: b(b"t"),
        tx: b(tx),
    };
    let unclaim = |tx: &'static [u8]| Mutation::UnclaimTx {
        tenant: b(b"t"),
        tx: b(tx),
    };
    first.submit(vec![claim(b"x"), claim(b"y")]).await.unwrap();
    assert!(second.tx_active_elsewhere(b"t", b"x").await.unwrap());
    assert!(!first.tx_active_elsewhere(b"t", b"x").await.unwrap());
    assert!(!second.tx_active_elsewhere(b"u", b"x").await.unwrap());
    // Another node's claim and release of it leave the first node's alone.
    second
        .submit(vec![claim(b"x"), unclaim(b"x")])
        .await
        .unwrap();
    assert!(second.tx_active_elsewhere(b"t", b"x").await.unwrap());
    first.submit(vec![unclaim(b"x")]).await.unwrap();
    assert!(!second.tx_active_elsewhere(b"t", b"x").await.unwrap());
    // A node that is gone claims nothing: its claims count for nothing, and a claim of
    // another node replaces them.
    let first_node = first.node();
    drop(first);
    assert!(second.tx_active_elsewhere(b"t", b"y").await.unwrap());
    db.client()
        .await
        .execute(
            "UPDATE nodes SET seen_ms = seen_ms - 60000 WHERE node = $1",
            &[&first_node],
        )
        .await
        .unwrap();
    assert!(!second.tx_active_elsewhere(b"t", b"y").await.unwrap());
    second.submit(vec![claim(b"y")]).await.unwrap();
    let third = db.open().await;
    assert!(third.tx_active_elsewhere(b"t", b"y").await.unwrap());
    // A node that closes lets go of its claims.
    second.close().await.unwrap();
    assert!(!third.tx_active_elsewhere(b"t", b"y").await.unwrap());
    third.close().await.unwrap();
}

// ---- faults ----

/// Every connection of the store but the call book's lease is killed, again and again, while
/// batches are in flight: every ticket resolves Ok exactly once, and the log holds every batch
/// exactly once, at the seq its ticket said. (A lost lease is `pg_book.rs`'s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_nothing_and_apply_nothing_twice() {
    let db = database().await;
    let store = db.open_holding().await;
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
        killed += db.terminate_connections_but_leases().await;
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
/// the request itself is lost, the group is written again: once. (The call book's lease
/// connection is spared: the node keeps the book.)
#[tokio::test]
async fn a_group_whose_answer_was_lost_is_found_committed_or_written_again() {
    let db = database().await;
    let proxy = Proxy::start_sparing_leases(&db.url).await;
    let store = PgStore::open(PgOptions::new(proxy.url(&db.url)))
        .await
        .unwrap();
    hold_book(&store).await;
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
/// resumes by itself when it is back. The call book's lease went with the database, so a
/// batch of the book that was waiting fails as not the holder's, unwritten; the others are
/// written; and the store takes the book again by itself.
#[tokio::test]
async fn tickets_wait_while_the_database_is_away() {
    let db = database().await;
    let proxy = Proxy::start(&db.url).await;
    let store = PgStore::open(PgOptions::new(proxy.url(&db.url)))
        .await
        .unwrap();
    let epoch = hold_book(&store).await;
    proxy.set(Mode::DropRequests);
    let mut book = Box::pin(store.submit(vec![Mutation::Append(outcome(b"t", b"c", b"1"))]));
    let mut other = Box::pin(store.submit(vec![Mutation::PutTransaction(transaction(b"p", 3))]));
    // Broken and unreachable for a while: each reconnect attempt goes nowhere.
    for _ in 0..5 {
        proxy.cut();
        proxy.set(Mode::DropRequests);
        let waited = tokio::time::timeout(Duration::from_millis(200), async {
            tokio::select! {
                _ = &mut book => {}
                _ = &mut other => {}
            }
        });
        assert!(
            waited.await.is_err(),
            "answered while the database was away"
        );
    }
    proxy.cut();
    let resolved =
        tokio::time::timeout(Duration::from_secs(30), async { (book.await, other.await) })
            .await
            .expect("resumed by itself");
    assert!(
        matches!(resolved.0, Err(StoreError::NotHolder)),
        "{:?}",
        resolved.0
    );
    assert_eq!(resolved.1.unwrap(), Vec::<u64>::new());
    assert_eq!(store.load_transactions().await.unwrap().len(), 1);
    assert_eq!(store.last_seq(), 0);
    let held = wait_for_holder(&store, Duration::from_secs(10), |holder| {
        matches!(holder, BookHolder::Me { .. })
    })
    .await;
    assert!(
        matches!(held, BookHolder::Me { epoch: later } if later > epoch),
        "{held:?}"
    );
    assert_eq!(append(&store, vec![outcome(b"t", b"c", b"2")]).await, [1]);
    store.close().await.unwrap();
}

/// The group numbers a node keeps to resolve a lost COMMIT are removed once it is stopped, by
/// whichever node beats next (a node killed and started again in its directory is marked
/// stopped then; one that closes removes its own): they do not pile up as nodes come and go.
#[tokio::test]
async fn a_stopped_node_s_group_numbers_are_removed() {
    let db = database().await;
    let running = db.open().await;
    running
        .submit(vec![Mutation::PutTransaction(transaction(b"p", 3))])
        .await
        .unwrap();
    let client = db.client().await;
    // A node that was killed, and marked stopped when another started in its directory.
    client
        .batch_execute(
            "INSERT INTO nodes (node, started_ms, seen_ms, stopped) VALUES (-7, 0, 0, true);
             INSERT INTO ozbus_commits (node, k) VALUES (-7, 1), (-7, 2);",
        )
        .await
        .unwrap();
    let count = |node: i64| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT count(*) FROM ozbus_commits WHERE node = $1",
                    &[&node],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(-7).await > 0 {
        assert!(Instant::now() < deadline, "still there");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let own: i64 = client
        .query_one("SELECT count(*) FROM ozbus_commits WHERE node <> -7", &[])
        .await
        .unwrap()
        .get(0);
    assert!(own > 0, "the running node's own stay");
    running.close().await.unwrap();
}

/// Closing while the database does not answer gives up after a bounded wait, with an error
/// that says what was not stored (nothing of it was acknowledged), instead of hanging a stop.
#[tokio::test]
async fn closing_does_not_wait_forever_for_a_database_that_is_away() {
    let db = database().await;
    let proxy = Proxy::start(&db.url).await;
    let store = PgStore::open(PgOptions::new(proxy.url(&db.url)))
        .await
        .unwrap();
    proxy.set(Mode::DropRequests);
    let ticket = store.submit(vec![Mutation::PutTransaction(transaction(b"p", 3))]);
    let began = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(30), store.clone().close())
        .await
        .expect("close returns by itself");
    assert!(
        matches!(closed, Err(StoreError::CloseTimedOut(_))),
        "{closed:?}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(25),
        "{:?}",
        began.elapsed()
    );
    assert!(
        ticket.await.is_err(),
        "nothing unanswered is reported stored"
    );
}

/// A database out of space (SQLSTATE 53100, raised here by triggers, deterministically):
/// the group fails as out of space, the store is full and fenced as the SQLite store is, a
/// write of cursors alone goes on, the reload lowers the fence, and the probe finds room again
/// once there is.
#[tokio::test]
async fn out_of_space_fails_the_group_fences_the_book_and_is_probed_away() {
    let db = database().await;
    let store = db.open_holding().await;
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
    async fn run(store: &Store, n: usize) -> f64 {
        let started = Instant::now();
        let tasks: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut pending = std::collections::VecDeque::with_capacity(WINDOW);
                    for i in 0..n / PRODUCERS {
                        pending.push_back(store.submit(vec![cf(p, i)]));
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

    let mut rates = Vec::new();
    for kind in [Kind::Postgres, Kind::Sqlite] {
        let place = Place::new(kind).await;
        let store = place.open().await;
        rates.push(run(&store, n).await);
        assert_eq!(store.last_seq(), n as u64);
        store.close().await.unwrap();
    }
    let [pg, lite] = rates[..] else {
        unreachable!()
    };
    println!("{n} outcomes: postgres {pg:.0}/s, sqlite {lite:.0}/s");
}
