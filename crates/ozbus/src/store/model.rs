//! The values the store keeps: outcomes, call records, persisted transactions, and the
//! mutations that change them.
//!
//! Owns: the shape of durable state as the rest of the service sees it. Never: SQL, I/O, or
//! any knowledge of SDMP parsing. Values are byte strings (`Bytes`), because SDMP values are
//! byte-exact and need not be UTF-8; the store never interprets them.

use std::sync::OnceLock;

use bytes::Bytes;

/// Which kind of subscriber an outcome is for (EO's SO / FO / MO).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutcomeClass {
    /// A call connected to an agent and completed by the agent (TC).
    Success,
    /// A call that never reached an agent, or was closed by ozbus (CF, RN, CE, timeout, BD+DD).
    Failure,
    /// A management correction (UO).
    Management,
}

/// An outcome as the service produces it, before it has a place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOutcome {
    pub tenant: Bytes,
    pub class: OutcomeClass,
    pub cn: Bytes,
    pub an: Option<Bytes>,
    pub si: Bytes,
    pub tn: Option<Bytes>,
    pub re: u16,
    pub ao: Option<u16>,
    pub dd: bool,
    pub as_data: Option<Bytes>,
    pub co: Option<Bytes>,
    pub ba: Option<Bytes>,
    pub bn: Option<Bytes>,
    pub bt: Option<Bytes>,
    pub dt: Bytes,
}

impl NewOutcome {
    /// An outcome with only what every outcome has; the optional fields are empty.
    pub fn new(tenant: Bytes, class: OutcomeClass, cn: Bytes, si: Bytes, re: u16) -> NewOutcome {
        NewOutcome {
            tenant,
            class,
            cn,
            an: None,
            si,
            tn: None,
            re,
            ao: None,
            dd: false,
            as_data: None,
            co: None,
            ba: None,
            bn: None,
            bt: None,
            dt: Bytes::new(),
        }
    }
}

/// An accepted outcome: durable, with its place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Position in the log; strictly increasing, never reused (also across restarts and trims).
    pub seq: u64,
    /// Unix milliseconds, set by the writer when the group holding it was written. Never
    /// smaller than the previous outcome's, so that age retention always removes a prefix.
    pub accepted_ms: i64,
    pub outcome: NewOutcome,
    /// What readers derive from the outcome once for all of them; see [`Rendered`].
    pub rendered: Rendered,
}

/// Room, next to an outcome in memory, for byte renderings that every reader of it would
/// otherwise compute again (delivery keeps the formatted part of each OZ here, so an outcome
/// going to many transactions is formatted once). Never stored; not part of the outcome's value.
#[derive(Clone, Debug, Default)]
pub struct Rendered([OnceLock<Bytes>; Rendered::SLOTS]);

impl Rendered {
    /// How many renderings an outcome has room for.
    pub const SLOTS: usize = 2;

    /// The rendering in `slot` (below [`Rendered::SLOTS`]), made by `render` on first use.
    pub fn get_or_init(&self, slot: usize, render: impl FnOnce() -> Bytes) -> &Bytes {
        self.0[slot % Self::SLOTS].get_or_init(render)
    }
}

impl PartialEq for Rendered {
    /// A cache: two outcomes are equal whatever either has rendered.
    fn eq(&self, _: &Rendered) -> bool {
        true
    }
}

impl Eq for Rendered {}

/// Where a call record is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordState {
    /// Registered (MC), not dialed yet.
    Pending,
    /// An agent started dialing it (BD), not connected yet.
    Dialing,
    /// The telephony layer connected it (LC).
    Connected,
}

/// An open call record, keyed by (tenant, si).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    pub tenant: Bytes,
    /// Key within the tenant.
    pub si: Bytes,
    pub cn: Bytes,
    pub tn: Option<Bytes>,
    pub preview_agent: Option<Bytes>,
    pub agent: Option<Bytes>,
    pub as_data: Option<Bytes>,
    pub dt: Option<Bytes>,
    pub state: RecordState,
    pub created_ms: i64,
    /// When the record closes by itself: while pending, its CE expiry; while dialing, the call
    /// timeout from the start of dialing.
    pub expires_ms: Option<i64>,
    pub connected_ms: Option<i64>,
}

