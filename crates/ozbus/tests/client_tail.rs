//! `ozbus tail` against a fake server: the EO it sends, the lines it prints, how it ends.

mod client_common;

use std::time::Duration;

use client_common::{bounded, closed_port, param, text, FakeServer, Reply};
use ozbus::client::tail::{self, TailArgs};
use ozbus::client::{AccessArgs, ServerArgs};
use sdmp::WireForm;

const OZ: &[u8] = b"OZ\\TXt1\\CNSales1\\ANJoe\\SI001234567890\\RE10\\AO167\\XS7\\XT2026-11-25T17:27:57.123Z\\DTname=Ann";
const OZ_LINE: &str = "2026-11-25T17:27:57.123Z  Sales1  SI 001234567890  RE 10 connected (live call)  AO 167  AN Joe  XS 7  DT name=Ann";

fn args(addr: &str) -> TailArgs {
    TailArgs {
        server: ServerArgs {
            addr: vec![addr.to_owned()],
            utf16: false,
            access: AccessArgs::default(),
        },
        campaign: None,
        tenant: None,
        success: false,
        failure: false,
        management: false,
        tx: Some("t1".to_owned()),
        persist: None,
        rate: None,
        sequenced: false,
        raw: false,
        count: Some(1),
    }
}

/// EO: the given outcomes; EE: its EF.
fn serve(outcomes: &'static [&'static [u8]]) -> impl Fn(&[u8]) -> Reply + Send + Sync {
    move |frame: &[u8]| {
        if frame.starts_with(b"EO") {
            Reply::with(outcomes)
        } else if frame.starts_with(b"EE") {
            let tx = param(frame, "TX").unwrap_or_default();
            Reply {
                frames: vec![[&b"EF\\TX"[..], tx].concat()],
                close: false,
            }
        } else {
            Reply::none()
        }
    }
}

/// EO: one outcome, and the connection closes.
fn one_outcome_then_gone(frame: &[u8]) -> Reply {
    match frame.starts_with(b"EO") {
        true => Reply::with(&[OZ]).then_close(),
        false => Reply::none(),
    }
}

