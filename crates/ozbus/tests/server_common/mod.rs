//! Helpers for the server tests: a server started by the test (in this process, or as a real
//! `ozbus serve` process that a test can kill), an SDMP client that speaks frames as text, on
//! the raw layer of the `sdmp-client` crate (frames exactly as sent and received), and one that
//! is handed to the server in memory (`RunningServer::serve_stream`), as the fuzzer does.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use ozbus::config::Config;
use ozbus::server::RunningServer;
use sdmp::framing::Frame;
use sdmp::{SdmpCodec, WireForm};
use sdmp_client::{ConnectOptions, Connection};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;

/// How long a test waits for a frame it expects.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_test(dir.path());
        adjust(&mut config);
        let server = RunningServer::start(config).await.expect("server starts");
        TestServer { server, dir }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.server.addr_8bit(), WireForm::Bits8).await
    }

    pub async fn client_utf16(&self) -> Client {
        Client::connect(self.server.addr_utf16(), WireForm::Utf16Le).await
    }

    /// A connection over an in-memory pipe instead of TCP, from `127.0.0.1:40000`.
    pub fn client_in_memory(&self, form: WireForm) -> MemoryClient {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let peer = SocketAddr::from(([127, 0, 0, 1], 40_000));
        let served = tokio::spawn(self.server.serve_stream(theirs, form, peer));
        let (read, write) = tokio::io::split(ours);
        MemoryClient {
            form,
            frames: FramedRead::new(read, SdmpCodec::new(form)),
            write,
            served,
        }
    }
}

/// The peer's side of a connection served in memory; bytes go out as given, frames come back
/// as text (UTF-16 already transcoded by the codec).
pub struct MemoryClient {
    form: WireForm,
    frames: FramedRead<ReadHalf<DuplexStream>, SdmpCodec>,
    write: WriteHalf<DuplexStream>,
    /// The server's side of the connection; ends once the connection is closed.
    pub served: JoinHandle<()>,
}

impl MemoryClient {
    /// Raw bytes, exactly as given (no terminator added, no transcoding).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.expect("write");
    }

    /// One frame of text, in the connection's wire form, with its terminator.
    pub async fn send(&mut self, frame: &str) {
        let bytes: Vec<u8> = match self.form {
            WireForm::Bits8 => frame.bytes().chain([0]).collect(),
            WireForm::Utf16Le => frame
                .encode_utf16()
                .chain([0])
                .flat_map(u16::to_le_bytes)
                .collect(),
        };
        self.send_raw(&bytes).await;
    }

    /// The next frame, as text.
    pub async fn recv(&mut self) -> String {
        match tokio::time::timeout(PATIENCE, self.frames.next()).await {
            Ok(Some(Ok(Frame::Message(frame)))) => String::from_utf8_lossy(&frame).into_owned(),
            Ok(other) => panic!("expected a frame, got {other:?}"),
            Err(_) => panic!("no frame within {PATIENCE:?}"),
        }
    }

    /// Asserts the next frames are exactly these, in this order.
    pub async fn expect(&mut self, frames: &[&str]) {
        for &want in frames {
            assert_eq!(self.recv().await, want);
        }
    }

    /// Closes the peer's side; asserts the server sends nothing more, closes its own side and
    /// ends the connection.
    pub async fn close(mut self) {
        self.write.shutdown().await.expect("shutdown");
        match tokio::time::timeout(PATIENCE, self.frames.next()).await {
            Ok(None) => {}
            Ok(Some(frame)) => panic!("expected the end of the connection, got {frame:?}"),
            Err(_) => panic!("the server did not close the connection within {PATIENCE:?}"),
        }
        tokio::time::timeout(PATIENCE, self.served)
            .await
            .expect("the connection ends")
            .expect("the connection's task does not panic");
    }
}

/// An SDMP connection; frames are written and read as text (8-bit bytes shown as Latin-1 never
/// occur in these tests unless a test says so).
pub struct Client {
    conn: Connection,
}

impl Client {
    pub async fn connect(addr: SocketAddr, form: WireForm) -> Client {
        let options = ConnectOptions {
            connect_timeout: PATIENCE,
            ..ConnectOptions::default()
        };
        let conn = Connection::connect_with(&addr.to_string(), form, &options)
            .await
            .expect("connect");
        Client { conn }
    }

    pub async fn send(&mut self, frame: &str) {
        self.send_bytes(frame.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, frame: &[u8]) {
        self.conn.send(frame).await.expect("send");
    }

    /// Raw bytes, exactly as given (no terminator added).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.conn.send_raw(bytes).await.expect("send raw");
    }

