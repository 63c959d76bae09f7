//! What can go wrong talking to an SDMP server, and an ER as a value.
//!
//! Owns: the crate's one error type, with the address in every connect error (a person reading
//! `connecting to 10.0.0.5:6502` knows where to look), and [`ErrorReply`], an owned ER a caller
//! can keep, print and match on by EC.
//!
//! Never: decides what to do about an error (retry, fail over, give up): that belongs to the
//! layer that knows what it was doing.

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use sdmp::{Code, Envelope, Message, MessageView};

/// Everything this crate reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TCP connection could not be opened.
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The server did not accept the connection (and, with TLS, finish the handshake) in time.
    #[error("connecting to {addr}: no answer within {after:?}")]
    ConnectTimeout { addr: String, after: Duration },
    /// The TLS handshake failed: the server's certificate was not trusted or not for this
    /// name, the server wanted a client certificate, or it does not speak TLS at all.
    #[error("TLS handshake with {addr}{}", not_tls_hint(.source))]
    Handshake {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The TLS settings cannot be used (a file unreadable, no certificate in it, a key that
    /// does not fit): found before anything is sent.
    #[error("TLS settings: {0}")]
    TlsSettings(String),
    /// Every address of a list failed; one error per address, in the order they were tried.
    #[error("no server answered: {}", list(.0))]
    NoServer(Vec<Error>),
    /// Reading or writing an open connection failed.
    #[error("talking to the server")]
    Io(#[from] io::Error),
    /// The server closed the connection (or it broke) before the answer came.
    #[error("the connection to the server was lost")]
    ConnectionLost,
    /// The server refused a message with an ER.
    #[error("the server refused {}: {}", .0.refused_code().unwrap_or("a message"), .0)]
    Refused(Box<ErrorReply>),
    /// Nothing arrived within the time allowed.
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    /// The connection was silent for longer than its keep-alive allows (no DA, no event).
    #[error("the server sent nothing for {0:?} (keep-alive missed)")]
    Silent(Duration),
    /// The server answered UA with a status other than 0 (authenticated).
    #[error(
        "not authenticated as {} in tenant {}: RS {} ({})",
        .0.name.as_deref().unwrap_or("?"),
        .0.tenant,
        .0.status,
        .0.meaning()
    )]
    NotAuthenticated(Box<crate::auth::UserStatus>),
    /// Something the caller asked for cannot be sent as asked (checked before anything is sent).
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

impl Error {
    /// The error and its causes on one line (`connecting to a:6502: connection refused`), for a
    /// log line; `Display` alone names only the outermost.
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// True for the errors after which the same request may work on another connection: the
    /// connection failed, not the request. [`Error::Refused`], [`Error::NotAuthenticated`],
    /// [`Error::Invalid`] and [`Error::TlsSettings`] are false; so are a handshake that TLS
    /// itself refused (an untrusted certificate, a server that does not speak TLS) and a plain
    /// connection to a server that speaks TLS: trying again would only fail again. A list of
    /// failures is one when any of them is.
    pub fn is_connection_failure(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::ConnectionLost
            | Error::Timeout(_)
            | Error::Silent(_) => true,
            Error::NoServer(errors) => errors.iter().any(Error::is_connection_failure),
            Error::Io(error) => !crate::stream::is_tls_on_plain(error),
            Error::Handshake { source, .. } => !refused_by_tls(source),
            Error::Refused(_)
            | Error::NotAuthenticated(_)
            | Error::Invalid { .. }
            | Error::TlsSettings(_) => false,
        }
    }
}

/// What a handshake error adds when the server answered with something that is not TLS at
/// all: most likely a plain listener (which answers the hello with error frames).
fn not_tls_hint(error: &io::Error) -> &'static str {
    use tokio_rustls::rustls::{Error as Tls, InvalidMessage};
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Tls>())
    {
        Some(Tls::InvalidMessage(InvalidMessage::InvalidContentType)) => {
            " (the server's answer is not TLS: a plain listener?)"
        }
        _ => "",
    }
}

/// True when a handshake failed on TLS's own terms (rustls gave the reason), not because the
/// connection broke under it.
fn refused_by_tls(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<tokio_rustls::rustls::Error>())
}

