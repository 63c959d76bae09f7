//! The stall timeout of HTTP connections: a connection whose peer takes nothing of what ozbus
//! writes for `[server] stall_timeout` is closed, as an SDMP connection is.
//!
//! Owns one wrapper around a connection's transport (plain or TLS): while a write cannot make
//! progress it runs a timer, and once the timer runs out the write fails, so hyper drops the
//! connection and with it the response (an event stream, a WebSocket, a large download) and
//! everything that response held. Never: limits a connection that is merely slow (any progress
//! restarts the timer), or one that is idle (no write is waiting).

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A transport whose writes fail once they have made no progress for `timeout`.
pub struct StallGuard<S> {
    inner: S,
    timeout: Duration,
    /// Running while a write (or flush) waits; reset by any progress.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> StallGuard<S> {
    pub fn new(inner: S, timeout: Duration) -> StallGuard<S> {
        StallGuard {
            inner,
            timeout,
            timer: None,
        }
    }

    /// After a write returned `Pending`: starts the timer if it is not running, and fails once
    /// it has run out.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!("ozbus_limit_hits_total", "limit" => "stall_timeout")
                    .increment(1);
                tracing::warn!(?timeout, "closing an HTTP connection that stopped reading");
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer took nothing for the stall timeout",
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        poll: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => match self.waiting(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                self.timer = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(poll, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(poll, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progress(poll, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_the_peer_never_takes_fails_after_the_timeout_a_slow_one_does_not() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut guarded = StallGuard::new(ours, Duration::from_millis(500));
        // Slow: 1 KiB read every 200 ms keeps the writer going.
        let writer = tokio::spawn(async move {
            for _ in 0..8 {
                guarded.write_all(&[0u8; 1024]).await?;
            }
            // Nobody reads any more: this one fails after 500 ms.
            guarded.write_all(&[0u8; 4096]).await?;
            Ok::<_, io::Error>(())
        });
        let mut buf = [0u8; 1024];
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            theirs.read_exact(&mut buf).await.unwrap();
        }
        let started = std::time::Instant::now();
        let error = writer.await.unwrap().unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
