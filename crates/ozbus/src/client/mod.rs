//! Client tools: `ozbus tail`, `ozbus send` and `ozbus bench`, the programs a person or a script
//! uses to talk to an SDMP server (ozbus or anything else speaking the protocol).
//!
//! Owns: the command line of the three tools and what they show; each tool is one file, with
//! its clap arguments and its `run`. Connections, frames, subscriptions and fail-over between
//! several `--addr` come from the `sdmp-client` crate.
//!
//! Never: opens sockets or cuts frames itself, or depends on the service's internals (the tools
//! speak only SDMP, so they work against any server); the one exception is `bench`, which
//! starts an in-process server when it is given no address.

use sdmp::WireForm;
use sdmp_client::Servers;

pub mod bench;
pub mod roll_forward;
pub mod send;
pub mod tail;

/// The wire form a `--utf16` flag selects.
pub fn wire_form(utf16: bool) -> WireForm {
    if utf16 {
        WireForm::Utf16Le
    } else {
        WireForm::Bits8
    }
}

/// The servers `--addr` names (repeated, or comma-separated), in the wire form `--utf16` selects.
pub fn servers(addrs: &[String], utf16: bool) -> anyhow::Result<Servers> {
    Ok(Servers::new(
        addrs.iter().map(|addr| addr.trim()),
        wire_form(utf16),
    )?)
}
