//! Users, what each may do, and who is locked out: the rules of "Users and what they may do"
//! in the specification, applied by the core for every front end.
//!
//! Owns the user directory (from `[[users]]`), password verification (argon2id PHC strings),
//! the lock-out counters (per user and per source address, bounded in memory), and the
//! privilege and tenant checks. Never: plain passwords at rest, a password in a log line, or a
//! refusal that says whether another tenant has a TX, PS or call.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use bytes::Bytes;
use parking_lot::Mutex;
use sdmp::{ErrorCode, Rejection};
use tokio::sync::Semaphore;

use crate::config::{AuthConfig, UserConfig};

/// The tenant whose users act for every tenant.
pub const LANDLORD: &[u8] = b"landlord";

/// Privilege flags (PG).
pub mod pg {
    pub const AGENT: u16 = 1;
    pub const SUPERVISOR: u16 = 2;
    pub const CONFIGURATION: u16 = 4;
    pub const SYSTEM: u16 = 8;
    pub const SUPER_USER: u16 = 256;
    /// Every flag ozbus knows.
    pub const ALL: u16 = AGENT | SUPERVISOR | CONFIGURATION | SYSTEM | SUPER_USER;
}

/// Source addresses whose failures are remembered at most; past that, entries that lock
/// nobody out are dropped first, then the oldest, so no client can grow the table.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Verifications running at once: argon2 takes tens of milliseconds of one core and 19 MiB
/// each; more UAs than this wait their turn instead of exhausting the machine.
const VERIFY_SLOTS: usize = 4;

/// Who a connection authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Bytes,
    pub name: Bytes,
    pub pg: u16,
}

impl Principal {
    pub fn is_landlord(&self) -> bool {
        self.tenant == LANDLORD
    }

    fn has(&self, flags: u16) -> bool {
        self.pg & (flags | pg::SUPER_USER) != 0
    }
}

/// What UA came to: the RS of the US, and the principal when it is 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Authenticated(Principal),
    NoSuchUser,
    BadPassword,
    BadlyFormed,
    LockedOut,
}

impl Status {
    /// The RS of the US that answers the UA.
    pub fn rs(&self) -> u16 {
        match self {
            Status::Authenticated(_) => 0,
            Status::NoSuchUser => 1,
            Status::BadPassword => 2,
            Status::BadlyFormed => 3,
            Status::LockedOut => 5,
        }
    }
}

/// A UA's parameters.
#[derive(Clone, Copy, Debug)]
pub struct Credentials<'a> {
    pub tenant: Option<&'a [u8]>,
    pub an: Option<&'a [u8]>,
    pub qi: Option<&'a [u8]>,
    pub pw: Option<&'a [u8]>,
}

/// What a request asks to do, as far as privileges go.
#[derive(Clone, Copy, Debug)]
pub enum Act<'a> {
    /// MC, RN, LC, CF: the campaign and telephony layers (system).
    Report,
    /// TC or BD for the agent `an`: that agent, or the system.
    Agent { an: &'a [u8] },
    /// EO (with XR or not), EE, XA, UO: supervisors.
    Supervise,
}

struct User {
    hash: String,
    pg: u16,
}

/// Consecutive failures of one user or address, and until when it is locked out.
#[derive(Clone, Copy, Debug, Default)]
struct Failures {
    count: u32,
    last_ms: i64,
    locked_until_ms: i64,
}

#[derive(Default)]
struct Lockouts {
    users: HashMap<(Bytes, Bytes), Failures>,
    addresses: HashMap<IpAddr, Failures>,
}

/// The configured users and the lock-out state; see the module docs.
pub struct Directory {
    users: HashMap<(Bytes, Bytes), User>,
    tenants: HashSet<Bytes>,
    failures_allowed: u32,
    lockout_ms: i64,
    lockouts: Mutex<Lockouts>,
    verifying: Arc<Semaphore>,
    /// The hash of a password nobody has, with the parameters of `ozbus user hash`: an unknown
    /// user's UA verifies against it, so it costs what a known user's does.
    dummy_hash: String,
}

