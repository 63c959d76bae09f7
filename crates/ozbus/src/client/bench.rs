//! `ozbus bench`: the end-to-end load generator.
//!
//! Owns: one run of load against a server (its own, started in this process on a temporary data
//! directory, or the first of the `--addr` list that answers, over TLS with `--tls`, every
//! connection authenticated with `--user`), measured from the outside through SDMP alone:
//! - reporting connections send `CF\CA2\CNbench\SI<conn>-<ns>\TK<n>`, each keeping at most
//!   `--window` messages without an answer, paced by `--rate` or as fast as the server answers;
//!   an MV counts as accepted, an ER as an error;
//! - subscribing connections (EO with FO on campaign `bench`) time each OZ: its SI carries the
//!   nanoseconds (since the run started) at which its CF was written, so the latency from
//!   sending to delivery needs no clock shared with the server.
//!
//! - idle connections (`--idle`) only hold a place: each asks `VS` once when the run starts and
//!   once after it (answered when its `DA` comes) and reads nothing else;
//! - stalled subscribers (`--stalled`) open the same EO as the others, then never read, so the
//!   server must hold their output within its budget while it serves everyone else;
//! - with `--server-pid`, the server's resident memory is sampled through the run (Linux);
//! - HTTP subscribers (`--sse`, `--ws`) open the same subscription as a stream of the HTTP
//!   listener and are timed the same way (`http`), their figures reported beside SDMP's.
//!
//! Only what happens in the measurement window (after a 1 s warm-up) counts, by the time the MV or
//! OZ arrived; errors count over the whole run. Everything is bounded: sending stops when the
//! window ends, replies are drained for at most 5 s more, and every connection closes.
//!
//! Never: lets itself be the bottleneck: frames are written in batches (many per flush), replies
//! and outcomes are read with the codec's borrowing parser, not full validation, and the two
//! directions of a reporting connection run as separate tasks.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures::{FutureExt, SinkExt, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use sdmp::{Code, Dialect, Envelope, Eo, MessageView, WireForm};
use sdmp_client::codes::{DA, EF, ER, MV, OZ};
use sdmp_client::{describe_er, frame_bytes, frame_code, Connection, FrameReader, FrameWriter};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Access, AccessArgs};

mod http;

/// Load before the measurement window, so connection set-up and cold caches do not count.
const WARM_UP: Duration = Duration::from_secs(1);
/// The longest the run waits for answers to what it sent before the window ended.
const DRAIN: Duration = Duration::from_secs(5);
/// The longest a subscription may take to be confirmed (its MV) before the run gives up.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// Pacing period with `--rate`: small enough for smooth load, large enough to batch.
const TICK: Duration = Duration::from_millis(5);
/// Most frames written per flush.
const MAX_BATCH: usize = 1024;
/// Most replies read before the window's permits are handed back.
const MAX_REPLIES: usize = 4096;
/// Buffered output per connection before a write is forced (tokio-util's default is 8 KiB).
const WRITE_BUFFER: usize = 256 * 1024;
/// Largest latency the histogram holds, in microseconds (bigger values are recorded as this).
const LATENCY_MAX_US: u64 = 60_000_000;
/// The campaign every bench outcome belongs to.
const CAMPAIGN: &str = "bench";
const SI: Code = Code(*b"SI");

