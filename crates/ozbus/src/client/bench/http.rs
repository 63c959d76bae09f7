//! The HTTP subscribers of `ozbus bench` (`--sse`, `--ws`): the same subscription as an SDMP
//! subscriber's (failure outcomes of the bench campaign), over Server-Sent Events or a
//! WebSocket, timed the same way (the SI of each outcome carries its send time), so that
//! their figures stand beside SDMP's from one run.
//!
//! Owns the client side of those streams, as cheap as it can be: the SSE stream is read over
//! plain HTTP/1.0 (the body is the event stream, ended by the server closing), events are cut
//! at blank lines and only the SI is looked for in each one's JSON, not parsed whole. Never:
//! reads anything but what a client of the documented API would, or holds more than one read
//! buffer per stream.

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use bytes::{Buf, BytesMut};
use futures::StreamExt;
use sdmp_client::Credentials;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::{latency_histogram, send_time, SubscriberStats, Timing, CAMPAIGN, SUBSCRIBE_WAIT};

/// How a subscriber receives its outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sse,
    Ws,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sse => "sse",
            Kind::Ws => "ws",
        }
    }
}

/// An open stream, confirmed (its `open` event or `opened` message arrived).
pub enum Subscriber {
    Sse { socket: TcpStream, buffer: BytesMut },
    Ws(Box<tokio_tungstenite::WebSocketStream<TcpStream>>),
}

/// The query of subscriber `index`'s stream in phase `phase` of the run.
fn query(kind: Kind, phase: usize, index: usize) -> String {
    format!(
        "transaction=bench-{}-{phase}-{index}&campaign={CAMPAIGN}&classes=failure",
        kind.name()
    )
}

pub(super) fn basic(credentials: &Credentials) -> String {
    let user = format!(
        "{}@{}:{}",
        credentials.name, credentials.tenant, credentials.password
    );
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user)
    )
}

/// Opens subscriber `index` of `kind` on the HTTP listener `addr`, and waits until the server
/// says its transaction is open.
pub async fn subscribe(
    kind: Kind,
    addr: &str,
    phase: usize,
    index: usize,
    credentials: Option<&Credentials>,
) -> anyhow::Result<Subscriber> {
    let opened = tokio::time::timeout(SUBSCRIBE_WAIT, async {
        match kind {
            Kind::Sse => open_sse(addr, query(kind, phase, index), credentials).await,
            Kind::Ws => open_ws(addr, query(kind, phase, index), credentials).await,
        }
    })
    .await;
    match opened {
        Ok(subscriber) => subscriber,
        Err(_) => bail!(
            "{} subscriber {index} not opened within {SUBSCRIBE_WAIT:?}",
            kind.name()
        ),
    }
}

