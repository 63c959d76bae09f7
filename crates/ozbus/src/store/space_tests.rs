//! The store out of space, made deterministic with SQLite's page limit (a write that needs a new
//! page fails with SQLITE_FULL, exactly as on a full disk): what fails, what goes on, the fence
//! and its reload, and the probe that finds room again. The real thing, a full file system, is
//! `tests/store_full.rs`.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(StoreOptions {
        dir: dir.path().to_path_buf(),
        ..StoreOptions::default()
    })
    .unwrap()
}

fn record(si: &[u8], dt_bytes: usize) -> CallRecord {
    CallRecord {
        tenant: b(b"t"),
        si: b(si),
        cn: b(b"c"),
        tn: None,
        preview_agent: None,
        agent: None,
        as_data: None,
        dt: Some(Bytes::from(vec![b'x'; dt_bytes])),
        state: RecordState::Pending,
        created_ms: 1,
        expires_ms: None,
        connected_ms: None,
    }
}

fn outcome(si: &[u8], dt_bytes: usize) -> NewOutcome {
    NewOutcome {
        dt: Bytes::from(vec![b'y'; dt_bytes]),
        ..NewOutcome::new(b(b"t"), OutcomeClass::Failure, b(b"c"), b(si), 2)
    }
}

fn transaction(ps: &[u8], cursor: u64) -> PersistedTransaction {
    PersistedTransaction {
        tenant: b(b"t"),
        ps: b(ps),
        tx: b(b"a"),
        request: b(b"EO\\TXa\\FO"),
        cursor,
        released_ms: None,
    }
}

#[tokio::test]
async fn a_batch_without_room_fails_alone_and_fences_later_writes_of_the_book() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .submit(vec![
            Mutation::PutRecord(record(b"kept", 10)),
            Mutation::PutTransaction(transaction(b"p", 0)),
        ])
        .await
        .unwrap();
    assert!(!store.is_full() && !store.fenced());

    store.limit_growth(true).await;
    let big = store.submit(vec![
        Mutation::PutRecord(record(b"big", 200_000)),
        Mutation::Append(outcome(b"big", 200_000)),
    ]);
    let failed = big.await.unwrap_err();
    assert!(failed.is_out_of_space(), "{failed}");
    assert!(store.is_full() && store.fenced());
    assert_eq!(
        store.last_seq(),
        0,
        "nothing of the failed batch is published"
    );
    // A small change of the book, which may have been computed from the failed one, is not
    // tried; a cursor write, which was not, is (and fits the pages there are).
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

    // The records as committed: the failed record is not there, the fenced delete not done.
    let records = store.reload_records().await.unwrap();
    let sis: Vec<&[u8]> = records.iter().map(|r| r.si.as_ref()).collect();
    assert_eq!(sis, [b"kept".as_slice()]);
    assert!(!store.fenced(), "the reload lowers the fence");

    // With room again, a write of the book is tried and commits.
    store.limit_growth(false).await;
    let seqs = store
        .submit(vec![Mutation::Append(outcome(b"after", 200_000))])
        .await
        .unwrap();
    assert_eq!(seqs, [1]);
    store.clone().close().unwrap();

    let store = open(&dir);
    let transactions = store.load_transactions().unwrap();
    assert_eq!(transactions[0].cursor, 7);
    assert_eq!(store.load_records().unwrap().len(), 1);
    store.close().unwrap();
}

#[tokio::test]
async fn a_write_of_transactions_alone_that_fails_for_space_raises_no_fence() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.limit_growth(true).await;
    let rows: Vec<Mutation> = (0..200)
        .map(|n| {
            let mut row = transaction(format!("p{n}").as_bytes(), n);
            row.request = Bytes::from(vec![b'E'; 2000]);
            Mutation::PutTransaction(row)
        })
        .collect();
    assert!(store.submit(rows).await.unwrap_err().is_out_of_space());
    assert!(store.is_full());
    assert!(!store.fenced());
    store.close().unwrap();
}

/// Once the store is full, the writer probes the data directory every second; here the disk
/// has room, so the first probe ends it.
#[tokio::test]
async fn the_probe_finds_room_again_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.limit_growth(true).await;
    let failed = store
        .submit(vec![Mutation::Append(outcome(b"1", 100_000))])
        .await;
    assert!(failed.unwrap_err().is_out_of_space());
    assert!(store.is_full());
    let deadline = Instant::now() + writer::PROBE_INTERVAL * 5;
    while store.is_full() {
        assert!(Instant::now() < deadline, "still full");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !dir.path().join("ozbus.probe").exists(),
        "the probe cleans up after itself"
    );
    store.close().unwrap();
}

#[tokio::test]
async fn any_other_failure_is_no_lack_of_space() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let failed = store
        .submit(vec![Mutation::PutTransaction(transaction(b"x", u64::MAX))])
        .await
        .unwrap_err();
    assert!(!failed.is_out_of_space(), "{failed}");
    assert!(!store.is_full() && !store.fenced());
    store.close().unwrap();
}
