//! The client tools against the real server, started in this process.

mod client_common;

use std::time::Duration;

use client_common::{bounded, text};
use ozbus::client::bench::{self, BenchArgs};
use ozbus::client::send::{self, SendArgs};
use ozbus::client::tail::{self, TailArgs};
use ozbus::client::{AccessArgs, ServerArgs};
use ozbus::config::Config;
use ozbus::server::RunningServer;

fn tail_args(addr: String, utf16: bool, campaign: &str) -> TailArgs {
    TailArgs {
        server: ServerArgs {
            addr: vec![addr],
            utf16,
            access: AccessArgs::default(),
        },
        campaign: Some(campaign.to_owned()),
        tenant: None,
        success: false,
        failure: true,
        management: false,
        tx: Some("client-test".to_owned()),
        persist: None,
        rate: None,
        sequenced: false,
        raw: false,
        count: Some(1),
    }
}

/// Runs `tail` until it prints one outcome, sending `frame` (which produces one) until it does:
/// a new transaction only sees outcomes accepted after it was opened, and nothing outside the
/// server says when that is.
async fn tail_one(tail: TailArgs, send_addr: String, frame: &str) -> (String, Vec<String>) {
    let mut tailing = tokio::spawn(async move {
        let mut out = Vec::new();
        let printed = tail::run(tail, &mut out, std::future::pending()).await;
        (printed, out)
    });
    let mut replies = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut out = Vec::new();
        let outcome = send::run(
            SendArgs {
                server: ServerArgs {
                    addr: vec![send_addr.clone()],
                    utf16: false,
                    access: AccessArgs::default(),
                },
                wait: 0.2,
                frames: vec![frame.to_owned()],
            },
            &mut out,
        )
        .await
        .expect("send");
        assert_eq!(outcome.errors, 0, "{}", text(&out));
        replies.push(text(&out));
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(300), &mut tailing).await {
            let (printed, out) = done.expect("tail task");
            assert_eq!(printed.expect("tail"), 1);
            return (text(&out), replies);
        }
    }
    panic!("tail printed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_gets_an_mv_and_tail_prints_the_outcome() {
    bounded(async {
        let data = tempfile::tempdir().expect("tempdir");
        let server = RunningServer::start(Config::for_test(data.path()))
            .await
            .expect("server");
        let addr = server.addr_8bit().to_string();

        let (line, replies) = tail_one(
            tail_args(addr.clone(), false, "Sales1"),
            addr.clone(),
            "CF\\CA2\\CNSales1\\SI42\\TKt1",
        )
        .await;
        assert!(replies.iter().all(|r| r == "MV\\TKt1\n"), "{replies:?}");
        let (time, rest) = line.split_at(24);
        assert!(time.ends_with('Z'), "{line}");
        assert_eq!(rest, "  Sales1  SI 42  RE 2 no answer\n");

        // Across listeners: sent as 8-bit UTF-8, read on the UTF-16 listener.
        let (line, _) = tail_one(
            tail_args(server.addr_utf16().to_string(), true, "Ventes"),
            addr,
            "CF\\CA5\\CNVentes\\SIé42\\TKt2",
        )
        .await;
        assert!(
            line.ends_with("  Ventes  SI é42  RE 5 answering machine\n"),
            "{line}"
        );

        server.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_against_the_real_server() {
    bounded(async {
        let data = tempfile::tempdir().expect("tempdir");
        let server = RunningServer::start(Config::for_test(data.path()))
            .await
            .expect("server");
        let report = bench::run(
            BenchArgs {
                addr: vec![server.addr_8bit().to_string()],
                connections: 2,
                rate: 2000,
                duration: 0.5,
                window: 500,
                http_connections: 4,
                ..BenchArgs::default()
            },
            &mut Vec::new(),
        )
        .await
        .expect("bench")
        .remove(0);
        assert_eq!(report.errors, 0);
        assert!(report.accepted > 0 && report.delivered > 0, "{report:?}");
        server.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_starts_its_own_server() {
    bounded(async {
        let report = bench::run(
            BenchArgs {
                connections: 1,
                rate: 1000,
                duration: 0.5,
                window: 100,
                json: true,
                // More than one address may hold by default: the in-process server makes room.
                idle: 300,
                stalled: 1,
                // Beside SDMP's: the same outcomes over Server-Sent Events and a WebSocket.
                sse: 1,
                ws: 1,
                http_connections: 4,
                ..BenchArgs::default()
            },
            &mut Vec::new(),
        )
        .await
        .expect("bench")
        .remove(0);
        assert_eq!(report.errors, 0);
        assert!(report.accepted > 0 && report.delivered > 0, "{report:?}");
        // The stalled subscriber held nobody up, and every idle connection is still served.
        assert_eq!(report.idle_answered, 300, "{report:?}");
        assert!(report.peak_rss_bytes > 0, "{report:?}");
        for streamed in [&report.sse, &report.ws] {
            let streamed = streamed.as_ref().expect("measured");
            assert!(streamed.delivered > 0, "{report:?}");
            assert!(streamed.latency_p50_ms > 0.0, "{report:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_a_roll_forward() {
    bounded(async {
        let mut out = Vec::new();
        bench::run(
            BenchArgs {
                connections: 1,
                duration: 1.0,
                window: 100,
                roll_forward: Some(12_000),
                http_connections: 4,
                ..BenchArgs::default()
            },
            &mut out,
        )
        .await
        .expect("bench")
        .remove(0);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "roll-forward of 12000 buffered outcomes (CS1000000): resume latency "
            ),
            "{text}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_a_connect_storm() {
    bounded(async {
        let mut out = Vec::new();
        bench::run(
            BenchArgs {
                connections: 1,
                subscribers: 0,
                duration: 1.0,
                window: 100,
                connect_storm: Some(500),
                http_connections: 4,
                ..BenchArgs::default()
            },
            &mut out,
        )
        .await
        .expect("bench");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                "connect storm: 500 clients at once, 500 answered (DA to VS), 0 failed, all within "
            ),
            "{text}"
        );
    })
    .await;
}
