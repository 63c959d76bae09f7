//! `ozbus bench` against a fake server that acknowledges every CF at once and fans each one out
//! as an OZ to every subscriber: the counting, pacing and reporting of the load generator. And
//! its JSON ingest phases against a real server, beside SDMP's, counted against what the server
//! delivered.

mod client_common;

use std::sync::Arc;

use client_common::{bounded, param, text};
use futures::{SinkExt, StreamExt};
use ozbus::client::bench::{self, BenchArgs, Ingest};
use parking_lot::Mutex;
use sdmp::{Frame, SdmpCodec, WireForm};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

type Outbox = mpsc::UnboundedSender<Vec<u8>>;
/// Each subscription: its TX and where its frames go.
type Subscribers = Arc<Mutex<Vec<(Vec<u8>, Outbox)>>>;

/// Starts the fake; `refuse`: answer every CF with ER instead of MV (and deliver nothing).
async fn fake_bench_server(refuse: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let subscribers: Subscribers = Arc::default();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let subscribers = subscribers.clone();
            tokio::spawn(async move {
                let (read, write) = stream.into_split();
                let mut frames = FramedRead::new(read, SdmpCodec::new(WireForm::Bits8));
                let mut sink = FramedWrite::new(write, SdmpCodec::new(WireForm::Bits8));
                let (outbox, mut pending) = mpsc::unbounded_channel::<Vec<u8>>();
                tokio::spawn(async move {
                    while let Some(frame) = pending.recv().await {
                        if sink.feed(&frame[..]).await.is_err() {
                            return;
                        }
                        while let Ok(frame) = pending.try_recv() {
                            if sink.feed(&frame[..]).await.is_err() {
                                return;
                            }
                        }
                        if SinkExt::<&[u8]>::flush(&mut sink).await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(Ok(Frame::Message(frame))) = frames.next().await {
                    let tk = param(&frame, "TK").unwrap_or_default().to_vec();
                    if frame.starts_with(b"EO") {
                        let tx = param(&frame, "TX").unwrap_or_default().to_vec();
                        subscribers.lock().push((tx, outbox.clone()));
                        let _ = outbox.send([&b"MV\\TK"[..], &tk].concat());
                    } else if frame.starts_with(b"CF") {
                        if refuse {
                            let mut er = b"ER\\EC406\\MSrefused\\FM\"".to_vec();
                            er.extend_from_slice(&frame);
                            er.push(b'"');
                            let _ = outbox.send(er);
                            continue;
                        }
                        let si = param(&frame, "SI").unwrap_or_default();
                        for (tx, subscriber) in subscribers.lock().iter() {
                            let oz =
                                [&b"OZ\\TX"[..], tx, b"\\CNbench\\SI", si, b"\\RE2\\DT"].concat();
                            let _ = subscriber.send(oz);
                        }
                        let _ = outbox.send([&b"MV\\TK"[..], &tk].concat());
                    }
                }
            });
        }
    });
    addr
}

