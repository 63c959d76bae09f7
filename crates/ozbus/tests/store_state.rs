//! Call records, persisted transactions, idempotency keys and batch atomicity, as observed
//! across restarts, on both backends (SQLite and PostgreSQL, through `Store`); then what only
//! SQLite has: its write lock held by another connection, its schema version pragma, the lock of
//! its data directory, and its migrations to schemas 3 and 4 (PostgreSQL's own are in
//! `pg_store.rs` and the PostgreSQL store's unit tests).

mod pg_common;
mod store_common;

use ozbus::store::{Mutation, RecordState, Store, StoreError, StoreOptions, UsedKey};
use store_common::{
    b, check_the_tx_filled_in, held_in_steps_of_one, on_both_backends, open, open_with, options,
    outcome, record, transaction, Kind, Place, ReadAfter,
};

on_both_backends!(
    #[tokio::test]
    records_put_replace_delete_survive_reopen,
    transactions_and_cursor_moves_survive_reopen,
    a_stored_cursor_only_moves_back_when_rewound,
    delete_record_and_append_commit_together,
    idempotency_keys_commit_with_their_batch_and_expire_after_the_window,
    idempotency_keys_keep_the_first_seq_their_batch_appended,
    persisted_transactions_are_found_by_ps_or_tx_and_counted,
);

async fn records_put_replace_delete_survive_reopen(kind: Kind) {
    let place = Place::new(kind).await;
    let store = place.open().await;
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
            // Deleting what is not there is not an error.
            Mutation::DeleteRecord {
                tenant: b(b"t"),
                si: b(b"nope"),
            },
        ])
        .await
        .unwrap();
    store.close().await.unwrap();

    let store = place.open().await;
    let mut records = store.load_records().await.unwrap();
    records.sort_by(|a, b| (&a.tenant, &a.si).cmp(&(&b.tenant, &b.si)));
    assert_eq!(
        records,
        vec![record(b"1", RecordState::Pending), connected, other_tenant]
    );
    // Records are not outcomes.
    assert_eq!(store.last_seq(), 0);
    store.close().await.unwrap();
}

async fn transactions_and_cursor_moves_survive_reopen(kind: Kind) {
    let place = Place::new(kind).await;
    let store = place.open().await;
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
            // A cursor move for a forgotten transaction is a no-op, not a resurrection.
            Mutation::MoveCursor {
                tenant: b(b"t"),
                ps: b(b"c"),
                cursor: 100,
            },
        ])
        .await
        .unwrap();
    store.close().await.unwrap();

    let store = place.open().await;
    let mut transactions = store.load_transactions().await.unwrap();
    transactions.sort_by(|a, b| a.ps.cmp(&b.ps));
    assert_eq!(transactions, vec![transaction(b"a", 42), released]);
    // Held again (re-issued) first: on PostgreSQL, a node moves the cursors of the rows it
    // holds, never those of a row another node (here, the store before the restart) wrote
    // last.
    store
        .submit(vec![
            Mutation::PutTransaction(transaction(b"a", 42)),
            Mutation::MoveCursor {
                tenant: b(b"t"),
                ps: b(b"a"),
                cursor: (1 << 63) - 1,
            },
        ])
        .await
        .unwrap();
    store.close().await.unwrap();

    let store = place.open().await;
    let transactions = store.load_transactions().await.unwrap();
    assert_eq!(transactions[0].cursor, (1 << 63) - 1);
    store.close().await.unwrap();
}

