//! Users over HTTP: Basic credentials (name@tenant), bearer tokens, refusals (401, 403, 429),
//! and HTTPS with the certificates of `[tls]`.

mod http_common;
mod tls_common;
mod users_common;

use http_common::{answer, HttpServer};
use ozbus::core::auth::pg;
use serde_json::json;
use users_common::{user, PASSWORD};

const CF: &str = r#"{"type":"CF","campaign":"c","session":"1","cause":2}"#;

async fn with_users() -> HttpServer {
    HttpServer::start_with(|config| {
        config.users = vec![
            user("acme", "dialer", pg::SYSTEM),
            user("acme", "crm", pg::SUPERVISOR),
            user("acme", "joe@home", pg::AGENT),
        ];
    })
    .await
}

#[tokio::test]
async fn basic_credentials_act_as_that_user_in_its_tenant() {
    let server = with_users().await;
    let (status, body) = server.report(CF).await;
    assert_eq!((status, &body["ec"]), (401, &json!(811)), "{body}");

    let basic = |name: &'static str, password: &'static str| {
        move |r: reqwest::RequestBuilder| r.basic_auth(name, Some(password))
    };
    assert_eq!(
        server.report_as(CF, basic("dialer@acme", PASSWORD)).await.0,
        200
    );
    // Another tenant by TD: 403.
    let other = r#"{"type":"CF","campaign":"c","session":"1","cause":2,"tenant":"other"}"#;
    let (status, body) = server
        .report_as(other, basic("dialer@acme", PASSWORD))
        .await;
    assert_eq!((status, &body["ec"]), (403, &json!(811)), "{body}");
    // A privilege the user lacks: 403.
    let (status, body) = server.report_as(CF, basic("crm@acme", PASSWORD)).await;
    assert_eq!((status, &body["ec"]), (403, &json!(811)), "{body}");
    // A name with @ in it: the tenant follows the last @.
    let (status, body) = server
        .report_as(
            r#"{"type":"TC","agent":"joe@home"}"#,
            basic("joe@home@acme", PASSWORD),
        )
        .await;
    assert_eq!((status, &body["ec"]), (409, &json!(410)), "{body}");

    for (name, password, reason) in [
        ("dialer@acme", "wrong", "wrong password (RS 2)"),
        (
            "nobody@acme",
            PASSWORD,
            "no such user in that tenant (RS 1)",
        ),
        (
            "dialer",
            PASSWORD,
            "badly formed credentials: name the user as name@tenant",
        ),
    ] {
        let (status, body) = server.report_as(CF, basic(name, password)).await;
        assert_eq!((status, &body["reason"]), (401, &json!(reason)), "{name}");
    }
    let response = server
        .client
        .post(server.url("/v1/reports"))
        .header("content-type", "application/json")
        .body(CF)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("Basic") && challenge.contains("Bearer"),
        "{challenge}"
    );

    let (_, doc) = answer(server.get("/openapi.json").await).await;
    assert_eq!(doc["security"], json!([{ "basic": [] }, { "bearer": [] }]));
}

#[tokio::test]
async fn a_bearer_token_acts_as_its_user_until_revoked() {
    let server = with_users().await;
    let issue = server
        .client
        .post(server.url("/v1/tokens"))
        .basic_auth("dialer@acme", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    let (status, token) = answer(issue).await;
    assert_eq!(
        (status, &token["token_type"], &token["expires_in"]),
        (200, &json!("Bearer"), &json!(3600))
    );
    let token = token["token"].as_str().unwrap().to_string();
    let bearer = |r: reqwest::RequestBuilder| r.bearer_auth(&token);
    assert_eq!(
        server.report_as(CF, bearer).await,
        (200, json!({ "seq": 1 }))
    );
    let (status, body) = server.report_as(CF, |r| r.bearer_auth("made-up")).await;
    assert_eq!(
        (status, &body["reason"]),
        (401, &json!("unknown or expired bearer token"))
    );

    // A token is not issued for a token, nor for a wrong password.
    let (status, _) = answer(
        server
            .client
            .post(server.url("/v1/tokens"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = answer(
        server
            .client
            .post(server.url("/v1/tokens"))
            .basic_auth("dialer@acme", Some("wrong"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    let revoked = server
        .client
        .delete(server.url("/v1/tokens"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(server.report_as(CF, |r| r.bearer_auth(&token)).await.0, 401);
}

#[tokio::test]
async fn tokens_expire_and_are_bounded() {
    let server = HttpServer::start_with(|config| {
        config.users = vec![user("acme", "dialer", pg::SYSTEM)];
        config.http.token_ttl = std::time::Duration::from_millis(300);
        config.http.max_tokens = 1;
    })
    .await;
    let issue = || async {
        answer(
            server
                .client
                .post(server.url("/v1/tokens"))
                .basic_auth("dialer@acme", Some(PASSWORD))
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    let (status, token) = issue().await;
    assert_eq!(status, 200);
    let (status, body) = issue().await;
    assert_eq!(
        (status, &body["ec"]),
        (429, &json!(814)),
        "one token at most"
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let token = token["token"].as_str().unwrap().to_string();
    assert_eq!(
        server.report_as(CF, |r| r.bearer_auth(&token)).await.0,
        401,
        "expired"
    );
    assert_eq!(issue().await.0, 200, "an expired token makes room");
}

#[tokio::test]
async fn credentials_count_against_the_ua_rate_limit_and_without_users_nobody_exists() {
    let server = HttpServer::start_with(|config| {
        config.users = vec![user("acme", "dialer", pg::SYSTEM)];
        config.limits.ua_per_address_per_minute = 1;
    })
    .await;
    let basic = |r: reqwest::RequestBuilder| r.basic_auth("dialer@acme", Some(PASSWORD));
    assert_eq!(server.report_as(CF, basic).await.0, 200);
    let response = server
        .client
        .post(server.url("/v1/reports"))
        .header("content-type", "application/json")
        .basic_auth("dialer@acme", Some(PASSWORD))
        .body(CF)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["retry-after"], "60");
    let (status, body) = answer(response).await;
    assert_eq!((status, &body["ec"]), (429, &json!(814)));

    let open = HttpServer::start().await;
    assert_eq!(
        open.report(CF).await.0,
        200,
        "no users: no credentials needed"
    );
    let (status, body) = open.report_as(CF, basic).await;
    assert_eq!(
        (status, &body["reason"]),
        (401, &json!("no such user in that tenant (RS 1)"))
    );
}

#[tokio::test]
async fn https_uses_the_certificate_of_the_tls_section() {
    let pki = tls_common::Pki::new("http test CA");
    let dir = tempfile::tempdir().unwrap();
    pki.install(dir.path());
    let server = HttpServer::start_with(|config| {
        config.http.tls = true;
        config.tls.cert = Some(dir.path().join("cert.pem"));
        config.tls.key = Some(dir.path().join("key.pem"));
        config.users = vec![user("acme", "dialer", pg::SYSTEM)];
    })
    .await;
    assert!(server.server.http_secure());
    http_common::client();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let addr = server.http_addr();
    let response = client
        .post(format!("https://localhost:{}/v1/reports", addr.port()))
        .header("content-type", "application/json")
        .basic_auth("dialer@acme", Some(PASSWORD))
        .body(CF)
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await, (200, json!({ "seq": 1 })));
    // Plain HTTP on the TLS port gets no answer.
    assert!(http_common::client()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_err());
}