/// Generate load and measure throughput and ingest-to-delivery latency.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Instead of the load test: buffer this many outcomes for a persisted transaction, re-issue
    /// it with CS1000000, and measure resume latency and roll-forward rate.
    #[arg(long)]
    pub roll_forward: Option<u64>,
    /// Target an existing server; several (repeated, or separated by commas): the first that
    /// answers. Default: start one in this process on a temporary data directory.
    #[arg(long, visible_alias = "server", value_delimiter = ',')]
    pub addr: Vec<String>,
    /// With --addr only: every connection of the run speaks TLS, authenticates as --user.
    #[command(flatten)]
    pub access: AccessArgs,
    /// Reporting connections.
    #[arg(long, default_value = "4")]
    pub connections: usize,
    /// Subscribing transactions (each on its own connection, EO with FO).
    #[arg(long, default_value = "1")]
    pub subscribers: usize,
    /// Target outcomes per second over all connections; 0: as fast as the server accepts.
    #[arg(long, default_value = "0")]
    pub rate: u64,
    /// Seconds of measurement (after a 1 s warm-up).
    #[arg(long, default_value = "10")]
    pub duration: f64,
    /// Unacknowledged messages allowed per connection.
    #[arg(long, default_value = "5000")]
    pub window: usize,
    /// Connections that only hold a place (a VS when the run starts and one after it).
    #[arg(long, default_value = "0")]
    pub idle: usize,
    /// Subscribers that open their transaction and then never read.
    #[arg(long, default_value = "0")]
    pub stalled: usize,
    /// Sample the resident memory of this process (the server's pid) through the run; without
    /// it the in-process server's run samples this process (server and clients together).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Subscribers over Server-Sent Events (GET /v1/stream), beside the SDMP ones.
    #[arg(long, default_value = "0")]
    pub sse: usize,
    /// Subscribers over WebSocket (GET /v1/ws), beside the SDMP ones.
    #[arg(long, default_value = "0")]
    pub ws: usize,
    /// With --addr: the server's HTTP listener (plain HTTP), for --sse and --ws.
    #[arg(long)]
    pub http_addr: Option<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What the subscribers of one kind received in the measurement window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeliveryReport {
    pub delivered: u64,
    pub delivered_per_sec: f64,
    /// Latency from writing a CF to receiving its outcome; 0 when none was timed.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
}

/// What one run measured. Rates and counts cover the measurement window only (`delivered`
/// counts every OZ over all subscribers); `errors` covers the whole run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BenchReport {
    pub accepted_per_sec: f64,
    pub delivered_per_sec: f64,
    /// Latency from writing a CF to receiving its OZ; 0 when no OZ was timed.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    pub accepted: u64,
    pub delivered: u64,
    pub errors: u64,
    /// Idle connections that answered the VS sent after the run (of `--idle`).
    pub idle_answered: u64,
    /// The highest resident memory sampled (`--server-pid`, or this process with the
    /// in-process server), in bytes; 0 when not sampled.
    pub peak_rss_bytes: u64,
    /// The subscribers over Server-Sent Events and WebSocket, when the run had any.
    pub sse: Option<DeliveryReport>,
    pub ws: Option<DeliveryReport>,
}

impl BenchReport {
    /// The report as one JSON object (one line, no trailing newline).
    pub fn to_json(&self) -> String {
        // Hand-written: ten numbers do not justify a JSON dependency. JSON has no NaN or
        // infinity; they cannot occur here, but would be written as null rather than break it.
        fn number(value: f64) -> String {
            if value.is_finite() {
                format!("{value:.3}")
            } else {
                "null".to_owned()
            }
        }
        let streams: String = [("sse", &self.sse), ("ws", &self.ws)]
            .into_iter()
            .filter_map(|(name, report)| Some((name, report.as_ref()?)))
            .map(|(name, r)| {
                format!(
                    ",\"{name}\":{{\"delivered_per_sec\":{},\"latency_p50_ms\":{},\"latency_p99_ms\":{},\"latency_p999_ms\":{},\"delivered\":{}}}",
                    number(r.delivered_per_sec),
                    number(r.latency_p50_ms),
                    number(r.latency_p99_ms),
                    number(r.latency_p999_ms),
                    r.delivered
                )
            })
            .collect();
        format!(
            "{{\"accepted_per_sec\":{},\"delivered_per_sec\":{},\"latency_p50_ms\":{},\"latency_p99_ms\":{},\"latency_p999_ms\":{},\"accepted\":{},\"delivered\":{},\"errors\":{},\"idle_answered\":{},\"peak_rss_bytes\":{}{streams}}}",
            number(self.accepted_per_sec),
            number(self.delivered_per_sec),
            number(self.latency_p50_ms),
            number(self.latency_p99_ms),
            number(self.latency_p999_ms),
            self.accepted,
            self.delivered,
            self.errors,
            self.idle_answered,
            self.peak_rss_bytes
        )
    }
}

