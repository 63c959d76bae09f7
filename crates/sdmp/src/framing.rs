//! Framing: SDMP frames on a byte stream, in both wire forms.
//!
//! Owns: cutting a connection's bytes into frames (NUL, LF or CR ends one, empty ones vanish),
//! SDMP's two wire forms in both directions (8-bit relayed as received, UTF-16LE without BOM), and
//! the oversize rule: a frame longer than the maximum is skipped up to its terminator in bounded
//! memory and reported once, with what an ER needs (its first [`FM_LIMIT`] characters and its TK).
//!
//! Never: reads message codes or parameters (the one exception is spotting `\TK` in an oversize
//! frame, because the rest of that frame's text is thrown away before anyone else could look),
//! decides what to answer, does I/O, or returns an `Err` for bad input. A decoder `Err` ends a
//! tokio-util stream, and with it the connection, while the spec keeps the connection up after an
//! oversize or invalid frame; so bad input always becomes a [`Frame`] variant.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Which of SDMP's two wire encodings a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireForm {
    /// 8-bit: bytes relayed as received; frames end with NUL on output.
    Bits8,
    /// UTF-16 little-endian without BOM; frames end with code unit 0x0000 on output.
    Utf16Le,
}

/// How many characters of a rejected frame an ER echoes in FM.
pub const FM_LIMIT: usize = 4000;
/// Default largest frame, in characters (bytes on Bits8, UTF-16 code units on Utf16Le).
pub const DEFAULT_MAX_FRAME: usize = 262_144;

/// Longest TK value reported for an oversize frame, in characters (the spec allows 1..80).
const TK_LIMIT: usize = 80;

/// The encoder's scratch buffer is dropped after a message bigger than this, so one huge reply
/// does not pin that much memory for the rest of the connection's life.
const SCRATCH_KEEP: usize = 4 * DEFAULT_MAX_FRAME;

const BACKSLASH: u16 = 0x5C;
const LETTER_T: u16 = 0x54;
const LETTER_K: u16 = 0x4B;

/// One item read off a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete frame without its terminator. Bits8: the bytes exactly as received.
    /// Utf16Le: the text transcoded to UTF-8.
    Message(Bytes),
    /// A frame longer than the maximum. `head`: its first FM_LIMIT characters (Bits8: bytes;
    /// Utf16Le: code units, transcoded to UTF-8 with U+FFFD for anything invalid, never splitting a
    /// surrogate pair). `tk`: the value of the first `\TK` parameter found anywhere in the whole
    /// frame (the 2 bytes/units `T`,`K` right after a backslash; value runs to the next backslash or
    /// the frame's end, capped at 80 characters), in UTF-8 for Utf16Le.
    Oversize { head: Bytes, tk: Option<Bytes> },
    /// Utf16Le only: a frame that is not valid UTF-16 (a lone surrogate, or an odd trailing byte at
    /// end of stream). `lossy`: the whole frame decoded with U+FFFD replacements, as UTF-8.
    InvalidUtf16 { lossy: Bytes },
}

/// Something that writes one SDMP message in its 8-bit ("kept") form, without terminator.
pub trait WriteMessage {
    fn write_message(&self, out: &mut BytesMut);
}

/// Reserves one byte beyond the message so the 8-bit encoder's terminator never reallocates.
fn write_kept(bytes: &[u8], out: &mut BytesMut) {
    out.reserve(bytes.len().saturating_add(1));
    out.extend_from_slice(bytes);
}

impl WriteMessage for [u8] {
    fn write_message(&self, out: &mut BytesMut) {
        write_kept(self, out);
    }
}

impl WriteMessage for Vec<u8> {
    fn write_message(&self, out: &mut BytesMut) {
        write_kept(self, out);
    }
}

impl WriteMessage for Bytes {
    fn write_message(&self, out: &mut BytesMut) {
        write_kept(self, out);
    }
}

impl WriteMessage for str {
    fn write_message(&self, out: &mut BytesMut) {
        write_kept(self.as_bytes(), out);
    }
}

/// The tokio-util codec for one connection.
#[derive(Debug)]
pub struct SdmpCodec {
    form: WireForm,
    max_frame: usize,
    /// Leading bytes of the read buffer already known to hold no terminator, so a frame that
    /// trickles in is searched once in total rather than from its start on every read.
    scanned: usize,
    /// Set while the rest of an oversize frame is being thrown away.
    oversized: Option<Oversized>,
    /// Kept form of the message being encoded for Utf16Le, reused across messages.
    scratch: BytesMut,
}

