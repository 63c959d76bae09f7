//! `ozbus bench --connect-storm N`: N clients connecting at once, as after a restart or a
//! network blip, each asking `VS` and waiting for its `DA`.
//!
//! Owns: opening the N connections together (every attempt starts before any has an
//! answer), timing each from its first attempt to its DA, and holding every connection open
//! until all are answered, so the server carries them all at once. Never: retries a client
//! that failed (a refused or timed-out connection counts as failed), or measures anything
//! beyond connecting and the one VS.

use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use sdmp_client::{frame_bytes, frame_code};
use tokio::time::Instant;

use super::Access;

/// How long one client may take, connect and DA together, before it counts as failed.
const PATIENCE: Duration = Duration::from_secs(30);
/// A client answered later than this waited noticeably (a dropped SYN costs a second).
const SLOW: Duration = Duration::from_millis(500);

/// What a storm measured; times in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct StormReport {
    pub clients: usize,
    pub answered: usize,
    pub failed: usize,
    /// From the first attempt to the last DA.
    pub all_answered_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Clients answered after more than 500 ms.
    pub slow: usize,
}

/// Runs a storm of `clients` against `addr` (connections opened as `access` says) and prints
/// one line about it.
pub async fn run(
    access: &Access,
    addr: &str,
    clients: usize,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<StormReport> {
    if clients == 0 {
        bail!("--connect-storm needs at least 1 client");
    }
    let began = Instant::now();
    let attempts = (0..clients).map(|_| async {
        let started = Instant::now();
        tokio::time::timeout(PATIENCE, async {
            let mut conn = access.connect_to(addr).await.ok()?;
            conn.send(&b"VS"[..]).await.ok()?;
            while let Some(Ok(frame)) = conn.next_frame().await {
                if frame_code(frame_bytes(&frame)) == Some(sdmp_client::codes::DA) {
                    return Some((started.elapsed(), conn));
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    });
    // Polled together on this task: every attempt starts before any is answered, and every
    // connection stays open until the last one is done.
    let results = futures::future::join_all(attempts).await;
    let all_answered = began.elapsed();
    let mut times: Vec<Duration> = results.iter().flatten().map(|(took, _)| *took).collect();
    times.sort();
    let percentile = |p: f64| {
        times
            .get(((times.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let report = StormReport {
        clients,
        answered: times.len(),
        failed: clients - times.len(),
        all_answered_ms: all_answered.as_secs_f64() * 1000.0,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        max_ms: percentile(1.0),
        slow: times.iter().filter(|took| **took > SLOW).count(),
    };
    drop(results);
    writeln!(
        out,
        "connect storm: {} clients at once, {} answered (DA to VS), {} failed, all within \
         {:.0} ms; per client p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} waited over 500 ms",
        report.clients,
        report.answered,
        report.failed,
        report.all_answered_ms,
        report.p50_ms,
        report.p99_ms,
        report.max_ms,
        report.slow
    )?;
    Ok(report)
}
