//! The fault tests' shared machinery (fault_persist: one node; fault_cluster: two nodes on one
//! PostgreSQL), in the style of a Jepsen queue test: the world of server processes and its
//! chaos (`world`), the calls producers report (`calls`), the producers (`producers`), the
//! persisted transactions that consume them (`subscribers`), the verdict (`checks`), the run
//! from setup to verdict (`run`), and a throw-away PostgreSQL cluster the test may restart
//! (`database`). Here: what every part of them shares (the tenants, the time limits), a tiny
//! seeded RNG (so a run's chaos follows from its seed), and control of server processes with
//! time limits (so a hung server can never hang the test). The clients of these tests come
//! from the `sdmp-client` crate.
//!
//! Never: judges a history outside `checks`, or leaves a process or a cluster behind it
//! started (every exit path kills them).
#![allow(dead_code)]

pub mod calls;
pub mod checks;
pub mod database;
pub mod producers;
pub mod run;
pub mod subscribers;
pub mod world;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The tenants; each has one user, producers and persisted transactions.
pub const TENANTS: [&str; 2] = ["t1", "t2"];
pub const PRODUCERS_PER_TENANT: usize = 2;
pub const TRANSACTIONS_PER_TENANT: [&str; 2] = ["a", "b"];

pub const CONNECT_PATIENCE: Duration = Duration::from_secs(2);
pub const IO_PATIENCE: Duration = Duration::from_secs(5);
/// After the final clean restart, how long the producers have to get an MV for everything they
/// sent (re-sending to the final servers); then they are told to give up.
pub const PRODUCER_FINISH: Duration = Duration::from_secs(20);
pub const START_PATIENCE: Duration = Duration::from_secs(30);
pub const STOP_PATIENCE: Duration = Duration::from_secs(15);
pub const SETUP_PATIENCE: Duration = Duration::from_secs(15);
/// Final drain: every subscriber must be done (drained and ended) within this.
pub const DRAIN_BOUND: Duration = Duration::from_secs(20);
/// The takeover overlap: when a re-issue of a persisted transaction is confirmed (the MV of
/// its EO) at t, the connection that held it before may still receive OZ frames until t + this,
/// and none later. docs/protocol.md ("PersistToken") says the two connections "may briefly both
/// receive events around the takeover"; this is how brief the tests hold it to be, on one node
/// and across nodes.
pub const TAKEOVER_OVERLAP: Duration = Duration::from_secs(2);
/// Violations kept for the report (all are counted).
pub const KEEP_VIOLATIONS: usize = 60;

/// xorshift64: a tiny deterministic RNG, so a run's chaos schedule follows from its seed.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        // splitmix64 of the seed: no zero state, and close seeds give unrelated sequences.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(if z == 0 { 1 } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-enough in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A duration between `lo_ms` and `hi_ms` milliseconds.
    pub fn millis_between(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(lo_ms + self.below(hi_ms - lo_ms + 1))
    }
}

/// Runs a blocking call (starting, killing, stopping a server process) on its own thread, with a
/// time limit. A panic in it becomes an error. On time-out the thread is left behind: the caller
/// unblocks it (for server processes: `kill_servers_of`).
pub async fn blocking<T: Send + 'static>(
    within: Duration,
    what: &str,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call));
        let _ = done.send(outcome);
    });
    match tokio::time::timeout(within, result).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(panic))) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(format!("{what}: {message}"))
        }
        Ok(Err(_)) => Err(format!("{what}: the thread vanished")),
        Err(_) => Err(format!("{what}: no result within {within:?}")),
    }
}

/// Last resort: SIGKILLs every process whose command line holds `--data-dir <data_dir>` (the
/// servers this test started: the temporary directory is unique). Returns how many.
pub fn kill_servers_of(data_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let wanted = data_dir.as_os_str().as_bytes();
    let mut killed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let serves_it = args
            .windows(2)
            .any(|w| w[0] == b"--data-dir" && w[1] == wanted);
        if serves_it && Command::new("kill").args(["-KILL", pid]).status().is_ok() {
            killed += 1;
        }
    }
    killed
}
