//! Clients that try to make the server hold memory, or run it out of descriptors, each against a
//! real `ozbus serve` process with default limits: the server's resident memory may not grow by
//! more than 128 MB, and the other clients keep being served.

mod server_common;

use std::time::Duration;

use server_common::{Client, ServerProcess};
use tokio::time::timeout;

const MIB: u64 = 1 << 20;
/// What no client in this file may make the server hold beyond its starting memory.
const BOUND: u64 = 128 * MIB;

/// Writes `frame` repeatedly (as fast as the server takes it), for at most `within`.
async fn flood(client: &mut Client, frame: &[u8], count: usize, within: Duration) {
    let _ = timeout(within, async {
        for _ in 0..count {
            client.send_raw(frame).await;
        }
    })
    .await;
}

/// A subscriber that keeps reading proves the server still serves others: an outcome reported
/// now reaches it.
async fn still_served(server: &ServerProcess, tag: &str) {
    let mut probe = server.client().await;
    probe
        .send(&format!(r"EO\TXprobe{tag}\CNprobe\FO\TK{tag}"))
        .await;
    probe.expect(&[&format!(r"MV\TK{tag}")]).await;
    let mut dialer = server.client().await;
    dialer.send(&format!(r"CF\CA2\CNprobe\SI{tag}\TKp")).await;
    dialer.expect(&[r"MV\TKp"]).await;
    assert_eq!(
        probe.recv().await,
        format!(r"OZ\TXprobe{tag}\CNprobe\SI{tag}\RE2\DT")
    );
}

fn grew(server: &ServerProcess, before: u64) -> u64 {
    server.rss().saturating_sub(before)
}

#[tokio::test]
async fn subscribers_that_never_read_large_outcomes_hold_a_bounded_amount() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut dialer = server.client().await;
    let dt = "x".repeat(120_000);
    for i in 0..200 {
        dialer.send(&format!(r"MC\CNbig\SI{i}\DT{dt}")).await;
        dialer.send(&format!(r"CF\CA2\CNbig\SI{i}\TK{i}")).await;
    }
    for i in 0..200 {
        dialer.expect(&[&format!(r"MV\TK{i}")]).await;
    }
    let before = server.rss();
    // Sixteen subscriptions from the start of the log (24 MB each to send), never reading.
    let mut silent = Vec::new();
    for i in 0..16 {
        let mut client = server.client().await;
        client.send(&format!(r"EO\TXs{i}\FO\XR0")).await;
        silent.push(client);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let growth = grew(&server, before);
    assert!(growth < BOUND, "grew by {} MiB", growth / MIB);
    still_served(&server, "a").await;
    eprintln!("16 silent subscribers: +{} MiB", growth / MIB);
}

#[tokio::test]
async fn a_connection_that_opens_thousands_of_transactions_and_never_reads_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let before = server.rss();
    let mut hog = server.client().await;
    let eos: Vec<u8> = (0..5000)
        .flat_map(|i| format!("EO\\TXt{i}\\FO\\TK{i}\0").into_bytes())
        .collect();
    flood(&mut hog, &eos, 1, Duration::from_secs(5)).await;
    let mut dialer = server.client().await;
    let dt = "y".repeat(1000);
    for i in 0..5000 {
        dialer.send(&format!(r"CF\CA2\CNc\SI{i}\DT{dt}")).await;
    }
    dialer.send(r"VS\TKdone").await;
    loop {
        if dialer.recv().await == r"MV\TKdone" {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let growth = grew(&server, before);
    assert!(growth < BOUND, "grew by {} MiB", growth / MIB);
    still_served(&server, "b").await;
    // When it finally reads: beyond its 64 transactions, EC 814.
    let mut refused = false;
    for _ in 0..200 {
        if hog.recv().await.starts_with(r"ER\EC814") {
            refused = true;
            break;
        }
    }
    assert!(refused, "no EC 814 for the 65th transaction");
    eprintln!("5,000 EO on one silent connection: +{} MiB", growth / MIB);
}

#[tokio::test]
async fn clients_that_send_bad_frames_and_never_read_the_errors_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let before = server.rss();
    let mut floods = Vec::new();
    for _ in 0..10 {
        let mut client = server.client().await;
        floods.push(tokio::spawn(async move {
            let bad = format!("ZZ\\XX{}\0", "b".repeat(5000)).into_bytes();
            flood(&mut client, &bad, 5000, Duration::from_secs(4)).await;
            client
        }));
    }
    let mut clients = Vec::new();
    for f in floods {
        clients.push(f.await.unwrap());
    }
    let growth = grew(&server, before);
    assert!(growth < BOUND, "grew by {} MiB", growth / MIB);
    still_served(&server, "c").await;
    // Each got its ERs, in order, as far as it read.
    assert!(clients[0].recv().await.starts_with(r"ER\EC800"));
    eprintln!("10 connections flooding bad frames: +{} MiB", growth / MIB);
}

