//! The registry as plain state: each test opens, re-issues, acknowledges, releases and ends
//! transactions and checks the effects it returns (rejections, store mutations, deliveries to
//! start or finish). No sockets, no store, no runtime.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use sdmp::ErrorCode;

use super::testkit::{cursor_write, eo, key, key_in, Kit};
use super::Opened;
use crate::store::{Mutation, PersistedTransaction};

fn code(result: Result<impl Sized, sdmp::Rejection>) -> ErrorCode {
    match result {
        Ok(_) => panic!("expected a rejection"),
        Err(rejection) => rejection.code,
    }
}

/// Simulates delivery: `seq` handed to the writer and written.
fn delivered(opened: &Opened, seq: u64) {
    let (delivered, queued) = opened
        .delivery
        .cursors
        .as_ref()
        .expect("a persisted delivery");
    queued.fetch_max(seq, Ordering::Release);
    delivered.fetch_max(seq, Ordering::Release);
}

fn cursor_writes(mutations: &[Mutation]) -> Vec<(&'static str, u64)> {
    mutations.iter().filter_map(cursor_write).collect()
}

#[test]
fn tx_is_unique_in_its_namespace_until_the_transaction_ends() {
    let mut kit = Kit::new(0);
    kit.open(1, eo("t")).unwrap();
    assert_eq!(code(kit.open(2, eo("t"))), ErrorCode::TransactionExists);
    // Another namespace has its own TXs.
    kit.open(2, eo("t").namespace("acme")).unwrap();
    let (ended, mutations) = kit.registry.end(&key("t")).unwrap();
    assert_eq!(ended.map(|e| e.connection()), Some(1));
    assert!(
        mutations.is_empty(),
        "a transaction without PS is not stored"
    );
    kit.open(2, eo("t")).unwrap();
    assert_eq!(
        code(kit.registry.end(&key("unknown"))),
        ErrorCode::NoSuchTransaction
    );
    kit.registry.end(&key_in("acme", "t")).unwrap();
}

