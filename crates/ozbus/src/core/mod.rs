//! The service core: the one way any front end changes the service's state.
//!
//! Owns the call book (`calls`), the transaction registry (`subs`) and the store, and offers one
//! method per thing a client can do: report a call event, correct an outcome, open (or
//! re-issue), end and acknowledge a transaction, release what a connection held; and the timed
//! work no client asks for (closing calls that are due, writing moved cursors, forgetting
//! persisted transactions past their TTL, also those only the store holds). Front ends
//! (`server` for SDMP; later HTTP, webhooks, relays) translate their protocol into these calls
//! and the results back; they hold no application logic and never touch the book, the registry
//! or the store themselves.
//!
//! The commit-order rule, kept by structure: each method computes its effects under the lock
//! of the state that orders them (the book's or the registry's) and submits them to the store
//! before releasing that lock. Batches commit in submission order, so the store applies every
//! change in the order the state was changed, whichever task computed it: a lazy cursor write
//! computed before an acknowledged one also commits before it, an expiry's delete before the
//! re-issue that follows it. (The store adds its own guard: a cursor only moves back when a
//! client asks with XR.) Submitting never blocks: it queues for the writer thread.
//!
//! Out of space: when the store cannot write for lack of space, ingestion is refused (EC 813)
//! and everything else goes on. Reports and UO are refused up front while the store is full
//! ([`Store::is_full`]: from the failed write until the writer finds room again, which it
//! checks every second, so ingestion resumes by itself). The call book, though, changes
//! before its batch commits; a report whose batch then fails for space has changed the book
//! and nothing else. The store then fails every later batch of call records or outcomes
//! untried (its fence; they may build on that change), and the core rebuilds the book from the
//! store's records (`resync_book`): under the book's lock it stops applying reports and asks
//! the store for its records, queued behind every batch already submitted, then restores the
//! book from them. So after a failure the book is again exactly what the store holds, as it
//! would be after a restart; what failed was refused (its ER says so) and is gone from both.
//! The transaction registry is not rebuilt: what it holds is right, only not yet stored, so
//! the failed rows are written again ([`Registry::resave`]): lazily with the next cursor
//! flush, or, for a request waiting for its MV (EO, EE, XA with TK), at once once there is
//! room, the MV following that commit. Any other failed commit stops the service.
//!
//! Persisted transactions are loaded on demand (see `subs`): a request that may name one the
//! registry has not loaded asks it what to look up, reads the store with no lock held, then
//! under the registry's lock loads what it found and decides (looking up again when the
//! registry says the rows may be outdated). Every batch of registry mutations that deletes or
//! releases a persisted transaction, or fails, is reported back to the registry once it
//! settles ([`Registry::settled`]), so that it knows which deletes are still in flight (and, on
//! a store shared by nodes, when a released one may leave memory).
//!
//! Several nodes (a store [`shared_by_nodes`](crate::store::Backend::shared_by_nodes)): an EO
//! the registry cannot decide from memory also asks the store whether another node has its TX
//! open, and for a new persisted one how many the tenant has (`check_other_nodes`); and
//! `follow_owners` keeps this node from delivering a persisted transaction another node owns:
//! deliveries of persisted transactions pause while the store cannot hear the other nodes,
//! and every takeover heard, and everything held once the store hears again, is checked against
//! the store (`check_owners`, after a commit of everything submitted before, so that a takeover
//! of this node's own in flight is not mistaken for another node's); what another node owns
//! now ends here with EF.
//!
//! Exactly once (XK): a call report or UO that carries an idempotency key is applied only if
//! the key is unknown in its tenant, and the key is remembered in the batch of its effect, so
//! that the store never holds the one without the other; with it, the store keeps the seq the
//! batch appended. A re-send under a key whose message is committed has no effect and gets
//! its MV, its ticket resolving with the first message's seq (from memory or the store); one
//! under a key whose message is in flight waits for that commit. Memory holds only keys in
//! flight and a bounded set of recent ones; the rest are read from the store with no lock held
//! (`keys` explains why no key committed meanwhile can be missed).
//!
//! Reads go through the core too, without the book's or the registry's lock held while the
//! store answers: `reads` (pages of outcomes, a call's record and outcomes, with the tenant
//! rules of an EO; a session of its own for each stream a front end opens) and `operations`
//! (the transactions list, ending one as an operator, the gauges of `/metrics`), and
//! `activity` (outcome rates, latest outcomes and refusals for operators' screens, counted by a
//! follower of the log as outcomes commit).
//!
//! Never: sockets, SDMP framing or encoding of replies, or waiting for a commit while holding
//! a lock. What a front end must wait for comes back as a [`CommitTicket`].

mod activity;
pub mod auth;
mod holder;
mod keys;
mod operations;
mod reads;

pub use activity::{rejected, CampaignRate, RejectionCount, StoreHealth, Summary, WINDOW_SECONDS};
pub use operations::{TransactionInfo, TransactionPage, LIST_MAX};
pub use reads::{CallHistory, ReadError};
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use parking_lot::Mutex;
use sdmp::{Dialect, Eo, ErrorCode, Message, Rejection, Ua, Uo};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::auth::{Act, Credentials, Directory, Principal, Status};
use self::keys::{Keys, Mark, Recheck};
use crate::calls::{CallBook, OutcomeTables};
use crate::config::Config;
use crate::outbound::{Budget, Outbound};
use crate::store::{
    BookHolder, CommitTicket, Mutation, OwnerChange, PersistedTransaction, Store, StoreError,
    NODE_USER,
};
use crate::subs::{
    deliver, Ended, Limits, Lookup, Open, Persisting, Registry, Subscription, TransactionKey,
};

/// The tenant of requests without TD, and the TX namespace of an unauthenticated connection.
pub const DEFAULT_TENANT: &[u8] = b"default";

/// The longest the call sweep sleeps when no call is due, so a clock that jumps is noticed.
const SWEEP_IDLE: Duration = Duration::from_secs(1);
/// How often moved cursors of persisted transactions are written, and TTLs checked.
const CURSOR_FLUSH: Duration = Duration::from_millis(500);
/// While the store is full, how often a write waiting for room checks whether there is.
const ROOM_CHECK: Duration = Duration::from_millis(250);
/// Most persisted transactions only the store holds that one cursor flush reads and forgets for
/// the persist TTL: a long backlog of them goes a bounded step at a time.
const EXPIRE_STEP: usize = 5_000;
/// Rows one cursor flush reads of the one pass that finds those held when the service last
/// stopped (see [`Store::held_at_stop`]).
const HELD_AT_STOP_STEP: usize = 20_000;
/// On a store shared by nodes, where holders can go while this node runs, the pass for rows
/// held by holders that are gone starts again this long after it ended.
const HELD_PASS_AGAIN: Duration = Duration::from_secs(5);

/// What a lookup of persisted transactions found: the registry's question and the store's rows.
type Found = Option<(Lookup, Vec<PersistedTransaction>)>;