#[tokio::test]
async fn partial_frames_are_capped_per_address_and_closed_when_they_do_not_end() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ozbus.toml");
    std::fs::write(&config, "[limits]\nframe_timeout = \"2s\"\n").unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let before = server.rss();
    // 2,000 connections, each with an unterminated frame of 524,000 bytes (UTF-16).
    let partial = vec![b'A'; 524_000];
    let mut held = Vec::new();
    for _ in 0..2000 {
        let Ok(stream) = tokio::net::TcpStream::connect(server.addr_utf16).await else {
            continue;
        };
        held.push(stream);
    }
    for stream in held.iter_mut() {
        use tokio::io::AsyncWriteExt;
        let _ = timeout(Duration::from_millis(20), stream.write_all(&partial)).await;
    }
    let growth = grew(&server, before);
    assert!(growth < BOUND, "grew by {} MiB", growth / MIB);
    // Only [limits] connections_per_address (128) were kept; a client elsewhere gets in.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut elsewhere = socket.connect(server.addr_8bit).await.unwrap();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        elsewhere.write_all(b"VS\0").await.unwrap();
        let mut da = [0u8; 3];
        timeout(Duration::from_secs(10), elsewhere.read_exact(&mut da))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&da, b"DA\0");
    }
    // After two frame timeouts, none is left.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut open = 0;
    for stream in held.iter_mut() {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        match timeout(Duration::from_millis(5), stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            _ => open += 1,
        }
    }
    assert_eq!(open, 0, "connections still open after the frame timeout");
    drop(held);
    still_served(&server, "d").await;
    eprintln!("2,000 partial UTF-16 frames: +{} MiB", growth / MIB);
}

#[tokio::test]
async fn persisted_transactions_per_tenant_are_limited() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ozbus.toml");
    std::fs::write(
        &config,
        "[limits]\npersisted_per_tenant = 100\ntransactions_per_connection = 1000\n",
    )
    .unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let mut client = server.client().await;
    for i in 0..100 {
        client.send(&format!(r"EO\TXt{i}\FO\PSp{i}\TK{i}")).await;
        client.expect(&[&format!(r"MV\TK{i}")]).await;
    }
    client.send(r"EO\TXt100\FO\PSp100").await;
    assert!(client.recv().await.starts_with(r"ER\EC814"));
    // Re-issuing one it has is not a new one.
    client.send(r"EO\TXt0\FO\PSp0\TKagain").await;
    client.expect(&[r"MV\TKagain"]).await;
}

#[tokio::test]
async fn out_of_descriptors_the_server_keeps_serving_and_accepts_again() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut served = server.client().await;
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &server.pid().to_string(), "--nofile=256:256"])
        .status()
        .unwrap();
    assert!(limited.success());
    let mut crowd = Vec::new();
    for _ in 0..300 {
        if let Ok(Ok(stream)) = timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(server.addr_8bit),
        )
        .await
        {
            crowd.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The connection that exists is served.
    served.send("VS").await;
    served.expect(&["DA"]).await;
    // Once descriptors are free again, new clients get in.
    drop(crowd);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut late = timeout(Duration::from_secs(5), server.client())
        .await
        .expect("a new connection is accepted again");
    late.send("VS").await;
    late.expect(&["DA"]).await;
}

