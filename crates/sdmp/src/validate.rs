//! Validation: from a [`MessageView`] to a typed [`Message`], or a [`Rejection`] with its EC.
//!
//! One generic pass, driven by the message's table, applies the order of checks the protocol
//! fixes, so that a message with several faults always gets the same EC:
//! 1. the message code (800);
//! 2. each parameter, left to right: defined for the message (801), not a repeat (802), a flag
//!    written without a value (807);
//! 3. mandatory parameters: TX (803), the others in table order (30), then TN-or-SI (120);
//! 4. each value, left to right: length (804), number and range (805), characters (806);
//! 5. the meaning that needs no service state (808).
//!
//! Checks that need service state (a call record, a transaction) belong to the service.

use std::borrow::Cow;

use crate::error::{ErrorCode, Rejection};
use crate::messages::{spec_for, Envelope, Message, Slot, Slots};
use crate::parse::MessageView;
use crate::schema::{
    Code, Direction, MessageSpec, ParamSpec, ParamType, Rule, FORBIDDEN_IN_NAMES, MAX_PARAMS,
};

const TX: Code = Code(*b"TX");
const TN: Code = Code(*b"TN");
const SI: Code = Code(*b"SI");

/// Parses and validates any message ozbus knows, in either direction (what an SDMP client uses to
/// read what a server sends).
pub fn decode(frame: &[u8]) -> Result<Envelope<'_>, Rejection> {
    let view = MessageView::parse(frame)?;
    validate(&view).map(|message| Envelope {
        dialect: view.dialect(),
        message,
    })
}

/// Parses and validates a message sent to ozbus: a message that only ozbus sends (OZ, ER, ...)
/// is refused with EC 800, like an unknown code.
pub fn decode_request(frame: &[u8]) -> Result<Envelope<'_>, Rejection> {
    let view = MessageView::parse(frame)?;
    if let Some(spec) = spec_for(view.code()) {
        if spec.direction == Direction::FromServer {
            return Err(Rejection::new(
                ErrorCode::UnknownMessage,
                format!("{} is sent by ozbus, not to it", spec.code),
            ));
        }
    }
    validate(&view).map(|message| Envelope {
        dialect: view.dialect(),
        message,
    })
}

/// Validates a parsed frame against its message's table.
pub fn validate<'a>(view: &MessageView<'a>) -> Result<Message<'a>, Rejection> {
    let spec = spec_for(view.code()).ok_or_else(|| {
        Rejection::new(
            ErrorCode::UnknownMessage,
            format!("unknown message code {}", view.code()),
        )
    })?;
    let slots = check(spec, view)?;
    Ok((spec.build)(&slots))
}

fn reject(code: ErrorCode, reason: impl Into<Cow<'static, str>>) -> Rejection {
    Rejection::new(code, reason)
}

