//! `ozbus tail`: subscribes to outcomes (EO) and prints each OZ as it arrives.
//!
//! Owns: building the EO from the command line (checked with the codec's own schema before
//! anything is sent), the readable one-line form of an OZ, and the end of a subscription: EE and a
//! bounded wait for its EF, or the server's EF when the transaction ends on the server's side.
//!
//! Never: acknowledges (XA) or resumes (XR) anything; a subscriber that needs at-least-once
//! delivery is a program of its own, not a terminal tool.

use std::fmt::Write as _;
use std::future::Future;
use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use sdmp::{Dialect, Ee, Envelope, Eo, Frame, Message, Oz};

use crate::calls::OutcomeTables;

use super::{connect, describe_er, frame_bytes, frame_code, frame_text, EF, ER, OZ, XG};

/// How long to wait for the EF that answers our EE.
const EF_WAIT: Duration = Duration::from_secs(2);

/// Subscribe to outcomes and print one line per outcome.
#[derive(clap::Args, Debug, Clone)]
pub struct TailArgs {
    /// Server address.
    #[arg(long, env = "OZBUS_ADDR", default_value = "127.0.0.1:6502")]
    pub addr: String,
    /// Speak UTF-16LE (the 6500 listener) instead of 8-bit.
    #[arg(long)]
    pub utf16: bool,
    /// Only this campaign (CN).
    #[arg(long)]
    pub campaign: Option<String>,
    /// Only this tenant (TD).
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
    /// PersistToken (PS): the server keeps the transaction, and its outcomes, while no one holds it.
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
    let eo = eo_frame(&args, &tx)?;
    let ee = Envelope {
        dialect: Dialect::V1,
        message: Ee {
            tx: tx.as_bytes(),
            ..Ee::default()
        }
        .into(),
    }
    .to_bytes();

    let tables = OutcomeTables::default();
    let mut conn = connect(&args.addr, args.utf16).await?;
    conn.send(&eo).await.context("sending EO")?;

    tokio::pin!(stop);
    let mut printed = 0u64;
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            break;
        }
        let item = tokio::select! {
            () = &mut stop => break,
            item = conn.next() => item,
        };
        let Some(item) = item else {
            bail!("the server closed the connection");
        };
        let frame = item.context("reading from the server")?;
        let bytes = frame_bytes(&frame);
        match frame_code(bytes) {
            Some(OZ) => {
                let line = if args.raw {
                    frame_text(&frame).into_owned()
                } else {
                    readable(&frame, &tables, SystemTime::now())
                };
                writeln!(out, "{line}").context("writing the output")?;
                out.flush().context("writing the output")?;
                printed += 1;
            }
            Some(EF) if ef_tx(bytes) == Some(tx.as_bytes()) => {
                // Not asked for: the transaction was taken over by another connection (same PS)
                // or expired; there is nothing left to end.
                let line = if args.raw {
                    frame_text(&frame).into_owned()
                } else {
                    format!(
                        "transaction {} ended by the server (EF): taken over by another connection or expired",
                        clean(tx.as_bytes())
                    )
                };
                writeln!(out, "{line}").context("writing the output")?;
                out.flush().context("writing the output")?;
                return Ok(printed);
            }
            Some(XG) => {
                // Outcomes lost to retention while the transaction was away: never silent.
                let line = if args.raw {
                    frame_text(&frame).into_owned()
                } else {
                    gap_line(bytes)
                };
                writeln!(out, "{line}").context("writing the output")?;
                out.flush().context("writing the output")?;
            }
            Some(ER) => bail!(
                "the server refused the subscription: {}",
                describe_er(bytes)
            ),
            // DA keep-alives, MV, and anything else are neither outcomes nor news about them.
            _ => {}
        }
    }

    conn.send(&ee).await.context("sending EE")?;
    // Outcomes that still arrive are not printed: the user asked to stop (or got the count).
    let ended = tokio::time::timeout(EF_WAIT, async {
        while let Some(item) = conn.next().await {
            let frame = item?;
            let bytes = frame_bytes(&frame);
            match frame_code(bytes) {
                Some(EF) if ef_tx(bytes) == Some(tx.as_bytes()) => return Ok(true),
                Some(ER) => {
                    // EE refused (typically EC 810: the transaction had already ended); the
                    // outcomes were printed, so the run itself succeeded.
                    tracing::warn!("EE refused: {}", describe_er(bytes));
                    return Ok(false);
                }
                _ => {}
            }
        }
        Ok::<bool, std::io::Error>(false)
    })
    .await;
    match ended {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!("reading the EF: {e}"),
        Err(_) => tracing::warn!("no EF for {tx} within {EF_WAIT:?}"),
    }
    Ok(printed)
}

