//! A subscription: one EO on one connection, its events, its acknowledgements, its end.
//!
//! Owns: the EO built from [`Subscribe`] (checked against the EO table before it is sent), the
//! optional keep-alive (VS, and a limit on silence), and the routing of every frame that arrives
//! on the connection into an [`Event`]: OZ and XG of this transaction, the MV of the EO, of an
//! acknowledgement and of the EE, ER, EF. It is driven by the caller: nothing is read while the
//! caller does not ask for the next event, so a slow caller slows only its own connection
//! (which the server handles as any slow reader), and no memory grows behind its back.
//!
//! Never: reconnects or re-issues ([`ResumingSubscription`](crate::ResumingSubscription) does),
//! drops or reorders events, or acknowledges on its own.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use sdmp::{Dialect, Ee, Envelope, Eo, Frame, MessageView, Xa};

use crate::connection::Connection;
use crate::error::{Error, ErrorReply};
use crate::event::{Event, Gap, Outcome};
use crate::frames::{codes, frame_bytes, frame_code};
use crate::request::checked_frame;

/// The token of the EO, when it asks for confirmation.
const EO_TOKEN: &[u8] = b"eo";
/// The token of the EE, when the subscription asked for confirmation.
const EE_TOKEN: &[u8] = b"ee";
/// The token of a confirmed acknowledgement is this and the sequence number.
const XA_TOKEN: &[u8] = b"xa-";
/// A keep-alive interval allows this many missed DA before the connection counts as dead.
const MISSED_KEEP_ALIVES: u32 = 5;
/// How long [`Subscription::open`] waits for the EO's MV by default.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(10);

/// What to subscribe to: the parameters of the EO.
///
/// ```
/// let subscribe = sdmp_client::Subscribe {
///     campaign: Some("Sales1".into()),
///     failure: true,
///     persist: Some("crm-feed".into()),
///     sequenced: true,
///     ..sdmp_client::Subscribe::new("crm")
/// };
/// assert_eq!(&subscribe.frame().unwrap()[..], b"EO\\TXcrm\\CNSales1\\FO\\PScrm-feed\\XS\\TKeo");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    /// TX: names the transaction.
    pub tx: String,
    /// CN: only this campaign.
    pub campaign: Option<String>,
    /// TD: only this tenant.
    pub tenant: Option<String>,
    /// SO.
    pub success: bool,
    /// FO.
    pub failure: bool,
    /// MO.
    pub management: bool,
    /// PS: the server keeps the transaction, and its events, while no connection holds it.
    pub persist: Option<String>,
    /// CS: events per second during a roll-forward.
    pub rate: Option<u32>,
    /// XS: every OZ carries its sequence number and time.
    pub sequenced: bool,
    /// XR: start after this sequence number.
    pub resume_after: Option<u64>,
    /// Put a TK on the EO and wait for its MV when opening (the transaction exists, and with
    /// PS is stored, once open returns); the EE then carries one too. Default: true.
    pub confirm: bool,
    /// Ask for a DA every this long (VS\VI, whole seconds, at least 1) and treat a connection
    /// that stays silent for five intervals as lost.
    pub keep_alive: Option<Duration>,
}

impl Subscribe {
    /// A subscription named `tx`, confirmed, with no outcome class chosen yet (at least one
    /// of `success`, `failure`, `management` must be set).
    pub fn new(tx: impl Into<String>) -> Subscribe {
        Subscribe {
            tx: tx.into(),
            campaign: None,
            tenant: None,
            success: false,
            failure: false,
            management: false,
            persist: None,
            rate: None,
            sequenced: false,
            resume_after: None,
            confirm: true,
            keep_alive: None,
        }
    }

