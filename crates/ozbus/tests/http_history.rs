//! History and operations over HTTP against a real server: pages of outcomes by every filter,
//! stable while outcomes are appended, as JSON and CSV; a call with its corrections; tenant
//! isolation; the transactions list; the new metrics.

mod http_common;
mod server_common;
mod users_common;

use std::collections::BTreeSet;
use std::time::Duration;

use http_common::{answer, timeless, HttpServer};
use ozbus::core::auth::pg;
use sdmp::WireForm;
use serde_json::{json, Value};
use server_common::Client;
use users_common::{user, PASSWORD};

async fn sdmp(server: &HttpServer) -> Client {
    Client::connect(server.server.addr_8bit(), WireForm::Bits8).await
}

/// Sends frames, each with a TK, and waits for every MV.
async fn send_all(client: &mut Client, frames: &[&str]) {
    for (i, frame) in frames.iter().enumerate() {
        client.send(&format!(r"{frame}\TKh{i}")).await;
    }
    for i in 0..frames.len() {
        assert_eq!(client.recv().await, format!(r"MV\TKh{i}"));
    }
}

async fn get_json(server: &HttpServer, path: &str) -> (u16, Value) {
    answer(server.get(path).await).await
}

fn seqs(page: &Value) -> Vec<u64> {
    page["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn pages_are_stable_while_outcomes_are_appended() {
    let server = HttpServer::start().await;
    let mut producer = sdmp(&server).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Campaigns A and B, appended as fast as they commit while the reader pages.
    let appender = tokio::spawn(async move {
        let mut stop = stopped;
        let mut n = 0u32;
        loop {
            let campaign = if n.is_multiple_of(3) { "B" } else { "A" };
            let frames: Vec<String> = (n..n + 20)
                .map(|i| format!(r"CF\CN{campaign}\SI{i}\CA2"))
                .collect();
            let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
            send_all(&mut producer, &frames).await;
            n += 20;
            if stop.try_recv().is_ok() {
                return n;
            }
        }
    });
    let (mut all, mut only_a) = (Vec::new(), Vec::new());
    let (mut after_all, mut after_a) = (0u64, 0u64);
    let mut pages = 0;
    let mut stop = Some(stop);
    loop {
        let (status, page) =
            get_json(&server, &format!("/v1/outcomes?limit=7&after={after_all}")).await;
        assert_eq!(status, 200, "{page}");
        all.extend(seqs(&page));
        after_all = page["next"].as_u64().unwrap();
        let (status, page) = get_json(
            &server,
            &format!("/v1/outcomes?limit=5&campaign=A&after={after_a}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        for outcome in page["outcomes"].as_array().unwrap() {
            assert_eq!(outcome["campaign"], "A");
        }
        only_a.extend(seqs(&page));
        after_a = page["next"].as_u64().unwrap();
        pages += 1;
        if pages == 40 {
            stop.take().unwrap().send(()).unwrap();
        }
        if pages > 40 && page["more"] == false {
            break;
        }
    }
    let appended = appender.await.unwrap();
    // Caught up with what was appended after the reader's last page: read on to the end.
    loop {
        let (_, page) = get_json(
            &server,
            &format!("/v1/outcomes?limit=100&after={after_all}"),
        )
        .await;
        all.extend(seqs(&page));
        after_all = page["next"].as_u64().unwrap();
        let (_, a) = get_json(
            &server,
            &format!("/v1/outcomes?limit=100&campaign=A&after={after_a}"),
        )
        .await;
        only_a.extend(seqs(&a));
        after_a = a["next"].as_u64().unwrap();
        if page["more"] == false && a["more"] == false {
            break;
        }
    }
    // Every outcome exactly once, in order.
    assert_eq!(all, (1..=u64::from(appended)).collect::<Vec<_>>());
    let mut a_seqs = Vec::new();
    let mut after = 0;
    loop {
        let (_, page) = get_json(&server, &format!("/v1/outcomes?limit=1000&after={after}")).await;
        a_seqs.extend(
            page["outcomes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o["campaign"] == "A")
                .map(|o| o["seq"].as_u64().unwrap()),
        );
        after = page["next"].as_u64().unwrap();
        if page["more"] == false {
            break;
        }
    }
    assert_eq!(only_a, a_seqs);
}

#[tokio::test]
async fn every_filter_narrows_the_page() {
    let server = HttpServer::start().await;
    let mut client = sdmp(&server).await;
    send_all(
        &mut client,
        &[
            r"MC\CNSales\TN0123",
            r"LC\CNSales\TN0123\ANJoe",
            r"TC\ANJoe\AO167",                    // 1: success, Joe, number as SI
            r"CF\CNSales\SI9\TN0456\CA2",         // 2: failure, number as TN
            r"UO\TXfix\CNSales\SI0123\AO105\DTx", // 3: management, Joe
            r"CF\CNSupport\SI1\CA3\TDacme",       // 4: another tenant, campaign
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    send_all(&mut client, &[r"CF\CNSales\SI10\CA2"]).await; // 5
    for (query, want) in [
        ("", vec![1, 2, 3, 4, 5]),
        ("classes=success,management", vec![1, 3]),
        ("classes=failure", vec![2, 4, 5]),
        ("campaign=Sales", vec![1, 2, 3, 5]),
        ("agent=Joe", vec![1, 3]),
        ("number=0123", vec![1, 3]),
        ("number=0456", vec![2]),
        ("tenant=acme", vec![4]),
        ("tenant=default&campaign=Support", vec![]),
        ("after=1&before=4", vec![2, 3]),
        ("limit=2", vec![1, 2]),
        ("limit=2&after=2", vec![3, 4]),
    ] {
        let (status, page) = get_json(&server, &format!("/v1/outcomes?{query}")).await;
        assert_eq!(status, 200, "{query}: {page}");
        assert_eq!(seqs(&page), want, "{query}: {page}");
    }
    let (_, page) = get_json(&server, &format!("/v1/outcomes?from={later}")).await;
    assert_eq!(seqs(&page), vec![5]);
    let (_, page) = get_json(&server, &format!("/v1/outcomes?to={later}")).await;
    assert_eq!(seqs(&page), vec![1, 2, 3, 4]);
    let (_, page) = get_json(&server, "/v1/outcomes?from=2000-01-01T00:00:00%2B05:00").await;
    assert_eq!(seqs(&page), vec![1, 2, 3, 4, 5]);
    // The page and its cursor.
    let (_, page) = get_json(&server, "/v1/outcomes?limit=2").await;
    assert_eq!((&page["next"], &page["more"]), (&json!(2), &json!(true)));
    let (_, page) = get_json(&server, "/v1/outcomes?after=2").await;
    assert_eq!((&page["next"], &page["more"]), (&json!(5), &json!(false)));
    let response = server.get("/v1/outcomes?limit=2&campaign=Sales").await;
    assert_eq!(
        response.headers()["link"],
        "</v1/outcomes?limit=2&campaign=Sales&after=2>; rel=\"next\""
    );
    assert_eq!(response.headers()["ozbus-next"], "2");
    // The outcome as JSON: the class beside the OZ's parameters.
    let (_, page) = get_json(&server, "/v1/outcomes?after=2&limit=1").await;
    assert_eq!(
        timeless(page["outcomes"][0].clone()),
        json!({
            "seq": 3, "class": "management", "campaign": "Sales", "agent": "Joe",
            "session": "0123", "reason": 10, "outcome": 105, "data": "x"
        })
    );
}

#[tokio::test]
async fn what_a_page_cannot_read_is_refused_with_its_ec() {
    let server = HttpServer::start().await;
    for (query, status, ec) in [
        ("colour=red", 400, 801),
        ("format=xml", 400, 801),
        ("classes=gold", 400, 801),
        ("limit=1&limit=2", 400, 802),
        ("campaign=", 400, 804),
        ("number=", 400, 804),
        ("limit=0", 400, 805),
        ("limit=1001", 400, 805),
        ("after=-1", 400, 805),
        ("after=9223372036854775808", 400, 805),
        ("from=yesterday", 400, 805),
        ("from=2026-02-30T00:00:00Z", 400, 805),
        ("campaign=a%2Fb", 400, 806),
        ("tenant=a%20b", 400, 806),
        ("classes=", 400, 808),
    ] {
        let (got, body) = get_json(&server, &format!("/v1/outcomes?{query}")).await;
        assert_eq!(
            (got, body["ec"].as_u64()),
            (status, Some(ec)),
            "{query}: {body}"
        );
    }
    let (status, body) = get_json(&server, "/v1/calls/Sales/nobody").await;
    assert_eq!((status, &body["ec"]), (404, &json!(411)));
    let (status, body) = get_json(&server, "/v1/calls/Sa%2Fles/1").await;
    assert_eq!((status, &body["ec"]), (400, &json!(806)));
    let (status, body) = get_json(&server, "/v1/calls/Sales/1?colour=red").await;
    assert_eq!((status, &body["ec"]), (400, &json!(801)));
}

#[tokio::test]
async fn csv_has_a_header_and_one_escaped_row_per_outcome() {
    let server = HttpServer::start().await;
    let mut client = sdmp(&server).await;
    send_all(
        &mut client,
        &[
            r#"MC\CNSales\SI1\TN+4930123\DTsaid "yes", then hung up"#,
            r"CF\CNSales\SI1\CA2",
            r"MC\CNSales\SI2\DT=HYPERLINK(x)\TDacme",
            r"CF\CNSales\SI2\CA3\TDacme",
        ],
    )
    .await;
    for response in [
        server.get("/v1/outcomes?format=csv").await,
        server
            .client
            .get(server.url("/v1/outcomes"))
            .header("accept", "text/csv, application/json;q=0.5")
            .send()
            .await
            .unwrap(),
    ] {
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/csv; charset=utf-8"
        );
        let body = response.text().await.unwrap();
        let lines: Vec<&str> = body.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "seq,time,class,tenant,campaign,agent,session,number,reason,outcome,dont_dial,app_data,conversion,ringback_agent,ringback_number,ringback_timer,data"
        );
        let row = |line: &str| {
            // The time column (the second) is the commit's.
            let (seq, rest) = line.split_once(',').unwrap();
            let (time, rest) = rest.split_once(',').unwrap();
            assert_eq!(time.len(), 24, "{time}");
            format!("{seq},{rest}")
        };
        assert_eq!(
            row(lines[1]),
            "1,failure,default,Sales,,1,\"'+4930123\",2,,false,,,,,,\"said \"\"yes\"\", then hung up\""
        );
        assert_eq!(
            row(lines[2]),
            "2,failure,acme,Sales,,2,,3,,false,,,,,,\"'=HYPERLINK(x)\""
        );
        assert_eq!(lines[3], "");
        assert_eq!(lines.len(), 4);
    }
    // JSON by default, and when Accept names it first.
    let response = server
        .client
        .get(server.url("/v1/outcomes"))
        .header("accept", "application/json, text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
}

#[tokio::test]
async fn a_call_shows_its_record_and_its_outcomes_with_their_corrections() {
    let server = HttpServer::start().await;
    let mut client = sdmp(&server).await;
    send_all(
        &mut client,
        &[
            r"MC\CNSales\SI42\TN0123\ASapp\DTlead",
            r"LC\CNSales\SI42\ANJoe",
        ],
    )
    .await;
    let (status, call) = get_json(&server, "/v1/calls/Sales/42").await;
    assert_eq!(status, 200, "{call}");
    let record = &call["record"];
    assert_eq!(
        (
            &record["state"],
            &record["agent"],
            &record["number"],
            &record["data"]
        ),
        (
            &json!("connected"),
            &json!("Joe"),
            &json!("0123"),
            &json!("lead")
        )
    );
    assert_eq!(call["outcomes"], json!([]));
    // Another campaign's call with that SI is another call.
    let (status, _) = get_json(&server, "/v1/calls/Other/42").await;
    assert_eq!(status, 404);

    send_all(
        &mut client,
        &[
            r"TC\ANJoe\AO167\DTsold",
            r"UO\TXfix1\CNSales\SI42\AO105\DTnot sold",
            r"UO\TXfix2\CNSales\TN0123\RE5\DTvoicemail",
            r"MC\CNSales\SI42\DTsecond try",
            r"CF\CNSales\SI42\CA3",
        ],
    )
    .await;
    let (status, call) = get_json(&server, "/v1/calls/Sales/42").await;
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["record"], Value::Null);
    let outcomes = call["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{call}");
    let first = &outcomes[0];
    assert_eq!(
        (
            &first["seq"],
            &first["class"],
            &first["outcome"],
            &first["data"]
        ),
        (&json!(1), &json!("success"), &json!(167), &json!("sold"))
    );
    let corrections: Vec<(u64, &Value, &Value)> = first["corrections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["seq"].as_u64().unwrap(), &c["reason"], &c["data"]))
        .collect();
    assert_eq!(
        corrections,
        vec![
            (2, &json!(10), &json!("not sold")),
            (3, &json!(5), &json!("voicemail"))
        ]
    );
    assert_eq!(
        (
            &outcomes[1]["seq"],
            &outcomes[1]["reason"],
            &outcomes[1]["corrections"]
        ),
        (&json!(4), &json!(3), &json!([]))
    );
}

#[tokio::test]
async fn a_user_reads_its_own_tenant_a_landlord_any() {
    let server = HttpServer::start_with(|config| {
        config.users = vec![
            user("acme", "crm", pg::SUPERVISOR),
            user("acme", "joe", pg::AGENT),
            user("beta", "crm", pg::SUPERVISOR),
            user("landlord", "ops", pg::SUPERVISOR | pg::SYSTEM),
        ];
    })
    .await;
    let mut ops = sdmp(&server).await;
    ops.send(r"UA\ANops\TDlandlord\PWcorrect horse").await;
    assert!(ops.recv().await.contains(r"\RS0"));
    send_all(
        &mut ops,
        &[
            r"MC\CNSales\SI1\TDacme",
            r"CF\CNSales\SI1\CA2\TDacme",
            r"CF\CNSales\SI2\CA2\TDbeta",
        ],
    )
    .await;
    let read = |path: &'static str, name: &'static str| {
        let server = &server;
        async move {
            let response = server
                .client
                .get(server.url(path))
                .basic_auth(name, Some(PASSWORD))
                .send()
                .await
                .unwrap();
            answer(response).await
        }
    };
    let (status, page) = read("/v1/outcomes", "crm@acme").await;
    assert_eq!((status, seqs(&page)), (200, vec![1]));
    let (status, page) = read("/v1/outcomes", "crm@beta").await;
    assert_eq!((status, seqs(&page)), (200, vec![2]));
    let (status, body) = read("/v1/outcomes?tenant=beta", "crm@acme").await;
    assert_eq!((status, &body["ec"]), (403, &json!(811)));
    let (status, body) = read("/v1/outcomes", "joe@acme").await;
    assert_eq!((status, &body["ec"]), (403, &json!(811)));
    let (status, page) = read("/v1/outcomes", "ops@landlord").await;
    assert_eq!((status, seqs(&page)), (200, vec![1, 2]));
    let (status, page) = read("/v1/outcomes?tenant=beta", "ops@landlord").await;
    assert_eq!((status, seqs(&page)), (200, vec![2]));
    let (status, body) = read("/v1/outcomes?tenant=nobody", "ops@landlord").await;
    assert_eq!((status, &body["ec"]), (403, &json!(812)));
    let (status, _) = answer(server.get("/v1/outcomes").await).await;
    assert_eq!(status, 401);
    // A call is the user's tenant's: acme's SI 2 is none.
    let (status, _) = read("/v1/calls/Sales/1", "crm@acme").await;
    assert_eq!(status, 200);
    let (status, _) = read("/v1/calls/Sales/2", "crm@acme").await;
    assert_eq!(status, 404);
    let (status, _) = read("/v1/calls/Sales/2?tenant=beta", "ops@landlord").await;
    assert_eq!(status, 200);
    let (status, _) = read("/v1/transactions", "joe@acme").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn the_transactions_list_shows_holders_cursors_backlogs_and_roll_forward() {
    let server = HttpServer::start().await;
    let mut producer = sdmp(&server).await;
    let mut crm = sdmp(&server).await;
    crm.send(r"EO\TXcrm\FO\PSp\XS\CS1\TKe").await;
    crm.expect(&[r"MV\TKe"]).await;
    let mut plain = sdmp(&server).await;
    plain.send(r"EO\TXplain\SO\CNSales\TDacme\TKe").await;
    plain.expect(&[r"MV\TKe"]).await;
    let frames: Vec<String> = (1..=5).map(|i| format!(r"CF\CNc\SI{i}\CA2")).collect();
    let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
    send_all(&mut producer, &frames).await;
    for _ in 0..5 {
        crm.recv().await;
    }
    crm.send(r"XA\TXcrm\XS3\TKa").await;
    crm.expect(&[r"MV\TKa"]).await;
    drop(crm);
    send_all(&mut producer, &[r"CF\CNc\SI6\CA2"]).await;

    let released = |list: &Value| {
        list["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["transaction"] == "crm" && t["state"] == "released")
            .cloned()
    };
    let mut list = Value::Null;
    for _ in 0..50 {
        list = get_json(&server, "/v1/transactions").await.1;
        if released(&list).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(list["log_end"], 6);
    let crm = released(&list).expect("released");
    assert_eq!(
        (
            &crm["persist"],
            &crm["cursor"],
            &crm["acknowledged"],
            &crm["backlog"]
        ),
        (&json!("p"), &json!(3), &json!(3), &json!(3))
    );
    assert_eq!(crm["filter"], json!({ "classes": ["failure"] }));
    assert!(crm["released_at"].is_string());
    assert!(crm.get("holder").is_none());
    let plain = list["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["transaction"] == "plain")
        .unwrap();
    assert_eq!(plain["holder"]["front_end"], "sdmp");
    assert!(plain["holder"]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(
        plain["filter"],
        json!({ "tenant": "acme", "campaign": "Sales", "classes": ["success"] })
    );
    assert_eq!(
        (&plain["persisted"], &plain["backlog"]),
        (&json!(false), &json!(0))
    );
    let (_, only_acme) = get_json(&server, "/v1/transactions?tenant=acme").await;
    let names: BTreeSet<&str> = only_acme["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["transaction"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["plain"]));

    // Re-issued at one event per second: the roll-forward shows while it lasts.
    let mut again = sdmp(&server).await;
    again.send(r"EO\TXcrm\FO\PSp\XS\CS1\TKe").await;
    let mut frames = BTreeSet::new();
    frames.insert(again.recv().await);
    frames.insert(again.recv().await);
    assert!(frames.contains(r"MV\TKe"), "{frames:?}");
    let (_, list) = get_json(&server, "/v1/transactions").await;
    let crm = list["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["transaction"] == "crm")
        .unwrap();
    assert_eq!(crm["state"], "held");
    assert_eq!(crm["roll_forward"]["rate"], 1);
    assert_eq!(crm["roll_forward"]["until"], 6);
    assert!(
        crm["roll_forward"]["remaining"].as_u64().unwrap() >= 1,
        "{crm}"
    );
}

#[tokio::test]
async fn metrics_show_the_new_gauges_and_histograms() {
    ozbus::http::install_metrics(None).ok();
    let server = HttpServer::start().await;
    let mut client = sdmp(&server).await;
    client.send(r"EO\TXm\FO\PSm\TKe").await;
    client.expect(&[r"MV\TKe"]).await;
    let mut producer = sdmp(&server).await;
    send_all(&mut producer, &[r"CF\CNc\SI1\CA2"]).await;
    client.recv().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let text = server.get("/metrics").await.text().await.unwrap();
    // On PostgreSQL the log's size is read at each retention step (every 5 s), not per commit.
    let on_postgres = ozbus::config::test_store_url(server.dir.path()).is_some();
    for name in [
        "ozbus_connections_open",
        "ozbus_transactions_held",
        "ozbus_transactions_persisted",
        "ozbus_transaction_backlog_max",
        "ozbus_log_first_seq",
        "ozbus_log_last_seq",
        "ozbus_log_bytes",
        "ozbus_store_commit_seconds_count",
        "ozbus_store_commit_batch_size_count",
        "ozbus_delivery_lag_seconds_count",
    ] {
        if name == "ozbus_log_bytes" && on_postgres {
            continue;
        }
        assert!(
            text.lines().any(|line| line.starts_with(name)),
            "{name} missing:\n{text}"
        );
    }
    // The gauges are the process's: other tests' servers in this process set them too, each
    // once a second, until they end. This server's sample shows within a few seconds.
    for gauge in ["ozbus_log_last_seq", "ozbus_transactions_persisted"] {
        let mut value = 0.0;
        for _ in 0..50 {
            let text = server.get("/metrics").await.text().await.unwrap();
            value = text
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{gauge} ")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            if value >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(value >= 1.0, "{gauge} = {value}");
    }
}

/// After a restart, persisted transactions are read from the store only when a request names
/// them; the list still shows every one, as a re-issue would find it, and once each.
#[tokio::test]
async fn the_transactions_list_shows_persisted_transactions_nobody_named_since_a_restart() {
    let first = HttpServer::start().await;
    let mut crm = sdmp(&first).await;
    crm.send(r"EO\TXcrm\FO\PSp\TKe").await;
    crm.expect(&[r"MV\TKe"]).await;
    let mut producer = sdmp(&first).await;
    send_all(&mut producer, &[r"CF\CNc\SI1\CA2"]).await;
    crm.recv().await;
    drop(crm);
    let HttpServer { server, dir, .. } = first;
    server.shutdown().await.unwrap();

    let server = HttpServer::start_in(dir).await;
    let (status, list) = get_json(&server, "/v1/transactions").await;
    assert_eq!(status, 200);
    let crms: Vec<&Value> = list["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["transaction"] == "crm")
        .collect();
    assert_eq!(crms.len(), 1, "{list}");
    assert_eq!(
        (
            &crms[0]["state"],
            &crms[0]["persist"],
            &crms[0]["cursor"],
            &crms[0]["filter"]
        ),
        (
            &json!("released"),
            &json!("p"),
            &json!(1),
            &json!({ "classes": ["failure"] })
        )
    );
    // Re-issued: loaded, held, and still listed once.
    let mut again = sdmp(&server).await;
    again.send(r"EO\TXcrm\FO\PSp\TKe").await;
    again.expect(&[r"MV\TKe"]).await;
    let (_, list) = get_json(&server, "/v1/transactions").await;
    let states: Vec<&Value> = list["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["transaction"] == "crm")
        .map(|t| &t["state"])
        .collect();
    assert_eq!(states, [&json!("held")], "{list}");
}

/// A page holds `PAGE_BYTES` of outcomes at most (one at least), however large their data and
/// whatever the limit: it ends early with `more`, and paging on reads every outcome once.
#[tokio::test]
async fn a_page_is_bounded_in_bytes() {
    use ozbus::http::history::PAGE_BYTES;
    let server = HttpServer::start().await;
    let mut client = sdmp(&server).await;
    let data = "x".repeat(100_000);
    let count = 2 * PAGE_BYTES / data.len() + 2;
    let frames: Vec<String> = (1..=count)
        .flat_map(|si| {
            [
                format!(r"MC\CNbig\SI{si}\DT{data}"),
                format!(r"CF\CNbig\SI{si}\CA2"),
            ]
        })
        .collect();
    let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
    send_all(&mut client, &frames).await;
    // One outcome's JSON or CSV: its data and less than a kilobyte besides.
    let bound = PAGE_BYTES + data.len() + 1024;
    let (mut all, mut after, mut pages) = (Vec::new(), 0, 0);
    loop {
        let response = server
            .get(&format!("/v1/outcomes?limit=1000&after={after}"))
            .await;
        assert_eq!(response.status(), 200);
        let body = response.bytes().await.unwrap();
        assert!(body.len() <= bound, "a page of {} bytes", body.len());
        let page: Value = serde_json::from_slice(&body).unwrap();
        let got = seqs(&page);
        assert!(!got.is_empty());
        assert_eq!(page["next"], json!(got.last().unwrap()));
        all.extend(got);
        after = page["next"].as_u64().unwrap();
        pages += 1;
        if page["more"] == false {
            break;
        }
    }
    assert_eq!(all, (1..=count as u64).collect::<Vec<_>>());
    assert!(pages >= 3, "{pages} pages");
    // The CSV form likewise, its next page in the Link header.
    let response = server.get("/v1/outcomes?limit=1000&format=csv").await;
    let next = response.headers()["ozbus-next"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(response.headers()["link"]
        .to_str()
        .unwrap()
        .contains(&format!("after={next}")));
    let body = response.bytes().await.unwrap();
    assert!(body.len() <= bound, "a CSV page of {} bytes", body.len());
    assert!(next.parse::<usize>().unwrap() < count);
}

/// A call shows its newest outcomes up to `PAGE_BYTES` of them (one at least), and says that
/// it left older ones out.
#[tokio::test]
async fn a_call_is_bounded_in_bytes() {
    use ozbus::http::history::PAGE_BYTES;
    let server = HttpServer::start().await;
    let mut client = sdmp(&server).await;
    send_all(
        &mut client,
        &[
            r"MC\CNSales\TN0123",
            r"LC\CNSales\TN0123\ANJoe",
            r"TC\ANJoe\AO167",
        ],
    )
    .await;
    let data = "x".repeat(100_000);
    let count = 2 * PAGE_BYTES / data.len();
    let frames: Vec<String> = (0..count)
        .map(|i| format!(r"UO\TXfix{i}\CNSales\SI0123\AO105\DT{data}{i}"))
        .collect();
    let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
    send_all(&mut client, &frames).await;
    let response = server.get("/v1/calls/Sales/0123").await;
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert!(
        body.len() <= PAGE_BYTES + data.len() + 1024,
        "a call of {} bytes",
        body.len()
    );
    let call: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(call["truncated"], true);
    // The newest are shown: the last correction is the last one sent.
    let outcomes = call["outcomes"].as_array().unwrap();
    let last = outcomes.last().unwrap();
    let newest = last["corrections"]
        .as_array()
        .and_then(|c| c.last())
        .unwrap_or(last);
    assert!(newest["data"]
        .as_str()
        .unwrap()
        .ends_with(&format!("x{}", count - 1)));
}

/// The list comes a page at a time, in (tenant, TX) order, mixing transactions in memory with
/// persisted ones only the store holds (after a restart): each once, none skipped.
#[tokio::test]
async fn the_transactions_list_pages_through_memory_and_store_alike() {
    let first = HttpServer::start().await;
    let mut opener = sdmp(&first).await;
    for i in 1..=6 {
        opener.send(&format!(r"EO\TXt{i}\FO\PSp{i}\TKe")).await;
        opener.expect(&[r"MV\TKe"]).await;
    }
    drop(opener);
    let HttpServer { server, dir, .. } = first;
    server.shutdown().await.unwrap();

    let server = HttpServer::start_in(dir).await;
    // Two loaded again by a re-issue, one new and held, the rest only in the store.
    let mut client = sdmp(&server).await;
    for frame in [
        r"EO\TXt2\FO\PSp2\TKe",
        r"EO\TXt5\FO\PSp5\TKe",
        r"EO\TXt7\FO\TKe",
    ] {
        client.send(frame).await;
        client.expect(&[r"MV\TKe"]).await;
    }
    let (mut seen, mut pages, mut after) = (Vec::new(), 0, None::<String>);
    loop {
        let path = match &after {
            Some(after) => format!("/v1/transactions?limit=2&after={after}"),
            None => "/v1/transactions?limit=2".to_owned(),
        };
        let (status, page) = get_json(&server, &path).await;
        assert_eq!(status, 200, "{page}");
        let txs = page["transactions"].as_array().unwrap();
        assert!(txs.len() <= 2, "{page}");
        seen.extend(
            txs.iter()
                .map(|t| t["transaction"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["t1", "t2", "t3", "t4", "t5", "t6", "t7"]);
    assert_eq!(pages, 4);
    let (status, problem) = get_json(&server, "/v1/transactions?after=nonsense").await;
    assert_eq!((status, &problem["ec"]), (400, &json!(806)), "{problem}");
    let (status, problem) = get_json(&server, "/v1/transactions?limit=0").await;
    assert_eq!((status, &problem["ec"]), (400, &json!(805)), "{problem}");
}