/// A configuration the directory refuses, with what to fix.
#[derive(Debug, thiserror::Error)]
#[error("[[users]] {tenant}/{name}: {problem}")]
pub struct UserError {
    tenant: String,
    name: String,
    problem: String,
}

impl Directory {
    pub fn new(users: &[UserConfig], auth: &AuthConfig) -> Result<Directory, UserError> {
        let mut directory = Directory {
            users: HashMap::new(),
            tenants: auth
                .tenants
                .iter()
                .map(|t| Bytes::copy_from_slice(t.as_bytes()))
                .collect(),
            failures_allowed: auth.lockout_failures.max(1),
            lockout_ms: i64::try_from(auth.lockout_time.as_millis()).unwrap_or(i64::MAX),
            lockouts: Mutex::new(Lockouts::default()),
            verifying: Arc::new(Semaphore::new(VERIFY_SLOTS)),
            dummy_hash: String::new(),
        };
        for user in users {
            let problem = |problem: &str| UserError {
                tenant: user.tenant.clone(),
                name: user.name.clone(),
                problem: problem.to_string(),
            };
            if !valid_tenant(user.tenant.as_bytes()) {
                return Err(problem(
                    "the tenant must be 1 to 80 letters, digits, '_' or '-'",
                ));
            }
            if !valid_name(user.name.as_bytes()) {
                return Err(problem(
                    "the name must be 1 to 80 characters without / \\ : * ? \" < > | & % + ! ' ;",
                ));
            }
            match PasswordHash::new(&user.password_hash) {
                Ok(hash) if hash.algorithm.as_str() == "argon2id" => {}
                Ok(_) => return Err(problem("password_hash must be an argon2id hash")),
                Err(_) => {
                    return Err(problem(
                        "password_hash is not a PHC string (make one with `ozbus user hash`)",
                    ))
                }
            }
            if user.pg & !pg::ALL != 0 || user.pg == 0 {
                return Err(problem(
                    "pg must combine 1 (agent), 2 (supervisor), 4 (configuration), 8 (system), 256 (super user)",
                ));
            }
            let tenant = Bytes::copy_from_slice(user.tenant.as_bytes());
            let key = (tenant.clone(), Bytes::copy_from_slice(user.name.as_bytes()));
            let entry = User {
                hash: user.password_hash.clone(),
                pg: user.pg,
            };
            if directory.users.insert(key, entry).is_some() {
                return Err(problem("configured twice"));
            }
            directory.tenants.insert(tenant);
        }
        if directory.enabled() {
            // Whatever it matches never authenticates anyone: an unknown user stays unknown.
            directory.dummy_hash = hash_password(b"no such user").map_err(|error| UserError {
                tenant: String::new(),
                name: String::new(),
                problem: format!("hashing: {error}"),
            })?;
        }
        Ok(directory)
    }

    /// Whether any user is configured: then every connection must authenticate.
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether a landlord may name `tenant` with TD.
    pub fn knows_tenant(&self, tenant: &[u8]) -> bool {
        self.tenants.contains(tenant)
    }

