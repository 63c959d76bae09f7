//! The HTTP front end against a real server and a real HTTP client: every endpoint, every
//! class of refusal, reports reaching SDMP subscribers, idempotency, bulk ingest.

mod http_common;
mod server_common;

use std::time::Duration;

use http_common::HttpServer;
use sdmp::WireForm;
use serde_json::{json, Value};
use server_common::{Client, ServerProcess};

/// An SDMP subscriber to every outcome of the server.
async fn subscriber(server: &HttpServer) -> Client {
    let mut client = Client::connect(server.server.addr_8bit(), WireForm::Bits8).await;
    client.send(r"EO\TXall\SO\FO\MO\TKeo").await;
    client.expect(&[r"MV\TKeo"]).await;
    client
}

#[tokio::test]
async fn a_report_in_json_reaches_an_sdmp_subscriber_once_it_is_durable() {
    let server = HttpServer::start().await;
    let mut sdmp = subscriber(&server).await;
    let (status, body) = server
        .report(r#"{"type":"CF","campaign":"Sales1","session":"42","cause":2,"raw_cause":17}"#)
        .await;
    assert_eq!((status, &body), (200, &json!({ "seq": 1 })));
    sdmp.expect(&[r"OZ\TXall\CNSales1\SI42\RE2\DT"]).await;

    // A call made, connected and completed: only the completion produces an outcome.
    for (report, seq) in [
        (
            r#"{"type":"MC","campaign":"Sales1","number":"0123","data":"lead 7"}"#,
            Value::Null,
        ),
        (
            r#"{"type":"LC","campaign":"Sales1","number":"0123","agent":"Joe"}"#,
            Value::Null,
        ),
        (
            r#"{"type":"TC","agent":"Joe","outcome":167,"conversion":"yes"}"#,
            json!(2),
        ),
    ] {
        let (status, body) = server.report(report).await;
        assert_eq!((status, &body["seq"]), (200, &seq), "{report}: {body}");
    }
    sdmp.expect(&[r"OZ\TXall\CNSales1\ANJoe\SI0123\RE10\AO167\COyes\DTlead 7"])
        .await;

    // A correction over HTTP reaches MO subscribers.
    let (status, body) = server
        .report(r#"{"type":"UO","transaction":"fix1","campaign":"Sales1","session":"0123","outcome":105,"data":"sold"}"#)
        .await;
    assert_eq!((status, &body), (200, &json!({ "seq": 3 })));
    sdmp.expect(&[r"OZ\TXall\CNSales1\ANJoe\SI0123\RE10\AO105\COyes\DTsold"])
        .await;
}

#[tokio::test]
async fn an_sdmp_report_and_a_json_report_are_one_call() {
    let server = HttpServer::start().await;
    let mut sdmp = subscriber(&server).await;
    sdmp.send(r"MC\CNc\SI9\DTfrom sdmp\TKm").await;
    sdmp.expect(&[r"MV\TKm"]).await;
    let (status, _) = server
        .report(r#"{"type":"CF","campaign":"c","session":"9","cause":1}"#)
        .await;
    assert_eq!(status, 200);
    sdmp.expect(&[r"OZ\TXall\CNc\SI9\RE1\DTfrom sdmp"]).await;
}

#[tokio::test]
async fn a_re_send_under_the_same_key_has_no_second_effect() {
    let server = HttpServer::start().await;
    let mut sdmp = subscriber(&server).await;
    let cf = r#"{"type":"CF","campaign":"c","session":"1","cause":2,"idempotency_key":"k-1"}"#;
    assert_eq!(server.report(cf).await, (200, json!({ "seq": 1 })));
    assert_eq!(
        server.report(cf).await,
        (200, json!({ "seq": 1 })),
        "a re-send is answered as the first was"
    );
    // The key as a header is the same key.
    let answer = server
        .report_as(
            r#"{"type":"CF","campaign":"c","session":"1","cause":2}"#,
            |r| r.header("Idempotency-Key", "k-1"),
        )
        .await;
    assert_eq!(answer, (200, json!({ "seq": 1 })));
    // Over SDMP too.
    sdmp.send(r"CF\CA2\CNc\SI1\XKk-1\TKs").await;
    sdmp.expect(&[r"OZ\TXall\CNc\SI1\RE2\DT", r"MV\TKs"]).await;
    sdmp.expect_silence(Duration::from_millis(300)).await;
    // Field and header naming two keys.
    let (status, body) = server
        .report_as(
            r#"{"type":"CF","campaign":"c","session":"1","cause":2,"idempotency_key":"a"}"#,
            |r| r.header("Idempotency-Key", "b"),
        )
        .await;
    assert_eq!((status, &body["ec"]), (400, &json!(802)));
}

/// The answers to `reports` sent one by one, then to all of them again in one bulk request.
async fn answers(server: &HttpServer, reports: &[&str]) -> (Vec<(u16, Value)>, Vec<Value>) {
    let mut single = Vec::new();
    for report in reports {
        single.push(server.report(report).await);
    }
    let (status, bulk) = server.bulk(&reports.join("\n")).await;
    assert_eq!(status, 200);
    (single, bulk)
}

/// A re-send under a used key is answered as the first send was, with its seq (or without
/// one, as the first send that produced no outcome), single or in bulk: with the key in memory,
/// with memory holding no committed key (it comes from the store), and after a restart.
#[tokio::test]
async fn a_re_send_under_a_used_key_gets_the_first_send_s_seq_also_after_a_restart() {
    let reports = [
        r#"{"type":"CF","campaign":"c","session":"1","cause":2,"idempotency_key":"cf"}"#,
        r#"{"type":"MC","campaign":"c","session":"2","idempotency_key":"mc"}"#,
        r#"{"type":"UO","transaction":"u","campaign":"c","session":"1","outcome":5,"data":"fix","idempotency_key":"uo"}"#,
    ];
    let single = vec![
        (200, json!({ "seq": 2 })),
        (200, json!({})),
        (200, json!({ "seq": 3 })),
    ];
    let bulk = vec![
        json!({ "line": 1, "status": 200, "seq": 2 }),
        json!({ "line": 2, "status": 200 }),
        json!({ "line": 3, "status": 200, "seq": 3 }),
    ];
    for memory in [65_536, 0] {
        let server = HttpServer::start_with(|c| c.ingest.dedup_memory_keys = memory).await;
        let mut sdmp = subscriber(&server).await;
        // Seq 1 has no key: a keyed report's seq is not merely the first.
        let (status, _) = server
            .report(r#"{"type":"CF","campaign":"c","session":"0","cause":1}"#)
            .await;
        assert_eq!(status, 200);
        let mut first = Vec::new();
        for report in reports {
            first.push(server.report(report).await);
        }
        assert_eq!(first, single, "memory {memory}");
        let again = answers(&server, &reports).await;
        assert_eq!(again, (single.clone(), bulk.clone()), "memory {memory}");
        sdmp.expect(&[
            r"OZ\TXall\CNc\SI0\RE1\DT",
            r"OZ\TXall\CNc\SI1\RE2\DT",
            r"OZ\TXall\CNc\SI1\RE30\AO5\DTfix",
        ])
        .await;
        sdmp.expect_silence(Duration::from_millis(300)).await;
        drop(sdmp);

        // After a restart the keys come from the store.
        let HttpServer { server, dir, .. } = server;
        server.shutdown().await.unwrap();
        let server = HttpServer::start_in(dir).await;
        let mut sdmp = subscriber(&server).await;
        let again = answers(&server, &reports).await;
        assert_eq!(again, (single.clone(), bulk.clone()), "memory {memory}");
        sdmp.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn every_refusal_carries_the_er_s_code_and_reason_and_the_status_of_the_table() {
    let server = HttpServer::start().await;
    let cases: &[(&str, u16, u16, &str)] = &[
        // Syntax: 400.
        (
            r#"{"type":"CF","session":"1","cause":2}"#,
            400,
            30,
            "mandatory parameter CN (CampaignName) missing",
        ),
        (
            r#"{"type":"CF","campaign":"c","cause":2}"#,
            400,
            120,
            "TN or SI required",
        ),
        (r#"not json"#, 400, 800, ""),
        (r#"{"type":"EO","transaction":"t"}"#, 400, 800, ""),
        (
            r#"{"type":"CF","campaign":"c","session":"1","cause":2,"colour":"red"}"#,
            400,
            801,
            "field \"colour\" is not defined for CF",
        ),
        (
            r#"{"type":"CF","campaign":"c","session":"1","cause":"2"}"#,
            400,
            801,
            "",
        ),
        (
            r#"{"type":"CF","campaign":"c","session":"1","cause":2,"cause":3}"#,
            400,
            802,
            "",
        ),
        (
            r#"{"type":"CF","campaign":"c","session":"","cause":2}"#,
            400,
            804,
            "SI must be 1..120 characters long",
        ),
        (
            r#"{"type":"CF","campaign":"c","session":"1","cause":1000}"#,
            400,
            805,
            "CA must be a number in 0..999",
        ),
        (
            r#"{"type":"CF","campaign":"c/d","session":"1","cause":2}"#,
            400,
            806,
            "",
        ),
        (
            r#"{"type":"UO","transaction":"t","campaign":"c","session":"1","data":"d"}"#,
            400,
            30,
            "one of RE and AO is mandatory",
        ),
        // What the outcome tables do not allow: 422.
        (
            r#"{"type":"CF","campaign":"c","session":"1","cause":9}"#,
            422,
            406,
            "",
        ),
        // No such call: 404.
        (
            r#"{"type":"RN","campaign":"c","session":"nobody"}"#,
            404,
            411,
            "",
        ),
        (
            r#"{"type":"UO","transaction":"t","campaign":"c","session":"nobody","reason":2,"data":"d"}"#,
            404,
            411,
            "",
        ),
        // State: 409.
        (r#"{"type":"TC","agent":"Nobody"}"#, 409, 410, ""),
        (r#"{"type":"BD","agent":"Nobody"}"#, 409, 410, ""),
    ];
    for &(report, status, ec, reason) in cases {
        let (got, body) = server.report(report).await;
        assert_eq!((got, &body["ec"]), (status, &json!(ec)), "{report}: {body}");
        assert_eq!(body["type"], format!("/docs#ec-{ec}"));
        assert_eq!(body["reason"], body["detail"]);
        if !reason.is_empty() {
            assert_eq!(body["reason"], reason, "{report}");
        }
    }
    // The same reports over SDMP get the same EC and reason.
    let mut sdmp = Client::connect(server.server.addr_8bit(), WireForm::Bits8).await;
    sdmp.send(r"CF\CNc\CA1000\SI1").await;
    assert!(sdmp
        .recv()
        .await
        .starts_with(r"ER\EC805\MSCA must be a number in 0..999\FM"));

    // 409 for an SI already open, and for an agent already on a call.
    for report in [
        r#"{"type":"MC","campaign":"c","session":"s1"}"#,
        r#"{"type":"LC","campaign":"c","session":"s2","agent":"Ann"}"#,
    ] {
        assert_eq!(server.report(report).await.0, 200);
    }
    let (status, body) = server
        .report(r#"{"type":"MC","campaign":"c","session":"s1"}"#)
        .await;
    assert_eq!((status, &body["ec"]), (409, &json!(412)));
    let (status, body) = server
        .report(r#"{"type":"LC","campaign":"c","session":"s3","agent":"Ann"}"#)
        .await;
    assert_eq!((status, &body["ec"]), (409, &json!(414)));
    let (status, body) = server
        .report(r#"{"type":"LC","campaign":"c","session":"s1"}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server
        .report(r#"{"type":"RN","campaign":"c","session":"s1"}"#)
        .await;
    assert_eq!((status, &body["ec"]), (409, &json!(413)));

    // Not JSON: 415.
    let response = server
        .client
        .post(server.url("/v1/reports"))
        .header("content-type", "text/plain")
        .body("CF")
        .send()
        .await
        .unwrap();
    let (status, body) = http_common::answer(response).await;
    assert_eq!((status, &body["ec"]), (415, &Value::Null));

    // Too large: 413.
    let huge = format!(r#"{{"type":"CF","campaign":"{}"}}"#, "x".repeat(5 << 20));
    let (status, body) = server.report(&huge).await;
    assert_eq!((status, &body["ec"]), (413, &json!(850)));

    // An unknown path: 404, a problem without EC.
    let (status, body) = http_common::answer(server.get("/v2/nothing").await).await;
    assert_eq!((status, &body["ec"]), (404, &Value::Null));
}

#[tokio::test]
async fn a_report_longer_than_the_largest_frame_is_too_large() {
    let server = HttpServer::start_with(|config| config.server.max_frame = 100).await;
    let report = format!(
        r#"{{"type":"MC","campaign":"c","session":"1","data":"{}"}}"#,
        "d".repeat(200)
    );
    let (status, body) = server.report(&report).await;
    assert_eq!((status, &body["ec"]), (413, &json!(850)), "{body}");
}

#[tokio::test]
async fn bulk_reports_are_taken_in_order_and_answered_line_by_line() {
    let server = HttpServer::start().await;
    let mut sdmp = subscriber(&server).await;
    let lines = concat!(
        "{\"type\":\"MC\",\"campaign\":\"S\",\"number\":\"1\"}\n",
        "\n",
        "{\"type\":\"LC\",\"campaign\":\"S\",\"number\":\"1\",\"agent\":\"Joe\"}\r\n",
        "{\"type\":\"TC\",\"agent\":\"Nobody\"}\n",
        "{\"type\":\"TC\",\"agent\":\"Joe\",\"outcome\":167}\n",
        "{\"type\":\"CF\",\"campaign\":\"S\",\"session\":\"2\",\"cause\":1}",
    );
    let (status, answer) = server.bulk(lines).await;
    assert_eq!(status, 200);
    let summary: Vec<(u64, u64, Value)> = answer
        .iter()
        .map(|line| {
            (
                line["line"].as_u64().unwrap(),
                line["status"].as_u64().unwrap(),
                line.get("seq")
                    .or(line.get("ec"))
                    .cloned()
                    .unwrap_or(Value::Null),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, 200, Value::Null),
            (3, 200, Value::Null),
            (4, 409, json!(410)),
            (5, 200, json!(1)),
            (6, 200, json!(2)),
        ]
    );
    sdmp.expect(&[
        r"OZ\TXall\CNS\ANJoe\SI1\RE10\AO167\DT",
        r"OZ\TXall\CNS\SI2\RE1\DT",
    ])
    .await;

    // A line that is no report refuses the whole request, and nothing is taken.
    let response = server
        .client
        .post(server.url("/v1/reports/bulk"))
        .header("content-type", "application/x-ndjson")
        .body("{\"type\":\"CF\",\"campaign\":\"S\",\"session\":\"3\",\"cause\":1}\n{\"type\":\"CF\"}\n")
        .send()
        .await
        .unwrap();
    let (status, body) = http_common::answer(response).await;
    assert_eq!(
        (status, &body["ec"], &body["line"]),
        (400, &json!(30), &json!(2))
    );
    // The first line that is no report is named, whether the codec refuses it (line 2) or it
    // is not even JSON (line 3).
    let response = server
        .client
        .post(server.url("/v1/reports/bulk"))
        .header("content-type", "application/x-ndjson")
        .body("{\"type\":\"CF\",\"campaign\":\"S\",\"session\":\"3\",\"cause\":1}\n{\"type\":\"CF\"}\nnot json\n")
        .send()
        .await
        .unwrap();
    let (status, body) = http_common::answer(response).await;
    assert_eq!(
        (status, &body["ec"], &body["line"]),
        (400, &json!(30), &json!(2))
    );
    sdmp.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn bulk_requests_are_bounded_in_lines_and_bytes() {
    let server = HttpServer::start_with(|config| {
        config.http.bulk_max_lines = 2;
        config.http.bulk_max_bytes = 1000;
    })
    .await;
    let line = "{\"type\":\"CF\",\"campaign\":\"S\",\"session\":\"3\",\"cause\":1}\n";
    let (status, answer) = server.bulk(&line.repeat(2)).await;
    assert_eq!((status, answer.len()), (200, 2));
    for body in [
        line.repeat(3),
        format!("{{\"type\":\"CF\",\"campaign\":\"{}\"}}", "x".repeat(1000)),
    ] {
        let response = server
            .client
            .post(server.url("/v1/reports/bulk"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, body) = http_common::answer(response).await;
        assert_eq!((status, &body["ec"]), (413, &json!(850)), "{body}");
    }
    // An Idempotency-Key header names one report, not many.
    let response = server
        .client
        .post(server.url("/v1/reports/bulk"))
        .header("content-type", "application/x-ndjson")
        .header("idempotency-key", "k")
        .body(line)
        .send()
        .await
        .unwrap();
    assert_eq!(http_common::answer(response).await.0, 400);
}

#[tokio::test]
async fn health_readiness_the_document_and_its_page_are_served() {
    let server = HttpServer::start().await;
    let (status, body) = http_common::answer(server.get("/healthz").await).await;
    assert_eq!((status, body), (200, json!({ "status": "ok" })));
    let (status, body) = http_common::answer(server.get("/readyz").await).await;
    assert_eq!((status, body), (200, json!({ "status": "ready" })));

    let (status, doc) = http_common::answer(server.get("/openapi.json").await).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/reports",
        "/v1/reports/bulk",
        "/v1/tokens",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    let cf = &doc["components"]["schemas"]["ReportCF"];
    assert_eq!(cf["properties"]["cause"]["maximum"], 999);
    assert_eq!(
        doc["security"],
        json!([{}]),
        "no users: no credentials needed"
    );

    let page = server.get("/docs").await;
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/openapi.json") && html.contains("id=\"ec-813\""));
    assert!(
        !html.contains("https://"),
        "nothing is fetched from elsewhere"
    );
}

#[test]
fn serve_prints_the_http_address_and_serves_metrics_there() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let addr = server.http.expect("http= on the ready line");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = http_common::client();
        let cf = r#"{"type":"CF","campaign":"c","session":"1","cause":2}"#;
        let response = client
            .post(format!("http://{addr}/v1/reports"))
            .header("content-type", "application/json")
            .body(cf)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let metrics = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert!(metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let text = metrics.text().await.unwrap();
        assert!(
            text.contains("\nozbus_outcomes_committed_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ozbus_http_requests_total{route=\"/v1/reports\",status=\"200\"} 1"),
            "{text}"
        );
    });
}

#[tokio::test]
async fn the_http_listener_can_be_off() {
    let server = server_common::TestServer::start_with(|config| config.http.listen = None).await;
    assert_eq!(server.server.http_addr(), None);
}

/// A bulk body of five CF reports, sessions `<name>1`..`<name>5`, padded with blank lines
/// (skipped) to `bytes` bytes.
fn padded_bulk(name: &str, bytes: usize) -> Vec<u8> {
    let mut body = String::new();
    for i in 1..=5 {
        body.push_str(&format!(
            "{{\"type\":\"CF\",\"campaign\":\"budget\",\"session\":\"{name}{i}\",\"cause\":2}}\n"
        ));
    }
    let mut body = body.into_bytes();
    body.resize(bytes, b'\n');
    body
}

/// The status line's code and the body of a whole HTTP/1.1 answer read until the server closed
/// (the requests say `connection: close`; ozbus answers with a Content-Length).
fn parse_answer(raw: &[u8]) -> (u16, Vec<Value>) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let lines = body
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (status, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_bodies_are_held_from_the_memory_budget_and_refused_when_it_has_no_room() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const KIB: usize = 1024;
    let server = HttpServer::start_with(|config| {
        config.limits.memory_budget = 1024 * KIB as u64;
    })
    .await;
    let mut sdmp = Client::connect(server.server.addr_8bit(), WireForm::Bits8).await;
    sdmp.send(r"EO\TXall\CNbudget\FO\TKeo").await;
    sdmp.expect(&[r"MV\TKeo"]).await;
    let head = |extra: &str| {
        format!(
            "POST /v1/reports/bulk HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n{extra}\r\n",
            server.http_addr()
        )
    };

    // Two requests hold 1,000 KiB of the 1,024 while their bodies are not yet complete: one
    // chunked (held as its parts arrive: 600 KiB, all but the last, empty, chunk), one with a
    // Content-Length (400 KiB held as declared, before anything is read; all but one byte sent).
    let a_body = padded_bulk("a", 600 * KIB);
    let mut a = TcpStream::connect(server.http_addr()).await.unwrap();
    a.write_all(head("transfer-encoding: chunked\r\n").as_bytes())
        .await
        .unwrap();
    a.write_all(format!("{:x}\r\n", a_body.len()).as_bytes())
        .await
        .unwrap();
    a.write_all(&a_body).await.unwrap();
    a.write_all(b"\r\n").await.unwrap();
    let b_body = padded_bulk("b", 400 * KIB);
    let mut b = TcpStream::connect(server.http_addr()).await.unwrap();
    b.write_all(head(&format!("content-length: {}\r\n", b_body.len())).as_bytes())
        .await
        .unwrap();
    b.write_all(&b_body[..b_body.len() - 1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Two more of 400 KiB find no room: refused with EC 814 (429, retry after a second), their
    // bodies read to the end so that the client gets the answer.
    let post = |body: Vec<u8>| {
        server
            .client
            .post(server.url("/v1/reports/bulk"))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
    };
    let (c, d) = tokio::join!(
        post(padded_bulk("c", 400 * KIB)),
        post(padded_bulk("d", 400 * KIB))
    );
    for response in [c.unwrap(), d.unwrap()] {
        assert_eq!(response.headers()["retry-after"], "1");
        let (status, problem) = http_common::answer(response).await;
        assert_eq!(
            (status, &problem["ec"], &problem["retry_after"]),
            (429, &json!(814), &json!(1)),
            "{problem}"
        );
        assert_eq!(problem["type"], "/docs#ec-814");
        assert!(
            problem["reason"]
                .as_str()
                .unwrap()
                .contains("memory budget"),
            "{problem}"
        );
    }
    // A small report still fits in what is left.
    let (status, _) = server
        .report(r#"{"type":"CF","campaign":"budget","session":"small","cause":2}"#)
        .await;
    assert_eq!(status, 200);

    // The two held requests complete and are taken whole.
    a.write_all(b"0\r\n\r\n").await.unwrap();
    b.write_all(&b_body[b_body.len() - 1..]).await.unwrap();
    for mut held in [a, b] {
        let mut raw = Vec::new();
        tokio::time::timeout(http_common::PATIENCE, held.read_to_end(&mut raw))
            .await
            .expect("answered")
            .unwrap();
        let (status, lines) = parse_answer(&raw);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
        assert_eq!(lines.len(), 5);
        assert!(lines.iter().all(|l| l["status"] == 200), "{lines:?}");
    }

    // Released: the next large request is taken.
    let (status, lines) = server
        .bulk(std::str::from_utf8(&padded_bulk("e", 400 * KIB)).unwrap())
        .await;
    assert_eq!(status, 200);
    assert!(lines.iter().all(|l| l["status"] == 200), "{lines:?}");

    // What was taken is exactly the accepted requests' reports: none of the refused ones.
    let mut sessions = Vec::new();
    for _ in 0..16 {
        let frame = sdmp.recv().await;
        let si = frame
            .split('\\')
            .find_map(|p| p.strip_prefix("SI"))
            .unwrap();
        sessions.push(si.to_owned());
    }
    sdmp.expect_silence(Duration::from_millis(500)).await;
    sessions.sort();
    let mut expected: Vec<String> = ["a", "b", "e"]
        .iter()
        .flat_map(|name| (1..=5).map(move |i| format!("{name}{i}")))
        .chain(["small".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(sessions, expected);
}

/// A request body that does not arrive within the frame timeout is refused with 408 and
/// holds nothing after: the budget it took is free again, and nothing of it is taken.
#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_refused_and_frees_its_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const KIB: usize = 1024;
    let server = HttpServer::start_with(|config| {
        config.limits.memory_budget = 1024 * KIB as u64;
        config.limits.frame_timeout = Duration::from_millis(500);
    })
    .await;
    let mut sdmp = Client::connect(server.server.addr_8bit(), WireForm::Bits8).await;
    sdmp.send(r"EO\TXall\CNbudget\FO\TKeo").await;
    sdmp.expect(&[r"MV\TKeo"]).await;
    // 900 KiB declared, all but one byte sent, then nothing: held as declared, until the
    // deadline.
    let body = padded_bulk("slow", 900 * KIB);
    let mut slow = TcpStream::connect(server.http_addr()).await.unwrap();
    slow.write_all(
        format!(
            "POST /v1/reports/bulk HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
            server.http_addr(),
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    slow.write_all(&body[..body.len() - 1]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer))
        .await
        .expect("answered and closed within the deadline and then some")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("frame_timeout"), "{answer}");
    // Its 900 KiB are free again: a body of the same size is taken.
    let next = String::from_utf8(padded_bulk("next", 900 * KIB)).unwrap();
    let (status, lines) = server.bulk(&next).await;
    assert_eq!(status, 200, "{lines:?}");
    let frame = sdmp.recv().await;
    assert!(frame.contains(r"\SInext"), "{frame}");
}
