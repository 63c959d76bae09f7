//! Reading the syntax of one frame: its message code and its parameters.
//!
//! A [`MessageView`] borrows the frame and allocates nothing; parameters are produced lazily, left
//! to right, as `(code, value)` pairs whose values are slices of the frame, byte-exact. This module
//! decides only what the grammar decides (is there a readable code, where do parameters start and
//! end); whether a parameter belongs to the message is validation's business.

use memchr::memchr;

use crate::error::{ErrorCode, Rejection};
use crate::schema::{is_code_char, Code};

/// Which of SDMP's two message-code forms a frame used; replies use the same form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Dialect {
    /// SDMP 1.0: a bare two-character code (`EO`).
    #[default]
    V1,
    /// SDMP 2.0: `service:interface:code` (`CG:MA:EO`).
    V2 { service: Code, interface: Code },
}

impl Dialect {
    /// The SDMP 2.0 form for the CG service and the given interface.
    pub const fn cg(interface: Code) -> Dialect {
        Dialect::V2 {
            service: Code(*b"CG"),
            interface,
        }
    }

    /// The form a reply to `frame` must use: the frame's own, or SDMP 1.0 when its code cannot
    /// be read.
    pub fn of_frame(frame: &[u8]) -> Dialect {
        MessageView::parse(frame).map_or(Dialect::V1, |view| view.dialect())
    }
}

/// One frame, split into its code and (lazily) its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageView<'a> {
    frame: &'a [u8],
    code: Code,
    dialect: Dialect,
    /// Everything after the code: empty, or starting with `\`.
    params: &'a [u8],
}

/// One parameter as written: `code` is `None` when its first two characters are not a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawParam<'a> {
    pub code: Option<Code>,
    /// The whole parameter as written, code included (for error reasons).
    pub text: &'a [u8],
    pub value: &'a [u8],
}

impl<'a> MessageView<'a> {
    /// Reads the message code. The only error is EC 800, for a code that cannot be read.
    pub fn parse(frame: &'a [u8]) -> Result<MessageView<'a>, Rejection> {
        let end = memchr(b'\\', frame).unwrap_or(frame.len());
        let (head, params) = frame.split_at(end);
        let (code, dialect) = match *head {
            [a, b] if is_code_char(a) && is_code_char(b) => (Code([a, b]), Dialect::V1),
            [s1, s2, b':', i1, i2, b':', c1, c2] => {
                match (
                    Code::parse(&[s1, s2]),
                    Code::parse(&[i1, i2]),
                    Code::parse(&[c1, c2]),
                ) {
                    (Some(service), Some(interface), Some(code)) if service.0 == *b"CG" => {
                        (code, Dialect::V2 { service, interface })
                    }
                    (Some(service), Some(_), Some(_)) => {
                        return Err(Rejection::new(
                            ErrorCode::UnknownMessage,
                            format!("unknown service {service}: ozbus speaks the CG service"),
                        ))
                    }
                    _ => return Err(unreadable_code()),
                }
            }
            _ => return Err(unreadable_code()),
        };
        Ok(MessageView {
            frame,
            code,
            dialect,
            params,
        })
    }

    pub fn frame(&self) -> &'a [u8] {
        self.frame
    }

    pub fn code(&self) -> Code {
        self.code
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The parameters, left to right. `tail` names a parameter whose value runs to the end of the
    /// frame, backslashes included (ER's FM); pass `None` for every other message.
    pub fn params(&self, tail: Option<Code>) -> Params<'a> {
        Params {
            rest: self.params,
            tail,
        }
    }

    /// The value of the first parameter with this code (used to find TK in a rejected frame).
    pub fn first(&self, code: Code) -> Option<&'a [u8]> {
        self.params(None)
            .find(|p| p.code == Some(code))
            .map(|p| p.value)
    }
}

fn unreadable_code() -> Rejection {
    Rejection::new(
        ErrorCode::UnknownMessage,
        "message code cannot be read: expected two characters A-Z/0-9, or CG:XX:XX",
    )
}

/// Iterator over a frame's parameters; see [`MessageView::params`].
#[derive(Clone, Debug)]
pub struct Params<'a> {
    /// Empty, or starting with the `\` of the next parameter.
    rest: &'a [u8],
    tail: Option<Code>,
}

impl<'a> Iterator for Params<'a> {
    type Item = RawParam<'a>;

    #[inline]
    fn next(&mut self) -> Option<RawParam<'a>> {
        let after_backslash = self.rest.get(1..)?;
        let code = after_backslash.get(..2).and_then(Code::parse);
        let end = if code.is_some() && code == self.tail {
            after_backslash.len()
        } else {
            memchr(b'\\', after_backslash).unwrap_or(after_backslash.len())
        };
        let text = &after_backslash[..end];
        self.rest = &after_backslash[end..];
        let value = if code.is_some() { &text[2..] } else { b"" };
        Some(RawParam { code, text, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(frame: &[u8]) -> Vec<(Option<String>, Vec<u8>)> {
        let view = MessageView::parse(frame).expect("readable");
        view.params(None)
            .map(|p| (p.code.map(|c| c.to_string()), p.value.to_vec()))
            .collect()
    }

    #[test]
    fn reads_both_code_forms() {
        let v1 = MessageView::parse(b"EO\\TXa\\SO").unwrap();
        assert_eq!((v1.code(), v1.dialect()), (Code(*b"EO"), Dialect::V1));
        let v2 = MessageView::parse(b"CG:MA:EO\\TXa").unwrap();
        assert_eq!(v2.code(), Code(*b"EO"));
        assert_eq!(v2.dialect(), Dialect::cg(Code(*b"MA")));
        assert_eq!(MessageView::parse(b"DA").unwrap().params(None).count(), 0);
    }

    #[test]
    fn refuses_unreadable_codes_with_800() {
        for frame in [
            &b"eo\\TXa"[..],
            b"E",
            b"EOX\\TXa",
            b"CG:MA\\TXa",
            b"CG-MA-EO",
            b"\\TXa",
            b"CG:ma:EO",
        ] {
            let err = MessageView::parse(frame).unwrap_err();
            assert_eq!(err.code, ErrorCode::UnknownMessage, "{frame:?}");
        }
        let err = MessageView::parse(b"XX:MA:EO").unwrap_err();
        assert!(err.reason.contains("service XX"), "{}", err.reason);
    }

    #[test]
    fn splits_parameters_byte_exact_and_keeps_empty_values() {
        assert_eq!(
            codes(b"MC\\CNSales1\\TN\\DT\xe9\xff x"),
            vec![
                (Some("CN".into()), b"Sales1".to_vec()),
                (Some("TN".into()), b"".to_vec()),
                (Some("DT".into()), b"\xe9\xff x".to_vec()),
            ]
        );
    }

    #[test]
    fn unreadable_parameter_codes_come_back_as_none() {
        let got = codes(b"EO\\\\TXa\\x1\\T");
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].0, None, "empty parameter between two backslashes");
        assert_eq!(got[1].0.as_deref(), Some("TX"));
        assert_eq!(got[2].0, None);
        assert_eq!(got[3].0, None);
    }

    #[test]
    fn a_tail_parameter_takes_the_rest_of_the_frame() {
        let view = MessageView::parse(b"ER\\EC30\\FM\"MC\\CNa\\TK1\"").unwrap();
        let params: Vec<_> = view.params(Some(Code(*b"FM"))).collect();
        assert_eq!(params.len(), 2);
        assert_eq!(params[1].value, b"\"MC\\CNa\\TK1\"");
        assert_eq!(view.first(Code(*b"EC")), Some(&b"30"[..]));
    }
}
