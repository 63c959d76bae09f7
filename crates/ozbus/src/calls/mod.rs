//! Call records and the rules that turn call reports into outcomes.
//!
//! Owns: the state of open call records (pending, dialing, connected; whose agent; when they
//! expire or time out), the outcome tables, and the classification of outcomes. Pure and
//! synchronous: no I/O, no async, no clock (time comes in as `now_ms`, unix milliseconds). The
//! server holds a [`CallBook`] behind a mutex, applies one message at a time, and submits the
//! returned [`Mutation`](crate::store::Mutation)s to the store, which makes them durable in order.
//! Never: sockets, the store's internals, subscriptions, or formatting OZ.
//!
//! Files:
//! - `tables`: the outcome tables (defaults of outcomes.md, the `[outcomes]` config section) and
//!   the success / failure split;
//! - `book`: the records and their indices, dispatch, sweep (CE expiry, call timeout), restore;
//! - one file per message family, each with its checks, its effect and its tests:
//!   `make_call` (MC), `remove_number` (RN), `line_connected` (LC), `call_failed` (CF),
//!   `transaction_complete` (TC), `begin_dial` (BD), `update_outcome` (UO);
//! - `sweep_tests`, `restore_tests`: the behaviour over time and across a restart.

mod begin_dial;
mod book;
mod call_failed;
mod line_connected;
mod make_call;
mod remove_number;
mod tables;
mod transaction_complete;
mod update_outcome;

#[cfg(test)]
mod restore_tests;
#[cfg(test)]
mod sweep_tests;
#[cfg(test)]
mod testkit;

pub use book::CallBook;
pub use tables::{
    AgentEntry, AgentOutcome, Category, Classification, DialingEntry, DialingOutcome,
    OutcomeTables, OutcomesConfig, TablesError, MAX_AO, MAX_RE, RE_USER_DEFINED_LIVE,
};
