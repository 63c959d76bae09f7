//! Exactly-once ingestion (XK): a producer that re-sends a message whose MV it never saw
//! causes no second effect, and gets the same MV, whether the first is committed, still in
//! flight, or was sent before a crash; a refused message leaves its key unused; a key counts
//! for the dedup window only.

mod server_common;

use std::collections::BTreeMap;
use std::time::Duration;

use server_common::{Client, ServerProcess, TestServer};

/// Reads OZ frames until none comes for a while; counts them by SI.
async fn outcomes_by_si(subscriber: &mut Client) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    while let Ok(oz) = tokio::time::timeout(Duration::from_millis(500), subscriber.recv()).await {
        let si = oz
            .split('\\')
            .find_map(|p| p.strip_prefix("SI"))
            .unwrap_or_else(|| panic!("no SI in {oz}"))
            .to_string();
        *seen.entry(si).or_default() += 1;
    }
    seen
}

async fn subscribe(client: &mut Client, eo: &str) {
    client.send(&format!(r"{eo}\TKsub")).await;
    client.expect(&[r"MV\TKsub"]).await;
}

#[tokio::test]
async fn a_resend_after_its_mv_gets_mv_and_has_no_second_effect() {
    // With every committed key dropped from memory at once, re-sends are found in the store.
    for memory in [65_536, 0] {
        let server = TestServer::start_with(|c| c.ingest.dedup_memory_keys = memory).await;
        let mut subscriber = server.client().await;
        subscribe(&mut subscriber, r"EO\TXs\FO\MO").await;
        let mut producer = server.client().await;

        producer.send(r"CF\CA2\CNc\SI1\XKk1\TK1").await;
        producer.expect(&[r"MV\TK1"]).await;
        // Re-sent as it was, and under another TK: the same MV, no effect.
        producer.send(r"CF\CA2\CNc\SI1\XKk1\TK1").await;
        producer.send(r"CF\CA2\CNc\SI1\XKk1\TK2").await;
        producer.expect(&[r"MV\TK1", r"MV\TK2"]).await;
        // The key names the message, whatever it says: no second effect either.
        producer.send(r"CF\CA3\CNc\SI9\XKk1\TK3").await;
        producer.expect(&[r"MV\TK3"]).await;
        // Another key, or the same key in another tenant, is another message.
        producer.send(r"CF\CA2\CNc\SI1\XKk2\TK4").await;
        producer.send(r"CF\CA2\CNc\SI1\TDacme\XKk1\TK5").await;
        producer.expect(&[r"MV\TK4", r"MV\TK5"]).await;
        // A UO too.
        producer.send(r"UO\TXu\CNc\SI1\RE5\DTfix\XKu1\TK6").await;
        producer.send(r"UO\TXu\CNc\SI1\RE5\DTfix\XKu1\TK7").await;
        producer.expect(&[r"MV\TK6", r"MV\TK7"]).await;

        let oz: Vec<String> = [
            subscriber.recv().await,
            subscriber.recv().await,
            subscriber.recv().await,
            subscriber.recv().await,
        ]
        .into();
        assert_eq!(oz[0], r"OZ\TXs\CNc\SI1\RE2\DT", "memory {memory}");
        assert_eq!(oz[1], r"OZ\TXs\CNc\SI1\RE2\DT");
        assert_eq!(oz[2], r"OZ\TXs\TDacme\CNc\SI1\RE2\DT");
        assert!(oz[3].starts_with(r"OZ\TXs\CNc\SI1\RE5\"), "{}", oz[3]);
        subscriber.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_resend_after_a_crash_and_a_restart_gets_mv_and_has_no_second_effect() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut producer = server.client().await;
    producer.send(r"MC\CNc\SIcall\DTdata\XKmc\TK1").await;
    producer.send(r"CF\CA2\CNc\SIcall\XKcf\TK2").await;
    producer.expect(&[r"MV\TK1", r"MV\TK2"]).await;
    // Sent, and the server killed before its MV could be read: committed or not, unknown.
    producer.send(r"CF\CA2\CNc\SIunsure\XKunsure\TK3").await;
    server.kill();

    let server = ServerProcess::start(dir.path(), &[]);
    let mut producer = server.client().await;
    producer.send(r"MC\CNc\SIcall\DTdata\XKmc\TK1").await;
    producer.send(r"CF\CA2\CNc\SIcall\XKcf\TK2").await;
    producer.send(r"CF\CA2\CNc\SIunsure\XKunsure\TK3").await;
    producer.expect(&[r"MV\TK1", r"MV\TK2", r"MV\TK3"]).await;
    let mut reader = server.client().await;
    // No TK: the log's outcomes may come before an MV would.
    reader.send(r"EO\TXr\FO\XR0").await;
    let seen = outcomes_by_si(&mut reader).await;
    assert_eq!(
        seen,
        BTreeMap::from([("call".to_string(), 1), ("unsure".to_string(), 1)]),
        "the re-sent MC did not open the call again, nothing came twice"
    );
}

#[tokio::test]
async fn resends_in_flight_at_once_on_two_connections_all_get_mv_and_cause_one_outcome_each() {
    const MESSAGES: usize = 300;
    let server = TestServer::start().await;
    let mut subscriber = server.client().await;
    subscribe(&mut subscriber, r"EO\TXs\FO").await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    for n in 0..MESSAGES {
        let frame = format!(r"CF\CA2\CNc\SIs{n}\XKk{n}\TK{n}");
        a.send(&frame).await;
        b.send(&frame).await;
    }
    for client in [&mut a, &mut b] {
        for n in 0..MESSAGES {
            assert_eq!(client.recv().await, format!(r"MV\TK{n}"));
        }
    }
    let seen = outcomes_by_si(&mut subscriber).await;
    assert_eq!(seen.len(), MESSAGES);
    assert!(seen.values().all(|&count| count == 1), "{seen:?}");
}

#[tokio::test]
async fn a_refused_message_leaves_its_key_unused_and_its_resend_is_evaluated_again() {
    let server = TestServer::start().await;
    let mut subscriber = server.client().await;
    subscribe(&mut subscriber, r"EO\TXs\SO").await;
    let mut c = server.client().await;
    c.send(r"TC\ANJoe\AO105\XKdone\TK1").await;
    assert!(c.recv().await.starts_with(r"ER\EC410\"));
    c.send(r"MC\CNc\SIcall\TK2").await;
    c.send(r"LC\CNc\SIcall\ANJoe\TK3").await;
    c.send(r"TC\ANJoe\AO105\XKdone\TK4").await;
    c.expect(&[r"MV\TK2", r"MV\TK3", r"MV\TK4"]).await;
    subscriber
        .expect(&[r"OZ\TXs\CNc\ANJoe\SIcall\RE10\AO105\DT"])
        .await;
    // Now the key is used: the re-send has no effect (and is not refused for lack of a call).
    c.send(r"TC\ANJoe\AO105\XKdone\TK5").await;
    c.expect(&[r"MV\TK5"]).await;
    subscriber.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_key_counts_for_the_dedup_window_only() {
    for memory in [65_536, 0] {
        let server = TestServer::start_with(|c| {
            c.ingest.dedup_window = Duration::from_secs(1);
            c.ingest.dedup_memory_keys = memory;
        })
        .await;
        let mut subscriber = server.client().await;
        subscribe(&mut subscriber, r"EO\TXs\FO").await;
        let mut c = server.client().await;
        c.send(r"CF\CA2\CNc\SI1\XKk\TK1").await;
        c.send(r"CF\CA2\CNc\SI1\XKk\TK2").await;
        c.expect(&[r"MV\TK1", r"MV\TK2"]).await;
        subscriber.expect(&[r"OZ\TXs\CNc\SI1\RE2\DT"]).await;
        subscriber.expect_silence(Duration::from_millis(300)).await;
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // Past the window: a new message, with its effect, and its key counts again.
        c.send(r"CF\CA2\CNc\SI1\XKk\TK3").await;
        c.send(r"CF\CA2\CNc\SI1\XKk\TK4").await;
        c.expect(&[r"MV\TK3", r"MV\TK4"]).await;
        subscriber.expect(&[r"OZ\TXs\CNc\SI1\RE2\DT"]).await;
        subscriber.expect_silence(Duration::from_millis(300)).await;
    }
}
