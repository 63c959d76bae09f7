//! The service's configuration: embedded defaults, a TOML file, then flags and `OZBUS_*`
//! variables (the command line applies those; see `cli`).
//!
//! Owns only the shape of the settings and their defaults; it opens nothing and binds nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::calls::OutcomesConfig;
use crate::store::StoreOptions;

/// Everything `ozbus serve` can be told.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub calls: CallsConfig,
    pub ingest: IngestConfig,
    pub transactions: TransactionsConfig,
    pub outcomes: OutcomesConfig,
    /// Who may connect (`[[users]]`); none: everyone may do everything, on loopback only.
    pub users: Vec<UserConfig>,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub limits: LimitsConfig,
    pub http: HttpConfig,
}

/// The HTTP front end (JSON API, health, metrics, OpenAPI document).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where it listens; `"off"` in the file (none here): no HTTP listener.
    #[serde(deserialize_with = "listen_or_off")]
    pub listen: Option<SocketAddr>,
    /// Serve HTTPS with the certificate and key of `[tls]` (and its client CAs, if any).
    pub tls: bool,
    /// A bearer token (`POST /v1/tokens`) is good for this long after it was issued.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// Tokens valid at once, at most (EC 814 for a new one beyond).
    pub max_tokens: usize,
    /// Largest request body of a bulk ingest (JSON Lines), in bytes.
    pub bulk_max_bytes: usize,
    /// Most reports (lines) in one bulk ingest.
    pub bulk_max_lines: usize,
    /// An idle stream (SSE, WebSocket) gets a comment or a ping this often, so that proxies
    /// do not take it for dead.
    #[serde(with = "humantime_serde")]
    pub stream_keepalive: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 6580))),
            tls: false,
            token_ttl: Duration::from_secs(3600),
            max_tokens: 65_536,
            bulk_max_bytes: 16 << 20,
            bulk_max_lines: 10_000,
            stream_keepalive: Duration::from_secs(15),
        }
    }
}

/// Reads a listen address, or `"off"` for none.
pub fn parse_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    match text.trim() {
        "off" | "" => Ok(None),
        addr => addr
            .parse()
            .map(Some)
            .map_err(|e| format!("{addr:?}: {e} (an address such as 127.0.0.1:6580, or \"off\")")),
    }
}

fn listen_or_off<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_listen(&text).map_err(serde::de::Error::custom)
}

/// What any one client, and all of them together, can make the server hold.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Bytes of output (OZ, replies) buffered for every connection together, and of HTTP
    /// request bodies being read and taken; beyond it, deliveries wait (and read the log later),
    /// replies hold back their connection's reading, and a body is refused (429, EC 814).
    /// Default: an eighth of the machine's memory, between 64 MiB and 1 GiB.
    pub memory_budget: u64,
    /// Bytes of replies queued for one connection before ozbus stops reading its requests.
    pub reply_bytes: u32,
    /// Connections open at once, in total ...
    pub connections: usize,
    /// ... and from one source address.
    pub connections_per_address: usize,
    /// Transactions one connection may hold (EC 814 beyond).
    pub transactions_per_connection: usize,
    /// Persisted transactions one tenant may have, held or not (EC 814 beyond).
    pub persisted_per_tenant: usize,
    /// UA attempts one source address may make per minute (EC 814 beyond).
    pub ua_per_address_per_minute: u32,
    /// A frame that has started must end within this, or the connection is closed.
    #[serde(with = "humantime_serde")]
    pub frame_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            memory_budget: default_memory_budget(),
            reply_bytes: 64 * 1024,
            connections: 10_000,
            connections_per_address: 128,
            transactions_per_connection: 64,
            persisted_per_tenant: 10_000,
            ua_per_address_per_minute: 60,
            frame_timeout: Duration::from_secs(30),
        }
    }
}

/// An eighth of the machine's memory (MemTotal), between 64 MiB and 1 GiB.
fn default_memory_budget() -> u64 {
    const MIB: u64 = 1 << 20;
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(512 * MIB);
    (total / 8).clamp(64 * MIB, 1024 * MIB)
}

