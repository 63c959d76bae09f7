//! What survives a crash: a real `ozbus serve` process, killed with SIGKILL.

mod server_common;

use std::collections::HashSet;
use std::time::Duration;

use server_common::ServerProcess;

#[tokio::test]
async fn a_call_registered_and_connected_before_a_crash_completes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut c = server.client().await;
    c.send(r"MC\CNSales1\TN001234567890\ASref\DTname=Ann\TK1")
        .await;
    c.send(r"LC\CNSales1\TN001234567890\ANJoe\TK2").await;
    c.expect(&[r"MV\TK1", r"MV\TK2"]).await;
    server.kill();

    let server = ServerProcess::start(dir.path(), &[]);
    let mut subscriber = server.client().await;
    subscriber.send(r"EO\TXs\SO\TKs").await;
    subscriber.expect(&[r"MV\TKs"]).await;
    let mut agent = server.client().await;
    agent.send(r"TC\ANJoe\AO105\TK3").await;
    agent.expect(&[r"MV\TK3"]).await;
    subscriber
        .expect(&[r"OZ\TXs\CNSales1\ANJoe\SI001234567890\RE10\AO105\ASref\DTname=Ann"])
        .await;
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_to_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut c = server.client().await;
    // Keep sending while reading MVs; kill the server mid-stream.
    let mut acknowledged = HashSet::new();
    for n in 0..2000u32 {
        c.send(&format!(r"CF\CA2\CNk\SIs{n}\TK{n}")).await;
        if n == 1500 {
            // Read what has been acknowledged so far, then kill with more in flight.
            while acknowledged.len() < 1000 {
                let mv = c.recv().await;
                acknowledged.insert(mv.strip_prefix(r"MV\TK").unwrap().to_string());
            }
            break;
        }
    }
    server.kill();

    let server = ServerProcess::start(dir.path(), &[]);
    let mut reader = server.client().await;
    reader.send(r"EO\TXr\FO\XR0").await;
    let mut delivered = HashSet::new();
    while let Ok(oz) = tokio::time::timeout(Duration::from_secs(2), reader.recv()).await {
        let si = oz
            .split('\\')
            .find_map(|p| p.strip_prefix("SIs"))
            .unwrap()
            .to_string();
        assert!(delivered.insert(si), "delivered twice: {oz}");
    }
    let missing: Vec<_> = acknowledged.difference(&delivered).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(delivered.len() >= acknowledged.len());
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut c = server.client().await;
    c.send(r"MC\CNSales1\SIkept\TK1").await;
    c.expect(&[r"MV\TK1"]).await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(c.closed_by_server().await);

    let server = ServerProcess::start(dir.path(), &[]);
    let mut c = server.client().await;
    c.send(r"MC\CNSales1\SIkept").await;
    let er = c.recv().await;
    assert!(er.starts_with(r"ER\EC412"), "the record survived: {er}");
}
