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
//!   listener and are timed the same way (`http`), their figures reported beside SDMP's;
//! - `--ingest` chooses how the load is sent, one phase of the run per choice, in order, each
//!   with subscribers of its own: SDMP (above), or JSON over the HTTP listener, one report per
//!   request or many per bulk request (`json`); the time from sending a report to its answer
//!   (MV, or the HTTP response) is measured beside the time to its delivery.
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
mod json;

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

/// How a phase of the run sends its load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingest {
    /// CF frames over SDMP, `--window` unanswered per connection.
    Sdmp,
    /// `POST /v1/reports`, one report per request.
    Json,
    /// `POST /v1/reports/bulk` with this many reports (lines) per request.
    JsonBulk(usize),
}

/// Reports per bulk request when `json-bulk` names no number.
pub const BULK_LINES: usize = 100;

impl std::str::FromStr for Ingest {
    type Err = String;

    fn from_str(text: &str) -> Result<Ingest, String> {
        match text {
            "sdmp" => Ok(Ingest::Sdmp),
            "json" => Ok(Ingest::Json),
            "json-bulk" => Ok(Ingest::JsonBulk(BULK_LINES)),
            _ => match text.strip_prefix("json-bulk:").map(str::parse::<usize>) {
                Some(Ok(lines)) if lines > 0 => Ok(Ingest::JsonBulk(lines)),
                _ => Err(format!(
                    "{text:?}: expected sdmp, json, json-bulk or json-bulk:<reports per request>"
                )),
            },
        }
    }
}

impl std::fmt::Display for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ingest::Sdmp => f.write_str("sdmp"),
            Ingest::Json => f.write_str("json"),
            Ingest::JsonBulk(lines) => write!(f, "json-bulk:{lines}"),
        }
    }
}

impl Ingest {
    fn over_http(self) -> bool {
        self != Ingest::Sdmp
    }
}

/// Generate load and measure throughput and ingest-to-delivery latency.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Instead of the load test: buffer this many outcomes for a persisted transaction, re-issue
    /// it with CS1000000, and measure resume latency and roll-forward rate.
    #[arg(long)]
    pub roll_forward: Option<u64>,
    /// Instead of the load: N clients connect at once (as after a restart or a network
    /// blip), each asks VS; measure until every one got its DA, and how many waited over
    /// 500 ms.
    #[arg(long)]
    pub connect_storm: Option<usize>,
    /// Target an existing server; several (repeated, or separated by commas): the first that
    /// answers. Default: start one in this process on a temporary data directory.
    #[arg(long, visible_alias = "server", value_delimiter = ',')]
    pub addr: Vec<String>,
    /// With several --addr (nodes sharing a PostgreSQL database): spread the connections over
    /// all of them, round robin (reporter i and subscriber i on node i mod n), instead of
    /// using only the first that answers.
    #[arg(long)]
    pub spread: bool,
    /// With --addr only: every connection of the run speaks TLS, authenticates as --user.
    #[command(flatten)]
    pub access: AccessArgs,
    /// How the load is sent; several (repeated, or separated by commas) run one after another
    /// as phases of one run, each measured on its own and printed side by side: `sdmp` (CF
    /// frames on --connections, --window unanswered on each), `json` (POST /v1/reports, one
    /// report per request), `json-bulk` (POST /v1/reports/bulk, 100 reports per request;
    /// `json-bulk:1000` for 1000). The JSON phases use --http-connections.
    #[arg(long, value_delimiter = ',', default_value = "sdmp")]
    pub ingest: Vec<Ingest>,
    /// Reporting connections (SDMP).
    #[arg(long, default_value = "4")]
    pub connections: usize,
    /// Keep-alive HTTP/1.1 connections of a JSON phase, one request in flight on each (HTTP/1.1
    /// has no multiplexing): the number of requests in flight.
    #[arg(long, default_value = "32")]
    pub http_connections: usize,
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
    /// With --addr: the server's HTTP listener (plain HTTP), for --sse, --ws and JSON ingest.
    #[arg(long)]
    pub http_addr: Option<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl Default for BenchArgs {
    /// What `ozbus bench` without flags does (for programs and tests that set a few fields).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Bench {
            #[command(flatten)]
            args: BenchArgs,
        }
        <Bench as clap::Parser>::parse_from(["bench"]).args
    }
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