async fn never() {
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn sends_the_default_eo_prints_a_readable_line_and_ends_with_ee() {
    bounded(async {
        let server = FakeServer::start(WireForm::Bits8, serve(&[OZ, OZ])).await;
        let mut out = Vec::new();
        let printed = tail::run(args(&server.addr), &mut out, never())
            .await
            .expect("tail");
        assert_eq!(printed, 1);
        assert_eq!(text(&out), format!("{OZ_LINE}\n"));
        assert_eq!(
            server.wait_for(2).await,
            ["EO\\TXt1\\SO\\FO\\MO", "EE\\TXt1"]
        );
    })
    .await;
}

#[tokio::test]
async fn the_flags_go_out_in_the_order_of_the_eo_table() {
    bounded(async {
        let server = FakeServer::start(WireForm::Bits8, serve(&[])).await;
        let mut args = args(&server.addr);
        args.campaign = Some("Sales1".into());
        args.tenant = Some("acme".into());
        args.failure = true;
        args.management = true;
        args.persist = Some("keep1".into());
        args.rate = Some(50);
        args.sequenced = true;
        args.count = Some(0);
        let mut out = Vec::new();
        assert_eq!(tail::run(args, &mut out, never()).await.expect("tail"), 0);
        assert_eq!(
            server.wait_for(2).await,
            [
                "EO\\TXt1\\CNSales1\\FO\\MO\\PSkeep1\\CS50\\XS\\TDacme",
                "EE\\TXt1"
            ]
        );
        assert!(out.is_empty());
    })
    .await;
}

#[tokio::test]
async fn the_default_transaction_is_named_after_the_process() {
    bounded(async {
        let server = FakeServer::start(WireForm::Bits8, serve(&[])).await;
        let mut args = args(&server.addr);
        args.tx = None;
        args.success = true;
        args.count = Some(0);
        tail::run(args, &mut Vec::new(), never())
            .await
            .expect("tail");
        let tx = format!("tail-{}", std::process::id());
        assert_eq!(
            server.wait_for(2).await,
            [format!("EO\\TX{tx}\\SO"), format!("EE\\TX{tx}")]
        );
    })
    .await;
}

#[tokio::test]
async fn raw_prints_the_frames_as_received_and_stops_after_count() {
    const SECOND: &[u8] = b"OZ\\TXt1\\CNSales1\\SI42\\RE2\\DT";
    bounded(async {
        let server = FakeServer::start(WireForm::Bits8, serve(&[OZ, b"DA", SECOND, OZ])).await;
        let mut args = args(&server.addr);
        args.raw = true;
        args.count = Some(2);
        let mut out = Vec::new();
        assert_eq!(tail::run(args, &mut out, never()).await.expect("tail"), 2);
        assert_eq!(
            text(&out),
            format!(
                "{}\n{}\n",
                String::from_utf8_lossy(OZ),
                String::from_utf8_lossy(SECOND)
            )
        );
        assert_eq!(server.wait_for(2).await[1], "EE\\TXt1");
    })
    .await;
}

#[tokio::test]
async fn without_xt_the_line_starts_with_the_receive_time() {
    bounded(async {
        let server = FakeServer::start(
            WireForm::Bits8,
            serve(&[b"OZ\\TXt1\\TDacme\\CNSales1\\SI42\\TN0123\\RE2\\DT"]),
        )
        .await;
        let mut out = Vec::new();
        tail::run(args(&server.addr), &mut out, never())
            .await
            .expect("tail");
        let out = text(&out);
        let (time, rest) = out.split_at(24);
        assert_eq!(rest, "  TD acme  Sales1  SI 42  TN 0123  RE 2 no answer\n");
        let parsed = humantime::parse_rfc3339(time).expect("an RFC 3339 time");
        let age = std::time::SystemTime::now()
            .duration_since(parsed)
            .expect("not in the future");
        assert!(age < Duration::from_secs(60), "{time}");
        assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    })
    .await;
}

#[tokio::test]
async fn an_er_in_reply_to_the_eo_is_an_error() {
    bounded(async {
        let server = FakeServer::start(WireForm::Bits8, |_: &[u8]| {
            Reply::with(&[
                b"ER\\EC809\\MSTX already names an active transaction\\FM\"EO\\TXt1\\SO\\FO\\MO\"",
            ])
        })
        .await;
        let error = tail::run(args(&server.addr), &mut Vec::new(), never())
            .await
            .expect_err("refused");
        let message = format!("{error:#}");
        assert!(message.contains("809"), "{message}");
        assert!(
            message.contains("TX already names an active transaction"),
            "{message}"
        );
    })
    .await;
}

#[tokio::test]
async fn an_unasked_ef_ends_the_tail_without_ee() {
    bounded(async {
        let server =
            FakeServer::start(WireForm::Bits8, serve(&[OZ, b"EF\\TXother", b"EF\\TXt1"])).await;
        let mut args = args(&server.addr);
        args.count = None;
        let mut out = Vec::new();
        assert_eq!(tail::run(args, &mut out, never()).await.expect("tail"), 1);
        let out = text(&out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0], OZ_LINE);
        assert!(lines[1].contains("t1") && lines[1].contains("EF"), "{out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(server.received(), ["EO\\TXt1\\SO\\FO\\MO"]);
    })
    .await;
}

#[tokio::test]
async fn stop_ends_the_subscription_with_ee() {
    bounded(async {
        let server = FakeServer::start(WireForm::Bits8, serve(&[OZ])).await;
        let mut args = args(&server.addr);
        args.count = None;
        let mut out = Vec::new();
        let stop = tokio::time::sleep(Duration::from_millis(300));
        assert_eq!(tail::run(args, &mut out, stop).await.expect("tail"), 1);
        assert_eq!(text(&out), format!("{OZ_LINE}\n"));
        assert_eq!(
            server.wait_for(2).await,
            ["EO\\TXt1\\SO\\FO\\MO", "EE\\TXt1"]
        );
    })
    .await;
}

#[tokio::test]
async fn a_missing_ef_does_not_keep_the_tail_waiting() {
    bounded(async {
        // Answers the EO with one outcome and never answers EE.
        let server = FakeServer::start(WireForm::Bits8, |frame: &[u8]| {
            if frame.starts_with(b"EO") {
                Reply::with(&[OZ])
            } else {
                Reply::none()
            }
        })
        .await;
        let started = std::time::Instant::now();
        let printed = tail::run(args(&server.addr), &mut Vec::new(), never())
            .await
            .expect("tail");
        assert_eq!(printed, 1);
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await;
}

#[tokio::test]
async fn a_malformed_outcome_is_shown_not_fatal() {
    bounded(async {
        // No SI: not a valid OZ.
        let server = FakeServer::start(
            WireForm::Bits8,
            serve(&[b"OZ\\TXt1\\CNSales1\\RE10\\DT", OZ]),
        )
        .await;
        let mut args = args(&server.addr);
        args.count = Some(2);
        let mut out = Vec::new();
        assert_eq!(tail::run(args, &mut out, never()).await.expect("tail"), 2);
        let out = text(&out);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("unreadable OZ"), "{out}");
        assert!(lines[0].ends_with("OZ\\TXt1\\CNSales1\\RE10\\DT"), "{out}");
        assert_eq!(lines[1], OZ_LINE);
    })
    .await;
}

#[tokio::test]
async fn speaks_utf16_with_utf16() {
    const OZ16: &[u8] = "OZ\\TXt1\\CNVentes\\ANJosé\\SI42\\RE10\\AO105\\DTnom=Zoë".as_bytes();
    bounded(async {
        let server = FakeServer::start(WireForm::Utf16Le, serve(&[OZ16])).await;
        let mut args = args(&server.addr);
        args.server.utf16 = true;
        args.campaign = Some("Ventes".into());
        let mut out = Vec::new();
        assert_eq!(tail::run(args.clone(), &mut out, never()).await.expect("tail"), 1);
        let out = text(&out);
        assert!(
            out.ends_with("  Ventes  SI 42  RE 10 connected (live call)  AO 105 commitment (sale, promise to pay)  AN José  DT nom=Zoë\n"),
            "{out}"
        );
        assert_eq!(
            server.wait_for(2).await,
            ["EO\\TXt1\\CNVentes\\SO\\FO\\MO", "EE\\TXt1"]
        );

        args.raw = true;
        let mut out = Vec::new();
        tail::run(args, &mut out, never()).await.expect("tail");
        assert_eq!(text(&out), format!("{}\n", String::from_utf8_lossy(OZ16)));
    })
    .await;
}

#[tokio::test]
async fn a_bad_value_is_refused_before_connecting() {
    bounded(async {
        let mut args = args("127.0.0.1:1");
        args.campaign = Some("Sales\\FO".into());
        assert!(tail::run(args.clone(), &mut Vec::new(), never())
            .await
            .is_err());
        args.campaign = Some("Sales:1".into());
        let error = tail::run(args, &mut Vec::new(), never())
            .await
            .expect_err("forbidden character");
        assert!(!format!("{error:#}").contains("127.0.0.1:1"), "{error:#}");
    })
    .await;
}

#[tokio::test]
async fn a_gap_notice_is_shown_and_not_counted() {
    bounded(async {
        let server =
            FakeServer::start(WireForm::Bits8, serve(&[b"XG\\TXt1\\XF3\\XL5", OZ])).await;
        let mut args = args(&server.addr);
        args.sequenced = true;
        let mut out = Vec::new();
        assert_eq!(tail::run(args.clone(), &mut out, never()).await.expect("tail"), 1);
        assert_eq!(
            text(&out),
            format!("gap: outcomes XS 3 to 5 were removed by retention before this transaction received them\n{OZ_LINE}\n")
        );

        args.raw = true;
        let mut out = Vec::new();
        tail::run(args, &mut out, never()).await.expect("tail");
        assert_eq!(
            text(&out),
            format!("XG\\TXt1\\XF3\\XL5\n{}\n", String::from_utf8_lossy(OZ))
        );
    })
    .await;
}

#[tokio::test]
async fn with_persist_a_lost_connection_resumes_on_the_next_address_without_repeats() {
    const NEXT: &[u8] = b"OZ\\TXt1\\CNSales1\\SI43\\RE2\\XS8\\XT2026-11-25T17:27:58.000Z\\DT";
    bounded(async {
        // The first server delivers one outcome and goes away; the second sends it again
        // (its cursor is behind), then the next one.
        let first = FakeServer::start(WireForm::Bits8, one_outcome_then_gone).await;
        let second = FakeServer::start(WireForm::Bits8, serve(&[OZ, NEXT])).await;
        let mut args = args(&first.addr);
        args.server.addr.push(second.addr.clone());
        args.persist = Some("p".into());
        args.sequenced = true;
        args.raw = true;
        args.count = Some(2);
        let mut out = Vec::new();
        assert_eq!(tail::run(args, &mut out, never()).await.expect("tail"), 2);
        assert_eq!(
            text(&out),
            format!(
                "{}\n{}\n",
                String::from_utf8_lossy(OZ),
                String::from_utf8_lossy(NEXT)
            )
        );
        assert_eq!(first.received(), ["EO\\TXt1\\SO\\FO\\MO\\PSp\\XS"]);
        // Resumed after the outcome shown, and ended there.
        assert_eq!(
            second.wait_for(2).await,
            ["EO\\TXt1\\SO\\FO\\MO\\PSp\\XS\\XR7", "EE\\TXt1"]
        );
    })
    .await;
}

#[tokio::test]
async fn without_persist_the_first_address_that_answers_is_used_and_a_loss_is_an_error() {
    bounded(async {
        let server = FakeServer::start(WireForm::Bits8, one_outcome_then_gone).await;
        let mut args = args(&closed_port());
        args.server.addr.push(server.addr.clone());
        args.count = None;
        let mut out = Vec::new();
        let error = tail::run(args, &mut out, never())
            .await
            .expect_err("the connection was lost");
        assert_eq!(format!("{error:#}"), "the server closed the connection");
        assert_eq!(text(&out), format!("{OZ_LINE}\n"));
    })
    .await;
}
