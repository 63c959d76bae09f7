//! The parameter schema of every SDMP message ozbus knows.
//!
//! One static table per message (built in `messages.rs`) drives validation, formatting and the
//! protocol document: there is no second description of a message anywhere. This module holds the
//! vocabulary of those tables and renders them as Markdown ([`markdown`]).

use std::fmt::{self, Write as _};

use crate::error::ErrorCode;
use crate::messages::{Message, Slots};

/// A two-character code: a message code (`EO`) or a parameter code (`TX`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code(pub [u8; 2]);

impl Code {
    /// A code from its two characters, if both are in `A-Z` or `0-9`.
    pub fn parse(bytes: &[u8]) -> Option<Code> {
        match *bytes {
            [a, b] if is_code_char(a) && is_code_char(b) => Some(Code([a, b])),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> &[u8; 2] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from A-Z/0-9 (or from literals in this crate's tables).
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

pub(crate) fn is_code_char(byte: u8) -> bool {
    byte.is_ascii_uppercase() || byte.is_ascii_digit()
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a parameter's value may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    /// `min..=max` characters, anything but `\`, NUL, CR, LF.
    Str { min: u32, max: u32 },
    /// A user-defined name: a `Str` that also may not contain `/ \ : * ? " < > | & % + ! ' ;`.
    User { min: u32, max: u32 },
    /// A tenant: 1..80 of letters, digits, `_` and `-`.
    Tenant,
    /// Decimal digits without sign, `min..=max`.
    Int { min: u64, max: u64 },
    /// A number with at most two decimals, `0..=max_hundredths / 100`; kept in hundredths.
    Decimal { max_hundredths: u32 },
    /// Present means true; written without a value.
    Flag,
    /// The rest of the frame, in double quotes, backslashes and all (ER's FM).
    Quoted,
}

/// Characters a user-defined name (`ParamType::User`) may not contain, besides `\`.
pub const FORBIDDEN_IN_NAMES: &[u8] = b"/\\:*?\"<>|&%+!';";

impl ParamType {
    /// The type column of the protocol document.
    fn describe(&self) -> String {
        match *self {
            ParamType::Str { min, max } => format!("str {min}..{max}"),
            ParamType::User { min, max } => format!("user {min}..{max}"),
            ParamType::Tenant => "tenant 1..80".to_string(),
            ParamType::Int { min, max } => format!("int {min}..{max}"),
            ParamType::Decimal { max_hundredths } => {
                format!(
                    "decimal 0..{}.{:02}",
                    max_hundredths / 100,
                    max_hundredths % 100
                )
            }
            ParamType::Flag => "bool".to_string(),
            ParamType::Quoted => "quoted rest of frame".to_string(),
        }
    }
}

/// One row of a message's table.
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub code: Code,
    pub name: &'static str,
    pub ty: ParamType,
    pub required: bool,
    pub note: &'static str,
}

/// A check across parameters, beyond each one's own row.
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    /// TN (non-empty) or SI must be given: EC 120.
    TnOrSi,
    /// Exactly one of the two: neither is EC 30, both is EC 801 (on the second one given).
    ExactlyOne(Code, Code),
    /// The first may only be given together with the second (flag): EC 801.
    OnlyWith(Code, Code),
    /// At least one of these flags: the given EC.
    AnyOf(&'static [Code], ErrorCode),
}

/// Which way a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    FromServer,
}

/// Everything about one message code.
pub struct MessageSpec {
    pub code: Code,
    pub name: &'static str,
    pub direction: Direction,
    /// The SDMP 2.0 interface the message belongs to (`MA`, `CT`, `AG`, `CA`).
    pub interface: Code,
    pub summary: &'static str,
    /// In the order ozbus writes them.
    pub params: &'static [ParamSpec],
    pub rules: &'static [Rule],
    /// Builds the typed message from validated slots (saves a dispatch on the hot path).
    pub(crate) build: for<'a> fn(&Slots<'a>) -> Message<'a>,
}

impl fmt::Debug for MessageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageSpec")
            .field("code", &self.code)
            .field("name", &self.name)
            .field("direction", &self.direction)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// The most parameters any message has; validation keeps one slot per parameter on the stack.
pub const MAX_PARAMS: usize = 18;

impl MessageSpec {
    /// Position of a parameter in the table.
    #[inline]
    pub fn index_of(&self, code: Code) -> Option<usize> {
        self.params.iter().position(|p| p.code == code)
    }

    /// The parameter whose value runs to the end of the frame (ER's FM), if any.
    pub fn tail_param(&self) -> Option<Code> {
        self.params
            .iter()
            .find(|p| p.ty == ParamType::Quoted)
            .map(|p| p.code)
    }
}

/// The error codes and the tables of every message, as the generated section of the protocol
/// document (`docs/protocol.md`, checked by a test) and the output of `ozbus spec`.
pub fn markdown() -> String {
    let mut out = String::from("### Error codes\n\n| EC | meaning |\n|---|---|\n");
    for code in ErrorCode::ALL {
        let _ = writeln!(out, "| {} | {} |", code.number(), code.meaning());
    }
    out.push('\n');
    for spec in crate::messages::ALL_MESSAGES {
        render_message(spec, &mut out);
    }
    out
}

fn render_message(spec: &MessageSpec, out: &mut String) {
    let direction = match spec.direction {
        Direction::ToServer => "to ozbus",
        Direction::FromServer => "from ozbus",
    };
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "### {} — {} ({}, CG:{}:{})\n\n{}\n",
        spec.code,
        spec.name,
        direction,
        spec.interface,
        spec.code,
        spec.summary.trim()
    );
    if spec.params.is_empty() {
        out.push_str("No parameters.\n\n");
    } else {
        out.push_str("| code | name | type | mandatory | notes |\n|---|---|---|---|---|\n");
        for p in spec.params {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                p.code,
                p.name,
                p.ty.describe(),
                if p.required { "yes" } else { "" },
                p.note
            );
        }
        out.push('\n');
    }
    for rule in spec.rules {
        let _ = match *rule {
            Rule::TnOrSi => writeln!(out, "- TN (not empty) or SI must be given: EC 120."),
            Rule::ExactlyOne(a, b) => writeln!(
                out,
                "- Exactly one of {a} and {b}: neither is EC 30, both is EC 801."
            ),
            Rule::OnlyWith(a, b) => writeln!(out, "- {a} only together with {b}: EC 801."),
            Rule::AnyOf(codes, ec) => {
                let names: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
                writeln!(
                    out,
                    "- At least one of {}: EC {}.",
                    names.join(", "),
                    ec.number()
                )
            }
        };
    }
    if !spec.rules.is_empty() {
        out.push('\n');
    }
}