/// Steps 2 to 5 for one message.
#[inline]
pub(crate) fn check<'a>(
    spec: &'static MessageSpec,
    view: &MessageView<'a>,
) -> Result<Slots<'a>, Rejection> {
    // Holds each parameter's raw text (Slot::Text) until step 4 turns it into its checked value.
    let mut slots = Slots::EMPTY;
    // Table positions in the order the parameters were written, for step 4.
    let mut order = [0u8; MAX_PARAMS];
    let mut count = 0;
    let is_given =
        |slots: &Slots<'_>, code: Code| spec.index_of(code).is_some_and(|i| slots.0[i].is_some());

    for param in view.params(spec.tail_param()) {
        let Some(code) = param.code else {
            return Err(reject(
                ErrorCode::UndefinedParameter,
                format!(
                    "unreadable parameter \"{}\": expected two characters A-Z/0-9",
                    String::from_utf8_lossy(&param.text[..param.text.len().min(16)])
                ),
            ));
        };
        let Some(index) = spec.index_of(code) else {
            return Err(reject(
                ErrorCode::UndefinedParameter,
                format!("parameter {code} is not defined for {}", spec.code),
            ));
        };
        if slots.0[index].is_some() {
            return Err(reject(
                ErrorCode::RepeatedParameter,
                format!("parameter {code} given twice"),
            ));
        }
        for rule in spec.rules {
            if let Rule::ExactlyOne(a, b) = *rule {
                let other = if code == a { b } else { a };
                if (code == a || code == b) && is_given(&slots, other) {
                    return Err(reject(
                        ErrorCode::UndefinedParameter,
                        format!("{a} and {b} cannot both be given"),
                    ));
                }
            }
        }
        if spec.params[index].ty == ParamType::Flag && !param.value.is_empty() {
            return Err(reject(
                ErrorCode::FlagWithValue,
                format!("{code} is a flag and takes no value"),
            ));
        }
        slots.0[index] = Some(Slot::Text(param.value));
        // index < MAX_PARAMS (a table has at most MAX_PARAMS rows), and each index is given once.
        order[count] = index as u8;
        count += 1;
    }

    for rule in spec.rules {
        if let Rule::OnlyWith(a, b) = *rule {
            if is_given(&slots, a) && !is_given(&slots, b) {
                return Err(reject(
                    ErrorCode::UndefinedParameter,
                    format!("{a} is only allowed together with {b}"),
                ));
            }
        }
    }

    check_mandatory(spec, &slots)?;

    for &index in &order[..count] {
        let index = usize::from(index);
        if let Some(Slot::Text(value)) = slots.0[index] {
            slots.0[index] = Some(check_value(&spec.params[index], value)?);
        }
    }

    for rule in spec.rules {
        if let Rule::AnyOf(codes, ec) = *rule {
            if !codes.iter().any(|&c| is_given(&slots, c)) {
                let names: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
                return Err(reject(
                    ec,
                    format!("{} needs at least one of {}", spec.code, names.join(", ")),
                ));
            }
        }
    }
    Ok(slots)
}

