//! End to end over TCP: call reports in, OZ out, exactly as a subscriber sees them; and the same
//! over connections handed to the server in memory.

mod server_common;

use std::time::Duration;

use sdmp::WireForm;
use server_common::TestServer;

#[tokio::test]
async fn the_vendor_example_byte_for_byte() {
    let server = TestServer::start().await;
    let mut subscriber = server.client().await;
    subscriber.send(r"EO\CNSales1\TXEOSales1\FO\SO\TKe1").await;
    subscriber.expect(&[r"MV\TKe1"]).await;

    let mut dialer = server.client().await;
    dialer.send(r"MC\CNSales1\TN001234567890\TK1").await;
    dialer.send(r"LC\CNSales1\TN001234567890\ANJoe\TK2").await;
    dialer.send(r"TC\ANJoe\AO167\TK3").await;
    dialer.expect(&[r"MV\TK1", r"MV\TK2", r"MV\TK3"]).await;

    subscriber
        .expect(&[r"OZ\TXEOSales1\CNSales1\ANJoe\SI001234567890\RE10\AO167\DT"])
        .await;
}

#[tokio::test]
async fn failures_preview_rejects_and_record_data_reach_failure_subscribers() {
    let server = TestServer::start().await;
    let mut subscriber = server.client().await;
    subscriber.send(r"EO\TXf\FO").await;
    let mut campaign = server.client().await;
    campaign
        .send(r"MC\CNSales1\TN0111\SIs-1\ASref-7\DTname=Ann")
        .await;
    campaign.send(r"CF\CA2\CNSales1\SIs-1\TKcf").await;
    campaign.expect(&[r"MV\TKcf"]).await;
    subscriber
        .expect(&[r"OZ\TXf\CNSales1\SIs-1\TN0111\RE2\ASref-7\DTname=Ann"])
        .await;

    // A CF for a call nobody registered is still an outcome.
    campaign.send(r"CF\CA1\CNSales1\TN0222").await;
    subscriber.expect(&[r"OZ\TXf\CNSales1\SI0222\RE1\DT"]).await;

    // Preview: registered for agent Ann, declined by her.
    campaign.send(r"MC\CNSales1\TN0333\ANAnn\DTp").await;
    campaign.send(r"BD\ANAnn\DD\TKbd").await;
    campaign.expect(&[r"MV\TKbd"]).await;
    subscriber
        .expect(&[r"OZ\TXf\CNSales1\ANAnn\SI0333\RE0\AO200\DD\DTp"])
        .await;

    // RN of a pending record.
    campaign.send(r"MC\CNSales1\TN0444").await;
    campaign.send(r"RN\CNSales1\TN0444").await;
    subscriber.expect(&[r"OZ\TXf\CNSales1\SI0444\RE0\DT"]).await;
}

#[tokio::test]
async fn an_expired_record_becomes_a_failure_outcome_with_re_0() {
    let server = TestServer::start().await;
    let mut subscriber = server.client().await;
    subscriber.send(r"EO\TXx\FO").await;
    let mut campaign = server.client().await;
    campaign.send(r"MC\CNSales1\SIexp\CE1\TKm").await;
    campaign.expect(&[r"MV\TKm"]).await;
    subscriber.expect(&[r"OZ\TXx\CNSales1\SIexp\RE0\DT"]).await;
}

#[tokio::test]
async fn management_updates_reach_only_management_subscribers() {
    let server = TestServer::start().await;
    let mut management = server.client().await;
    management.send(r"EO\TXm\MO").await;
    let mut everything_else = server.client().await;
    everything_else.send(r"EO\TXo\SO\FO").await;

    let mut client = server.client().await;
    client.send(r"CF\CA2\CNSales1\SIu-1\TKcf").await;
    client.expect(&[r"MV\TKcf"]).await;
    everything_else
        .expect(&[r"OZ\TXo\CNSales1\SIu-1\RE2\DT"])
        .await;

    client
        .send(r"UO\TXupd\CNSales1\SIu-1\AO105\DTsold\COyes\TKuo")
        .await;
    client.expect(&[r"MV\TKuo"]).await;
    management
        .expect(&[r"OZ\TXm\CNSales1\SIu-1\RE10\AO105\COyes\DTsold"])
        .await;
    everything_else
        .expect_silence(Duration::from_millis(300))
        .await;

    client.send(r"UO\TXupd\CNSales1\SInobody\RE1\DTx").await;
    let er = client.recv().await;
    assert!(er.starts_with(r"ER\EC411\MS"), "{er}");
}

