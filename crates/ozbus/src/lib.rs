//! ozbus: the call-outcome service.

pub mod store;
