//! The call book on PostgreSQL, as nodes sharing one database observe it: who holds the book
//! (one node at a time, only among those that bid), what only its holder may write, the fence
//! that refuses a group of an earlier holder at commit, the book passing on when its holder's
//! lease is lost or it closes, and the cluster's secret. Each test has a database of its own
//! on the server named by `OZBUS_TEST_PG_URL` (`scripts/test` starts one).

mod pg_common;
mod store_common;

use std::time::{Duration, Instant};

use ozbus::store::postgres::PgStore;
use ozbus::store::{BookHolder, Mutation, RecordState, StoreError};
use pg_common::{database, hold_book, wait_for_holder, TestDb};
use store_common::{append, outcome, record, transaction};

/// How long a node takes over at most in these tests: the old holder's session is ended at
/// once (terminated, or closed), and a bidder tries the lock every second.
const TAKEOVER: Duration = Duration::from_secs(5);

fn is_me(holder: &BookHolder) -> bool {
    matches!(holder, BookHolder::Me { .. })
}

fn epoch_of(holder: &BookHolder) -> i64 {
    match holder {
        BookHolder::Me { epoch } | BookHolder::Peer { epoch, .. } => *epoch,
        BookHolder::Unknown => panic!("nobody holds the book"),
    }
}

/// The book's row as the database has it: epoch, node, addr.
async fn lease_row(db: &TestDb) -> (i64, Option<i64>, Option<String>) {
    let row = db
        .client()
        .await
        .query_one("SELECT epoch, node, addr FROM book_lease WHERE id = 0", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// The address a node of these tests bids at.
fn addr(store: &PgStore) -> String {
    format!("node-{}.example:6502", store.node())
}

/// Two nodes on `db` that both bid (at [`addr`]): the one that took the book first, its
/// epoch, and the other, once it sees the holder.
async fn two_nodes(db: &TestDb) -> (PgStore, i64, PgStore) {
    let (a, b) = (db.open().await, db.open().await);
    a.advertise(addr(&a));
    b.advertise(addr(&b));
    let deadline = Instant::now() + TAKEOVER;
    let (holder, other) = loop {
        assert!(Instant::now() < deadline, "nobody took the book");
        if is_me(&a.book_holder().borrow()) {
            break (a, b);
        }
        if is_me(&b.book_holder().borrow()) {
            break (b, a);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let epoch = epoch_of(&holder.book_holder().borrow());
    wait_for_holder(
        &other,
        TAKEOVER,
        |h| matches!(h, BookHolder::Peer { node, .. } if *node == holder.node()),
    )
    .await;
    (holder, epoch, other)
}

/// A book batch (a call record and its outcome) with SI `si`, tenant `t`.
fn book_batch(si: &str) -> Vec<Mutation> {
    vec![
        Mutation::PutRecord(record(si.as_bytes(), RecordState::Pending)),
        Mutation::Append(outcome(b"t", b"c", si.as_bytes())),
    ]
}

/// The SIs of every outcome in the log, in order.
async fn logged(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query("SELECT si FROM outcomes ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| String::from_utf8(row.get::<_, Vec<u8>>(0)).unwrap())
        .collect()
}

/// Waits until the backend of `application` waits for a lock.
async fn wait_until_blocked(db: &TestDb, application: &str) {
    let admin = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = $2 AND wait_event_type = 'Lock'",
                &[&db.name, &application],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{application} never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Nodes that do not bid never hold the book, nor try its lock; once both bid, one holds it
/// and the other sees it, at the address it gave; a holder given another address names it.
#[tokio::test]
async fn one_node_holds_the_book_once_nodes_bid() {
    let db = database().await;
    let (a, b) = (db.open().await, db.open().await);
    // Longer than a check: both have read the row more than once by now.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    for store in [&a, &b] {
        assert_eq!(*store.book_holder().borrow(), BookHolder::Unknown);
    }
    assert_eq!(lease_row(&db).await, (0, None, None));
    let locks: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(locks, 0, "a node that does not bid never takes the lock");
    a.close().await.unwrap();
    b.close().await.unwrap();

    let (holder, epoch, other) = two_nodes(&db).await;
    assert_eq!(epoch, 1, "the first holder of a new database");
    assert_eq!(
        lease_row(&db).await,
        (epoch, Some(holder.node()), Some(addr(&holder)))
    );
    assert_eq!(*holder.book_holder().borrow(), BookHolder::Me { epoch });
    assert_eq!(
        *other.book_holder().borrow(),
        BookHolder::Peer {
            node: holder.node(),
            epoch,
            addr: addr(&holder),
        }
    );
    // A new address: the holder names it, the other sees it; the epoch stays.
    holder.advertise("moved.example:6502".into());
    let moved = wait_for_holder(
        &other,
        TAKEOVER,
        |h| matches!(h, BookHolder::Peer { addr, .. } if addr == "moved.example:6502"),
    )
    .await;
    assert_eq!(epoch_of(&moved), epoch);
    assert_eq!(*holder.book_holder().borrow(), BookHolder::Me { epoch });
    holder.close().await.unwrap();
    other.close().await.unwrap();
}

/// A node alone takes the book at once when it bids.
#[tokio::test]
async fn a_node_alone_takes_the_book_at_once() {
    let db = database().await;
    let store = db.open().await;
    let started = Instant::now();
    store.advertise("alone.example:6502".into());
    let held = wait_for_holder(&store, TAKEOVER, is_me).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(held, BookHolder::Me { epoch: 1 });
    assert_eq!(
        lease_row(&db).await,
        (1, Some(store.node()), Some("alone.example:6502".into()))
    );
    store.close().await.unwrap();
}

/// Only the holder writes the book: the other node's batch of a call record and an outcome
/// fails untried and leaves nothing, while its batch of a persisted transaction commits.
#[tokio::test]
async fn only_the_holder_writes_call_records_and_the_log() {
    let db = database().await;
    let (holder, _, other) = two_nodes(&db).await;
    assert_eq!(holder.submit(book_batch("by-holder")).await.unwrap(), [1]);
    let refused = other.submit(book_batch("by-other")).await.unwrap_err();
    assert!(matches!(refused, StoreError::NotHolder), "{refused}");
    let written = other
        .submit(vec![Mutation::PutTransaction(transaction(b"p", 5))])
        .await
        .unwrap();
    assert_eq!(written, Vec::<u64>::new());
    // The same in one group: the book's batch fails, the other commits.
    let book = other.submit(book_batch("by-other-again"));
    let rest = other.submit(vec![Mutation::MoveCursor {
        tenant: store_common::b(b"t"),
        ps: store_common::b(b"p"),
        cursor: 9,
    }]);
    assert!(matches!(book.await, Err(StoreError::NotHolder)));
    rest.await.unwrap();

    assert_eq!(logged(&db).await, ["by-holder"]);
    for store in [&holder, &other] {
        assert!(store
            .open_record(b"t", b"by-other")
            .await
            .unwrap()
            .is_none());
        assert!(store
            .open_record(b"t", b"by-holder")
            .await
            .unwrap()
            .is_some());
    }
    let transactions = holder.load_transactions().await.unwrap();
    assert_eq!(transactions.len(), 1);
    assert_eq!(transactions[0].cursor, 9);
    holder.close().await.unwrap();
    other.close().await.unwrap();
}

/// The holder's lease connection is lost: it says at once that it no longer knows, the other
/// node takes the book under a later epoch within seconds, the old holder's next batch of the
/// book fails unwritten, and it sees the new holder.
#[tokio::test]
async fn a_lost_lease_passes_the_book_on() {
    let db = database().await;
    let (old, epoch, new) = two_nodes(&db).await;
    assert_eq!(
        append(&old, vec![outcome(b"t", b"c", b"before")]).await,
        [1]
    );
    let mut old_holder = old.book_holder();
    old_holder.borrow_and_update();
    let lost = Instant::now();
    db.kill_lease(old.node()).await;
    tokio::time::timeout(Duration::from_secs(2), old_holder.changed())
        .await
        .expect("the old holder says so at once")
        .unwrap();
    assert!(!is_me(&old_holder.borrow()), "{:?}", *old_holder.borrow());
    let taken = wait_for_holder(&new, TAKEOVER, is_me).await;
    let later = epoch_of(&taken);
    assert!(later > epoch, "{later} after {epoch}");
    assert!(lost.elapsed() < TAKEOVER);

    let refused = old.submit(book_batch("late")).await.unwrap_err();
    assert!(matches!(refused, StoreError::NotHolder), "{refused}");
    assert_eq!(logged(&db).await, ["before"]);
    let seen = wait_for_holder(&old, TAKEOVER, |h| matches!(h, BookHolder::Peer { .. })).await;
    assert_eq!(
        seen,
        BookHolder::Peer {
            node: new.node(),
            epoch: later,
            addr: addr(&new),
        }
    );
    // The new holder writes on after the old one's outcomes.
    assert_eq!(new.submit(book_batch("after")).await.unwrap(), [2]);
    assert_eq!(logged(&db).await, ["before", "after"]);
    old.close().await.unwrap();
    new.close().await.unwrap();
}

/// Closing the holder hands the book over: the other node takes it at once (the holder
/// announces that it let go), and the closed store holds nothing.
#[tokio::test]
async fn closing_the_holder_hands_the_book_over() {
    let db = database().await;
    let (old, epoch, new) = two_nodes(&db).await;
    let old_holder = old.book_holder();
    let closed = Instant::now();
    old.close().await.unwrap();
    assert_eq!(*old_holder.borrow(), BookHolder::Unknown);
    let taken = wait_for_holder(&new, TAKEOVER, is_me).await;
    assert!(
        closed.elapsed() < Duration::from_millis(900),
        "took {:?}: not woken by the release",
        closed.elapsed()
    );
    assert_eq!(taken, BookHolder::Me { epoch: epoch + 1 });
    assert_eq!(new.submit(book_batch("new")).await.unwrap(), [1]);
    new.close().await.unwrap();
}

/// Another node raises the epoch while a group of the holder waits in the fence: at commit the
/// fence refuses the group's batch of the book, unwritten, and its other batch commits; the
/// node no longer says it holds the book under the old epoch, and takes it again later.
#[tokio::test]
async fn the_fence_refuses_a_group_of_an_earlier_epoch_at_commit() {
    let db = database().await;
    let store = db.open().await;
    let epoch = hold_book(&store).await;
    let mut admin = db.client().await;
    let raise = admin.transaction().await.unwrap();
    raise
        .execute("UPDATE book_lease SET epoch = epoch + 1 WHERE id = 0", &[])
        .await
        .unwrap();
    let book = store.submit(book_batch("fenced"));
    let other = store.submit(vec![Mutation::PutTransaction(transaction(b"p", 1))]);
    wait_until_blocked(&db, &format!("ozbus-writer-{}", store.node())).await;
    raise.commit().await.unwrap();
    let refused = book.await.unwrap_err();
    assert!(matches!(refused, StoreError::NotHolder), "{refused}");
    other.await.unwrap();
    assert!(logged(&db).await.is_empty());
    assert!(store.open_record(b"t", b"fenced").await.unwrap().is_none());
    assert_eq!(store.load_transactions().await.unwrap().len(), 1);
    // The lease finds out and bids again (after a step back): a later epoch.
    let again = wait_for_holder(
        &store,
        Duration::from_secs(10),
        |h| matches!(h, BookHolder::Me { epoch: later } if *later > epoch + 1),
    )
    .await;
    assert_eq!(lease_row(&db).await.0, epoch_of(&again));
    assert_eq!(store.submit(book_batch("held")).await.unwrap(), [1]);
    store.close().await.unwrap();
}

/// The writer's connection is lost before a group is sent, and another node raises the epoch
/// meanwhile: the group, run again on a new connection, is refused by the fence as well (its
/// batch of the book fails unwritten, the other commits).
#[tokio::test]
async fn a_group_run_again_after_a_lost_connection_is_fenced_too() {
    let db = database().await;
    let store = db.open().await;
    let epoch = hold_book(&store).await;
    let writer = format!("ozbus-writer-{}", store.node());
    let mut admin = db.client().await;
    let raise = admin.transaction().await.unwrap();
    raise
        .execute("UPDATE book_lease SET epoch = epoch + 1 WHERE id = 0", &[])
        .await
        .unwrap();
    let killed: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = $2",
            &[&db.name, &writer],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    let book = store.submit(book_batch("fenced"));
    let other = store.submit(vec![Mutation::PutTransaction(transaction(b"p", 1))]);
    wait_until_blocked(&db, &writer).await;
    // The lease still holds the book under `epoch`: only the fence can refuse the group.
    assert_eq!(*store.book_holder().borrow(), BookHolder::Me { epoch });
    raise.commit().await.unwrap();
    let refused = book.await.unwrap_err();
    assert!(matches!(refused, StoreError::NotHolder), "{refused}");
    other.await.unwrap();
    assert!(logged(&db).await.is_empty());
    assert_eq!(store.load_transactions().await.unwrap().len(), 1);
    store.close().await.unwrap();
}

/// The fence itself: a raise of the epoch waits for a transaction that passed the fence, and a
/// fence of the old epoch after the raise fails with SQLSTATE OZ001.
#[tokio::test]
async fn a_raise_of_the_epoch_waits_for_groups_that_passed_the_fence() {
    let db = database().await;
    let store = db.open().await;
    let epoch = hold_book(&store).await;
    let mut group = db.client().await;
    let fenced = group.transaction().await.unwrap();
    fenced
        .execute("SELECT ozbus_book_fence($1)", &[&epoch])
        .await
        .unwrap();
    let raiser = db.client().await;
    let raise = tokio::spawn(async move {
        raiser
            .query_one(
                "UPDATE book_lease SET epoch = epoch + 1 WHERE id = 0 RETURNING epoch",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!raise.is_finished(), "the raise did not wait for the group");
    fenced.commit().await.unwrap();
    let raised = tokio::time::timeout(Duration::from_secs(5), raise)
        .await
        .expect("the raise goes on once the group ended")
        .unwrap();
    assert_eq!(raised, epoch + 1);
    let refused = db
        .client()
        .await
        .execute("SELECT ozbus_book_fence($1)", &[&epoch])
        .await
        .unwrap_err();
    assert_eq!(refused.code().map(|code| code.code()), Some("OZ001"));
    store.close().await.unwrap();
}

/// Every node of a database has the same secret: 64 hex digits, fit for a PW value.
#[tokio::test]
async fn the_nodes_share_the_cluster_secret() {
    let db = database().await;
    let (a, b) = (db.open().await, db.open().await);
    let secret = a.cluster_secret();
    assert_eq!(secret, b.cluster_secret());
    assert_eq!(secret.len(), 64);
    assert!(secret.iter().all(u8::is_ascii_hexdigit), "{secret:?}");
    a.close().await.unwrap();
    b.close().await.unwrap();
    // Another database has another.
    let other = database().await.open().await;
    assert_ne!(other.cluster_secret(), secret);
    other.close().await.unwrap();
}
