//! Test bench for the call book: real frames in, mutations applied to a simulated store.

use std::collections::HashMap;

use bytes::Bytes;
use sdmp::{decode_request, Rejection};

use super::{CallBook, OutcomeTables};
use crate::store::{CallRecord, Mutation, NewOutcome, OutcomeClass};

pub const T: &[u8] = b"default";
/// Four hours, the default call timeout.
pub const TIMEOUT_MS: i64 = 4 * 3600 * 1000;
/// An arbitrary start time (2026-01-01T00:00:00Z).
pub const START_MS: i64 = 1_767_225_600_000;

/// What the store would hold after the mutations: records by (tenant, si) and the log.
#[derive(Debug, Default)]
pub struct SimStore {
    pub records: HashMap<(Bytes, Bytes), CallRecord>,
    pub log: Vec<NewOutcome>,
}

impl SimStore {
    pub fn apply(&mut self, mutations: &[Mutation]) {
        for m in mutations {
            match m {
                Mutation::PutRecord(r) => {
                    self.records
                        .insert((r.tenant.clone(), r.si.clone()), r.clone());
                }
                Mutation::DeleteRecord { tenant, si } => {
                    self.records.remove(&(tenant.clone(), si.clone()));
                }
                Mutation::Append(o) => self.log.push(o.clone()),
                other => panic!("the call book never produces {other:?}"),
            }
        }
    }
}

pub struct Bench {
    pub book: CallBook,
    pub store: SimStore,
    pub now: i64,
}

impl Bench {
    pub fn new() -> Bench {
        Bench::with_tables(OutcomeTables::default())
    }

    pub fn with_tables(tables: OutcomeTables) -> Bench {
        Bench {
            book: CallBook::new(tables, TIMEOUT_MS),
            store: SimStore::default(),
            now: START_MS,
        }
    }

    /// Decodes `frame` as the server would and applies it in the default tenant.
    pub fn send(&mut self, frame: &str) -> Result<Vec<Mutation>, Rejection> {
        self.send_in(T, frame)
    }

    pub fn send_in(&mut self, tenant: &[u8], frame: &str) -> Result<Vec<Mutation>, Rejection> {
        let envelope = decode_request(frame.as_bytes())
            .unwrap_or_else(|r| panic!("test frame {frame} does not decode: {r}"));
        let before = self.book.snapshot();
        let result = self.book.apply(self.now, tenant, &envelope.message);
        match &result {
            Ok(mutations) => {
                self.store.apply(mutations);
                self.assert_store_matches_book();
            }
            Err(_) => assert_eq!(
                before,
                self.book.snapshot(),
                "{frame} was refused but changed the book"
            ),
        }
        result
    }

    /// Applies a frame that must be accepted.
    pub fn ok(&mut self, frame: &str) -> Vec<Mutation> {
        self.send(frame)
            .unwrap_or_else(|r| panic!("{frame} refused: {r}"))
    }

    /// Applies a frame that must be refused; returns its EC (the bench checks nothing changed).
    pub fn ec(&mut self, frame: &str) -> u16 {
        match self.send(frame) {
            Ok(m) => panic!("{frame} accepted: {m:?}"),
            Err(r) => r.code.number(),
        }
    }

    /// Applies a frame that must produce exactly one outcome, and returns it.
    pub fn outcome(&mut self, frame: &str) -> NewOutcome {
        let mutations = self.ok(frame);
        only_outcome(&mutations)
    }

    /// Sweeps at `at` (which becomes now) and returns the outcomes, in order.
    pub fn sweep(&mut self, at: i64) -> Vec<NewOutcome> {
        self.now = at;
        let mutations = self.book.sweep(at);
        self.store.apply(&mutations);
        self.assert_store_matches_book();
        outcomes(&mutations)
    }

    /// A new book rebuilt from what the store holds, as at start-up.
    pub fn restart(&mut self) {
        let tables = self.book.tables().clone();
        self.book = CallBook::new(tables, TIMEOUT_MS);
        self.book
            .restore(self.store.records.values().cloned().collect());
        self.assert_store_matches_book();
    }

    fn assert_store_matches_book(&self) {
        let book: HashMap<_, _> = self
            .book
            .records()
            .map(|r| ((r.tenant.clone(), r.si.clone()), r.clone()))
            .collect();
        assert_eq!(book, self.store.records);
        assert_eq!(self.book.open_records(), book.len());
    }

    pub fn record(&self, si: &str) -> Option<&CallRecord> {
        self.book.tenant(T)?.record(si.as_bytes())
    }
}

/// The outcomes among mutations, in order.
pub fn outcomes(mutations: &[Mutation]) -> Vec<NewOutcome> {
    mutations
        .iter()
        .filter_map(|m| match m {
            Mutation::Append(o) => Some(o.clone()),
            _ => None,
        })
        .collect()
}

/// The single outcome of closing a record (DeleteRecord + Append) or of a CF on an unknown record
/// (Append alone).
pub fn only_outcome(mutations: &[Mutation]) -> NewOutcome {
    match mutations {
        [Mutation::DeleteRecord { tenant, si }, Mutation::Append(o)] => {
            assert_eq!((tenant, si), (&o.tenant, &o.si));
            o.clone()
        }
        [Mutation::Append(o)] => o.clone(),
        other => panic!("expected one closing outcome, got {other:?}"),
    }
}

pub fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

pub fn ob(text: &str) -> Option<Bytes> {
    Some(b(text))
}

/// An outcome with only the fields every outcome has; tests add the rest.
pub fn expected(class: OutcomeClass, cn: &str, si: &str, re: u16) -> NewOutcome {
    NewOutcome::new(Bytes::from_static(T), class, b(cn), b(si), re)
}