/// Runs the benchmark `args` describes and prints its result to `out` (a readable summary, or
/// with `--json` one JSON object).
pub async fn run(args: BenchArgs, out: &mut (dyn Write + Send)) -> anyhow::Result<BenchReport> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.window == 0 || args.window > Semaphore::MAX_PERMITS {
        bail!("--window must be between 1 and {}", Semaphore::MAX_PERMITS);
    }
    let duration = Duration::try_from_secs_f64(args.duration)
        .ok()
        .filter(|d| !d.is_zero() && *d <= Duration::from_secs(365 * 24 * 3600))
        .ok_or_else(|| {
            anyhow!(
                "--duration must be a number of seconds above 0 (got {})",
                args.duration
            )
        })?;

    // Each connection is a descriptor (two, with the in-process server): take all the system
    // allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("could not raise the open file limit: {e}");
    }
    let (access, addr, server) = match args.addr.is_empty() {
        false => {
            let access = args.access.access(WireForm::Bits8, true)?;
            let addr = answering(&access, &args.addr).await?;
            (access, addr, None)
        }
        true if args.access.given() => bail!(
            "--tls, --ca-file, --client-cert, --client-key, --user and --user-tenant are for a \
             server given with --addr: the in-process server speaks plain TCP and has no users"
        ),
        true => {
            let server = InProcess::start(
                args.connections + args.subscribers + args.idle + args.stalled + args.sse + args.ws,
            )
            .await?;
            (
                Access::plain(WireForm::Bits8),
                server.addr.clone(),
                Some(server),
            )
        }
    };
    if let Some(outcomes) = args.roll_forward {
        let measured = super::roll_forward::run(&access, &addr, outcomes, out).await;
        if let Some(server) = server {
            server.stop().await?;
        }
        measured?;
        return Ok(BenchReport::default());
    }
    let sampled = args
        .server_pid
        .or_else(|| server.is_some().then(std::process::id));
    let http_addr = args
        .http_addr
        .clone()
        .or_else(|| server.as_ref().and_then(|s| s.http.clone()));
    if args.sse + args.ws > 0 && http_addr.is_none() {
        bail!("--sse and --ws need the server's HTTP listener: give it with --http-addr");
    }
    let measured = measure(
        &args,
        &access,
        &addr,
        http_addr.as_deref(),
        duration,
        sampled,
    )
    .await;
    if let Some(server) = server {
        let stopped = server.stop().await;
        // A measurement error says more than the shutdown error it may have caused.
        if measured.is_ok() {
            stopped?;
        } else if let Err(e) = stopped {
            tracing::warn!("stopping the in-process server: {e:#}");
        }
    }
    let report = measured?;

    if args.json {
        writeln!(out, "{}", report.to_json())?;
    } else {
        write!(out, "{}", summary(&args, &addr, duration, &report))?;
    }
    out.flush()?;
    Ok(report)
}

/// The readable result.
fn summary(args: &BenchArgs, addr: &str, duration: Duration, report: &BenchReport) -> String {
    let mut text = String::new();
    let server = if !args.addr.is_empty() {
        addr.to_owned()
    } else {
        format!("{addr} (in-process)")
    };
    let rate = if args.rate == 0 {
        "unlimited".to_owned()
    } else {
        format!("{}/s", args.rate)
    };
    let _ = writeln!(
        text,
        "ozbus bench: server {server}, {}, {}{}, rate {rate}, window {}, {} warm-up + {} measured",
        counted(args.connections, "reporting connection"),
        counted(args.subscribers, "subscriber"),
        match (args.sse, args.ws) {
            (0, 0) => String::new(),
            (sse, ws) => format!(" (SDMP), {sse} over SSE, {ws} over WebSocket"),
        },
        args.window,
        humantime::format_duration(WARM_UP),
        humantime::format_duration(duration),
    );
    let _ = writeln!(
        text,
        "accepted   {:>10} outcomes  {:>12.1}/s",
        report.accepted, report.accepted_per_sec
    );
    let _ = writeln!(
        text,
        "delivered  {:>10} OZ        {:>12.1}/s  (all subscribers)",
        report.delivered, report.delivered_per_sec
    );
    let _ = writeln!(
        text,
        "latency    CF to OZ: p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms",
        report.latency_p50_ms, report.latency_p99_ms, report.latency_p999_ms
    );
    for (name, delivery) in [("sse", &report.sse), ("ws", &report.ws)] {
        if let Some(d) = delivery {
            let _ = writeln!(
                text,
                "{name:<10} {:>10} outcomes  {:>12.1}/s  CF to event: p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms",
                d.delivered, d.delivered_per_sec, d.latency_p50_ms, d.latency_p99_ms, d.latency_p999_ms
            );
        }
    }
    let _ = writeln!(text, "errors     {:>10}", report.errors);
    if args.idle > 0 || args.stalled > 0 {
        let _ = writeln!(
            text,
            "held       {} idle ({} answered VS after the run), {} stalled",
            args.idle,
            report.idle_answered,
            counted(args.stalled, "subscriber")
        );
    }
    if report.peak_rss_bytes > 0 {
        let whose = match args.server_pid {
            Some(pid) => format!("server (pid {pid})"),
            None => "this process (server and clients)".to_owned(),
        };
        let _ = writeln!(
            text,
            "memory     peak RSS {:.1} MiB, {whose}",
            report.peak_rss_bytes as f64 / (1 << 20) as f64
        );
    }
    text
}

