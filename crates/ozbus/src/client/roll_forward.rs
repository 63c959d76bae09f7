//! `ozbus bench --roll-forward N`: how fast a persisted transaction catches up.
//!
//! Opens a persisted transaction (PS, CS1000000), leaves, buffers N outcomes while it is away,
//! re-issues it, and measures the resume latency (EO sent to first OZ) and the roll-forward
//! rate (OZ per second until the N-th). Frames are counted by their terminators, not parsed, so
//! the client costs next to nothing.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

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

pub async fn run(
    addr: &str,
    outcomes: u64,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<RollForwardReport> {
    if outcomes == 0 {
        bail!("--roll-forward needs at least 1 outcome");
    }
    let mut subscriber = TcpStream::connect(addr).await.context("connecting")?;
    subscriber.set_nodelay(true)?;
    subscriber
        .write_all(b"EO\\TXroll\\FO\\CNroll\\PSroll\\CS1000000\\TKopen\0")
        .await?;
    expect_frames(&mut subscriber, 1)
        .await
        .context("waiting for the EO's MV")?;
    drop(subscriber);

    let started = Instant::now();
    buffer(addr, outcomes).await?;
    let buffered_per_sec = outcomes as f64 / started.elapsed().as_secs_f64();

    let mut subscriber = TcpStream::connect(addr).await.context("connecting")?;
    subscriber.set_nodelay(true)?;
    let reissued = Instant::now();
    subscriber
        .write_all(b"EO\\TXroll\\FO\\CNroll\\PSroll\\CS1000000\0")
        .await?;
    let mut received = expect_frames(&mut subscriber, 1)
        .await
        .context("waiting for the first OZ")?;
    let first = reissued.elapsed();
    if received < outcomes {
        received += expect_frames(&mut subscriber, outcomes - received)
            .await
            .context("waiting for the roll-forward")?;
    }
    let all = reissued.elapsed();
    if received != outcomes {
        bail!("received {received} outcomes, expected {outcomes}");
    }
    subscriber.write_all(b"EE\\TXroll\0").await?;

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
async fn buffer(addr: &str, outcomes: u64) -> anyhow::Result<()> {
    let mut dialer = TcpStream::connect(addr).await.context("connecting")?;
    let mut frames = Vec::with_capacity(BATCH as usize * 40);
    let mut sent = 0;
    while sent < outcomes {
        let end = (sent + BATCH).min(outcomes);
        frames.clear();
        for n in sent..end {
            let tk = if n + 1 == end { "\\TKb" } else { "" };
            write!(frames, "CF\\CA2\\CNroll\\SIr{n}{tk}\0")?;
        }
        dialer.write_all(&frames).await?;
        expect_frames(&mut dialer, 1)
            .await
            .context("waiting for a batch's MV")?;
        sent = end;
    }
    Ok(())
}

/// Reads until at least `count` frames (NUL terminators) have arrived; returns how many did.
async fn expect_frames(stream: &mut TcpStream, count: u64) -> anyhow::Result<u64> {
    let mut buffer = vec![0u8; 256 * 1024];
    let mut seen = 0;
    while seen < count {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
            .await
            .context("timed out")??;
        if n == 0 {
            bail!("the server closed the connection");
        }
        seen += memchr::memchr_iter(0, &buffer[..n]).count() as u64;
    }
    Ok(seen)
}
