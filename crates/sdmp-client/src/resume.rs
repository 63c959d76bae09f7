//! A persisted subscription that outlives its connections.
//!
//! Owns: reconnecting when the connection is lost (to the next server of the list, after a
//! back-off pause), authenticating again, re-issuing the same EO (same TX, filter, PS, CS and
//! XS) with XR where the transaction is sequenced, and turning what the connections deliver
//! into one stream for the caller.
//!
//! What the caller sees from [`ResumingSubscription::next`]:
//! - With XS: every event once and in order. After a re-issue the server may send events again
//!   (from the cursor it resumes at); every OZ whose XS is at or below the last one handed out
//!   is dropped here. Nothing is skipped while the log holds the events; when retention removed
//!   some, an [`Event::Gap`] names them.
//! - Without XS (PS only): the server resumes after the last event it handed to the lost
//!   connection, so what was in flight is missing, and after a server crash a few events may
//!   come twice; without sequence numbers neither can be detected. Use XS.
//! - No event about reconnecting: it is logged (tracing, warn) and counted
//!   ([`reconnects`](ResumingSubscription::reconnects)).
//! - [`Event::Acknowledged`] for each confirmed acknowledgement, also when the connection that
//!   carried the XA was lost: the confirmed EO of the re-issue, whose XR is at or after that
//!   XS, is the proof that the server's cursor is durably there.
//! - [`Event::Finished`] only when the transaction really ended (our [`end`], or another holder
//!   of the PersistToken took it over, or it expired); `Ok(None)` after it.
//! - An error only for what retrying cannot fix: the EO or the credentials refused, or
//!   [`ResumeOptions::give_up_after`] passed without a working connection.
//!
//! Never: acknowledges for the caller, or forgets the transaction (EE) unless asked: dropping
//! it leaves the transaction, and its events, with the server for a later re-issue.
//!
//! [`end`]: ResumingSubscription::end

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::Credentials;
use crate::backoff::Backoff;
use crate::error::Error;
use crate::event::Event;
use crate::servers::Servers;
use crate::subscription::{Subscribe, Subscription, CONFIRM_WAIT};

/// Where a re-issue resumes (its XR), on a sequenced (XS) subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResumeFrom {
    /// After the last XS the caller acknowledged; before the first acknowledgement, wherever
    /// the server's cursor is. Events delivered but not acknowledged come again and are
    /// dropped as repeats. Keeps at-least-once across crashes of the caller's own process.
    #[default]
    Acknowledged,
    /// After the last XS handed to the caller, acknowledged or not: nothing is sent twice, but
    /// the server's cursor moves there (XR counts as an acknowledgement), so a caller that
    /// crashes after a reconnect does not get those events again. For a caller that does not
    /// acknowledge (a display, say).
    Delivered,
}

/// How a [`ResumingSubscription`] resumes.
#[derive(Clone, Debug)]
pub struct ResumeOptions {
    pub resume_from: ResumeFrom,
    /// Pauses between attempts.
    pub backoff: Backoff,
    /// Sent (UA) on every new connection before the EO.
    pub credentials: Option<Credentials>,
    /// Give up (the last connection error) after this long without a working connection;
    /// `None`: try for as long as the caller waits.
    pub give_up_after: Option<Duration>,
    /// How long an EO (and a UA) may wait for its answer before the connection counts as lost.
    pub confirm_within: Duration,
}

impl Default for ResumeOptions {
    fn default() -> Self {
        ResumeOptions {
            resume_from: ResumeFrom::default(),
            backoff: Backoff::default(),
            credentials: None,
            give_up_after: None,
            confirm_within: CONFIRM_WAIT,
        }
    }
}