#[tokio::test]
async fn a_correction_by_the_number_dialled_finds_a_call_registered_without_si() {
    // MC without SI: SI is the number, and the outcome keeps no TN of its own (OZ leaves TN out
    // when it equals SI). UO naming the call by CN and TN must find it all the same.
    let server = TestServer::start().await;
    let mut management = server.client().await;
    management.send(r"EO\TXm\MO\TKeo").await;
    management.expect(&[r"MV\TKeo"]).await;

    let mut client = server.client().await;
    client.send(r"MC\CNSales1\TN0555\TK1").await;
    client.send(r"LC\CNSales1\TN0555\ANJoe\TK2").await;
    client.send(r"TC\ANJoe\AO167\TK3").await;
    client.expect(&[r"MV\TK1", r"MV\TK2", r"MV\TK3"]).await;

    client
        .send(r"UO\TXfix\CNSales1\TN0555\RE99\DTcorrected\TK4")
        .await;
    client.expect(&[r"MV\TK4"]).await;
    management
        .expect(&[r"OZ\TXm\CNSales1\ANJoe\SI0555\RE99\DTcorrected"])
        .await;

    // Another campaign's number stays unknown.
    client
        .send(r"UO\TXfix\CNSales2\TN0555\RE99\DTcorrected\TK5")
        .await;
    let er = client.recv().await;
    assert!(er.starts_with(r"ER\EC411\MS"), "{er}");
}