/// A transaction that outlives its connection (EO with PS), keyed by (tenant, ps).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistedTransaction {
    pub tenant: Bytes,
    pub ps: Bytes,
    /// The TX it is open under, unique among the tenant's transactions: it can be looked up by
    /// it. Empty when unknown (a row stored before schema 3 whose request the service could not
    /// read).
    pub tx: Bytes,
    /// Opaque to the store: the service keeps the EO that defines the transaction.
    pub request: Bytes,
    /// Last delivered (or, with XA, acknowledged) sequence number.
    pub cursor: u64,
    /// When the last connection let go of it; `None` while a connection holds it, or held it
    /// when the service last stopped (see `Store::held_at_stop`).
    pub released_ms: Option<i64>,
}

/// Reads the TX of a persisted transaction from its request, which only the service can read:
/// the store needs it once, to fill the TX of rows stored before schema 3.
pub type RequestTx = fn(&[u8]) -> Option<Bytes>;

/// One change to durable state. A batch of them (see `Store::submit`) commits atomically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Insert, or replace the record with the same (tenant, si).
    PutRecord(CallRecord),
    /// Remove a record; no-op if there is none.
    DeleteRecord { tenant: Bytes, si: Bytes },
    /// Append an outcome to the log; it gets the next sequence number.
    Append(NewOutcome),
    /// Insert, or replace the transaction with the same (tenant, ps); a replaced transaction's
    /// cursor only moves forward (see `MoveCursor`).
    PutTransaction(PersistedTransaction),
    /// Move a transaction's cursor forward to `cursor`; no-op if the transaction is gone or its
    /// stored cursor is already there or beyond. A stored cursor may have been confirmed to a
    /// client (the MV of an XA), so no write computed earlier and committed later can take it
    /// back: only `RewindCursor` moves it backwards.
    MoveCursor {
        tenant: Bytes,
        ps: Bytes,
        cursor: u64,
    },
    /// Set a transaction's cursor to exactly `cursor`, also backwards; no-op if the transaction
    /// is gone. Only for a client that asks to resume from a position of its choosing (XR).
    RewindCursor {
        tenant: Bytes,
        ps: Bytes,
        cursor: u64,
    },
    /// Forget a transaction; no-op if there is none.
    DeleteTransaction { tenant: Bytes, ps: Bytes },
    /// A transaction without PS is open under TX `tx` in the TX namespace `tenant` on this
    /// node: on a store shared by nodes, the others refuse that TX (EC 809) while this node is
    /// alive and has not written [`Mutation::UnclaimTx`] for it. Never replaces the claim of
    /// another node that is alive. No-op on a store that is not shared.
    ClaimTx { tenant: Bytes, tx: Bytes },
    /// The transaction of a [`Mutation::ClaimTx`] of this node ended; no-op if this node has
    /// no such claim (and on a store that is not shared).
    UnclaimTx { tenant: Bytes, tx: Bytes },
    /// Remember an idempotency key (XK) of `tenant` as used now (the commit's time), with the
    /// first sequence number its batch's `Append`s get (none when the batch appends nothing),
    /// replacing an older use of it. Submitted in the batch of the effect the key guards.
    RememberKey { tenant: Bytes, key: Bytes },
}

/// An idempotency key found committed within the window (`Store::key_committed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedKey {
    /// The first sequence number its batch appended: none when the batch appended no outcome,
    /// or when the key was stored before the store kept its seq (SQLite schema 4, PostgreSQL
    /// schema 3).
    pub seq: Option<u64>,
}

impl UsedKey {
    /// The seqs the key's batch got, as its ticket gave them (a keyed report appends at most
    /// one outcome).
    pub fn seqs(&self) -> Vec<u64> {
        self.seq.into_iter().collect()
    }
}
