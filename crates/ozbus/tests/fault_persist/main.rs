//! Persisted sequenced transactions (EO with PS and XS, acknowledged with XA) and exactly-once
//! ingest (XK) under faults, in the style of a Jepsen queue test.
//!
//! A real `ozbus serve` process takes failure outcomes (CF) of two tenants from four producers
//! while four persisted transactions (two per tenant) consume them. Each tenant has one user
//! (system and supervisor privileges, in the server's configuration file); every producer and
//! subscriber connection authenticates as its tenant's user, so its messages name no tenant
//! (TD): the server puts them in the user's. Every CF carries an idempotency key (XK, unique
//! per message); a producer keeps every message without an answer and re-sends it, same frame,
//! same key, after every reconnect, until it gets its MV or ER. Meanwhile the server is
//! SIGKILLed and restarted on the same data directory (on new ports) again and again, and
//! subscriber connections are reset (RST). When the chaos stops, the producers send nothing
//! new; the server is restarted cleanly, the producers re-send what is still unanswered to it
//! until everything has its MV (within PRODUCER_FINISH), every transaction re-issues and
//! drains, and the histories are checked:
//!
//! - zero lost: every outcome sent got its MV by the end (none is left "sent, fate unknown")
//!   and none got an ER; every acknowledged outcome of tenant T reached every persisted
//!   transaction of T;
//! - zero duplicated: every outcome was delivered under exactly one XS, across every
//!   transaction, however often it was re-sent (a re-send that took effect a second time
//!   would be the same SI under another XS); the servers counted no more re-sends without
//!   effect than were made;
//! - per transaction, XS strictly increases while one connection holds it; after a re-issue it
//!   may go back, but never to or below an XS whose XA was confirmed (MV), and the events after
//!   the last XA sent come again (nothing skipped); the same XS is always the same event;
//! - no transaction received another tenant's outcome (TD of the OZ);
//! - every delivered outcome was sent by a producer, and none that got an ER was delivered;
//! - no gap notice (XG), no unexpected frame, and a clean final SIGTERM.
//!
//! The counts line reports, besides what was sent, acknowledged and delivered, the re-sends
//! (`resent`, and how many of them after the chaos), those answered with MV
//! (`resent_acknowledged`), those the servers counted as having no effect (`resent_duplicates`:
//! `ozbus_ingest_duplicates_total`, read from each server just before it is stopped, so a
//! re-send arriving in between is missed), the messages left unanswered (`unacknowledged`),
//! the outcomes delivered under more than one XS (`duplicated_outcomes`), and the events a
//! transaction received again after a re-issue (`redelivered`: at-least-once delivery,
//! allowed).
//!
//! Producers and subscribers are clients of the `sdmp-client` crate ([`sdmp_client::Session`]
//! with its receipts, [`sdmp_client::Subscription`] per connection); the reconnecting, the
//! re-sending, the re-issuing and the bookkeeping are the test's own, so that it sees every
//! frame each connection delivered, repeats included.
//!
//! The modules: `world` (the server process, its restarts and the chaos schedule), `producers`,
//! `subscribers`, `checks` (the verdict from the histories).
//!
//! Default run: about 40 s (30 s of chaos), on a fixed schedule (seed [`DEFAULT_SEED`]), so CI
//! runs the same schedule every time. A long run on a fresh schedule:
//!
//! ```text
//! OZBUS_FAULT_SEED=random OZBUS_FAULT_SECONDS=600 cargo test --release -p ozbus --test fault_persist -- --nocapture
//! ```
//!
//! Knobs (environment): `OZBUS_FAULT_SECONDS` chaos phase in seconds (default 30);
//! `OZBUS_FAULT_SEED` seed of the chaos schedule: a number, or `random` for one from the clock
//! (default [`DEFAULT_SEED`]; the seed is printed, to replay a schedule);
//! `OZBUS_FAULT_RATE` outcomes per second per producer (default 500).

#[path = "../fault_common/mod.rs"]
mod fault_common;
#[path = "../server_common/mod.rs"]
mod server_common;
#[path = "../users_common/mod.rs"]
mod users_common;