/// TLS listeners for both wire forms, beside (or instead of being reachable on) the plain ones.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The 8-bit listener over TLS; none: not served.
    pub listen_8bit: Option<SocketAddr>,
    /// The UTF-16LE listener over TLS; none: not served.
    pub listen_utf16: Option<SocketAddr>,
    /// PEM file with the certificate chain, the server's own certificate first.
    pub cert: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM file with the certificates that sign client certificates: when set, a client must
    /// present a certificate one of them signed.
    pub client_ca: Option<PathBuf>,
    /// A TLS handshake that takes longer is abandoned.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen_8bit: None,
            listen_utf16: None,
            cert: None,
            key: None,
            client_ca: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl TlsConfig {
    /// Whether any TLS listener is configured.
    pub fn enabled(&self) -> bool {
        self.listen_8bit.is_some() || self.listen_utf16.is_some()
    }
}

/// One user, as `[[users]]` configures it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The tenant the user acts in; `landlord` acts for every tenant.
    pub tenant: String,
    /// The AN (or QI) of its UA.
    pub name: String,
    /// An argon2id PHC string (`ozbus user hash` prints one); never a password.
    pub password_hash: String,
    /// Privilege flags: 1 agent, 2 supervisor, 4 configuration, 8 system, 256 super user.
    pub pg: u16,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// With users configured, a connection that has not authenticated within this time is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Failed UAs in a row that lock a user, or a source address, out ...
    pub lockout_failures: u32,
    /// ... for this long (failures older than this are forgotten, too).
    #[serde(with = "humantime_serde")]
    pub lockout_time: Duration,
    /// Tenants a landlord may name with TD besides those of the configured users.
    pub tenants: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            timeout: Duration::from_secs(10),
            lockout_failures: 5,
            lockout_time: Duration::from_secs(15 * 60),
            tenants: Vec::new(),
        }
    }
}

/// Exactly-once ingestion (XK): how long a key counts, and how many are kept in memory (older
/// ones are looked up in the store).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// A message re-sent under the same XK within this time of the first has no effect.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Committed keys kept in memory, at most ...
    pub dedup_memory_keys: usize,
    /// ... and at most this many bytes of them.
    pub dedup_memory_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            dedup_window: Duration::from_secs(24 * 3600),
            dedup_memory_keys: 65_536,
            dedup_memory_bytes: 16 << 20,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionsConfig {
    /// A persisted transaction that no connection holds for this long is forgotten.
    #[serde(with = "humantime_serde")]
    pub persist_ttl: Duration,
}

impl Default for TransactionsConfig {
    fn default() -> Self {
        TransactionsConfig {
            persist_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The 8-bit listener (frames end with NUL).
    pub listen_8bit: SocketAddr,
    /// The UTF-16LE listener.
    pub listen_utf16: SocketAddr,
    /// Largest frame, in characters (bytes on the 8-bit listener, code units on UTF-16).
    pub max_frame: usize,
    /// A connection that takes none of what ozbus writes for this long is closed.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`); none: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Listen on addresses other than loopback although no users are configured (anyone who
    /// can reach the port may then do everything).
    pub insecure: bool,
    /// Nodes sharing a PostgreSQL database: the address (`host:port`) at which the other nodes
    /// reach this node's 8-bit listener, to forward call reports while this node holds the
    /// call book. Default: the 8-bit listener's address, when it names one host (loopback
    /// otherwise, which only nodes on the same machine reach).
    pub advertise: Option<String>,
    /// Connections each listener lets wait to be accepted (the kernel caps it at
    /// `net.core.somaxconn`): beyond, a client's connection attempt is dropped and retried a
    /// second later, so a crowd reconnecting at once (after a restart) needs room here.
    pub listen_backlog: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// A `postgres://` URL: keep the state in that PostgreSQL database, shared by every node
    /// configured with it, instead of SQLite in `data_dir`.
    pub url: Option<String>,
    /// Outcomes older than this are removed.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// When set, the oldest outcomes are removed while the log holds more than this.
    pub retention_max_bytes: Option<u64>,
    /// Recent outcomes kept in memory for subscribers that keep up...
    pub tail_capacity: usize,
    /// ... and at most this many bytes of them.
    pub tail_max_bytes: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsConfig {
    /// A connected call that no outcome closed within this time is closed with RE 9.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen_8bit: SocketAddr::from(([127, 0, 0, 1], 6502)),
            listen_utf16: SocketAddr::from(([127, 0, 0, 1], 6500)),
            max_frame: sdmp::framing::DEFAULT_MAX_FRAME,
            stall_timeout: Duration::from_secs(60),
            metrics_listen: None,
            insecure: false,
            advertise: None,
            listen_backlog: 4096,
        }
    }
}

/// The database of a test's server whose data directory is `data_dir`, when the test suite
/// runs against PostgreSQL (`OZBUS_TEST_STORE=postgres`, with `OZBUS_TEST_PG_URL` naming the
/// server, as `scripts/test` sets them): on that server, a database of this process and
/// directory, so a server restarted on the same directory finds its data again, and every
/// other test has a database of its own. PgStore creates it on first use. `None` otherwise.
pub fn test_store_url(data_dir: &Path) -> Option<String> {
    if std::env::var("OZBUS_TEST_STORE").ok()?.trim() != "postgres" {
        return None;
    }
    let server = std::env::var("OZBUS_TEST_PG_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .expect("OZBUS_TEST_STORE=postgres needs OZBUS_TEST_PG_URL: run scripts/test");
    // FNV-1a of the directory: stable, and the same in every process that computes it.
    let hash = data_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let name = format!("ozbus_t_{}_{hash:016x}", std::process::id());
    let (base, query) = server.split_once('?').unwrap_or((&server, ""));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..]
        .find('/')
        .map_or(base.len(), |i| authority + i);
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    Some(format!("{}/{name}{query}", &base[..path]))
}

impl Default for StoreConfig {
    fn default() -> Self {
        let store = StoreOptions::default();
        StoreConfig {
            data_dir: store.dir,
            url: None,
            retention: store.retention_max_age,
            retention_max_bytes: store.retention_max_bytes,
            tail_capacity: store.tail_capacity,
            tail_max_bytes: store.tail_max_bytes,
        }
    }
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            call_timeout: Duration::from_secs(4 * 3600),
        }
    }
}

