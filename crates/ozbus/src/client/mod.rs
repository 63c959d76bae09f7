//! Client tools: `ozbus tail`, `ozbus send` and `ozbus bench`, the programs a person or a script
//! uses to talk to an SDMP server (ozbus or anything else speaking the protocol).
//!
//! Owns: the pieces the three tools share: opening a connection in either wire form (with a
//! bounded connect), reading the code of a received frame, and turning a received frame into text
//! a person can read. Each tool is one file: its clap arguments and its `run`.
//!
//! Never: depends on the service's internals (calls, store, subscriptions). The tools speak only
//! SDMP through the `sdmp` codec, so they work against any server; the one exception is `bench`,
//! which starts an in-process server when it is given no address.

use std::borrow::Cow;
use std::time::Duration;

use anyhow::{anyhow, Context};
use sdmp::{Code, Frame, MessageView, SdmpCodec, WireForm};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, FramedRead, FramedWrite};

pub mod bench;
pub mod roll_forward;
pub mod send;
pub mod tail;

/// How long opening a connection may take before the tool gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest frame the tools accept from a server, in characters. Bigger than the server's own
/// input limit on purpose: an OZ carries a DT of up to 128,000 characters plus AS and the rest,
/// and a client should print what the server sends rather than enforce the server's rules.
pub const MAX_FRAME: usize = 1 << 20;

pub(crate) const ER: Code = Code(*b"ER");
pub(crate) const MV: Code = Code(*b"MV");
pub(crate) const OZ: Code = Code(*b"OZ");
pub(crate) const EF: Code = Code(*b"EF");
pub(crate) const XG: Code = Code(*b"XG");

/// The wire form a `--utf16` flag selects.
pub fn wire_form(utf16: bool) -> WireForm {
    if utf16 {
        WireForm::Utf16Le
    } else {
        WireForm::Bits8
    }
}

/// The codec the tools use for a connection in the wire form `--utf16` selects.
pub fn codec(utf16: bool) -> SdmpCodec {
    SdmpCodec::new(wire_form(utf16)).with_max_frame(MAX_FRAME)
}

/// Opens a connection to `addr` (`host:port`) speaking UTF-16LE (`utf16`) or 8-bit SDMP.
pub async fn connect(addr: &str, utf16: bool) -> anyhow::Result<Framed<TcpStream, SdmpCodec>> {
    Ok(Framed::new(connect_stream(addr).await?, codec(utf16)))
}

/// A connection split into its two directions, so that reading replies never waits for writing
/// (a client that stops reading while it writes a lot can deadlock against a server that stops
/// reading while its replies are not read).
pub(crate) async fn connect_split(
    addr: &str,
    utf16: bool,
) -> anyhow::Result<(
    FramedRead<OwnedReadHalf, SdmpCodec>,
    FramedWrite<OwnedWriteHalf, SdmpCodec>,
)> {
    let (read, write) = connect_stream(addr).await?.into_split();
    Ok((
        FramedRead::new(read, codec(utf16)),
        FramedWrite::new(write, codec(utf16)),
    ))
}

async fn connect_stream(addr: &str) -> anyhow::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connecting to {addr}: no answer within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("connecting to {addr}"))?;
    // Replies and outcomes are small frames someone is waiting for; the tools batch their own
    // writes, so Nagle's algorithm would only add delay.
    stream
        .set_nodelay(true)
        .with_context(|| format!("setting TCP_NODELAY on the connection to {addr}"))?;
    Ok(stream)
}

/// The message code of a frame (`OZ` for `OZ\...` and for `CG:MA:OZ\...`), if it has a readable one.
pub(crate) fn frame_code(bytes: &[u8]) -> Option<Code> {
    MessageView::parse(bytes).ok().map(|view| view.code())
}

/// The bytes of a received frame: the text for a whole frame, the kept start of an oversize one.
pub(crate) fn frame_bytes(frame: &Frame) -> &[u8] {
    match frame {
        Frame::Message(bytes) => bytes,
        Frame::Oversize { head, .. } => head,
        Frame::InvalidUtf16 { lossy } => lossy,
    }
}

/// A received frame as one line of text (without newline): the frame as received, with bytes
/// that are not UTF-8 replaced; an oversize frame is shown by its start and a note saying so.
pub fn frame_text(frame: &Frame) -> Cow<'_, str> {
    match frame {
        Frame::Message(bytes) | Frame::InvalidUtf16 { lossy: bytes } => {
            String::from_utf8_lossy(bytes)
        }
        Frame::Oversize { head, .. } => Cow::Owned(format!(
            "{}... [frame cut: longer than {MAX_FRAME} characters]",
            String::from_utf8_lossy(head)
        )),
    }
}

/// An ER frame for a message: `EC 809 (...reason...) for "<frame>"`, or the frame itself when
/// it is not a readable ER.
pub(crate) fn describe_er(bytes: &[u8]) -> String {
    match sdmp::decode(bytes) {
        Ok(sdmp::Envelope {
            message: sdmp::Message::Er(er),
            ..
        }) => format!(
            "EC {}: {} (for \"{}\")",
            er.ec,
            String::from_utf8_lossy(er.ms),
            String::from_utf8_lossy(er.fm)
        ),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}