/// A subscription with a PersistToken that reconnects, fails over and re-issues by itself.
/// Read it with [`next`](Self::next); see the module documentation for what comes out.
#[derive(Debug)]
pub struct ResumingSubscription {
    servers: Servers,
    subscribe: Subscribe,
    options: ResumeOptions,
    current: Option<Subscription>,
    /// Events made here (confirmations proven by a re-issue), handed out first.
    ready: VecDeque<Event>,
    /// The highest XS handed to the caller.
    delivered: Option<u64>,
    /// The highest XS the caller acknowledged.
    acknowledged: Option<u64>,
    /// The highest XS acknowledged with confirmation and not yet confirmed.
    unconfirmed: Option<u64>,
    /// EOs sent on connections given up before their MV came. The server may still process
    /// one after a later EO, and take the transaction from that later connection (EF); such an
    /// EF is answered with a re-issue, once per EO counted here.
    unanswered_eos: u32,
    reconnects: u64,
    /// Wait a back-off pause before the next attempt (after a failure or a loss).
    pause_first: bool,
    /// Since when no connection works.
    down_since: Option<Instant>,
    ending: bool,
    over: bool,
}

impl ResumingSubscription {
    /// A subscription that will connect to `servers` on the first [`next`](Self::next).
    /// `subscribe` must have a PersistToken (without one a re-issue would be a new
    /// transaction, silently missing what happened in between). Leave its `confirm` on unless
    /// the EO must go out without a TK: only the EO's MV tells which EO the server processed,
    /// so without it every EF is the end, and a confirmation lost with its connection stays
    /// unconfirmed.
    pub fn new(
        servers: Servers,
        subscribe: Subscribe,
        options: ResumeOptions,
    ) -> Result<ResumingSubscription, Error> {
        if subscribe.persist.is_none() {
            return Err(Error::Invalid {
                what: "resuming subscription",
                reason: "it needs a PersistToken (PS) to resume".into(),
            });
        }
        subscribe.frame()?;
        Ok(ResumingSubscription {
            servers,
            subscribe,
            options,
            current: None,
            ready: VecDeque::new(),
            delivered: None,
            acknowledged: None,
            unconfirmed: None,
            unanswered_eos: 0,
            reconnects: 0,
            pause_first: false,
            down_since: None,
            ending: false,
            over: false,
        })
    }

