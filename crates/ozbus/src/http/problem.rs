//! Problem documents (RFC 9457): how the HTTP front end says no, and the one table from an
//! SDMP error code to an HTTP status.
//!
//! Owns the shape of every refusal this front end sends (`application/problem+json`, with the
//! EC and reason an SDMP client would have got in its ER), the EC → status table, and the
//! conversions every handler's `?` uses: a [`Rejection`] (counted as an ER), a read of the
//! store that failed (503), a path that cannot be read (400). Never: decides whether a request
//! is refused (the codec and the core do), or words a refusal differently from the ER (the
//! reason is the ER's MS, unchanged).

use axum::extract::rejection::PathRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sdmp::{ErrorCode, Rejection};
use serde::Serialize;
use utoipa::ToSchema;

use crate::core::ReadError;

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A refusal (RFC 9457). `ec` and `reason` are those of the SDMP ER the same request would
/// have got; they are absent only where no SDMP message was involved (an unknown path, a
/// store that failed).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "/docs#ec-412",
    "title": "a call record with this SI is already open in the tenant",
    "status": 409,
    "detail": "a call record with this SI is already open",
    "ec": 412,
    "reason": "a call record with this SI is already open"
}))]
pub struct Problem {
    /// A URI reference naming the kind of problem: `/docs#ec-<EC>` (the page lists every EC),
    /// `about:blank` when there is no EC.
    #[serde(rename = "type")]
    pub kind: String,
    /// What the EC means, the same for every problem of its kind.
    pub title: String,
    /// The HTTP status of the response.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request, for a person.
    pub detail: String,
    /// The SDMP error code (the ER's EC).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 999)]
    pub ec: Option<u16>,
    /// The reason the SDMP ER gives (its MS), word for word.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The line of a bulk request that is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub line: Option<usize>,
    /// Seconds to wait before trying again (also sent as `Retry-After`), for 429 and 503.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub retry_after: Option<u32>,
}

/// The HTTP status of each SDMP error code: the one table.
///
/// | EC | status | why |
/// |---|---|---|
/// | 30, 120, 800–808, 851 | 400 | the report cannot be read or breaks the message's syntax |
/// | 406, 407 | 422 | well formed, but a code the outcome tables do not allow |
/// | 411, 810 | 404 | no such call (or transaction) |
/// | 410, 412, 413, 414, 809 | 409 | the call's or the agent's state does not allow it |
/// | 811, 812 | 403 | the user may not do this, or not in that tenant |
/// | 813 | 503 | the store is out of space; retry later |
/// | 814 | 429 | a configured limit was reached |
/// | 850 | 413 | the request is larger than allowed |
///
/// One exception, outside the table: a request whose credentials are missing or wrong is 401,
/// with EC 811 (the same EC an unauthenticated SDMP connection gets).
pub fn status_of(ec: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match ec {
        MissingParameter | MissingTnOrSi | UnknownMessage | UndefinedParameter
        | RepeatedParameter | MissingTransaction | BadLength | BadNumber | ForbiddenCharacter
        | FlagWithValue | NoOutcomeClass | InvalidUtf16 => StatusCode::BAD_REQUEST,
        InvalidCause | AgentOutcomeNotAllowed => StatusCode::UNPROCESSABLE_ENTITY,
        NoSuchCall | NoSuchTransaction => StatusCode::NOT_FOUND,
        NoCallForAgent | DuplicateSession | CallInProgress | AgentBusy | TransactionExists => {
            StatusCode::CONFLICT
        }
        NotAuthorized | UnknownTenant => StatusCode::FORBIDDEN,
        StoreFull | BookUnavailable | StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        LimitReached => StatusCode::TOO_MANY_REQUESTS,
        FrameTooLong => StatusCode::PAYLOAD_TOO_LARGE,
    }
}

/// The statuses [`status_of`] can give, and 401: what a report may be refused with.
pub const REFUSAL_STATUSES: &[u16] = &[400, 401, 403, 404, 409, 413, 422, 429, 503];

impl Problem {
    /// The refusal the SDMP ER would carry, with the status of the table. Counted in
    /// `ozbus_rejections_total{ec}` like every ER.
    pub fn of(rejection: &Rejection) -> Problem {
        let problem = Problem::describe(rejection);
        crate::core::rejected(rejection.code);
        problem
    }

    /// The problem [`Problem::of`] makes, not counted: for a state reported, not a refusal.
    pub fn describe(rejection: &Rejection) -> Problem {
        Problem::with_status(rejection, status_of(rejection.code))
    }

    /// Missing or wrong credentials: 401, EC 811.
    pub fn unauthenticated(reason: impl Into<String>) -> Problem {
        let rejection = Rejection::new(ErrorCode::NotAuthorized, reason.into());
        crate::core::rejected(ErrorCode::NotAuthorized);
        Problem::with_status(&rejection, StatusCode::UNAUTHORIZED)
    }

    fn with_status(rejection: &Rejection, status: StatusCode) -> Problem {
        let ec = rejection.code.number();
        let retry_after = match rejection.code {
            // The store is checked for room every second; UA attempts are counted per minute.
            ErrorCode::StoreFull | ErrorCode::BookUnavailable | ErrorCode::StoreUnavailable => {
                Some(1)
            }
            ErrorCode::LimitReached => Some(60),
            _ => None,
        };
        Problem {
            kind: format!("/docs#ec-{ec}"),
            title: rejection.code.meaning().to_string(),
            status: status.as_u16(),
            detail: rejection.reason.to_string(),
            ec: Some(ec),
            reason: Some(rejection.reason.to_string()),
            line: None,
            retry_after,
        }
    }

    /// A problem without an SDMP error code.
    pub fn plain(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank".to_string(),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            ec: None,
            reason: None,
            line: None,
            retry_after: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// A refusal, as [`Problem::of`] makes it (counted).
impl From<Rejection> for Problem {
    fn from(rejection: Rejection) -> Problem {
        Problem::of(&rejection)
    }
}

/// A read that failed: its refusal, or a store that could not be read (503: a PostgreSQL store
/// may be back soon).
impl From<ReadError> for Problem {
    fn from(error: ReadError) -> Problem {
        match error {
            ReadError::Refused(rejection) => Problem::of(&rejection),
            ReadError::Store(error) => {
                tracing::warn!(%error, "a read of the store failed");
                let mut problem = Problem::plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the store could not be read; retry later",
                );
                problem.retry_after = Some(1);
                problem
            }
        }
    }
}

/// A path whose segments cannot be read (not UTF-8, say): 400, without an EC.
impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Problem {
        Problem::plain(StatusCode::BAD_REQUEST, rejection.body_text())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let unauthenticated = status == StatusCode::UNAUTHORIZED;
        let retry_after = self.retry_after;
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if unauthenticated {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"ozbus\", Bearer realm=\"ozbus\""),
            );
        }
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_a_status_the_documents_list() {
        for ec in ErrorCode::ALL {
            let status = status_of(ec).as_u16();
            assert!(REFUSAL_STATUSES.contains(&status), "{ec}: {status}");
            assert!((400..500).contains(&status) || status == 503, "{ec}");
        }
    }

    #[test]
    fn a_problem_carries_the_er_s_code_and_reason() {
        let problem = Problem::of(&Rejection::new(ErrorCode::NoSuchCall, "no call here"));
        assert_eq!(problem.status, 404);
        assert_eq!(
            (problem.ec, problem.reason.as_deref()),
            (Some(411), Some("no call here"))
        );
        assert_eq!(problem.kind, "/docs#ec-411");
        let response = problem.into_response();
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
