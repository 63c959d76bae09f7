//! `ozbus tail`: subscribes to outcomes (EO) and prints each OZ as it arrives.
//!
//! Owns: the subscription the command line asks for (checked by `sdmp-client` against the
//! codec's own schema before anything is sent), the readable one-line form of an OZ, and the
//! end of a subscription: EE and a bounded wait for its EF, or the server's EF when the
//! transaction ends on the server's side. With `--persist` the subscription outlives its
//! connection: a lost connection is replaced (the next `--addr`, after a back-off pause) and the
//! EO issued again, with XR when `--sequenced`, so no outcome is shown twice. With `--user`,
//! every connection authenticates (UA) before its EO; with `--tls`, every one speaks TLS.
//!
//! Never: acknowledges (XA) anything; a subscriber that needs at-least-once delivery across its
//! own crashes is a program of its own (see the `sdmp-client` crate), not a terminal tool.

use std::fmt::Write as _;
use std::future::Future;
use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use sdmp::{Frame, Oz};
use sdmp_client::{
    codes, frame_bytes, frame_code, frame_text, Error, Event, ResumeFrom, ResumeOptions,
    ResumingSubscription, Subscribe, Subscription,
};

use crate::calls::OutcomeTables;

/// How long to wait for the EF that answers our EE.
const EF_WAIT: Duration = Duration::from_secs(2);

/// Subscribe to outcomes and print one line per outcome.
#[derive(clap::Args, Debug, Clone)]
pub struct TailArgs {
    #[command(flatten)]
    pub server: super::ServerArgs,
    /// Only this campaign (CN).
    #[arg(long)]
    pub campaign: Option<String>,
    /// Only this tenant (the EO's TD; a landlord's filter). The tenant to authenticate in is
    /// --user-tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Success outcomes (SO); none of --success, --failure, --management: all three.
    #[arg(long)]
    pub success: bool,
    /// Failure outcomes (FO).
    #[arg(long)]
    pub failure: bool,
    /// Management outcomes (MO).
    #[arg(long)]
    pub management: bool,
    /// Transaction identifier (TX); default tail-PID, with this process's id.
    #[arg(long)]
    pub tx: Option<String>,
    /// PersistToken (PS): the server keeps the transaction, and its outcomes, while no one
    /// holds it; a lost connection is replaced and the subscription resumed.
    #[arg(long)]
    pub persist: Option<String>,
    /// RateControl (CS): outcomes per second during the roll-forward after a re-issue.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Sequenced (XS): every OZ carries its sequence number and acceptance time.
    #[arg(long)]
    pub sequenced: bool,
    /// Print the frames as received instead of readable lines.
    #[arg(long)]
    pub raw: bool,
    /// Stop after this many outcomes.
    #[arg(long)]
    pub count: Option<u64>,
}

