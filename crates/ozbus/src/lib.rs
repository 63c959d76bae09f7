//! ozbus: the call-outcome service.
//!
//! Layers, calls pointing one way (front ends → core → calls / subs → store):
//!
//! - [`server`]: the SDMP front end (listeners, connections); translates and calls the core.
//! - [`http`]: the HTTP front end (JSON API, health, metrics, OpenAPI); likewise.
//! - [`core`]: the one way any front end changes state; owns the call book, the transaction
//!   registry and the store, and submits every effect in the order it decided it.
//! - [`calls`]: call records and the rules that turn call reports into outcomes (pure).
//! - [`subs`]: transactions (EO) and delivery of outcomes to them.
//! - [`outbound`]: the bounded channel a connection is sent through.
//! - [`store`]: the durable log of outcomes, call records and persisted transactions.
//! - [`config`]: settings and their defaults; [`cli`] and [`client`]: the binary and its tools.

pub mod calls;
pub mod cli;
pub mod client;
pub mod config;
pub mod core;
pub mod http;
pub mod outbound;
pub mod server;
pub mod store;
pub mod subs;