    /// The EO, checked against the EO table.
    pub fn frame(&self) -> Result<Bytes, Error> {
        let eo = Eo {
            tx: self.tx.as_bytes(),
            cn: bytes(&self.campaign),
            so: self.success,
            fo: self.failure,
            mo: self.management,
            ps: bytes(&self.persist),
            cs: self.rate,
            xs: self.sequenced,
            xr: self.resume_after,
            tk: self.confirm.then_some(EO_TOKEN),
            td: bytes(&self.tenant),
        };
        checked_frame(
            "subscription",
            eo.into(),
            &[
                ("TX", Some(self.tx.as_bytes())),
                ("CN", bytes(&self.campaign)),
                ("TD", bytes(&self.tenant)),
                ("PS", bytes(&self.persist)),
            ],
        )
    }

    /// The VS that asks for the keep-alive, if any.
    fn keep_alive_frame(&self) -> Option<String> {
        self.keep_alive
            .map(|every| format!("VS\\VI{}", every.as_secs().clamp(1, 99_999)))
    }

    /// How long the connection may stay silent, with the keep-alive.
    fn silence_limit(&self) -> Option<Duration> {
        self.keep_alive
            .map(|every| every.max(Duration::from_secs(1)) * MISSED_KEEP_ALIVES)
    }
}

/// Where the end of the transaction stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    Open,
    /// EE sent; the EF (kept until the EE's MV too has come, when one is due) and the MV.
    Ending {
        ef: Option<Bytes>,
        mv_due: bool,
    },
    Over,
}

/// One transaction on one connection. Read it with [`next`](Self::next).
#[derive(Debug)]
pub struct Subscription {
    conn: Connection,
    tx: Bytes,
    confirm: bool,
    silence: Option<Duration>,
    /// Events read while waiting for a reply, handed out first.
    ready: VecDeque<Event>,
    eo_confirmed: bool,
    end: End,
}

impl Subscription {
    /// Sends the EO (and the keep-alive's VS) on `conn`; with `subscribe.confirm`, waits for
    /// the EO's MV for at most [`CONFIRM_WAIT`]. An ER for the EO is [`Error::Refused`].
    pub async fn open(conn: Connection, subscribe: &Subscribe) -> Result<Subscription, Error> {
        Self::open_within(conn, subscribe, CONFIRM_WAIT).await
    }

    /// [`open`](Self::open), waiting at most `within` for the EO's MV.
    pub async fn open_within(
        mut conn: Connection,
        subscribe: &Subscribe,
        within: Duration,
    ) -> Result<Subscription, Error> {
        let eo = subscribe.frame()?;
        conn.feed(&eo).await?;
        if let Some(vs) = subscribe.keep_alive_frame() {
            conn.feed(vs.as_str()).await?;
        }
        conn.flush().await?;
        let mut subscription = Subscription {
            conn,
            tx: Bytes::from(subscribe.tx.clone()),
            confirm: subscribe.confirm,
            silence: subscribe.silence_limit(),
            ready: VecDeque::new(),
            eo_confirmed: false,
            end: End::Open,
        };
        if subscribe.confirm {
            let confirmed = async {
                while !subscription.eo_confirmed {
                    subscription.read_one().await?;
                }
                Ok::<_, Error>(())
            };
            tokio::time::timeout(within, confirmed)
                .await
                .map_err(|_| Error::Timeout(within))??;
        }
        Ok(subscription)
    }

    /// The transaction's TX.
    pub fn tx(&self) -> &[u8] {
        &self.tx
    }

    /// The address of the connection.
    pub fn peer(&self) -> &str {
        self.conn.peer()
    }