impl Config {
    /// Reads a TOML file; settings it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Both listeners on free loopback ports, data in `data_dir`: for tests and benchmarks.
    /// The store is SQLite in `data_dir`, or, when the test suite runs against PostgreSQL,
    /// the database [`test_store_url`] names for it.
    pub fn for_test(data_dir: &Path) -> Config {
        let mut config = Config::default();
        config.server.listen_8bit = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.listen_utf16 = SocketAddr::from(([127, 0, 0, 1], 0));
        config.http.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.store.data_dir = data_dir.to_path_buf();
        config.store.url = test_store_url(data_dir);
        config
    }

    /// Every address ozbus would listen on.
    pub fn listen_addresses(&self) -> Vec<SocketAddr> {
        let mut addresses = vec![self.server.listen_8bit, self.server.listen_utf16];
        addresses.extend(self.tls.listen_8bit);
        addresses.extend(self.tls.listen_utf16);
        addresses.extend(self.server.metrics_listen);
        addresses.extend(self.http.listen);
        addresses
    }

    /// Whether the certificate and key of `[tls]` are needed: a TLS listener, or HTTPS.
    pub fn tls_needed(&self) -> bool {
        self.tls.enabled() || (self.http.tls && self.http.listen.is_some())
    }

    /// `[store] url`, when given, names a PostgreSQL database.
    pub fn check_store(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.store.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                anyhow::bail!(
                    "[store] url must be a postgres:// or postgresql:// URL (got {:?})",
                    crate::store::postgres::redacted(url)
                );
            }
        }
        Ok(())
    }

    /// Without users, anyone who reaches a port may read and change every tenant's calls: then
    /// ozbus listens on loopback addresses only, unless told `insecure`. Returns the refusal,
    /// saying what to configure.
    ///
    /// With users, HTTP requests carry passwords and tokens: over plain HTTP (no `[http] tls`)
    /// ozbus then listens for HTTP on a loopback address only, unless told `insecure` too.
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        if self.server.insecure {
            return Ok(());
        }
        if !self.users.is_empty() {
            return match self.http.listen {
                Some(addr) if !self.http.tls && !addr.ip().is_loopback() => anyhow::bail!(
                    "refusing to serve HTTP on {addr} without TLS: requests there carry \
                     passwords and tokens. Set [http] tls = true (with [tls] cert and key), \
                     listen on a loopback address, or start with --insecure to accept that"
                ),
                _ => Ok(()),
            };
        }
        let exposed: Vec<String> = self
            .listen_addresses()
            .iter()
            .filter(|addr| !addr.ip().is_loopback())
            .map(ToString::to_string)
            .collect();
        if exposed.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "refusing to listen on {} without users: anyone who can reach it could read and \
             change every tenant's calls. Configure [[users]] (`ozbus user hash` makes the \
             password hash), listen on a loopback address, or start with --insecure to accept that",
            exposed.join(", ")
        )
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            dir: self.store.data_dir.clone(),
            retention_max_age: self.store.retention,
            retention_max_bytes: self.store.retention_max_bytes,
            tail_capacity: self.store.tail_capacity,
            tail_max_bytes: self.store.tail_max_bytes,
            dedup_window: self.ingest.dedup_window,
            url: self.store.url.clone(),
            request_tx: crate::subs::request_tx,
            ..StoreOptions::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_gives_the_embedded_defaults() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.server.listen_8bit.port(), 6502);
        assert_eq!(config.server.listen_utf16.port(), 6500);
        assert_eq!(config.store.data_dir, PathBuf::from("./ozbus-data"));
        assert_eq!(config.store.retention, Duration::from_secs(7 * 86400));
        assert_eq!(config.calls.call_timeout, Duration::from_secs(4 * 3600));
        assert_eq!(config.ingest.dedup_window, Duration::from_secs(24 * 3600));
        assert_eq!(config.http.listen, Some("127.0.0.1:6580".parse().unwrap()));
    }

    #[test]
    fn the_http_listener_can_be_turned_off() {
        let config = Config::from_toml("[http]\nlisten = \"off\"").unwrap();
        assert_eq!(config.http.listen, None);
        let config = Config::from_toml("[http]\nlisten = \"0.0.0.0:80\"\ntls = true").unwrap();
        assert_eq!(config.http.listen, Some("0.0.0.0:80".parse().unwrap()));
        assert!(Config::from_toml("[http]\nlisten = \"nowhere\"").is_err());
    }

    #[test]
    fn http_beyond_loopback_needs_users_and_with_users_tls() {
        let user = UserConfig {
            tenant: "acme".into(),
            name: "crm".into(),
            password_hash: String::new(),
            pg: 2,
        };
        let mut config = Config::default();
        config.http.listen = Some("0.0.0.0:6580".parse().unwrap());
        assert!(config.check_exposure().is_err(), "without users");
        config.users.push(user);
        let refusal = config.check_exposure().unwrap_err().to_string();
        assert!(refusal.contains("without TLS"), "{refusal}");
        config.http.tls = true;
        assert!(config.check_exposure().is_ok());
        config.http.tls = false;
        config.server.insecure = true;
        assert!(config.check_exposure().is_ok());
    }

    #[test]
    fn a_file_overrides_what_it_names() {
        let config = Config::from_toml(
            r#"
            [server]
            listen_8bit = "0.0.0.0:7000"
            stall_timeout = "5s"
            [store]
            data_dir = "/var/lib/ozbus"
            retention = "2days"
            [calls]
            call_timeout = "30m"
            [ingest]
            dedup_window = "2h"
            [outcomes]
            strict = true
            "#,
        )
        .unwrap();
        assert_eq!(config.server.listen_8bit.port(), 7000);
        assert_eq!(config.server.listen_utf16.port(), 6500);
        assert_eq!(config.server.stall_timeout, Duration::from_secs(5));
        assert_eq!(config.store.retention, Duration::from_secs(2 * 86400));
        assert_eq!(config.calls.call_timeout, Duration::from_secs(1800));
        assert_eq!(config.ingest.dedup_window, Duration::from_secs(7200));
        assert_eq!(
            config.store_options().dedup_window,
            Duration::from_secs(7200)
        );
        assert!(config.outcomes.strict);
    }

    #[test]
    fn unknown_settings_and_bad_values_are_errors() {
        assert!(Config::from_toml("[server]\nlisten_8bits = \"1.2.3.4:1\"").is_err());
        assert!(Config::from_toml("[store]\nretention = \"soon\"").is_err());
        assert!(Config::from_toml("[server]\nlisten_8bit = \"nowhere\"").is_err());
    }
}
