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

/// Where `tail` and `send` connect.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Server address; several (repeated, or separated by commas): the first that answers is
    /// used, and `tail --persist` moves on to the next when a connection is lost.
    #[arg(
        long,
        visible_alias = "server",
        env = "OZBUS_ADDR",
        default_value = "127.0.0.1:6502",
        value_delimiter = ','
    )]
    pub addr: Vec<String>,
    /// Speak UTF-16LE (the 6500 listener) instead of 8-bit.
    #[arg(long)]
    pub utf16: bool,
}

impl ServerArgs {
    /// The servers named, in the wire form chosen.
    pub fn servers(&self) -> anyhow::Result<Servers> {
        servers(&self.addr, self.utf16)
    }
}

/// The servers `addrs` names, in the wire form `--utf16` selects.
pub fn servers(addrs: &[String], utf16: bool) -> anyhow::Result<Servers> {
    let addrs = addrs.iter().map(|addr| addr.trim());
    Ok(Servers::new(addrs, wire_form(utf16))?)
}
