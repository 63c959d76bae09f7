//! Streams of outcomes over HTTP (Server-Sent Events and WebSocket) against a real server:
//! what an event says, resuming with Last-Event-ID and after acknowledgements, one transaction
//! shared with SDMP under one PersistToken (takeover both ways), every refusal, the end of a
//! stream, keep-alives and a client that stops reading.

mod http_common;
mod server_common;
mod users_common;

use std::time::Duration;

use http_common::{timeless, HttpServer};
use ozbus::core::auth::pg;
use sdmp::WireForm;
use serde_json::{json, Value};
use server_common::Client;
use tokio_tungstenite::tungstenite::Message;
use users_common::{user, PASSWORD};

async fn sdmp(server: &HttpServer) -> Client {
    Client::connect(server.server.addr_8bit(), WireForm::Bits8).await
}

/// Reports a failed call over SDMP and waits for its MV.
async fn fail_call(client: &mut Client, si: u32) {
    client.send(&format!(r"CF\CNc\SI{si}\CA2\TKf{si}")).await;
    client.expect(&[&format!(r"MV\TKf{si}")]).await;
}

/// The transactions list, as JSON.
async fn transactions(server: &HttpServer) -> Value {
    let response = server.get("/v1/transactions").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn find<'a>(list: &'a Value, tx: &str) -> Option<&'a Value> {
    list["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["transaction"] == tx)
}