/// A stored cursor may have been confirmed to a client (the MV of an XA): writes that were
/// computed earlier and commit later never take it back. Only a rewind (a re-issue with XR)
/// moves it backwards.
async fn a_stored_cursor_only_moves_back_when_rewound(kind: Kind) {
    let place = Place::new(kind).await;
    let store = place.open().await;
    async fn cursor(store: &Store) -> u64 {
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
    let store = place.open().await;
    assert_eq!(cursor(&store).await, 3);
    store.close().await.unwrap();
}

async fn delete_record_and_append_commit_together(kind: Kind) {
    let place = Place::new(kind).await;
    let store = place.open().await;
    store
        .submit(vec![
            Mutation::PutRecord(record(b"1", RecordState::Connected)),
            Mutation::PutRecord(record(b"2", RecordState::Connected)),
        ])
        .await
        .unwrap();

    // Three batches queued together (likely one group commit): the middle one fails on a cursor
    // the database cannot store, after its DeleteRecord and Append already ran. None of it may
    // stick, and the batches around it must not notice.
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
    // The failed batch's seq is not burnt: seqs stay contiguous.
    assert_eq!(last.await.unwrap(), [2]);
    store.close().await.unwrap();

    let store = place.open().await;
    let records = store.load_records().await.unwrap();
    assert_eq!(records, vec![record(b"2", RecordState::Connected)]);
    assert!(store.load_transactions().await.unwrap().is_empty());
    let log = store.read_after(0, 10).await.unwrap();
    let sis: Vec<&[u8]> = log.iter().map(|o| o.outcome.si.as_ref()).collect();
    assert_eq!(sis, [b"1".as_slice(), b"3".as_slice()]);
    assert_eq!(store.last_seq(), 2);
    store.close().await.unwrap();
}

/// A group whose transaction cannot be written fails every batch in it (nothing is reported
/// durable that is not), and the writer carries on with later batches. Provoked by another
/// process-like connection holding SQLite's write lock past the writer's busy timeout, so this
/// test takes a few seconds.
#[tokio::test]
async fn a_failed_group_fails_all_its_batches_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .submit(vec![Mutation::Append(outcome(b"t", b"c", b"1"))])
        .await
        .unwrap();

    let intruder = rusqlite::Connection::open(dir.path().join("ozbus.sqlite3")).unwrap();
    intruder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let tickets = [
        store.submit(vec![
            Mutation::DeleteRecord {
                tenant: b(b"t"),
                si: b(b"x"),
            },
            Mutation::Append(outcome(b"t", b"c", b"2")),
        ]),
        store.submit(vec![Mutation::Append(outcome(b"t", b"c", b"3"))]),
    ];
    for ticket in tickets {
        assert!(matches!(ticket.await, Err(StoreError::CommitFailed(_))));
    }
    assert_eq!(store.last_seq(), 1);
    intruder.execute_batch("ROLLBACK").unwrap();
    drop(intruder);

    let seqs = store
        .submit(vec![Mutation::Append(outcome(b"t", b"c", b"4"))])
        .await
        .unwrap();
    assert_eq!(seqs, [2]);
    store.close().unwrap();

    let store = open(&dir);
    let log = store.read_after(0, 10).await.unwrap();
    let sis: Vec<&[u8]> = log.iter().map(|o| o.outcome.si.as_ref()).collect();
    assert_eq!(sis, [b"1".as_slice(), b"4".as_slice()]);
    store.close().unwrap();
}

#[test]
fn a_newer_schema_is_refused_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    open(&dir).close().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("ozbus.sqlite3")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(
        ozbus::store::SqliteStore::open(store_common::options(&dir)),
        Err(StoreError::UnsupportedSchema { found: 99, .. })
    ));
}

#[test]
fn a_data_directory_has_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = store_common::open(&dir);
    let second = ozbus::store::SqliteStore::open(store_common::options(&dir));
    assert!(
        matches!(second, Err(ozbus::store::StoreError::InUse(_))),
        "{second:?}"
    );
    first.close().unwrap();
    store_common::open(&dir).close().unwrap();
}

/// An idempotency key is stored with the batch of the effect it guards, or not at all, counts
/// from its commit, and is removed by retention a while after the dedup window.
async fn idempotency_keys_commit_with_their_batch_and_expire_after_the_window(kind: Kind) {
    let place = Place::new(kind).await;
    let window = std::time::Duration::from_secs(3600);
    let store = open_with(StoreOptions {
        dedup_window: window,
        ..place.options()
    })
    .await;
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

    assert!(store
        .key_committed(b"t", b"k1", before)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store.key_committed(b"t", b"k2", 0).await.unwrap(),
        None,
        "its batch failed"
    );
    assert_eq!(
        store.key_committed(b"u", b"k1", 0).await.unwrap(),
        None,
        "per tenant"
    );
    let after = ozbus::core::now_ms() + 1;
    assert_eq!(
        store.key_committed(b"t", b"k1", after).await.unwrap(),
        None,
        "committed before `since`: no longer counts"
    );

    // Retention keeps it through the window and its grace, then removes it.
    let window_ms = window.as_millis() as i64;
    store.trim(after + window_ms).await.unwrap();
    assert!(store.key_committed(b"t", b"k1", 0).await.unwrap().is_some());
    store.trim(after + window_ms + 61_000).await.unwrap();
    assert_eq!(store.key_committed(b"t", b"k1", 0).await.unwrap(), None);
    store.close().await.unwrap();
}