impl SdmpCodec {
    /// A codec for `form` with the default maximum frame ([`DEFAULT_MAX_FRAME`]).
    pub fn new(form: WireForm) -> Self {
        SdmpCodec {
            form,
            max_frame: DEFAULT_MAX_FRAME,
            scanned: 0,
            oversized: None,
            scratch: BytesMut::new(),
        }
    }

    /// Sets the largest accepted frame, in characters (bytes on Bits8, code units on Utf16Le).
    #[must_use]
    pub fn with_max_frame(mut self, max_chars: usize) -> Self {
        self.max_frame = max_chars;
        self
    }

    pub fn form(&self) -> WireForm {
        self.form
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Bytes per character on the wire.
    fn unit(&self) -> usize {
        match self.form {
            WireForm::Bits8 => 1,
            WireForm::Utf16Le => 2,
        }
    }

    /// The next item whose terminator is in `src`, consuming it; `None` when more input is needed.
    fn next_frame(&mut self, src: &mut BytesMut) -> Option<Frame> {
        let unit = self.unit();
        loop {
            // A buffer the caller swapped or shrank behind our back must cost a rescan, not a
            // panic; rounding down keeps the Utf16Le search on unit boundaries.
            let from = self.scanned.min(src.len()) / unit * unit;
            let rest = src.get(from..).unwrap_or_default();
            let found = match self.form {
                WireForm::Bits8 => memchr::memchr3(0x00, b'\n', b'\r', rest),
                WireForm::Utf16Le => find_unit_terminator(rest),
            };
            match found {
                Some(at) => {
                    self.scanned = 0;
                    let frame = src.split_to(from + at);
                    src.advance(unit);
                    if let Some(mut over) = self.oversized.take() {
                        over.feed(self.form, &frame);
                        return Some(over.finish(self.form));
                    }
                    if frame.is_empty() {
                        continue;
                    }
                    if frame.len() / unit > self.max_frame {
                        let mut over = Oversized::new();
                        over.feed(self.form, &frame);
                        return Some(over.finish(self.form));
                    }
                    return Some(match self.form {
                        WireForm::Bits8 => Frame::Message(frame.freeze()),
                        WireForm::Utf16Le => utf16_frame(&frame, false),
                    });
                }
                None => {
                    // An odd byte on Utf16Le is half a unit: it stays until its other half comes.
                    let whole = src.len() / unit * unit;
                    if self.oversized.is_some() || whole / unit > self.max_frame {
                        let over = self.oversized.get_or_insert_with(Oversized::new);
                        over.feed(self.form, src.get(..whole).unwrap_or_default());
                        src.advance(whole);
                        self.scanned = 0;
                    } else {
                        self.scanned = whole;
                    }
                    return None;
                }
            }
        }
    }
}

impl Decoder for SdmpCodec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        Ok(self.next_frame(src))
    }

    /// Also emits an unterminated remainder, because people pipe `printf 'EO\TXa\SO' | nc`.
    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Frame>> {
        if let Some(frame) = self.next_frame(src) {
            return Ok(Some(frame));
        }
        // A stream may resume after EOF (tokio-util allows it); start it from a clean state.
        self.scanned = 0;
        if let Some(mut over) = self.oversized.take() {
            // An odd trailing byte adds nothing to an oversize report: it is dropped.
            let whole = src.len() / self.unit() * self.unit();
            over.feed(self.form, src.get(..whole).unwrap_or_default());
            src.clear();
            return Ok(Some(over.finish(self.form)));
        }
        if src.is_empty() {
            return Ok(None);
        }
        // next_frame found no terminator and did not start discarding, so this is within max.
        let rest = src.split();
        Ok(Some(match self.form {
            WireForm::Bits8 => Frame::Message(rest.freeze()),
            WireForm::Utf16Le => utf16_frame(&rest, rest.len() % 2 == 1),
        }))
    }
}

impl<T: WriteMessage + ?Sized> Encoder<&T> for SdmpCodec {
    type Error = io::Error;

    fn encode(&mut self, item: &T, dst: &mut BytesMut) -> io::Result<()> {
        match self.form {
            WireForm::Bits8 => {
                item.write_message(dst);
                dst.put_u8(0x00);
            }
            WireForm::Utf16Le => {
                self.scratch.clear();
                item.write_message(&mut self.scratch);
                // Every kept byte becomes at most one UTF-16 unit (a 4-byte UTF-8 sequence becomes
                // two), so twice the kept length plus the terminator is always enough.
                dst.reserve(self.scratch.len().saturating_mul(2).saturating_add(2));
                transcode_to_utf16le(&self.scratch, dst);
                dst.put_u16_le(0x0000);
                if self.scratch.capacity() > SCRATCH_KEEP {
                    self.scratch = BytesMut::new();
                }
            }
        }
        Ok(())
    }
}