    /// Checks a UA. Costs one argon2 verification unless badly formed or locked out, the same
    /// for a user that does not exist as for a wrong password.
    pub async fn authenticate(
        &self,
        credentials: Credentials<'_>,
        peer: IpAddr,
        now_ms: i64,
    ) -> Status {
        let (Some(tenant), Some(name), Some(password)) =
            (credentials.tenant, name_of(&credentials), credentials.pw)
        else {
            return Status::BadlyFormed;
        };
        let key = (Bytes::copy_from_slice(tenant), Bytes::copy_from_slice(name));
        if self.locked_out(&key, peer, now_ms) {
            return Status::LockedOut;
        }
        let user = self.users.get(&key);
        let hash = user.map_or(&self.dummy_hash, |u| &u.hash).clone();
        let password = password.to_vec();
        let matches = {
            // The semaphore is never closed.
            let _slot = self.verifying.clone().acquire_owned().await;
            tokio::task::spawn_blocking(move || verify(&hash, &password))
                .await
                .unwrap_or(false)
        };
        match user {
            Some(user) if matches => {
                self.succeeded(&key, peer);
                Status::Authenticated(Principal {
                    tenant: key.0,
                    name: key.1,
                    pg: user.pg,
                })
            }
            Some(_) => {
                self.failed(Some(key), peer, now_ms);
                Status::BadPassword
            }
            None => {
                // Failures of names nobody has count for the address only: an unbounded
                // supply of names must not grow the table.
                self.failed(None, peer, now_ms);
                Status::NoSuchUser
            }
        }
    }

    fn locked_out(&self, key: &(Bytes, Bytes), peer: IpAddr, now_ms: i64) -> bool {
        let lockouts = self.lockouts.lock();
        let locked = |f: Option<&Failures>| f.is_some_and(|f| f.locked_until_ms > now_ms);
        locked(lockouts.users.get(key)) || locked(lockouts.addresses.get(&peer))
    }

    fn succeeded(&self, key: &(Bytes, Bytes), peer: IpAddr) {
        let mut lockouts = self.lockouts.lock();
        lockouts.users.remove(key);
        lockouts.addresses.remove(&peer);
    }

    fn failed(&self, key: Option<(Bytes, Bytes)>, peer: IpAddr, now_ms: i64) {
        let mut lockouts = self.lockouts.lock();
        let (allowed, lockout_ms) = (self.failures_allowed, self.lockout_ms);
        if let Some(key) = key {
            let user = lockouts.users.entry(key.clone()).or_default();
            if count_failure(user, allowed, lockout_ms, now_ms) {
                tracing::warn!(
                    target: "ozbus::audit",
                    tenant = %String::from_utf8_lossy(&key.0),
                    user = %String::from_utf8_lossy(&key.1),
                    %peer,
                    "user locked out after {allowed} failed authentications"
                );
                metrics::counter!("ozbus_lockouts_total", "of" => "user").increment(1);
            }
        }
        if lockouts.addresses.len() >= MAX_TRACKED_ADDRESSES
            && !lockouts.addresses.contains_key(&peer)
        {
            evict(&mut lockouts.addresses, now_ms);
        }
        let address = lockouts.addresses.entry(peer).or_default();
        if count_failure(address, allowed, lockout_ms, now_ms) {
            tracing::warn!(
                target: "ozbus::audit",
                %peer,
                "source address locked out after {allowed} failed authentications"
            );
            metrics::counter!("ozbus_lockouts_total", "of" => "address").increment(1);
        }
    }

    /// Whether `principal` (none: not authenticated) may do `act`; EC 811 otherwise. Without
    /// users configured, everyone may do everything.
    pub fn authorize(&self, principal: Option<&Principal>, act: Act<'_>) -> Result<(), Rejection> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(principal) = principal else {
            return Err(refused("authenticate first (UA)"));
        };
        let allowed = match act {
            Act::Report => principal.has(pg::SYSTEM),
            Act::Agent { an } => {
                principal.has(pg::SYSTEM) || (principal.has(pg::AGENT) && an == principal.name)
            }
            Act::Supervise => principal.has(pg::SUPERVISOR),
        };
        if allowed {
            Ok(())
        } else {
            Err(refused(match act {
                Act::Report => "this user may not report calls (system privilege needed)",
                Act::Agent { .. } if principal.has(pg::AGENT) => {
                    "an agent may complete or decline only its own calls"
                }
                Act::Agent { .. } => "this user may not act for agents",
                Act::Supervise => {
                    "this user may not subscribe or correct (supervisor privilege needed)"
                }
            }))
        }
    }
}

