//! Helpers shared by the PostgreSQL store tests: a database of its own per test on the server
//! named by `OZBUS_TEST_PG_URL`, and a TCP proxy that can lose a connection's answers.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ozbus::store::postgres::{PgOptions, PgStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The server the tests use. Without one they fail: a test that passes without running would
/// hide that the PostgreSQL store was never tested.
pub fn server_url() -> String {
    match std::env::var("OZBUS_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "OZBUS_TEST_PG_URL is not set: the PostgreSQL store tests need a server. Run \
             `scripts/test`, which starts a throw-away cluster for them, or start one with \
             `scripts/pg-cluster start DIR` and export OZBUS_TEST_PG_URL=<the URL it prints>"
        ),
    }
}

/// `url` with its database replaced by `dbname`.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    format!("{}/{dbname}{query}", &base[..authority_end])
}

/// A connection for the test itself (its driver runs on the test's runtime).
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database of the test's own, so tests run in parallel. Left behind: the cluster of
/// `scripts/test` is removed after the run.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

pub async fn database() -> TestDb {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "ozbus_test_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let server = server_url();
    let admin = connect(&server).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    TestDb {
        url: with_dbname(&server, &name),
        name,
    }
}

impl TestDb {
    pub fn options(&self) -> PgOptions {
        PgOptions::new(self.url.clone())
    }

    pub async fn open(&self) -> PgStore {
        PgStore::open(self.options()).await.expect("open store")
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Ends every connection to the database but the caller's; how many it ended.
    pub async fn terminate_connections(&self) -> usize {
        let admin = connect(&server_url()).await;
        admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .unwrap()
            .len()
    }
}

/// What a proxy does with the bytes of the connections through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Pass = 0,
    /// The server's answers are lost (what the client sent arrives).
    DropAnswers = 1,
    /// What the client sends is lost.
    DropRequests = 2,
}

/// A TCP proxy in front of the server: connections through it can lose data in one
/// direction, and be cut.
pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    cut: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(server: &str) -> Proxy {
        let config: tokio_postgres::Config = server.parse().unwrap();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let upstream = format!("127.0.0.1:{port}");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            mode: Arc::new(AtomicU8::new(Mode::Pass as u8)),
            cut: Arc::new(Mutex::new(CancellationToken::new())),
            stop: CancellationToken::new(),
        };
        let (mode, cut, stop) = (proxy.mode.clone(), proxy.cut.clone(), proxy.stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let cut = cut.lock().unwrap().clone();
                let mode = mode.clone();
                tokio::spawn(async move {
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = pump(client_read, server_write, mode.clone(), Mode::DropRequests);
                    let down = pump(server_read, client_write, mode, Mode::DropAnswers);
                    tokio::select! {
                        () = cut.cancelled() => {}
                        _ = async { tokio::join!(up, down) } => {}
                    }
                });
            }
        });
        proxy
    }

    /// `url` through this proxy.
    pub fn url(&self, url: &str) -> String {
        let config: tokio_postgres::Config = url.parse().unwrap();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        url.replacen(&format!(":{port}/"), &format!(":{}/", self.port), 1)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Closes every connection through the proxy (both ends), and passes everything again.
    pub fn cut(&self) {
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
        self.set(Mode::Pass);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut.lock().unwrap().cancel();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
    drop_when: Mode,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if mode.load(Ordering::SeqCst) == drop_when as u8 {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