/// Appends one message in kept 8-bit form to `dst` as a Utf16Le frame body (no terminator):
/// the message is split at backslashes; each piece that is valid UTF-8 is transcoded from
/// UTF-8, any other piece is read as Windows-1252; backslashes become the unit 0x005C.
pub fn transcode_to_utf16le(kept: &[u8], dst: &mut BytesMut) {
    dst.reserve(kept.len().saturating_mul(2));
    // Deciding per piece rather than per message lets a UTF-8 value from the UTF-16 listener and
    // a Windows-1252 value from an 8-bit client sit in one message; 0x5C never occurs inside a
    // UTF-8 multi-byte sequence, so splitting first cannot break valid UTF-8.
    for (i, piece) in kept.split(|&b| b == b'\\').enumerate() {
        if i > 0 {
            dst.put_u16_le(BACKSLASH);
        }
        match std::str::from_utf8(piece) {
            Ok(text) => {
                for unit in text.encode_utf16() {
                    dst.put_u16_le(unit);
                }
            }
            Err(_) => push_windows_1252(piece, dst),
        }
    }
}

/// Decodes `piece` as Windows-1252 straight into `dst` through a small stack buffer, so no
/// intermediate string is allocated.
fn push_windows_1252(piece: &[u8], dst: &mut BytesMut) {
    let mut decoder = encoding_rs::WINDOWS_1252.new_decoder_without_bom_handling();
    let mut units = [0u16; 256];
    let mut rest = piece;
    loop {
        let (result, read, written, _) = decoder.decode_to_utf16(rest, &mut units, true);
        for &unit in units.get(..written).unwrap_or_default() {
            dst.put_u16_le(unit);
        }
        rest = rest.get(read..).unwrap_or_default();
        if matches!(result, encoding_rs::CoderResult::InputEmpty) {
            break;
        }
    }
}

/// Byte offset of the first terminator unit (0x0000, 0x000A, 0x000D) in `buf`, whose start must
/// be unit-aligned; a terminator byte in the high half of a unit is just part of a character.
fn find_unit_terminator(buf: &[u8]) -> Option<usize> {
    buf.chunks_exact(2)
        .position(|pair| pair[1] == 0 && matches!(pair[0], 0x00 | 0x0A | 0x0D))
        .map(|i| i * 2)
}

fn units(raw: &[u8]) -> impl Iterator<Item = u16> + '_ {
    raw.chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
}

/// Decodes UTF-16LE (whole units only) to UTF-8, replacing what is invalid; the flag says whether
/// everything was valid.
fn decode_utf16_lossy(raw: &[u8]) -> (String, bool) {
    let mut text = String::with_capacity(raw.len() / 2);
    let mut valid = true;
    for decoded in char::decode_utf16(units(raw)) {
        match decoded {
            Ok(c) => text.push(c),
            Err(_) => {
                valid = false;
                text.push(char::REPLACEMENT_CHARACTER);
            }
        }
    }
    (text, valid)
}

/// A complete (within max) Utf16Le frame; `odd_tail` says its last byte is half a unit.
fn utf16_frame(raw: &[u8], odd_tail: bool) -> Frame {
    let (mut text, valid) = decode_utf16_lossy(raw);
    if odd_tail {
        text.push(char::REPLACEMENT_CHARACTER);
    }
    if valid && !odd_tail {
        Frame::Message(Bytes::from(text))
    } else {
        Frame::InvalidUtf16 {
            lossy: Bytes::from(text),
        }
    }
}

/// The first `limit` characters of raw wire text, as a report wants them: Bits8 bytes as they
/// are, Utf16Le transcoded to UTF-8. `raw` may hold one character beyond `limit` so that a
/// surrogate pair straddling the cut can be told from a lone surrogate: the pair is left out
/// whole, keeping the result within `limit` units.
fn cut_text(form: WireForm, raw: &[u8], limit: usize) -> Bytes {
    match form {
        WireForm::Bits8 => Bytes::copy_from_slice(raw.get(..limit).unwrap_or(raw)),
        WireForm::Utf16Le => {
            let mut keep = raw.len() / 2;
            if keep > limit {
                let last_kept = raw.get(limit * 2 - 2..limit * 2);
                let first_cut = raw.get(limit * 2..limit * 2 + 2);
                let splits_pair = match (last_kept, first_cut) {
                    (Some(&[a, b]), Some(&[c, d])) => {
                        is_high_surrogate(u16::from_le_bytes([a, b]))
                            && is_low_surrogate(u16::from_le_bytes([c, d]))
                    }
                    _ => false,
                };
                keep = if splits_pair { limit - 1 } else { limit };
            }
            let (text, _) = decode_utf16_lossy(raw.get(..keep * 2).unwrap_or(raw));
            Bytes::from(text)
        }
    }
}