/// A key is stored with the first seq its batch appended (none when it appended nothing),
/// whichever batch of a group it is in and wherever in its batch; a key used again takes the
/// new batch's; and it is read back so after a restart.
async fn idempotency_keys_keep_the_first_seq_their_batch_appended(kind: Kind) {
    let place = Place::new(kind).await;
    let store = place.open().await;
    let remember = |key: &[u8]| Mutation::RememberKey {
        tenant: b(b"t"),
        key: b(key),
    };
    let used = |seq| Some(UsedKey { seq });
    store
        .submit(vec![Mutation::Append(outcome(b"t", b"c", b"0"))])
        .await
        .unwrap();
    // Submitted together, so that they share a group commit.
    let tickets = vec![
        store.submit(vec![
            Mutation::PutRecord(record(b"mc", RecordState::Pending)),
            remember(b"mc"),
        ]),
        store.submit(vec![
            Mutation::DeleteRecord {
                tenant: b(b"t"),
                si: b(b"mc"),
            },
            Mutation::Append(outcome(b"t", b"c", b"1")),
            remember(b"cf"),
        ]),
        store.submit(vec![Mutation::Append(outcome(b"t", b"c", b"2"))]),
        // The key before the append it guards.
        store.submit(vec![
            remember(b"uo"),
            Mutation::Append(outcome(b"t", b"c", b"3")),
            Mutation::Append(outcome(b"t", b"c", b"4")),
        ]),
    ];
    let seqs: Vec<Vec<u64>> = futures::future::try_join_all(tickets).await.unwrap();
    assert_eq!(seqs, [vec![], vec![2], vec![3], vec![4, 5]]);
    let read = |key: &'static [u8]| {
        let store = store.clone();
        async move { store.key_committed(b"t", key, 0).await.unwrap() }
    };
    assert_eq!(read(b"mc").await, used(None));
    assert_eq!(read(b"cf").await, used(Some(2)));
    assert_eq!(read(b"uo").await, used(Some(4)));
    assert_eq!(read(b"none").await, None);

    // Used again (past its window, say): the new batch's seq, or none.
    store
        .submit(vec![
            Mutation::Append(outcome(b"t", b"c", b"5")),
            remember(b"mc"),
        ])
        .await
        .unwrap();
    store.submit(vec![remember(b"cf")]).await.unwrap();
    assert_eq!(read(b"mc").await, used(Some(6)));
    assert_eq!(read(b"cf").await, used(None));
    store.close().await.unwrap();

    let store = place.open().await;
    for (key, seq) in [(&b"mc"[..], Some(6)), (b"cf", None), (b"uo", Some(4))] {
        let found = store.key_committed(b"t", key, 0).await.unwrap();
        assert_eq!(found, used(seq), "{key:?}");
    }
    store.close().await.unwrap();
}

