//! The bytes under a connection: plain TCP, or TLS over TCP, and its two halves.
//!
//! Owns: [`Stream`] (either kind, so every layer above works on both without being generic),
//! the split into a [`ReadHalf`] and a [`WriteHalf`] and their reunion, and one check on a
//! plain connection: a peer whose first bytes are a TLS record speaks TLS, and reading fails
//! with a message that says so instead of handing TLS bytes to the codec as frames.
//!
//! Never: waits in one half for the other. A plain stream splits into tokio's owned halves,
//! which share nothing; a TLS stream has one session state for both directions, so its halves
//! share it under tokio's split, whose lock is held only for the duration of one poll (never
//! while a read or a write is pending), so a reader waiting for the server never blocks a
//! writer, nor the other way round.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// TLS record types a TLS peer may send first: an alert (a TLS server refusing what it read)
/// or a handshake message. SDMP text never starts with either byte.
const TLS_ALERT: u8 = 0x15;
const TLS_HANDSHAKE: u8 = 0x16;
/// The major version byte that follows the record type in every TLS record (SSL 3 to TLS 1.3).
const TLS_MAJOR: u8 = 0x03;

/// The transport of one connection.
pub enum Stream {
    Tcp(TcpStream),
    /// Boxed: a TLS session is a few kilobytes, a TCP stream a few words.
    Tls(Box<TlsStream<TcpStream>>),
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Tcp(stream) => f.debug_tuple("Tcp").field(stream).finish(),
            Stream::Tls(stream) => f.debug_tuple("Tls").field(stream.get_ref().0).finish(),
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(stream: TcpStream) -> Stream {
        Stream::Tcp(stream)
    }
}

impl From<TlsStream<TcpStream>> for Stream {
    fn from(stream: TlsStream<TcpStream>) -> Stream {
        Stream::Tls(Box::new(stream))
    }
}

impl From<tokio_rustls::client::TlsStream<TcpStream>> for Stream {
    fn from(stream: tokio_rustls::client::TlsStream<TcpStream>) -> Stream {
        TlsStream::Client(stream).into()
    }
}

impl From<tokio_rustls::server::TlsStream<TcpStream>> for Stream {
    fn from(stream: tokio_rustls::server::TlsStream<TcpStream>) -> Stream {
        TlsStream::Server(stream).into()
    }
}

impl Stream {
    /// The TCP stream underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(stream) => stream,
            Stream::Tls(stream) => stream.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The two halves, to read and write from different tasks.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Tcp(stream) => {
                let (read, write) = stream.into_split();
                (
                    ReadHalf(Read::Tcp {
                        half: read,
                        first_checked: false,
                    }),
                    WriteHalf(Write::Tcp(write)),
                )
            }
            Stream::Tls(stream) => {
                let (read, write) = tokio::io::split(stream);
                (ReadHalf(Read::Tls(read)), WriteHalf(Write::Tls(write)))
            }
        }
    }
}

/// The reading half of a [`Stream`].
#[derive(Debug)]
pub struct ReadHalf(Read);

#[derive(Debug)]
enum Read {
    Tcp {
        half: OwnedReadHalf,
        /// The first bytes were looked at (see [`tls_record`]).
        first_checked: bool,
    },
    Tls(tokio::io::ReadHalf<Box<TlsStream<TcpStream>>>),
}

/// The writing half of a [`Stream`].
#[derive(Debug)]
pub struct WriteHalf(Write);

#[derive(Debug)]
enum Write {
    Tcp(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Box<TlsStream<TcpStream>>>),
}

impl ReadHalf {
    /// The stream again, from the two halves it was split into; `None` if they come from
    /// different streams.
    pub fn reunite(self, write: WriteHalf) -> Option<Stream> {
        match (self.0, write.0) {
            (Read::Tcp { half, .. }, Write::Tcp(write)) => {
                half.reunite(write).ok().map(Stream::Tcp)
            }
            (Read::Tls(read), Write::Tls(write)) if read.is_pair_of(&write) => {
                Some(Stream::Tls(read.unsplit(write)))
            }
            _ => None,
        }
    }
}

/// The error a plain connection's first read gives when the peer speaks TLS.
#[derive(Debug)]
struct TlsOnPlain;

impl fmt::Display for TlsOnPlain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the other end speaks TLS (its first bytes are a TLS record): connect with TLS")
    }
}

impl std::error::Error for TlsOnPlain {}

/// True for the error a plain connection gives when the other end speaks TLS.
pub(crate) fn is_tls_on_plain(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<TlsOnPlain>())
}

/// True when `first` (the first bytes a peer sent) starts a TLS record.
fn tls_record(first: &[u8]) -> bool {
    match first {
        [kind, rest @ ..] if *kind == TLS_ALERT || *kind == TLS_HANDSHAKE => {
            rest.first().is_none_or(|&major| major == TLS_MAJOR)
        }
        _ => false,
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Read::Tcp {
                half,
                first_checked,
            } => {
                let before = buf.filled().len();
                ready!(Pin::new(half).poll_read(cx, buf))?;
                let fresh = &buf.filled()[before..];
                if !*first_checked && !fresh.is_empty() {
                    *first_checked = true;
                    if tls_record(fresh) {
                        buf.set_filled(before);
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            TlsOnPlain,
                        )));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Read::Tls(half) => Pin::new(half).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Write::Tcp(half) => Pin::new(half).poll_write(cx, buf),
            Write::Tls(half) => Pin::new(half).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Write::Tcp(half) => Pin::new(half).poll_write_vectored(cx, bufs),
            Write::Tls(half) => Pin::new(half).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.0 {
            Write::Tcp(half) => half.is_write_vectored(),
            Write::Tls(half) => half.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Write::Tcp(half) => Pin::new(half).poll_flush(cx),
            Write::Tls(half) => Pin::new(half).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Write::Tcp(half) => Pin::new(half).poll_shutdown(cx),
            Write::Tls(half) => Pin::new(half).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tls_records_are_taken_for_tls() {
        // An alert (decode error), as a TLS server sends for what it cannot read.
        assert!(tls_record(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32]));
        assert!(tls_record(&[0x16, 0x03, 0x01]));
        // Only the first byte arrived so far: the record type alone decides.
        assert!(tls_record(&[0x16]));
        for sdmp in [&b"DA\0"[..], b"E\0R\0", b"\0", b"\r\n", &[0x16, b'A']] {
            assert!(!tls_record(sdmp), "{sdmp:?}");
        }
    }
}