#[tokio::test]
async fn an_sse_stream_receives_what_sdmp_reports_as_json() {
    let server = HttpServer::start().await;
    let mut stream = server.sse("transaction=s1").await;
    let opened = stream.next().await;
    assert_eq!(
        (opened.event.as_str(), &opened.data),
        ("open", &json!({ "transaction": "s1" }))
    );
    let mut client = sdmp(&server).await;
    client
        .send(r#"MC\CNSales1\TN0123\ASapp\DTlead 7, "hot"\TKm"#)
        .await;
    client.send(r"LC\CNSales1\TN0123\ANJoe\TKl").await;
    client.send(r"TC\ANJoe\AO167\COyes\TKt").await;
    client.send(r"CF\CNSales1\SI42\CA2\TDacme\TKc").await;
    client
        .expect(&[r"MV\TKm", r"MV\TKl", r"MV\TKt", r"MV\TKc"])
        .await;

    let first = stream.outcome().await;
    assert_eq!(
        timeless(first.clone()),
        json!({
            "seq": 1, "campaign": "Sales1", "agent": "Joe", "session": "0123", "reason": 10,
            "outcome": 167, "app_data": "app", "conversion": "yes", "data": "lead 7, \"hot\""
        })
    );
    let second = stream.outcome().await;
    assert_eq!(
        timeless(second),
        json!({ "seq": 2, "tenant": "acme", "campaign": "Sales1", "session": "42", "reason": 2, "data": "" })
    );
    // The same outcome in the history: the same JSON, with its class.
    let page: Value = server.get("/v1/outcomes").await.json().await.unwrap();
    let mut from_log = page["outcomes"][0].clone();
    assert_eq!(from_log["class"], "success");
    from_log.as_object_mut().unwrap().remove("class");
    assert_eq!(from_log, first);

    // Listed as an HTTP stream's transaction.
    let list = transactions(&server).await;
    let s1 = find(&list, "s1").expect("listed");
    assert_eq!(s1["holder"]["front_end"], "http");
    assert_eq!(
        (&s1["state"], &s1["persisted"]),
        (&json!("held"), &json!(false))
    );
}

#[tokio::test]
async fn last_event_id_resumes_after_that_event_and_acknowledges_it_when_persisted() {
    let server = HttpServer::start().await;
    let mut client = sdmp(&server).await;
    let mut stream = server.sse("persist=p&classes=failure").await;
    assert_eq!(stream.next().await.data["transaction"], "http-p");
    for si in 1..=3 {
        fail_call(&mut client, si).await;
    }
    for seq in 1..=3 {
        assert_eq!(stream.outcome().await["seq"], seq);
    }
    drop(stream);
    fail_call(&mut client, 4).await;
    // Nothing acknowledged yet: the cursor is where the stream began.
    let list = transactions(&server).await;
    assert_eq!(find(&list, "http-p").unwrap()["acknowledged"], 0);

    // A browser reconnects with the id of the last event it processed: 2.
    let mut stream = server
        .sse_with("persist=p&classes=failure&resume_after=0", |r| {
            r.header("last-event-id", "2")
        })
        .await
        .unwrap();
    assert_eq!(stream.next().await.event, "open");
    assert_eq!(stream.outcome().await["seq"], 3);
    assert_eq!(stream.outcome().await["seq"], 4);
    let list = transactions(&server).await;
    let p = find(&list, "http-p").unwrap();
    assert_eq!(
        (&p["acknowledged"], &p["persist"]),
        (&json!(2), &json!("p"))
    );

    // Without PS, Last-Event-ID replays what the log holds after it.
    let mut replay = server
        .sse_with("classes=failure", |r| r.header("last-event-id", "3"))
        .await
        .unwrap();
    replay.next().await;
    assert_eq!(replay.outcome().await["seq"], 4);
}

#[tokio::test]
async fn a_websocket_acknowledges_and_a_reconnect_resumes_after_the_acknowledgement() {
    let server = HttpServer::start().await;
    let mut client = sdmp(&server).await;
    let mut ws = server.ws("persist=w&transaction=crm").await;
    assert_eq!(
        ws.next().await,
        json!({ "opened": { "transaction": "crm", "persist": "w" } })
    );
    for si in 1..=3 {
        fail_call(&mut client, si).await;
    }
    for seq in 1..=3 {
        let outcome = ws.next().await;
        assert_eq!(
            (&outcome["seq"], &outcome["session"]),
            (&json!(seq), &json!(seq.to_string()))
        );
    }
    // A durable acknowledgement is answered once it is stored; a lazy one is not answered.
    ws.send(json!({ "ack": 1 })).await;
    ws.send(json!({ "ack": 2, "durable": true })).await;
    assert_eq!(ws.next().await, json!({ "acked": 2 }));
    // A message ozbus does not know is refused, and the stream goes on.
    ws.send(json!({ "nack": 2 })).await;
    assert_eq!(ws.next().await["error"]["ec"], 800);
    drop(ws);
    fail_call(&mut client, 4).await;

    let mut ws = server.ws("persist=w&transaction=crm").await;
    ws.next().await;
    assert_eq!(ws.next().await["seq"], 3);
    assert_eq!(ws.next().await["seq"], 4);
    // The client ends it (EE): the persisted transaction is forgotten.
    ws.send(json!({ "end": true })).await;
    assert_eq!(
        ws.next().await,
        json!({ "ended": { "transaction": "crm", "reason": "end" } })
    );
    assert!(matches!(ws.message().await, Message::Close(Some(frame)) if frame.code == 1000.into()));
    assert!(find(&transactions(&server).await, "crm").is_none());
}

#[tokio::test]
async fn a_websocket_message_larger_than_an_acknowledgement_needs_closes_the_connection() {
    use futures::{SinkExt, StreamExt};

    let server = HttpServer::start().await;
    let mut ws = server.ws("transaction=big").await;
    assert_eq!(ws.next().await["opened"]["transaction"], "big");
    // 64 KiB is the most: a message of 100 KiB is not buffered, the connection ends.
    let padding = " ".repeat(100 << 10);
    ws.socket
        .send(Message::text(format!("{{\"ack\": 1{padding}}}")))
        .await
        .unwrap();
    let ended = tokio::time::timeout(http_common::PATIENCE, async {
        loop {
            match ws.socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open");
    // The server serves the next stream.
    let mut ws = server.ws("transaction=next").await;
    assert_eq!(ws.next().await["opened"]["transaction"], "next");
}

#[tokio::test]
async fn an_http_stream_and_an_sdmp_eo_with_one_persist_token_are_one_transaction() {
    let server = HttpServer::start().await;
    let mut producer = sdmp(&server).await;
    let mut crm = sdmp(&server).await;
    crm.send(r"EO\TXcrm\FO\PSshared\XS\TKeo").await;
    crm.expect(&[r"MV\TKeo"]).await;
    for si in 1..=3 {
        fail_call(&mut producer, si).await;
    }
    for seq in 1..=3 {
        let oz = crm.recv().await;
        assert!(oz.starts_with(r"OZ\TXcrm\CNc"), "{oz}");
        assert!(oz.contains(&format!(r"\XS{seq}\")), "{oz}");
    }
    crm.send(r"XA\TXcrm\XS2\TKa").await;
    crm.expect(&[r"MV\TKa"]).await;

    // The WebSocket takes it over: the SDMP connection gets EF, the stream resumes after 2.
    let mut ws = server.ws("persist=shared&classes=failure").await;
    assert_eq!(ws.next().await["opened"]["transaction"], "http-shared");
    crm.expect(&[r"EF\TXcrm"]).await;
    assert_eq!(ws.next().await["seq"], 3);
    fail_call(&mut producer, 4).await;
    assert_eq!(ws.next().await["seq"], 4);
    let list = transactions(&server).await;
    let shared = find(&list, "http-shared").expect("listed under its new TX");
    assert_eq!(shared["holder"]["front_end"], "http");
    ws.send(json!({ "ack": 3, "durable": true })).await;
    assert_eq!(ws.next().await, json!({ "acked": 3 }));

    // SDMP takes it back: the stream ends as EF does, SDMP resumes after the stream's ack.
    crm.send(r"EO\TXcrm\FO\PSshared\XS\TKeo2").await;
    // OZ are events: they need not wait behind the MV.
    let mut frames = [crm.recv().await, crm.recv().await];
    frames.sort();
    assert_eq!(frames[0], r"MV\TKeo2");
    assert!(frames[1].contains(r"\XS4\"), "{frames:?}");
    assert_eq!(
        ws.next().await,
        json!({ "ended": { "transaction": "http-shared", "reason": "ended" } })
    );
    assert!(matches!(ws.message().await, Message::Close(Some(frame)) if frame.code == 1000.into()));

    // An SSE stream takes it over in turn, from the cursor SDMP acknowledged.
    crm.send(r"XA\TXcrm\XS4\TKa2").await;
    crm.expect(&[r"MV\TKa2"]).await;
    fail_call(&mut producer, 5).await;
    let oz = crm.recv().await;
    assert!(oz.contains(r"\XS5\"), "{oz}");
    let mut sse = server.sse("persist=shared&classes=failure").await;
    crm.expect(&[r"EF\TXcrm"]).await;
    sse.next().await;
    assert_eq!(sse.outcome().await["seq"], 5);
    // ... and loses it to SDMP again: an `end` event, then the response ends.
    crm.send(r"EO\TXcrm\FO\PSshared\XS\TKeo3").await;
    // An SSE stream acknowledges only with Last-Event-ID when it reconnects: 5 comes again.
    let mut frames = [crm.recv().await, crm.recv().await];
    frames.sort();
    assert_eq!(frames[0], r"MV\TKeo3");
    assert!(frames[1].contains(r"\XS5\"), "{frames:?}");
    let end = sse.next().await;
    assert_eq!(
        (end.event.as_str(), &end.data),
        (
            "end",
            &json!({ "transaction": "http-shared", "reason": "ended" })
        )
    );
    sse.expect_end().await;
}

#[tokio::test]
async fn a_stream_is_refused_as_its_eo_would_be() {
    let server = HttpServer::start_with(|config| config.limits.persisted_per_tenant = 1).await;
    let refused = |query: &'static str| {
        let server = &server;
        async move {
            match server.sse_with(query, |r| r).await {
                Ok(_) => panic!("{query}: accepted"),
                Err((status, body)) => (status, body["ec"].as_u64().unwrap_or(0)),
            }
        }
    };
    assert_eq!(refused("colour=red").await, (400, 801));
    assert_eq!(refused("classes=gold").await, (400, 801));
    assert_eq!(refused("campaign=a&campaign=b").await, (400, 802));
    assert_eq!(refused("campaign=").await, (400, 804));
    assert_eq!(refused("rate=fast").await, (400, 805));
    assert_eq!(refused("rate=0").await, (400, 805));
    assert_eq!(refused("campaign=a%5Cb").await, (400, 806));
    assert_eq!(refused("campaign=a%2Fb").await, (400, 806));
    assert_eq!(refused("sequenced=maybe").await, (400, 807));
    assert_eq!(refused("classes=").await, (400, 808));
    let (status, body) = match server
        .sse_with("", |r| r.header("last-event-id", "seven"))
        .await
    {
        Err(refusal) => refusal,
        Ok(_) => panic!("accepted"),
    };
    assert_eq!((status, &body["ec"]), (400, &json!(805)), "{body}");

    // A TX an SDMP connection holds: 809.
    let mut client = sdmp(&server).await;
    client.send(r"EO\TXtaken\SO\TKe").await;
    client.expect(&[r"MV\TKe"]).await;
    assert_eq!(refused("transaction=taken").await, (409, 809));
    // One persisted transaction per tenant here: a second is 814.
    let _first = server.sse("persist=one").await;
    assert_eq!(refused("persist=two").await, (429, 814));

    // Not a WebSocket upgrade: 426.
    let response = server.get("/v1/ws").await;
    assert_eq!(response.status(), 426);
    // The WebSocket is refused before the upgrade, with the same statuses.
    assert_eq!(
        server.ws_with("transaction=taken", None).await.err(),
        Some(409)
    );
    assert_eq!(server.ws_with("classes=gold", None).await.err(), Some(400));
}

#[tokio::test]
async fn a_stream_needs_a_supervisor_of_its_tenant() {
    let server = HttpServer::start_with(|config| {
        config.users = vec![
            user("acme", "crm", pg::SUPERVISOR),
            user("acme", "joe", pg::AGENT),
            user("other", "crm", pg::SUPERVISOR),
        ];
    })
    .await;
    let status = |result: Result<http_common::Sse, (u16, Value)>| match result {
        Ok(_) => (200, 0),
        Err((status, body)) => (status, body["ec"].as_u64().unwrap()),
    };
    assert_eq!(status(server.sse_with("", |r| r).await), (401, 811));
    assert_eq!(
        status(
            server
                .sse_with("", |r| r.basic_auth("joe@acme", Some(PASSWORD)))
                .await
        ),
        (403, 811)
    );
    assert_eq!(
        status(
            server
                .sse_with("tenant=other", |r| r.basic_auth("crm@acme", Some(PASSWORD)))
                .await
        ),
        (403, 811)
    );
    assert_eq!(
        status(
            server
                .sse_with("", |r| r.basic_auth("crm@acme", Some("wrong")))
                .await
        ),
        (401, 811)
    );
    assert_eq!(server.ws_with("", None).await.err(), Some(401));
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("crm@acme:{PASSWORD}"))
    );
    let mut ws = server.ws_with("persist=p", Some(&basic)).await.unwrap();
    assert_eq!(ws.next().await["opened"]["persist"], "p");

    // The stream sees its tenant only; the same PS in another tenant is another transaction.
    let mut acme = server
        .sse_with("persist=p", |r| r.basic_auth("crm@acme", Some(PASSWORD)))
        .await
        .unwrap();
    let mut other = server
        .sse_with("persist=p", |r| r.basic_auth("crm@other", Some(PASSWORD)))
        .await
        .unwrap();
    // acme's stream took over from acme's WebSocket, and from nobody else.
    assert_eq!(
        ws.next().await,
        json!({ "ended": { "transaction": "http-p", "reason": "ended" } })
    );
    acme.next().await;
    other.next().await;
    let list: Value = server
        .client
        .get(server.url("/v1/transactions"))
        .basic_auth("crm@other", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tenants: Vec<&Value> = list["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["tenant"])
        .collect();
    assert_eq!(tenants, [&json!("other")], "{list}");
}

#[tokio::test]
async fn deleting_a_transaction_ends_its_stream() {
    let server = HttpServer::start().await;
    let mut stream = server.sse("transaction=gone&persist=g").await;
    stream.next().await;
    let response = server
        .client
        .delete(server.url("/v1/transactions/gone"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let end = stream.next().await;
    assert_eq!(
        (end.event.as_str(), &end.data),
        ("end", &json!({ "transaction": "gone", "reason": "ended" }))
    );
    stream.expect_end().await;
    // Forgotten, persisted or not.
    assert!(find(&transactions(&server).await, "gone").is_none());
    let response = server
        .client
        .delete(server.url("/v1/transactions/gone"))
        .send()
        .await
        .unwrap();
    let (status, body) = http_common::answer(response).await;
    assert_eq!((status, &body["ec"]), (404, &json!(810)));
}

#[tokio::test]
async fn idle_streams_get_keep_alives() {
    let server =
        HttpServer::start_with(|config| config.http.stream_keepalive = Duration::from_millis(200))
            .await;
    let mut stream = server.sse("").await;
    assert_eq!(
        stream.next_block().await.unwrap().split('\n').next(),
        Some("event: open")
    );
    assert_eq!(stream.next_block().await.unwrap(), ": keep-alive");
    let mut ws = server.ws("").await;
    ws.next().await;
    use futures::StreamExt;
    let message = tokio::time::timeout(Duration::from_secs(5), ws.socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(message, Message::Ping(_)), "{message:?}");
}

#[tokio::test]
async fn a_stream_that_stops_reading_is_paused_then_closed_and_its_transaction_kept() {
    use tokio::io::AsyncWriteExt;
    let server = HttpServer::start_with(|config| {
        config.server.stall_timeout = Duration::from_secs(1);
    })
    .await;
    // A client that sends its request, then never reads: a small receive buffer fills fast.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut silent = socket.connect(server.http_addr()).await.unwrap();
    silent
        .write_all(b"GET /v1/stream?transaction=silent&persist=s HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut producer = sdmp(&server).await;
    let data = "x".repeat(60_000);
    for si in 0..200 {
        producer
            .send(&format!(r"MC\CNc\SI{si}\DT{data}\TKm{si}"))
            .await;
        producer.send(&format!(r"CF\CNc\SI{si}\CA2\TKc{si}")).await;
    }
    for _ in 0..400 {
        let reply = producer.recv().await;
        assert!(reply.starts_with("MV"), "{reply}");
    }
    // The stream's delivery is paused far behind the log end, then the connection is closed
    // for the stall timeout and the persisted transaction released.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = transactions(&server).await;
        let silent = find(&list, "silent").expect("kept");
        if silent["state"] == "released" {
            assert!(silent["backlog"].as_u64().unwrap() > 100, "{silent}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not closed: {silent}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Other streams never noticed.
    let mut stream = server.sse("classes=failure").await;
    stream.next().await;
    fail_call(&mut producer, 1000).await;
    assert_eq!(stream.outcome().await["session"], "1000");
    drop(silent);
}
