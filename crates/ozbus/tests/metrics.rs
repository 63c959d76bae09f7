//! Prometheus metrics, as a scraper sees them.

mod server_common;

use std::time::Duration;

use server_common::ServerProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("answer in time")
    .expect("read");
    response
}

#[tokio::test]
async fn committed_outcomes_and_rejections_are_counted() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{port}");
    let server = ServerProcess::start(dir.path(), &["--metrics-listen", &metrics]);
    let mut c = server.client().await;
    c.send(r"CF\CA2\CNc\SI1").await;
    c.send(r"CF\CA2\CNc\SI2\TKm").await;
    c.expect(&[r"MV\TKm"]).await;
    c.send(r"EO\CNc\FO").await;
    assert!(c.recv().await.starts_with(r"ER\EC803"));

    let text = scrape(port).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("\nozbus_outcomes_committed_total 2\n"),
        "{text}"
    );
    assert!(
        text.contains("\nozbus_rejections_total{ec=\"803\"} 1\n"),
        "{text}"
    );
}
