//! SDMP, the text protocol of the Softdial CallGem contact-center engine: framing, parsing,
//! validation and formatting, with no I/O of its own.
//!
//! - [`framing`]: a tokio-util codec for both wire forms (8-bit with NUL terminators, UTF-16LE).
//! - [`parse`]: the syntax of one frame ([`MessageView`]), borrowing, allocation-free.
//! - [`messages`]: one typed struct per message and the schema tables behind them.
//! - [`validate`](mod@validate): frame to typed [`Message`], or a [`Rejection`] carrying the EC.
//! - [`format`](mod@format): typed message to frame bytes; [`PreparedOz`] for fan-out.
//! - [`schema`]: the vocabulary of the tables, and their Markdown rendering.
//!
//! ```
//! use sdmp::{decode_request, Envelope, Er, Message, WireForm};
//!
//! let frame = b"CF\\CNSales1\\TN001234567890\\CA2";
//! let Envelope { message: Message::Cf(cf), .. } = decode_request(frame).unwrap() else { panic!() };
//! assert_eq!((cf.ca, cf.cn, cf.tn), (2, &b"Sales1"[..], Some(&b"001234567890"[..])));
//!
//! // A rejected frame becomes an ER in one step.
//! let frame = b"EO\\CNSales1\\FO\\SO";
//! let rejection = decode_request(frame).unwrap_err();
//! let er = Envelope { dialect: sdmp::Dialect::of_frame(frame), message: Er::for_frame(&rejection, frame, WireForm::Bits8).into() };
//! assert_eq!(&er.to_bytes()[..], &b"ER\\EC803\\MStransaction identifier (TX) missing\\FM\"EO\\CNSales1\\FO\\SO\""[..]);
//! ```

pub mod error;
pub mod format;
pub mod framing;
pub mod messages;
pub mod parse;
pub mod schema;
pub mod validate;

pub use error::{ErrorCode, Rejection};
pub use format::{FaultyFrame, OzFrame, PreparedOz};
pub use framing::{Frame, SdmpCodec, WireForm, WriteMessage};
pub use messages::{
    Bd, Cf, Common, Da, Ee, Ef, Envelope, Eo, Er, Hundredths, Lc, Mc, Message, Mv, Oz, Rn, Tc, Ua,
    Uo, Us, Vs, Xa, Xg,
};
pub use parse::{Dialect, MessageView};
pub use schema::{Code, MessageSpec};
pub use validate::{decode, decode_request, validate};
