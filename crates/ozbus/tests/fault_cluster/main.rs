//! Two ozbus nodes on one PostgreSQL under faults, in the style of a Jepsen queue test: the
//! call book decided by one node at a time, reports forwarded to it, persisted sequenced
//! transactions (EO with PS and XS, acknowledged with XA) held on either node, and exactly-once
//! ingest (XK), while nodes are SIGKILLed, the database restarts and goes away, and
//! transactions are taken over across nodes.
//!
//! The test starts a PostgreSQL cluster of its own (`scripts/pg-cluster`, in a temporary
//! directory, removed at the end however the test ends; without PostgreSQL's server programs it
//! fails with the script's message), and two `ozbus serve` nodes on one database of it, each
//! with its own data directory. Two tenants, each with one user (system and supervisor
//! privileges); every connection authenticates as its tenant's user. Four producers (two per
//! tenant) report calls, each through the call book: MC then CF, or MC, LC to an agent of the
//! producer's and that agent's TC, every report under its own idempotency key (XK), a call's
//! next report only once the one before got its MV; four persisted transactions (two per
//! tenant) consume the outcomes (SO and FO). Producer j and subscriber i prefer node j % 2 and
//! i % 2, and connect to the other node when theirs is down. A producer re-sends every report
//! without an answer, same frame, same key, after every reconnect, until it gets its MV or an
//! ER; an ER with EC 815 (no node holds the call book now: nothing was done) is sent again
//! after a back-off, and a connection a node closes without an answer (a forwarded report whose
//! effect is unknown) is a reconnect like any other.
//!
//! The chaos, on a schedule drawn from the seed, for the chaos phase:
//!
//! - a SIGKILL + restart (same data directory, new ports) of a random node every 2–3 s, the
//!   call book's holder or not;
//! - a reset (RST) of a random subscriber's connection every 2.5–3.5 s;
//! - a move every 2–4 s: a random subscriber re-issues its transaction on the other node while
//!   its connection still holds it (first acknowledging, confirmed, what it received there),
//!   and reads the old connection, acknowledging nothing on it, until its EF (or until 2 s
//!   after the overlap allowed; then it closes it); a move is skipped while the subscriber's
//!   last one is not over, or the other node is down;
//! - exactly once, `pg-cluster restart` of the database (immediate: as a crash), and exactly
//!   once `pg-cluster halt` for 3 s then `resume` (both nodes cut off from the database; a node
//!   killed meanwhile does not start until the database is back, and is started again until it
//!   does), one of them between 20 and 40 % of the phase, the other between 55 and 70 %.
//!
//! When the chaos stops, the producers begin no new calls; both nodes are restarted cleanly
//! (SIGTERM), the producers re-send what is still unanswered until everything has its MV
//! (within PRODUCER_FINISH), every transaction re-issues on a final node and drains, and the
//! histories are checked:
//!
//! - zero lost: every call's outcome got its MV (the MV of its last report) by the end, and no
//!   report got an ER (but EC 815, which is sent again); every acknowledged outcome of tenant T
//!   reached every persisted transaction of T;
//! - one call, one outcome: every call's SI appears in at most one outcome, under one XS,
//!   across every transaction, however often its reports were re-sent and whichever nodes they
//!   went through (a second effect of a report, or a second outcome of a call, is the same SI
//!   under another XS); every OZ says what its call's script makes (RE 2 for a CF, RE 10 with
//!   the agent and AO for a TC); the servers counted no more re-sends without effect than were
//!   made;
//! - per transaction, XS strictly increases on each connection; after a re-issue it may go
//!   back, but never to or below an XS whose XA was confirmed (MV), and the events after the
//!   last XA sent come again (nothing skipped); the same XS is always the same event;
//! - no transaction delivered by two connections at once beyond the takeover overlap: once a
//!   re-issue's EO got its MV at t, no earlier connection of that transaction, on either node,
//!   receives an OZ after t + TAKEOVER_OVERLAP (2 s: how brief the tests hold protocol.md's
//!   "may briefly both receive events around the takeover" to be); an EF comes only to a
//!   connection taken over;
//! - no transaction received another tenant's outcome (TD of the OZ);
//! - every delivered outcome is of a call a producer began, and none that got an ER;
//! - no gap notice (XG), no unexpected frame, clean final SIGTERMs; the database was restarted
//!   once and halted once.
//!
//! A node that exits by itself is a problem (quoted from its log), and is started again so
//! that the run goes on.
//!
//! The counts line is fault_persist's (`sent` counts calls) and adds the nodes, the reports
//! sent, the EC 815 answers (`no_holder`), the moves, the database's restarts and halts, the
//! starts of a node that failed while the database was away (`failed_starts`, tried again),
//! and the processes that exited by themselves. The details give each producer and
//! transaction (with `longest_overlap`: the longest an earlier connection went on receiving
//! after a re-issue was confirmed), what became of the moves, and the whole history of a
//! transaction with a violation (each connection: node, generation, when its EO was confirmed
//! and when it ended, the cursor at its EO, the XS it received).
//!
//! The machinery is `fault_common`'s, shared with fault_persist: `world` (the nodes, their
//! restarts, the database's turns and the chaos schedule), `calls`, `producers`, `subscribers`,
//! `checks`, `run`, `database` (the test's PostgreSQL cluster). This file owns what this test
//! runs: two nodes, its own cluster, calls through the call book, the chaos above; it never
//! does anything of the machinery itself, nor uses the cluster `OZBUS_TEST_PG_URL` names.
//!
//! Default run: about 40 s (30 s of chaos), on a fixed schedule (seed [`DEFAULT_SEED`]), so CI
//! runs the same schedule every time. A long run on a fresh schedule:
//!
//! ```text
//! OZBUS_FAULT_SEED=random OZBUS_FAULT_SECONDS=600 cargo test --release -p ozbus --test fault_cluster -- --nocapture
//! ```
//!
//! Knobs (environment): `OZBUS_FAULT_SECONDS` chaos phase in seconds (default 30);
//! `OZBUS_FAULT_SEED` seed of the chaos schedule: a number, or `random` for one from the clock
//! (default [`DEFAULT_SEED`]; the seed is printed, to replay a schedule);
//! `OZBUS_FAULT_RATE` calls per second per producer (default 100).

#[path = "../fault_common/mod.rs"]
mod fault_common;
#[path = "../server_common/mod.rs"]
mod server_common;
#[path = "../users_common/mod.rs"]
mod users_common;

use std::sync::Arc;

use fault_common::calls::Script;
use fault_common::database::PgCluster;
use fault_common::run::{run_test, Test};
use fault_common::world::ChaosPlan;

/// The schedule CI runs: any fixed number; `OZBUS_FAULT_SEED` chooses another.
const DEFAULT_SEED: u64 = 20_261_207;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_under_kills_restarts_and_takeovers() {
    let database = PgCluster::start().unwrap_or_else(|error| {
        panic!("fault_cluster needs a PostgreSQL cluster of its own: {error}")
    });
    println!("fault_cluster: PostgreSQL at {}", database.url);
    run_test(Test {
        name: "fault_cluster",
        nodes: 2,
        database: Some(Arc::new(database)),
        scripts: &[Script::MadeFailed, Script::MadeCompleted],
        chaos: ChaosPlan {
            kill_every_ms: (2000, 3000),
            reset_every_ms: (2500, 3500),
            move_every_ms: Some((2000, 4000)),
            database: true,
        },
        default_seed: DEFAULT_SEED,
        default_rate: 100,
    })
    .await;
}