/// `connecting to a:6502: connection refused; connecting to b:6502: no answer within 10s`.
fn list(errors: &[Error]) -> String {
    let texts: Vec<String> = errors.iter().map(Error::with_causes).collect();
    texts.join("; ")
}

/// An ER received from the server, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// EC: the error code (see the protocol's table; 809 is "TX already names an active
    /// transaction").
    pub ec: u16,
    /// MS: the reason in words.
    pub ms: String,
    /// FM: the refused frame as the server echoed it (its first 4,000 characters), no quotes.
    pub fm: Bytes,
    /// The TK of the refused message: the ER's own TK (sent when FM was cut), else the TK
    /// parameter inside FM.
    pub tk: Option<Bytes>,
    /// The whole ER frame as received.
    pub frame: Bytes,
}

impl ErrorReply {
    /// The ER in `frame`, if it is a readable ER.
    pub fn parse(frame: &Bytes) -> Option<ErrorReply> {
        let Ok(Envelope {
            message: Message::Er(er),
            ..
        }) = sdmp::decode(frame)
        else {
            return None;
        };
        let tk = er
            .tk
            .or_else(|| {
                MessageView::parse(er.fm)
                    .ok()?
                    .first(crate::frames::codes::TK)
            })
            .map(|tk| frame.slice_ref(tk));
        Some(ErrorReply {
            ec: er.ec,
            ms: String::from_utf8_lossy(er.ms).into_owned(),
            fm: frame.slice_ref(er.fm),
            tk,
            frame: frame.clone(),
        })
    }

    /// The message code of the refused frame (`EO` for a refused `CG:MA:EO\...`), if readable.
    pub fn refused(&self) -> Option<Code> {
        MessageView::parse(&self.fm).ok().map(|view| view.code())
    }

    fn refused_code(&self) -> Option<&'static str> {
        // A static name keeps Display free of allocation; the codes a client sends are few.
        Some(match self.refused()?.as_str() {
            "EO" => "the subscription (EO)",
            "EE" => "the end of the subscription (EE)",
            "XA" => "the acknowledgement (XA)",
            "UA" => "the authentication (UA)",
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorReply {
    /// `EC 809: TX already names an active transaction (for "EO\TXt1\SO")`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EC {}: {} (for \"{}\")",
            self.ec,
            self.ms,
            String::from_utf8_lossy(&self.fm)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_er_reads_with_the_token_of_the_refused_frame() {
        let frame = Bytes::from_static(b"ER\\EC809\\MSTX taken\\FM\"EO\\TXt1\\SO\\TKeo\"");
        let er = ErrorReply::parse(&frame).expect("an ER");
        assert_eq!((er.ec, er.ms.as_str()), (809, "TX taken"));
        assert_eq!(&er.fm[..], b"EO\\TXt1\\SO\\TKeo");
        assert_eq!(er.tk.as_deref(), Some(&b"eo"[..]));
        assert_eq!(er.refused(), Some(Code(*b"EO")));
        assert_eq!(
            er.to_string(),
            "EC 809: TX taken (for \"EO\\TXt1\\SO\\TKeo\")"
        );
        assert_eq!(
            Error::Refused(Box::new(er)).to_string(),
            "the server refused the subscription (EO): EC 809: TX taken (for \"EO\\TXt1\\SO\\TKeo\")"
        );
    }

    #[test]
    fn a_cut_fm_gives_the_token_in_the_er_itself() {
        let frame = Bytes::from_static(b"ER\\EC850\\MStoo long\\TKk9\\FM\"CF\\CA2\"");
        let er = ErrorReply::parse(&frame).expect("an ER");
        assert_eq!(er.tk.as_deref(), Some(&b"k9"[..]));
        assert!(ErrorReply::parse(&Bytes::from_static(b"MV\\TKk9")).is_none());
    }

    #[test]
    fn a_list_of_failures_names_every_address_and_cause() {
        let error = Error::NoServer(vec![
            Error::Connect {
                addr: "a:1".into(),
                source: io::Error::new(io::ErrorKind::ConnectionRefused, "refused"),
            },
            Error::ConnectTimeout {
                addr: "b:2".into(),
                after: Duration::from_secs(1),
            },
        ]);
        assert_eq!(
            error.to_string(),
            "no server answered: connecting to a:1: refused; connecting to b:2: no answer within 1s"
        );
    }
}
