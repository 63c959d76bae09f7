//! The JSON ingest of `ozbus bench` (`--ingest json`, `--ingest json-bulk[:LINES]`): the same
//! failure reports as the SDMP load (`CF` with cause 2 for the bench campaign, its session
//! carrying the send time), posted to the HTTP listener as `POST /v1/reports` (one report per
//! request) or `POST /v1/reports/bulk` (JSON Lines), so that the subscribers time them exactly
//! as they time SDMP's, and their figures stand beside SDMP's.
//!
//! Owns the client side of those requests: `--http-connections` keep-alive HTTP/1.1
//! connections (hyper's client connection, one request in flight on each: HTTP/1.1 has no
//! multiplexing, so the number of connections is the concurrency), paced by `--rate` or as fast
//! as the answers come. A report counts as accepted when its answer (the response, or its line
//! of a bulk answer) says 200; anything else is an error. Never: reads more of an answer than
//! its status and, for bulk, each line's status.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use axum::body::Body;
use hyper::client::conn::http1;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use sdmp_client::Credentials;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{ReporterStats, Timing, CAMPAIGN};

/// Largest answer read whole (a bulk answer of 10,000 lines is about 300 KiB).
const MAX_ANSWER: usize = 16 << 20;
/// Refusals logged per connection, at most (the rest are counted only).
const LOGGED: u64 = 3;

/// An open keep-alive connection to the HTTP listener.
struct Client {
    sender: http1::SendRequest<Body>,
    host: String,
    /// `Basic …` or `Bearer …`, sent with every request.
    authorization: Option<String>,
}

impl Client {
    async fn connect(addr: &str, authorization: Option<String>) -> anyhow::Result<Client> {
        let socket = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the HTTP listener {addr}"))?;
        let _ = socket.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(socket))
            .await
            .context("HTTP handshake")?;
        // Drives the connection; ends when the sender is dropped or the server closes it.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("bench HTTP connection: {e}");
            }
        });
        Ok(Client {
            sender,
            host: addr.to_owned(),
            authorization,
        })
    }

    /// POSTs `body` to `path`; the status and the whole answer.
    async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(u16, axum::body::Bytes)> {
        self.sender
            .ready()
            .await
            .context("the server closed an HTTP connection")?;
        let mut request = Request::post(path)
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, content_type);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        let request = request.body(Body::from(body))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .context("sending an HTTP request")?;
        let status = response.status().as_u16();
        let answer = axum::body::to_bytes(Body::new(response.into_body()), MAX_ANSWER)
            .await
            .map_err(|e| anyhow!("reading an HTTP answer: {e}"))?;
        Ok((status, answer))
    }
}

/// What every request of the run carries to authenticate: with a user, a bearer token taken
/// once with its Basic credentials (every Basic request would be a UA attempt, and those are
/// limited per address).
pub async fn authorization(
    addr: &str,
    credentials: Option<&Credentials>,
) -> anyhow::Result<Option<String>> {
    let Some(credentials) = credentials else {
        return Ok(None);
    };
    let mut client = Client::connect(addr, Some(super::http::basic(credentials))).await?;
    let (status, answer) = client
        .post("/v1/tokens", "application/json", Vec::new())
        .await?;
    if status != 200 {
        bail!(
            "the server refused a token for {}@{}: {status} {}",
            credentials.name,
            credentials.tenant,
            String::from_utf8_lossy(&answer)
        );
    }
    let token: serde_json::Value = serde_json::from_slice(&answer).context("the token answer")?;
    let token = token["token"]
        .as_str()
        .ok_or_else(|| anyhow!("no token in the answer: {token}"))?;
    Ok(Some(format!("Bearer {token}")))
}

/// Opens the connections of the run.
pub async fn connect(
    addr: &str,
    count: usize,
    authorization: Option<String>,
) -> anyhow::Result<Vec<ClientHandle>> {
    futures::future::try_join_all((0..count).map(|_| Client::connect(addr, authorization.clone())))
        .await
        .map(|clients| clients.into_iter().map(ClientHandle).collect())
}

/// A connection opened by [`connect`], for [`report_load`].
pub struct ClientHandle(Client);