/// EC 811 with its reason.
pub fn refused(reason: &'static str) -> Rejection {
    Rejection::new(ErrorCode::NotAuthorized, reason)
}

/// The name a UA gives: AN, or QI (a user id, which ozbus takes as the user's name). Both
/// given and different: badly formed.
fn name_of<'a>(credentials: &Credentials<'a>) -> Option<&'a [u8]> {
    match (credentials.an, credentials.qi) {
        (Some(an), Some(qi)) if an != qi => None,
        (an, qi) => an.or(qi),
    }
}

/// Counts one failure; true when it locks out (and resets the count).
fn count_failure(failures: &mut Failures, allowed: u32, lockout_ms: i64, now_ms: i64) -> bool {
    if now_ms.saturating_sub(failures.last_ms) >= lockout_ms {
        failures.count = 0;
    }
    failures.count += 1;
    failures.last_ms = now_ms;
    if failures.count >= allowed {
        failures.count = 0;
        failures.locked_until_ms = now_ms.saturating_add(lockout_ms);
        return true;
    }
    false
}

/// Makes room in a full address table: entries that lock nobody out go first, then the one
/// whose last failure is oldest.
fn evict(addresses: &mut HashMap<IpAddr, Failures>, now_ms: i64) {
    addresses.retain(|_, f| f.locked_until_ms > now_ms);
    if addresses.len() >= MAX_TRACKED_ADDRESSES {
        if let Some(oldest) = addresses
            .iter()
            .min_by_key(|(_, f)| f.last_ms)
            .map(|(a, _)| *a)
        {
            addresses.remove(&oldest);
        }
    }
}

fn verify(hash: &str, password: &[u8]) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok())
}

/// A PHC string for `password` (argon2id, default parameters, a random salt).
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use password_hash::rand_core::OsRng;
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password, &salt)?
        .to_string())
}

fn valid_tenant(tenant: &[u8]) -> bool {
    (1..=80).contains(&tenant.len())
        && tenant
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

fn valid_name(name: &[u8]) -> bool {
    (1..=80).contains(&name.len()) && !name.iter().any(|c| b"/\\:*?\"<>|&%+!';".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password(b"secret").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify(&hash, b"secret"));
        assert!(!verify(&hash, b"Secret"));
        assert!(!verify("not a hash", b"secret"));
    }

    #[test]
    fn failures_lock_out_after_the_allowed_number_and_are_forgotten_after_the_lockout_time() {
        let mut f = Failures::default();
        assert!(!count_failure(&mut f, 3, 1000, 10_000));
        assert!(!count_failure(&mut f, 3, 1000, 10_100));
        assert!(count_failure(&mut f, 3, 1000, 10_200));
        assert_eq!(f.locked_until_ms, 11_200);
        // Two failures, then a quiet spell: the count starts again.
        assert!(!count_failure(&mut f, 3, 1000, 20_000));
        assert!(!count_failure(&mut f, 3, 1000, 20_500));
        assert!(!count_failure(&mut f, 3, 1000, 21_600));
        assert!(!count_failure(&mut f, 3, 1000, 21_700));
        assert!(count_failure(&mut f, 3, 1000, 21_800));
    }

    #[test]
    fn a_full_address_table_drops_what_locks_nobody_out() {
        let mut table = HashMap::new();
        for i in 0..MAX_TRACKED_ADDRESSES as u32 {
            let failures = Failures {
                count: 1,
                last_ms: i64::from(i),
                locked_until_ms: if i == 7 { 1_000_000 } else { 0 },
            };
            table.insert(IpAddr::from(i.to_be_bytes()), failures);
        }
        evict(&mut table, 500_000);
        assert_eq!(table.len(), 1);
        assert!(table.contains_key(&IpAddr::from(7u32.to_be_bytes())));
    }
}
