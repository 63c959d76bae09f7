//! `ozbus send` against a fake server: what goes out, what is printed, what is counted.

mod client_common;

use std::time::{Duration, Instant};

use client_common::{bounded, closed_port, param, text, FakeServer, Reply};
use ozbus::client::send::{self, SendArgs, SendOutcome};
use ozbus::client::{AccessArgs, ServerArgs};
use sdmp::WireForm;

fn args(addr: &str, frames: &[&str]) -> SendArgs {
    SendArgs {
        server: ServerArgs {
            addr: vec![addr.to_owned()],
            utf16: false,
            access: AccessArgs::default(),
        },
        wait: 0.3,
        frames: frames.iter().map(|f| (*f).to_owned()).collect(),
    }
}

/// MV for a frame with TK, ER 800 for a frame starting with `BAD`, nothing otherwise.
fn answer(frame: &[u8]) -> Reply {
    if frame.starts_with(b"BAD") {
        let mut er = b"ER\\EC800\\MSunknown message code\\FM\"".to_vec();
        er.extend_from_slice(frame);
        er.push(b'"');
        return Reply {
            frames: vec![er],
            close: false,
        };
    }
    match param(frame, "TK") {
        Some(tk) => Reply {
            frames: vec![[&b"MV\\TK"[..], tk].concat()],
            close: false,
        },
        None => Reply::none(),
    }
}

#[tokio::test]
async fn prints_exactly_the_replies_and_counts_the_errors() {
    bounded(async {
        let server = FakeServer::start(WireForm::Bits8, answer).await;
        let mut out = Vec::new();
        let outcome = send::run(
            args(
                &server.addr,
                &["CF\\CA2\\CNSales1\\SI42\\TKt1", "BAD\\X", "VS"],
            ),
            &mut out,
        )
        .await
        .expect("send");
        assert_eq!(
            text(&out),
            "MV\\TKt1\nER\\EC800\\MSunknown message code\\FM\"BAD\\X\"\n"
        );
        assert_eq!(
            outcome,
            SendOutcome {
                sent: 3,
                received: 2,
                errors: 1
            }
        );
        assert_eq!(
            server.received(),
            ["CF\\CA2\\CNSales1\\SI42\\TKt1", "BAD\\X", "VS"]
        );
    })
    .await;
}

#[tokio::test]
async fn without_arguments_reads_one_frame_per_line_of_input() {
    bounded(async {
        let server = FakeServer::start(WireForm::Bits8, answer).await;
        let mut out = Vec::new();
        // CR LF, LF, an empty line, NUL, and a last frame without terminator.
        let input = std::io::Cursor::new(
            b"MC\\CNa\\TN1\\TKm1\r\nRN\\CNa\\TN1\n\nVS\0CF\\CA2\\CNa\\TN1\\TKc1".to_vec(),
        );
        let outcome = send::run_with_input(args(&server.addr, &[]), input, &mut out)
            .await
            .expect("send");
        assert_eq!(
            server.received(),
            [
                "MC\\CNa\\TN1\\TKm1",
                "RN\\CNa\\TN1",
                "VS",
                "CF\\CA2\\CNa\\TN1\\TKc1"
            ]
        );
        assert_eq!(text(&out), "MV\\TKm1\nMV\\TKc1\n");
        assert_eq!(
            outcome,
            SendOutcome {
                sent: 4,
                received: 2,
                errors: 0
            }
        );
    })
    .await;
}

#[tokio::test]
async fn an_argument_with_several_lines_sends_one_frame_per_line() {
    bounded(async {
        let server = FakeServer::start(WireForm::Bits8, answer).await;
        let mut out = Vec::new();
        let outcome = send::run(args(&server.addr, &["VS\nVS\\VI0", "DA"]), &mut out)
            .await
            .expect("send");
        assert_eq!(server.received(), ["VS", "VS\\VI0", "DA"]);
        assert_eq!(outcome.sent, 3);
    })
    .await;
}

#[tokio::test]
async fn speaks_utf16_with_utf16() {
    bounded(async {
        let server = FakeServer::start(WireForm::Utf16Le, answer).await;
        let mut out = Vec::new();
        let mut args = args(
            &server.addr,
            &["MC\\CNVentes\\TN1\\DTnom=José\\TKé1", "BAD"],
        );
        args.server.utf16 = true;
        let outcome = send::run(args, &mut out).await.expect("send");
        // The fake decodes UTF-16 to UTF-8: what arrived is the text that was sent.
        assert_eq!(
            server.received(),
            ["MC\\CNVentes\\TN1\\DTnom=José\\TKé1", "BAD"]
        );
        assert_eq!(
            text(&out),
            "MV\\TKé1\nER\\EC800\\MSunknown message code\\FM\"BAD\"\n"
        );
        assert_eq!(outcome.errors, 1);
    })
    .await;
}

#[tokio::test]
async fn bytes_that_are_not_utf8_are_printed_lossily() {
    bounded(async {
        let server = FakeServer::start(WireForm::Bits8, |_: &[u8]| {
            Reply::with(&[b"MV\\TKcaf\xe9", b"DA"])
        })
        .await;
        let mut out = Vec::new();
        let outcome = send::run(args(&server.addr, &["VS"]), &mut out)
            .await
            .expect("send");
        assert_eq!(text(&out), "MV\\TKcaf\u{fffd}\nDA\n");
        assert_eq!(outcome.received, 2);
    })
    .await;
}

#[tokio::test]
async fn a_server_that_closes_ends_the_wait_early() {
    bounded(async {
        let server = FakeServer::start(WireForm::Bits8, |_: &[u8]| {
            Reply::with(&[b"MV\\TKx"]).then_close()
        })
        .await;
        let mut out = Vec::new();
        let mut args = args(&server.addr, &["VS\\TKx"]);
        args.wait = 30.0;
        let started = Instant::now();
        let outcome = send::run(args, &mut out).await.expect("send");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(text(&out), "MV\\TKx\n");
        assert_eq!(outcome.sent, 1);
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_server_and_a_bad_wait_are_errors() {
    bounded(async {
        let addr = closed_port();
        let mut out = Vec::new();
        let error = send::run(args(&addr, &["VS"]), &mut out)
            .await
            .expect_err("nobody listens");
        assert!(format!("{error:#}").contains(&addr), "{error:#}");

        let mut bad = args(&addr, &["VS"]);
        bad.wait = -1.0;
        assert!(send::run(bad, &mut out).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn of_several_addresses_the_first_that_answers_is_used() {
    bounded(async {
        let down = closed_port();
        let server = FakeServer::start(WireForm::Bits8, answer).await;
        let mut first_down = args(&down, &["VS\\TKx"]);
        first_down.server.addr.push(server.addr.clone());
        let mut out = Vec::new();
        let outcome = send::run(first_down, &mut out).await.expect("send");
        assert_eq!(text(&out), "MV\\TKx\n");
        assert_eq!(outcome.received, 1);

        // None answers: every address is named.
        let mut all_down = args(&down, &["VS"]);
        all_down.server.addr.push(down.clone());
        let error = send::run(all_down, &mut out)
            .await
            .expect_err("nobody listens");
        let message = format!("{error:#}");
        assert!(
            message.starts_with("no server answered: connecting to"),
            "{message}"
        );
    })
    .await;
}