/// `1 subscriber`, `4 subscribers`.
fn counted(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// The first of `addrs` that accepts a connection (and the user, when one is given): every
/// connection of the run goes there (a measurement of one server; failing over in the middle of
/// it would measure nothing).
async fn answering(access: &Access, addrs: &[String]) -> anyhow::Result<String> {
    let conn = access.connect(&mut access.servers(addrs)?).await?;
    Ok(conn.peer().to_owned())
}

/// A server started for the run, with the temporary directory holding its data.
struct InProcess {
    server: crate::server::RunningServer,
    addr: String,
    /// Its HTTP listener.
    http: Option<String>,
    _data: tempfile::TempDir,
}

impl InProcess {
    /// A server on a temporary data directory that admits `connections` from this address.
    async fn start(connections: usize) -> anyhow::Result<InProcess> {
        let data = tempfile::Builder::new()
            .prefix("ozbus-bench-")
            .tempdir()
            .context("creating a temporary data directory")?;
        let mut config = crate::config::Config::for_test(data.path());
        // Room for every connection of the run (and a few more), all from one address.
        let room = connections + 16;
        config.limits.connections = config.limits.connections.max(room);
        config.limits.connections_per_address = config.limits.connections_per_address.max(room);
        let server = crate::server::RunningServer::start(config)
            .await
            .context("starting the in-process server")?;
        Ok(InProcess {
            addr: server.addr_8bit().to_string(),
            http: server.http_addr().map(|a| a.to_string()),
            server,
            _data: data,
        })
    }

    /// Shuts the server down (bounded), then removes its data directory.
    async fn stop(self) -> anyhow::Result<()> {
        const LIMIT: Duration = Duration::from_secs(15);
        tokio::time::timeout(LIMIT, self.server.shutdown())
            .await
            .map_err(|_| anyhow!("the in-process server did not stop within {LIMIT:?}"))?
    }
}

/// The instants that divide a run.
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// What every SI's nanoseconds count from.
    run_start: Instant,
    load_start: Instant,
    warm_end: Instant,
    end: Instant,
    drain_end: Instant,
}

