//! Several nodes on one PostgreSQL database, each taking any client: one call reported through
//! three nodes makes one outcome, the call book's refusals hold across nodes, and the book
//! moves to another node when its holder stops. Needs `OZBUS_TEST_PG_URL` (as every
//! PostgreSQL test); each test has a database of its own.

mod pg_common;
mod server_common;

use std::time::Duration;

use ozbus::config::Config;
use ozbus::server::RunningServer;
use sdmp::WireForm;
use server_common::Client;

/// A node of the test's cluster: its own data directory, the test's database.
struct Node {
    server: RunningServer,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(url: &str) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_test(dir.path());
        config.store.url = Some(url.to_owned());
        let server = RunningServer::start(config).await.expect("node starts");
        Node { server, _dir: dir }
    }

    async fn client(&self) -> Client {
        Client::connect(self.server.addr_8bit(), WireForm::Bits8).await
    }
}

/// Sends `frame` (with TK) until it is answered with something other than EC 815 (no holder
/// yet), and returns that answer.
async fn settled(client: &mut Client, frame: &str) -> String {
    for _ in 0..40 {
        client.send(frame).await;
        let answer = client.recv().await;
        if !answer.starts_with(r"ER\EC815") {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no node took the call book for {frame}");
}

#[tokio::test]
async fn one_call_through_three_nodes_makes_one_outcome() {
    let db = pg_common::database().await;
    let (a, b, c) = (
        Node::start(&db.url).await,
        Node::start(&db.url).await,
        Node::start(&db.url).await,
    );
    let mut subscriber = b.client().await;
    subscriber.send(r"EO\CNSales1\TXall\FO\SO\TKe").await;
    subscriber.expect(&[r"MV\TKe"]).await;

    let (mut via_a, mut via_b, mut via_c) = (a.client().await, b.client().await, c.client().await);
    assert_eq!(
        settled(&mut via_a, r"MC\CNSales1\SIs1\TN0111\TK1").await,
        r"MV\TK1"
    );
    via_b.send(r"LC\CNSales1\SIs1\ANJoe\TK2").await;
    via_b.expect(&[r"MV\TK2"]).await;
    via_c.send(r"TC\ANJoe\AO167\TK3").await;
    via_c.expect(&[r"MV\TK3"]).await;
    subscriber
        .expect(&[r"OZ\TXall\CNSales1\ANJoe\SIs1\TN0111\RE10\AO167\DT"])
        .await;

    // The book's refusals hold whichever node a report comes through.
    via_a.send(r"MC\CNSales1\SIs2\TK4").await;
    via_a.expect(&[r"MV\TK4"]).await;
    via_c.send(r"MC\CNSales1\SIs2\TK5").await;
    let refused = via_c.recv().await;
    assert!(refused.starts_with(r"ER\EC412"), "{refused}");
    assert!(
        refused.contains(r#"FM"MC\CNSales1\SIs2\TK5""#),
        "the sender's own frame: {refused}"
    );
    via_b.send(r"LC\CNSales1\SIs2\ANAnn\TK6").await;
    via_b.expect(&[r"MV\TK6"]).await;
    via_a.send(r"LC\CNSales1\SIs3\ANAnn\TK7").await;
    let busy = via_a.recv().await;
    assert!(busy.starts_with(r"ER\EC414"), "{busy}");
    via_c.send(r"TC\ANAnn\AO2\TK8").await;
    via_c.expect(&[r"MV\TK8"]).await;
    subscriber
        .expect(&[r"OZ\TXall\CNSales1\ANAnn\SIs2\RE30\AO2\DT"])
        .await;
    // Exactly one outcome each: nothing else arrives.
    subscriber.expect_silence(Duration::from_millis(500)).await;

    // Over HTTP too, through every node: the answer carries the outcome's seq whichever node
    // decided it, and the refusal the holder's EC.
    let mut seqs = Vec::new();
    for (n, node) in [&a, &b, &c].into_iter().enumerate() {
        let url = format!("http://{}/v1/reports", node.server.http_addr().unwrap());
        let body = format!(r#"{{"type":"CF","campaign":"Sales1","session":"h{n}","cause":2}}"#);
        let (status, answer) = post(&url, &body).await;
        assert_eq!(status, 200, "{answer}");
        seqs.push(answer["seq"].as_u64().expect("seq"));
        let mc = r#"{"type":"MC","campaign":"Sales1","session":"s9"}"#;
        let (status, answer) = post(&url, mc).await;
        if n == 0 {
            assert_eq!(status, 200, "{answer}");
        } else {
            assert_eq!(
                (status, &answer["ec"]),
                (409, &serde_json::json!(412)),
                "{answer}"
            );
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for n in 0..seqs.len() {
        let oz = subscriber.recv().await;
        assert!(
            oz.starts_with(&format!(r"OZ\TXall\CNSales1\SIh{n}\RE")),
            "{oz}"
        );
    }
}

async fn post(url: &str, body: &str) -> (u16, serde_json::Value) {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn the_book_moves_to_another_node_when_its_holder_stops() {
    let db = pg_common::database().await;
    let a = Node::start(&db.url).await;
    let mut via_a = a.client().await;
    // The first node alone: it takes the book.
    assert_eq!(
        settled(&mut via_a, r"MC\CNSales1\SIm1\TK1").await,
        r"MV\TK1"
    );
    let b = Node::start(&db.url).await;
    let mut subscriber = b.client().await;
    subscriber.send(r"EO\CNSales1\TXall\FO\SO\XS\TKe").await;
    subscriber.expect(&[r"MV\TKe"]).await;
    let mut via_b = b.client().await;
    via_b.send(r"MC\CNSales1\SIm2\TK2").await;
    via_b.expect(&[r"MV\TK2"]).await;
    via_b.send(r"LC\CNSales1\SIm1\ANJoe\TK3").await;
    via_b.expect(&[r"MV\TK3"]).await;

    a.server.shutdown().await.expect("first node stops");
    // The second node takes the book over with every record the first one decided.
    let answer = settled(&mut via_b, r"TC\ANJoe\AO167\TK4").await;
    assert_eq!(answer, r"MV\TK4");
    let first = subscriber.recv().await;
    assert!(
        first.starts_with(r"OZ\TXall\CNSales1\ANJoe\SIm1\RE10\AO167\XS1\"),
        "{first}"
    );
    via_b.send(r"LC\CNSales1\SIm2\ANAnn\TK5").await;
    via_b.expect(&[r"MV\TK5"]).await;
    via_b.send(r"MC\CNSales1\SIm2\TK6").await;
    let refused = via_b.recv().await;
    assert!(refused.starts_with(r"ER\EC412"), "{refused}");
}

/// `ozbus bench --spread` over two nodes: reporters and subscribers on both, and every
/// subscriber receives what was reported through either node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_spreads_its_connections_over_the_nodes() {
    use ozbus::client::bench::{self, BenchArgs, Ingest};
    use ozbus::client::AccessArgs;

    let db = pg_common::database().await;
    let (a, b) = (Node::start(&db.url).await, Node::start(&db.url).await);
    // Reports wait for a holder; the bench counts a refusal as an error, so wait for one.
    let mut probe = a.client().await;
    assert_eq!(settled(&mut probe, r"MC\CNwarm\SIw\TK1").await, r"MV\TK1");
    let args = BenchArgs {
        addr: vec![
            a.server.addr_8bit().to_string(),
            b.server.addr_8bit().to_string(),
        ],
        spread: true,
        access: AccessArgs::default(),
        connections: 2,
        subscribers: 2,
        rate: 500,
        duration: 1.0,
        window: 100,
        json: false,
        roll_forward: None,
        idle: 0,
        stalled: 0,
        server_pid: None,
        sse: 0,
        ws: 0,
        http_addr: None,
        ingest: vec![Ingest::Sdmp],
        http_connections: 4,
    };
    let report = tokio::time::timeout(Duration::from_secs(60), bench::run(args, &mut Vec::new()))
        .await
        .expect("bench in time")
        .expect("bench")
        .remove(0);
    assert!(report.accepted > 0, "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    // Both subscribers (one per node) received about everything accepted (the window's edges
    // aside): each received what was reported through the other node too.
    assert!(report.delivered > report.accepted * 3 / 2, "{report:?}");
}

/// A link to the holder that goes silent (the holder's answers lost, its connection open) is
/// ended within seconds: the report on it has an unknown effect, so its sender's connection is
/// closed without an answer; the next report opens a new link and is answered.
#[tokio::test]
async fn a_silent_link_to_the_holder_is_ended() {
    let db = pg_common::database().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Other nodes reach the first one through a proxy that can lose its answers.
    let proxy = pg_common::Proxy::start(&format!("postgres://x@127.0.0.1:{port}/x")).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::for_test(dir.path());
    config.store.url = Some(db.url.clone());
    config.server.listen_8bit = ([127, 0, 0, 1], port).into();
    config.server.advertise = Some(format!("127.0.0.1:{}", proxy.port));
    let holder = RunningServer::start(config)
        .await
        .expect("first node starts");
    let mut via_a = Client::connect(holder.addr_8bit(), WireForm::Bits8).await;
    assert_eq!(
        settled(&mut via_a, r"MC\CNSales1\SIq1\TK1").await,
        r"MV\TK1"
    );
    let b = Node::start(&db.url).await;
    let mut via_b = b.client().await;
    via_b.send(r"CF\CNSales1\SIq2\CA2\TK2").await;
    via_b.expect(&[r"MV\TK2"]).await;

    proxy.set(pg_common::Mode::DropAnswers);
    via_b.send(r"CF\CNSales1\SIq3\CA2\TK3").await;
    let closed = tokio::time::timeout(Duration::from_secs(20), via_b.closed_by_server()).await;
    assert!(
        matches!(closed, Ok(true)),
        "the sender's connection is closed without an answer"
    );

    proxy.cut();
    let mut again = b.client().await;
    again.send(r"CF\CNSales1\SIq4\CA2\TK4").await;
    again.expect(&[r"MV\TK4"]).await;
}
