//! `ozbus bench --roll-forward N`: how fast a persisted transaction catches up.
//!
//! Opens a persisted transaction (PS, CS1000000), leaves, buffers N outcomes while it is away,
//! re-issues it, and measures the resume latency (EO sent to first OZ) and the roll-forward
//! rate (OZ per second until the N-th). Frames are counted as the codec cuts them, not parsed,
//! so the client costs next to nothing.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::FutureExt;
use sdmp_client::Connection;
use tokio::time::Instant;

use super::Access;

/// How long any single wait may take before the run gives up.
const PATIENCE: Duration = Duration::from_secs(120);
/// Outcomes written per batch while buffering; the batch's last one asks for an MV.
const BATCH: u64 = 5_000;

pub struct RollForwardReport {
    pub outcomes: u64,
    pub buffered_per_sec: f64,
    pub resume_latency_ms: f64,
    pub events_per_sec: f64,
}

/// Measures against `addr`, every connection opened (and authenticated) as `access` says.
pub async fn run(
    access: &Access,
    addr: &str,
    outcomes: u64,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<RollForwardReport> {
    if outcomes == 0 {
        bail!("--roll-forward needs at least 1 outcome");
    }
    let mut subscriber = access.connect_to(addr).await?;
    subscriber
        .send("EO\\TXroll\\FO\\CNroll\\PSroll\\CS1000000\\TKopen")
        .await?;
    expect_frames(&mut subscriber, 1)
        .await
        .context("waiting for the EO's MV")?;
    drop(subscriber);

    let started = Instant::now();
    buffer(access, addr, outcomes).await?;
    let buffered_per_sec = outcomes as f64 / started.elapsed().as_secs_f64();

    let mut subscriber = access.connect_to(addr).await?;
    let reissued = Instant::now();
    subscriber
        .send("EO\\TXroll\\FO\\CNroll\\PSroll\\CS1000000")
        .await?;
    expect_frames(&mut subscriber, 1)
        .await
        .context("waiting for the first OZ")?;
    let first = reissued.elapsed();
    expect_frames(&mut subscriber, outcomes - 1)
        .await
        .context("waiting for the roll-forward")?;
    let all = reissued.elapsed();
    // More than were buffered is a server's mistake (events sent twice); seen when it comes
    // with the last ones.
    if let Some(Some(Ok(_))) = subscriber.next_frame().now_or_never() {
        bail!("received more than the {outcomes} outcomes buffered");
    }
    subscriber.send("EE\\TXroll").await?;

    let report = RollForwardReport {
        outcomes,
        buffered_per_sec,
        resume_latency_ms: first.as_secs_f64() * 1e3,
        events_per_sec: outcomes as f64 / all.as_secs_f64(),
    };
    writeln!(
        out,
        "roll-forward of {} buffered outcomes (CS1000000): resume latency {:.1} ms, {:.0} events/s (buffered at {:.0}/s)",
        report.outcomes, report.resume_latency_ms, report.events_per_sec, report.buffered_per_sec
    )?;
    Ok(report)
}

/// Reports `outcomes` failures of campaign `roll` over one connection, in acknowledged batches.
async fn buffer(access: &Access, addr: &str, outcomes: u64) -> anyhow::Result<()> {
    let mut dialer = access.connect_to(addr).await?;
    let mut frame = Vec::with_capacity(40);
    let mut sent = 0;
    while sent < outcomes {
        let end = (sent + BATCH).min(outcomes);
        for n in sent..end {
            let tk = if n + 1 == end { "\\TKb" } else { "" };
            frame.clear();
            write!(frame, "CF\\CA2\\CNroll\\SIr{n}{tk}")?;
            dialer.feed(&frame[..]).await?;
        }
        dialer.flush().await?;
        expect_frames(&mut dialer, 1)
            .await
            .context("waiting for a batch's MV")?;
        sent = end;
    }
    Ok(())
}

/// Reads `count` frames.
async fn expect_frames(conn: &mut Connection, count: u64) -> anyhow::Result<()> {
    for _ in 0..count {
        // A timer only when the next frame is not already read: most of them are.
        let next = match conn.next_frame().now_or_never() {
            Some(next) => next,
            None => tokio::time::timeout(PATIENCE, conn.next_frame())
                .await
                .context("timed out")?,
        };
        match next {
            Some(frame) => {
                frame?;
            }
            None => bail!("the server closed the connection"),
        }
    }
    Ok(())
}