#[tokio::test]
async fn filters_select_campaign_class_and_tenant() {
    let server = TestServer::start().await;
    let mut sales = server.client().await;
    sales.send(r"EO\TXs\CNSales1\FO").await;
    let mut acme = server.client().await;
    acme.send(r"EO\TXa\FO\TDacme").await;
    let mut all = server.client().await;
    all.send(r"EO\TXall\FO\SO\MO\TKok").await;
    all.expect(&[r"MV\TKok"]).await;

    let mut client = server.client().await;
    client.send(r"CF\CA2\CNSales2\SI1").await;
    client.send(r"CF\CA2\CNSales1\SI2\TDacme").await;
    client.send(r"CF\CA2\CNSales1\SI3\TKlast").await;
    client.expect(&[r"MV\TKlast"]).await;

    sales
        .expect(&[
            r"OZ\TXs\TDacme\CNSales1\SI2\RE2\DT",
            r"OZ\TXs\CNSales1\SI3\RE2\DT",
        ])
        .await;
    acme.expect(&[r"OZ\TXa\TDacme\CNSales1\SI2\RE2\DT"]).await;
    all.expect(&[
        r"OZ\TXall\CNSales2\SI1\RE2\DT",
        r"OZ\TXall\TDacme\CNSales1\SI2\RE2\DT",
        r"OZ\TXall\CNSales1\SI3\RE2\DT",
    ])
    .await;
    sales.expect_silence(Duration::from_millis(200)).await;
    acme.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn sequenced_transactions_carry_xs_and_xt_and_xr_resumes_after_a_number() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.send(r"EO\TXq\FO\XS").await;
    client.send(r"CF\CA2\CNc\SI1").await;
    client.send(r"CF\CA2\CNc\SI2").await;
    let first = client.recv().await;
    let second = client.recv().await;
    let seq = |oz: &str| -> u64 {
        oz.split('\\')
            .find_map(|p| p.strip_prefix("XS"))
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(first.starts_with(r"OZ\TXq\CNc\SI1\RE2\XS"), "{first}");
    assert_eq!(seq(&second), seq(&first) + 1);
    let xt = first
        .split('\\')
        .find_map(|p| p.strip_prefix("XT"))
        .unwrap();
    assert!(
        xt.len() == 24 && xt.ends_with('Z') && xt.as_bytes()[10] == b'T',
        "{xt}"
    );

    // A second transaction that resumes after the first outcome sees only the second.
    client.send(&format!(r"EO\TXr\FO\XR{}", seq(&first))).await;
    client.expect(&[r"OZ\TXr\CNc\SI2\RE2\DT"]).await;
}

#[tokio::test]
async fn sdmp_2_requests_get_sdmp_2_replies_and_events() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.send(r"CG:MA:EO\TXv2\FO\TKa").await;
    client.expect(&[r"CG:MA:MV\TKa"]).await;
    client.send(r"CG:CT:CF\CA2\CNc\SI1\TKb").await;
    let mut got = vec![client.recv().await, client.recv().await];
    got.sort();
    assert_eq!(
        got,
        vec![
            r"CG:CT:MV\TKb".to_string(),
            r"CG:MA:OZ\TXv2\CNc\SI1\RE2\DT".to_string()
        ]
    );
    client.send(r"CG:MA:EE\TXv2").await;
    client.expect(&[r"CG:MA:EF\TXv2"]).await;
    client.send(r"CG:MA:EX\TXv2").await;
    client
        .expect(&[r#"CG:MA:ER\EC800\MSunknown message code EX\FM"CG:MA:EX\TXv2""#])
        .await;
}

#[tokio::test]
async fn the_utf16_listener_speaks_utf16_both_ways() {
    let server = TestServer::start().await;
    let mut wide = server.client_utf16().await;
    wide.send(r"EO\TXw\FO\TKé").await;
    wide.expect(&[r"MV\TKé"]).await;
    // An 8-bit client reports with a Windows-1252 byte (0xE9 is é).
    let mut narrow = server.client().await;
    narrow.send_bytes(b"MC\\CNSales1\\SI1\\DTcaf\xe9").await;
    narrow.send(r"CF\CA2\CNSales1\SI1\TKn").await;
    narrow.expect(&[r"MV\TKn"]).await;
    wide.expect(&[r"OZ\TXw\CNSales1\SI1\RE2\DTcafé"]).await;
    // And a UTF-16 client's text reaches 8-bit subscribers as UTF-8.
    narrow.send(r"EO\TXn\FO").await;
    wide.send(r"MC\CNSales1\SI2\DTcafé€").await;
    wide.send(r"CF\CA2\CNSales1\SI2\TKw").await;
    // Its own transaction sees the outcome too; OZ and MV may come in either order.
    let mut got = vec![wide.recv().await, wide.recv().await];
    got.sort();
    assert_eq!(
        got,
        vec![
            r"MV\TKw".to_string(),
            r"OZ\TXw\CNSales1\SI2\RE2\DTcafé€".to_string()
        ]
    );
    assert_eq!(
        narrow.recv_bytes().await,
        "OZ\\TXn\\CNSales1\\SI2\\RE2\\DTcafé€".as_bytes()
    );
}

#[tokio::test]
async fn a_call_left_open_past_the_call_timeout_closes_with_re_9() {
    let server = TestServer::start_with(|c| c.calls.call_timeout = Duration::from_secs(1)).await;
    let mut subscriber = server.client().await;
    subscriber.send(r"EO\TXt\FO\TKo").await;
    subscriber.expect(&[r"MV\TKo"]).await;
    let mut c = server.client().await;
    c.send(r"LC\CNSales1\SIlong\ANJoe\TKl").await;
    c.expect(&[r"MV\TKl"]).await;
    subscriber
        .expect(&[r"OZ\TXt\CNSales1\ANJoe\SIlong\RE9\DT"])
        .await;
    // Joe is free again.
    c.send(r"LC\CNSales1\SInext\ANJoe\TKn").await;
    c.expect(&[r"MV\TKn"]).await;
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_holds_up_nobody_and_gets_everything_later() {
    let server = TestServer::start().await;
    let mut stalled = server.client().await;
    stalled.send(r"EO\TXstalled\FO").await;
    let mut reader = server.client().await;
    reader.send(r"EO\TXreader\FO\TKr").await;
    reader.expect(&[r"MV\TKr"]).await;

    // 8,000 outcomes of 2 kB each: far more than the stalled connection's socket buffers hold.
    let data = "d".repeat(2000);
    let mut dialer = server.client().await;
    let n = 8000;
    for i in 0..n {
        dialer.send(&format!(r"MC\CNc\SIs{i}\DT{data}")).await;
        let tk = if i + 1 == n { r"\TKlast" } else { "" };
        dialer.send(&format!(r"CF\CA2\CNc\SIs{i}{tk}")).await;
    }
    dialer.expect(&[r"MV\TKlast"]).await;
    for i in 0..n {
        assert_eq!(
            reader.recv().await,
            format!(r"OZ\TXreader\CNc\SIs{i}\RE2\DT{data}")
        );
    }
    // Now the stalled subscriber reads: everything, in order, from the log.
    for i in 0..n {
        assert_eq!(
            stalled.recv().await,
            format!(r"OZ\TXstalled\CNc\SIs{i}\RE2\DT{data}")
        );
    }
}

#[tokio::test]
async fn connections_handed_over_in_memory_are_served_like_those_of_the_listeners() {
    let server = TestServer::start().await;
    let mut subscriber = server.client_in_memory(WireForm::Utf16Le);
    subscriber.send(r"CG:MA:EO\TXm\FO\TKe").await;
    subscriber.expect(&[r"CG:MA:MV\TKe"]).await;
    let mut tcp = server.client().await;
    tcp.send(r"EO\TXt\FO\TKe").await;
    tcp.expect(&[r"MV\TKe"]).await;

    let mut dialer = server.client_in_memory(WireForm::Bits8);
    dialer.send(r"MC\CNc\TN1\TKm").await;
    dialer.send(r"CF\CNc\TN1\CA2\TKc").await;
    dialer.expect(&[r"MV\TKm", r"MV\TKc"]).await;
    subscriber.expect(&[r"CG:MA:OZ\TXm\CNc\SI1\RE2\DT"]).await;
    tcp.expect(&[r"OZ\TXt\CNc\SI1\RE2\DT"]).await;

    // Refusals come back in memory as over TCP.
    dialer.send(r"MC\CNc").await;
    let er = dialer.recv().await;
    assert!(
        er.starts_with(r"ER\EC120\MS") && er.ends_with(r#"\FM"MC\CNc""#),
        "{er}"
    );

    // The peer closing ends the connection, and its transaction: the server shuts down without
    // waiting for either.
    dialer.close().await;
    subscriber.close().await;
    let started = std::time::Instant::now();
    server.server.shutdown().await.expect("clean shutdown");
    assert!(started.elapsed() < Duration::from_secs(4));
}
