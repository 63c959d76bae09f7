//! How start and stop of `ozbus serve` scale with the number of persisted transactions.
//!
//! Owns one measurement, against the release binary next to this example
//! (`target/release/ozbus`), run as a real process over TCP like a user would: it fills a data
//! directory with N persisted transactions spread over T tenants (one authenticated
//! connection per tenant, EOs with PS), then measures, each `--runs` times:
//!
//! - idle: `ozbus serve` on that directory, nobody connected: time from spawning the process
//!   to its ready line and to the first DA (a VS on a new connection), its resident memory
//!   right after that DA, and the time from SIGTERM to its exit;
//! - held: the same start, then every tenant's connection re-issues all its transactions (so
//!   that N are held, as when they were opened): the time that takes and the CPU time the
//!   server spent on it, the memory then, and the time from SIGTERM to the exit while they are
//!   held.
//!
//! Never asserts anything about time (it is not a test) and never touches a data directory it
//! did not create: it works in a temporary directory, removed at the end unless `--keep`.
//!
//! ```sh
//! cargo build --release -p ozbus --bins --examples
//! target/release/examples/persisted_start_stop --n 100000 --tenants 100 --runs 3
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::{SinkExt, StreamExt};
use sdmp::framing::Frame;
use sdmp::{SdmpCodec, WireForm};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const PASSWORD: &str = "measure start and stop";
/// EOs sent before waiting for the MV of the last of them.
const CHUNK: usize = 1000;

struct Args {
    n: usize,
    tenants: usize,
    runs: usize,
    binary: PathBuf,
    keep: bool,
}

fn args() -> anyhow::Result<Args> {
    let here = std::env::current_exe()?;
    // target/release/examples/<this> → target/release/ozbus
    let default_binary = here
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("ozbus"))
        .context("where the ozbus binary is")?;
    let mut args = Args {
        n: 100_000,
        tenants: 100,
        runs: 3,
        binary: default_binary,
        keep: false,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || {
            given
                .next()
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--n" => args.n = value()?.parse()?,
            "--tenants" => args.tenants = value()?.parse()?,
            "--runs" => args.runs = value()?.parse()?,
            "--binary" => args.binary = value()?.into(),
            "--keep" => args.keep = true,
            other => bail!(
                "unknown argument {other}; usage: persisted_start_stop [--n N] [--tenants T] \
                 [--runs R] [--binary PATH] [--keep]"
            ),
        }
    }
    if args.tenants == 0 || !args.n.is_multiple_of(args.tenants) {
        bail!("--n must be a multiple of --tenants");
    }
    Ok(args)
}

/// The configuration: one supervisor per tenant, and limits that let each tenant's one
/// connection open all its transactions.
fn config(dir: &Path, args: &Args) -> anyhow::Result<PathBuf> {
    let per_tenant = args.n / args.tenants;
    let hash = ozbus::core::auth::hash_password(PASSWORD.as_bytes())
        .map_err(|error| anyhow::anyhow!("hashing: {error}"))?;
    let mut toml = format!(
        "[limits]\ntransactions_per_connection = {}\npersisted_per_tenant = {}\n\
         ua_per_address_per_minute = 1000000\n\n",
        per_tenant + 1,
        per_tenant.max(10_000),
    );
    for tenant in 0..args.tenants {
        toml.push_str(&format!(
            "[[users]]\ntenant = \"t{tenant}\"\nname = \"sub\"\npassword_hash = {hash:?}\npg = 2\n\n"
        ));
    }
    let path = dir.join("ozbus.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

struct Server {
    child: Child,
    addr: SocketAddr,
    /// From spawning to the ready line.
    ready: Duration,
    spawned: Instant,
}

impl Server {
    fn start(args: &Args, config: &Path, data: &Path) -> anyhow::Result<Server> {
        let spawned = Instant::now();
        let mut child = Command::new(&args.binary)
            .args([
                "serve",
                "--listen-8bit",
                "127.0.0.1:0",
                "--listen-utf16",
                "127.0.0.1:0",
                "--http-listen",
                "off",
            ])
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .env("OZBUS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", args.binary.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let ready = spawned.elapsed();
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("8bit="))
            .with_context(|| format!("no address in the ready line {line:?}"))?
            .parse()?;
        Ok(Server {
            child,
            addr,
            ready,
            spawned,
        })
    }

    /// CPU time the process has used so far (user and system), from /proc.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // The fields after the command name (which may hold spaces) in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // USER_HZ is 100 on Linux.
        Ok(Duration::from_millis(ticks * 10))
    }

    fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS")?;
        Ok(kib * 1024)
    }

    /// SIGTERM; the time until the process has exited (successfully).
    fn terminate(mut self) -> anyhow::Result<Duration> {
        let asked = Instant::now();
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !killed.success() {
            bail!("kill -TERM failed");
        }
        let status = self.child.wait()?;
        let took = asked.elapsed();
        if !status.success() {
            bail!("ozbus exited with {status}");
        }
        Ok(took)
    }
}

struct Client(Framed<TcpStream, SdmpCodec>);

