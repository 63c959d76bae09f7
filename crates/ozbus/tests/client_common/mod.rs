//! Helpers shared by the client tool tests: a fake SDMP server that answers canned frames, and
//! a time limit for every test.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use sdmp::{Frame, SdmpCodec, WireForm};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// Every test's network work must end within this.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Runs `test` and fails the test if it takes longer than [`LIMIT`].
pub async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("the test did not finish in time")
}

/// What the fake server does with one received frame: the frames to send back, and whether to
/// close the connection afterwards.
pub struct Reply {
    pub frames: Vec<Vec<u8>>,
    pub close: bool,
}

impl Reply {
    pub fn none() -> Reply {
        Reply {
            frames: Vec::new(),
            close: false,
        }
    }

    pub fn with(frames: &[&[u8]]) -> Reply {
        Reply {
            frames: frames.iter().map(|f| f.to_vec()).collect(),
            close: false,
        }
    }

    pub fn then_close(mut self) -> Reply {
        self.close = true;
        self
    }
}

/// A fake server on 127.0.0.1:0 speaking `form`; it answers each received frame with what
/// `script` says and records every frame it received (as UTF-8 text on UTF-16).
pub struct FakeServer {
    pub addr: String,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start<F>(form: WireForm, script: F) -> FakeServer
    where
        F: Fn(&[u8]) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let log = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let script = script.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut conn = Framed::new(stream, SdmpCodec::new(form));
                    while let Some(Ok(frame)) = conn.next().await {
                        let Frame::Message(bytes) = frame else {
                            continue;
                        };
                        log.lock().push(bytes.to_vec());
                        let reply = script(&bytes);
                        for out in &reply.frames {
                            if conn.send(&out[..]).await.is_err() {
                                return;
                            }
                        }
                        if reply.close {
                            return;
                        }
                    }
                });
            }
        });
        FakeServer {
            addr,
            received,
            task,
        }
    }

    /// Every frame received so far, in order, as text.
    pub fn received(&self) -> Vec<String> {
        self.received
            .lock()
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    /// Waits (bounded) until at least `n` frames were received.
    pub async fn wait_for(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            if self.received.lock().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.received()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address where nobody listens (a port that was free a moment ago).
pub fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// The value of parameter `code` in `frame`, if present.
pub fn param<'a>(frame: &'a [u8], code: &str) -> Option<&'a [u8]> {
    let view = sdmp::MessageView::parse(frame).ok()?;
    view.first(sdmp::Code::parse(code.as_bytes())?)
}

/// Standard output as a test sees it.
pub fn text(out: &[u8]) -> String {
    String::from_utf8(out.to_vec()).expect("the tools print UTF-8")
}
