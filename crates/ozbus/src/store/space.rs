//! Out of space: the state both backends' writers keep when a write fails for lack of space,
//! as every handle of the store reads it.
//!
//! Owns two flags and their changes: `full` (a write failed for lack of space, and no probe
//! found room since: ingestion is refused) and `fenced` (a batch that changed call records or
//! the log failed for it: such batches fail untried until the service re-reads its records),
//! with the `ozbus_store_full` gauge and one log line per change. Only the store's writer
//! changes them. Never: writes, probes or decides when to probe (each writer does, in its own
//! way: a file in the data directory, a row in PostgreSQL).

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
pub(crate) struct Space {
    full: AtomicBool,
    fenced: AtomicBool,
}

impl Space {
    /// Not full, not fenced (a store that opens has not failed a write yet).
    pub(crate) fn new() -> Space {
        metrics::gauge!("ozbus_store_full").set(0.0);
        Space {
            full: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    pub(crate) fn fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// A write to `store` failed for lack of space; `book`: it changed call records or the
    /// log. True when the store has just become full (the writer then plans its first probe).
    pub(crate) fn ran_out(&self, book: bool, store: impl Display) -> bool {
        if book {
            self.fenced.store(true, Ordering::Release);
        }
        let became_full = !self.full.swap(true, Ordering::AcqRel);
        if became_full {
            metrics::gauge!("ozbus_store_full").set(1.0);
            tracing::warn!(
                %store,
                "the store is out of space: ingestion is refused (EC 813) until there is room \
                 again; subscribers go on receiving what was committed"
            );
        }
        became_full
    }

    /// A probe of `store` found room: ingestion resumes.
    pub(crate) fn room_again(&self, store: impl Display) {
        if self.full.swap(false, Ordering::AcqRel) {
            metrics::gauge!("ozbus_store_full").set(0.0);
            tracing::info!(%store, "the store has room again: ingestion resumes");
        }
    }

    /// The service re-read its call records: batches that change them are tried again.
    pub(crate) fn lower_fence(&self) {
        self.fenced.store(false, Ordering::Release);
    }
}
