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
//! The machinery is `fault_common`'s, shared with fault_cluster (two nodes on one PostgreSQL):
//! `world` (the server process, its restarts and the chaos schedule), `calls` (here each call
//! is one CF), `producers`, `subscribers`, `checks` (the verdict from the histories), `run`.
//! This file owns what this test runs: one node, on the store the suite runs against (SQLite,
//! or PostgreSQL with `OZBUS_TEST_STORE=postgres`), CF alone, kills and resets; it never does
//! anything of the machinery itself.
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

use fault_common::calls::Script;
use fault_common::run::{run_test, Test};
use fault_common::world::ChaosPlan;

/// The schedule CI runs: any fixed number; `OZBUS_FAULT_SEED` chooses another.
const DEFAULT_SEED: u64 = 20_261_125;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_delivered_exactly_once_under_kills_and_resets() {
    run_test(Test {
        name: "fault_persist",
        nodes: 1,
        database: None,
        scripts: &[Script::Failed],
        // A SIGKILL + restart every 1.5–2.5 s (so 30 s give at least 10 kills), and a reset of
        // a random subscriber's connection every 2.5–3.5 s.
        chaos: ChaosPlan {
            kill_every_ms: (1500, 2500),
            reset_every_ms: (2500, 3500),
            move_every_ms: None,
            database: false,
        },
        default_seed: DEFAULT_SEED,
        default_rate: 500,
    })
    .await;
}
