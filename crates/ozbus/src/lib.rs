//! ozbus: the call-outcome service.
//!
//! - [`store`]: the durable log of outcomes, call records and persisted transactions.
//! - [`calls`]: call records and the rules that turn call reports into outcomes.
//! - [`subs`]: transactions (EO) and delivery of outcomes to them.
//! - [`server`]: listeners and connections.
//! - [`config`]: settings and their defaults.

pub mod calls;
pub mod cli;
pub mod client;
pub mod config;
pub mod server;
pub mod store;
pub mod subs;
