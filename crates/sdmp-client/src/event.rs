//! What a subscription delivers: outcomes, gap notices, acknowledgements, the end.
//!
//! Owns: [`Event`], and the owned forms of OZ ([`Outcome`]) and XG ([`Gap`]): each keeps the
//! frame as received and its fields as slices of that frame, so an event can be kept, sent to
//! another task or printed exactly as it came, without copying a value.
//!
//! Never: reads a connection; [`Subscription`](crate::Subscription) does, and decides which
//! frame is which event.

use bytes::Bytes;
use sdmp::{Envelope, Frame, Message, Oz, Rejection};

use crate::error::ErrorReply;

/// One thing a subscription received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An OZ of this transaction (boxed: it is by far the largest event).
    Outcome(Box<Outcome>),
    /// An XG of this transaction: outcomes removed by retention before it received them.
    Gap(Gap),
    /// The MV of an acknowledgement sent with confirmation: the server's cursor is durably at
    /// `xs` (no crash will send an event at or below it again).
    Acknowledged { xs: u64 },
    /// The transaction ended: its EF (after our EE, or because another connection took the
    /// PersistToken over, or it expired). Nothing follows.
    Finished { frame: Bytes },
    /// An ER for something other than the EO (an XA refused with EC 810, say). The
    /// subscription goes on.
    Refused(ErrorReply),
    /// An OZ or XG that cannot be read (a server's mistake, shown rather than dropped), with
    /// the reason.
    Unreadable { frame: Frame, reason: String },
    /// Any other frame (not DA, which the subscription handles itself): an MV or OZ for
    /// another token or transaction, a US, a code this crate does not know.
    Other(Frame),
}

/// One OZ, owned. Fields are as in the protocol's OZ table; values are byte-exact (on the
/// UTF-16 form, UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The OZ frame as received.
    pub frame: Bytes,
    pub tx: Bytes,
    pub td: Option<Bytes>,
    pub cn: Bytes,
    pub an: Option<Bytes>,
    pub si: Bytes,
    pub tn: Option<Bytes>,
    pub re: u16,
    pub ao: Option<u16>,
    pub dd: bool,
    pub as_data: Option<Bytes>,
    pub co: Option<Bytes>,
    pub ba: Option<Bytes>,
    pub bn: Option<Bytes>,
    pub bt: Option<Bytes>,
    /// The sequence number, on transactions opened with XS.
    pub xs: Option<u64>,
    /// The UTC time the outcome was accepted, with XS.
    pub xt: Option<Bytes>,
    pub dt: Bytes,
}

impl Outcome {
    /// Reads an OZ frame.
    pub fn parse(frame: Bytes) -> Result<Outcome, Rejection> {
        let oz = match sdmp::decode(&frame)? {
            Envelope {
                message: Message::Oz(oz),
                ..
            } => oz,
            other => return Err(not_a(&other, "OZ")),
        };
        let part = |value: &[u8]| frame.slice_ref(value);
        let some = |value: Option<&[u8]>| value.map(part);
        Ok(Outcome {
            tx: part(oz.tx),
            td: some(oz.td),
            cn: part(oz.cn),
            an: some(oz.an),
            si: part(oz.si),
            tn: some(oz.tn),
            re: oz.re,
            ao: oz.ao,
            dd: oz.dd,
            as_data: some(oz.as_data),
            co: some(oz.co),
            ba: some(oz.ba),
            bn: some(oz.bn),
            bt: some(oz.bt),
            xs: oz.xs,
            xt: some(oz.xt),
            dt: part(oz.dt),
            frame: frame.clone(),
        })
    }

    /// The outcome as the codec's borrowed [`Oz`], to format or print it.
    pub fn oz(&self) -> Oz<'_> {
        Oz {
            tx: &self.tx,
            td: self.td.as_deref(),
            cn: &self.cn,
            an: self.an.as_deref(),
            si: &self.si,
            tn: self.tn.as_deref(),
            re: self.re,
            ao: self.ao,
            dd: self.dd,
            as_data: self.as_data.as_deref(),
            co: self.co.as_deref(),
            ba: self.ba.as_deref(),
            bn: self.bn.as_deref(),
            bt: self.bt.as_deref(),
            xs: self.xs,
            xt: self.xt.as_deref(),
            dt: &self.dt,
        }
    }
}

/// One XG: the events with sequence numbers `first` to `last` were removed by retention before
/// the transaction received them; delivery goes on after `last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub frame: Bytes,
    pub tx: Bytes,
    pub first: u64,
    pub last: u64,
}

impl Gap {
    /// Reads an XG frame.
    pub fn parse(frame: Bytes) -> Result<Gap, Rejection> {
        match sdmp::decode(&frame)? {
            Envelope {
                message: Message::Xg(xg),
                ..
            } => Ok(Gap {
                tx: frame.slice_ref(xg.tx),
                first: xg.xf,
                last: xg.xl,
                frame: frame.clone(),
            }),
            other => Err(not_a(&other, "XG")),
        }
    }
}

fn not_a(got: &Envelope<'_>, wanted: &str) -> Rejection {
    Rejection::new(
        sdmp::ErrorCode::UnknownMessage,
        format!("expected {wanted}, got {}", got.message.spec().code),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_keeps_its_frame_and_reads_back_as_the_same_oz() {
        let frame = Bytes::from_static(
            b"OZ\\TXt\\TDacme\\CNSales1\\ANJoe\\SI42\\RE10\\AO167\\XS7\\XT2026-11-25T17:27:57.123Z\\DTa=1",
        );
        let outcome = Outcome::parse(frame.clone()).expect("an OZ");
        assert_eq!(outcome.frame, frame);
        assert_eq!(
            (&outcome.si[..], outcome.re, outcome.xs),
            (&b"42"[..], 10, Some(7))
        );
        let again = Envelope {
            dialect: sdmp::Dialect::V1,
            message: outcome.oz().into(),
        }
        .to_bytes();
        assert_eq!(again, frame);
    }

    #[test]
    fn a_gap_reads_and_other_frames_do_not() {
        let gap = Gap::parse(Bytes::from_static(b"XG\\TXt\\XF3\\XL5")).expect("an XG");
        assert_eq!((&gap.tx[..], gap.first, gap.last), (&b"t"[..], 3, 5));
        assert!(Gap::parse(Bytes::from_static(b"OZ\\TXt")).is_err());
        let error = Outcome::parse(Bytes::from_static(b"XG\\TXt\\XF3\\XL5")).unwrap_err();
        assert_eq!(error.reason, "expected OZ, got XG");
        assert!(Outcome::parse(Bytes::from_static(b"OZ\\TXt\\CNc\\RE1\\DT")).is_err());
    }
}