/// What one phase of a run measured. Rates and counts cover the measurement window only
/// (`delivered` counts every OZ over all subscribers); `errors` and `accepted_total` cover the
/// whole phase.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BenchReport {
    /// How the load was sent (`sdmp`, `json`, `json-bulk:<lines>`).
    pub ingest: String,
    pub accepted_per_sec: f64,
    pub delivered_per_sec: f64,
    /// Latency from writing a CF to receiving its OZ; 0 when no OZ was timed.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    /// Latency from sending a report until its answer (its MV, or the HTTP response of its
    /// request) came; 0 when none was timed.
    pub answer_p50_ms: f64,
    pub answer_p99_ms: f64,
    pub answer_p999_ms: f64,
    pub accepted: u64,
    /// Every report accepted in the phase, warm-up and drain included: what the store took.
    pub accepted_total: u64,
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
            "{{\"accepted_per_sec\":{},\"delivered_per_sec\":{},\"latency_p50_ms\":{},\"latency_p99_ms\":{},\"latency_p999_ms\":{},\"accepted\":{},\"delivered\":{},\"errors\":{},\"idle_answered\":{},\"peak_rss_bytes\":{}{streams},\"ingest\":\"{}\",\"answer_p50_ms\":{},\"answer_p99_ms\":{},\"answer_p999_ms\":{},\"accepted_total\":{}}}",
            number(self.accepted_per_sec),
            number(self.delivered_per_sec),
            number(self.latency_p50_ms),
            number(self.latency_p99_ms),
            number(self.latency_p999_ms),
            self.accepted,
            self.delivered,
            self.errors,
            self.idle_answered,
            self.peak_rss_bytes,
            self.ingest,
            number(self.answer_p50_ms),
            number(self.answer_p99_ms),
            number(self.answer_p999_ms),
            self.accepted_total
        )
    }
}