/// The EO `args` asks for, as frame bytes, checked against the EO table so that a bad value is
/// reported here rather than as an ER.
fn eo_frame(args: &TailArgs, tx: &str) -> anyhow::Result<Bytes> {
    for (name, value) in [
        ("--tx", Some(tx)),
        ("--campaign", args.campaign.as_deref()),
        ("--tenant", args.tenant.as_deref()),
        ("--persist", args.persist.as_deref()),
    ] {
        // Without this check a backslash would silently start another parameter.
        if value.is_some_and(|v| v.contains(['\\', '\0', '\r', '\n'])) {
            bail!("{name} may not contain a backslash or a line break");
        }
    }
    let all = !(args.success || args.failure || args.management);
    let eo = Eo {
        tx: tx.as_bytes(),
        cn: args.campaign.as_deref().map(str::as_bytes),
        so: all || args.success,
        fo: all || args.failure,
        mo: all || args.management,
        ps: args.persist.as_deref().map(str::as_bytes),
        cs: args.rate,
        xs: args.sequenced,
        xr: None,
        tk: None,
        td: args.tenant.as_deref().map(str::as_bytes),
    };
    let bytes = Envelope {
        dialect: Dialect::V1,
        message: eo.into(),
    }
    .to_bytes();
    sdmp::decode_request(&bytes)
        .map_err(|rejection| anyhow!("invalid subscription: {}", rejection.reason))?;
    Ok(bytes)
}

/// The readable form of an XG (gap) notice.
fn gap_line(bytes: &[u8]) -> String {
    match sdmp::decode(bytes) {
        Ok(Envelope {
            message: Message::Xg(gap),
            ..
        }) => format!(
            "gap: outcomes XS {} to {} were removed by retention before this transaction received them",
            gap.xf, gap.xl
        ),
        _ => format!("unreadable gap notice: {}", clean(bytes)),
    }
}

/// TX of an EF frame.
fn ef_tx(bytes: &[u8]) -> Option<&[u8]> {
    match sdmp::decode(bytes) {
        Ok(Envelope {
            message: Message::Ef(ef),
            ..
        }) => Some(ef.tx),
        _ => None,
    }
}

/// The readable line of an OZ frame, or, for an OZ the codec cannot read, the frame with a note
/// (a server's mistake is shown, never a reason to stop).
fn readable(frame: &Frame, tables: &OutcomeTables, received: SystemTime) -> String {
    let bytes = frame_bytes(frame);
    match (frame, sdmp::decode(bytes)) {
        (
            Frame::Message(_),
            Ok(Envelope {
                message: Message::Oz(oz),
                ..
            }),
        ) => readable_line(&oz, tables, received),
        (_, Err(rejection)) => format!(
            "unreadable OZ ({}): {}",
            rejection.reason,
            frame_text(frame)
        ),
        _ => format!("unreadable OZ: {}", frame_text(frame)),
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
    use super::*;

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
            addr: String::new(),
            utf16: false,
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
            &eo_frame(&args, "t1").unwrap()[..],
            b"EO\\TXt1\\CNSales1\\SO\\FO\\MO\\PSp1\\CS50\\XS\\TDacme"
        );
        let bad = TailArgs {
            campaign: Some("a\\FO".into()),
            ..args.clone()
        };
        assert!(eo_frame(&bad, "t1").is_err());
        let bad = TailArgs {
            campaign: Some("a/b".into()),
            ..args
        };
        assert!(eo_frame(&bad, "t1").is_err());
    }
}