    /// The next event (see the module documentation). Cancel-safe: cancelling loses no event;
    /// a connection being set up is dropped and set up again by the next call.
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            if self.over {
                return Ok(None);
            }
            let subscription = match &mut self.current {
                Some(subscription) => subscription,
                None => {
                    let subscription = self.reconnect().await?;
                    self.current.insert(subscription)
                }
            };
            let event = match subscription.next().await {
                Ok(Some(event)) => event,
                Ok(None) => {
                    self.over = true;
                    return Ok(None);
                }
                Err(error) if error.is_connection_failure() => {
                    self.lost(&error);
                    continue;
                }
                Err(error) => {
                    self.over = true;
                    return Err(error);
                }
            };
            if let Some(event) = self.pass(event) {
                return Ok(Some(event));
            }
        }
    }

    /// Acknowledges every event up to and including `xs` (XA). Not connected, or the XA
    /// cannot be written: it goes with the re-issue (as XR, with [`ResumeFrom::Acknowledged`]).
    pub async fn acknowledge(&mut self, xs: u64) -> Result<(), Error> {
        self.send_ack(xs, false).await
    }

    /// Acknowledges up to `xs` and asks for confirmation: [`Event::Acknowledged`] follows once
    /// the server's cursor is durably there.
    pub async fn acknowledge_confirmed(&mut self, xs: u64) -> Result<(), Error> {
        self.send_ack(xs, true).await
    }

    /// Ends the transaction for good (EE; the server forgets it and its buffer). Keep calling
    /// [`next`](Self::next) until `Ok(None)`: events on their way come first, then
    /// [`Event::Finished`]. A connection lost meanwhile is replaced and the EE sent again.
    pub async fn end(&mut self) -> Result<(), Error> {
        self.ending = true;
        if let Some(subscription) = &mut self.current {
            if let Err(error) = subscription.end().await {
                if !error.is_connection_failure() {
                    return Err(error);
                }
                self.lost(&error);
            }
        }
        Ok(())
    }

    /// How many times a lost connection was replaced.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The address of the connection in use, if one is.
    pub fn server(&self) -> Option<&str> {
        self.current.as_ref().map(Subscription::peer)
    }

    /// The XS of the last outcome handed out.
    pub fn last_delivered(&self) -> Option<u64> {
        self.delivered
    }

    /// What the caller sees of one event from a connection; `None`: nothing (a repeat, or an
    /// EF answered with a re-issue).
    fn pass(&mut self, event: Event) -> Option<Event> {
        match &event {
            Event::Outcome(outcome) => {
                if let Some(xs) = outcome.xs {
                    if self.delivered.is_some_and(|last| xs <= last) {
                        return None;
                    }
                    self.delivered = Some(xs);
                }
            }
            Event::Acknowledged { xs }
                if self.unconfirmed.is_some_and(|pending| pending <= *xs) =>
            {
                self.unconfirmed = None;
            }
            Event::Finished { .. } if !self.ending && self.unanswered_eos > 0 => {
                self.unanswered_eos -= 1;
                tracing::info!(
                    "subscription {}: taken over by an earlier EO of ours; issuing it again",
                    self.subscribe.tx
                );
                self.current = None;
                return None;
            }
            Event::Finished { .. } => self.over = true,
            _ => {}
        }
        Some(event)
    }

    async fn send_ack(&mut self, xs: u64, confirm: bool) -> Result<(), Error> {
        if !self.subscribe.sequenced {
            return Err(Error::Invalid {
                what: "acknowledgement",
                reason: "the subscription is not sequenced (XS)".into(),
            });
        }
        self.acknowledged = self.acknowledged.max(Some(xs));
        if confirm {
            self.unconfirmed = self.unconfirmed.max(Some(xs));
        }
        let Some(subscription) = &mut self.current else {
            return Ok(());
        };
        let sent = match confirm {
            true => subscription.acknowledge_confirmed(xs).await,
            false => subscription.acknowledge(xs).await,
        };
        match sent {
            Err(error) if error.is_connection_failure() => {
                self.lost(&error);
                Ok(())
            }
            other => other,
        }
    }

    /// The connection is gone: the next attempt goes to the next server, after a pause.
    fn lost(&mut self, error: &Error) {
        if let Some(subscription) = self.current.take() {
            tracing::warn!(
                "subscription {}: lost the connection to {}: {}; resuming",
                self.subscribe.tx,
                subscription.peer(),
                error.with_causes()
            );
        }
        self.servers.fail_over();
        self.reconnects += 1;
        self.pause_first = true;
    }

    /// A working subscription: connect, authenticate, re-issue, until one works.
    async fn reconnect(&mut self) -> Result<Subscription, Error> {
        let down_since = *self.down_since.get_or_insert_with(Instant::now);
        loop {
            if self.pause_first {
                self.options.backoff.wait().await;
            }
            self.pause_first = true;
            match self.issue().await {
                Ok(subscription) => {
                    self.pause_first = false;
                    self.down_since = None;
                    self.options.backoff.reset();
                    return Ok(subscription);
                }
                Err(error) if error.is_connection_failure() => {
                    let given_up = self
                        .options
                        .give_up_after
                        .is_some_and(|limit| down_since.elapsed() >= limit);
                    if given_up {
                        return Err(error);
                    }
                    tracing::warn!(
                        "subscription {}: {}; trying again",
                        self.subscribe.tx,
                        error.with_causes()
                    );
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One attempt: a connection, the UA, the EO with its XR, its MV.
    async fn issue(&mut self) -> Result<Subscription, Error> {
        let mut conn = self.servers.connect().await?;
        let within = self.options.confirm_within;
        let mut subscribe = self.subscribe.clone();
        subscribe.resume_after = self.resume_point();
        let confirm = subscribe.confirm;
        self.unanswered_eos += u32::from(confirm);
        let opened = async {
            if let Some(credentials) = &self.options.credentials {
                conn.log_in(credentials, within).await?;
            }
            let mut subscription = Subscription::open_within(conn, &subscribe, within).await?;
            if self.ending {
                subscription.end().await?;
            }
            Ok::<_, Error>(subscription)
        }
        .await;
        match &opened {
            Ok(_) if confirm => {
                self.unanswered_eos -= 1;
                // The EO's MV says the transaction, with its cursor at XR, is stored: proof
                // for a confirmation whose own MV was lost with its connection.
                if let (Some(pending), Some(resumed)) = (self.unconfirmed, subscribe.resume_after) {
                    if pending <= resumed {
                        self.unconfirmed = None;
                        self.ready.push_back(Event::Acknowledged { xs: pending });
                    }
                }
            }
            Ok(_) => {}
            Err(error) if error.is_connection_failure() => self.servers.fail_over(),
            Err(_) => {}
        }
        opened
    }

    /// The XR of the next EO.
    fn resume_point(&self) -> Option<u64> {
        let ours = match (self.subscribe.sequenced, self.options.resume_from) {
            (false, _) => None,
            (true, ResumeFrom::Acknowledged) => self.acknowledged,
            (true, ResumeFrom::Delivered) => self.delivered,
        };
        // The caller's own XR holds until there is one of ours.
        ours.or(self.subscribe.resume_after)
    }
}

#[cfg(test)]
mod tests {
    use sdmp::WireForm;

    use super::*;
    use crate::testing::{closed_port, read_text, subscribe, write_all, Log, TestServer};

    fn options(resume_from: ResumeFrom) -> ResumeOptions {
        ResumeOptions {
            resume_from,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(20)),
            give_up_after: Some(Duration::from_secs(5)),
            ..ResumeOptions::default()
        }
    }

    fn oz(xs: u64) -> String {
        crate::testing::oz("t", xs)
    }

    async fn next_xs(subscription: &mut ResumingSubscription) -> u64 {
        match subscription.next().await {
            Ok(Some(Event::Outcome(outcome))) => outcome.xs.expect("XS"),
            other => panic!("expected an outcome, got {other:?}"),
        }
    }

    /// A server whose `n`-th connection runs `script(n, log, conn)`.
    async fn server<F, Fut>(script: F) -> (TestServer, Log)
    where
        F: Fn(usize, Log, crate::Connection) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        TestServer::scripted(WireForm::Bits8, script).await
    }

    /// A resuming subscription to the one server at `addr`.
    fn resuming(addr: &str, subscribe: Subscribe, options: ResumeOptions) -> ResumingSubscription {
        let servers = Servers::new([addr], WireForm::Bits8).unwrap();
        ResumingSubscription::new(servers, subscribe, options).unwrap()
    }

    /// Reads the EO, logs it, confirms it.
    async fn confirm_eo(conn: &mut crate::Connection, log: &Log) {
        let eo = read_text(conn).await.expect("an EO");
        log.push(&eo);
        write_all(conn, &["MV\\TKeo"]).await;
    }

    #[tokio::test]
    async fn a_lost_connection_is_resumed_after_the_acknowledged_xs_and_repeats_dropped() {
        let (server, log) = server(|n, log, mut conn| async move {
            confirm_eo(&mut conn, &log).await;
            if n == 0 {
                write_all(&mut conn, &[&oz(1)]).await;
                // The XA (with its TK) is read but never confirmed: the connection dies first.
                log.push(&read_text(&mut conn).await.unwrap());
                write_all(&mut conn, &[&oz(2), &oz(3)]).await;
                return;
            }
            write_all(&mut conn, &[&oz(2), &oz(3), &oz(4)]).await;
            while read_text(&mut conn).await.is_some() {}
        })
        .await;
        let mut subscription =
            resuming(&server.addr, subscribe(), options(ResumeFrom::Acknowledged));
        assert_eq!(next_xs(&mut subscription).await, 1);
        subscription.acknowledge_confirmed(1).await.unwrap();
        assert_eq!(next_xs(&mut subscription).await, 2);
        assert_eq!(next_xs(&mut subscription).await, 3);
        // The re-issue's confirmed EO, with XR1, confirms the acknowledgement.
        assert_eq!(
            subscription.next().await.unwrap(),
            Some(Event::Acknowledged { xs: 1 })
        );
        assert_eq!(next_xs(&mut subscription).await, 4);
        assert_eq!(subscription.reconnects(), 1);
        assert_eq!(subscription.last_delivered(), Some(4));
        assert_eq!(
            log.frames(),
            [
                "EO\\TXt\\FO\\PSp\\XS\\TKeo",
                "XA\\TXt\\XS1\\TKxa-1",
                "EO\\TXt\\FO\\PSp\\XS\\XR1\\TKeo"
            ]
        );
    }

    #[tokio::test]
    async fn fails_over_to_the_next_server_with_credentials_and_the_delivered_xs() {
        let script = |name: &'static str| {
            move |_: usize, log: Log, mut conn: crate::Connection| async move {
                let ua = read_text(&mut conn).await.unwrap();
                log.push(&format!("{name}: {ua}"));
                write_all(&mut conn, &["US\\TDacme\\ANcrm\\RS0\\PG2"]).await;
                confirm_eo(&mut conn, &log).await;
                let first = if name == "a" { 1 } else { 2 };
                write_all(&mut conn, &[&oz(first)]).await;
                // a: gone after one outcome.
                while name == "b" && read_text(&mut conn).await.is_some() {}
            }
        };
        let ((a, a_log), (b, b_log)) = (server(script("a")).await, server(script("b")).await);
        let down = closed_port().await;
        let servers =
            Servers::new([down, a.addr.clone(), b.addr.clone()], WireForm::Bits8).unwrap();
        let resume = ResumeOptions {
            credentials: Some(Credentials {
                tenant: "acme".into(),
                name: "crm".into(),
                password: "pw".into(),
            }),
            ..options(ResumeFrom::Delivered)
        };
        let mut subscription = ResumingSubscription::new(servers, subscribe(), resume).unwrap();
        assert_eq!(next_xs(&mut subscription).await, 1);
        assert_eq!(subscription.server(), Some(a.addr.as_str()));
        assert_eq!(next_xs(&mut subscription).await, 2);
        assert_eq!(subscription.server(), Some(b.addr.as_str()));
        assert_eq!(
            a_log.frames(),
            ["a: UA\\ANcrm\\PWpw\\TDacme", "EO\\TXt\\FO\\PSp\\XS\\TKeo"]
        );
        assert_eq!(
            b_log.frames(),
            [
                "b: UA\\ANcrm\\PWpw\\TDacme",
                "EO\\TXt\\FO\\PSp\\XS\\XR1\\TKeo"
            ]
        );
    }

    #[tokio::test]
    async fn an_ef_caused_by_an_unanswered_eo_is_answered_with_a_reissue() {
        let (server, log) = server(|n, log, mut conn| async move {
            match n {
                // Never answers: the client gives this EO up; a real server might process it
                // late and take the transaction from the next connection.
                0 => log.push(&read_text(&mut conn).await.unwrap()),
                1 => {
                    confirm_eo(&mut conn, &log).await;
                    write_all(&mut conn, &["EF\\TXt"]).await;
                }
                _ => {
                    confirm_eo(&mut conn, &log).await;
                    write_all(&mut conn, &[&oz(1), "EF\\TXt"]).await;
                }
            }
            while read_text(&mut conn).await.is_some() {}
        })
        .await;
        let resume = ResumeOptions {
            confirm_within: Duration::from_millis(200),
            ..options(ResumeFrom::Acknowledged)
        };
        let mut subscription = resuming(&server.addr, subscribe(), resume);
        assert_eq!(next_xs(&mut subscription).await, 1);
        // That re-issue used up the one unanswered EO: this EF is the end.
        assert!(matches!(
            subscription.next().await,
            Ok(Some(Event::Finished { .. }))
        ));
        assert_eq!(subscription.next().await.unwrap(), None);
        assert_eq!(log.frames().len(), 3);
    }

    #[tokio::test]
    async fn end_forgets_the_transaction_on_a_working_connection() {
        let (server, log) = server(|n, log, mut conn| async move {
            confirm_eo(&mut conn, &log).await;
            if n == 0 {
                return; // lost before the EE
            }
            while let Some(frame) = read_text(&mut conn).await {
                log.push(&frame);
                if frame == "EE\\TXt\\TKee" {
                    write_all(&mut conn, &["EF\\TXt", "MV\\TKee"]).await;
                }
            }
        })
        .await;
        let mut subscription =
            resuming(&server.addr, subscribe(), options(ResumeFrom::Acknowledged));
        // The first next() connects; the end is asked while the connection is going away.
        tokio::time::timeout(Duration::from_millis(300), subscription.next())
            .await
            .ok();
        subscription.end().await.unwrap();
        assert!(matches!(
            subscription.next().await,
            Ok(Some(Event::Finished { .. }))
        ));
        assert_eq!(subscription.next().await.unwrap(), None);
        assert_eq!(
            log.frames().last().map(String::as_str),
            Some("EE\\TXt\\TKee")
        );
    }

    #[tokio::test]
    async fn unconfirmed_eos_go_out_as_given_and_an_ef_is_the_end() {
        let (server, log) = server(|n, log, mut conn| async move {
            log.push(&read_text(&mut conn).await.unwrap());
            match n {
                0 => write_all(&mut conn, &[&oz(1)]).await,
                _ => {
                    write_all(&mut conn, &[&oz(1), &oz(2), "EF\\TXt"]).await;
                    while read_text(&mut conn).await.is_some() {}
                }
            }
        })
        .await;
        let unconfirmed = Subscribe {
            confirm: false,
            ..subscribe()
        };
        let mut subscription = resuming(&server.addr, unconfirmed, options(ResumeFrom::Delivered));
        assert_eq!(next_xs(&mut subscription).await, 1);
        assert_eq!(next_xs(&mut subscription).await, 2);
        assert!(matches!(
            subscription.next().await,
            Ok(Some(Event::Finished { .. }))
        ));
        assert_eq!(
            log.frames(),
            ["EO\\TXt\\FO\\PSp\\XS", "EO\\TXt\\FO\\PSp\\XS\\XR1"]
        );
    }

    #[tokio::test]
    async fn what_retrying_cannot_fix_is_an_error() {
        assert!(matches!(
            ResumingSubscription::new(
                Servers::new(["127.0.0.1:1"], WireForm::Bits8).unwrap(),
                Subscribe {
                    persist: None,
                    ..subscribe()
                },
                ResumeOptions::default()
            ),
            Err(Error::Invalid { .. })
        ));

        let resume = ResumeOptions {
            give_up_after: Some(Duration::from_millis(100)),
            ..options(ResumeFrom::Acknowledged)
        };
        let mut subscription = resuming(&closed_port().await, subscribe(), resume);
        assert!(matches!(
            subscription.next().await,
            Err(Error::Connect { .. })
        ));

        let (refusing, _) = server(|_, _, mut conn| async move {
            let eo = read_text(&mut conn).await.unwrap();
            write_all(&mut conn, &[&format!("ER\\EC809\\MSTX taken\\FM\"{eo}\"")]).await;
            while read_text(&mut conn).await.is_some() {}
        })
        .await;
        let mut subscription = resuming(
            &refusing.addr,
            subscribe(),
            options(ResumeFrom::Acknowledged),
        );
        assert!(matches!(subscription.next().await, Err(Error::Refused(_))));
    }
}