/// Runs the benchmark `args` describes, one phase per `--ingest`, and prints its result to `out`
/// (a readable summary, or with `--json` one JSON object per phase); the report of each phase.
pub async fn run(
    args: BenchArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<Vec<BenchReport>> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.http_connections == 0 {
        bail!("--http-connections must be at least 1");
    }
    if args.window == 0 || args.window > Semaphore::MAX_PERMITS {
        bail!("--window must be between 1 and {}", Semaphore::MAX_PERMITS);
    }
    if args.ingest.is_empty() {
        bail!("--ingest names no phase");
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
    let over_http = args.ingest.iter().any(|i| i.over_http());

    // Each connection is a descriptor (two, with the in-process server): take all the system
    // allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("could not raise the open file limit: {e}");
    }
    // The servers the run's connections go to: the first of --addr that answers, or (with
    // --spread) every one of them, each checked first.
    let (access, addrs, server) = match args.addr.is_empty() {
        false => {
            let access = args.access.access(WireForm::Bits8, true)?;
            let addrs = match args.spread {
                true => {
                    for addr in &args.addr {
                        answering(&access, std::slice::from_ref(addr)).await?;
                    }
                    args.addr.clone()
                }
                false => vec![answering(&access, &args.addr).await?],
            };
            (access, addrs, None)
        }
        true if args.access.given() => bail!(
            "--tls, --ca-file, --client-cert, --client-key, --user and --user-tenant are for a \
             server given with --addr: the in-process server speaks plain TCP and has no users"
        ),
        true => {
            let reporting = if over_http {
                args.connections.max(args.http_connections)
            } else {
                args.connections
            };
            let server = InProcess::start(
                reporting
                    + args.subscribers
                    + args.idle
                    + args.stalled
                    + args.sse
                    + args.ws
                    + args.connect_storm.unwrap_or(0),
            )
            .await?;
            (
                Access::plain(WireForm::Bits8),
                vec![server.addr.clone()],
                Some(server),
            )
        }
    };
    if let Some(clients) = args.connect_storm {
        let first = &addrs[0];
        let measured = super::storm::run(&access, first, clients, out).await;
        if let Some(server) = server {
            server.stop().await?;
        }
        measured?;
        return Ok(vec![BenchReport::default()]);
    }
    if let Some(outcomes) = args.roll_forward {
        let first = &addrs[0];
        let measured = super::roll_forward::run(&access, first, outcomes, out).await;
        if let Some(server) = server {
            server.stop().await?;
        }
        measured?;
        return Ok(vec![BenchReport::default()]);
    }
    let sampled = args
        .server_pid
        .or_else(|| server.is_some().then(std::process::id));
    let http_addr = args
        .http_addr
        .clone()
        .or_else(|| server.as_ref().and_then(|s| s.http.clone()));
    if (args.sse + args.ws > 0 || over_http) && http_addr.is_none() {
        bail!(
            "--sse, --ws and JSON ingest need the server's HTTP listener: give it with --http-addr"
        );
    }
    let mut reports = Vec::with_capacity(args.ingest.len());
    let mut measured = Ok(());
    for (phase, ingest) in args.ingest.iter().enumerate() {
        let phase = Phase {
            number: phase,
            ingest: *ingest,
        };
        match measure(
            &args,
            phase,
            &access,
            &addrs,
            http_addr.as_deref(),
            duration,
            sampled,
        )
        .await
        {
            Ok(report) => {
                if args.json {
                    writeln!(out, "{}", report.to_json())?;
                } else {
                    if phase.number == 0 {
                        write!(out, "{}", heading(&args, &addrs.join(", "), duration))?;
                    }
                    write!(out, "{}", summary(&args, phase.ingest, &report))?;
                }
                out.flush()?;
                reports.push(report);
            }
            Err(e) => {
                measured = Err(e.context(format!("phase {} ({ingest})", phase.number + 1)));
                break;
            }
        }
    }
    if let Some(server) = server {
        let stopped = server.stop().await;
        // A measurement error says more than the shutdown error it may have caused.
        if measured.is_ok() {
            stopped?;
        } else if let Err(e) = stopped {
            tracing::warn!("stopping the in-process server: {e:#}");
        }
    }
    measured?;
    if !args.json && reports.len() > 1 {
        write!(out, "{}", side_by_side(&reports))?;
        out.flush()?;
    }
    Ok(reports)
}

/// One phase of a run: its place (which keeps its transactions' names apart from the other
/// phases') and how it sends its load.
#[derive(Clone, Copy, Debug)]
struct Phase {
    number: usize,
    ingest: Ingest,
}

/// The first line of the readable result: what the run is.
fn heading(args: &BenchArgs, addr: &str, duration: Duration) -> String {
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
    format!(
        "ozbus bench: server {server}, {}{}, rate {rate}, {} warm-up + {} measured per phase\n",
        counted(args.subscribers, "subscriber"),
        match (args.sse, args.ws) {
            (0, 0) => String::new(),
            (sse, ws) => format!(" (SDMP), {sse} over SSE, {ws} over WebSocket"),
        },
        humantime::format_duration(WARM_UP),
        humantime::format_duration(duration),
    )
}

