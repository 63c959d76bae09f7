//! ozbus: the call-outcome service.

pub mod calls;
pub mod store;
