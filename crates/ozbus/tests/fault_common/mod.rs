//! Helpers for the fault tests: a connection that reports failures instead of panicking (the
//! server goes away under it on purpose), a tiny seeded RNG, frame parsing, and control of server
//! processes with time limits (so a hung server can never hang the test).
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use sdmp::framing::Frame;
use sdmp::{SdmpCodec, WireForm};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// An SDMP connection on the 8-bit listener; frames are written and read as text. Every
/// operation returns an error instead of panicking, and every write has a time limit.
pub struct Conn {
    framed: Framed<TcpStream, SdmpCodec>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, within: Duration) -> io::Result<Conn> {
        let stream = tokio::time::timeout(within, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out("connect"))??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            framed: Framed::new(stream, SdmpCodec::new(WireForm::Bits8)),
        })
    }

    /// Writes one frame and flushes.
    pub async fn send(&mut self, frame: &str, within: Duration) -> io::Result<()> {
        tokio::time::timeout(within, self.framed.send(frame.as_bytes()))
            .await
            .map_err(|_| timed_out("send"))?
    }

    /// Queues one frame (written by a later `flush`, or earlier when the buffer fills).
    pub async fn feed(&mut self, frame: &str, within: Duration) -> io::Result<()> {
        tokio::time::timeout(within, self.framed.feed(frame.as_bytes()))
            .await
            .map_err(|_| timed_out("feed"))?
    }

    pub async fn flush(&mut self, within: Duration) -> io::Result<()> {
        tokio::time::timeout(within, SinkExt::<&[u8]>::flush(&mut self.framed))
            .await
            .map_err(|_| timed_out("flush"))?
    }

    /// The next frame as text; `None` once the server closed the connection. Cancel-safe (may be
    /// used in `select!`); it has no time limit of its own.
    pub async fn next_frame(&mut self) -> Option<io::Result<String>> {
        match self.framed.next().await? {
            Ok(Frame::Message(bytes)) => Some(Ok(String::from_utf8_lossy(&bytes).into_owned())),
            Ok(other) => Some(Ok(format!("<not a message: {other:?}>"))),
            Err(error) => Some(Err(error)),
        }
    }

    /// Drops the connection abruptly: SO_LINGER 0, so the server sees a RST, not a FIN, and
    /// whatever was still unsent is discarded.
    #[allow(deprecated)] // SO_LINGER 0 does not block on drop; that is the very point here.
    pub fn reset(self) {
        let _ = self.framed.get_ref().set_linger(Some(Duration::ZERO));
        drop(self);
    }
}

/// xorshift64: a tiny deterministic RNG, so a run's chaos schedule follows from its seed.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        // splitmix64 of the seed: no zero state, and close seeds give unrelated sequences.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(if z == 0 { 1 } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-enough in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A duration between `lo_ms` and `hi_ms` milliseconds.
    pub fn millis_between(&mut self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_millis(lo_ms + self.below(hi_ms - lo_ms + 1))
    }
}

/// Exponential back-off for reconnecting while the server is down.
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(20);
    const MOST: Duration = Duration::from_millis(500);

    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps; false when `stop` fired instead.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MOST);
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(pause) => true,
        }
    }
}

/// The code and the parameters (code, value) of a frame, in order. Not for ER, whose FM may
/// itself contain backslashes (see `parse_er`).
pub fn split(frame: &str) -> (&str, Vec<(&str, &str)>) {
    let mut parts = frame.split('\\');
    let code = parts.next().unwrap_or("");
    let params = parts
        .map(|p| {
            if p.len() >= 2 && p.is_char_boundary(2) {
                (&p[..2], &p[2..])
            } else {
                (p, "")
            }
        })
        .collect();
    (code, params)
}

/// The value of the first parameter `code` (from `split`).
pub fn param<'a>(params: &[(&'a str, &'a str)], code: &str) -> Option<&'a str> {
    params.iter().find(|(c, _)| *c == code).map(|(_, v)| *v)
}

/// An ER frame: its EC and its FM (without the quotes).
pub fn parse_er(frame: &str) -> Option<(u32, &str)> {
    let rest = frame.strip_prefix("ER\\EC")?;
    let ec = rest[..rest.find('\\')?].parse().ok()?;
    let fm = &frame[frame.find("\\FM\"")? + 4..];
    Some((ec, fm.strip_suffix('"').unwrap_or(fm)))
}

/// The value of parameter `code` in a raw message text (first `\<code>`; the value runs to the
/// next backslash or quote).
pub fn raw_param<'a>(text: &'a str, code: &str) -> Option<&'a str> {
    let pattern = format!("\\{code}");
    let start = text.find(&pattern)? + pattern.len();
    let rest = &text[start..];
    let end = rest.find(['\\', '"']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Runs a blocking call (starting, killing, stopping a server process) on its own thread, with a
/// time limit. A panic in it becomes an error. On time-out the thread is left behind: the caller
/// unblocks it (for server processes: `kill_servers_of`).
pub async fn blocking<T: Send + 'static>(
    within: Duration,
    what: &str,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call));
        let _ = done.send(outcome);
    });
    match tokio::time::timeout(within, result).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(panic))) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(format!("{what}: {message}"))
        }
        Ok(Err(_)) => Err(format!("{what}: the thread vanished")),
        Err(_) => Err(format!("{what}: no result within {within:?}")),
    }
}

/// Last resort: SIGKILLs every process whose command line holds `--data-dir <data_dir>` (the
/// servers this test started: the temporary directory is unique). Returns how many.
pub fn kill_servers_of(data_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let wanted = data_dir.as_os_str().as_bytes();
    let mut killed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let serves_it = args
            .windows(2)
            .any(|w| w[0] == b"--data-dir" && w[1] == wanted);
        if serves_it && Command::new("kill").args(["-KILL", pid]).status().is_ok() {
            killed += 1;
        }
    }
    killed
}
