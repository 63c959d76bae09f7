//! Who an HTTP request acts as: HTTP Basic credentials checked by the core as a UA would be,
//! or a bearer token issued for a user; without users configured, anyone (in the tenant the
//! report names).
//!
//! Owns the parsing of `Authorization` headers, the [`Caller`] extractor the handlers that act
//! as someone take (the WebSocket and the dashboard page call [`session`] themselves: the one
//! after its upgrade check, the other only with users configured), and the bearer tokens
//! (random, kept in memory only, each good for `[http] token_ttl`, at most `[http] max_tokens`
//! at once). Never: checks a password or a privilege itself (the core does, with its rate
//! limit and lock-outs), keeps a password, or writes a token or a password to a log.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::{Extension, Json};
use base64::Engine as _;
use parking_lot::Mutex;
use password_hash::rand_core::{OsRng, RngCore};
use sdmp::{decode_request, ErrorCode, Message, Rejection};
use serde::Serialize;
use utoipa::ToSchema;

use super::problem::Problem;
use super::{Http, Peer};
use crate::core::auth::Status;
use crate::core::{now_ms, Session};

/// Bearer tokens issued and not yet expired.
pub struct Tokens {
    issued: Mutex<HashMap<String, Issued>>,
    ttl: Duration,
    max: usize,
}

struct Issued {
    session: Session,
    expires: Instant,
}

impl Tokens {
    pub fn new(ttl: Duration, max: usize) -> Tokens {
        Tokens {
            issued: Mutex::new(HashMap::new()),
            ttl,
            max,
        }
    }

    /// A new token acting as `session`'s user; EC 814 when `max` tokens are valid already.
    fn issue(&self, session: Session) -> Result<String, Rejection> {
        let mut random = [0u8; 32];
        OsRng.fill_bytes(&mut random);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
        let now = Instant::now();
        let mut issued = self.issued.lock();
        if issued.len() >= self.max {
            issued.retain(|_, t| t.expires > now);
        }
        if issued.len() >= self.max {
            metrics::counter!("ozbus_limit_hits_total", "limit" => "http_tokens").increment(1);
            return Err(Rejection::new(
                ErrorCode::LimitReached,
                "too many tokens are valid at once; try again later",
            ));
        }
        issued.insert(
            token.clone(),
            Issued {
                session,
                expires: now + self.ttl,
            },
        );
        Ok(token)
    }

    fn session(&self, token: &str) -> Option<Session> {
        let mut issued = self.issued.lock();
        match issued.get(token) {
            Some(t) if t.expires > Instant::now() => Some(t.session.clone()),
            Some(_) => {
                issued.remove(token);
                None
            }
            None => None,
        }
    }

    fn revoke(&self, token: &str) -> bool {
        self.issued.lock().remove(token).is_some()
    }
}

/// What an `Authorization` header says.
enum Credentials<'a> {
    None,
    Basic(&'a str),
    Bearer(&'a str),
}

fn credentials(headers: &HeaderMap) -> Result<Credentials<'_>, Problem> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Credentials::None);
    };
    let value = value
        .to_str()
        .map_err(|_| Problem::unauthenticated("the Authorization header is not ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        Ok(Credentials::Basic(rest.trim()))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Credentials::Bearer(rest.trim()))
    } else {
        Err(Problem::unauthenticated(
            "unsupported authorization scheme: use Basic or Bearer",
        ))
    }
}

/// The session a request acts in: its credentials' user, or (without users configured and
/// without credentials) nobody in particular, like an SDMP connection that sent no UA.
pub async fn session(http: &Http, headers: &HeaderMap, peer: &Peer) -> Result<Session, Problem> {
    match credentials(headers)? {
        Credentials::None if http.core().requires_authentication() => {
            Err(Problem::unauthenticated(
                "authentication required: HTTP Basic (user@tenant and password) or a bearer token from POST /v1/tokens",
            ))
        }
        Credentials::None => Ok(http.core().session(peer.addr)),
        Credentials::Basic(encoded) => basic(http, encoded, peer.addr).await,
        Credentials::Bearer(token) => http
            .tokens
            .session(token)
            .ok_or_else(|| Problem::unauthenticated("unknown or expired bearer token")),
    }
}

/// The session a request acts in ([`session`]), as an extractor: a handler that takes it runs
/// only for a request whose credentials the core accepted; any other is answered with the
/// problem (401, or 429 for too many attempts).
pub struct Caller(pub Session);