    /// The next frame, as bytes.
    pub async fn recv_bytes(&mut self) -> Vec<u8> {
        match tokio::time::timeout(PATIENCE, self.conn.next_frame()).await {
            Ok(Some(Ok(Frame::Message(frame)))) => frame.to_vec(),
            Ok(other) => panic!("expected a frame, got {other:?}"),
            Err(_) => panic!("no frame within {PATIENCE:?}"),
        }
    }

    /// The next frame, as text.
    pub async fn recv(&mut self) -> String {
        String::from_utf8_lossy(&self.recv_bytes().await).into_owned()
    }

    /// Asserts the next frames are exactly these, in this order.
    pub async fn expect(&mut self, frames: &[&str]) {
        for &want in frames {
            assert_eq!(self.recv().await, want);
        }
    }

    /// The next frame as text, or `None` when none came within `wait` (or the connection
    /// ended).
    pub async fn recv_within(&mut self, wait: Duration) -> Option<String> {
        match tokio::time::timeout(wait, self.conn.next_frame()).await {
            Ok(Some(Ok(Frame::Message(frame)))) => {
                Some(String::from_utf8_lossy(&frame).into_owned())
            }
            _ => None,
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(frame) = tokio::time::timeout(wait, self.conn.next_frame()).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    /// True once the server closed the connection (reads until end of stream).
    pub async fn closed_by_server(&mut self) -> bool {
        matches!(
            tokio::time::timeout(PATIENCE, self.conn.next_frame()).await,
            Ok(None) | Ok(Some(Err(_)))
        )
    }
}

/// A real `ozbus serve` process, for tests that kill it.
pub struct ServerProcess {
    child: Child,
    pub addr_8bit: SocketAddr,
    pub addr_utf16: SocketAddr,
    /// The HTTP listener (`http=` or `https=` of the ready line), unless turned off.
    pub http: Option<SocketAddr>,
}

impl ServerProcess {
    /// Starts `ozbus serve` on free ports with its data in `data_dir` (SQLite, or the test
    /// database of `data_dir` when the suite runs against PostgreSQL); extra flags as given.
    pub fn start(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        Self::start_with_store(data_dir, ozbus::config::test_store_url(data_dir), extra)
    }

    /// [`ServerProcess::start`] on SQLite, whatever the suite runs against: for tests of
    /// SQLite's own behaviour (its data directory's lock, a full file system).
    pub fn start_on_sqlite(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        Self::start_with_store(data_dir, None, extra)
    }

    /// [`ServerProcess::start`] on the store at `url` (`--store-url`; `None`: SQLite), whatever
    /// the suite runs against: for nodes that share a database of the test's own.
    pub fn start_with_store(data_dir: &Path, url: Option<String>, extra: &[&str]) -> ServerProcess {
        Self::try_start_with_store(data_dir, url, extra, None)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// [`ServerProcess::start_with_store`], saying why when the server does not start (it
    /// exited before its ready line: its store could not be opened, say) instead of panicking;
    /// its standard error goes to `log` when given (else to the test's).
    pub fn try_start_with_store(
        data_dir: &Path,
        url: Option<String>,
        extra: &[&str],
        log: Option<std::fs::File>,
    ) -> Result<ServerProcess, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ozbus"))
            .args([
                "serve",
                "--listen-8bit",
                "127.0.0.1:0",
                "--listen-utf16",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(
                url.map(|url| vec!["--store-url".to_owned(), url])
                    .unwrap_or_default(),
            )
            .args(extra)
            .env("OZBUS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log.map_or_else(Stdio::inherit, Stdio::from))
            .spawn()
            .map_err(|error| format!("spawn ozbus serve: {error}"))?;
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let field = |name: &str| -> Option<SocketAddr> {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name))?
                .parse()
                .ok()
        };
        let (Some(addr_8bit), Some(addr_utf16)) = (field("8bit="), field("utf16=")) else {
            let _ = child.kill();
            let status = child.wait().map(|status| status.to_string());
            return Err(format!(
                "ozbus serve gave no ready line with 8bit= and utf16= (read {read:?}: {line:?}; \
                 exit: {status:?})"
            ));
        };
        let http = line.split_whitespace().find_map(|word| {
            let addr = word.strip_prefix("http=").or(word.strip_prefix("https="))?;
            addr.parse().ok()
        });
        Ok(ServerProcess {
            child,
            addr_8bit,
            addr_utf16,
            http,
        })
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr_8bit, WireForm::Bits8).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory now, in bytes (VmRSS).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS");
        kib * 1024
    }

    /// The process's exit status if it has exited (by itself: nobody stopped it), without
    /// waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL: no shutdown, no flush; only what was committed survives.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