/// The readable result of one phase.
fn summary(args: &BenchArgs, ingest: Ingest, report: &BenchReport) -> String {
    let mut text = String::new();
    let (sent, answer) = match ingest {
        Ingest::Sdmp => (
            format!(
                "CF over SDMP, {}, window {}",
                counted(args.connections, "connection"),
                args.window
            ),
            "CF to MV",
        ),
        Ingest::Json => (
            format!(
                "POST /v1/reports, 1 report per request, {}",
                counted(args.http_connections, "HTTP connection")
            ),
            "request to response",
        ),
        Ingest::JsonBulk(lines) => (
            format!(
                "POST /v1/reports/bulk, {lines} reports per request, {}",
                counted(args.http_connections, "HTTP connection")
            ),
            "request to response",
        ),
    };
    let _ = writeln!(text, "ingest {ingest}: {sent}");
    let _ = writeln!(
        text,
        "accepted   {:>10} outcomes  {:>12.1}/s  ({} in the whole phase)",
        report.accepted, report.accepted_per_sec, report.accepted_total
    );
    let _ = writeln!(
        text,
        "answered   {answer}: p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms",
        report.answer_p50_ms, report.answer_p99_ms, report.answer_p999_ms
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

/// The phases of a run in one table: accepted/s, answer and delivery latency (p50/p99/p99.9).
fn side_by_side(reports: &[BenchReport]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\n{:<16} {:>12} {:>26} {:>26} {:>12} {:>12} {:>12}",
        "ingest",
        "accepted/s",
        "answer ms p50/p99/p99.9",
        "CF to OZ ms p50/p99/p99.9",
        "OZ/s",
        "sse/s",
        "ws/s"
    );
    let rate = |d: &Option<DeliveryReport>| {
        d.as_ref()
            .map_or_else(|| "-".to_owned(), |d| format!("{:.1}", d.delivered_per_sec))
    };
    for r in reports {
        let _ = writeln!(
            text,
            "{:<16} {:>12.1} {:>26} {:>26} {:>12.1} {:>12} {:>12}",
            r.ingest,
            r.accepted_per_sec,
            format!(
                "{:.2}/{:.2}/{:.2}",
                r.answer_p50_ms, r.answer_p99_ms, r.answer_p999_ms
            ),
            format!(
                "{:.2}/{:.2}/{:.2}",
                r.latency_p50_ms, r.latency_p99_ms, r.latency_p999_ms
            ),
            r.delivered_per_sec,
            rate(&r.sse),
            rate(&r.ws),
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

/// What one reporting connection counted.
#[derive(Debug)]
struct ReporterStats {
    /// Reports accepted in the window.
    accepted: u64,
    /// Reports accepted in the whole phase.
    accepted_total: u64,
    errors: u64,
    /// From sending a report to its answer, for answers in the window.
    answer_us: Histogram<u64>,
}

impl ReporterStats {
    fn new() -> anyhow::Result<ReporterStats> {
        Ok(ReporterStats {
            accepted: 0,
            accepted_total: 0,
            errors: 0,
            answer_us: latency_histogram()?,
        })
    }
}

struct SubscriberStats {
    latency_us: Histogram<u64>,
    delivered: u64,
}

type Replies = FrameReader;
type Sink = FrameWriter;

async fn measure(
    args: &BenchArgs,
    phase: Phase,
    access: &Access,
    addrs: &[String],
    http_addr: Option<&str>,
    duration: Duration,
    sampled: Option<u32>,
) -> anyhow::Result<BenchReport> {
    let run_start = Instant::now();
    let (stop_sampling, sampling) = watch::channel(false);
    let peak_rss = sampled.map(|pid| tokio::spawn(sample_rss(pid, sampling)));
    // One address, or (--spread) several, connection i on the i-th mod their number.
    let node = |i: usize| addrs[i % addrs.len()].as_str();
    let mut idle = hold_idle(access, node(0), args.idle).await?;
    // Subscriptions first, confirmed, so that none of the load can be missed.
    let subscribers = futures::future::try_join_all(
        (0..args.subscribers).map(|i| subscribe(access, node(i), phase.number, i)),
    )
    .await?;
    let stalled = futures::future::try_join_all((0..args.stalled).map(|i| {
        let index = args.subscribers + i;
        subscribe(access, node(index), phase.number, index)
    }))
    .await?;
    let mut streams = Vec::new();
    for (kind, count) in [(http::Kind::Sse, args.sse), (http::Kind::Ws, args.ws)] {
        let http_addr = http_addr.unwrap_or_default();
        let opened = futures::future::try_join_all(
            (0..count)
                .map(|i| http::subscribe(kind, http_addr, phase.number, i, access.credentials())),
        )
        .await?;
        streams.extend(opened.into_iter().map(|s| (kind, s)));
    }
    let (reporters, json_clients) = match phase.ingest {
        Ingest::Sdmp => {
            let reporters =
                futures::future::try_join_all((0..args.connections).map(|i| async move {
                    let (replies, mut sink) = access.connect_to(node(i)).await?.split();
                    sink.set_backpressure_boundary(WRITE_BUFFER);
                    Ok::<_, anyhow::Error>((replies, sink))
                }))
                .await?;
            (reporters, Vec::new())
        }
        Ingest::Json | Ingest::JsonBulk(_) => {
            let http_addr = http_addr.unwrap_or_default();
            let authorization = json::authorization(http_addr, access.credentials()).await?;
            let clients = json::connect(http_addr, args.http_connections, authorization).await?;
            (Vec::new(), clients)
        }
    };

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
    let reporting_connections = match phase.ingest {
        Ingest::Sdmp => args.connections,
        _ => args.http_connections,
    };
    let rate = (args.rate > 0).then(|| args.rate as f64 / reporting_connections as f64);

    let subscribing: Vec<JoinHandle<anyhow::Result<SubscriberStats>>> = subscribers
        .into_iter()
        .map(|(replies, sink)| tokio::spawn(receive_outcomes(replies, sink, timing)))
        .collect();
    let streaming: Vec<(http::Kind, JoinHandle<anyhow::Result<SubscriberStats>>)> = streams
        .into_iter()
        .map(|(kind, stream)| (kind, tokio::spawn(http::receive(stream, timing))))
        .collect();
    let bulk = match phase.ingest {
        Ingest::JsonBulk(lines) => Some(lines),
        _ => None,
    };
    let reporting: Vec<JoinHandle<anyhow::Result<ReporterStats>>> = reporters
        .into_iter()
        .enumerate()
        .map(|(conn, (replies, sink))| {
            tokio::spawn(report_load(conn, replies, sink, rate, args.window, timing))
        })
        .chain(json_clients.into_iter().enumerate().map(|(conn, client)| {
            tokio::spawn(json::report_load(
                conn,
                args.http_connections,
                client,
                bulk,
                rate,
                timing,
            ))
        }))
        .collect();

    // Every task stops by itself by drain_end; the margin only guards against a bug here.
    let give_up = timing.drain_end + Duration::from_secs(5);
    let mut report = BenchReport {
        ingest: phase.ingest.to_string(),
        ..BenchReport::default()
    };
    let mut latency_us = latency_histogram()?;
    let mut answer_us = latency_histogram()?;
    let mut failure: Option<anyhow::Error> = None;
    for task in reporting {
        match join_by(give_up, task).await {
            Ok(stats) => {
                report.accepted += stats.accepted;
                report.accepted_total += stats.accepted_total;
                report.errors += stats.errors;
                answer_us
                    .add(&stats.answer_us)
                    .map_err(|e| anyhow!("merging latency histograms: {e}"))?;
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
    let answered = percentiles(&answer_us);
    report.answer_p50_ms = answered.latency_p50_ms;
    report.answer_p99_ms = answered.latency_p99_ms;
    report.answer_p999_ms = answered.latency_p999_ms;
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

/// Opens subscriber `index` of phase `phase`: an EO with FO for the bench campaign, confirmed
/// by its MV.
async fn subscribe(
    access: &Access,
    addr: &str,
    phase: usize,
    index: usize,
) -> anyhow::Result<(Replies, Sink)> {
    let (mut replies, mut sink) = access.connect_to(addr).await?.split();
    let tx = format!("bench-sub-{phase}-{index}");
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
            cf_frame(&mut frame, conn, last_nanos);
            sink.feed(&frame[..]).await.context("sending load")?;
        }
        SinkExt::<&[u8]>::flush(&mut *sink)
            .await
            .context("sending load")?;
    }
    Ok(sent)
}

/// `CF\CA2\CNbench\SI<conn>-<nanos>\TK<nanos>`: the token (unique within the connection, as
/// the nanoseconds only grow) brings the send time back in the MV.
fn cf_frame(frame: &mut Vec<u8>, conn: usize, nanos: u64) {
    frame.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(frame, "CF\\CA2\\CN{CAMPAIGN}\\SI{conn}-{nanos}\\TK{nanos}");
}

/// The send time an MV's token carries (see [`cf_frame`]).
fn token_time(mv: &[u8]) -> Option<u64> {
    const TK: &[u8] = b"\\TK";
    let start = mv.windows(TK.len()).position(|w| w == TK)? + TK.len();
    let digits = &mv[start..];
    let len = digits
        .iter()
        .position(|&b| b == b'\\')
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

/// Reads MV and ER until everything written is answered (the writer says how much that is when it
/// stops) or the drain ends; returns what counted.
async fn read_answers(
    mut replies: Replies,
    permits: Arc<Semaphore>,
    mut done: watch::Receiver<Option<u64>>,
    timing: Timing,
) -> anyhow::Result<ReporterStats> {
    let mut stats = ReporterStats::new()?;
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
                            stats.accepted_total += 1;
                            if in_window {
                                stats.accepted += 1;
                                if let Some(sent) = token_time(bytes) {
                                    let micros = timing.nanos(now).saturating_sub(sent) / 1000;
                                    stats.answer_us.saturating_record(micros);
                                }
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
        cf_frame(&mut frame, 3, 1_234_567);
        assert_eq!(frame, b"CF\\CA2\\CNbench\\SI3-1234567\\TK1234567");
        assert_eq!(token_time(b"MV\\TK1234567"), Some(1_234_567));
        assert_eq!(token_time(b"MV\\TK12\\TDx"), Some(12));
        assert_eq!(token_time(b"MV"), None);
        assert_eq!(send_time(b"3-1234567"), Some(1_234_567));
        assert_eq!(send_time(b"nonsense"), None);
        assert_eq!(send_time(b"3-"), None);
    }

    #[test]
    fn json_has_every_field() {
        let report = BenchReport {
            accepted_per_sec: 1.5,
            accepted: 3,
            accepted_total: 4,
            ingest: "json-bulk:100".to_owned(),
            ..BenchReport::default()
        };
        assert_eq!(
            report.to_json(),
            "{\"accepted_per_sec\":1.500,\"delivered_per_sec\":0.000,\"latency_p50_ms\":0.000,\"latency_p99_ms\":0.000,\"latency_p999_ms\":0.000,\"accepted\":3,\"delivered\":0,\"errors\":0,\"idle_answered\":0,\"peak_rss_bytes\":0,\"ingest\":\"json-bulk:100\",\"answer_p50_ms\":0.000,\"answer_p99_ms\":0.000,\"answer_p999_ms\":0.000,\"accepted_total\":4}"
        );
    }

    #[test]
    fn ingest_choices_are_read_and_named() {
        for (text, ingest) in [
            ("sdmp", Ingest::Sdmp),
            ("json", Ingest::Json),
            ("json-bulk", Ingest::JsonBulk(BULK_LINES)),
            ("json-bulk:1000", Ingest::JsonBulk(1000)),
        ] {
            assert_eq!(text.parse::<Ingest>(), Ok(ingest));
        }
        assert_eq!(Ingest::JsonBulk(100).to_string(), "json-bulk:100");
        for bad in ["", "http", "json-bulk:0", "json-bulk:x", "json:2"] {
            assert!(bad.parse::<Ingest>().is_err(), "{bad}");
        }
    }
}