/// The load test of `ozbus bench --idle 5000 --stalled 1 --subscribers 10` against a real server
/// process: 5,000 connections held open, a subscriber that never reads, ten that do, and four
/// producers. The ten receive every outcome, every idle connection is still answered, and the
/// server's memory stays within its output budget plus what the connections themselves take.
/// (Throughput with and without the stalled subscriber is measured by `ozbus bench`, not here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_a_stalled_subscriber_and_ten_readers() {
    use ozbus::client::bench::{self, BenchArgs};

    const IDLE: usize = 5000;
    /// What an idle connection may take in the server (its task, buffers and socket state;
    /// about 16 KiB measured), with room for a debug build's allocations.
    const PER_CONNECTION: u64 = 24 << 10;
    const BUDGET: u64 = 64 * MIB;

    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ozbus.toml");
    std::fs::write(
        &config,
        format!("[limits]\nconnections_per_address = 6000\nmemory_budget = {BUDGET}\n"),
    )
    .unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let before = server.rss();
    let mut out = Vec::new();
    let run = bench::run(
        BenchArgs {
            addr: vec![server.addr_8bit.to_string()],
            subscribers: 10,
            rate: 20_000,
            duration: 3.0,
            window: 1000,
            idle: IDLE,
            stalled: 1,
            server_pid: Some(server.pid()),
            http_connections: 4,
            ..BenchArgs::default()
        },
        &mut out,
    );
    let report = timeout(Duration::from_secs(120), run)
        .await
        .expect("the load test ends")
        .expect("bench")
        .remove(0);
    eprintln!(
        "{IDLE} idle, 1 stalled, 10 subscribers: {report:?}, RSS before {} MiB",
        before / MIB
    );
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.idle_answered, IDLE as u64, "{report:?}");
    // Every outcome accepted in the window reached each of the ten (give or take the window's
    // edges: an outcome accepted just before it opened may be delivered inside it, and so on).
    assert!(report.accepted > 10_000, "{report:?}");
    assert!(
        report.delivered >= report.accepted * 10 * 95 / 100,
        "the readers fell behind: {report:?}"
    );
    let bound = before + BUDGET + IDLE as u64 * PER_CONNECTION;
    assert!(
        report.peak_rss_bytes < bound,
        "peak RSS {} MiB, bound {} MiB: {report:?}",
        report.peak_rss_bytes / MIB,
        bound / MIB
    );
}

/// The table's million persisted transactions, scaled down: a server reads none of them at
/// start, so its memory after start does not grow with their number (before they were loaded
/// on demand, 100,000 of them took 127 MiB after start, measured with
/// `examples/persisted_start_stop`), and one named by a re-issue resumes at its
/// stored cursor. On SQLite: the test fills the store directly, which is quick.
#[tokio::test]
async fn many_persisted_transactions_cost_no_memory_until_named() {
    use bytes::Bytes;
    use ozbus::store::{Mutation, PersistedTransaction, SqliteStore, StoreOptions};
    const N: usize = 200_000;
    let empty = tempfile::tempdir().unwrap();
    let filled = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(StoreOptions {
        dir: filled.path().to_path_buf(),
        ..StoreOptions::default()
    })
    .unwrap();
    // Released now: the persist TTL (a day by default) keeps them all through the test.
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|i| {
                Mutation::PutTransaction(PersistedTransaction {
                    tenant: Bytes::from_static(ozbus::core::DEFAULT_TENANT),
                    ps: Bytes::from(format!("ps{i}")),
                    tx: Bytes::from(format!("tx{i}")),
                    request: Bytes::from(format!(r"EO\TXtx{i}\FO\PSps{i}\CS1000000")),
                    cursor: 0,
                    released_ms: Some(now_ms),
                })
            })
            .collect();
        store.submit(batch).await.unwrap();
    }
    store.close().unwrap();

    let baseline = ServerProcess::start_on_sqlite(empty.path(), &[]);
    still_served(&baseline, "empty").await;
    let empty_rss = baseline.rss();
    drop(baseline);
    let server = ServerProcess::start_on_sqlite(filled.path(), &[]);
    still_served(&server, "filled").await;
    let filled_rss = server.rss();
    assert!(
        filled_rss < empty_rss + 16 * MIB,
        "RSS after start with {N} persisted transactions: {} MiB, empty: {} MiB",
        filled_rss / MIB,
        empty_rss / MIB
    );
    // One of them, named: found, resumed, and its events delivered.
    let mut dialer = server.client().await;
    dialer.send(r"CF\CNc\SIafter\CA2\TKr").await;
    dialer.expect(&[r"MV\TKr"]).await;
    let mut client = server.client().await;
    client.send(r"EO\TXtx123456\CNc\FO\PSps123456\TKe").await;
    let mut got = vec![client.recv().await, client.recv().await];
    got.sort();
    assert_eq!(got, [r"MV\TKe", r"OZ\TXtx123456\CNc\SIafter\RE2\DT"]);
    // Its TX is taken by it, although nobody had named it since the start.
    client.send(r"EO\TXtx7\FO\PSother\TKx").await;
    assert!(client.recv().await.starts_with(r"ER\EC809"));
}
