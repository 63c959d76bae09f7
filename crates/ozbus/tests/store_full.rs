//! A full disk: a real `ozbus serve` with its data on a file system of a few MiB (a tmpfs this
//! test mounts; it runs as root in the test environment). Filled with large reports and a
//! filler file until ingestion is refused with EC 813, ozbus must go on serving subscribers,
//! acknowledge nothing it did not keep, resume by itself once the filler is gone, and lose
//! nothing it acknowledged across a restart.

mod server_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use server_common::{Client, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size of the file system the data lives on.
const FS_SIZE: &str = "4m";
/// Taken from the file system at the start, given back to end the outage.
const FILLER_BYTES: usize = 2 << 20;
/// DT of each report: large, so that few reports fill the rest.
const DT_BYTES: usize = 100_000;

/// A tmpfs mounted for the test, unmounted however the test ends.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount() -> Result<SmallFs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={FS_SIZE}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SmallFs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file there: detach it now, freed once released.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("answer in time")
    .expect("read");
    response
}

/// The value of a metric without labels.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// SI and DT length of an OZ.
fn oz_si_and_dt(oz: &str) -> (String, usize) {
    assert!(oz.starts_with(r"OZ\"), "{oz:.200}");
    let si = oz
        .split('\\')
        .find_map(|p| p.strip_prefix("SI"))
        .expect("SI")
        .to_string();
    let dt = oz.rsplit_once(r"\DT").expect("DT").1.len();
    (si, dt)
}

/// The reply to a request: MV (true) or the ER with EC 813 (false); anything else fails.
async fn accepted(client: &mut Client, tk: &str) -> bool {
    let reply = client.recv().await;
    if reply == format!(r"MV\TK{tk}") {
        return true;
    }
    assert!(
        reply.starts_with(
            r"ER\EC813\MSthe store is out of space: nothing was accepted; retry later\"
        ),
        "{reply:.300}"
    );
    assert!(reply.contains(&format!(r"\TK{tk}")), "{reply:.300}");
    false
}

#[tokio::test]
async fn a_full_disk_refuses_ingestion_and_ozbus_resumes_by_itself_when_room_returns() {
    let fs = match SmallFs::mount() {
        Ok(fs) => fs,
        Err(reason) => {
            println!("SKIPPED: this test needs a small file system to fill: {reason}");
            eprintln!("SKIPPED: this test needs a small file system to fill: {reason}");
            return;
        }
    };
    let data: PathBuf = fs.path().join("data");
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; FILLER_BYTES]).expect("filler fits an empty fs");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let server = ServerProcess::start_on_sqlite(&data, &["--metrics-listen", &metrics_addr]);
    let mut subscriber = server.client().await;
    subscriber.send(r"EO\TXs\FO\TKs").await;
    subscriber.expect(&[r"MV\TKs"]).await;

    // Fill: each call is an MC with a large DT, then its CF (the outcome carries the DT), one
    // at a time so that each reply is known, until one is refused.
    let mut producer = server.client().await;
    let dt = "x".repeat(DT_BYTES);
    let mut acknowledged = BTreeSet::new();
    let (last, record_kept) = 'fill: {
        for n in 0..200 {
            producer
                .send(&format!(r"MC\CNc\SIs{n}\DT{dt}\TKm{n}"))
                .await;
            if !accepted(&mut producer, &format!("m{n}")).await {
                break 'fill (n, false);
            }
            producer.send(&format!(r"CF\CA2\CNc\SIs{n}\TKc{n}")).await;
            if !accepted(&mut producer, &format!("c{n}")).await {
                break 'fill (n, true);
            }
            acknowledged.insert(format!("s{n}"));
        }
        panic!("200 reports of {DT_BYTES} bytes fit a {FS_SIZE} file system");
    };
    assert!(!acknowledged.is_empty(), "the first report was refused");

    // Refused up front now, without trying: a small report too.
    producer.send(r"CF\CA2\CNc\SIsmall\TKsmall").await;
    assert!(!accepted(&mut producer, "small").await);
    let text = scrape(port).await;
    assert_eq!(metric(&text, "ozbus_store_full"), Some(1.0), "{text}");
    assert!(
        metric(&text, "ozbus_store_full_refused_total").is_some_and(|n| n >= 2.0),
        "{text}"
    );

    // The subscriber, connected all along, received every acknowledged outcome, and nothing
    // else; the server still answers it.
    let mut received = BTreeSet::new();
    while received.len() < acknowledged.len() {
        let (si, dt_len) = oz_si_and_dt(&subscriber.recv().await);
        assert_eq!(dt_len, DT_BYTES);
        assert!(received.insert(si.clone()), "{si} twice");
    }
    assert_eq!(received, acknowledged);
    subscriber.send(r"VS\VI0\TKalive").await;
    subscriber.expect(&[r"MV\TKalive"]).await;

    // Room again: ingestion resumes by itself, within a few probes.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = BTreeSet::from([format!("s{last}"), "small".to_string()]);
    let mut attempt = 0;
    loop {
        let si = format!("r{attempt}");
        producer.send(&format!(r"CF\CA2\CNc\SI{si}\TK{si}")).await;
        if accepted(&mut producer, &si).await {
            acknowledged.insert(si);
            break;
        }
        refused.insert(si);
        assert!(Instant::now() < deadline, "ingestion did not resume");
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (si, _) = oz_si_and_dt(&subscriber.recv().await);
    assert_eq!(si, format!("r{attempt}"));
    assert_eq!(metric(&scrape(port).await, "ozbus_store_full"), Some(0.0));

    // The call book says what the store says: the refused report's record is open only if
    // its MC was acknowledged, and closing it now carries that MC's DT.
    producer.send(&format!(r"CF\CA2\CNc\SIs{last}\TKend")).await;
    assert!(accepted(&mut producer, "end").await);
    refused.remove(&format!("s{last}"));
    acknowledged.insert(format!("s{last}"));
    let (si, dt_len) = oz_si_and_dt(&subscriber.recv().await);
    assert_eq!(si, format!("s{last}"));
    assert_eq!(dt_len, if record_kept { DT_BYTES } else { 0 });
    subscriber.expect_silence(Duration::from_millis(300)).await;

    // After a crash and a restart, the log holds exactly what was acknowledged.
    server.kill();
    let server = ServerProcess::start_on_sqlite(&data, &[]);
    let mut reader = server.client().await;
    reader.send(r"EO\TXr\FO\XR0").await;
    let mut logged = BTreeSet::new();
    while logged.len() < acknowledged.len() {
        let (si, _) = oz_si_and_dt(&reader.recv().await);
        assert!(logged.insert(si.clone()), "{si} twice");
    }
    reader.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(logged, acknowledged);
    assert!(logged.is_disjoint(&refused));
    drop(server);
}
