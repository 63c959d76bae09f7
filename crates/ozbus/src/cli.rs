//! The command line: `ozbus serve` and the clients, with `--help` for each.
//!
//! Settings come from the embedded defaults, then the config file, then flags and their
//! `OZBUS_*` variables (a flag wins over its variable). Logs go to stderr: text, coloured only
//! when stderr is a terminal, or one JSON object per line with `--log-json`.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::client::{bench, send, tail};
use crate::config::Config;
use crate::server::RunningServer;

#[derive(Parser, Debug)]
#[command(
    name = "ozbus",
    version,
    about = "Call outcomes, durable, streamed over SDMP (EO/OZ)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service.
    #[command(
        after_help = "Examples:\n  ozbus serve\n  ozbus serve --data-dir /var/lib/ozbus --listen-8bit 0.0.0.0:6502\n  ozbus serve --config /etc/ozbus.toml"
    )]
    Serve(ServeArgs),
    /// Subscribe to outcomes (EO) and print them as they come.
    #[command(
        after_help = "Examples:\n  ozbus tail                       every outcome of every campaign\n  ozbus tail --campaign Sales1 --failure\n  ozbus tail --raw --count 10\n  ozbus tail --persist crm --sequenced --addr node1:6502,node2:6502\n                                   resumes, on the other node if need be, when a connection is lost\n  ozbus tail --addr ozbus.example:6512 --tls --ca-file ca.pem --user crm --user-tenant acme\n                                   over TLS, as user crm of tenant acme (password: OZBUS_PASSWORD, else asked)"
    )]
    Tail(tail::TailArgs),
    /// Send SDMP frames and print the replies.
    #[command(
        after_help = "Examples:\n  ozbus send 'MC\\CNSales1\\TN001234567890\\TKm1'\n  printf 'CF\\\\CA2\\\\CNSales1\\\\SI42\\n' | ozbus send\n  OZBUS_PASSWORD=... ozbus send --addr ozbus.example:6512 --tls --ca-file ca.pem --user dialer --user-tenant acme 'CF\\CA2\\CNSales1\\SI42\\TK1'\n\nExits 1 when a reply was an ER, or when the server refused the user (RS other than 0).\nWith frames piped to standard input, the password of --user must come from OZBUS_PASSWORD."
    )]
    Send(send::SendArgs),
    /// Load generator: report calls, subscribe, measure throughput and latency.
    #[command(
        after_help = "Examples:\n  ozbus bench                                    in-process server, as fast as it goes\n  ozbus bench --rate 10000 --subscribers 10      latency at a fixed rate\n  ozbus bench --addr 127.0.0.1:6502              against a running server\n  ozbus bench --ingest sdmp,json,json-bulk:1000 --sse 1 --ws 1\n                                                 SDMP, JSON one report per request and JSON Lines\n                                                 1000 per request, one phase each, side by side\n  ozbus bench --addr 127.0.0.1:6502 --http-addr 127.0.0.1:6580 --ingest json --http-connections 64\n                                                 JSON ingest of a running server, 64 requests in flight\n  ozbus bench --addr ozbus.example:6512 --tls --ca-file ca.pem --user dialer --user-tenant acme\n                                                 over TLS, every connection as that user"
    )]
    Bench(bench::BenchArgs),
    /// Print the message tables and error codes ozbus implements (Markdown).
    Spec,
    /// Users: make the password hash of a `[[users]]` entry.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Print the argon2id PHC string of a password, for `password_hash` in `[[users]]`.
    #[command(
        after_help = "The password is read without echo from a terminal, or as one line from standard input:\n  ozbus user hash\n  echo secret | ozbus user hash"
    )]
    Hash,
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "OZBUS_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the 8-bit listener [default: 127.0.0.1:6502].
    #[arg(long, env = "OZBUS_LISTEN_8BIT")]
    listen_8bit: Option<SocketAddr>,
    /// Address of the UTF-16LE listener [default: 127.0.0.1:6500].
    #[arg(long, env = "OZBUS_LISTEN_UTF16")]
    listen_utf16: Option<SocketAddr>,
    /// Where the data lives [default: ./ozbus-data].
    #[arg(long, env = "OZBUS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the state in this PostgreSQL database (postgres://user:password@host/db), shared by
    /// every node given the same URL [default: SQLite in --data-dir].
    #[arg(long, env = "OZBUS_STORE_URL")]
    store_url: Option<String>,
    /// With --store-url: the host:port at which other nodes reach this node's 8-bit listener
    /// [default: the 8-bit listener's address].
    #[arg(long, env = "OZBUS_ADVERTISE")]
    advertise: Option<String>,
    /// How long outcomes are kept, e.g. 7d, 36h [default: 7d].
    #[arg(long, env = "OZBUS_RETENTION", value_parser = humantime::parse_duration)]
    retention: Option<Duration>,
    /// Connected calls left open longer are closed with RE 9 [default: 4h].
    #[arg(long, env = "OZBUS_CALL_TIMEOUT", value_parser = humantime::parse_duration)]
    call_timeout: Option<Duration>,
    /// A message re-sent under the same XK within this time has no second effect [default: 24h].
    #[arg(long, env = "OZBUS_DEDUP_WINDOW", value_parser = humantime::parse_duration)]
    dedup_window: Option<Duration>,
    /// Largest frame in characters [default: 262144].
    #[arg(long, env = "OZBUS_MAX_FRAME")]
    max_frame: Option<usize>,
    /// Address of the HTTP listener (JSON API, /docs, /metrics), or "off" [default: 127.0.0.1:6580].
    #[arg(long, env = "OZBUS_HTTP_LISTEN", value_parser = parse_http_listen)]
    http_listen: Option<Listen>,
    /// Serve Prometheus metrics on this address (GET /metrics) [default: not served].
    #[arg(long, env = "OZBUS_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Refuse cause and agent-outcome codes missing from the outcome tables.
    #[arg(long, env = "OZBUS_STRICT")]
    strict: bool,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "OZBUS_LOG_JSON")]
    log_json: bool,
    /// Listen on non-loopback addresses although no users are configured.
    #[arg(long, env = "OZBUS_INSECURE")]
    insecure: bool,
}