fn args(addr: &str) -> BenchArgs {
    BenchArgs {
        addr: vec![addr.to_owned()],
        connections: 2,
        subscribers: 2,
        duration: 0.5,
        window: 100,
        http_connections: 4,
        ..BenchArgs::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measures_acceptance_delivery_and_latency() {
    bounded(async {
        let addr = fake_bench_server(false).await;
        let mut out = Vec::new();
        let report = bench::run(args(&addr), &mut out)
            .await
            .expect("bench")
            .remove(0);
        assert!(report.accepted > 0, "{report:?}");
        assert_eq!(report.errors, 0);
        // Every accepted CF reached both subscribers, give or take the window's edges.
        assert!(report.delivered > report.accepted, "{report:?}");
        assert!((report.accepted_per_sec - report.accepted as f64 / 0.5).abs() < 1e-6);
        assert!(report.latency_p50_ms > 0.0, "{report:?}");
        assert!(report.latency_p50_ms <= report.latency_p99_ms);
        assert!(report.latency_p99_ms <= report.latency_p999_ms);
        let out = text(&out);
        assert!(out.contains("accepted") && out.contains("p99.9"), "{out}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paces_to_the_target_rate() {
    bounded(async {
        let addr = fake_bench_server(false).await;
        let mut args = args(&addr);
        args.rate = 400;
        args.duration = 1.0;
        args.subscribers = 1;
        let report = bench::run(args, &mut Vec::new())
            .await
            .expect("bench")
            .remove(0);
        // 400 per second for one second; generous bounds for a busy test machine.
        assert!((300..=500).contains(&report.accepted), "{report:?}");
        assert!((300..=500).contains(&report.delivered), "{report:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_refusals_as_errors_and_prints_json() {
    bounded(async {
        let addr = fake_bench_server(true).await;
        let mut args = args(&addr);
        args.json = true;
        args.subscribers = 0;
        let mut out = Vec::new();
        let report = bench::run(args, &mut out).await.expect("bench").remove(0);
        assert_eq!(report.accepted, 0);
        assert_eq!(report.delivered, 0);
        assert!(report.errors > 0);
        let out = text(&out);
        assert!(out.starts_with("{\"accepted_per_sec\":0.000,"), "{out}");
        assert!(
            out.contains(&format!("\"errors\":{},", report.errors)),
            "{out}"
        );
        assert_eq!(out.lines().count(), 1);
    })
    .await;
}

#[tokio::test]
async fn bad_arguments_are_refused() {
    bounded(async {
        for change in [
            (|a: &mut BenchArgs| a.connections = 0) as fn(&mut BenchArgs),
            |a| a.window = 0,
            |a| a.duration = 0.0,
            |a| a.duration = f64::NAN,
            |a| a.http_connections = 0,
            |a| a.ingest.clear(),
        ] {
            let mut args = args("127.0.0.1:1");
            change(&mut args);
            assert!(bench::run(args, &mut Vec::new()).await.is_err());
        }
    })
    .await;
}

/// A subscriber of the test's own to every failure outcome of the bench campaign, from before
/// the run: how many OZ it has received so far.
async fn count_outcomes(addr: std::net::SocketAddr) -> Arc<std::sync::atomic::AtomicU64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, SdmpCodec::new(WireForm::Bits8));
    let mut sink = FramedWrite::new(write, SdmpCodec::new(WireForm::Bits8));
    sink.send(&b"EO\\TXcounter\\CNbench\\FO\\TKc"[..])
        .await
        .expect("EO");
    match frames.next().await {
        Some(Ok(Frame::Message(frame))) => assert_eq!(frame, &b"MV\\TKc"[..]),
        other => panic!("no MV for the EO: {other:?}"),
    }
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        let _sink = sink;
        while let Some(Ok(Frame::Message(frame))) = frames.next().await {
            if frame.starts_with(b"OZ") {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_single_and_bulk_ingest_are_measured_beside_sdmp_against_a_real_server() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use ozbus::config::Config;
    use ozbus::server::RunningServer;

    bounded(async {
        let data = tempfile::tempdir().expect("tempdir");
        let server = RunningServer::start(Config::for_test(data.path()))
            .await
            .expect("server");
        let delivered = count_outcomes(server.addr_8bit()).await;
        let mut args = args(&server.addr_8bit().to_string());
        args.http_addr = Some(server.http_addr().expect("HTTP listener").to_string());
        args.ingest = vec![Ingest::Sdmp, Ingest::Json, Ingest::JsonBulk(50)];
        args.rate = 2000;
        args.subscribers = 1;
        args.sse = 1;
        args.ws = 1;
        let mut out = Vec::new();
        let reports = bench::run(args, &mut out).await.expect("bench");

        let names: Vec<&str> = reports.iter().map(|r| r.ingest.as_str()).collect();
        assert_eq!(names, ["sdmp", "json", "json-bulk:50"]);
        for report in &reports {
            assert_eq!(report.errors, 0, "{report:?}");
            assert!(report.accepted > 0, "{report:?}");
            assert!(report.accepted <= report.accepted_total, "{report:?}");
            assert!(
                (report.accepted_per_sec - report.accepted as f64 / 0.5).abs() < 1e-6,
                "{report:?}"
            );
            assert!(report.answer_p50_ms > 0.0, "{report:?}");
            assert!(report.answer_p50_ms <= report.answer_p99_ms, "{report:?}");
            // The bench's own subscribers, over SDMP, SSE and WebSocket, got the reports.
            assert!(
                report.delivered > 0 && report.latency_p50_ms > 0.0,
                "{report:?}"
            );
            for stream in [&report.sse, &report.ws] {
                let stream = stream.as_ref().expect("measured");
                assert!(stream.delivered > 0, "{report:?}");
            }
        }
        // Every report the bench counted as accepted is an outcome the server delivered, and
        // nothing more: the counts are what the store took.
        let accepted: u64 = reports.iter().map(|r| r.accepted_total).sum();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while delivered.load(Ordering::Relaxed) < accepted && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(delivered.load(Ordering::Relaxed), accepted, "{reports:?}");

        // What a user reads: a block per phase, then the phases side by side.
        let out = text(&out);
        assert!(
            out.contains("ingest json: POST /v1/reports, 1 report per request, 4 HTTP connections"),
            "{out}"
        );
        assert!(
            out.contains("ingest json-bulk:50: POST /v1/reports/bulk, 50 reports per request"),
            "{out}"
        );
        let table = out.split("\ningest ").last().expect("the table");
        assert!(table.contains("accepted/s"), "{out}");
        for name in names {
            assert!(table.lines().any(|l| l.starts_with(name)), "{out}");
        }
        server.shutdown().await.expect("shutdown");
    })
    .await;
}