mod checks;
mod producers;
mod subscribers;
mod world;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use producers::{producer, ProducerLog};
use subscribers::{subscriber, SubLog};
use world::{chaos, World};

/// The schedule CI runs: any fixed number; `OZBUS_FAULT_SEED` chooses another.
const DEFAULT_SEED: u64 = 20_261_125;

const TENANTS: [&str; 2] = ["t1", "t2"];
const PRODUCERS_PER_TENANT: usize = 2;
const TRANSACTIONS_PER_TENANT: [&str; 2] = ["a", "b"];
const CAMPAIGN: &str = "fault";

const CONNECT_PATIENCE: Duration = Duration::from_secs(2);
const IO_PATIENCE: Duration = Duration::from_secs(5);
/// After the final clean restart, how long the producers have to get an MV for everything they
/// sent (re-sending to the final server); then they are told to give up.
const PRODUCER_FINISH: Duration = Duration::from_secs(20);
const START_PATIENCE: Duration = Duration::from_secs(30);
const STOP_PATIENCE: Duration = Duration::from_secs(15);
const SETUP_PATIENCE: Duration = Duration::from_secs(15);
/// Final drain: every subscriber must be done (drained and ended) within this.
const DRAIN_BOUND: Duration = Duration::from_secs(20);
/// Violations kept for the report (all are counted).
const KEEP_VIOLATIONS: usize = 60;

/// What the environment asks of the run.
struct Settings {
    chaos: Duration,
    seed: u64,
    rate: f64,
}

