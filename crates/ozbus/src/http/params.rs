//! Query and path parameters of the read endpoints (history, transactions, summary): each
//! checked as the SDMP parameter it mirrors would be, refused with the EC that parameter would
//! get.
//!
//! Owns the query string read as a list of pairs (a name given twice is EC 802, an unknown
//! one EC 801; the streams read the same pairs for their EO), the checks of each kind of value
//! (lengths in characters, EC 804; characters, EC 806; numbers, EC 805), RFC 3339 times, and
//! how much of a client's text a refusal quotes (cut between characters). Never: decides what
//! a parameter means.

use sdmp::schema::FORBIDDEN_IN_NAMES;
use sdmp::{ErrorCode, Rejection};

/// The largest sequence number (and the largest `after`/`before`): 2^63 - 1.
pub const SEQ_MAX: u64 = i64::MAX as u64;

/// The query string as a list of pairs, in order, as given (a stream's EO and the reads check
/// the names each in its own way).
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, Rejection> {
    serde_urlencoded::from_str(query.unwrap_or_default()).map_err(|_| {
        Rejection::new(
            ErrorCode::UndefinedParameter,
            "the query string cannot be read",
        )
    })
}

/// The first `chars` characters of a client's text, for a refusal's reason (cut between
/// characters: a cut by bytes may fall inside one).
pub fn cut(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// A client-given name, cut for a refusal's reason.
pub fn shown(name: &str) -> String {
    cut(name, 40)
}

/// The query string's parameters, in order; each name at most once, and only among `known`.
pub fn pairs(query: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, Rejection> {
    let pairs = query_pairs(query)?;
    for (i, (name, _)) in pairs.iter().enumerate() {
        if !known.contains(&name.as_str()) {
            return Err(Rejection::new(
                ErrorCode::UndefinedParameter,
                format!(
                    "parameter {:?} is not defined here ({})",
                    shown(name),
                    known.join(", ")
                ),
            ));
        }
        if pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(Rejection::new(
                ErrorCode::RepeatedParameter,
                format!("parameter {:?} given twice", shown(name)),
            ));
        }
    }
    Ok(pairs)
}

/// The query string of a read whose one parameter is `tenant`: the tenant it names, if any.
pub fn tenant_only(query: Option<&str>) -> Result<Option<Vec<u8>>, Rejection> {
    pairs(query, &["tenant"])?
        .first()
        .map(|(_, value)| tenant(value))
        .transpose()
}

/// A text value of `min..=max` characters without a backslash, NUL, CR or LF (SDMP's `str`).
pub fn text(name: &str, value: &str, min: usize, max: usize) -> Result<Vec<u8>, Rejection> {
    let length = value.chars().count();
    if length < min || length > max {
        return Err(Rejection::new(
            ErrorCode::BadLength,
            format!("{name} has {min} to {max} characters"),
        ));
    }
    if value.contains(['\\', '\0', '\r', '\n']) {
        return Err(Rejection::new(
            ErrorCode::ForbiddenCharacter,
            format!("{name} may not contain a backslash, NUL, CR or LF"),
        ));
    }
    Ok(value.as_bytes().to_vec())
}

/// A name (SDMP's `user`: a campaign, an agent): text without the characters names may not
/// contain.
pub fn name(name: &str, value: &str) -> Result<Vec<u8>, Rejection> {
    let bytes = text(name, value, 1, 80)?;
    if bytes.iter().any(|b| FORBIDDEN_IN_NAMES.contains(b)) {
        return Err(Rejection::new(
            ErrorCode::ForbiddenCharacter,
            format!("{name} may not contain / \\ : * ? \" < > | & % + ! ' ;"),
        ));
    }
    Ok(bytes)
}

/// A tenant (TD): 1 to 80 letters, digits, `_` and `-`.
pub fn tenant(value: &str) -> Result<Vec<u8>, Rejection> {
    let bytes = text("tenant", value, 1, 80)?;
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        return Err(Rejection::new(
            ErrorCode::ForbiddenCharacter,
            "a tenant has letters, digits, _ and - only",
        ));
    }
    Ok(bytes)
}

/// A whole number in `min..=max`, digits only (EC 805 otherwise).
pub fn number(name: &str, value: &str, min: u64, max: u64) -> Result<u64, Rejection> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| value.bytes().all(|b| b.is_ascii_digit()) && (min..=max).contains(n))
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::BadNumber,
                format!("{name} is a number in {min}..{max}"),
            )
        })
}

/// An RFC 3339 date-time (`2026-11-25T18:55:46.503Z`, `2026-11-25T19:55:46+01:00`) as Unix
/// milliseconds (EC 805 otherwise). Fractions beyond milliseconds are cut.
pub fn time(name: &str, value: &str) -> Result<i64, Rejection> {
    rfc3339_ms(value).ok_or_else(|| {
        Rejection::new(
            ErrorCode::BadNumber,
            format!("{name} is an RFC 3339 date-time, such as 2026-11-25T18:55:46Z"),
        )
    })
}

fn rfc3339_ms(value: &str) -> Option<i64> {
    let b = value.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't'))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let fraction = &b[start..i.min(start + 3)];
        millis = fraction
            .iter()
            .chain(std::iter::repeat(&b'0'))
            .take(3)
            .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    }
    let offset_minutes = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let (h, m) = (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    // Days from 1970-01-01 to the date (the proleptic Gregorian calendar).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_become_unix_milliseconds() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2026-11-25T18:55:46.503Z"),
            Some(1_795_632_946_503)
        );
        assert_eq!(
            rfc3339_ms("2026-11-25T19:55:46.5031+01:00"),
            Some(1_795_632_946_503)
        );
        assert_eq!(rfc3339_ms("2000-02-29t00:00:00z"), Some(951_782_400_000));
        assert_eq!(rfc3339_ms("1969-12-31T23:59:59Z"), Some(-1000));
        assert_eq!(
            rfc3339_ms("0001-01-01T00:00:00Z"),
            Some(-62_135_596_800_000)
        );
        for bad in [
            "",
            "2026-11-25",
            "2026-11-25T18:55:46",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-25 18:55:46Z",
            "2026-11-25T18:55:46.Z",
            "2026-11-25T18:55:46+0100",
            "2026-11-25T18:55:46Zx",
            "+026-11-25T18:55:46Z",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn values_are_refused_with_the_ec_their_sdmp_parameter_would_get() {
        let ec = |r: Result<Vec<u8>, Rejection>| r.unwrap_err().code.number();
        assert_eq!(ec(name("campaign", "")), 804);
        assert_eq!(ec(name("campaign", &"x".repeat(81))), 804);
        assert_eq!(ec(name("campaign", "a/b")), 806);
        assert_eq!(ec(text("number", "a\\b", 1, 120)), 806);
        assert_eq!(ec(tenant("a b")), 806);
        assert_eq!(number("limit", "0", 1, 10).unwrap_err().code.number(), 805);
        assert_eq!(number("limit", "+5", 1, 10).unwrap_err().code.number(), 805);
        assert_eq!(number("limit", "10", 1, 10).unwrap(), 10);
        assert_eq!(
            pairs(Some("a=1&a=2"), &["a"]).unwrap_err().code.number(),
            802
        );
        assert_eq!(pairs(Some("b=1"), &["a"]).unwrap_err().code.number(), 801);
    }
}