impl Timing {
    fn in_window(&self, at: Instant) -> bool {
        at >= self.warm_end && at < self.end
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.run_start).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[derive(Debug, Default)]
struct ReporterStats {
    accepted: u64,
    errors: u64,
}

struct SubscriberStats {
    latency_us: Histogram<u64>,
    delivered: u64,
}

type Replies = FrameReader;
type Sink = FrameWriter;

async fn measure(
    args: &BenchArgs,
    access: &Access,
    addr: &str,
    http_addr: Option<&str>,
    duration: Duration,
    sampled: Option<u32>,
) -> anyhow::Result<BenchReport> {
    let run_start = Instant::now();
    let (stop_sampling, sampling) = watch::channel(false);
    let peak_rss = sampled.map(|pid| tokio::spawn(sample_rss(pid, sampling)));
    let mut idle = hold_idle(access, addr, args.idle).await?;
    // Subscriptions first, confirmed, so that none of the load can be missed.
    let subscribers =
        futures::future::try_join_all((0..args.subscribers).map(|i| subscribe(access, addr, i)))
            .await?;
    let stalled = futures::future::try_join_all(
        (0..args.stalled).map(|i| subscribe(access, addr, args.subscribers + i)),
    )
    .await?;
    let mut streams = Vec::new();
    for (kind, count) in [(http::Kind::Sse, args.sse), (http::Kind::Ws, args.ws)] {
        let http_addr = http_addr.unwrap_or_default();
        let opened = futures::future::try_join_all(
            (0..count).map(|i| http::subscribe(kind, http_addr, i, access.credentials())),
        )
        .await?;
        streams.extend(opened.into_iter().map(|s| (kind, s)));
    }
    let reporters = futures::future::try_join_all((0..args.connections).map(|_| async {
        let (replies, mut sink) = access.connect_to(addr).await?.split();
        sink.set_backpressure_boundary(WRITE_BUFFER);
        Ok::<_, anyhow::Error>((replies, sink))
    }))
    .await?;

    let load_start = Instant::now();
    let end = load_start + WARM_UP + duration;
    let timing = Timing {
        run_start,
        load_start,
        warm_end: load_start + WARM_UP,
        end,
        drain_end: end + DRAIN,
    };
    // Spread evenly: each connection carries its share of the target rate.
    let rate = (args.rate > 0).then(|| args.rate as f64 / args.connections as f64);

    let subscribing: Vec<JoinHandle<anyhow::Result<SubscriberStats>>> = subscribers
        .into_iter()
        .map(|(replies, sink)| tokio::spawn(receive_outcomes(replies, sink, timing)))
        .collect();
    let streaming: Vec<(http::Kind, JoinHandle<anyhow::Result<SubscriberStats>>)> = streams
        .into_iter()
        .map(|(kind, stream)| (kind, tokio::spawn(http::receive(stream, timing))))
        .collect();
    let reporting: Vec<JoinHandle<anyhow::Result<ReporterStats>>> = reporters
        .into_iter()
        .enumerate()
        .map(|(conn, (replies, sink))| {
            tokio::spawn(report_load(conn, replies, sink, rate, args.window, timing))
        })
        .collect();

    // Every task stops by itself by drain_end; the margin only guards against a bug here.
    let give_up = timing.drain_end + Duration::from_secs(5);
    let mut report = BenchReport::default();
    let mut latency_us = latency_histogram()?;
    let mut failure: Option<anyhow::Error> = None;
    for task in reporting {
        match join_by(give_up, task).await {
            Ok(stats) => {
                report.accepted += stats.accepted;
                report.errors += stats.errors;
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    for task in subscribing {
        match join_by(give_up, task).await {
            Ok(stats) => {
                report.delivered += stats.delivered;
                latency_us
                    .add(&stats.latency_us)
                    .map_err(|e| anyhow!("merging latency histograms: {e}"))?;
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    let seconds = duration.as_secs_f64();
    let mut by_kind = [
        (http::Kind::Sse, 0u64, latency_histogram()?),
        (http::Kind::Ws, 0u64, latency_histogram()?),
    ];
    for (kind, task) in streaming {
        match join_by(give_up, task).await {
            Ok(stats) => {
                let (_, delivered, latency) = by_kind
                    .iter_mut()
                    .find(|(k, _, _)| *k == kind)
                    .expect("every kind");
                *delivered += stats.delivered;
                latency
                    .add(&stats.latency_us)
                    .map_err(|e| anyhow!("merging latency histograms: {e}"))?;
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    for (kind, delivered, latency) in by_kind {
        let count = match kind {
            http::Kind::Sse => args.sse,
            http::Kind::Ws => args.ws,
        };
        if count == 0 {
            continue;
        }
        let delivery = DeliveryReport {
            delivered,
            delivered_per_sec: delivered as f64 / seconds,
            ..percentiles(&latency)
        };
        match kind {
            http::Kind::Sse => report.sse = Some(delivery),
            http::Kind::Ws => report.ws = Some(delivery),
        }
    }
    drop(stalled);
    report.idle_answered = answer_idle(&mut idle).await;
    drop(idle);
    let _ = stop_sampling.send(true);
    if let Some(peak) = peak_rss {
        report.peak_rss_bytes = peak.await.unwrap_or(0);
    }
    if let Some(e) = failure {
        return Err(e);
    }

    report.accepted_per_sec = report.accepted as f64 / seconds;
    report.delivered_per_sec = report.delivered as f64 / seconds;
    let sdmp = percentiles(&latency_us);
    report.latency_p50_ms = sdmp.latency_p50_ms;
    report.latency_p99_ms = sdmp.latency_p99_ms;
    report.latency_p999_ms = sdmp.latency_p999_ms;
    Ok(report)
}

/// The percentiles of a latency histogram in milliseconds (0 when it is empty).
fn percentiles(latency_us: &Histogram<u64>) -> DeliveryReport {
    if latency_us.is_empty() {
        return DeliveryReport::default();
    }
    let ms = |q: f64| latency_us.value_at_quantile(q) as f64 / 1000.0;
    DeliveryReport {
        latency_p50_ms: ms(0.5),
        latency_p99_ms: ms(0.99),
        latency_p999_ms: ms(0.999),
        ..DeliveryReport::default()
    }
}

fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).map_err(|e| anyhow!("latency histogram: {e}"))
}

/// A task's result by `deadline`; a task still running then is aborted.
async fn join_by<T>(
    deadline: Instant,
    mut task: JoinHandle<anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(anyhow!("a bench task failed: {e}")),
        Err(_) => {
            task.abort();
            Err(anyhow!("a bench task did not stop in time"))
        }
    }
}

/// Connections opened at once, at most, for `--idle` (more would overflow a listen backlog and
/// measure SYN retries instead).
const IDLE_OPENING: usize = 64;
/// How long an idle connection's VS may wait for its DA.
const IDLE_ANSWER: Duration = Duration::from_secs(10);

/// Opens `count` idle connections, each served once (its VS answered with DA).
async fn hold_idle(access: &Access, addr: &str, count: usize) -> anyhow::Result<Vec<Connection>> {
    futures::stream::iter(0..count)
        .map(|i| async move {
            let mut conn = access.connect_to(addr).await?;
            if !ask_vs(&mut conn).await {
                bail!("idle connection {i} got no DA for its VS within {IDLE_ANSWER:?}");
            }
            Ok(conn)
        })
        .buffer_unordered(IDLE_OPENING)
        .try_collect()
        .await
}

/// Asks every idle connection `VS` again; returns how many answered with DA.
async fn answer_idle(idle: &mut [Connection]) -> u64 {
    futures::stream::iter(idle.iter_mut())
        .map(ask_vs)
        .buffer_unordered(IDLE_OPENING)
        .filter(|answered| std::future::ready(*answered))
        .count()
        .await as u64
}

/// Sends `VS` and waits for the `DA` that answers it.
async fn ask_vs(conn: &mut Connection) -> bool {
    if conn.send(&b"VS"[..]).await.is_err() {
        return false;
    }
    tokio::time::timeout(IDLE_ANSWER, async {
        while let Some(Ok(frame)) = conn.next_frame().await {
            if frame_code(frame_bytes(&frame)) == Some(DA) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

/// The highest resident memory of process `pid` sampled every 20 ms until `stop`, in bytes.
async fn sample_rss(pid: u32, mut stop: watch::Receiver<bool>) -> u64 {
    let path = format!("/proc/{pid}/status");
    let mut peak = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        if let Ok(status) = std::fs::read_to_string(&path) {
            let rss = status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak = peak.max(rss.unwrap_or(0) * 1024);
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return peak,
        }
    }
}

/// Opens subscriber `index`: an EO with FO for the bench campaign, confirmed by its MV.
async fn subscribe(access: &Access, addr: &str, index: usize) -> anyhow::Result<(Replies, Sink)> {
    let (mut replies, mut sink) = access.connect_to(addr).await?.split();
    let tx = format!("bench-sub-{index}");
    let eo = Envelope {
        dialect: Dialect::V1,
        message: Eo {
            tx: tx.as_bytes(),
            cn: Some(CAMPAIGN.as_bytes()),
            fo: true,
            // A token so the server tells us when the transaction is open.
            tk: Some(tx.as_bytes()),
            ..Eo::default()
        }
        .into(),
    }
    .to_bytes();
    sink.send(&eo).await.context("sending the subscription")?;
    let confirmed = tokio::time::timeout(SUBSCRIBE_WAIT, async {
        while let Some(item) = replies.next().await {
            let frame = item.context("reading the subscription's answer")?;
            let bytes = frame_bytes(&frame);
            match frame_code(bytes) {
                Some(MV) => return Ok(()),
                Some(ER) => bail!(
                    "the server refused subscription {tx}: {}",
                    describe_er(bytes)
                ),
                _ => {}
            }
        }
        bail!("the server closed the connection of subscription {tx}")
    })
    .await;
    match confirmed {
        Ok(result) => result?,
        Err(_) => bail!("subscription {tx} not confirmed (MV) within {SUBSCRIBE_WAIT:?}"),
    }
    Ok((replies, sink))
}

/// One subscriber: reads OZ until the window ends, timing each one by its SI.
async fn receive_outcomes(
    mut replies: Replies,
    sink: Sink,
    timing: Timing,
) -> anyhow::Result<SubscriberStats> {
    let mut stats = SubscriberStats {
        latency_us: latency_histogram()?,
        delivered: 0,
    };
    loop {
        let item = match tokio::time::timeout_at(timing.end, replies.next()).await {
            Err(_) => break,
            Ok(None) => bail!("the server closed a subscriber's connection"),
            Ok(Some(item)) => item.context("reading outcomes")?,
        };
        let now = Instant::now();
        let bytes = frame_bytes(&item);
        let Ok(view) = MessageView::parse(bytes) else {
            continue;
        };
        match view.code() {
            OZ if timing.in_window(now) => {
                stats.delivered += 1;
                if let Some(sent) = view.first(SI).and_then(send_time) {
                    let micros = timing.nanos(now).saturating_sub(sent) / 1000;
                    stats.latency_us.saturating_record(micros);
                }
            }
            EF => bail!("the server ended a subscription (EF)"),
            ER => tracing::warn!("subscriber got an ER: {}", describe_er(bytes)),
            _ => {}
        }
    }
    // Closing the connection ends the transaction; nothing else is owed.
    drop((replies, sink));
    Ok(stats)
}

/// The send time (nanoseconds since the run started) a bench SI `<conn>-<ns>` carries.
fn send_time(si: &[u8]) -> Option<u64> {
    let at = si.iter().rposition(|&b| b == b'-')?;
    std::str::from_utf8(si.get(at + 1..)?).ok()?.parse().ok()
}

/// One reporting connection: writes CF frames within the window of unanswered messages while a
/// separate task reads the answers and hands the window's permits back.
async fn report_load(
    conn: usize,
    replies: Replies,
    sink: Sink,
    rate: Option<f64>,
    window: usize,
    timing: Timing,
) -> anyhow::Result<ReporterStats> {
    let permits = Arc::new(Semaphore::new(window));
    let (done_tx, done_rx) = watch::channel(None);
    let reader = tokio::spawn(read_answers(replies, permits.clone(), done_rx, timing));
    // The sink outlives the reader: dropping it shuts our side down, and a server may take
    // that as the end of the conversation before the last answers are read.
    let mut sink = sink;
    let written = write_load(conn, &mut sink, &permits, rate, timing).await;
    let sent = match &written {
        Ok(sent) => *sent,
        // Nothing more will be answered that the reader could wait for.
        Err(_) => 0,
    };
    let _ = done_tx.send(Some(sent));
    let read = match reader.await {
        Ok(read) => read,
        Err(e) => Err(anyhow!("reading answers: {e}")),
    };
    drop(sink);
    written?;
    read
}

/// Writes CF frames until the window ends; returns how many were written.
async fn write_load(
    conn: usize,
    sink: &mut Sink,
    permits: &Semaphore,
    rate: Option<f64>,
    timing: Timing,
) -> anyhow::Result<u64> {
    let mut ticker = tokio::time::interval_at(timing.load_start, TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut frame = Vec::with_capacity(80);
    let mut sent = 0u64;
    let mut last_nanos = 0u64;
    loop {
        let budget = match rate {
            Some(rate) => {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = tokio::time::sleep_until(timing.end) => break,
                }
                // What the schedule asks for by now, less what went out; behind schedule (a
                // full window) the next ticks catch up.
                let due = (timing.load_start.elapsed().as_secs_f64() * rate) as u64;
                usize::try_from(due.saturating_sub(sent)).unwrap_or(usize::MAX)
            }
            None => usize::MAX,
        };
        if Instant::now() >= timing.end {
            break;
        }
        if budget == 0 {
            continue;
        }
        let Ok(first) = tokio::time::timeout_at(timing.end, permits.acquire()).await else {
            break;
        };
        first.context("window closed")?.forget();
        let mut take = 1usize;
        let more = budget
            .saturating_sub(1)
            .min(MAX_BATCH - 1)
            .min(permits.available_permits());
        if more > 0 {
            if let Ok(extra) = permits.try_acquire_many(u32::try_from(more).unwrap_or(u32::MAX)) {
                take += extra.num_permits();
                extra.forget();
            }
        }
        // One clock reading per batch: the frames of a batch leave in the same write. Each SI
        // still gets its own value, so ids stay unique within the connection.
        let now = timing.nanos(Instant::now());
        for _ in 0..take {
            last_nanos = now.max(last_nanos + 1);
            sent += 1;
            cf_frame(&mut frame, conn, last_nanos, sent);
            sink.feed(&frame[..]).await.context("sending load")?;
        }
        SinkExt::<&[u8]>::flush(&mut *sink)
            .await
            .context("sending load")?;
    }
    Ok(sent)
}

/// `CF\CA2\CNbench\SI<conn>-<nanos>\TK<token>`.
fn cf_frame(frame: &mut Vec<u8>, conn: usize, nanos: u64, token: u64) {
    frame.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(frame, "CF\\CA2\\CN{CAMPAIGN}\\SI{conn}-{nanos}\\TK{token}");
}

/// Reads MV and ER until everything written is answered (the writer says how much that is when it
/// stops) or the drain ends; returns what counted.
async fn read_answers(
    mut replies: Replies,
    permits: Arc<Semaphore>,
    mut done: watch::Receiver<Option<u64>>,
    timing: Timing,
) -> anyhow::Result<ReporterStats> {
    let mut stats = ReporterStats::default();
    let mut answered = 0u64;
    let mut sent: Option<u64> = None;
    let drain = tokio::time::sleep_until(timing.drain_end);
    tokio::pin!(drain);
    loop {
        if sent.is_some_and(|sent| answered >= sent) {
            break;
        }
        tokio::select! {
            item = replies.next() => {
                let Some(item) = item else {
                    if sent.is_some() {
                        break;
                    }
                    bail!("the server closed a reporting connection");
                };
                let now = Instant::now();
                let in_window = timing.in_window(now);
                let mut next = Some(item);
                let mut batch = 0usize;
                let mut frames = 0usize;
                // Everything already buffered is taken in one go, so permits go back in bulk.
                while let Some(item) = next {
                    let frame = item.context("reading answers")?;
                    let bytes = frame_bytes(&frame);
                    match frame_code(bytes) {
                        Some(MV) => {
                            batch += 1;
                            if in_window {
                                stats.accepted += 1;
                            }
                        }
                        Some(ER) => {
                            batch += 1;
                            stats.errors += 1;
                            if stats.errors <= 3 {
                                tracing::warn!("load refused: {}", describe_er(bytes));
                            }
                        }
                        _ => {}
                    }
                    frames += 1;
                    next = if frames < MAX_REPLIES {
                        replies.next().now_or_never().flatten()
                    } else {
                        None
                    };
                }
                answered += batch as u64;
                permits.add_permits(batch);
            }
            changed = done.changed(), if sent.is_none() => {
                sent = *done.borrow();
                if changed.is_err() && sent.is_none() {
                    // The writer is gone without a count: nothing to wait for.
                    break;
                }
            }
            () = &mut drain => break,
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_time_is_read_back_from_the_si() {
        let mut frame = Vec::new();
        cf_frame(&mut frame, 3, 1_234_567, 9);
        assert_eq!(frame, b"CF\\CA2\\CNbench\\SI3-1234567\\TK9");
        assert_eq!(send_time(b"3-1234567"), Some(1_234_567));
        assert_eq!(send_time(b"nonsense"), None);
        assert_eq!(send_time(b"3-"), None);
    }

    #[test]
    fn json_has_every_field() {
        let report = BenchReport {
            accepted_per_sec: 1.5,
            accepted: 3,
            ..BenchReport::default()
        };
        assert_eq!(
            report.to_json(),
            "{\"accepted_per_sec\":1.500,\"delivered_per_sec\":0.000,\"latency_p50_ms\":0.000,\"latency_p99_ms\":0.000,\"latency_p999_ms\":0.000,\"accepted\":3,\"delivered\":0,\"errors\":0,\"idle_answered\":0,\"peak_rss_bytes\":0}"
        );
    }
}