impl Settings {
    fn from_env() -> Settings {
        let seed = match std::env::var("OZBUS_FAULT_SEED") {
            Ok(value) if value.trim() == "random" => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
            _ => env_number("OZBUS_FAULT_SEED").unwrap_or(DEFAULT_SEED),
        };
        Settings {
            chaos: Duration::from_secs(env_number("OZBUS_FAULT_SECONDS").unwrap_or(30)),
            seed,
            rate: env_number("OZBUS_FAULT_RATE").unwrap_or(500) as f64,
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// Setup, chaos, final clean restart and drain. Problems go to `world`.
async fn run(
    world: &Arc<World>,
    settings: &Settings,
    producers: &[(&'static str, usize, Arc<Mutex<ProducerLog>>)],
    subscribers: &[Arc<Mutex<SubLog>>],
) {
    if let Err(error) = world.start(false).await {
        world.fatal(format!("first start: {error}"));
        return;
    }

    // The transactions exist (their EO confirmed) before the first outcome is reported, so
    // every outcome is theirs to receive.
    let mut reset_senders = Vec::new();
    let mut subscriber_tasks = Vec::new();
    let mut readiness = Vec::new();
    for log in subscribers {
        let (reset_tx, reset_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        reset_senders.push(reset_tx);
        readiness.push(ready_rx);
        subscriber_tasks.push(tokio::spawn(subscriber(
            world.clone(),
            log.clone(),
            reset_rx,
            Some(ready_tx),
        )));
    }
    let all_ready = async {
        for ready in readiness {
            let _ = ready.await;
        }
    };
    tokio::select! {
        _ = world.abort.cancelled() => return,
        ready = timeout(SETUP_PATIENCE, all_ready) => if ready.is_err() {
            world.fatal(format!("the transactions were not all opened within {SETUP_PATIENCE:?}"));
            return;
        },
    }
    println!(
        "fault_persist: {} transactions open; chaos for {:?}",
        subscribers.len(),
        settings.chaos
    );

    let stop_producers = CancellationToken::new();
    let give_up = CancellationToken::new();
    let mut producer_tasks: Vec<_> = producers
        .iter()
        .map(|(tenant, index, log)| {
            tokio::spawn(producer(
                world.clone(),
                tenant,
                *index,
                settings.rate,
                stop_producers.clone(),
                give_up.clone(),
                log.clone(),
            ))
        })
        .collect();
    let stop_chaos = CancellationToken::new();
    let chaos_task = tokio::spawn(chaos(
        world.clone(),
        settings.seed,
        stop_chaos.clone(),
        reset_senders,
    ));

    tokio::select! {
        _ = world.abort.cancelled() => {}
        _ = sleep(settings.chaos) => {}
    }

    // Stop the chaos (a restart under way completes) and anything new from the producers; they
    // go on re-sending what is unanswered.
    stop_chaos.cancel();
    stop_producers.cancel();
    if timeout(START_PATIENCE + STOP_PATIENCE, chaos_task)
        .await
        .is_err()
    {
        world.fatal("the chaos task did not stop".into());
    }
    if world.abort.is_cancelled() {
        return;
    }

    // One last restart, clean this time. The producers re-send what is still unanswered to it
    // until everything has its MV; then every transaction re-issues on it and drains.
    println!("fault_persist: chaos over; final clean restart, last re-sends and drain");
    if let Err(error) = world.restart(true).await {
        world.fatal(format!("final restart: {error}"));
        return;
    }
    let all_answered = timeout(PRODUCER_FINISH, join_all(&mut producer_tasks)).await;
    if all_answered.is_err() {
        // What is still unanswered is reported by the checks.
        give_up.cancel();
        let stopped = timeout(
            IO_PATIENCE + CONNECT_PATIENCE,
            join_all(&mut producer_tasks),
        )
        .await;
        if stopped.is_err() {
            world.fatal("a producer did not stop".into());
            return;
        }
    }
    let _ = world.producers_finished.set(tokio::time::Instant::now());
    let drained = timeout(DRAIN_BOUND, async {
        for task in subscriber_tasks {
            let _ = task.await;
        }
    })
    .await;
    if drained.is_err() {
        let late: Vec<String> = subscribers
            .iter()
            .map(|log| log.lock().unwrap())
            .filter(|log| !log.ended)
            .map(|log| log.ps.clone())
            .collect();
        world.problem(format!(
            "not drained and ended within {DRAIN_BOUND:?}: {late:?}"
        ));
    }
}

/// Waits for every task of `tasks`, taking each one out once it has ended (so that a wait cut
/// short can be resumed).
async fn join_all(tasks: &mut Vec<tokio::task::JoinHandle<()>>) {
    while let Some(task) = tasks.last_mut() {
        let _ = task.await;
        tasks.pop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_delivered_exactly_once_under_kills_and_resets() {
    let settings = Settings::from_env();
    println!(
        "fault_persist: seed={} chaos={:?} rate={}/s per producer (replay: OZBUS_FAULT_SEED={})",
        settings.seed, settings.chaos, settings.rate, settings.seed
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let world = Arc::new(World::new(dir.path()));

    let producers: Vec<_> = TENANTS
        .iter()
        .flat_map(|&tenant| {
            (0..PRODUCERS_PER_TENANT)
                .map(move |index| (tenant, index, Arc::new(Mutex::new(ProducerLog::default()))))
        })
        .collect();
    let subscribers: Vec<_> = TENANTS
        .iter()
        .flat_map(|&tenant| {
            TRANSACTIONS_PER_TENANT.iter().map(move |name| {
                Arc::new(Mutex::new(SubLog::new(
                    tenant,
                    format!("ps-{tenant}-{name}"),
                )))
            })
        })
        .collect();

    let hard_cap = settings.chaos + Duration::from_secs(90);
    let finished = timeout(hard_cap, run(&world, &settings, &producers, &subscribers)).await;
    world.shut_down().await;

    let report = checks::check(&world, settings.chaos, &producers, &subscribers);
    println!("{}", report.counts);
    for line in &report.details {
        println!("  {line}");
    }
    let problems = world.problems.lock().unwrap().clone();
    if let Some(fatal) = world.fatal.lock().unwrap().clone() {
        panic!("stopped early: {fatal}");
    }
    assert!(
        finished.is_ok(),
        "the test hit its hard cap of {hard_cap:?}"
    );
    for violation in &report.violations {
        println!("VIOLATION {violation}");
    }
    for problem in &problems {
        println!("PROBLEM {problem}");
    }
    assert!(
        report.violations.is_empty() && problems.is_empty(),
        "{} violation(s), {} problem(s) on the wire (listed above); first: {:?}",
        report.violation_count,
        problems.len(),
        report.violations.first().or(problems.first())
    );
}
