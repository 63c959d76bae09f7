//! `GET /v1/summary` against a real server: outcomes counted per second by class and campaign
//! as they commit, the latest outcomes, refusals by EC, the store's health; every refusal of
//! its parameters; and what each user sees (a supervisor its tenant's, a landlord every
//! tenant's). The page at `/` is tested in a browser (tests/http_dashboard.rs).

mod http_common;
mod users_common;

use std::time::Duration;

use http_common::{answer, HttpServer};
use ozbus::core::auth::pg;
use serde_json::Value;
use users_common::{user, PASSWORD};

async fn summary(server: &HttpServer, query: &str) -> (u16, Value) {
    answer(server.get(&format!("/v1/summary{query}")).await).await
}

fn sum(series: &Value) -> u64 {
    series
        .as_array()
        .expect("a series")
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

/// Polls until `check` holds for the summary (the counting follows the commits).
async fn eventually(
    server: &HttpServer,
    query: &str,
    with: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    check: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..50 {
        let request = server
            .client
            .get(server.url(&format!("/v1/summary{query}")));
        let (status, body) = answer(with(request).send().await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        if check(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the summary never showed what was expected");
}

#[tokio::test]
async fn outcomes_are_counted_by_class_and_campaign() {
    let server = HttpServer::start().await;
    for (campaign, si) in [("Sales1", "1"), ("Sales1", "2"), ("Retention", "3")] {
        let (status, _) = server
            .report(&format!(
                r#"{{"type":"CF","campaign":"{campaign}","session":"{si}","cause":2}}"#
            ))
            .await;
        assert_eq!(status, 200);
    }
    let lines = [
        r#"{"type":"MC","campaign":"Sales1","number":"0170"}"#,
        r#"{"type":"LC","campaign":"Sales1","number":"0170","agent":"Joe"}"#,
        r#"{"type":"TC","agent":"Joe","outcome":167}"#,
    ];
    let (status, _) = server.bulk(&lines.join("\n")).await;
    assert_eq!(status, 200);
    let (status, refused) = server.report(r#"{"type":"TC","agent":"Nobody"}"#).await;
    assert_eq!((status, refused["ec"].as_u64()), (409, Some(410)));

    let body = eventually(
        &server,
        "?window=60",
        |r| r,
        |body| {
            sum(&body["classes"]["failure"]) == 3
                && sum(&body["classes"]["success"]) == 1
                && body["latest"].as_array().unwrap().len() == 4
        },
    )
    .await;
    assert_eq!(body["window"], 60);
    assert_eq!(body["classes"]["success"].as_array().unwrap().len(), 60);
    assert_eq!(sum(&body["classes"]["management"]), 0);
    let campaigns = body["campaigns"].as_array().unwrap();
    assert_eq!(campaigns[0]["campaign"], "Sales1");
    assert_eq!(campaigns[0]["total"], 3);
    assert_eq!(sum(&campaigns[0]["per_second"]), 3);
    assert_eq!(campaigns[1]["campaign"], "Retention");
    assert_eq!(sum(&body["other_campaigns"]), 0);
    // Newest first: Joe's completion, then the failures.
    assert_eq!(body["latest"][0]["agent"], "Joe");
    assert_eq!(body["latest"][0]["class"], "success");
    assert_eq!(body["latest"][0]["seq"], 4);
    let rejections = body["rejections"].as_array().unwrap();
    let ec410 = rejections.iter().find(|r| r["ec"] == 410).expect("EC 410");
    assert!(ec410["total"].as_u64().unwrap() >= 1);
    assert!(ec410["last_minute"].as_u64().unwrap() >= 1);
    let store = &body["store"];
    assert_eq!(store["ready"], true);
    assert_eq!(store["full"], false);
    assert_eq!(store["first_seq"], 1);
    assert_eq!(store["last_seq"], 4);
    // (On PostgreSQL, the size is as of the node's last retention step: maybe none yet.)
    let on_postgres = ozbus::config::test_store_url(server.dir.path()).is_some();
    if !on_postgres {
        assert!(store["log_bytes"].as_u64().unwrap() > 0, "{store}");
    }
    assert_eq!(body["uncounted"], 0);
}

#[tokio::test]
async fn its_parameters_are_checked() {
    let server = HttpServer::start().await;
    let ec = |(status, body): (u16, Value)| (status, body["ec"].as_u64().unwrap_or(0));
    assert_eq!(summary(&server, "").await.0, 200);
    assert_eq!(summary(&server, "?window=1").await.0, 200);
    assert_eq!(summary(&server, "?window=300").await.0, 200);
    assert_eq!(ec(summary(&server, "?window=0").await), (400, 805));
    assert_eq!(ec(summary(&server, "?window=301").await), (400, 805));
    assert_eq!(ec(summary(&server, "?window=-1").await), (400, 805));
    assert_eq!(ec(summary(&server, "?window=1&window=2").await), (400, 802));
    assert_eq!(ec(summary(&server, "?campaign=x").await), (400, 801));
    assert_eq!(ec(summary(&server, "?tenant=a%5Cb").await), (400, 806));
    assert_eq!(ec(summary(&server, "?tenant=").await), (400, 804));
    let (status, body) = summary(&server, "?tenant=acme&window=5").await;
    assert_eq!(status, 200);
    assert_eq!(body["classes"]["failure"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn each_user_sees_what_it_may() {
    let server = HttpServer::start_with(|config| {
        config.users = vec![
            user("acme", "sup", pg::SUPERVISOR),
            user("acme", "ops", pg::ALL),
            user("acme", "joe", pg::AGENT),
            user("other", "ops", pg::ALL),
            user("landlord", "root", pg::ALL),
        ];
    })
    .await;
    for (who, campaign) in [("ops@acme", "AcmeSales"), ("ops@other", "OtherSales")] {
        let (status, _) = server
            .report_as(
                &format!(r#"{{"type":"CF","campaign":"{campaign}","session":"1","cause":2}}"#),
                |r| r.basic_auth(who, Some(PASSWORD)),
            )
            .await;
        assert_eq!(status, 200);
    }
    let ec = |(status, body): (u16, Value)| (status, body["ec"].as_u64().unwrap_or(0));
    let as_user = |who: &'static str, query: &'static str| {
        let request = server
            .client
            .get(server.url(&format!("/v1/summary{query}")))
            .basic_auth(who, Some(PASSWORD));
        async move { answer(request.send().await.unwrap()).await }
    };
    assert_eq!(ec(summary(&server, "").await), (401, 811));
    assert_eq!(ec(as_user("joe@acme", "").await), (403, 811));
    assert_eq!(ec(as_user("sup@acme", "?tenant=other").await), (403, 811));
    assert_eq!(
        ec(as_user("root@landlord", "?tenant=nobody").await),
        (403, 812)
    );

    let campaigns = |body: &Value| -> Vec<String> {
        body["campaigns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["campaign"].as_str().unwrap().to_string())
            .collect()
    };
    let acme = eventually(
        &server,
        "",
        |r| r.basic_auth("sup@acme", Some(PASSWORD)),
        // Rates end with the last complete second; the latest outcomes are there at once.
        |body| !body["campaigns"].as_array().unwrap().is_empty(),
    )
    .await;
    assert_eq!(campaigns(&acme), ["AcmeSales"]);
    assert_eq!(acme["campaigns"][0]["tenant"], "acme");
    assert_eq!(acme["latest"].as_array().unwrap().len(), 1);
    assert_eq!(acme["latest"][0]["campaign"], "AcmeSales");
    assert_eq!(sum(&acme["classes"]["failure"]), 1);

    let everyone = eventually(
        &server,
        "",
        |r| r.basic_auth("root@landlord", Some(PASSWORD)),
        |body| body["campaigns"].as_array().unwrap().len() == 2,
    )
    .await;
    let mut all = campaigns(&everyone);
    all.sort();
    assert_eq!(all, ["AcmeSales", "OtherSales"]);
    let other = eventually(
        &server,
        "?tenant=other",
        |r| r.basic_auth("root@landlord", Some(PASSWORD)),
        |body| !body["campaigns"].as_array().unwrap().is_empty(),
    )
    .await;
    assert_eq!(campaigns(&other), ["OtherSales"]);
}

#[tokio::test]
async fn the_page_asks_for_credentials_when_users_are_configured() {
    let open = HttpServer::start().await;
    let response = open.get("/").await;
    assert_eq!(response.status(), 200);
    let policy = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(response.text().await.unwrap().contains(r#"content="none""#));
    for asset in ["/dashboard.css", "/dashboard.js"] {
        assert_eq!(open.get(asset).await.status(), 200, "{asset}");
    }

    let guarded = HttpServer::start_with(|config| {
        config.users = vec![user("acme", "sup", pg::SUPERVISOR)];
    })
    .await;
    let response = guarded.get("/").await;
    assert_eq!(response.status(), 401);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("Basic"));
    let response = guarded
        .client
        .get(guarded.url("/"))
        .basic_auth("sup@acme", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains(r#"content="users""#));
    // The assets hold no data: no credentials needed.
    assert_eq!(guarded.get("/dashboard.js").await.status(), 200);
}
