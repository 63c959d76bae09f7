//! An async SDMP client, for programs that talk to ozbus (or any server speaking SDMP, the
//! Softdial CallGem management protocol) over TCP or TLS.
//!
//! Owns: the client side of a conversation, in three layers, each usable on its own:
//! - the raw layer: [`Connection`] (connect in either wire form with a bounded connect time and
//!   TCP_NODELAY, over plain TCP or over TLS as [`ConnectOptions::tls`] says, write frames or
//!   bytes exactly, read [`Frame`]s, split into halves that never wait for each other),
//!   [`Servers`] (several addresses, fail-over) and helpers that read received frames
//!   ([`frame_code`], [`frame_text`], [`describe_er`]);
//! - tracked sending: [`Session`] gives each message a token (TK) and a [`Receipt`] that
//!   resolves on its MV (accepted, durable) or its ER (refused, with EC and MS), with a bounded
//!   window of unanswered messages;
//! - subscriptions: [`Subscription`] (one EO on one connection, its events, XA, EE) and
//!   [`ResumingSubscription`] (a persisted one that reconnects with [`Backoff`], fails over,
//!   re-issues with XR and drops repeats, so the caller sees one stream); plus
//!   [`Connection::authenticate`] and [`Connection::log_in`] (UA, answered by US), which
//!   [`Session::connect_to`] and [`ResumingSubscription`] (on every new connection) use.
//!
//! TLS trusts only what it is given: the CA certificates of a PEM file ([`Tls::from_pem_files`])
//! or a whole rustls configuration ([`Tls::from_config`]), never the system's store. The server
//! name verified is the host part of the address (a DNS name or an IP address).
//!
//! Never: depends on the ozbus service (only on the `sdmp` codec), so it works against any SDMP
//! server and the service's internals cannot leak into clients; never sends a message twice on
//! its own (only an EO is re-issued, which the protocol makes safe); never hides a refusal or a
//! lost connection from the caller.
//!
//! # Example
//!
//! Report a call and wait until the server has it on disk; then follow the outcomes of a
//! campaign, acknowledging each one, across restarts of the server:
//!
//! ```no_run
//! use sdmp::WireForm;
//! use sdmp_client::{
//!     Event, ResumeOptions, ResumingSubscription, Servers, Session, Subscribe,
//! };
//!
//! # async fn example() -> Result<(), sdmp_client::Error> {
//! let session = Session::connect("127.0.0.1:6502", WireForm::Bits8).await?;
//! let receipt = session.send(b"CF\\CA2\\CNSales1\\SI42").await?;
//! receipt.await?; // MV: accepted and durable; an ER would be Error::Refused with its EC
//!
//! let servers = Servers::new(["10.0.0.5:6502", "10.0.0.6:6502"], WireForm::Bits8)?;
//! let subscribe = Subscribe {
//!     campaign: Some("Sales1".into()),
//!     success: true,
//!     failure: true,
//!     persist: Some("crm".into()),
//!     sequenced: true,
//!     ..Subscribe::new("crm")
//! };
//! let mut outcomes = ResumingSubscription::new(servers, subscribe, ResumeOptions::default())?;
//! while let Some(event) = outcomes.next().await? {
//!     if let Event::Outcome(outcome) = event {
//!         println!("{} RE {}", String::from_utf8_lossy(&outcome.si), outcome.re);
//!         if let Some(xs) = outcome.xs {
//!             outcomes.acknowledge(xs).await?;
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The same over TLS, as a user of tenant `acme`:
//!
//! ```no_run
//! use std::path::Path;
//!
//! use sdmp::WireForm;
//! use sdmp_client::{ConnectOptions, Credentials, Servers, Session, SessionOptions, Tls};
//!
//! # async fn example() -> Result<(), sdmp_client::Error> {
//! let options = ConnectOptions {
//!     tls: Some(Tls::from_pem_files(Path::new("/etc/ozbus/ca.pem"), None)?),
//!     ..ConnectOptions::default()
//! };
//! let mut servers = Servers::new(["ozbus.example:6512"], WireForm::Bits8)?.with_options(options);
//! let dialer = Credentials {
//!     tenant: "acme".into(),
//!     name: "dialer".into(),
//!     password: std::env::var("OZBUS_PASSWORD").unwrap_or_default(),
//! };
//! let session = Session::connect_to(&mut servers, Some(&dialer), SessionOptions::default()).await?;
//! session.send(b"CF\\CA2\\CNSales1\\SI42").await?.await?;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/tail.rs` is a complete program.

mod auth;
mod backoff;
mod connection;
mod error;
mod event;
mod frames;
mod request;
mod resume;
mod servers;
mod session;
mod stream;
mod subscription;
#[cfg(test)]
mod test_pki;
#[cfg(test)]
mod testing;
mod tls;

pub use auth::{privileges, Credentials, UserStatus};
pub use backoff::Backoff;
pub use connection::{ConnectOptions, Connection, FrameReader, FrameWriter, CONNECT_TIMEOUT};
pub use error::{Error, ErrorReply};
pub use event::{Event, Gap, Outcome};
pub use frames::{codec, codes, describe_er, frame_bytes, frame_code, frame_text, MAX_FRAME};
pub use resume::{ResumeFrom, ResumeOptions, ResumingSubscription};
pub use sdmp::{Frame, WireForm};
pub use servers::Servers;
pub use session::{Receipt, Session, SessionOptions};
pub use stream::{ReadHalf, Stream, WriteHalf};
pub use subscription::{Subscribe, Subscription, CONFIRM_WAIT};
pub use tls::Tls;
/// The TLS library underneath, for a caller that makes its own configuration
/// ([`Tls::from_config`]).
pub use tokio_rustls::rustls;
