//! A fault test's run, from setup to verdict: the settings from the environment, the world's
//! first start, the transactions opened, producers and chaos for the chaos phase, the final
//! clean restart, the last re-sends and the drain; then the checks, the report, and the
//! assertion.
//!
//! Owns: the order of the phases and their time limits, and which producer and subscriber
//! prefers which node (producer j and subscriber i of the run: node j % nodes, i % nodes).
//! Never: decides what a history means (`checks`), or starts a process itself (`world`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;

use super::calls::Script;
use super::checks;
use super::database::PgCluster;
use super::producers::{producer, ProducerLog};
use super::subscribers::{subscriber, SubLog};
use super::world::{chaos, ChaosPlan, World};
use super::{
    CONNECT_PATIENCE, DRAIN_BOUND, IO_PATIENCE, PRODUCERS_PER_TENANT, PRODUCER_FINISH,
    SETUP_PATIENCE, START_PATIENCE, STOP_PATIENCE, TENANTS, TRANSACTIONS_PER_TENANT,
};

/// What a test runs: its name, its nodes and their database, its calls, its chaos, and the
/// defaults of its knobs.
pub struct Test {
    pub name: &'static str,
    pub nodes: usize,
    /// The database the nodes share, the test's own; `None`: one node, on the store the suite
    /// runs against.
    pub database: Option<Arc<PgCluster>>,
    pub scripts: &'static [Script],
    pub chaos: ChaosPlan,
    /// The schedule CI runs, unless `OZBUS_FAULT_SEED` says otherwise.
    pub default_seed: u64,
    /// Calls per second per producer, unless `OZBUS_FAULT_RATE` says otherwise.
    pub default_rate: u64,
}

/// What the environment asks of the run.
pub struct Settings {
    pub chaos: Duration,
    pub seed: u64,
    pub rate: f64,
}

impl Settings {
    /// `OZBUS_FAULT_SECONDS` (default 30), `OZBUS_FAULT_SEED` (a number, or `random`),
    /// `OZBUS_FAULT_RATE`.
    pub fn from_env(test: &Test) -> Settings {
        let seed = match std::env::var("OZBUS_FAULT_SEED") {
            Ok(value) if value.trim() == "random" => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
            _ => env_number("OZBUS_FAULT_SEED").unwrap_or(test.default_seed),
        };
        Settings {
            chaos: Duration::from_secs(env_number("OZBUS_FAULT_SECONDS").unwrap_or(30)),
            seed,
            rate: env_number("OZBUS_FAULT_RATE").unwrap_or(test.default_rate) as f64,
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

type Producers = Vec<(&'static str, usize, Arc<Mutex<ProducerLog>>)>;

/// Runs `test` and asserts its verdict: panics with the violations and problems found.
pub async fn run_test(test: Test) {
    let settings = Settings::from_env(&test);
    let name = test.name;
    println!(
        "{name}: seed={} chaos={:?} rate={}/s per producer, {} node(s) (replay: OZBUS_FAULT_SEED={})",
        settings.seed, settings.chaos, settings.rate, test.nodes, settings.seed
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let world = Arc::new(World::new(
        name,
        dir.path(),
        test.nodes,
        test.database.clone(),
        test.scripts,
    ));

    let producers: Producers = TENANTS
        .iter()
        .flat_map(|&tenant| {
            (0..PRODUCERS_PER_TENANT)
                .map(move |index| (tenant, index, Arc::new(Mutex::new(ProducerLog::default()))))
        })
        .collect();
    let subscribers: Vec<_> = TENANTS
        .iter()
        .flat_map(|&tenant| {
            TRANSACTIONS_PER_TENANT
                .iter()
                .map(move |name| (tenant, name))
        })
        .enumerate()
        .map(|(i, (tenant, name))| {
            Arc::new(Mutex::new(SubLog::new(
                tenant,
                format!("ps-{tenant}-{name}"),
                i % test.nodes,
            )))
        })
        .collect();

    let hard_cap = settings.chaos + Duration::from_secs(90);
    let finished = timeout(
        hard_cap,
        run(&world, &test, &settings, &producers, &subscribers),
    )
    .await;
    world.shut_down().await;

    let report = checks::check(
        &world,
        settings.chaos,
        &test.chaos,
        &producers,
        &subscribers,
    );
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

/// Setup, chaos, final clean restart and drain. Problems go to `world`.
async fn run(
    world: &Arc<World>,
    test: &Test,
    settings: &Settings,
    producers: &Producers,
    subscribers: &[Arc<Mutex<SubLog>>],
) {
    let name = world.name;
    for node in 0..world.node_count() {
        if let Err(error) = world.start(node).await {
            world.fatal(format!("first start of node {node}: {error}"));
            return;
        }
    }
    // Ends with the run (shut_down aborts it).
    tokio::spawn(world.clone().supervise());

    // The transactions exist (their EO confirmed) before the first outcome is reported, so
    // every outcome is theirs to receive.
    let mut order_senders = Vec::new();
    let mut subscriber_tasks = Vec::new();
    let mut readiness = Vec::new();
    for log in subscribers {
        let (order_tx, order_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        order_senders.push(order_tx);
        readiness.push(ready_rx);
        subscriber_tasks.push(tokio::spawn(subscriber(
            world.clone(),
            log.clone(),
            order_rx,
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
        "{name}: {} transactions open; chaos for {:?}",
        subscribers.len(),
        settings.chaos
    );

    let stop_producers = CancellationToken::new();
    let give_up = CancellationToken::new();
    let mut producer_tasks: Vec<_> = producers
        .iter()
        .enumerate()
        .map(|(j, (tenant, index, log))| {
            tokio::spawn(producer(
                world.clone(),
                tenant,
                *index,
                j % world.node_count(),
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
        test.chaos,
        settings.seed,
        settings.chaos,
        stop_chaos.clone(),
        order_senders,
    ));

    tokio::select! {
        _ = world.abort.cancelled() => {}
        _ = sleep(settings.chaos) => {}
    }

    // Stop the chaos (a restart under way completes, a halted database is resumed) and
    // anything new from the producers; they go on re-sending what is unanswered.
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

    // One last restart of every node, clean this time. The producers re-send what is still
    // unanswered to them until everything has its MV; then every transaction re-issues on a
    // final node and drains.
    println!("{name}: chaos over; final clean restart, last re-sends and drain");
    if let Err(error) = world.restart_final().await {
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