#[test]
fn a_new_transaction_starts_at_the_log_end_and_a_persisted_one_is_stored() {
    let mut kit = Kit::new(41);
    let plain = kit.open(1, eo("a")).unwrap();
    assert_eq!(plain.delivery.cursor, 41);
    assert!(plain.delivery.cursors.is_none());
    assert!(plain.mutations.is_empty());

    let persisted = kit.open(1, eo("b").ps("p")).unwrap();
    assert_eq!(persisted.delivery.cursor, 41);
    assert_eq!(
        persisted.delivery.paced_until, None,
        "nothing to roll forward"
    );
    match &persisted.mutations[..] {
        [Mutation::PutTransaction(row)] => {
            assert_eq!(
                (&row.ps[..], row.cursor, row.released_ms),
                (&b"p"[..], 41, None)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reissue_takes_over_resumes_at_the_delivered_cursor_and_rolls_forward() {
    let mut kit = Kit::new(10);
    let first = kit.open(1, eo("t").ps("p")).unwrap();
    delivered(&first, 12);
    kit.log_end = 20;
    // Same PS from another connection, under another TX: the same transaction.
    let second = kit.open(2, eo("u").ps("p")).unwrap();
    assert_eq!(second.taken_over.as_ref().map(|e| e.connection()), Some(1));
    assert_eq!(second.delivery.cursor, 12);
    assert_eq!(second.delivery.paced_until, Some(20));
    assert_eq!(cursor_writes(&second.mutations), [("put", 12)]);
    // The old TX is free, the new one names the transaction.
    assert_eq!(
        code(kit.registry.end(&key("t"))),
        ErrorCode::NoSuchTransaction
    );
    kit.open(3, eo("t")).unwrap();
    // A re-issue keeps its own TX without EC 809.
    let third = kit.open(3, eo("u").ps("p")).unwrap();
    assert_eq!(third.taken_over.map(|e| e.connection()), Some(2));
}

#[test]
fn only_xr_rewinds_a_stored_cursor() {
    let mut kit = Kit::new(0);
    let first = kit.open(1, eo("t").ps("p").xs()).unwrap();
    delivered(&first, 10);
    kit.log_end = 10;
    kit.registry.acknowledge(&key("t"), 8, false).unwrap();
    let again = kit.open(1, eo("t").ps("p").xs()).unwrap();
    assert_eq!(again.delivery.cursor, 8, "XS: the acknowledged cursor");
    assert_eq!(cursor_writes(&again.mutations), [("put", 8)]);
    let rewound = kit.open(1, eo("t").ps("p").xs().xr(3)).unwrap();
    assert_eq!(rewound.delivery.cursor, 3);
    assert_eq!(
        cursor_writes(&rewound.mutations),
        [("put", 3), ("rewind", 3)]
    );
}

#[test]
fn acknowledgements_need_ps_and_xs_and_never_pass_what_was_sent() {
    let mut kit = Kit::new(0);
    kit.open(1, eo("plain")).unwrap();
    kit.open(1, eo("unsequenced").ps("u")).unwrap();
    let t = kit.open(1, eo("t").ps("p").xs()).unwrap();
    for tx in ["plain", "unsequenced", "unknown"] {
        assert_eq!(
            code(kit.registry.acknowledge(&key(tx), 1, true)),
            ErrorCode::NoSuchTransaction,
            "{tx}"
        );
    }
    delivered(&t, 5);
    // Lazy: nothing now, the next flush writes it, once.
    assert_eq!(kit.registry.acknowledge(&key("t"), 3, false).unwrap(), None);
    assert_eq!(
        cursor_writes(&kit.registry.cursor_mutations()),
        [("move", 3)]
    );
    assert!(kit.registry.cursor_mutations().is_empty());
    // With TK: written now, clamped to what was sent, and never backwards.
    let now = kit.registry.acknowledge(&key("t"), 99, true).unwrap();
    assert_eq!(now.as_ref().and_then(cursor_write), Some(("move", 5)));
    let older = kit.registry.acknowledge(&key("t"), 2, true).unwrap();
    assert_eq!(older.as_ref().and_then(cursor_write), Some(("move", 5)));
    assert!(kit.registry.cursor_mutations().is_empty());
}

#[test]
fn a_closed_connection_ends_its_plain_transactions_and_releases_persisted_ones() {
    let mut kit = Kit::new(0);
    kit.open(1, eo("plain")).unwrap();
    let persisted = kit.open(1, eo("kept").ps("p")).unwrap();
    kit.open(2, eo("other")).unwrap();
    delivered(&persisted, 4);
    let (ended, mutations) = kit.registry.release_all_of(1, 1_000);
    assert_eq!(ended.len(), 2);
    match &mutations[..] {
        [Mutation::PutTransaction(row)] => {
            assert_eq!((row.cursor, row.released_ms), (4, Some(1_000)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        code(kit.registry.end(&key("plain"))),
        ErrorCode::NoSuchTransaction
    );
    // The released one still holds its TX, and the other connection's is untouched.
    assert_eq!(code(kit.open(3, eo("kept"))), ErrorCode::TransactionExists);
    assert_eq!(code(kit.open(3, eo("other"))), ErrorCode::TransactionExists);
}

#[test]
fn only_unheld_transactions_expire_and_then_are_forgotten() {
    let mut kit = Kit::new(0);
    kit.open(1, eo("held").ps("h")).unwrap();
    kit.open(2, eo("left").ps("l")).unwrap();
    kit.registry.release_all_of(2, 1_000);
    assert!(kit.registry.expire(1_999, 1_000).is_empty(), "not yet");
    let expired = kit.registry.expire(2_000, 1_000);
    assert_eq!(
        expired,
        [Mutation::DeleteTransaction {
            tenant: Bytes::from_static(b"default"),
            ps: Bytes::from_static(b"l"),
        }]
    );
    // Forgotten: the same PS opens a new transaction, taking nothing over.
    let fresh = kit.open(3, eo("left").ps("l")).unwrap();
    assert!(fresh.taken_over.is_none());
}

#[test]
fn ending_a_persisted_transaction_forgets_it() {
    let mut kit = Kit::new(7);
    kit.open(1, eo("t").ps("p")).unwrap();
    let (_, mutations) = kit.registry.end(&key("t")).unwrap();
    assert!(matches!(&mutations[..], [Mutation::DeleteTransaction { ps, .. }] if ps == "p"));
    assert!(kit.open(2, eo("u").ps("p")).unwrap().taken_over.is_none());
}

#[test]
fn restored_transactions_resume_where_the_store_left_them() {
    let mut kit = Kit::new(50);
    kit.restore(
        vec![PersistedTransaction {
            tenant: Bytes::from_static(b"default"),
            ps: Bytes::from_static(b"p"),
            tx: Bytes::from_static(b"t"),
            request: Bytes::from_static(b"EO\\TXt\\FO\\PSp\\XS"),
            cursor: 30,
            released_ms: None,
        }],
        5_000,
    );
    assert_eq!(code(kit.open(1, eo("t"))), ErrorCode::TransactionExists);
    // Held when the server stopped: released as of the restore.
    assert!(kit.registry.expire(5_999, 1_000).is_empty());
    let resumed = kit.open(1, eo("t").ps("p").xs()).unwrap();
    assert_eq!(resumed.delivery.cursor, 30);
    assert_eq!(resumed.delivery.paced_until, Some(50));
}

#[test]
fn limits_count_what_a_connection_holds_and_what_a_tenant_keeps() {
    let limits = super::Limits {
        per_connection: 2,
        persisted_per_tenant: 2,
    };
    let mut kit = super::testkit::Kit::with_limits(0, limits);
    kit.open(1, eo("a")).unwrap();
    kit.open(1, eo("b").ps("p")).unwrap();
    assert_eq!(code(kit.open(1, eo("c"))), ErrorCode::LimitReached);
    // A re-issue where it is held takes no further place.
    kit.open(1, eo("b").ps("p")).unwrap();
    // Another connection has room of its own, but the tenant only for one more persisted.
    kit.open(2, eo("d").ps("q")).unwrap();
    assert_eq!(code(kit.open(2, eo("e").ps("r"))), ErrorCode::LimitReached);
    // ... in that tenant.
    kit.open(2, eo("e").ps("r").namespace("acme")).unwrap();
    // Ending frees both.
    kit.registry.end(&key("a")).unwrap();
    kit.registry.end(&key("b")).unwrap();
    kit.open(1, eo("c").ps("r")).unwrap();
    // A released transaction is no longer the connection's, but still the tenant's.
    kit.registry.release_all_of(2, 0);
    kit.open(2, eo("f")).unwrap();
    kit.open(2, eo("g")).unwrap();
    assert_eq!(code(kit.open(3, eo("h").ps("s"))), ErrorCode::LimitReached);
    // Expiry forgets it.
    kit.registry.expire(10, 1);
    kit.open(3, eo("h").ps("s")).unwrap();
}

/// Writes that did not reach the store (it was out of space) are done again from what the
/// registry holds by then: a cursor that moved on meanwhile is written where it is now, a
/// rewind that failed is not undone by the retry, and a transaction forgotten meanwhile is
/// removed rather than written back.
#[test]
fn rows_a_write_failed_to_store_are_written_again_as_they_are_now() {
    let mut kit = Kit::new(0);
    let held = kit.open(1, eo("t").ps("p")).unwrap();
    delivered(&held, 10);
    let lazy = kit.registry.cursor_mutations();
    assert_eq!(cursor_writes(&lazy), [("move", 10)]);
    kit.registry.unsaved(&lazy);
    delivered(&held, 12);
    let again = kit.registry.resave_unsaved();
    assert_eq!(cursor_writes(&again), [("put", 12), ("rewind", 12)]);
    assert!(kit.registry.resave_unsaved().is_empty(), "saved once");
    assert!(
        kit.registry.cursor_mutations().is_empty(),
        "the resave counts as the cursor's write"
    );

    // A re-issue with XR whose rewind failed: the retry sets the cursor exactly again.
    kit.log_end = 12;
    let rewound = kit.open(1, eo("t").ps("p").xr(4)).unwrap();
    assert_eq!(
        kit.registry.resave(&rewound.mutations)[..]
            .iter()
            .filter_map(cursor_write)
            .collect::<Vec<_>>(),
        [("put", 4), ("rewind", 4)]
    );

    // Forgotten (EE) after its write failed: the retry removes it.
    kit.registry.unsaved(&rewound.mutations);
    kit.registry.end(&key("t")).unwrap();
    match &kit.registry.resave_unsaved()[..] {
        [Mutation::DeleteTransaction { ps, .. }] => assert_eq!(&ps[..], b"p"),
        other => panic!("{other:?}"),
    }
    // Mutations of no transaction leave nothing to do.
    kit.registry.unsaved(&[Mutation::DeleteRecord {
        tenant: Bytes::from_static(b"default"),
        si: Bytes::from_static(b"1"),
    }]);
    assert!(kit.registry.resave_unsaved().is_empty());
}

/// A row of the store at start: persisted transaction `ps` of the default namespace, open under
/// `tx` (XS), released at `released_ms` (`None`: held when the server stopped).
fn stored(tx: &'static str, ps: &'static str, cursor: u64) -> PersistedTransaction {
    PersistedTransaction {
        tenant: Bytes::from_static(b"default"),
        ps: Bytes::from_static(ps.as_bytes()),
        tx: Bytes::from_static(tx.as_bytes()),
        request: Bytes::from(format!("EO\\TX{tx}\\FO\\PS{ps}\\XS")),
        cursor,
        released_ms: Some(1_000),
    }
}

fn ns() -> Bytes {
    Bytes::from_static(b"default")
}

#[test]
fn at_start_persisted_transactions_are_counted_and_loaded_only_when_a_request_needs_one() {
    let limits = super::Limits {
        per_connection: usize::MAX,
        persisted_per_tenant: 2,
    };
    let mut kit = Kit::with_limits(9, limits);
    kit.restore(vec![stored("a", "p", 3), stored("b", "q", 4)], 2_000);
    // Counted: the tenant is at its limit before anything is loaded.
    assert_eq!(code(kit.open(1, eo("c").ps("r"))), ErrorCode::LimitReached);
    // Another namespace has nothing unloaded: memory decides.
    assert!(kit
        .registry
        .lookup(&Bytes::from_static(b"acme"), b"a", None)
        .is_none());
    // A TX that may be an unloaded one's needs the store; once loaded, it no longer does.
    assert!(kit.registry.lookup(&ns(), b"a", None).is_some());
    assert_eq!(code(kit.open(1, eo("a"))), ErrorCode::TransactionExists);
    assert!(kit.registry.lookup(&ns(), b"a", Some(b"p")).is_none());
    let resumed = kit.open(1, eo("b").ps("q").xs()).unwrap();
    assert_eq!(resumed.delivery.cursor, 4);
    // Everything is loaded now: no request needs the store any more.
    assert!(kit.registry.lookup(&ns(), b"new", Some(b"new")).is_none());
    assert!(kit.registry.lookup_unloaded().is_none());
}

#[test]
fn a_row_two_requests_read_is_loaded_once() {
    let limits = super::Limits {
        per_connection: usize::MAX,
        persisted_per_tenant: 1,
    };
    let mut kit = Kit::with_limits(20, limits);
    kit.restore(vec![stored("t", "p", 5)], 2_000);
    let first = kit.registry.lookup(&ns(), b"t", Some(b"p")).unwrap();
    let second = kit.registry.lookup(&ns(), b"t", Some(b"p")).unwrap();
    let rows = kit.find("default", "t", Some("p"));
    assert!(kit.registry.load(&first, rows.clone()).unwrap().is_empty());
    let held = kit.open(1, eo("t").ps("p").xs()).unwrap();
    assert_eq!(held.delivery.cursor, 5);
    delivered(&held, 7);
    // The second finds it loaded (and held): its row is stale, not a second transaction.
    assert!(kit.registry.load(&second, rows).unwrap().is_empty());
    let again = kit.open(2, eo("t").ps("p").xs()).unwrap();
    assert_eq!(again.taken_over.map(|e| e.connection()), Some(1));
    assert_eq!(again.delivery.cursor, 5, "XS: nothing acknowledged yet");
    // Still one transaction: the tenant's limit is not passed by loading it twice.
    assert_eq!(code(kit.open(3, eo("u").ps("r"))), ErrorCode::LimitReached);
}

/// A row read with no lock held may be outdated when it is handed back: the transaction may
/// have been loaded and forgotten meanwhile, its delete in flight, committed, or failed for lack
/// of space. Such a row is never loaded back.
#[test]
fn a_row_of_a_transaction_forgotten_meanwhile_is_never_loaded_back() {
    let mut kit = Kit::new(40);
    // "v" stays unloaded throughout, so lookups go on being made.
    let rows = vec![
        stored("t", "p", 5),
        stored("u", "q", 6),
        stored("v", "r", 7),
    ];
    kit.restore(rows, 2_000);
    let before = kit.registry.lookup(&ns(), b"t", Some(b"p")).unwrap();
    let rows = kit.find("default", "t", Some("p"));
    // Meanwhile another request loads it and EE forgets it.
    kit.load_for("default", "t", None);
    let (_, forgotten) = kit.registry.end(&key("t")).unwrap();
    assert!(matches!(
        &forgotten[..],
        [Mutation::DeleteTransaction { .. }]
    ));
    // Its delete in flight: the row is not its own.
    assert!(kit.registry.load(&before, rows.clone()).unwrap().is_empty());
    // Committed: the row was read before, and may be the one deleted since.
    kit.registry.settled(&forgotten, false);
    assert_eq!(kit.registry.load(&before, rows), Err(super::Stale));
    // Read again, the store no longer has it: the same PS opens a new transaction.
    kit.stored.retain(|row| row.ps != "p");
    let fresh = kit.open(1, eo("t").ps("p")).unwrap();
    assert_eq!(fresh.delivery.cursor, 40);

    // Forgotten, and its delete failed for lack of space: the row stays, but is unsaved.
    kit.load_for("default", "u", None);
    let (_, forgotten) = kit.registry.end(&key("u")).unwrap();
    kit.registry.settled(&forgotten, true);
    let after = kit.registry.lookup(&ns(), b"u", Some(b"q")).unwrap();
    let rows = kit.find("default", "u", Some("q"));
    assert!(kit.registry.load(&after, rows).unwrap().is_empty());
    let fresh = kit.open(1, eo("u").ps("q")).unwrap();
    assert_eq!(fresh.delivery.cursor, 40);
}

#[test]
fn unloaded_transactions_due_for_the_ttl_are_loaded_and_forgotten() {
    let mut kit = Kit::new(0);
    let mut held_at_stop = stored("h", "held", 2);
    held_at_stop.released_ms = None;
    kit.restore(vec![stored("r", "released", 1), held_at_stop], 5_000);
    let lookup = kit.registry.lookup_unloaded().unwrap();
    kit.registry.load(&lookup, kit.stored.clone()).unwrap();
    // Released at 1,000; held when the server stopped: released at the start, 5,000.
    let expired = kit.registry.expire(5_999, 1_000);
    assert_eq!(
        expired,
        [Mutation::DeleteTransaction {
            tenant: ns(),
            ps: Bytes::from_static(b"released"),
        }]
    );
    assert_eq!(kit.registry.expire(6_000, 1_000).len(), 1);
    assert!(kit.registry.lookup_unloaded().is_none());
}

#[test]
fn a_row_that_cannot_be_loaded_is_forgotten() {
    let limits = super::Limits {
        per_connection: usize::MAX,
        persisted_per_tenant: 1,
    };
    let mut kit = Kit::with_limits(0, limits);
    let mut broken = stored("t", "p", 1);
    broken.request = Bytes::from_static(b"not an EO");
    kit.restore(vec![broken], 0);
    let mutations = kit.load_for("default", "t", Some("p"));
    assert!(matches!(&mutations[..], [Mutation::DeleteTransaction { ps, .. }] if ps == "p"));
    kit.registry.settled(&mutations, false);
    // Its place is free again.
    let fresh = kit.open(1, eo("t").ps("p")).unwrap();
    assert!(fresh.taken_over.is_none());
}

#[test]
fn stopping_stops_every_delivery_at_once_and_writes_nothing_else() {
    let mut kit = Kit::new(0);
    let a = kit.open(1, eo("a").ps("p")).unwrap();
    let b = kit.open(2, eo("b")).unwrap();
    delivered(&a, 3);
    kit.registry.deliveries().cancel();
    assert!(a.delivery.stop.is_cancelled() && b.delivery.stop.is_cancelled());
    // Only the moved cursor is left to write; the transaction stays as held.
    assert_eq!(
        cursor_writes(&kit.registry.cursor_mutations()),
        [("move", 3)]
    );
}

/// A kit on a store shared by nodes, with `rows` in the store.
fn shared(rows: Vec<PersistedTransaction>) -> Kit {
    let mut kit = Kit::new(9);
    kit.restore(rows, 2_000);
    kit.registry.set_shared();
    kit
}

/// How many transactions the registry has in memory.
fn in_memory(kit: &Kit) -> usize {
    kit.registry.snapshot(None, None, usize::MAX).len()
}

#[test]
fn on_a_shared_store_what_no_connection_holds_leaves_memory() {
    let mut kit = shared(vec![stored("a", "p", 3)]);
    // Loaded to decide an EO that it refuses: gone again once decided.
    assert_eq!(code(kit.open(1, eo("a"))), ErrorCode::TransactionExists);
    assert_eq!(in_memory(&kit), 1);
    kit.registry.shed();
    assert_eq!(in_memory(&kit), 0);

    // Held, then released: written released, and gone once that write has settled.
    let opened = kit.open(1, eo("b").ps("q")).unwrap();
    delivered(&opened, 12);
    let (_, mutations) = kit.registry.release_all_of(1, 5_000);
    match &mutations[..] {
        [Mutation::PutTransaction(row)] => {
            assert_eq!((row.cursor, row.released_ms), (12, Some(5_000)));
        }
        other => panic!("{other:?}"),
    }
    kit.registry.shed();
    assert_eq!(in_memory(&kit), 1, "its release is not written yet");
    kit.registry.settled(&mutations, false);
    assert_eq!(in_memory(&kit), 0);

    // A release that failed for lack of space keeps it until it is written again.
    kit.stored.push(stored("b", "q", 12));
    let opened = kit.open(2, eo("b").ps("q")).unwrap();
    assert_eq!(opened.delivery.cursor, 12, "read from the store");
    let (_, mutations) = kit.registry.release_all_of(2, 6_000);
    kit.registry.settled(&mutations, true);
    assert_eq!(in_memory(&kit), 1);
    let again = kit.registry.resave_unsaved();
    assert!(matches!(&again[0], Mutation::PutTransaction(row) if row.released_ms == Some(6_000)));
    kit.registry.settled(&again, false);
    assert_eq!(in_memory(&kit), 0);
}

#[test]
fn on_a_shared_store_a_plain_transaction_claims_its_tx_until_it_ends() {
    let mut kit = shared(Vec::new());
    let opened = kit.open(1, eo("t")).unwrap();
    assert!(opened.delivery.gate.is_none(), "only persisted ones pause");
    assert_eq!(
        opened.mutations,
        [Mutation::ClaimTx {
            tenant: ns(),
            tx: Bytes::from_static(b"t"),
        }]
    );
    let (_, mutations) = kit.registry.end(&key("t")).unwrap();
    assert_eq!(
        mutations,
        [Mutation::UnclaimTx {
            tenant: ns(),
            tx: Bytes::from_static(b"t"),
        }]
    );
    kit.open(1, eo("u")).unwrap();
    let (_, mutations) = kit.registry.release_all_of(1, 1);
    assert!(matches!(&mutations[..], [Mutation::UnclaimTx { .. }]));
    // Claims whose write failed for lack of space are written again as they are then.
    let opened = kit.open(1, eo("v")).unwrap();
    kit.registry.settled(&opened.mutations, true);
    kit.registry.settled(&mutations, true);
    let mut again = kit.registry.resave_unsaved();
    again.sort_by_key(|m| format!("{m:?}"));
    assert_eq!(
        again,
        [
            Mutation::ClaimTx {
                tenant: ns(),
                tx: Bytes::from_static(b"v"),
            },
            Mutation::UnclaimTx {
                tenant: ns(),
                tx: Bytes::from_static(b"u"),
            },
        ]
    );
    assert!(kit.registry.resave_unsaved().is_empty());
    // A store alone keeps no claims.
    let mut alone = Kit::new(0);
    assert!(alone.open(1, eo("t")).unwrap().mutations.is_empty());
}

#[test]
fn a_transaction_another_node_took_over_leaves_this_one() {
    let mut kit = shared(Vec::new());
    let first = kit.open(1, eo("a").ps("p")).unwrap();
    let mut gate = first.delivery.gate.clone().expect("a persisted one pauses");
    assert!(
        !*gate.borrow_and_update(),
        "paused until the core has checked"
    );
    kit.registry.resume_persisted();
    assert!(*gate.borrow_and_update());
    kit.registry.pause_persisted();
    assert!(!*gate.borrow_and_update());

    let before = kit.registry.held_persisted(None);
    assert_eq!(before.len(), 1);
    // Opened again here meanwhile: what was checked before is not what is held now.
    kit.registry.settled(&first.mutations, true);
    let second = kit.open(2, eo("a").ps("p")).unwrap();
    assert!(second.taken_over.is_some());
    assert!(kit.registry.lost(before).is_empty());
    let now = kit
        .registry
        .held_persisted(Some(&[(ns(), Bytes::from_static(b"p"))]));
    let ended = kit.registry.lost(now);
    assert_eq!(
        ended.iter().map(|e| e.connection()).collect::<Vec<_>>(),
        [2]
    );
    assert_eq!(in_memory(&kit), 0);
    // Its row is not this node's any more: nothing is written of it again, not even a delete.
    assert!(kit.registry.resave_unsaved().is_empty());
    assert!(kit.registry.release_all_of(2, 1).1.is_empty());
}