/// A listen address, or none ("off").
#[derive(Clone, Copy, Debug)]
struct Listen(Option<SocketAddr>);

fn parse_http_listen(text: &str) -> Result<Listen, String> {
    crate::config::parse_listen(text).map(Listen)
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(addr) = self.listen_8bit {
            config.server.listen_8bit = addr;
        }
        if let Some(addr) = self.listen_utf16 {
            config.server.listen_utf16 = addr;
        }
        if let Some(dir) = &self.data_dir {
            config.store.data_dir = dir.clone();
        }
        if let Some(url) = &self.store_url {
            config.store.url = Some(url.clone());
        }
        if let Some(addr) = &self.advertise {
            config.server.advertise = Some(addr.clone());
        }
        config.check_store()?;
        if let Some(retention) = self.retention {
            config.store.retention = retention;
        }
        if let Some(timeout) = self.call_timeout {
            config.calls.call_timeout = timeout;
        }
        if let Some(window) = self.dedup_window {
            config.ingest.dedup_window = window;
        }
        if let Some(max) = self.max_frame {
            config.server.max_frame = max;
        }
        if self.strict {
            config.outcomes.strict = true;
        }
        if let Some(addr) = self.metrics_listen {
            config.server.metrics_listen = Some(addr);
        }
        if let Some(Listen(listen)) = self.http_listen {
            config.http.listen = listen;
        }
        if self.insecure {
            config.server.insecure = true;
        }
        Ok(config)
    }
}

/// Runs the command line; the binary's whole `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_logs = matches!(&cli.command, Command::Serve(args) if args.log_json);
    init_logging(json_logs);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ozbus: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ozbus: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Tail(args) => {
            tail::run(args, &mut stdout, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => {
            let outcome = send::run(args, &mut stdout).await?;
            Ok(if outcome.errors > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Bench(args) => {
            bench::run(args, &mut stdout).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Spec => {
            print!("{}", sdmp::schema::markdown());
            Ok(ExitCode::SUCCESS)
        }
        Command::User(UserCommand::Hash) => {
            let password = read_password("Password: ")?;
            if password.is_empty() {
                anyhow::bail!("the password is empty");
            }
            let hash = crate::core::auth::hash_password(password.as_bytes())
                .map_err(|error| anyhow::anyhow!("hashing the password: {error}"))?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Handled from the start: a signal that comes as soon as the ready line is out must not
    // find its default action (ending the process) still in place.
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let config = args.config()?;
    config.check_exposure()?;
    // Every connection is a descriptor: take all the system allows this process.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open file limit"),
    }
    let metrics_listen = config.server.metrics_listen;
    crate::http::install_metrics(metrics_listen).with_context(|| match metrics_listen {
        Some(addr) => format!("serving metrics on {addr}"),
        None => "collecting metrics".to_string(),
    })?;
    if let Some(addr) = metrics_listen {
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    let store = match &config.store.url {
        Some(url) => format!("store={}", crate::store::postgres::redacted(url)),
        None => format!("data={}", config.store.data_dir.display()),
    };
    let server = RunningServer::start(config).await?;
    // One line on standard output for people and scripts (tests read the ports from it).
    let tls: String = [
        ("tls8bit", server.tls_addr_8bit()),
        ("tlsutf16", server.tls_addr_utf16()),
    ]
    .iter()
    .filter_map(|(name, addr)| addr.map(|addr| format!(" {name}={addr}")))
    .collect();
    let http = match (server.http_addr(), server.http_secure()) {
        (Some(addr), secure) => {
            let scheme = if secure { "https" } else { "http" };
            tracing::info!("HTTP API at {scheme}://{addr}/ (documentation at /docs)");
            format!(" {scheme}={addr}")
        }
        (None, _) => String::new(),
    };
    println!(
        "ozbus listening 8bit={} utf16={}{tls}{http} {store}",
        server.addr_8bit(),
        server.addr_utf16(),
    );
    loop {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = hangup.recv() => {
                match server.reload_tls() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                    Err(error) => tracing::error!("SIGHUP: TLS certificates not reloaded, the old ones stay: {error:#}"),
                }
                continue;
            }
            _ = server.stopped() => {}
        }
        break;
    }
    server.close().await?;
    // Everything durable is written and the store closed. What is left is memory, which the
    // operating system takes back at once; freeing it piece by piece (the transactions held,
    // their deliveries) can take seconds.
    std::process::exit(0)
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OZBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour is for a person at a terminal. A file, a pipe or a log collector would keep the
    // escape codes as text, so they are off unless stderr is a terminal. Setting it at all
    // overrides the subscriber's own reading of NO_COLOR, hence that is read here too.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A password: typed without echo when standard input is a terminal, else its first line.
pub fn read_password(prompt: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt).context("reading the password");
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