/// Opens the subscription `args` describes, prints one line per OZ to `out`, and ends the
/// subscription when `stop` resolves or after `args.count` outcomes; returns how many outcomes
/// were printed. An ER from the server (the EO was refused) is an error.
pub async fn run(
    args: TailArgs,
    out: &mut (dyn Write + Send),
    stop: impl Future<Output = ()>,
) -> anyhow::Result<u64> {
    let tx = args
        .tx
        .clone()
        .unwrap_or_else(|| format!("tail-{}", std::process::id()));
    let subscribe = subscription(&args, &tx);
    // Refused here, before connecting: a bad value is the user's to fix, not the server's.
    subscribe.frame()?;
    let access = args.server.access(true)?;
    let mut servers = access.servers(&args.server.addr)?;
    let mut feed = match args.persist {
        Some(_) => {
            let options = ResumeOptions {
                // Nothing is acknowledged: resuming after what was shown shows nothing twice.
                resume_from: ResumeFrom::Delivered,
                // Every new connection authenticates before its EO.
                credentials: access.credentials().cloned(),
                ..ResumeOptions::default()
            };
            Feed::Resuming(ResumingSubscription::new(servers, subscribe, options)?)
        }
        None => {
            let conn = access.connect(&mut servers).await?;
            Feed::Once(Subscription::open(conn, &subscribe).await?)
        }
    };

    let tables = OutcomeTables::default();
    tokio::pin!(stop);
    let mut printed = 0u64;
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            break;
        }
        let event = tokio::select! {
            () = &mut stop => break,
            event = feed.next() => event,
        };
        let line = match event.map_err(|error| refused_or_lost(error, &tx))? {
            Some(Event::Outcome(outcome)) => {
                printed += 1;
                match args.raw {
                    true => frame_text(&Frame::Message(outcome.frame.clone())).into_owned(),
                    false => readable_line(&outcome.oz(), &tables, SystemTime::now()),
                }
            }
            Some(Event::Unreadable { frame, reason }) => {
                let is_oz = frame_code(frame_bytes(&frame)) == Some(codes::OZ);
                printed += u64::from(is_oz);
                match (args.raw, is_oz, &frame) {
                    (true, ..) => frame_text(&frame).into_owned(),
                    (false, true, Frame::Message(_)) => {
                        format!("unreadable OZ ({reason}): {}", frame_text(&frame))
                    }
                    (false, true, _) => format!("unreadable OZ: {}", frame_text(&frame)),
                    // Outcomes lost to retention, in a notice that cannot be read: still shown.
                    (false, false, _) => {
                        format!("unreadable gap notice: {}", clean(frame_bytes(&frame)))
                    }
                }
            }
            // Outcomes lost to retention while the transaction was away: never silent.
            Some(Event::Gap(gap)) => match args.raw {
                true => frame_text(&Frame::Message(gap.frame)).into_owned(),
                false => format!(
                    "gap: outcomes XS {} to {} were removed by retention before this transaction received them",
                    gap.first, gap.last
                ),
            },
            Some(Event::Finished { frame }) => {
                // Not asked for: the transaction was taken over by another connection (same PS)
                // or expired; there is nothing left to end.
                let line = match args.raw {
                    true => frame_text(&Frame::Message(frame)).into_owned(),
                    false => format!(
                        "transaction {} ended by the server (EF): taken over by another connection or expired",
                        clean(tx.as_bytes())
                    ),
                };
                writeln!(out, "{line}").context("writing the output")?;
                out.flush().context("writing the output")?;
                return Ok(printed);
            }
            Some(Event::Refused(er)) => {
                bail!("the server refused the subscription: {er}")
            }
            None => bail!("the server ended the subscription"),
            // MV and anything else are neither outcomes nor news about them.
            Some(Event::Acknowledged { .. } | Event::Other(_)) => continue,
        };
        writeln!(out, "{line}").context("writing the output")?;
        out.flush().context("writing the output")?;
    }

    // Outcomes that still arrive are not printed: the user asked to stop (or got the count).
    let ended = tokio::time::timeout(EF_WAIT, async {
        feed.end().await?;
        loop {
            match feed.next().await? {
                Some(Event::Finished { .. }) | None => return Ok(()),
                Some(Event::Refused(er)) => {
                    // EE refused (typically EC 810: the transaction had already ended); the
                    // outcomes were printed, so the run itself succeeded.
                    tracing::warn!("EE refused: {er}");
                    return Ok(());
                }
                Some(_) => {}
            }
        }
    })
    .await;
    match ended {
        Ok(Ok(())) => {}
        Ok(Err::<_, Error>(e)) => tracing::warn!("reading the EF: {e}"),
        Err(_) => tracing::warn!("no EF for {tx} within {EF_WAIT:?}"),
    }
    Ok(printed)
}

/// One subscription on one connection, or (with a PersistToken) one that resumes.
#[allow(clippy::large_enum_variant)] // one per run: its size costs nothing
enum Feed {
    Once(Subscription),
    Resuming(ResumingSubscription),
}

impl Feed {
    async fn next(&mut self) -> Result<Option<Event>, Error> {
        match self {
            Feed::Once(subscription) => subscription.next().await,
            Feed::Resuming(subscription) => subscription.next().await,
        }
    }

    async fn end(&mut self) -> Result<(), Error> {
        match self {
            Feed::Once(subscription) => subscription.end().await,
            Feed::Resuming(subscription) => subscription.end().await,
        }
    }
}

/// An error while subscribed, in the words the tool has always used.
fn refused_or_lost(error: Error, tx: &str) -> anyhow::Error {
    match error {
        Error::Refused(er) => anyhow::anyhow!("the server refused the subscription: {er}"),
        Error::ConnectionLost => anyhow::anyhow!("the server closed the connection"),
        other => anyhow::Error::new(other).context(format!("reading the outcomes of {tx}")),
    }
}

/// The EO `args` asks for (unconfirmed: the EO goes out as the user would type it).
fn subscription(args: &TailArgs, tx: &str) -> Subscribe {
    let all = !(args.success || args.failure || args.management);
    Subscribe {
        campaign: args.campaign.clone(),
        tenant: args.tenant.clone(),
        success: all || args.success,
        failure: all || args.failure,
        management: all || args.management,
        persist: args.persist.clone(),
        rate: args.rate,
        sequenced: args.sequenced,
        confirm: false,
        ..Subscribe::new(tx)
    }
}