/// What a cursor flush found due for the persist TTL among the transactions only the store
/// holds, and where the pass for those held at the last stop goes on (if it took a step).
struct Due {
    found: Found,
    held_at_stop: Option<Option<i64>>,
}

/// The refusal of ingestion while the store is out of space (EC 813), counted.
fn store_full() -> Rejection {
    metrics::counter!("ozbus_store_full_refused_total").increment(1);
    Rejection::new(
        ErrorCode::StoreFull,
        "the store is out of space: nothing was accepted; retry later",
    )
}

/// What a front end does about a request whose commit failed.
#[derive(Debug)]
pub enum CommitFailure {
    /// Refuse it with this rejection: nothing of it was done. EC 813 when the store was out
    /// of space, EC 815 when this node lost the call book while deciding it, or the refusal
    /// of the node that holds the book, for a report forwarded there.
    Refuse(Rejection),
    /// Answer nothing, and end the conversation (SDMP: close the connection): a report
    /// forwarded to the book's holder got no answer before the link broke, so whether it took
    /// effect is unknown; its sender may send it again (safely with XK).
    Unknown,
    /// The store failed: the service stops (`Core::failed` is cancelled, or is about to be,
    /// by whoever saw the failure first).
    Fatal,
}

/// What a front end does when a request's commit failed with `error`.
pub fn commit_failure(error: &StoreError) -> CommitFailure {
    match error {
        StoreError::OutOfSpace(_) => CommitFailure::Refuse(store_full()),
        StoreError::NotHolder => CommitFailure::Refuse(holder::unavailable(
            "this node lost the call book while deciding: nothing was done; send again",
        )),
        StoreError::RefusedByHolder { ec, reason } => {
            let code = ErrorCode::from_number(*ec).unwrap_or(ErrorCode::BookUnavailable);
            CommitFailure::Refuse(Rejection::new(code, reason.clone()))
        }
        StoreError::Unanswered => CommitFailure::Unknown,
        // A commit several requests wait for (a keyed report and its re-sends) answers each
        // as it would answer the first.
        StoreError::CommitFailed(shared) => commit_failure(shared),
        _ => CommitFailure::Fatal,
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One client of the core: a connection of a front end. Its id names what it holds (its
/// transactions); it acts as the user it authenticated as, in that user's tenant (without
/// users configured: in the tenant each request names, TX in the `default` namespace).
#[derive(Clone, Debug)]
pub struct Session {
    id: u64,
    peer: SocketAddr,
    principal: Option<Principal>,
    /// Where its TX and PS live: its user's tenant, or `default`.
    namespace: Bytes,
    /// The front end it is a client of (`sdmp`, `http`), for the transactions list.
    front: &'static str,
    /// Authenticated as another node of the cluster, forwarding reports to this one.
    node: bool,
}

impl Session {
    /// Whether it is another node forwarding reports: its MVs carry the outcome's XS.
    pub fn is_node(&self) -> bool {
        self.node
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The front end it is a client of.
    pub fn front(&self) -> &'static str {
        self.front
    }

    /// The user it authenticated as, last.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    fn key(&self, tx: &[u8]) -> TransactionKey {
        TransactionKey::new(&self.namespace, tx)
    }

    /// Who it is, for log lines.
    fn user(&self) -> (String, String) {
        match &self.principal {
            Some(p) => (
                String::from_utf8_lossy(&p.tenant).into_owned(),
                String::from_utf8_lossy(&p.name).into_owned(),
            ),
            None => (String::new(), String::new()),
        }
    }
}

/// What a front end needs after an EO: the commit to wait for before its MV, and the
/// transaction taken over from another connection, if any (finish it, then tell it with EF).
pub struct Opened {
    pub ticket: CommitTicket,
    pub taken_over: Option<Ended>,
}

/// What a front end needs after an EE: the commit to wait for before its MV, and the delivery
/// that held the transaction, if any (finish it before the EF).
pub struct Finished {
    pub ticket: CommitTicket,
    pub ended: Option<Ended>,
}

/// How many of each the core restored at start (persisted transactions counted, not loaded).
#[derive(Clone, Copy, Debug)]
pub struct Restored {
    pub open_calls: usize,
    pub persisted_transactions: u64,
}

/// The service core; shared by every front end and task (`Arc<Core>`).
pub struct Core {
    users: Directory,
    /// UA attempts per source address and minute.
    ua_rate: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    /// What every connection's output may hold together.
    budget: Budget,
    store: Store,
    calls: Mutex<CallBook>,
    /// Whether this node decides call reports, or forwards them to the node that does.
    holder: holder::Holder,
    /// Set, under the book's lock, while the book is being rebuilt from the store: no report
    /// is applied meanwhile.
    resyncing: AtomicBool,
    /// Wakes the book's rebuild (a report met the store's fence).
    resync_wanted: Notify,
    /// Idempotency keys in flight and recently committed; taken after the book's lock, never
    /// before it. Shared with the tasks that see their batches resolve.
    keys: Arc<Mutex<Keys>>,
    /// Shared with writes that are retried once the store has room again.
    transactions: Arc<Mutex<Registry>>,
    persist_ttl_ms: i64,
    /// Where the pass for persisted transactions held when the service last stopped goes on
    /// (`None`: done); it starts once they are due, a persist TTL after the start.
    held_at_stop: Mutex<Option<i64>>,
    /// The pass takes no step before this time (a shared store's next pass).
    held_pass_from_ms: std::sync::atomic::AtomicI64,
    /// Set once the service is stopping: connections that close from then on leave their
    /// persisted transactions as held when the service stopped.
    stopping: AtomicBool,
    /// Cancelled once the store failed to commit: the service must stop rather than go on
    /// accepting what it cannot keep.
    failed: CancellationToken,
    next_session: AtomicU64,
    /// Who the sessions that opened transactions are (peer, front end), until released: for
    /// the transactions list.
    holders: Mutex<std::collections::HashMap<u64, (SocketAddr, &'static str)>>,
    /// Outcome rates, latest outcomes and commit samples, for [`Core::summary`].
    activity: activity::Activity,
    #[cfg(test)]
    hooks: tests::Hooks,
}

impl Core {
    /// Opens the store and restores the open call records it kept; of the persisted
    /// transactions it only counts how many each tenant has (they are loaded when a request
    /// needs them).
    pub async fn open(config: &Config) -> anyhow::Result<(Core, Restored)> {
        let tables = OutcomeTables::from_config(&config.outcomes).context("outcome tables")?;
        let users = Directory::new(&config.users, &config.auth)?;
        let options = config.store_options();
        let place = match &options.url {
            Some(_) => "in PostgreSQL".to_owned(),
            None => format!("in {}", options.dir.display()),
        };
        let (store, records, persisted) = async {
            let store = Store::open(options).await?;
            let records = store.load_records().await?;
            let persisted = store.count_transactions().await?;
            Ok::<_, crate::store::StoreError>((store, records, persisted))
        }
        .await
        .with_context(|| format!("opening the store {place}"))?;
        let restored = Restored {
            open_calls: records.len(),
            persisted_transactions: persisted.iter().map(|(_, count)| count).sum(),
        };
        let mut book = CallBook::new(tables, millis(config.calls.call_timeout));
        // Nodes sharing a database load the book when they take it (`follow_book_holder`).
        let holds = matches!(*store.book_holder().borrow(), BookHolder::Me { .. });
        if holds && !store.shared_by_nodes() {
            book.restore(records);
        }
        let holder = holder::Holder::new(
            store.book_holder(),
            holds && !store.shared_by_nodes(),
            store.cluster_secret(),
        );
        let mut registry = Registry::new(Limits {
            per_connection: config.limits.transactions_per_connection,
            persisted_per_tenant: config.limits.persisted_per_tenant,
        });
        registry.restore(persisted, now_ms());
        if store.shared_by_nodes() {
            registry.set_shared();
        }
        let per_minute = std::num::NonZeroU32::new(config.limits.ua_per_address_per_minute)
            .unwrap_or(std::num::NonZeroU32::MIN);
        let core = Core {
            users,
            ua_rate: governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute)),
            budget: Budget::new(config.limits.memory_budget),
            store,
            calls: Mutex::new(book),
            holder,
            resyncing: AtomicBool::new(false),
            resync_wanted: Notify::new(),
            keys: Arc::new(Mutex::new(Keys::new(
                millis(config.ingest.dedup_window),
                config.ingest.dedup_memory_keys,
                config.ingest.dedup_memory_bytes,
            ))),
            transactions: Arc::new(Mutex::new(registry)),
            persist_ttl_ms: millis(config.transactions.persist_ttl),
            held_at_stop: Mutex::new(Some(0)),
            held_pass_from_ms: std::sync::atomic::AtomicI64::new(0),
            stopping: AtomicBool::new(false),
            failed: CancellationToken::new(),
            next_session: AtomicU64::new(1),
            holders: Mutex::default(),
            activity: activity::Activity::default(),
            #[cfg(test)]
            hooks: tests::Hooks::default(),
        };
        Ok((core, restored))
    }

    /// A new session (one per connection) from `peer`, not authenticated.
    pub fn session(&self, peer: SocketAddr) -> Session {
        Session {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            peer,
            principal: None,
            namespace: Bytes::from_static(DEFAULT_TENANT),
            front: "sdmp",
            node: false,
        }
    }

    /// What every connection's output may hold together: front ends make their outbound
    /// channels with it.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Whether users are configured: then a session must authenticate before anything else.
    pub fn requires_authentication(&self) -> bool {
        self.users.enabled()
    }

    /// UA: checks the credentials; on success the session acts as that user from now on (a
    /// session may authenticate again, as another user: the last success counts). Without
    /// users configured nobody exists (RS 1).
    pub async fn authenticate(
        &self,
        session: &mut Session,
        ua: &Ua<'_>,
        td: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<Status, Rejection> {
        if self.ua_rate.check_key(&session.peer.ip()).is_err() {
            metrics::counter!("ozbus_limit_hits_total", "limit" => "ua_per_address_per_minute")
                .increment(1);
            tracing::warn!(target: "ozbus::audit", peer = %session.peer, "UA refused: too many attempts from this address in the last minute");
            // Forget addresses that have been quiet, so the table holds only recent ones.
            self.ua_rate.retain_recent();
            return Err(Rejection::new(
                ErrorCode::LimitReached,
                "too many UA attempts from this address; try again in a minute",
            ));
        }
        if let Some(status) = self.authenticate_node(session, ua, td) {
            return Ok(status);
        }
        if !self.users.enabled() {
            return Ok(Status::NoSuchUser);
        }
        let credentials = Credentials {
            tenant: td,
            an: ua.an,
            qi: ua.qi,
            pw: ua.pw,
        };
        let status = self
            .users
            .authenticate(credentials, session.peer.ip(), now_ms)
            .await;
        let (tenant, user) = (
            String::from_utf8_lossy(td.unwrap_or_default()),
            String::from_utf8_lossy(ua.an.or(ua.qi).unwrap_or_default()),
        );
        match &status {
            Status::Authenticated(principal) => {
                tracing::info!(target: "ozbus::audit", %tenant, %user, peer = %session.peer, pg = principal.pg, "authenticated");
                session.namespace = principal.tenant.clone();
                session.principal = Some(principal.clone());
            }
            failure => {
                tracing::warn!(target: "ozbus::audit", %tenant, %user, peer = %session.peer, rs = failure.rs(), "authentication failed");
            }
        }
        Ok(status)
    }

    /// UA of another node of the cluster: user [`NODE_USER`] in the landlord tenant, with the
    /// cluster's secret as password. `None` when the UA is not a node's, or this store is not
    /// shared by nodes (then the name is an ordinary user's).
    fn authenticate_node(
        &self,
        session: &mut Session,
        ua: &Ua<'_>,
        td: Option<&[u8]>,
    ) -> Option<Status> {
        let secret = self.holder.secret()?;
        if ua.an != Some(NODE_USER.as_bytes()) || td != Some(auth::LANDLORD) {
            return None;
        }
        let pw = ua.pw.unwrap_or_default();
        // Compared in time independent of where they differ.
        let same = pw.len() == secret.len()
            && pw
                .iter()
                .zip(secret.iter())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0;
        if !same {
            tracing::warn!(target: "ozbus::audit", peer = %session.peer, "node authentication failed: wrong cluster secret");
            return Some(Status::BadPassword);
        }
        let principal = Principal {
            tenant: Bytes::from_static(auth::LANDLORD),
            name: Bytes::from_static(NODE_USER.as_bytes()),
            pg: auth::pg::SUPER_USER,
        };
        tracing::info!(target: "ozbus::audit", peer = %session.peer, "a node authenticated to forward reports");
        session.namespace = principal.tenant.clone();
        session.principal = Some(principal.clone());
        session.node = true;
        Some(Status::Authenticated(principal))
    }

    /// Offers this node to hold the call book, taking other nodes' reports at `addr` (see
    /// `holder`); nothing happens on a store that is not shared by nodes.
    pub fn advertise(&self, addr: String) {
        self.store.advertise(addr);
    }

    /// Whether ingestion is refused for lack of space now (EC 813): for readiness checks.
    pub fn store_full(&self) -> bool {
        self.store.is_full()
    }

    /// Cancelled once the store failed to commit.
    pub fn failed(&self) -> &CancellationToken {
        &self.failed
    }

    /// A report, in tenant `td` (none: the default tenant): of a call (MC, RN, LC, CF, TC or
    /// BD), or a correction of an outcome (UO). Every front end hands reports here; any other
    /// message is EC 800. The ticket resolves once its effect is durable, with the seq of the
    /// outcome it appended, if any (for a re-send under a used XK: once the first message's
    /// effect is, with the first message's seq). Decided here when this node holds the call
    /// book, else by the node that does (see `holder`), once the sender's rights are checked
    /// here.
    pub async fn report(
        &self,
        session: &Session,
        td: Option<&[u8]>,
        message: &Message<'_>,
        now_ms: i64,
    ) -> Result<CommitTicket, Rejection> {
        let act = match message {
            Message::Uo(_) => Act::Supervise,
            Message::Tc(tc) => Act::Agent { an: tc.an },
            Message::Bd(bd) => Act::Agent { an: bd.an },
            Message::Mc(_) | Message::Rn(_) | Message::Lc(_) | Message::Cf(_) => Act::Report,
            _ => return Err(Rejection::new(ErrorCode::UnknownMessage, "not a report")),
        };
        let tenant = self.admit(session, act, td)?;
        if let holder::Route::Forward(link) = self.holder.route().await? {
            return holder::forward(link, &tenant, message).await;
        }
        if let Message::Uo(uo) = message {
            return self.update_outcome(tenant, uo).await;
        }
        let key = message.common().xk;
        loop {
            let mark = match key {
                Some(key) => match self.look_up_key(&tenant, key, now_ms).await? {
                    Ok(seen) => return Ok(seen),
                    Err(mark) => Some(mark),
                },
                None => None,
            };
            let mut book = self.calls.lock();
            let mut keys = self.keys.lock();
            if let (Some(key), Some(mark)) = (key, mark) {
                match recheck_key(&mut keys, &tenant, key, mark, now_ms) {
                    Recheck::Seen(ticket) => return Ok(ticket),
                    Recheck::Retry => continue,
                    Recheck::Unseen => {}
                }
            }
            self.room_for_ingest()?;
            let mutations = book.apply(now_ms, &tenant, message)?;
            return Ok(self.submit_ingest(&mut keys, &tenant, key, mutations));
        }
    }

    /// Steps 1 and 2 of a keyed request (see `keys`): the ticket of the message already sent
    /// under `key` (`Ok(Ok)`), or the mark to check memory against again (`Ok(Err)`); EC 816
    /// when the store cannot be reached to tell. Reads the store with no lock held.
    async fn look_up_key(
        &self,
        tenant: &Bytes,
        key: &[u8],
        now_ms: i64,
    ) -> Result<Result<CommitTicket, Mark>, Rejection> {
        let (mark, since) = {
            let mut keys = self.keys.lock();
            match keys.find(tenant, key, now_ms) {
                Ok(ticket) => {
                    metrics::counter!("ozbus_ingest_duplicates_total").increment(1);
                    return Ok(Ok(ticket));
                }
                Err(mark) => (mark, keys.since(now_ms)),
            }
        };
        match self.store.key_committed(tenant, key, since).await {
            Ok(Some(used)) => {
                metrics::counter!("ozbus_ingest_duplicates_total").increment(1);
                Ok(Ok(keys::committed(used)))
            }
            Ok(None) => Ok(Err(mark)),
            Err(error) => self
                .read_failed("looking up an idempotency key", &error)
                .map(Ok),
        }
    }

    /// Submits an ingest batch; with `key`, the key is remembered in the same batch and held
    /// in memory while the batch is in flight. Call with the book's lock held (the order of
    /// submission is the book's) and the keys' lock.
    fn submit_ingest(
        &self,
        keys: &mut Keys,
        tenant: &Bytes,
        key: Option<&[u8]>,
        mut mutations: Vec<Mutation>,
    ) -> CommitTicket {
        let Some(key) = key else {
            return self.store.submit(mutations);
        };
        mutations.push(Mutation::RememberKey {
            tenant: tenant.clone(),
            key: Bytes::copy_from_slice(key),
        });
        let (ticket, done) = keys.begin(tenant, key, self.store.submit(mutations));
        let (keys, tenant, key) = (self.keys.clone(), tenant.clone(), key.to_vec());
        // Whoever waits for the message's ticket (or nobody, if its connection closed), the key
        // leaves the in-flight set when its batch resolves.
        tokio::spawn(async move {
            let used = done.await;
            keys.lock().finish(&tenant, &key, used, now_ms());
        });
        ticket
    }

    /// Refuses ingestion (EC 813) while the store is full, or the book is not known to be
    /// what the store holds (a batch of it failed for space). Call with the book's lock held:
    /// the rebuild's flag changes under it.
    fn room_for_ingest(&self) -> Result<(), Rejection> {
        if !self.holder.held() {
            // Lost between the route and the book's lock.
            return Err(holder::unavailable(
                "this node lost the call book while deciding: nothing was done; send again",
            ));
        }
        if self.store.fenced() {
            self.resync_wanted.notify_one();
            return Err(store_full());
        }
        if self.resyncing.load(Ordering::Acquire) || self.store.is_full() {
            return Err(store_full());
        }
        Ok(())
    }

    /// UO: a management outcome correcting the latest outcome of the call it names.
    async fn update_outcome(&self, tenant: Bytes, uo: &Uo<'_>) -> Result<CommitTicket, Rejection> {
        let now_ms = now_ms();
        loop {
            let mark = match uo.xk {
                Some(key) => match self.look_up_key(&tenant, key, now_ms).await? {
                    Ok(seen) => return Ok(seen),
                    Err(mark) => Some(mark),
                },
                None => None,
            };
            // Early, to spare the reads below; decided again under the book's lock.
            self.room_for_ingest()?;
            // Outcomes reported before this UO (on any connection) are committed before it
            // looks.
            if let Err(error) = self.store.submit(Vec::new()).await {
                if let CommitFailure::Refuse(refusal) = commit_failure(&error) {
                    return Err(refusal);
                }
                return Ok(self.fail("committing before a correction", &error));
            }
            let original = match self
                .store
                .latest_outcome(&tenant, uo.cn, uo.si, uo.tn)
                .await
            {
                Ok(Some(original)) => original,
                Ok(None) => {
                    return Err(Rejection::new(
                        ErrorCode::NoSuchCall,
                        "no call with a known outcome matches CN and SI/TN",
                    ))
                }
                Err(error) => return self.read_failed("looking up an outcome", &error),
            };
            let book = self.calls.lock();
            let mut keys = self.keys.lock();
            if let (Some(key), Some(mark)) = (uo.xk, mark) {
                match recheck_key(&mut keys, &tenant, key, mark, now_ms) {
                    Recheck::Seen(ticket) => return Ok(ticket),
                    Recheck::Retry => continue,
                    Recheck::Unseen => {}
                }
            }
            self.room_for_ingest()?;
            let outcome = book.update_outcome(&tenant, uo, &original)?;
            let mutations = vec![Mutation::Append(outcome)];
            return Ok(self.submit_ingest(&mut keys, &tenant, uo.xk, mutations));
        }
    }

    /// EO: opens a transaction delivering to `out`, or re-issues the persisted one with the
    /// same PS (taking it over from the connection that holds it, if any). `td` filters by
    /// tenant (none: every tenant); `frame` is the EO as received, kept for a persisted one.
    pub async fn open_transaction(
        &self,
        session: &Session,
        eo: &Eo<'_>,
        td: Option<&[u8]>,
        dialect: Dialect,
        frame: &[u8],
        out: Outbound,
    ) -> Result<Opened, Rejection> {
        let tenant = self.admit(session, Act::Supervise, td)?;
        // Whose outcomes it sees: the session's tenant; a landlord's (or anyone's without
        // users configured) EO without TD sees every tenant.
        let sees = match (td, &session.principal) {
            (None, None) => None,
            (None, Some(principal)) if principal.is_landlord() => None,
            _ => Some(&tenant[..]),
        };
        let mut open = Open {
            namespace: session.namespace.clone(),
            subscription: Subscription::of(eo, sees, dialect),
            resume_after: eo.xr,
            persist: eo.ps.map(|ps| Persisting {
                token: Bytes::copy_from_slice(ps),
                // Copied: the frame shares the connection's read buffer; the transaction may
                // outlive it.
                request: Bytes::copy_from_slice(frame),
            }),
            connection: session.id,
            out,
            stored_persisted: None,
        };
        // A new transaction starts where the log ended when its EO arrived: what commits while
        // the store is asked about its TX and PS is after its start, and delivered.
        let log_end = self.store.last_seq();
        loop {
            let found = match self.look_up(&session.namespace, eo.tx, eo.ps).await {
                Ok(found) => found,
                Err(error) => {
                    return Ok(Opened {
                        ticket: self.read_failed("looking up a persisted transaction", &error)?,
                        taken_over: None,
                    })
                }
            };
            if let Some((_, rows)) = &found {
                match self.check_other_nodes(&session.namespace, eo, rows).await {
                    Ok(Ok(stored)) => open.stored_persisted = stored,
                    Ok(Err(refusal)) => return Err(refusal),
                    Err(error) => {
                        return Ok(Opened {
                            ticket: self
                                .read_failed("reading the transactions of other nodes", &error)?,
                            taken_over: None,
                        })
                    }
                }
            }
            let opened = {
                let mut registry = self.transactions.lock();
                if !self.load(&mut registry, found) {
                    continue;
                }
                let opened = registry.open(open, log_end);
                // What was loaded only to decide leaves memory again (a store shared by nodes).
                registry.shed();
                let opened = opened?;
                (
                    self.submit_registry(opened.mutations),
                    opened.delivery,
                    opened.taken_over,
                )
            };
            let (ticket, delivery, taken_over) = opened;
            self.holders
                .lock()
                .insert(session.id, (session.peer, session.front));
            tokio::spawn(deliver(self.store.clone(), delivery));
            return Ok(Opened { ticket, taken_over });
        }
    }

    /// Step 1b of an EO, on a store shared by nodes, when the registry could not decide it from
    /// memory alone (`rows`: what the store has of its TX and PS): EC 809 when another node that
    /// is alive has a transaction without PS open under its TX (a persisted one, the rows
    /// show); and for an EO with a PS the store does not have, how many persisted transactions
    /// the namespace has in the store (`persisted_per_tenant` counts every node's). Reads the
    /// store with no lock held.
    async fn check_other_nodes(
        &self,
        namespace: &Bytes,
        eo: &Eo<'_>,
        rows: &[PersistedTransaction],
    ) -> Result<Result<Option<u64>, Rejection>, StoreError> {
        if !self.store.shared_by_nodes() {
            return Ok(Ok(None));
        }
        if self.store.tx_active_elsewhere(namespace, eo.tx).await? {
            return Ok(Err(crate::subs::tx_taken()));
        }
        Ok(Ok(match eo.ps {
            Some(ps) if !rows.iter().any(|row| row.ps == ps) => {
                Some(self.store.count_persisted(namespace).await?)
            }
            _ => None,
        }))
    }

    /// EE: ends the session's transaction `tx`, forgetting it if persisted (EC 810: none).
    pub async fn end_transaction(
        &self,
        session: &Session,
        tx: &[u8],
        td: Option<&[u8]>,
    ) -> Result<Finished, Rejection> {
        self.admit(session, Act::Supervise, td)?;
        loop {
            let found = match self.look_up(&session.namespace, tx, None).await {
                Ok(found) => found,
                Err(error) => {
                    return Ok(Finished {
                        ticket: self.read_failed("looking up a persisted transaction", &error)?,
                        ended: None,
                    })
                }
            };
            let mut registry = self.transactions.lock();
            if !self.load(&mut registry, found) {
                continue;
            }
            let result = registry.end(&session.key(tx));
            registry.shed();
            let (ended, mutations) = result?;
            return Ok(Finished {
                ticket: self.submit_registry(mutations),
                ended,
            });
        }
    }

    /// XA: the client processed everything of `tx` up to `seq`. With `durable_now` (the XA
    /// carried TK) the cursor is committed now and the ticket says when; otherwise it is
    /// written lazily and there is nothing to wait for.
    pub async fn acknowledge(
        &self,
        session: &Session,
        tx: &[u8],
        td: Option<&[u8]>,
        seq: u64,
        durable_now: bool,
    ) -> Result<Option<CommitTicket>, Rejection> {
        self.admit(session, Act::Supervise, td)?;
        loop {
            let found = match self.look_up(&session.namespace, tx, None).await {
                Ok(found) => found,
                Err(error) => {
                    return Ok(Some(
                        self.read_failed("looking up a persisted transaction", &error)?,
                    ))
                }
            };
            let mut registry = self.transactions.lock();
            if !self.load(&mut registry, found) {
                continue;
            }
            let mutation = registry.acknowledge(&session.key(tx), seq, durable_now);
            registry.shed();
            return Ok(mutation?.map(|m| self.submit_registry(vec![m])));
        }
    }

    /// Step 1 of a request about `tx` (and `ps`) in `namespace`: when the registry cannot
    /// decide it from memory, the rows of persisted transactions it may name, read from the
    /// store with no lock held.
    async fn look_up(
        &self,
        namespace: &Bytes,
        tx: &[u8],
        ps: Option<&[u8]>,
    ) -> Result<Found, StoreError> {
        let Some(lookup) = self.transactions.lock().lookup(namespace, tx, ps) else {
            return Ok(None);
        };
        let rows = self.store.find_transactions(namespace, ps, tx).await?;
        Ok(Some((lookup, rows)))
    }

    /// Step 2, under the registry's lock: loads what step 1 found. False when it may be
    /// outdated: look up again.
    fn load(&self, registry: &mut Registry, found: Found) -> bool {
        let Some((lookup, rows)) = found else {
            return true;
        };
        match registry.load(&lookup, rows) {
            Ok(mutations) => {
                self.submit_registry_lazily(mutations);
                true
            }
            Err(_stale) => false,
        }
    }

    /// The session's connection closed: its transactions without PS end, persisted ones are
    /// released. Returns their deliveries, to finish before the connection's output closes.
    /// Once the service is stopping, nothing changes: what the connection holds stays held, as
    /// when the service stopped, and [`Core::close`] stops its deliveries.
    pub fn release(&self, session: &Session, now_ms: i64) -> Vec<Ended> {
        self.holders.lock().remove(&session.id);
        if self.stopping.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut registry = self.transactions.lock();
        let (ended, mutations) = registry.release_all_of(session.id, now_ms);
        self.submit_registry_lazily(mutations);
        ended
    }

    /// The service is stopping (call before its connections are closed): a persisted
    /// transaction a connection still holds counts as held when it stopped (its row says so;
    /// its TTL starts again at the next start), so nothing is written for it but its cursor,
    /// by [`Core::close`] with every other cursor in one batch.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Closes the calls that are due at `now_ms` (CE expiry, call timeout); returns when the
    /// next one is due, if any.
    pub fn sweep_calls(&self, now_ms: i64) -> Option<i64> {
        let mut book = self.calls.lock();
        // A book that may hold a failed batch's changes closes nothing until it is rebuilt
        // (the store would refuse the batch anyway); the rebuilt book has the calls again.
        if !self.holder.held() || self.resyncing.load(Ordering::Acquire) || self.store.fenced() {
            return book.next_deadline();
        }
        let mutations = book.sweep(now_ms);
        self.submit_watched(mutations);
        book.next_deadline()
    }

    /// Writes the cursors of persisted transactions that moved, and forgets those nobody held
    /// for the persist TTL: the ones in memory, and up to [`EXPIRE_STEP`] of those only the
    /// store holds, read first with no lock held.
    pub async fn flush_cursors(&self, now_ms: i64) {
        let due = match self.look_up_expired(now_ms).await {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(
                    %error,
                    "reading persisted transactions due for the TTL failed; will retry"
                );
                Due {
                    found: None,
                    held_at_stop: None,
                }
            }
        };
        let mut registry = self.transactions.lock();
        let mut mutations = Vec::new();
        if let Some((lookup, rows)) = due.found {
            // Stale: the next flush reads them again (and the pass takes that step again).
            if let Ok(loaded) = registry.load(&lookup, rows) {
                mutations.extend(loaded);
                if let Some(next) = due.held_at_stop {
                    *self.held_at_stop.lock() = match next {
                        None if self.store.shared_by_nodes() => {
                            self.held_pass_from_ms
                                .store(now_ms + millis(HELD_PASS_AGAIN), Ordering::Release);
                            Some(0)
                        }
                        next => next,
                    };
                }
            }
        }
        mutations.extend(registry.cursor_mutations());
        mutations.extend(registry.expire(now_ms, self.persist_ttl_ms));
        // Loaded for the TTL and not due: they stay in the store (a store shared by nodes).
        registry.shed();
        // Rows a write failed to store, once there may be room for them.
        if !self.store.is_full() {
            mutations.extend(registry.resave_unsaved());
        }
        #[cfg(test)]
        self.hooks.before_flush_submit(&mutations);
        self.submit_registry_lazily(mutations);
    }

    /// Persisted transactions only the store holds that nobody has held for the persist TTL at
    /// `now_ms`: released ones by their release time, and, once a TTL has passed since the
    /// start, a step of the pass for those held when the service last stopped.
    async fn look_up_expired(&self, now_ms: i64) -> Result<Due, StoreError> {
        let cutoff = now_ms.saturating_sub(self.persist_ttl_ms);
        let (lookup, held_due) = {
            let registry = self.transactions.lock();
            (
                registry.lookup_unloaded(),
                registry.started_ms() <= cutoff
                    && self.held_pass_from_ms.load(Ordering::Acquire) <= now_ms,
            )
        };
        let Some(lookup) = lookup else {
            return Ok(Due {
                found: None,
                held_at_stop: None,
            });
        };
        let mut rows = self
            .store
            .released_transactions(cutoff, EXPIRE_STEP)
            .await?;
        let pass = *self.held_at_stop.lock();
        let mut held_at_stop = None;
        if let (true, Some(after)) = (held_due, pass) {
            let (held, next) = self.store.held_at_stop(after, HELD_AT_STOP_STEP).await?;
            rows.extend(held);
            held_at_stop = Some(next);
        }
        Ok(Due {
            found: Some((lookup, rows)),
            held_at_stop,
        })
    }

    /// The timed work, until `stop`: closing calls as they fall due, and flushing cursors.
    pub async fn run_timers(&self, stop: &CancellationToken) {
        let sweep = async {
            loop {
                let now = now_ms();
                let wait = self.sweep_calls(now).map_or(SWEEP_IDLE, |at| {
                    Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
                        .min(SWEEP_IDLE)
                });
                tokio::time::sleep(wait).await;
            }
        };
        let flush = async {
            let mut tick = tokio::time::interval(CURSOR_FLUSH);
            loop {
                tick.tick().await;
                self.flush_cursors(now_ms()).await;
                // The UA rate keeps an entry per source address: only those of the last minute
                // stay, so a stream of new addresses cannot grow it.
                self.ua_rate.retain_recent();
            }
        };
        let resync = async {
            loop {
                // Woken by a report that met the fence; the timeout covers a fence nobody met
                // (a failed sweep, a report refused before it looked).
                let _ = tokio::time::timeout(CURSOR_FLUSH, self.resync_wanted.notified()).await;
                if self.store.fenced() {
                    if let Err(error) = self.resync_book().await {
                        tracing::error!(%error, "re-reading the call records failed: stopping the server");
                        self.failed.cancel();
                        return;
                    }
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = sweep => {}
            _ = flush => {}
            _ = resync => {}
            _ = self.follow_book_holder() => {}
            _ = self.follow_owners() => {}
        }
    }

    /// On a store shared by nodes, keeps this node from delivering a persisted transaction
    /// that another node owns: while the store cannot hear the other nodes, deliveries of
    /// persisted transactions pause; once it hears again, every one held here is checked
    /// against the store (those another node owns now end, with EF) before they go on; and
    /// each takeover announced meanwhile is checked the same way. Never returns on a store
    /// that is not shared.
    async fn follow_owners(&self) {
        if !self.store.shared_by_nodes() {
            return std::future::pending().await;
        }
        let mut hearing = self.store.hearing();
        let mut changes = self.store.owner_changes();
        // Whether deliveries went on since the last check (then losing the hearing is said).
        let mut went_on = false;
        let mut said = false;
        loop {
            // Paused from the first moment something changed: a takeover may have gone unheard.
            self.transactions.lock().pause_persisted();
            let heard = *hearing.borrow_and_update();
            if heard.is_none() {
                if std::mem::take(&mut went_on) {
                    tracing::warn!(
                        "this node cannot hear the other nodes: deliveries of persisted \
                         transactions pause until it can"
                    );
                    said = true;
                }
                if hearing.changed().await.is_err() {
                    return std::future::pending().await;
                }
                continue;
            }
            // What is announced from now on is heard; what was before, the check reads.
            changes = changes.resubscribe();
            if let Err(error) = self.check_owners(None).await {
                tracing::warn!(%error, "cannot read who owns the persisted transactions held here; trying again");
                tokio::time::sleep(CURSOR_FLUSH).await;
                continue;
            }
            if hearing.has_changed().unwrap_or(false) {
                continue;
            }
            self.transactions.lock().resume_persisted();
            went_on = true;
            if std::mem::take(&mut said) {
                tracing::info!("this node hears the other nodes again: deliveries of persisted transactions go on");
            }
            loop {
                let change = tokio::select! {
                    changed = hearing.changed() => {
                        if changed.is_err() {
                            return std::future::pending().await;
                        }
                        break;
                    }
                    change = changes.recv() => change,
                };
                let only = match change {
                    Ok(OwnerChange { key: Some(key), .. }) => Some(vec![key]),
                    Ok(OwnerChange { key: None, .. })
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        return std::future::pending().await
                    }
                };
                if let Err(error) = self.check_owners(only.as_deref()).await {
                    // Not known whether a takeover happened: pause, and check all again.
                    tracing::warn!(%error, "cannot read who owns a persisted transaction held here; pausing");
                    tokio::time::sleep(CURSOR_FLUSH).await;
                    break;
                }
            }
        }
    }

    /// Ends every persisted transaction held here (of `only`, or all) that another node owns
    /// now, as a takeover by another connection would: its connection gets EF. Reads the store
    /// with no lock held, after every write decided so far has committed (so that a takeover
    /// of this node's own in flight is not taken for another node's); one that was opened
    /// again meanwhile is left alone.
    async fn check_owners(&self, only: Option<&[(Bytes, Bytes)]>) -> Result<(), StoreError> {
        let (held, written) = {
            let registry = self.transactions.lock();
            let held = registry.held_persisted(only);
            if held.is_empty() {
                return Ok(());
            }
            (held, self.store.submit(Vec::new()))
        };
        written.await?;
        let keys: Vec<(Bytes, Bytes)> = held.iter().map(|(key, _)| key.clone()).collect();
        let not_owned: std::collections::HashSet<(Bytes, Bytes)> =
            self.store.not_owned(&keys).await?.into_iter().collect();
        if not_owned.is_empty() {
            return Ok(());
        }
        let lost = held
            .into_iter()
            .filter(|(key, _)| not_owned.contains(key))
            .collect();
        let ended = self.transactions.lock().lost(lost);
        for ended in ended {
            tracing::info!(
                tx = %String::from_utf8_lossy(ended.tx()),
                "another node took a persisted transaction over (or ended it): its delivery here ends"
            );
            metrics::counter!("ozbus_transactions_lost_to_other_nodes_total").increment(1);
            tokio::spawn(ended.finish_with_ef(None));
        }
        Ok(())
    }

    /// Follows who holds the call book: when this node takes it (a new epoch), the book is
    /// read from the store's records, which no earlier holder can change any more, and reports
    /// are decided here from then on; when another node takes it, or nobody is known to hold
    /// it, the book is emptied and reports go elsewhere (or wait). Returns only if the service
    /// fails (the store could not be read).
    async fn follow_book_holder(&self) {
        let mut holder = self.holder.watch();
        // A store alone holds the book from the start, loaded at open.
        let mut loaded = match *holder.borrow() {
            BookHolder::Me { epoch } if self.holder.held() => Some(epoch),
            _ => None,
        };
        loop {
            let now = holder.borrow_and_update().clone();
            match now {
                BookHolder::Me { epoch } if loaded != Some(epoch) => {
                    if loaded.is_some() || self.holder.held() {
                        self.drop_book();
                    }
                    let records = self.store.reload_records().await;
                    let records = match records {
                        Ok(records) => records,
                        Err(error) => {
                            tracing::error!(%error, "reading the call records failed: stopping the server");
                            self.failed.cancel();
                            return;
                        }
                    };
                    let mut book = self.calls.lock();
                    book.restore(records);
                    // Taken away again while reading: the next turn drops it.
                    if *holder.borrow() == now {
                        self.holder.set_held(true);
                        loaded = Some(epoch);
                        tracing::info!(
                            epoch,
                            open_calls = book.open_records(),
                            "this node holds the call book"
                        );
                    }
                }
                BookHolder::Me { .. } => {}
                BookHolder::Peer { .. } | BookHolder::Unknown => {
                    if loaded.take().is_some() {
                        tracing::warn!(holder = ?now, "this node no longer holds the call book");
                    }
                    if self.holder.held() {
                        self.drop_book();
                    }
                }
            }
            if holder.changed().await.is_err() {
                // A store alone holds the book for as long as it is open.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stops deciding reports here and forgets the book (the store keeps every record).
    fn drop_book(&self) {
        let mut book = self.calls.lock();
        self.holder.set_held(false);
        book.restore(Vec::new());
    }

    /// Rebuilds the call book from the store's records, after a batch of it failed for lack
    /// of space (see the module comment). No report is applied from the moment the records
    /// are asked for (the request is queued behind every batch the book submitted before)
    /// until the book is restored from them.
    async fn resync_book(&self) -> Result<(), StoreError> {
        let records = {
            let _book = self.calls.lock();
            self.resyncing.store(true, Ordering::Release);
            self.store.reload_records()
        };
        let records = records.await?;
        let mut book = self.calls.lock();
        book.restore(records);
        self.resyncing.store(false, Ordering::Release);
        tracing::info!(
            open_calls = book.open_records(),
            "call book rebuilt from the store after a write failed for lack of space"
        );
        Ok(())
    }

    /// Writes every cursor that moved in one batch, closes the store, then tells every delivery
    /// to stop. Call once, after every front end has stopped: their connections' output is
    /// closed, so what a delivery still does moves no durable cursor. Nobody waits for the
    /// deliveries to wind down (with a million transactions held, waking them all alone takes
    /// seconds; a process that ends right after never needs to).
    pub async fn close(&self) -> anyhow::Result<()> {
        self.stopping();
        let ticket = {
            let mut registry = self.transactions.lock();
            let mut mutations = registry.cursor_mutations();
            mutations.extend(registry.resave_unsaved());
            self.store.submit(mutations)
        };
        match ticket.await {
            Ok(_) => {}
            Err(error) if error.is_out_of_space() => {
                // Stored cursors only lag: a re-issue after the restart may send some events
                // again, never skip one.
                tracing::warn!(%error, "cursors of persisted transactions not written at shutdown: the store is out of space");
            }
            Err(_) => self.failed.cancel(),
        }
        let closed = self.store.close().await;
        let deliveries = self.transactions.lock().deliveries();
        // Off the async workers: one token, but a wake-up for every delivery.
        drop(tokio::task::spawn_blocking(move || deliveries.cancel()));
        closed.context("closing the store")
    }

    /// Checks that the session may do `act` in the tenant `td` names (none: its own), and
    /// returns that tenant. EC 811: not authenticated, a privilege it lacks, or another tenant
    /// than its own (whether or not that tenant exists); EC 812: a landlord naming a tenant
    /// nobody is configured in. Every refusal is logged for the audit.
    fn admit(
        &self,
        session: &Session,
        act: Act<'_>,
        td: Option<&[u8]>,
    ) -> Result<Bytes, Rejection> {
        let checked = self
            .users
            .authorize(session.principal.as_ref(), act)
            .and_then(|()| self.tenant_of(session, td));
        if let Err(rejection) = &checked {
            let (tenant, user) = session.user();
            tracing::warn!(
                target: "ozbus::audit", %tenant, %user, peer = %session.peer,
                ec = rejection.code.number(), reason = %rejection.reason,
                td = %String::from_utf8_lossy(td.unwrap_or_default()),
                "refused"
            );
        }
        checked
    }

    fn tenant_of(&self, session: &Session, td: Option<&[u8]>) -> Result<Bytes, Rejection> {
        let Some(principal) = &session.principal else {
            // No users configured (else `authorize` refused already).
            return Ok(Bytes::copy_from_slice(td.unwrap_or(DEFAULT_TENANT)));
        };
        if session.node {
            // The forwarding node admitted the report in this tenant already.
            return Ok(Bytes::copy_from_slice(td.unwrap_or(DEFAULT_TENANT)));
        }
        match td {
            None => Ok(principal.tenant.clone()),
            Some(td) if *td == principal.tenant[..] => Ok(principal.tenant.clone()),
            Some(td) if principal.is_landlord() => {
                if self.users.knows_tenant(td) {
                    Ok(Bytes::copy_from_slice(td))
                } else {
                    Err(Rejection::new(ErrorCode::UnknownTenant, "no such tenant"))
                }
            }
            Some(_) => Err(auth::refused("TD names a tenant other than this user's")),
        }
    }

    /// Submits call-book mutations nobody waits for (the sweep's); a failed commit stops the
    /// service, unless it failed for lack of space: then the store's fence is up and the book
    /// is rebuilt (the calls it closed are open again, and close on a later sweep).
    fn submit_watched(&self, mutations: Vec<Mutation>) {
        if mutations.is_empty() {
            return;
        }
        let ticket = self.store.submit(mutations);
        let failed = self.failed.clone();
        tokio::spawn(async move {
            match ticket.await {
                Ok(_) => {}
                // Full: the book is rebuilt; taken over: the new holder closes the calls.
                Err(error) if error.is_out_of_space() => {}
                Err(StoreError::NotHolder) => {}
                Err(error) => {
                    tracing::error!(%error, "commit failed: stopping the server");
                    failed.cancel();
                }
            }
        });
    }

    /// Submits registry mutations nobody waits for (lazy cursors, releases, expiries), with the
    /// registry's lock held. Once they settle the registry is told ([`Registry::settled`]): a
    /// write that failed for lack of space is done again by a later flush; any other failure
    /// stops the service.
    fn submit_registry_lazily(&self, mutations: Vec<Mutation>) {
        if mutations.is_empty() {
            return;
        }
        let ticket = self.store.submit(mutations.clone());
        let (failed, registry) = (self.failed.clone(), self.transactions.clone());
        tokio::spawn(async move {
            let result = ticket.await;
            if let Err(error) = &result {
                if !error.is_out_of_space() {
                    tracing::error!(%error, "commit failed: stopping the server");
                    failed.cancel();
                }
            }
            settle(&registry, &mutations, &result);
        });
    }

    /// Submits registry mutations a request waits for (its MV), with the registry's lock held.
    /// The ticket resolves once the rows they write are durable: if the write fails for lack of
    /// space, the rows are written again, from what the registry then holds, once the store has
    /// room (the change itself is already in force in memory; only its MV waits). Any other
    /// failure fails the ticket. A batch that forgets a transaction is driven by a task of its
    /// own, so that it settles ([`Registry::settled`]) whether or not anyone waits for the
    /// ticket; any other only needs settling if it fails, which whoever waits for it sees.
    fn submit_registry(&self, mutations: Vec<Mutation>) -> CommitTicket {
        if mutations.is_empty() {
            // Nothing to keep; still queued, so it resolves after what was submitted before.
            return self.store.submit(mutations);
        }
        let ticket = self.store.submit(mutations.clone());
        let (store, registry) = (self.store.clone(), self.transactions.clone());
        let written = commit_registry(store, registry, ticket, mutations.clone());
        if !mutations
            .iter()
            .any(|m| matches!(m, Mutation::DeleteTransaction { .. }))
        {
            return CommitTicket::from_future(written);
        }
        let (done, result) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = done.send(written.await);
        });
        CommitTicket::from_future(async move { result.await.unwrap_or(Err(StoreError::Closed)) })
    }

    /// A read of the store failed under a request: refused with EC 816 when the database
    /// could not be reached (that passes; nothing was done), else the service stops (see
    /// [`Core::fail`]).
    fn read_failed(
        &self,
        what: &str,
        error: &crate::store::StoreError,
    ) -> Result<CommitTicket, Rejection> {
        if error.is_unreachable() {
            tracing::warn!(%error, "{what} failed: the database cannot be reached; refused");
            return Err(Rejection::new(
                ErrorCode::StoreUnavailable,
                "the store cannot be reached now: nothing was done; send again",
            ));
        }
        Ok(self.fail(what, error))
    }

    /// The store failed under a request: the service stops. The request gets a ticket that
    /// fails, so its front end sends no MV.
    fn fail(&self, what: &str, error: &crate::store::StoreError) -> CommitTicket {
        tracing::error!(%error, "{what} failed: stopping the server");
        self.failed.cancel();
        CommitTicket::failed()
    }
}

/// Waits for `ticket`, the commit of registry mutations, settling each attempt; one that failed
/// for lack of space is written again from what the registry then holds, once there is room.
async fn commit_registry(
    store: Store,
    registry: Arc<Mutex<Registry>>,
    mut ticket: CommitTicket,
    mut submitted: Vec<Mutation>,
) -> Result<Vec<u64>, StoreError> {
    loop {
        let result = ticket.await;
        settle(&registry, &submitted, &result);
        match result {
            Err(error) if error.is_out_of_space() => {
                while store.is_full() && !store.is_closed() {
                    tokio::time::sleep(ROOM_CHECK).await;
                }
                let mut registry = registry.lock();
                submitted = registry.resave(&submitted);
                ticket = store.submit(submitted.clone());
            }
            done => return done,
        }
    }
}

/// Tells the registry that a batch of its mutations settled with `result`; a batch that only
/// wrote (no delete, no release) and committed needs no word.
fn settle(
    registry: &Mutex<Registry>,
    mutations: &[Mutation],
    result: &Result<Vec<u64>, StoreError>,
) {
    let out_of_space = matches!(result, Err(error) if error.is_out_of_space());
    let told = mutations.iter().any(|m| match m {
        Mutation::DeleteTransaction { .. } => true,
        // A release: on a store shared by nodes, the transaction leaves memory once written.
        Mutation::PutTransaction(row) => row.released_ms.is_some(),
        _ => false,
    });
    if told || result.is_err() {
        registry.lock().settled(mutations, out_of_space);
    }
}

/// Step 3 of a keyed request (see `keys`), counting a re-send found there.
fn recheck_key(keys: &mut Keys, tenant: &[u8], key: &[u8], mark: Mark, now_ms: i64) -> Recheck {
    let recheck = keys.recheck(tenant, key, mark, now_ms);
    if matches!(recheck, Recheck::Seen(_)) {
        metrics::counter!("ozbus_ingest_duplicates_total").increment(1);
    }
    recheck
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
