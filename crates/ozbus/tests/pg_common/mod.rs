//! Helpers shared by the PostgreSQL store tests: a database of its own per test on the server
//! named by `OZBUS_TEST_PG_URL`, the call book held by a store or taken from it, and a TCP
//! proxy that can lose a connection's answers.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ozbus::store::postgres::{PgOptions, PgStore};
use ozbus::store::{Backend, BookHolder};
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

    /// A store (a node) on the database; it does not bid for the call book.
    pub async fn open(&self) -> PgStore {
        PgStore::open(self.options()).await.expect("open store")
    }

    /// A store that holds the call book (see [`hold_book`]): the node alone on the database.
    pub async fn open_holding(&self) -> PgStore {
        let store = self.open().await;
        hold_book(&store).await;
        store
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Ends every connection to the database but the caller's; how many it ended.
    pub async fn terminate_connections(&self) -> usize {
        self.terminate("true").await
    }

    /// Ends every connection to the database but the caller's and the call book's lease
    /// connections (a store keeps the book); how many it ended.
    pub async fn terminate_connections_but_leases(&self) -> usize {
        self.terminate("application_name NOT LIKE 'ozbus-book-%'")
            .await
    }

    /// Ends the call book's lease connection of `node` (as when its session is lost): it no
    /// longer holds the book.
    pub async fn kill_lease(&self, node: i64) {
        let killed = self
            .terminate(&format!("application_name = 'ozbus-book-{node}'"))
            .await;
        assert_eq!(killed, 1, "the lease connection of node {node}");
    }

    async fn terminate(&self, which: &str) -> usize {
        let admin = connect(&server_url()).await;
        admin
            .query(
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid() AND {which}"
                ),
                &[&self.name],
            )
            .await
            .unwrap()
            .len()
    }
}

/// Waits (up to `within`) until `store`'s book holder is as `wanted` says; what it is then.
pub async fn wait_for_holder(
    store: &dyn Backend,
    within: std::time::Duration,
    wanted: impl Fn(&BookHolder) -> bool,
) -> BookHolder {
    let mut holder = store.book_holder();
    let found = tokio::time::timeout(within, holder.wait_for(|holder| wanted(holder)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the book holder is still {:?}",
                *store.book_holder().borrow()
            )
        })
        .expect("the store is open");
    found.clone()
}

/// Makes `store` bid for the call book, at an address made up from its node id, and waits
/// until it holds it (a store alone on its database takes it at once; SQLite holds it
/// always); its epoch. Only the book's holder writes call records and the log.
pub async fn hold_book(store: &dyn Backend) -> i64 {
    store.advertise(format!("test-node-{}", std::process::id()));
    let held = wait_for_holder(store, std::time::Duration::from_secs(10), |holder| {
        matches!(holder, BookHolder::Me { .. })
    })
    .await;
    match held {
        BookHolder::Me { epoch } => epoch,
        _ => unreachable!(),
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
/// direction, and be cut; those of the call book's lease too, unless it spares them.
pub struct Proxy {
    pub port: u16,
    mode: Arc<AtomicU8>,
    cut: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(server: &str) -> Proxy {
        Self::start_with(server, false).await
    }

    /// A proxy that leaves the call book's lease connections alone (told apart by the
    /// application name in their startup message): for tests of the writer's connection, with
    /// a store that keeps the book.
    pub async fn start_sparing_leases(server: &str) -> Proxy {
        Self::start_with(server, true).await
    }

    async fn start_with(server: &str, spare_leases: bool) -> Proxy {
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
                let (mode, stop) = (mode.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut client_read, client_write) = client.into_split();
                    let (server_read, mut server_write) = server.into_split();
                    let mut spared = false;
                    if spare_leases {
                        // The startup message, which names the connection's application.
                        let mut first = vec![0u8; 8192];
                        let n = match client_read.read(&mut first).await {
                            Ok(n) if n > 0 => n,
                            _ => return,
                        };
                        let lease = b"ozbus-book-";
                        spared = first[..n].windows(lease.len()).any(|w| w == lease);
                        if server_write.write_all(&first[..n]).await.is_err() {
                            return;
                        }
                    }
                    let mode = match spared {
                        true => Arc::new(AtomicU8::new(Mode::Pass as u8)),
                        false => mode,
                    };
                    let up = pump(client_read, server_write, mode.clone(), Mode::DropRequests);
                    let down = pump(server_read, client_write, mode, Mode::DropAnswers);
                    let cut = match spared {
                        true => stop,
                        false => cut,
                    };
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
