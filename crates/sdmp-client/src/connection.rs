//! The raw layer: one connection, over TCP or TLS, that speaks SDMP frames in either wire form.
//!
//! Owns: opening a connection (TCP with TCP_NODELAY, then the TLS handshake when asked, all
//! within one bounded time), the codec of its wire form, writing frames through the codec or
//! bytes exactly as given, reading frames, the split into independent read and write halves,
//! and the abrupt close (RST).
//!
//! Never: looks inside a frame, adds a token, retries, or spawns a task: everything happens
//! while the caller awaits. Meaning is the business of the layers above
//! ([`Session`](crate::Session), [`Subscription`](crate::Subscription)).

use std::io;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use sdmp::{Frame, SdmpCodec, WireForm, WriteMessage};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::Error;
use crate::frames::MAX_FRAME;
use crate::stream::{ReadHalf, Stream, WriteHalf};
use crate::tls::Tls;

/// How long opening a connection may take by default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The read half of a connection: a stream of [`Frame`]s (tokio-util's `FramedRead`).
pub type FrameReader = FramedRead<ReadHalf, SdmpCodec>;
/// The write half of a connection: a sink of frames (tokio-util's `FramedWrite`); `feed` many,
/// then `flush` once, to send them in one write.
pub type FrameWriter = FramedWrite<WriteHalf, SdmpCodec>;

/// How to open a connection.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Give up on an address that has not accepted the connection (and finished the TLS
    /// handshake) within this.
    pub connect_timeout: Duration,
    /// Largest frame accepted from the server, in characters; a longer one is read as
    /// [`Frame::Oversize`] and the connection goes on.
    pub max_frame: usize,
    /// Speak TLS, verifying the server's certificate as this says; `None`: plain TCP.
    pub tls: Option<Tls>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: CONNECT_TIMEOUT,
            max_frame: MAX_FRAME,
            tls: None,
        }
    }
}

/// One SDMP connection, kept as two halves so that reading never waits for writing (a client
/// that stops reading while it writes a lot can deadlock against a server that stops reading
/// while its replies are not read).
#[derive(Debug)]
pub struct Connection {
    reader: FrameReader,
    writer: FrameWriter,
    peer: String,
    tls: bool,
}

impl Connection {
    /// Connects to `addr` (`host:port`) speaking `form`, with the default [`ConnectOptions`]
    /// (plain TCP).
    pub async fn connect(addr: &str, form: WireForm) -> Result<Connection, Error> {
        Self::connect_with(addr, form, &ConnectOptions::default()).await
    }