/// One report's JSON: `{"type":"CF","campaign":"bench","session":"j<conn>-<nanos>","cause":2}`.
fn report(body: &mut Vec<u8>, conn: usize, nanos: u64) {
    let mut text = String::with_capacity(80);
    let _ = write!(
        text,
        "{{\"type\":\"CF\",\"campaign\":\"{CAMPAIGN}\",\"session\":\"j{conn}-{nanos}\",\"cause\":2}}"
    );
    body.extend_from_slice(text.as_bytes());
}

/// Reports of a bulk answer that say 200, and the others (each line is one report's answer).
fn count_lines(answer: &[u8]) -> (u64, u64) {
    const OK: &[u8] = b"\"status\":200";
    let mut accepted = 0;
    let mut refused = 0;
    for line in answer.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if line.windows(OK.len()).any(|w| w == OK) {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    (accepted, refused)
}

/// One connection's load: requests of `lines` reports (`bulk`: to `/v1/reports/bulk`, else one
/// report to `/v1/reports`) until the window ends, each sent once the previous is answered,
/// paced to `rate` reports per second when given. Connection `conn` of `connections` starts
/// its schedule that share of one request's interval late, so that paced requests of many
/// reports are spread over time rather than sent by every connection at once.
pub async fn report_load(
    conn: usize,
    connections: usize,
    client: ClientHandle,
    bulk: Option<usize>,
    rate: Option<f64>,
    timing: Timing,
) -> anyhow::Result<ReporterStats> {
    let mut client = client.0;
    let (path, content_type, lines) = match bulk {
        Some(lines) => ("/v1/reports/bulk", "application/x-ndjson", lines),
        None => ("/v1/reports", "application/json", 1),
    };
    let mut stats = ReporterStats::new()?;
    let mut sent = 0u64;
    let mut last_nanos = 0u64;
    loop {
        if let Some(rate) = rate {
            // The schedule: the next request leaves once the ones before are due.
            let stagger = (conn * lines) as f64 / connections.max(1) as f64;
            let due = timing.load_start + Duration::from_secs_f64((sent as f64 + stagger) / rate);
            tokio::time::sleep_until(due.min(timing.end)).await;
        }
        if Instant::now() >= timing.end {
            break;
        }
        let started = Instant::now();
        let now = timing.nanos(started);
        let mut body = Vec::with_capacity(80 * lines);
        for i in 0..lines {
            last_nanos = now.max(last_nanos + 1);
            if i > 0 {
                body.push(b'\n');
            }
            report(&mut body, conn, last_nanos);
        }
        sent += lines as u64;
        let answered =
            tokio::time::timeout_at(timing.drain_end, client.post(path, content_type, body)).await;
        let (status, answer) = match answered {
            Err(_) => bail!("an HTTP request was not answered before the drain ended"),
            Ok(answered) => answered?,
        };
        let at = Instant::now();
        let (accepted, refused) = match (status, bulk) {
            (200, Some(_)) => count_lines(&answer),
            (200, None) => (1, 0),
            _ => (0, lines as u64),
        };
        if refused > 0 && stats.errors < LOGGED {
            tracing::warn!(
                "JSON load refused: {status} {}",
                String::from_utf8_lossy(&answer[..answer.len().min(500)])
            );
        }
        stats.errors += refused;
        stats.accepted_total += accepted;
        if timing.in_window(at) {
            stats.accepted += accepted;
            let micros = u64::try_from(at.duration_since(started).as_micros()).unwrap_or(u64::MAX);
            stats.answer_us.saturating_record(micros);
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_carries_its_send_time_in_its_session() {
        let mut body = Vec::new();
        report(&mut body, 3, 1_234_567);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["session"], "j3-1234567");
        assert_eq!(super::super::send_time(b"j3-1234567"), Some(1_234_567));
    }

    #[test]
    fn bulk_answers_are_counted_line_by_line() {
        let answer = b"{\"line\":1,\"status\":200,\"seq\":5}\n{\"line\":2,\"status\":409,\"ec\":412}\n{\"line\":3,\"status\":200}\n";
        assert_eq!(count_lines(answer), (2, 1));
    }
}
