//! Received frames: their code, their bytes, their text for a person, an ER in words.
//!
//! Owns: the small questions every client asks of a received [`Frame`] before (or instead of)
//! decoding it, the codes a client routes on, and the largest frame a client accepts.
//!
//! Never: does I/O, or decides what a frame means for a conversation (that is the caller's, or
//! [`Session`](crate::Session)'s and [`Subscription`](crate::Subscription)'s).

use std::borrow::Cow;

use sdmp::{Code, Frame, MessageView, SdmpCodec, WireForm};

use crate::error::ErrorReply;

/// Largest frame a client accepts, in characters. Bigger than a server's own input limit on
/// purpose: an OZ carries a DT of up to 128,000 characters plus AS and the rest, and a client
/// should take what the server sends rather than enforce the server's rules.
pub const MAX_FRAME: usize = 1 << 20;

/// The message codes a client routes on.
pub mod codes {
    use sdmp::Code;

    /// Error report.
    pub const ER: Code = Code(*b"ER");
    /// Message verify: the message with this TK is accepted and durable.
    pub const MV: Code = Code(*b"MV");
    /// Outcome data: one event of a transaction.
    pub const OZ: Code = Code(*b"OZ");
    /// Enumerate finished: a transaction ended.
    pub const EF: Code = Code(*b"EF");
    /// Gap notice (ozbus extension): events lost to retention.
    pub const XG: Code = Code(*b"XG");
    /// Keep-alive.
    pub const DA: Code = Code(*b"DA");
    /// User status: the answer to UA.
    pub const US: Code = Code(*b"US");
    /// Enumerate outcomes: opens a transaction.
    pub const EO: Code = Code(*b"EO");
    /// Enumerate end: ends a transaction.
    pub const EE: Code = Code(*b"EE");
    /// Token, a parameter of any message to a server.
    pub const TK: Code = Code(*b"TK");
    /// Transaction identifier, a parameter.
    pub const TX: Code = Code(*b"TX");
}

/// The codec a client uses for a connection in `form`: frames up to [`MAX_FRAME`].
pub fn codec(form: WireForm) -> SdmpCodec {
    SdmpCodec::new(form).with_max_frame(MAX_FRAME)
}

/// The message code of a frame (`OZ` for `OZ\...` and for `CG:MA:OZ\...`), if it has a readable one.
pub fn frame_code(bytes: &[u8]) -> Option<Code> {
    MessageView::parse(bytes).ok().map(|view| view.code())
}

/// The bytes of a received frame: the text of a whole frame, the kept start of an oversize one.
pub fn frame_bytes(frame: &Frame) -> &[u8] {
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

/// An ER frame in words: `EC 809: <reason> (for "<refused frame>")`, or the frame itself when
/// it is not a readable ER.
pub fn describe_er(bytes: &[u8]) -> String {
    match ErrorReply::parse(&bytes::Bytes::copy_from_slice(bytes)) {
        Some(er) => er.to_string(),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn frames_read_as_code_bytes_and_text() {
        assert_eq!(frame_code(b"CG:MA:OZ\\TXa"), Some(codes::OZ));
        assert_eq!(frame_code(b"oz"), None);
        let cut = Frame::Oversize {
            head: Bytes::from_static(b"OZ\\TXa"),
            tk: None,
        };
        assert_eq!(frame_bytes(&cut), b"OZ\\TXa");
        assert_eq!(
            frame_text(&cut),
            format!("OZ\\TXa... [frame cut: longer than {MAX_FRAME} characters]")
        );
        assert_eq!(
            frame_text(&Frame::Message(Bytes::from_static(b"MV\\TKcaf\xe9"))),
            "MV\\TKcaf\u{fffd}"
        );
        assert_eq!(
            describe_er(b"ER\\EC800\\MSunknown\\FM\"BAD\""),
            "EC 800: unknown (for \"BAD\")"
        );
        assert_eq!(describe_er(b"ER\\nonsense"), "ER\\nonsense");
    }
}
