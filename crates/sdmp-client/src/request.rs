//! Messages the client builds from the caller's values, checked before anything is sent.
//!
//! Owns: turning a typed message into frame bytes, refusing values that would change the
//! frame's meaning (a backslash would start another parameter; NUL, CR and LF end the frame),
//! and checking the result against the codec's own tables, so that a bad value is reported by
//! the client, with the parameter's name, rather than by an ER.
//!
//! Never: fixes a value up; what cannot go out as given is refused.

use bytes::Bytes;
use sdmp::{Dialect, Envelope, Message};

use crate::error::Error;

/// The frame of `message` (SDMP 1.0 codes), after checking `values` (parameter code, value)
/// for characters that cannot be sent and the whole frame against the message's table.
pub(crate) fn checked_frame(
    what: &'static str,
    message: Message<'_>,
    values: &[(&str, Option<&[u8]>)],
) -> Result<Bytes, Error> {
    for (code, value) in values {
        if value.is_some_and(|v| v.iter().any(|b| matches!(b, b'\\' | 0 | b'\r' | b'\n'))) {
            return Err(Error::Invalid {
                what,
                reason: format!("{code} may not contain a backslash or a line break"),
            });
        }
    }
    let frame = Envelope {
        dialect: Dialect::V1,
        message,
    }
    .to_bytes();
    sdmp::decode_request(&frame).map_err(|rejection| Error::Invalid {
        what,
        reason: rejection.reason.into_owned(),
    })?;
    Ok(frame)
}