impl FromRequestParts<Arc<Http>> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, http: &Arc<Http>) -> Result<Caller, Problem> {
        // Every connection's requests carry their peer (`serve_connection`).
        let peer = parts.extensions.get::<Peer>().copied().ok_or_else(|| {
            Problem::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "a request without its peer",
            )
        })?;
        session(http, &parts.headers, &peer).await.map(Caller)
    }
}

/// HTTP Basic: `name@tenant` and the password, checked by the core as the UA
/// `UA\AN<name>\PW<password>\TD<tenant>` would be (same rate limit, lock-out and audit log).
async fn basic(http: &Http, encoded: &str, peer: SocketAddr) -> Result<Session, Problem> {
    let badly_formed =
        |why: &str| Problem::unauthenticated(format!("badly formed credentials: {why}"));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| badly_formed("not base64"))?;
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| badly_formed("no colon between user and password"))?;
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    let at = user
        .iter()
        .rposition(|&b| b == b'@')
        .ok_or_else(|| badly_formed("name the user as name@tenant"))?;
    let (name, tenant) = (&user[..at], &user[at + 1..]);
    if [name, tenant, password]
        .iter()
        .any(|part| part.iter().any(|b| matches!(b, b'\\' | 0 | b'\r' | b'\n')))
    {
        return Err(badly_formed("a backslash, NUL, CR or LF"));
    }
    let mut frame = b"UA\\AN".to_vec();
    frame.extend_from_slice(name);
    frame.extend_from_slice(b"\\PW");
    frame.extend_from_slice(password);
    frame.extend_from_slice(b"\\TD");
    frame.extend_from_slice(tenant);
    let envelope = decode_request(&frame).map_err(|rejection| badly_formed(&rejection.reason))?;
    let Message::Ua(ua) = envelope.message else {
        return Err(badly_formed("not a user"));
    };
    let td = envelope.message.common().td;
    let mut session = http.core().session(peer);
    let status = http
        .core()
        .authenticate(&mut session, &ua, td, now_ms())
        .await
        .map_err(|rejection| Problem::of(&rejection))?;
    match status {
        Status::Authenticated(_) => Ok(session),
        Status::NoSuchUser => Err(Problem::unauthenticated(
            "no such user in that tenant (RS 1)",
        )),
        Status::BadPassword => Err(Problem::unauthenticated("wrong password (RS 2)")),
        Status::BadlyFormed => Err(badly_formed("RS 3")),
        Status::LockedOut => Err(Problem::unauthenticated(
            "the user or this address is locked out after failed attempts (RS 5)",
        )),
    }
}

/// A bearer token.
#[derive(Serialize, ToSchema)]
pub struct Token {
    /// Send it as `Authorization: Bearer <token>`.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds it stays valid.
    pub expires_in: u64,
}

/// Issues a bearer token for the user of the request's Basic credentials.
#[utoipa::path(
    post, path = "/v1/tokens", tag = "authentication",
    security(("basic" = [])),
    responses(
        (status = 200, description = "A token acting as that user, in that user's tenant, with that user's privileges", body = Token),
        (status = 401, description = "No Basic credentials, or they were refused (EC 811)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts from this address, or too many tokens (EC 814)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn issue(
    State(http): State<Arc<Http>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Result<Json<Token>, Problem> {
    let Credentials::Basic(encoded) = credentials(&headers)? else {
        return Err(Problem::unauthenticated(
            "a token is issued for HTTP Basic credentials (user@tenant and password)",
        ));
    };
    let session = basic(&http, encoded, peer.addr).await?;
    Ok(Json(Token {
        token: http.tokens.issue(session)?,
        token_type: "Bearer",
        expires_in: http.tokens.ttl.as_secs(),
    }))
}

/// Revokes the bearer token the request carries.
#[utoipa::path(
    delete, path = "/v1/tokens", tag = "authentication",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The token is revoked"),
        (status = 401, description = "No bearer token, or one unknown or expired (EC 811)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke(
    State(http): State<Arc<Http>>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    match credentials(&headers)? {
        Credentials::Bearer(token) if http.tokens.revoke(token) => Ok(StatusCode::NO_CONTENT),
        Credentials::Bearer(_) => Err(Problem::unauthenticated("unknown or expired bearer token")),
        _ => Err(Problem::unauthenticated("no bearer token to revoke")),
    }
}