fn is_high_surrogate(unit: u16) -> bool {
    (0xD800..0xDC00).contains(&unit)
}

fn is_low_surrogate(unit: u16) -> bool {
    (0xDC00..0xE000).contains(&unit)
}

/// What survives of an oversize frame while the rest of it is thrown away.
#[derive(Debug)]
struct Oversized {
    /// Raw wire bytes of the frame's start: FM_LIMIT characters, plus one on Utf16Le for
    /// [`cut_text`]'s surrogate-pair check.
    head: Vec<u8>,
    tk: TkScan,
}

impl Oversized {
    fn new() -> Self {
        Oversized {
            head: Vec::new(),
            tk: TkScan::Seek(0),
        }
    }

    /// Takes the next part of the frame; on Utf16Le `bytes` holds whole units only.
    fn feed(&mut self, form: WireForm, bytes: &[u8]) {
        let head_bytes = match form {
            WireForm::Bits8 => FM_LIMIT,
            WireForm::Utf16Le => (FM_LIMIT + 1) * 2,
        };
        let room = head_bytes.saturating_sub(self.head.len());
        self.head
            .extend_from_slice(bytes.get(..room).unwrap_or(bytes));
        if self.tk.is_found() {
            return;
        }
        match form {
            WireForm::Bits8 => {
                for byte in bytes {
                    self.tk.push(u16::from(*byte), std::slice::from_ref(byte));
                    if self.tk.is_found() {
                        break;
                    }
                }
            }
            WireForm::Utf16Le => {
                for pair in bytes.chunks_exact(2) {
                    self.tk.push(u16::from_le_bytes([pair[0], pair[1]]), pair);
                    if self.tk.is_found() {
                        break;
                    }
                }
            }
        }
    }

    fn finish(self, form: WireForm) -> Frame {
        let tk = match self.tk {
            TkScan::Seek(_) => None,
            TkScan::Capture(raw) | TkScan::Found(raw) => Some(cut_text(form, &raw, TK_LIMIT)),
        };
        Frame::Oversize {
            head: cut_text(form, &self.head, FM_LIMIT),
            tk,
        }
    }
}

/// Finds the first `\TK` value one character at a time, so it works however the frame is split
/// across reads.
#[derive(Debug)]
enum TkScan {
    /// How much of `\TK` was just seen: 0 nothing, 1 `\`, 2 `\T`.
    Seek(u8),
    /// Raw wire bytes of the value so far.
    Capture(Vec<u8>),
    /// Raw wire bytes of the value: up to one character beyond TK_LIMIT (see [`cut_text`]).
    Found(Vec<u8>),
}

impl TkScan {
    fn is_found(&self) -> bool {
        matches!(self, TkScan::Found(_))
    }

    /// Takes one character: `unit` is its value, `raw` its wire bytes.
    fn push(&mut self, unit: u16, raw: &[u8]) {
        let next = match self {
            TkScan::Seek(seen) => match (*seen, unit) {
                (_, BACKSLASH) => Some(TkScan::Seek(1)),
                (1, LETTER_T) => Some(TkScan::Seek(2)),
                (2, LETTER_K) => Some(TkScan::Capture(Vec::with_capacity((TK_LIMIT + 1) * 2))),
                (0, _) => None,
                _ => Some(TkScan::Seek(0)),
            },
            TkScan::Capture(value) => {
                if unit == BACKSLASH {
                    Some(TkScan::Found(std::mem::take(value)))
                } else {
                    value.extend_from_slice(raw);
                    // One character past the limit is enough to cut it right; the rest is noise.
                    if value.len() / raw.len().max(1) > TK_LIMIT {
                        Some(TkScan::Found(std::mem::take(value)))
                    } else {
                        None
                    }
                }
            }
            TkScan::Found(_) => None,
        };
        if let Some(next) = next {
            *self = next;
        }
    }
}

#[cfg(test)]
mod tests;
