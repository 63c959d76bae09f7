//! Formatting: typed messages into the bytes of a frame (without terminator; the codec adds it).
//!
//! The writer walks the message's table, so parameters always come out in the table's order (for
//! OZ, the order the protocol fixes). Values are copied straight from the struct into the output
//! buffer; numbers go through `itoa`. Nothing here allocates a String.
//!
//! OZ has a second, faster path for fan-out: [`PreparedOz`] formats everything after TX once per
//! outcome, and each subscriber's frame is then its code, its TX and that shared tail.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Rejection;
use crate::framing::{WireForm, WriteMessage, FM_LIMIT};
use crate::messages::{Body, Envelope, Er, Oz, Slot, Slots};
use crate::parse::Dialect;
use crate::schema::{Code, MessageSpec, ParamType};

/// The most bytes of MS an ER carries.
pub const MS_LIMIT: usize = 255;
/// The most characters of TK an ER repeats.
const TK_LIMIT: usize = 80;

impl Envelope<'_> {
    /// Appends the message's frame (without terminator) to `out`.
    pub fn write_to(&self, out: &mut BytesMut) {
        let spec = self.message.spec();
        write_code(self.dialect, spec.code, out);
        write_params(spec, &self.message.slots(), 0, out);
    }

    /// The message's frame as bytes (without terminator).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        self.write_to(&mut out);
        out.freeze()
    }
}

impl WriteMessage for Envelope<'_> {
    fn write_message(&self, out: &mut BytesMut) {
        self.write_to(out);
    }
}

fn write_code(dialect: Dialect, code: Code, out: &mut BytesMut) {
    if let Dialect::V2 { service, interface } = dialect {
        out.put_slice(service.as_bytes());
        out.put_u8(b':');
        out.put_slice(interface.as_bytes());
        out.put_u8(b':');
    }
    out.put_slice(code.as_bytes());
}

/// Writes the slots from table position `first` on, in table order.
fn write_params(spec: &MessageSpec, slots: &Slots<'_>, first: usize, out: &mut BytesMut) {
    for (param, slot) in spec.params.iter().zip(slots.0.iter()).skip(first) {
        let Some(slot) = slot else { continue };
        out.put_u8(b'\\');
        out.put_slice(param.code.as_bytes());
        match (*slot, param.ty) {
            (Slot::Text(text), ParamType::Quoted) => {
                out.put_u8(b'"');
                out.put_slice(text);
                out.put_u8(b'"');
            }
            (Slot::Text(text), _) => out.put_slice(text),
            (Slot::Int(hundredths), ParamType::Decimal { .. }) => {
                let mut digits = itoa::Buffer::new();
                out.put_slice(digits.format(hundredths / 100).as_bytes());
                out.put_u8(b'.');
                out.put_slice(&[
                    b'0' + (hundredths / 10 % 10) as u8,
                    b'0' + (hundredths % 10) as u8,
                ]);
            }
            (Slot::Int(n), _) => out.put_slice(itoa::Buffer::new().format(n).as_bytes()),
            (Slot::Flag, _) => {}
        }
    }
}

/// An OZ formatted once for every transaction it goes to: everything after TX.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedOz {
    tail: Bytes,
}

impl PreparedOz {
    /// Formats `oz` without its TX (whatever `oz.tx` holds is ignored).
    pub fn new(oz: &Oz<'_>) -> PreparedOz {
        let mut out = BytesMut::with_capacity(64 + oz.dt.len());
        // TX is the first row of OZ's table.
        write_params(Oz::SPEC, &oz.to_slots(), 1, &mut out);
        PreparedOz { tail: out.freeze() }
    }

    /// The shared part: `\TD…\CN…` up to and including DT.
    pub fn tail(&self) -> &[u8] {
        &self.tail
    }

    /// The shared part, to keep (for example next to the outcome, for every transaction).
    pub fn into_tail(self) -> Bytes {
        self.tail
    }

    /// Appends the whole OZ frame for one transaction (without terminator).
    #[inline]
    pub fn write(&self, dialect: Dialect, tx: &[u8], out: &mut BytesMut) {
        self.frame(dialect, tx).write_message(out);
    }

    /// This OZ addressed to one transaction, ready for the codec.
    pub fn frame<'p>(&'p self, dialect: Dialect, tx: &'p [u8]) -> OzFrame<'p> {
        OzFrame::from_tail(&self.tail, dialect, tx)
    }
}

/// A prepared OZ addressed to one transaction; see [`PreparedOz::frame`].
#[derive(Clone, Copy, Debug)]
pub struct OzFrame<'p> {
    tail: &'p [u8],
    dialect: Dialect,
    tx: &'p [u8],
}

impl<'p> OzFrame<'p> {
    /// The OZ for one transaction from a shared part kept elsewhere: `tail` must be what
    /// [`PreparedOz::tail`] or [`PreparedOz::into_tail`] gave.
    pub fn from_tail(tail: &'p [u8], dialect: Dialect, tx: &'p [u8]) -> OzFrame<'p> {
        OzFrame { tail, dialect, tx }
    }
}

