//! A tiny SDMP server for this crate's own tests: each accepted connection is handed, as a
//! [`Connection`], to a function the test writes, which plays the server's part.
//!
//! Owns: a listener on a free loopback port, an address where nobody listens, and the few
//! frames and subscriptions the tests share.
//!
//! Never: knows anything of SDMP beyond the codec; each test says what its server answers.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sdmp::WireForm;
use tokio::net::TcpListener;

use crate::connection::Connection;
use crate::frames::MAX_FRAME;
use crate::subscription::Subscribe;

/// A server that runs `handler` for every accepted connection, until dropped.
pub struct TestServer {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start<F, Fut>(form: WireForm, handler: F) -> TestServer
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address").to_string();
        let task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let conn = Connection::from_stream(stream, &peer.to_string(), form, MAX_FRAME);
                tokio::spawn(handler(conn));
            }
        });
        TestServer { addr, task }
    }
}

impl TestServer {
    /// A server whose `n`-th connection (from 0) runs `script(n, log, conn)`, with a log the
    /// script writes and the test reads.
    pub async fn scripted<F, Fut>(form: WireForm, script: F) -> (TestServer, Log)
    where
        F: Fn(usize, Log, Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let log = Log::default();
        let seen = log.clone();
        let count = AtomicUsize::new(0);
        let server = TestServer::start(form, move |conn| {
            script(count.fetch_add(1, Ordering::SeqCst), seen.clone(), conn)
        })
        .await;
        (server, log)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address where nobody listens (a port that was free a moment ago).
pub async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local address").to_string()
}

/// The next frame a test server reads, as text; `None` once the client is gone.
pub async fn read_text(conn: &mut Connection) -> Option<String> {
    match conn.next_frame().await? {
        Ok(frame) => Some(crate::frames::frame_text(&frame).into_owned()),
        Err(_) => None,
    }
}

/// Writes each frame (text) and flushes once.
pub async fn write_all(conn: &mut Connection, frames: &[&str]) {
    for frame in frames {
        conn.feed(*frame).await.expect("feed");
    }
    conn.flush().await.expect("flush");
}

/// Frames received by a test server, shared with the test.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, frame: &str) {
        self.0.lock().unwrap().push(frame.to_owned());
    }

    pub fn frames(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// The subscription most tests use: TX `t`, failure outcomes, PS `p`, sequenced.
pub fn subscribe() -> Subscribe {
    Subscribe {
        failure: true,
        persist: Some("p".into()),
        sequenced: true,
        ..Subscribe::new("t")
    }
}

/// An OZ of transaction `tx` with sequence number `xs`.
pub fn oz(tx: &str, xs: u64) -> String {
    format!("OZ\\TX{tx}\\CNc\\SIs{xs}\\RE2\\XS{xs}\\XT2026-11-25T17:27:57.123Z\\DT")
}