    /// Connects to `addr` speaking `form`; over TLS when `options.tls` says so, verifying the
    /// server's certificate for the host part of `addr` (or the name the [`Tls`] gives).
    pub async fn connect_with(
        addr: &str,
        form: WireForm,
        options: &ConnectOptions,
    ) -> Result<Connection, Error> {
        // Checked before connecting: a name that cannot be verified is the caller's to fix.
        let tls = match &options.tls {
            Some(tls) => Some((tls.connector(), tls.server_name_for(addr)?)),
            None => None,
        };
        let open = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| Error::Connect {
                    addr: addr.to_owned(),
                    source,
                })?;
            // Replies and events are small frames someone is waiting for; callers that send a
            // lot batch their own writes (feed, then flush), so Nagle's algorithm would only
            // add delay.
            stream.set_nodelay(true).map_err(|source| Error::Connect {
                addr: addr.to_owned(),
                source,
            })?;
            let Some((connector, name)) = tls else {
                return Ok(Stream::from(stream));
            };
            let stream =
                connector
                    .connect(name, stream)
                    .await
                    .map_err(|source| Error::Handshake {
                        addr: addr.to_owned(),
                        source,
                    })?;
            Ok::<_, Error>(Stream::from(stream))
        };
        let stream = tokio::time::timeout(options.connect_timeout, open)
            .await
            .map_err(|_| Error::ConnectTimeout {
                addr: addr.to_owned(),
                after: options.connect_timeout,
            })??;
        Ok(Self::from_stream(stream, addr, form, options.max_frame))
    }

    /// A connection over a stream opened elsewhere: TCP, or TLS over TCP from either side
    /// (also a server's accepted stream, which is how this crate's tests play the server).
    /// `peer` names it in messages.
    pub fn from_stream(
        stream: impl Into<Stream>,
        peer: &str,
        form: WireForm,
        max_frame: usize,
    ) -> Connection {
        let stream = stream.into();
        let tls = stream.is_tls();
        let codec = || SdmpCodec::new(form).with_max_frame(max_frame);
        let (read, write) = stream.split();
        Connection {
            reader: FramedRead::new(read, codec()),
            writer: FramedWrite::new(write, codec()),
            peer: peer.to_owned(),
            tls,
        }
    }

    /// The address this connection was opened to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The wire form spoken.
    pub fn form(&self) -> WireForm {
        self.reader.decoder().form()
    }

    /// True when the connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Writes one message (in its 8-bit form, without terminator: the codec adds the
    /// terminator and, on UTF-16, transcodes) and flushes.
    pub async fn send<T: WriteMessage + ?Sized>(&mut self, frame: &T) -> io::Result<()> {
        self.writer.send(frame).await
    }

    /// Queues one message; it goes out with the next [`flush`](Self::flush), or earlier when
    /// the buffer fills.
    pub async fn feed<T: WriteMessage + ?Sized>(&mut self, frame: &T) -> io::Result<()> {
        self.writer.feed(frame).await
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        SinkExt::<&[u8]>::flush(&mut self.writer).await
    }

    /// Writes `bytes` exactly as given: no terminator added, no transcoding (after whatever was
    /// queued; over TLS, encrypted as any other write). For testing a server with what a codec
    /// would never produce.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.flush().await?;
        let half = self.writer.get_mut();
        half.write_all(bytes).await?;
        half.flush().await
    }

    /// The next frame; `None` once the server closed the connection. Cancel-safe: it may lose
    /// nothing when used in `select!`. On a plain connection to a server that speaks TLS, the
    /// first read fails with an error that says so.
    pub async fn next_frame(&mut self) -> Option<io::Result<Frame>> {
        self.reader.next().await
    }

    /// The two halves, to read and write from different tasks.
    pub fn split(self) -> (FrameReader, FrameWriter) {
        (self.reader, self.writer)
    }

    /// Closes the connection abruptly: the server sees a reset (RST), not an orderly end, and
    /// whatever was not yet sent is discarded (over TLS too: no close_notify is sent).
    pub fn reset(self) {
        let Some(stream) = self.reader.into_inner().reunite(self.writer.into_inner()) else {
            // The halves come from one stream by construction; dropping them closes it anyway.
            return;
        };
        // Best effort: without SO_LINGER 0 the drop below is an orderly close, still a close.
        let _ = stream.tcp().set_zero_linger();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestServer;
    use bytes::Bytes;

    #[tokio::test]
    async fn frames_go_both_ways_in_both_wire_forms() {
        for form in [WireForm::Bits8, WireForm::Utf16Le] {
            // The server echoes every frame, then closes after `bye`.
            let server = TestServer::start(form, |mut conn| async move {
                while let Some(Ok(Frame::Message(frame))) = conn.next_frame().await {
                    if &frame[..] == b"bye" {
                        return;
                    }
                    conn.send(&frame).await.expect("echo");
                }
            })
            .await;
            let mut conn = Connection::connect(&server.addr, form)
                .await
                .expect("connect");
            assert_eq!(conn.form(), form);
            conn.feed("VS\\VI0").await.unwrap();
            conn.feed(&b"MV\\TKcaf\xc3\xa9"[..]).await.unwrap();
            conn.flush().await.unwrap();
            for want in [&b"VS\\VI0"[..], "MV\\TKcafé".as_bytes()] {
                let got = conn.next_frame().await.expect("a frame").expect("read");
                assert_eq!(got, Frame::Message(Bytes::copy_from_slice(want)));
            }
            conn.send("bye").await.unwrap();
            assert!(conn.next_frame().await.is_none(), "closed by the server");
        }
    }

    #[tokio::test]
    async fn raw_bytes_go_out_untouched() {
        let server = TestServer::start(WireForm::Bits8, |mut conn| async move {
            while let Some(Ok(Frame::Message(frame))) = conn.next_frame().await {
                // Send back what arrived, as text, so the test sees how it was cut.
                let shown = format!("got {}", String::from_utf8_lossy(&frame));
                conn.send(shown.as_str()).await.expect("answer");
            }
        })
        .await;
        let mut conn = Connection::connect(&server.addr, WireForm::Bits8)
            .await
            .unwrap();
        conn.feed("A").await.unwrap();
        // Queued A goes first; the raw bytes carry two frames, one ended by CR LF.
        conn.send_raw(b"B\r\nC\0").await.unwrap();
        for want in ["got A", "got B", "got C"] {
            let got = conn.next_frame().await.unwrap().unwrap();
            assert_eq!(got, Frame::Message(Bytes::from(want)));
        }
    }

    #[tokio::test]
    async fn an_unreachable_address_is_named_in_the_error() {
        let addr = crate::testing::closed_port().await;
        let error = Connection::connect(&addr, WireForm::Bits8)
            .await
            .expect_err("nobody listens");
        assert!(matches!(error, Error::Connect { .. }), "{error:?}");
        assert_eq!(error.to_string(), format!("connecting to {addr}"));
        assert!(error.is_connection_failure());
    }

    #[tokio::test]
    async fn a_reset_reaches_the_server_as_a_reset() {
        let (server, seen) = TestServer::watching_the_end(None).await;
        let mut conn = Connection::connect(&server.addr, WireForm::Bits8)
            .await
            .unwrap();
        assert!(matches!(conn.next_frame().await, Some(Ok(_))), "the DA");
        conn.send("VS").await.unwrap();
        conn.reset();
        assert_eq!(
            seen.await.expect("the server saw the end"),
            Some(io::ErrorKind::ConnectionReset)
        );
    }
}
