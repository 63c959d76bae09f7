//! Builds registry requests for the registry's tests, the way `calls/testkit.rs` builds call
//! reports: one line per EO, with everything else at its usual value; and stands in for the
//! store's rows of persisted transactions the registry has not loaded, answering its lookups the
//! way the core does. Never: a real store, a runtime, or a lock.

use bytes::Bytes;
use sdmp::{Dialect, WireForm};
use tokio::sync::mpsc;

use super::{Filter, Limits, Open, Opened, Persisting, Registry, Subscription, TransactionKey};
use crate::outbound::{self, Budget, Chunk};
use crate::store::{Mutation, PersistedTransaction};
use sdmp::Rejection;

/// The namespace most tests use.
pub const NS: &str = "default";

/// A registry and the log end it is told about.
pub struct Kit {
    pub registry: Registry,
    pub log_end: u64,
    /// The rows the store held at start (what lookups find).
    pub stored: Vec<PersistedTransaction>,
    /// Keeps every connection's channel open.
    receivers: Vec<mpsc::Receiver<Chunk>>,
}

/// An EO's terms as the tests vary them.
#[derive(Clone, Default)]
pub struct Eo {
    pub namespace: Option<&'static str>,
    pub tx: &'static str,
    pub ps: Option<&'static str>,
    pub xs: bool,
    pub xr: Option<u64>,
}

pub fn eo(tx: &'static str) -> Eo {
    Eo {
        tx,
        ..Eo::default()
    }
}

impl Eo {
    pub fn ps(mut self, ps: &'static str) -> Eo {
        self.ps = Some(ps);
        self
    }

    pub fn xs(mut self) -> Eo {
        self.xs = true;
        self
    }

    pub fn xr(mut self, xr: u64) -> Eo {
        self.xr = Some(xr);
        self
    }

    pub fn namespace(mut self, namespace: &'static str) -> Eo {
        self.namespace = Some(namespace);
        self
    }
}

pub fn key(tx: &str) -> TransactionKey {
    key_in(NS, tx)
}

pub fn key_in(namespace: &str, tx: &str) -> TransactionKey {
    TransactionKey::new(&Bytes::copy_from_slice(namespace.as_bytes()), tx.as_bytes())
}

impl Kit {
    pub fn new(log_end: u64) -> Kit {
        Kit::with_limits(log_end, Limits::default())
    }

    pub fn with_limits(log_end: u64, limits: Limits) -> Kit {
        Kit {
            registry: Registry::new(limits),
            log_end,
            stored: Vec::new(),
            receivers: Vec::new(),
        }
    }

    /// A start with `rows` in the store: the registry counts them, loads none.
    pub fn restore(&mut self, rows: Vec<PersistedTransaction>, started_ms: i64) {
        let mut counts: Vec<(Bytes, u64)> = Vec::new();
        for row in &rows {
            match counts.iter_mut().find(|(tenant, _)| *tenant == row.tenant) {
                Some((_, count)) => *count += 1,
                None => counts.push((row.tenant.clone(), 1)),
            }
        }
        self.registry.restore(counts, started_ms);
        self.stored = rows;
    }

    /// What the store answers for `tx` and `ps` in `namespace`.
    pub fn find(&self, namespace: &str, tx: &str, ps: Option<&str>) -> Vec<PersistedTransaction> {
        self.stored
            .iter()
            .filter(|row| {
                row.tenant == namespace.as_bytes()
                    && (row.tx == tx.as_bytes() || ps.is_some_and(|ps| row.ps == ps.as_bytes()))
            })
            .cloned()
            .collect()
    }

    /// What the core does before a request about `tx` (and `ps`): looks up and loads, when the
    /// registry asks for it. Returns the mutations loading made.
    pub fn load_for(&mut self, namespace: &str, tx: &str, ps: Option<&str>) -> Vec<Mutation> {
        let ns = Bytes::copy_from_slice(namespace.as_bytes());
        let Some(lookup) = self
            .registry
            .lookup(&ns, tx.as_bytes(), ps.map(str::as_bytes))
        else {
            return Vec::new();
        };
        let rows = self.find(namespace, tx, ps);
        self.registry.load(&lookup, rows).expect("not stale")
    }

    /// The EO `eo` from `connection` (after what it needs is loaded).
    pub fn open(&mut self, connection: u64, eo: Eo) -> Result<Opened, Rejection> {
        self.load_for(eo.namespace.unwrap_or(NS), eo.tx, eo.ps);
        let (out, receiver) = outbound::channel(WireForm::Bits8, Budget::new(1 << 20));
        self.receivers.push(receiver);
        let request = format!("EO\\TX{}\\FO", eo.tx);
        let open = Open {
            namespace: Bytes::copy_from_slice(eo.namespace.unwrap_or(NS).as_bytes()),
            subscription: Subscription {
                tx: Bytes::copy_from_slice(eo.tx.as_bytes()),
                filter: Filter {
                    failure: true,
                    ..Filter::default()
                },
                sequenced: eo.xs,
                dialect: Dialect::V1,
                rate: 100,
            },
            resume_after: eo.xr,
            persist: eo.ps.map(|ps| Persisting {
                token: Bytes::copy_from_slice(ps.as_bytes()),
                request: Bytes::from(request),
            }),
            connection,
            out,
            stored_persisted: None,
        };
        self.registry.open(open, self.log_end)
    }
}

/// The cursor a mutation writes for `ps`, if it writes one: (kind, cursor).
pub fn cursor_write(mutation: &Mutation) -> Option<(&'static str, u64)> {
    match mutation {
        Mutation::PutTransaction(row) => Some(("put", row.cursor)),
        Mutation::MoveCursor { cursor, .. } => Some(("move", *cursor)),
        Mutation::RewindCursor { cursor, .. } => Some(("rewind", *cursor)),
        _ => None,
    }
}