impl Client {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client(Framed::new(stream, SdmpCodec::new(WireForm::Bits8))))
    }

    async fn receive(&mut self) -> anyhow::Result<String> {
        match tokio::time::timeout(Duration::from_secs(600), self.0.next()).await {
            Ok(Some(Ok(Frame::Message(frame)))) => Ok(String::from_utf8_lossy(&frame).into()),
            Ok(other) => bail!("expected a frame, got {other:?}"),
            Err(_) => bail!("no frame in time"),
        }
    }

    /// Waits for `frame`; anything else but an OZ is an error.
    async fn wait_for(&mut self, frame: &str) -> anyhow::Result<()> {
        loop {
            let got = self.receive().await?;
            if got == frame {
                return Ok(());
            }
            if !got.starts_with("OZ\\") {
                bail!("expected {frame:?}, got {got:?}");
            }
        }
    }

    /// The first DA on a new connection.
    async fn first_da(addr: SocketAddr) -> anyhow::Result<()> {
        let mut client = Client::connect(addr).await?;
        client.0.send(&b"VS"[..]).await?;
        client.wait_for("DA").await
    }

    /// A connection of tenant `t<tenant>`, authenticated.
    async fn of_tenant(addr: SocketAddr, tenant: usize) -> anyhow::Result<Client> {
        let mut client = Client::connect(addr).await?;
        let ua = format!("UA\\TDt{tenant}\\ANsub\\PW{PASSWORD}");
        client.0.send(ua.as_bytes()).await?;
        let us = client.receive().await?;
        if !us.contains("\\RS0") {
            bail!("not authenticated: {us}");
        }
        Ok(client)
    }

    /// Opens (or re-issues) the persisted transactions `0..count`, waiting for the MV of every
    /// chunk's last one.
    async fn open_all(&mut self, count: usize) -> anyhow::Result<()> {
        for start in (0..count).step_by(CHUNK) {
            let end = (start + CHUNK).min(count);
            for i in start..end {
                let tk = if i + 1 == end {
                    format!("\\TK{i}")
                } else {
                    String::new()
                };
                let eo = format!("EO\\TXt{i}\\FO\\PSp{i}{tk}");
                self.0.feed(eo.as_bytes()).await?;
            }
            SinkExt::<&[u8]>::flush(&mut self.0).await?;
            self.wait_for(&format!("MV\\TK{}", end - 1)).await?;
        }
        Ok(())
    }
}

/// Every tenant's connection opens (or re-issues) all its transactions; the connections are
/// returned still open, holding them.
async fn hold_all(addr: SocketAddr, args: &Args) -> anyhow::Result<Vec<Client>> {
    let per_tenant = args.n / args.tenants;
    let mut tasks = Vec::new();
    for tenant in 0..args.tenants {
        tasks.push(tokio::spawn(async move {
            let mut client = Client::of_tenant(addr, tenant).await?;
            client.open_all(per_tenant).await?;
            anyhow::Ok(client)
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await??);
    }
    Ok(clients)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// "median (run, run, run)".
fn summary<T: Copy + Ord>(values: &[T], show: impl Fn(T) -> String) -> String {
    let mut sorted = values.to_vec();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    let runs: Vec<String> = values.iter().map(|v| show(*v)).collect();
    format!("{} ({})", show(median), runs.join(", "))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let work = tempfile::Builder::new()
        .prefix("ozbus-persisted-")
        .tempdir()?;
    let config = config(work.path(), &args)?;
    let data = work.path().join("data");
    println!(
        "N = {} persisted transactions over {} tenants; {}; data in {}",
        args.n,
        args.tenants,
        args.binary.display(),
        data.display()
    );

    // The fill: every transaction new, held by its tenant's connection.
    let server = Server::start(&args, &config, &data)?;
    let filling = Instant::now();
    let clients = hold_all(server.addr, &args).await?;
    let filled = filling.elapsed();
    let rss = server.rss()?;
    let stop = server.terminate()?;
    drop(clients);
    println!(
        "fill: opened in {}, RSS {} holding them, SIGTERM to exit {}",
        secs(filled),
        mib(rss),
        secs(stop)
    );

    let (mut ready, mut first_da, mut rss_idle, mut stop_idle) = (vec![], vec![], vec![], vec![]);
    for _ in 0..args.runs {
        let server = Server::start(&args, &config, &data)?;
        Client::first_da(server.addr).await?;
        first_da.push(server.spawned.elapsed());
        ready.push(server.ready);
        rss_idle.push(server.rss()?);
        stop_idle.push(server.terminate()?);
    }
    let (mut reissued, mut reissue_cpu, mut rss_held, mut stop_held) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..args.runs {
        let server = Server::start(&args, &config, &data)?;
        let (reissuing, cpu) = (Instant::now(), server.cpu()?);
        let clients = hold_all(server.addr, &args).await?;
        reissued.push(reissuing.elapsed());
        reissue_cpu.push(server.cpu()?.saturating_sub(cpu));
        rss_held.push(server.rss()?);
        stop_held.push(server.terminate()?);
        drop(clients);
    }
    println!("median (runs):");
    println!("  start to ready line   {}", summary(&ready, secs));
    println!("  start to first DA     {}", summary(&first_da, secs));
    println!("  RSS after first DA    {}", summary(&rss_idle, mib));
    println!("  SIGTERM to exit, idle {}", summary(&stop_idle, secs));
    println!("  re-issue all N        {}", summary(&reissued, secs));
    println!("  ... server CPU        {}", summary(&reissue_cpu, secs));
    println!("  RSS, all N held       {}", summary(&rss_held, mib));
    println!("  SIGTERM to exit, held {}", summary(&stop_held, secs));
    if args.keep {
        println!("kept {}", work.keep().display());
    }
    Ok(())
}