    /// The next event. `Ok(None)` after [`Event::Finished`] (or after a refused EE): the
    /// transaction is over. Errors: the connection was lost or stayed silent too long, or the
    /// EO was refused ([`Error::Refused`]). Cancel-safe: usable in `select!` without losing
    /// an event.
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            if self.end == End::Over {
                return Ok(None);
            }
            self.read_one().await?;
        }
    }

    /// Acknowledges every event up to and including `xs` (XA), without confirmation.
    pub async fn acknowledge(&mut self, xs: u64) -> Result<(), Error> {
        self.send_xa(xs, false).await
    }

    /// Acknowledges up to `xs` and asks for confirmation: [`Event::Acknowledged`] comes once
    /// the server's cursor is durably there (or [`Event::Refused`] if the XA is refused).
    pub async fn acknowledge_confirmed(&mut self, xs: u64) -> Result<(), Error> {
        self.send_xa(xs, true).await
    }

    /// Acknowledges up to `xs` and waits (at most `within`) until the server confirms that its
    /// cursor is durably there. Events that arrive meanwhile are kept for [`next`](Self::next).
    /// When the transaction ends first, the confirmation cannot come: [`Error::ConnectionLost`]
    /// (and [`Event::Finished`] is kept for `next`).
    pub async fn acknowledge_and_wait(&mut self, xs: u64, within: Duration) -> Result<(), Error> {
        self.send_xa(xs, true).await?;
        let token = xa_token(xs);
        let confirmed = async {
            while self.end != End::Over {
                let queued = self.ready.len();
                self.read_one().await?;
                // The event just read, if any, may be the answer: take it out, keep the rest.
                let answer = match self.ready.back() {
                    _ if self.ready.len() == queued => false,
                    Some(Event::Acknowledged { xs: got }) => *got == xs,
                    Some(Event::Refused(er)) => er.tk.as_deref() == Some(&token[..]),
                    _ => false,
                };
                if answer {
                    return match self.ready.pop_back() {
                        Some(Event::Refused(er)) => Err(Error::Refused(Box::new(er))),
                        _ => Ok(()),
                    };
                }
            }
            Err(Error::ConnectionLost)
        };
        tokio::time::timeout(within, confirmed)
            .await
            .map_err(|_| Error::Timeout(within))?
    }

    /// Ends the transaction (EE; a persisted one is forgotten with its buffer). Keep calling
    /// [`next`](Self::next): events still on their way come first, then
    /// [`Event::Finished`] (with confirmation, once the EE's MV has come too).
    pub async fn end(&mut self) -> Result<(), Error> {
        let ee = Envelope {
            dialect: Dialect::V1,
            message: Ee {
                tx: &self.tx,
                tk: self.confirm.then_some(EE_TOKEN),
                ..Ee::default()
            }
            .into(),
        };
        self.conn.send(&ee).await?;
        if self.end == End::Open {
            self.end = End::Ending {
                ef: None,
                mv_due: self.confirm,
            };
        }
        Ok(())
    }

    /// The connection, for what this type does not do (a test resets it, say).
    pub fn into_connection(self) -> Connection {
        self.conn
    }

    async fn send_xa(&mut self, xs: u64, confirm: bool) -> Result<(), Error> {
        let token = xa_token(xs);
        let xa = Envelope {
            dialect: Dialect::V1,
            message: Xa {
                tx: &self.tx,
                xs,
                tk: confirm.then_some(&token[..]),
                ..Xa::default()
            }
            .into(),
        };
        Ok(self.conn.send(&xa).await?)
    }

    /// Reads one frame and routes it: an event goes to `ready`; replies change the state.
    async fn read_one(&mut self) -> Result<(), Error> {
        let next = self.conn.next_frame();
        let item = match self.silence {
            Some(limit) => tokio::time::timeout(limit, next)
                .await
                .map_err(|_| Error::Silent(limit))?,
            None => next.await,
        };
        let frame = match item {
            None => return Err(Error::ConnectionLost),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(frame)) => frame,
        };
        if let Some(event) = self.route(frame)? {
            self.ready.push_back(event);
        }
        Ok(())
    }

    fn route(&mut self, frame: Frame) -> Result<Option<Event>, Error> {
        let code = frame_code(frame_bytes(&frame));
        let bytes = match &frame {
            Frame::Message(bytes) => bytes.clone(),
            Frame::Oversize { .. } | Frame::InvalidUtf16 { .. } => {
                let reason = match frame {
                    Frame::Oversize { .. } => "longer than the largest frame accepted",
                    _ => "not valid UTF-16",
                };
                return Ok(Some(match code {
                    Some(codes::OZ | codes::XG) => Event::Unreadable {
                        frame,
                        reason: reason.into(),
                    },
                    _ => Event::Other(frame),
                }));
            }
        };
        Ok(match code {
            Some(codes::OZ) => Some(match Outcome::parse(bytes) {
                Ok(outcome) if outcome.tx == self.tx => Event::Outcome(Box::new(outcome)),
                Ok(_) => Event::Other(frame),
                Err(rejection) => Event::Unreadable {
                    frame,
                    reason: rejection.reason.into_owned(),
                },
            }),
            Some(codes::XG) => Some(match Gap::parse(bytes) {
                Ok(gap) if gap.tx == self.tx => Event::Gap(gap),
                Ok(_) => Event::Other(frame),
                Err(rejection) => Event::Unreadable {
                    frame,
                    reason: rejection.reason.into_owned(),
                },
            }),
            Some(codes::EF) if param(&bytes, codes::TX) == Some(&self.tx[..]) => {
                self.finished(bytes)
            }
            Some(codes::MV) => self.verified(frame, &bytes),
            Some(codes::ER) => match ErrorReply::parse(&bytes) {
                Some(er) => self.refused(er)?,
                None => Some(Event::Other(frame)),
            },
            Some(codes::DA) => None,
            _ => Some(Event::Other(frame)),
        })
    }

    /// Our EF: the end, now or once the EE's MV has come too.
    fn finished(&mut self, ef: Bytes) -> Option<Event> {
        match &mut self.end {
            End::Ending {
                mv_due: true,
                ef: kept,
            } => {
                *kept = Some(ef);
                None
            }
            _ => {
                self.end = End::Over;
                Some(Event::Finished { frame: ef })
            }
        }
    }

    fn verified(&mut self, frame: Frame, bytes: &[u8]) -> Option<Event> {
        let token = param(bytes, codes::TK).unwrap_or_default();
        if token == EO_TOKEN {
            self.eo_confirmed = true;
            return None;
        }
        if token == EE_TOKEN {
            if let End::Ending { ef, mv_due } = &mut self.end {
                *mv_due = false;
                if let Some(ef) = ef.take() {
                    self.end = End::Over;
                    return Some(Event::Finished { frame: ef });
                }
                return None;
            }
        }
        match token
            .strip_prefix(XA_TOKEN)
            .and_then(|xs| std::str::from_utf8(xs).ok()?.parse().ok())
        {
            Some(xs) => Some(Event::Acknowledged { xs }),
            None => Some(Event::Other(frame)),
        }
    }

    fn refused(&mut self, er: ErrorReply) -> Result<Option<Event>, Error> {
        match er.refused() {
            Some(code) if code == codes::EO => {
                self.end = End::Over;
                Err(Error::Refused(Box::new(er)))
            }
            Some(code) if code == codes::EE => {
                // Typically EC 810: the transaction had already ended; nothing will follow.
                self.end = End::Over;
                Ok(Some(Event::Refused(er)))
            }
            _ => Ok(Some(Event::Refused(er))),
        }
    }
}

