//! Error codes (EC) and rejections.
//!
//! A [`Rejection`] is the value every check in ozbus returns when it refuses a message: the EC a
//! client will see in the ER and a short reason for a person reading a log. Turning it into ER
//! bytes is the formatter's job (`format::Er::for_frame`), so there is exactly one place that
//! decides what an ER looks like.

use std::borrow::Cow;
use std::fmt;

/// Every EC that ozbus sends in an ER.
///
/// 30, 120, 406, 803 are the dialer's own numbers; the others are ozbus's, in ranges the dialer
/// leaves free (the protocol document lists them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A mandatory parameter (other than TX) is missing.
    MissingParameter,
    /// Neither SI nor TN given where one is required.
    MissingTnOrSi,
    /// The telephony layer sent a cause it may not send, or one unknown under strict tables.
    InvalidCause,
    /// Agent outcome unknown under strict tables, or not allowed for this kind of call.
    AgentOutcomeNotAllowed,
    /// The agent has no call to complete or no preview to decline.
    NoCallForAgent,
    /// No call record (or no known outcome) matches the CN and SI/TN given.
    NoSuchCall,
    /// A call record with this SI is already open in the tenant.
    DuplicateSession,
    /// The call is already dialing or connected and can no longer be removed.
    CallInProgress,
    /// The agent already has an open call.
    AgentBusy,
    /// Unknown message code.
    UnknownMessage,
    /// Parameter not defined for this message (unknown or redundant).
    UndefinedParameter,
    /// Parameter given twice.
    RepeatedParameter,
    /// Transaction identifier (TX) missing.
    MissingTransaction,
    /// Value length outside the parameter's range.
    BadLength,
    /// Value not a number, or a number outside the parameter's range.
    BadNumber,
    /// Forbidden character in a value.
    ForbiddenCharacter,
    /// Boolean parameter written with a value.
    FlagWithValue,
    /// EO asks for no outcome class.
    NoOutcomeClass,
    /// TX already names an active transaction.
    TransactionExists,
    /// No active transaction of that TX.
    NoSuchTransaction,
    /// Not authenticated, or the tenant may not do this.
    NotAuthorized,
    /// Unknown tenant.
    UnknownTenant,
    /// The store is out of space: nothing was accepted.
    StoreFull,
    /// A configured limit was reached (transactions per connection, persisted transactions per
    /// tenant, UA attempts per address).
    LimitReached,
    /// No node holds the call book now (nodes sharing a database), or this one lost it while
    /// deciding: nothing was done, and the message may be sent again.
    BookUnavailable,
    /// The store (the database nodes share) cannot be reached now: nothing was done, and the
    /// message may be sent again.
    StoreUnavailable,
    /// Frame longer than the configured maximum.
    FrameTooLong,
    /// Frame is not valid UTF-16.
    InvalidUtf16,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 28] = [
        ErrorCode::MissingParameter,
        ErrorCode::MissingTnOrSi,
        ErrorCode::InvalidCause,
        ErrorCode::AgentOutcomeNotAllowed,
        ErrorCode::NoCallForAgent,
        ErrorCode::NoSuchCall,
        ErrorCode::DuplicateSession,
        ErrorCode::CallInProgress,
        ErrorCode::AgentBusy,
        ErrorCode::UnknownMessage,
        ErrorCode::UndefinedParameter,
        ErrorCode::RepeatedParameter,
        ErrorCode::MissingTransaction,
        ErrorCode::BadLength,
        ErrorCode::BadNumber,
        ErrorCode::ForbiddenCharacter,
        ErrorCode::FlagWithValue,
        ErrorCode::NoOutcomeClass,
        ErrorCode::TransactionExists,
        ErrorCode::NoSuchTransaction,
        ErrorCode::NotAuthorized,
        ErrorCode::UnknownTenant,
        ErrorCode::StoreFull,
        ErrorCode::LimitReached,
        ErrorCode::BookUnavailable,
        ErrorCode::StoreUnavailable,
        ErrorCode::FrameTooLong,
        ErrorCode::InvalidUtf16,
    ];

    /// The number sent as EC.
    pub const fn number(self) -> u16 {
        match self {
            ErrorCode::MissingParameter => 30,
            ErrorCode::MissingTnOrSi => 120,
            ErrorCode::InvalidCause => 406,
            ErrorCode::AgentOutcomeNotAllowed => 407,
            ErrorCode::NoCallForAgent => 410,
            ErrorCode::NoSuchCall => 411,
            ErrorCode::DuplicateSession => 412,
            ErrorCode::CallInProgress => 413,
            ErrorCode::AgentBusy => 414,
            ErrorCode::UnknownMessage => 800,
            ErrorCode::UndefinedParameter => 801,
            ErrorCode::RepeatedParameter => 802,
            ErrorCode::MissingTransaction => 803,
            ErrorCode::BadLength => 804,
            ErrorCode::BadNumber => 805,
            ErrorCode::ForbiddenCharacter => 806,
            ErrorCode::FlagWithValue => 807,
            ErrorCode::NoOutcomeClass => 808,
            ErrorCode::TransactionExists => 809,
            ErrorCode::NoSuchTransaction => 810,
            ErrorCode::NotAuthorized => 811,
            ErrorCode::UnknownTenant => 812,
            ErrorCode::StoreFull => 813,
            ErrorCode::LimitReached => 814,
            ErrorCode::BookUnavailable => 815,
            ErrorCode::StoreUnavailable => 816,
            ErrorCode::FrameTooLong => 850,
            ErrorCode::InvalidUtf16 => 851,
        }
    }

    /// The code for an EC number, if ozbus knows it.
    pub fn from_number(number: u16) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|code| code.number() == number)
    }

    /// One line on what the code means, for the protocol document and for logs.
    pub const fn meaning(self) -> &'static str {
        match self {
            ErrorCode::MissingParameter => "a mandatory parameter (other than TX) is missing",
            ErrorCode::MissingTnOrSi => "neither SI nor TN given where one is required",
            ErrorCode::InvalidCause => {
                "invalid cause (CA): one only ozbus generates, or unknown under strict outcome tables"
            }
            ErrorCode::AgentOutcomeNotAllowed => {
                "agent outcome (AO) unknown under strict tables, or of a category forbidden for the call"
            }
            ErrorCode::NoCallForAgent => "the agent has no call to complete or no preview to decline",
            ErrorCode::NoSuchCall => "no call record (or no call with a known outcome) matches CN and SI/TN",
            ErrorCode::DuplicateSession => "a call record with this SI is already open in the tenant",
            ErrorCode::CallInProgress => "the call is already dialing or connected and cannot be removed",
            ErrorCode::AgentBusy => "the agent already has an open call",
            ErrorCode::UnknownMessage => "unknown message code",
            ErrorCode::UndefinedParameter => "parameter not defined for this message",
            ErrorCode::RepeatedParameter => "parameter given twice",
            ErrorCode::MissingTransaction => "transaction identifier (TX) missing",
            ErrorCode::BadLength => "value length outside the parameter's range",
            ErrorCode::BadNumber => "value not a number, or outside the parameter's range",
            ErrorCode::ForbiddenCharacter => "forbidden character in a value",
            ErrorCode::FlagWithValue => "boolean parameter written with a value",
            ErrorCode::NoOutcomeClass => "EO asks for none of SO, FO and MO",
            ErrorCode::TransactionExists => "TX already names an active transaction",
            ErrorCode::NoSuchTransaction => "no active transaction of that TX",
            ErrorCode::NotAuthorized => "not authenticated, or the tenant may not do this",
            ErrorCode::UnknownTenant => "unknown tenant (TD)",
            ErrorCode::StoreFull => {
                "the store is out of space: nothing was accepted; retry later"
            }
            ErrorCode::LimitReached => "a configured limit was reached",
            ErrorCode::BookUnavailable => {
                "no node holds the call book now: nothing was done; send again"
            }
            ErrorCode::StoreUnavailable => {
                "the store cannot be reached now: nothing was done; send again"
            }
            ErrorCode::FrameTooLong => "frame longer than the configured maximum",
            ErrorCode::InvalidUtf16 => "frame is not valid UTF-16",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EC{}", self.number())
    }
}

/// Why a message was refused: the EC and a short reason (the ER's MS).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {reason}")]
pub struct Rejection {
    pub code: ErrorCode,
    pub reason: Cow<'static, str>,
}

impl Rejection {
    pub fn new(code: ErrorCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            code,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_and_round_trip() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_number(code.number()), Some(code));
        }
        let mut numbers: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.number()).collect();
        numbers.dedup();
        assert_eq!(
            numbers.len(),
            ErrorCode::ALL.len(),
            "ALL must be sorted and unique"
        );
        assert!(numbers.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ErrorCode::from_number(1), None);
    }
}