/// One OZ as one line, fields separated by two spaces:
/// `<time>  [TD x]  <CN>  SI x  [TN x]  RE n name  [AO n name]  [DD]  [AN x]  [AS x]  [CO x]
/// [BA x]  [BN x]  [BT x]  [XS n]  [DT x]`. The time is XT when the OZ has it, else `received`.
/// Names come from the default outcome tables: a deployment may rename codes in its own
/// configuration, which a client cannot see, so the number is always printed too.
pub(crate) fn readable_line(oz: &Oz<'_>, tables: &OutcomeTables, received: SystemTime) -> String {
    let mut line = match oz.xt {
        Some(xt) => clean(xt),
        None => humantime::format_rfc3339_millis(received).to_string(),
    };
    let mut field = |label: &str, value: &str| {
        line.push_str("  ");
        line.push_str(label);
        if !label.is_empty() && !value.is_empty() {
            line.push(' ');
        }
        line.push_str(value);
    };
    if let Some(td) = oz.td {
        field("TD", &clean(td));
    }
    field("", &clean(oz.cn));
    field("SI", &clean(oz.si));
    if let Some(tn) = oz.tn {
        field("TN", &clean(tn));
    }
    let re_name = tables.dialing(oz.re).map(|outcome| outcome.name.as_str());
    field("RE", &with_name(oz.re, re_name));
    if let Some(ao) = oz.ao {
        field(
            "AO",
            &with_name(ao, tables.agent(ao).map(|outcome| outcome.name.as_str())),
        );
    }
    if oz.dd {
        field("DD", "");
    }
    for (label, value) in [
        ("AN", oz.an),
        ("AS", oz.as_data),
        ("CO", oz.co),
        ("BA", oz.ba),
        ("BN", oz.bn),
        ("BT", oz.bt),
    ] {
        if let Some(value) = value {
            field(label, &clean(value));
        }
    }
    if let Some(xs) = oz.xs {
        field("XS", &xs.to_string());
    }
    if !oz.dt.is_empty() {
        field("DT", &clean(oz.dt));
    }
    line
}

fn with_name(code: u16, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{code} {name}"),
        None => code.to_string(),
    }
}

/// A value as text for a terminal: bytes that are not UTF-8 replaced, and control characters
/// (which a value may hold, and which could drive the terminal) shown escaped.
fn clean(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    if !text.chars().any(char::is_control) {
        return text.into_owned();
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(shown, "{}", c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use sdmp::{Envelope, Message};

    use super::*;
    use crate::client::{AccessArgs, ServerArgs};

    fn oz(frame: &[u8]) -> Oz<'_> {
        match sdmp::decode(frame) {
            Ok(Envelope {
                message: Message::Oz(oz),
                ..
            }) => oz,
            other => panic!("not an OZ: {other:?}"),
        }
    }

    #[test]
    fn the_vendor_example_reads_as_the_brief_shows() {
        let frame = b"OZ\\TXt\\CNSales1\\ANJoe\\SI001234567890\\RE10\\AO167\\XS5\\XT2026-11-25T17:27:57.123Z\\DTname=Ann";
        assert_eq!(
            readable_line(&oz(frame), &OutcomeTables::default(), SystemTime::UNIX_EPOCH),
            "2026-11-25T17:27:57.123Z  Sales1  SI 001234567890  RE 10 connected (live call)  AO 167  AN Joe  XS 5  DT name=Ann"
        );
    }

    #[test]
    fn without_xt_the_receive_time_is_used_and_empty_dt_left_out() {
        let frame = b"OZ\\TXt\\TDacme\\CNc\\SIs\\TN0123\\RE0\\AO200\\DD\\DT";
        assert_eq!(
            readable_line(&oz(frame), &OutcomeTables::default(), SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)),
            "1970-01-01T00:00:01.500Z  TD acme  c  SI s  TN 0123  RE 0 not made  AO 200 not made (agent declined a preview)  DD"
        );
    }

    #[test]
    fn control_characters_and_non_utf8_bytes_are_shown_not_sent_to_the_terminal() {
        let frame = b"OZ\\TXt\\CNc\\SIs\\RE77\\DTa\x1b[2Jb\xe9";
        assert_eq!(
            readable_line(
                &oz(frame),
                &OutcomeTables::default(),
                SystemTime::UNIX_EPOCH
            ),
            "1970-01-01T00:00:00.000Z  c  SI s  RE 77  DT a\\u{1b}[2Jb\u{fffd}"
        );
    }

    #[test]
    fn the_eo_follows_the_table_order_and_defaults_to_all_classes() {
        let args = TailArgs {
            server: ServerArgs {
                addr: Vec::new(),
                utf16: false,
                access: AccessArgs::default(),
            },
            campaign: Some("Sales1".into()),
            tenant: Some("acme".into()),
            success: false,
            failure: false,
            management: false,
            tx: None,
            persist: Some("p1".into()),
            rate: Some(50),
            sequenced: true,
            raw: false,
            count: None,
        };
        assert_eq!(
            &subscription(&args, "t1").frame().unwrap()[..],
            b"EO\\TXt1\\CNSales1\\SO\\FO\\MO\\PSp1\\CS50\\XS\\TDacme"
        );
        let bad = TailArgs {
            campaign: Some("a\\FO".into()),
            ..args.clone()
        };
        assert!(subscription(&bad, "t1").frame().is_err());
        let bad = TailArgs {
            campaign: Some("a/b".into()),
            ..args
        };
        assert!(subscription(&bad, "t1").frame().is_err());
    }
}
