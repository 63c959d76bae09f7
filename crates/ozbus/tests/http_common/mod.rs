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
        Self::start_in_with(tempfile::tempdir().expect("temp dir"), adjust).await
    }

    /// A server on the data of `dir` (a restart, when a server ran on it before).
    pub async fn start_in(dir: tempfile::TempDir) -> HttpServer {
        Self::start_in_with(dir, |_| {}).await
    }

    async fn start_in_with(dir: tempfile::TempDir, adjust: impl FnOnce(&mut Config)) -> HttpServer {
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

/// How long a stream test waits for something that should come.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

/// A Server-Sent Events stream, read as it comes.
pub struct Sse {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl HttpServer {
    /// Opens `/v1/stream?<query>`; it must be accepted.
    pub async fn sse(&self, query: &str) -> Sse {
        match self.sse_with(query, |r| r).await {
            Ok(sse) => sse,
            Err((status, body)) => panic!("stream refused: {status} {body}"),
        }
    }

    /// Opens `/v1/stream?<query>` as `with` says; a refusal's status and problem.
    pub async fn sse_with(
        &self,
        query: &str,
        with: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Sse, (u16, Value)> {
        let request = self.client.get(self.url(&format!("/v1/stream?{query}")));
        let response = with(request).send().await.expect("GET /v1/stream");
        if response.status() != 200 {
            return Err(answer(response).await);
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Ok(Sse {
            response,
            buffer: Vec::new(),
        })
    }

    /// Opens `/v1/ws?<query>`; it must be accepted.
    pub async fn ws(&self, query: &str) -> Ws {
        self.ws_with(query, None).await.expect("WebSocket refused")
    }

    /// Opens `/v1/ws?<query>`, with an Authorization header if given; a refusal's status.
    pub async fn ws_with(&self, query: &str, authorization: Option<&str>) -> Result<Ws, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://{}/v1/ws?{query}", self.http_addr());
        let mut request = url.into_client_request().unwrap();
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert("authorization", value.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(Ws { socket }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(error) => panic!("WebSocket: {error}"),
        }
    }
}

impl Sse {
    /// The next block of the stream (an event or a comment), as text; `None` once it ended.
    pub async fn next_block(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                return Some(String::from_utf8(block[..end].to_vec()).unwrap());
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("the stream said nothing in time");
            match chunk {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next event (comments skipped).
    pub async fn next(&mut self) -> Event {
        loop {
            let block = self.next_block().await.expect("the stream ended");
            if block.starts_with(':') {
                continue;
            }
            let mut event = Event {
                event: "message".into(),
                id: None,
                data: Value::Null,
            };
            for line in block.lines() {
                let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                match field {
                    "event" => event.event = value.into(),
                    "id" => event.id = Some(value.into()),
                    "data" => event.data = serde_json::from_str(value).unwrap(),
                    other => panic!("unexpected field {other} in {block:?}"),
                }
            }
            return event;
        }
    }

    /// The next event, which must be an outcome; its data.
    pub async fn outcome(&mut self) -> Value {
        let event = self.next().await;
        assert_eq!(event.event, "outcome", "{event:?}");
        assert_eq!(
            event.id.as_deref(),
            event.data["seq"].as_u64().map(|s| s.to_string()).as_deref()
        );
        event.data
    }

    /// Waits for the stream's end; panics if anything but comments comes first (or nothing
    /// comes in time).
    pub async fn expect_end(&mut self) {
        loop {
            match self.next_block().await {
                None => return,
                Some(block) if block.starts_with(':') => continue,
                Some(block) => panic!("expected the end, got {block:?}"),
            }
        }
    }
}

/// A WebSocket stream.
pub struct Ws {
    pub socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    /// The next message, pings skipped.
    pub async fn message(&mut self) -> tokio_tungstenite::tungstenite::Message {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("the WebSocket said nothing in time")
                .expect("the WebSocket ended")
                .expect("the WebSocket failed");
            match message {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return other,
            }
        }
    }

    /// The next JSON message.
    pub async fn next(&mut self) -> Value {
        match self.message().await {
            tokio_tungstenite::tungstenite::Message::Text(text) => {
                serde_json::from_str(text.as_str()).unwrap()
            }
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    pub async fn send(&mut self, value: Value) {
        use futures::SinkExt;
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::Text(
                value.to_string().into(),
            ))
            .await
            .unwrap();
    }
}

/// An outcome's JSON without its time (which the test cannot know), after checking it is one.
pub fn timeless(mut outcome: Value) -> Value {
    let time = outcome
        .as_object_mut()
        .and_then(|o| o.remove("time"))
        .expect("a time");
    assert!(
        time.as_str().unwrap().ends_with('Z') && time.as_str().unwrap().len() == 24,
        "{time}"
    );
    outcome
}