/// Persisted transactions are found one at a time: by PersistToken or by TX, counted per tenant,
/// and found when due for the TTL, without reading the rest.
async fn persisted_transactions_are_found_by_ps_or_tx_and_counted(kind: Kind) {
    let place = Place::new(kind).await;
    let store = place.open().await;
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
    // Released at 5,000: due at a cut-off of 5,000, not before.
    let due = |cutoff| {
        let store = store.clone();
        async move {
            let rows = store.released_transactions(cutoff, 10).await.unwrap();
            rows.into_iter().map(|t| t.ps).collect::<Vec<_>>()
        }
    };
    assert!(due(4_999).await.is_empty());
    assert_eq!(due(5_000).await, [b(b"b")]);
    // Held ones are none of them, and their holder is not gone: this store holds them.
    assert_eq!(store.held_at_stop(0, 10).await.unwrap(), (vec![], None));
    store.close().await.unwrap();

    // After a restart, the pass finds the two held when the store closed (by a node that is
    // gone, on PostgreSQL), a step at a time.
    let store = place.open().await;
    let steps = held_in_steps_of_one(&store).await;
    assert_eq!(steps.len(), 4, "a row a step, then the end: {steps:?}");
    let all = steps.concat();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|t| &t.ps[..] == b"a"), "{all:?}");
    // Released since: SQLite does not know when (from the service's start, then); PostgreSQL
    // does, when the node that held them stopped.
    let released_when_stopped = kind == Kind::Postgres;
    assert!(
        all.iter()
            .all(|t| t.released_ms.is_some() == released_when_stopped),
        "{all:?}"
    );
    // Another pass: SQLite's finds them again (nothing was written); PostgreSQL's reads
    // nothing, since no node has gone since the last pass began.
    let again = store.held_at_stop(0, 10).await.unwrap();
    match kind {
        Kind::Sqlite => assert_eq!(again, (all, None)),
        Kind::Postgres => assert_eq!(again, (vec![], None)),
    }
    assert_eq!(
        store.released_transactions(5_000, 10).await.unwrap(),
        [other]
    );
    store.close().await.unwrap();
}

/// A store of schema 2 gets the TX of each persisted transaction from its request, which the
/// service reads for it.
#[tokio::test]
async fn the_migration_to_schema_3_fills_in_the_tx_of_persisted_transactions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("ozbus.sqlite3")).unwrap();
        conn.execute_batch(include_str!("../src/store/schema.sql"))
            .unwrap();
        conn.execute_batch(include_str!("../src/store/schema_2.sql"))
            .unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 2;
             INSERT INTO transactions VALUES (x'74', x'70', CAST('EO\\TXold\\FO\\PSp' AS BLOB), 7, NULL);
             INSERT INTO transactions VALUES (x'74', x'71', CAST('garbage' AS BLOB), 8, 1);",
        )
        .unwrap();
    }
    let store = open_with(StoreOptions {
        request_tx: ozbus::subs::request_tx,
        ..options(&dir)
    })
    .await;
    check_the_tx_filled_in(&store).await;
    // Released at 1; and held when the old version stopped.
    let released = store.released_transactions(1, 10).await.unwrap();
    assert_eq!(
        released.iter().map(|t| &t.ps[..]).collect::<Vec<_>>(),
        [b"q"]
    );
    let (held, _) = store.held_at_stop(0, 10).await.unwrap();
    assert_eq!(held.iter().map(|t| &t.ps[..]).collect::<Vec<_>>(), [b"p"]);
    store.close().await.unwrap();
}

/// Keys stored before schema 4 had no seq: they are still used keys, found without one; keys
/// stored after it have theirs.
#[tokio::test]
async fn the_migration_to_schema_4_keeps_older_keys_without_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let now = ozbus::core::now_ms();
    {
        let conn = rusqlite::Connection::open(dir.path().join("ozbus.sqlite3")).unwrap();
        for sql in [
            include_str!("../src/store/schema.sql"),
            include_str!("../src/store/schema_2.sql"),
            include_str!("../src/store/schema_3.sql"),
        ] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute(
            "INSERT INTO ingest_keys (tenant, key, accepted_ms) VALUES (x'74', x'6f6c64', ?1)",
            [now],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 3).unwrap();
    }
    let store = open_with(options(&dir)).await;
    assert_eq!(
        store.key_committed(b"t", b"old", now).await.unwrap(),
        Some(UsedKey { seq: None })
    );
    store
        .submit(vec![
            Mutation::Append(outcome(b"t", b"c", b"1")),
            Mutation::RememberKey {
                tenant: b(b"t"),
                key: b(b"new"),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        store.key_committed(b"t", b"new", now).await.unwrap(),
        Some(UsedKey { seq: Some(1) })
    );
    store.close().await.unwrap();
}