/// Step 3, on the raw slots of step 2.
fn check_mandatory(spec: &MessageSpec, slots: &Slots<'_>) -> Result<(), Rejection> {
    let mut missing = spec
        .params
        .iter()
        .zip(slots.0)
        .filter(|(p, value)| p.required && value.is_none())
        .map(|(p, _)| p);
    let first_missing = missing
        .clone()
        .find(|p| p.code == TX)
        .or_else(|| missing.next());
    if first_missing.is_some_and(|p| p.code == TX) {
        return Err(reject(
            ErrorCode::MissingTransaction,
            "transaction identifier (TX) missing",
        ));
    }
    if let Some(p) = first_missing {
        return Err(reject(
            ErrorCode::MissingParameter,
            format!("mandatory parameter {} ({}) missing", p.code, p.name),
        ));
    }
    let value_of = |code: Code| match spec.index_of(code).and_then(|i| slots.0[i]) {
        Some(Slot::Text(text)) => Some(text),
        _ => None,
    };
    for rule in spec.rules {
        match *rule {
            Rule::ExactlyOne(a, b) if value_of(a).is_none() && value_of(b).is_none() => {
                return Err(reject(
                    ErrorCode::MissingParameter,
                    format!("one of {a} and {b} is mandatory"),
                ));
            }
            // An empty TN names no call, so it does not count as given.
            Rule::TnOrSi
                if value_of(SI).is_none() && value_of(TN).is_none_or(|tn| tn.is_empty()) =>
            {
                return Err(reject(ErrorCode::MissingTnOrSi, "TN or SI required"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Step 4 for one value: its length, number and characters.
fn check_value<'a>(param: &ParamSpec, value: &'a [u8]) -> Result<Slot<'a>, Rejection> {
    let code = param.code;
    let length = |min: u32, max: u32| {
        let n = char_count(value);
        if n < min as usize || n > max as usize {
            Err(reject(
                ErrorCode::BadLength,
                format!("{code} must be {min}..{max} characters long"),
            ))
        } else {
            Ok(())
        }
    };
    match param.ty {
        ParamType::Str { min, max } => {
            length(min, max)?;
            Ok(Slot::Text(value))
        }
        ParamType::User { min, max } => {
            length(min, max)?;
            if value.iter().any(|b| FORBIDDEN_IN_NAMES.contains(b)) {
                return Err(reject(
                    ErrorCode::ForbiddenCharacter,
                    format!("{code} may not contain any of / : * ? \" < > | & % + ! ' ;"),
                ));
            }
            Ok(Slot::Text(value))
        }
        ParamType::Tenant => {
            length(1, 80)?;
            if !value
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(reject(
                    ErrorCode::ForbiddenCharacter,
                    format!("{code} may only contain letters, digits, _ and -"),
                ));
            }
            Ok(Slot::Text(value))
        }
        ParamType::Int { min, max } => match parse_uint(value) {
            Some(n) if (min..=max).contains(&n) => Ok(Slot::Int(n)),
            _ => Err(reject(
                ErrorCode::BadNumber,
                format!("{code} must be a number in {min}..{max}"),
            )),
        },
        ParamType::Decimal { max_hundredths } => match parse_hundredths(value) {
            Some(n) if n <= u64::from(max_hundredths) => Ok(Slot::Int(n)),
            _ => Err(reject(
                ErrorCode::BadNumber,
                format!(
                    "{code} must be a number in 0..{}.{:02} with at most two decimals",
                    max_hundredths / 100,
                    max_hundredths % 100
                ),
            )),
        },
        ParamType::Flag => Ok(Slot::Flag),
        ParamType::Quoted => match value {
            [b'"', inner @ .., b'"'] => Ok(Slot::Text(inner)),
            _ => Err(reject(
                ErrorCode::ForbiddenCharacter,
                format!("{code} must be enclosed in double quotes"),
            )),
        },
    }
}

/// Length in characters: a value that is valid UTF-8 (everything from the UTF-16 listener) counts
/// characters; any other value is 8-bit text and counts bytes.
pub(crate) fn char_count(value: &[u8]) -> usize {
    if value.is_ascii() {
        return value.len();
    }
    match std::str::from_utf8(value) {
        Ok(text) => text.chars().count(),
        Err(_) => value.len(),
    }
}

/// Decimal digits without sign, or `None` (empty, another character, or more than u64 holds).
pub(crate) fn parse_uint(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// `9`, `9.9` or `9.99` as hundredths.
fn parse_hundredths(text: &[u8]) -> Option<u64> {
    let (whole, fraction) = match memchr::memchr(b'.', text) {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &b""[..]),
    };
    let whole = parse_uint(whole)?;
    let fraction = match fraction.len() {
        0 if !text.ends_with(b".") => 0,
        1 => parse_uint(fraction)? * 10,
        2 => parse_uint(fraction)?,
        _ => return None,
    };
    whole.checked_mul(100)?.checked_add(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_characters_of_utf8_and_bytes_of_8_bit_text() {
        assert_eq!(char_count(b"abc"), 3);
        assert_eq!(char_count("é€😀".as_bytes()), 3);
        assert_eq!(
            char_count(b"\xe9t\xe9"),
            3,
            "Windows-1252 bytes count one each"
        );
    }

    #[test]
    fn parses_unsigned_numbers_strictly() {
        assert_eq!(parse_uint(b"0"), Some(0));
        assert_eq!(parse_uint(b"007"), Some(7));
        assert_eq!(parse_uint(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1.0",
            b" 1",
            b"18446744073709551616",
            b"1e3",
        ] {
            assert_eq!(parse_uint(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_decimals_with_at_most_two_places() {
        assert_eq!(parse_hundredths(b"9.99"), Some(999));
        assert_eq!(parse_hundredths(b"1.5"), Some(150));
        assert_eq!(parse_hundredths(b"2"), Some(200));
        for bad in [&b"1."[..], b".5", b"1.234", b"1,5", b"", b"-1"] {
            assert_eq!(parse_hundredths(bad), None, "{bad:?}");
        }
    }
}