impl WriteMessage for OzFrame<'_> {
    #[inline]
    fn write_message(&self, out: &mut BytesMut) {
        out.reserve(16 + self.tx.len() + self.tail.len());
        write_code(self.dialect, Oz::SPEC.code, out);
        out.put_slice(b"\\TX");
        out.put_slice(self.tx);
        out.put_slice(self.tail);
    }
}

impl<'a> Er<'a> {
    /// The ER for a rejected frame: FM is the frame, cut at [`FM_LIMIT`] characters of the
    /// connection's wire form; when it is cut and the frame had a TK, TK is repeated outside FM
    /// so that the sender still learns which of its messages failed.
    pub fn for_frame(rejection: &'a Rejection, frame: &'a [u8], form: WireForm) -> Er<'a> {
        let fm = cut_chars(frame, FM_LIMIT, form);
        let tk = if fm.len() < frame.len() {
            find_tk(frame)
        } else {
            None
        };
        Er::new(rejection, fm, tk)
    }

    /// An ER with FM and TK as given (for frames the decoder already cut, such as oversize ones).
    pub fn new(rejection: &'a Rejection, fm: &'a [u8], tk: Option<&'a [u8]>) -> Er<'a> {
        Er {
            ec: rejection.code.number(),
            ms: cut_reason(&rejection.reason),
            tk,
            fm,
        }
    }
}

/// What an ER needs of a frame, kept after the frame is gone: the part FM shows (cut as
/// [`Er::for_frame`] cuts it) and the TK to repeat when that part is cut. For a request whose
/// refusal is only known later (its commit failed), so that the frame itself, which may be
/// large, need not be held meanwhile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultyFrame {
    fm: Bytes,
    tk: Option<Bytes>,
}

impl FaultyFrame {
    /// Copies what an ER for `frame` received in `form` would show.
    pub fn keep(frame: &[u8], form: WireForm) -> FaultyFrame {
        let fm = cut_chars(frame, FM_LIMIT, form);
        let tk = if fm.len() < frame.len() {
            find_tk(frame)
        } else {
            None
        };
        FaultyFrame {
            fm: Bytes::copy_from_slice(fm),
            tk: tk.map(Bytes::copy_from_slice),
        }
    }

    /// How many bytes it keeps.
    pub fn bytes(&self) -> usize {
        self.fm.len() + self.tk.as_ref().map_or(0, Bytes::len)
    }

    /// The ER refusing the frame: the same as [`Er::for_frame`] on the whole frame.
    pub fn er<'a>(&'a self, rejection: &'a Rejection) -> Er<'a> {
        Er::new(rejection, &self.fm, self.tk.as_deref())
    }
}

/// The longest prefix of `text` of at most `limit` characters of the wire form: bytes on the
/// 8-bit form; UTF-16 code units on the UTF-16 form, whose frames reach us as UTF-8 (a prefix
/// never ends inside a character).
fn cut_chars(text: &[u8], limit: usize, form: WireForm) -> &[u8] {
    if text.len() <= limit {
        return text;
    }
    match (form, std::str::from_utf8(text)) {
        (WireForm::Utf16Le, Ok(s)) => {
            let mut units = 0;
            for (at, c) in s.char_indices() {
                units += c.len_utf16();
                if units > limit {
                    return &text[..at];
                }
            }
            text
        }
        _ => &text[..limit],
    }
}

/// The reason cut to [`MS_LIMIT`] bytes, at a character boundary.
fn cut_reason(reason: &str) -> &[u8] {
    let mut end = reason.len().min(MS_LIMIT);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason.as_bytes()[..end]
}

/// The value of the first `\TK` parameter of a frame, whatever else the frame holds.
fn find_tk(frame: &[u8]) -> Option<&[u8]> {
    frame
        .split(|&b| b == b'\\')
        .skip(1)
        .find_map(|param| param.strip_prefix(b"TK"))
        .map(|tk| &tk[..tk.len().min(TK_LIMIT)])
}

impl crate::framing::Frame {
    /// The ER that answers an item the decoder could not make a message of: EC 850 for a frame
    /// over `max_frame` characters, EC 851 for one that is not UTF-16. `None` for a message
    /// (validation decides about those). The bytes are the ER in 8-bit form, for the codec.
    pub fn error_reply(&self, max_frame: usize, form: WireForm) -> Option<Bytes> {
        use crate::error::ErrorCode;
        use crate::framing::Frame;
        let (rejection, fm, tk, cut) = match self {
            Frame::Message(_) => return None,
            Frame::Oversize { head, tk } => (
                Rejection::new(
                    ErrorCode::FrameTooLong,
                    format!("frame longer than {max_frame} characters"),
                ),
                head,
                tk.as_deref(),
                true,
            ),
            Frame::InvalidUtf16 { lossy } => (
                Rejection::new(ErrorCode::InvalidUtf16, "frame is not valid UTF-16"),
                lossy,
                None,
                false,
            ),
        };
        // The decoder already cut an oversize frame's head and found its TK.
        let er = if cut {
            Er::new(&rejection, fm, tk)
        } else {
            Er::for_frame(&rejection, fm, form)
        };
        Some(
            Envelope {
                dialect: Dialect::of_frame(fm),
                message: er.into(),
            }
            .to_bytes(),
        )
    }
}