fn xa_token(xs: u64) -> Vec<u8> {
    [XA_TOKEN, xs.to_string().as_bytes()].concat()
}

fn bytes(value: &Option<String>) -> Option<&[u8]> {
    value.as_deref().map(str::as_bytes)
}

/// The first parameter `code` of a frame (not for ER, whose FM may hold backslashes).
fn param(frame: &[u8], code: sdmp::Code) -> Option<&[u8]> {
    MessageView::parse(frame).ok()?.first(code)
}

#[cfg(test)]
mod tests {
    use sdmp::WireForm;

    use super::*;
    use crate::testing::{oz, read_text, subscribe, write_all, TestServer};

    fn xs_of(event: Option<Event>) -> u64 {
        match event {
            Some(Event::Outcome(outcome)) => outcome.xs.expect("XS"),
            other => panic!("expected an outcome, got {other:?}"),
        }
    }

    async fn open(server: &TestServer, subscribe: &Subscribe) -> Result<Subscription, Error> {
        let conn = Connection::connect(&server.addr, WireForm::Bits8).await?;
        Subscription::open(conn, subscribe).await
    }

    #[tokio::test]
    async fn events_come_in_order_with_what_arrived_before_the_confirmation() {
        let server = TestServer::start(WireForm::Bits8, |mut conn| async move {
            let eo = read_text(&mut conn).await.unwrap();
            assert_eq!(eo, "EO\\TXt\\FO\\PSp\\XS\\TKeo");
            write_all(
                &mut conn,
                &[
                    &oz("t", 1),
                    "MV\\TKeo",
                    &oz("t", 2),
                    "DA",
                    "XG\\TXt\\XF3\\XL4",
                    "MV\\TKmine",
                    &oz("other", 5),
                    "OZ\\TXt\\CNc\\RE2\\DT",
                ],
            )
            .await;
            while read_text(&mut conn).await.is_some() {}
        })
        .await;
        let mut subscription = open(&server, &subscribe()).await.expect("open");
        assert_eq!(subscription.tx(), b"t");
        assert_eq!(xs_of(subscription.next().await.unwrap()), 1);
        assert_eq!(xs_of(subscription.next().await.unwrap()), 2);
        match subscription.next().await.unwrap() {
            Some(Event::Gap(gap)) => assert_eq!((gap.first, gap.last), (3, 4)),
            other => panic!("{other:?}"),
        }
        for want in ["MV\\TKmine".to_owned(), oz("other", 5)] {
            match subscription.next().await.unwrap() {
                Some(Event::Other(frame)) => assert_eq!(crate::frame_text(&frame), want),
                other => panic!("{other:?}"),
            }
        }
        match subscription.next().await.unwrap() {
            Some(Event::Unreadable { reason, .. }) => assert!(reason.contains("SI"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn acknowledgements_are_confirmed_and_the_end_waits_for_ef_and_mv() {
        let (server, log) = TestServer::scripted(WireForm::Bits8, |_, log, mut conn| async move {
            while let Some(frame) = read_text(&mut conn).await {
                log.push(&frame);
                match frame.as_str() {
                    "EO\\TXt\\FO\\PSp\\XS\\TKeo" => write_all(&mut conn, &["MV\\TKeo"]).await,
                    "XA\\TXt\\XS5\\TKxa-5" => write_all(&mut conn, &["MV\\TKxa-5"]).await,
                    // An event overtakes the confirmation being waited for.
                    "XA\\TXt\\XS6\\TKxa-6" => {
                        write_all(&mut conn, &[&oz("t", 7), "MV\\TKxa-6"]).await
                    }
                    "XA\\TXt\\XS8\\TKxa-8" => {
                        write_all(
                            &mut conn,
                            &["ER\\EC810\\MSno such transaction\\FM\"XA\\TXt\\XS8\\TKxa-8\""],
                        )
                        .await
                    }
                    // The EF comes before the EE's MV: the end is the later of the two.
                    "EE\\TXt\\TKee" => write_all(&mut conn, &["EF\\TXt", &oz("t", 9)]).await,
                    "VS" => write_all(&mut conn, &["MV\\TKee"]).await,
                    _ => {}
                }
            }
        })
        .await;
        let mut subscription = open(&server, &subscribe()).await.expect("open");
        subscription.acknowledge(4).await.unwrap();
        subscription.acknowledge_confirmed(5).await.unwrap();
        assert_eq!(
            subscription.next().await.unwrap(),
            Some(Event::Acknowledged { xs: 5 })
        );
        let within = Duration::from_secs(5);
        subscription.acknowledge_and_wait(6, within).await.unwrap();
        assert_eq!(xs_of(subscription.next().await.unwrap()), 7);
        match subscription.acknowledge_and_wait(8, within).await {
            Err(Error::Refused(er)) => assert_eq!(er.ec, 810),
            other => panic!("{other:?}"),
        }
        subscription.end().await.unwrap();
        assert_eq!(xs_of(subscription.next().await.unwrap()), 9);
        // The EF is held until the EE's MV, which this server sends when it reads a VS.
        let conn = &mut subscription.conn;
        conn.send("VS").await.unwrap();
        match subscription.next().await.unwrap() {
            Some(Event::Finished { frame }) => assert_eq!(&frame[..], b"EF\\TXt"),
            other => panic!("{other:?}"),
        }
        assert_eq!(subscription.next().await.unwrap(), None);
        assert_eq!(
            log.frames(),
            [
                "EO\\TXt\\FO\\PSp\\XS\\TKeo",
                "XA\\TXt\\XS4",
                "XA\\TXt\\XS5\\TKxa-5",
                "XA\\TXt\\XS6\\TKxa-6",
                "XA\\TXt\\XS8\\TKxa-8",
                "EE\\TXt\\TKee",
                "VS"
            ]
        );
    }

    #[tokio::test]
    async fn without_confirmation_nothing_waits_and_an_unasked_ef_ends_it() {
        let server = TestServer::start(WireForm::Bits8, |mut conn| async move {
            assert_eq!(read_text(&mut conn).await.unwrap(), "EO\\TXt\\SO");
            assert_eq!(read_text(&mut conn).await.unwrap(), "VS\\VI2");
            write_all(&mut conn, &["EF\\TXother", "EF\\TXt"]).await;
            while read_text(&mut conn).await.is_some() {}
        })
        .await;
        let subscribe = Subscribe {
            success: true,
            confirm: false,
            keep_alive: Some(Duration::from_secs(2)),
            ..Subscribe::new("t")
        };
        let mut subscription = open(&server, &subscribe).await.expect("open");
        assert!(matches!(
            subscription.next().await,
            Ok(Some(Event::Other(_)))
        ));
        assert!(matches!(
            subscription.next().await,
            Ok(Some(Event::Finished { .. }))
        ));
        assert_eq!(subscription.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_connection_silent_for_five_keep_alive_intervals_is_lost() {
        let server = TestServer::start(WireForm::Bits8, |mut conn| async move {
            while read_text(&mut conn).await.is_some() {}
        })
        .await;
        let subscribe = Subscribe {
            confirm: false,
            keep_alive: Some(Duration::from_secs(1)),
            ..subscribe()
        };
        let mut subscription = open(&server, &subscribe).await.expect("open");
        // Connected; from here on the clock jumps whenever everything waits.
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        match subscription.next().await {
            Err(Error::Silent(limit)) => assert_eq!(limit, Duration::from_secs(5)),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_refused_eo_is_an_error() {
        let server = TestServer::start(WireForm::Bits8, |mut conn| async move {
            let eo = read_text(&mut conn).await.unwrap();
            let er = format!("ER\\EC809\\MSTX taken\\FM\"{eo}\"");
            write_all(&mut conn, &[&er]).await;
            while read_text(&mut conn).await.is_some() {}
        })
        .await;
        match open(&server, &subscribe()).await {
            Err(Error::Refused(er)) => assert_eq!((er.ec, er.ms.as_str()), (809, "TX taken")),
            other => panic!("{other:?}"),
        }
        // Unconfirmed, the ER comes from next().
        let unconfirmed = Subscribe {
            confirm: false,
            ..subscribe()
        };
        let mut subscription = open(&server, &unconfirmed).await.expect("open");
        assert!(matches!(subscription.next().await, Err(Error::Refused(_))));
        assert_eq!(subscription.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_values_are_refused_before_connecting() {
        for (subscribe, what) in [
            (
                Subscribe {
                    campaign: Some("a\\FO".into()),
                    ..subscribe()
                },
                "CN may not contain a backslash",
            ),
            (
                Subscribe {
                    campaign: Some("a/b".into()),
                    ..subscribe()
                },
                "CN may not contain",
            ),
            (
                Subscribe {
                    failure: false,
                    ..subscribe()
                },
                "EO needs at least one of",
            ),
        ] {
            let error = subscribe.frame().unwrap_err();
            assert!(error.to_string().contains(what), "{error}");
        }
    }
}
