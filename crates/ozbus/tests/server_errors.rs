//! Refusals over TCP: the ER a client receives, and that a refused message changed nothing.

mod server_common;

use std::time::Duration;

use server_common::TestServer;

/// Sends `frame` and asserts the reply is an ER with code `ec`.
async fn refused(client: &mut server_common::Client, frame: &str, ec: u16) {
    client.send(frame).await;
    let reply = client.recv().await;
    let expected_start = format!(r"ER\EC{ec}\MS");
    let expected_end = format!(r#"\FM"{frame}""#);
    assert!(
        reply.starts_with(&expected_start) && reply.ends_with(&expected_end),
        "{frame} gave {reply}, expected EC{ec}"
    );
}

#[tokio::test]
async fn call_rules_answer_406_to_414_and_change_nothing() {
    let server = TestServer::start().await;
    let mut subscriber = server.client().await;
    subscriber.send(r"EO\TXall\FO\SO\MO").await;
    let mut c = server.client().await;

    refused(&mut c, r"CF\CA0\CNc\SI1", 406).await;
    refused(&mut c, r"CF\CA9\CNc\SI1", 406).await;
    refused(&mut c, r"TC\ANnobody", 410).await;
    refused(&mut c, r"BD\ANnobody", 410).await;
    refused(&mut c, r"RN\CNc\SIunknown", 411).await;

    c.send(r"MC\CNc\SIdup\TKm").await;
    c.expect(&[r"MV\TKm"]).await;
    refused(&mut c, r"MC\CNc\SIdup", 412).await;
    refused(&mut c, r"RN\CNother\SIdup", 411).await;

    c.send(r"LC\CNc\SIdup\ANJoe\TKl").await;
    c.expect(&[r"MV\TKl"]).await;
    refused(&mut c, r"RN\CNc\SIdup", 413).await;
    refused(&mut c, r"LC\CNc\SIsecond\ANJoe", 414).await;
    // AO 1 maps to RE 34 (allowed); AO 200 maps to RE 0, notmade: not for a launched call.
    refused(&mut c, r"TC\ANJoe\AO200", 407).await;
    // Preview decline with an AO that is not "not made".
    c.send(r"MC\CNc\SIprev\ANAnn").await;
    refused(&mut c, r"BD\ANAnn\DD\AO167", 407).await;

    // None of the refused messages produced an outcome: the first one is Joe's TC.
    c.send(r"TC\ANJoe\AO1\TKt").await;
    c.expect(&[r"MV\TKt"]).await;
    subscriber
        .expect(&[r"OZ\TXall\CNc\ANJoe\SIdup\RE34\AO1\DT"])
        .await;
    subscriber.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn strict_tables_refuse_unknown_codes() {
    let server = TestServer::start_with(|c| c.outcomes.strict = true).await;
    let mut c = server.client().await;
    refused(&mut c, r"CF\CA555\CNc\SI1", 406).await;
    c.send(r"LC\CNc\SI1\ANJoe").await;
    refused(&mut c, r"TC\ANJoe\AO4242", 407).await;
}

#[tokio::test]
async fn transactions_answer_809_and_810() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.send(r"EO\TXt1\FO\TKo").await;
    a.expect(&[r"MV\TKo"]).await;
    refused(&mut b, r"EO\TXt1\SO", 809).await;
    refused(&mut b, r"EE\TXnone", 810).await;
    refused(&mut b, r"XA\TXt1\XS1", 810).await;

    // EE from another connection ends it: EF to both, then the TX is free again.
    b.send(r"EE\TXt1").await;
    b.expect(&[r"EF\TXt1"]).await;
    a.expect(&[r"EF\TXt1"]).await;
    b.send(r"EO\TXt1\SO\TKagain").await;
    b.expect(&[r"MV\TKagain"]).await;

    // A transaction ends with its connection.
    drop(b);
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.send(r"EO\TXt1\FO\TKthird").await;
    a.expect(&[r"MV\TKthird"]).await;
}

#[tokio::test]
async fn codec_errors_reach_the_client_and_the_connection_stays_up() {
    let server = TestServer::start_with(|c| c.server.max_frame = 10_000).await;
    let mut c = server.client().await;
    refused(&mut c, r"EO\CNSales1\FO\SO", 803).await;
    refused(&mut c, r"XX\TXa", 800).await;

    let long = format!(r"MC\CNc\TKbig\DT{}", "x".repeat(20_000));
    c.send(&long).await;
    let er = c.recv().await;
    let head = &long[..4000];
    assert_eq!(
        er,
        format!(r#"ER\EC850\MSframe longer than 10000 characters\TKbig\FM"{head}""#)
    );
    c.send(r"VS").await;
    c.expect(&["DA"]).await;
}

#[tokio::test]
async fn invalid_utf16_is_851() {
    let server = TestServer::start().await;
    let mut c = server.client_utf16().await;
    // "VS", a lone high surrogate, then the terminator.
    c.send_raw(&[b'V', 0, b'S', 0, 0x00, 0xD8, 0, 0]).await;
    let er = c.recv().await;
    assert_eq!(
        er,
        "ER\\EC851\\MSframe is not valid UTF-16\\FM\"VS\u{FFFD}\""
    );
    c.send(r"VS").await;
    c.expect(&["DA"]).await;
}

#[tokio::test]
async fn keep_alive_sends_da_every_vi_seconds_until_vi0() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.send(r"VS\VI1\TKk").await;
    c.expect(&[r"MV\TKk"]).await;
    let started = std::time::Instant::now();
    c.expect(&["DA", "DA"]).await;
    assert!(started.elapsed() >= Duration::from_millis(1500));
    c.send(r"VS\VI0").await;
    // At most one DA that was already on its way.
    let _ = tokio::time::timeout(Duration::from_millis(300), c.recv()).await;
    c.expect_silence(Duration::from_millis(1500)).await;
}

#[tokio::test]
async fn ua_is_answered_with_us_as_no_user_directory_is_configured() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    c.send(r"UA\TDacme\ANjoe\PWsecret\TKu").await;
    c.expect(&[r"US\TDacme\ANjoe\RS1", r"MV\TKu"]).await;
}
