//! Helpers for the HTTP tests: a server in this process with its HTTP listener, and a real
//! HTTP client (reqwest) for it, over plain HTTP or TLS.
#![allow(dead_code)]

use std::net::SocketAddr;

use ozbus::config::Config;
use ozbus::server::RunningServer;
use serde_json::Value;

pub struct HttpServer {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
    pub base: String,
    pub client: reqwest::Client,
}

impl HttpServer {
    pub async fn start() -> HttpServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> HttpServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_test(dir.path());
        adjust(&mut config);
        let server = RunningServer::start(config).await.expect("server starts");
        let addr = server.http_addr().expect("HTTP listener");
        HttpServer {
            base: format!("http://{addr}"),
            server,
            dir,
            client: client(),
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.server.http_addr().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs one JSON report; the status and the body as JSON.
    pub async fn report(&self, body: &str) -> (u16, Value) {
        self.report_as(body, |r| r).await
    }

    pub async fn report_as(
        &self,
        body: &str,
        with: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> (u16, Value) {
        let request = self
            .client
            .post(self.url("/v1/reports"))
            .header("content-type", "application/json")
            .body(body.to_string());
        answer(with(request).send().await.expect("request")).await
    }

    /// POSTs JSON Lines; the status and the answer's lines.
    pub async fn bulk(&self, lines: &str) -> (u16, Vec<Value>) {
        let response = self
            .client
            .post(self.url("/v1/reports/bulk"))
            .header("content-type", "application/x-ndjson")
            .body(lines.to_string())
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let values = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        (status, values)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }
}

/// An HTTP client, with the ring provider of rustls installed for the whole process (the one
/// the service uses).
pub fn client() -> reqwest::Client {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The status and the body as JSON (Null when it is not JSON); problem documents must come as
/// application/problem+json.
pub async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.bytes().await.unwrap();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status >= 400 {
        assert_eq!(content_type, "application/problem+json", "{value}");
        assert_eq!(value["status"], status, "{value}");
    }
    (status, value)
}
