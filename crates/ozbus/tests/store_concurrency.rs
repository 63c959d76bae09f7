//! Many submitters at once, on both backends (SQLite and PostgreSQL, through `Store`): every
//! batch resolves, sequence numbers are exactly 1..=N and follow each submitter's own order.

mod pg_common;
mod store_common;

use std::time::Instant;

use ozbus::store::{Mutation, SqliteStore, StoreOptions};
use store_common::{on_both_backends, options, outcome, Kind, Place, ReadAfter};

const SUBMITTERS: usize = 8;
const PER_SUBMITTER: usize = 1_250;

on_both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    ten_thousand_concurrent_batches_get_exactly_their_seqs,
);

async fn ten_thousand_concurrent_batches_get_exactly_their_seqs(kind: Kind) {
    let place = Place::new(kind).await;
    let store = place.open().await;
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

    // And the log holds each submitter's outcomes in its submission order.
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

/// Not a test of speed (nothing is asserted about time): prints how long N single-outcome
/// batches take end to end, for a quick look with
/// `cargo test --release -p ozbus --test store_concurrency -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn report_single_outcome_batch_throughput() {
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(StoreOptions { ..options(&dir) }).unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for submitter in 0..SUBMITTERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut tickets = Vec::new();
            for i in 0..N / SUBMITTERS {
                let mut o = outcome(b"default", b"Sales1", format!("{submitter}-{i}").as_bytes());
                o.dt = bytes::Bytes::from_static(b"customer=12345;balance=10.00");
                tickets.push(store.submit(vec![Mutation::Append(o)]));
            }
            for ticket in tickets {
                ticket.await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "{N} single-outcome batches committed in {elapsed:?} ({:.0}/s)",
        N as f64 / elapsed.as_secs_f64()
    );
    store.close().unwrap();
}