async fn open_sse(
    addr: &str,
    query: String,
    credentials: Option<&Credentials>,
) -> anyhow::Result<Subscriber> {
    let mut socket = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the HTTP listener {addr}"))?;
    let _ = socket.set_nodelay(true);
    let authorization = credentials
        .map(|c| format!("authorization: {}\r\n", basic(c)))
        .unwrap_or_default();
    // HTTP/1.0: the body is the stream itself, no chunks to take apart.
    let request = format!(
        "GET /v1/stream?{query} HTTP/1.0\r\nhost: {addr}\r\naccept: text/event-stream\r\n{authorization}\r\n"
    );
    socket.write_all(request.as_bytes()).await?;
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        if socket.read_buf(&mut buffer).await? == 0 {
            bail!("the server closed the SSE stream before its headers");
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head.split(' ').nth(1).unwrap_or_default();
    if status != "200" {
        let body = String::from_utf8_lossy(&buffer[head_end + 4..]).into_owned();
        bail!("the server refused the SSE stream: {status} {body}");
    }
    buffer.advance(head_end + 4);
    let mut subscriber = Subscriber::Sse { socket, buffer };
    // The `open` event.
    loop {
        match next_block(&mut subscriber).await? {
            Some(block) if block.starts_with(b"event: open") => return Ok(subscriber),
            Some(_) => continue,
            None => bail!("the SSE stream ended before it opened"),
        }
    }
}

async fn open_ws(
    addr: &str,
    query: String,
    credentials: Option<&Credentials>,
) -> anyhow::Result<Subscriber> {
    let socket = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the HTTP listener {addr}"))?;
    let _ = socket.set_nodelay(true);
    let mut request = format!("ws://{addr}/v1/ws?{query}")
        .into_client_request()
        .context("the WebSocket request")?;
    if let Some(credentials) = credentials {
        request
            .headers_mut()
            .insert("authorization", basic(credentials).parse()?);
    }
    let (mut socket, _) = tokio_tungstenite::client_async(request, socket)
        .await
        .map_err(|e| anyhow!("opening the WebSocket: {e}"))?;
    match socket.next().await {
        Some(Ok(Message::Text(text))) if text.as_str().starts_with("{\"opened\"") => {
            Ok(Subscriber::Ws(Box::new(socket)))
        }
        other => bail!("the WebSocket did not open: {other:?}"),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The next block of an SSE stream (an event or a comment, without its blank line); `None`
/// once the server closed it.
async fn next_block(subscriber: &mut Subscriber) -> anyhow::Result<Option<BytesMut>> {
    let Subscriber::Sse { socket, buffer } = subscriber else {
        bail!("not an SSE stream");
    };
    loop {
        if let Some(end) = find(buffer, b"\n\n") {
            let block = buffer.split_to(end);
            buffer.advance(2);
            return Ok(Some(block));
        }
        if socket.read_buf(buffer).await? == 0 {
            return Ok(None);
        }
    }
}

/// The send time an outcome's JSON carries in its session (SI).
fn sent_at(json: &[u8]) -> Option<u64> {
    const SESSION: &[u8] = b"\"session\":\"";
    let start = find(json, SESSION)? + SESSION.len();
    let len = json[start..].iter().position(|&b| b == b'"')?;
    send_time(&json[start..start + len])
}

/// Reads outcomes until the window ends, timing each one by its SI.
pub async fn receive(
    mut subscriber: Subscriber,
    timing: Timing,
) -> anyhow::Result<SubscriberStats> {
    let mut stats = SubscriberStats {
        latency_us: latency_histogram()?,
        delivered: 0,
    };
    let mut count = |json: &[u8], now: Instant| {
        if timing.in_window(now) {
            stats.delivered += 1;
            if let Some(sent) = sent_at(json) {
                let micros = timing.nanos(now).saturating_sub(sent) / 1000;
                stats.latency_us.saturating_record(micros);
            }
        }
    };
    loop {
        let deadline = timing.end;
        if matches!(subscriber, Subscriber::Sse { .. }) {
            {
                let block =
                    match tokio::time::timeout_at(deadline, next_block(&mut subscriber)).await {
                        Err(_) => break,
                        Ok(block) => block?,
                    };
                let Some(block) = block else {
                    bail!("the server ended an SSE subscriber's stream");
                };
                let now = Instant::now();
                if block.starts_with(b"event: outcome") {
                    count(&block, now);
                } else if block.starts_with(b"event: end") {
                    bail!("the server ended an SSE subscription");
                }
            }
        } else if let Subscriber::Ws(socket) = &mut subscriber {
            {
                let message = match tokio::time::timeout_at(deadline, socket.next()).await {
                    Err(_) => break,
                    Ok(None) => bail!("the server closed a WebSocket subscriber"),
                    Ok(Some(message)) => message.map_err(|e| anyhow!("WebSocket: {e}"))?,
                };
                let now = Instant::now();
                match message {
                    Message::Text(text) if text.as_str().starts_with("{\"seq\"") => {
                        count(text.as_bytes(), now);
                    }
                    Message::Text(text) if text.as_str().starts_with("{\"ended\"") => {
                        bail!("the server ended a WebSocket subscription")
                    }
                    Message::Close(_) => bail!("the server closed a WebSocket subscriber"),
                    _ => {}
                }
            }
        }
    }
    drop(subscriber);
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_time_is_found_in_an_outcome_s_json() {
        let event = br#"event: outcome
id: 7
data: {"seq":7,"time":"t","campaign":"bench","session":"3-1234567","reason":2,"data":""}"#;
        assert_eq!(sent_at(event), Some(1_234_567));
        assert_eq!(sent_at(br#"{"seq":1}"#), None);
    }
}
