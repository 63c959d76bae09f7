//! Several nodes on one PostgreSQL database, each taking any client: one call reported through
//! three nodes makes one outcome, the call book's refusals hold across nodes, and the book
//! moves to another node when its holder stops; a persisted transaction re-issued on another
//! node moves there (the node that held it ends it with EF, also when it could not hear the
//! takeover at the time), a TX is unique across nodes, and `persisted_per_tenant` counts every
//! node's. Needs `OZBUS_TEST_PG_URL` (as every PostgreSQL test); each test has a database of
//! its own.

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
        Node::start_with(url, |_| {}).await
    }

    async fn start_with(url: &str, adjust: impl FnOnce(&mut Config)) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_test(dir.path());
        config.store.url = Some(url.to_owned());
        adjust(&mut config);
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
    use ozbus::client::bench::{self, BenchArgs};

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
        connections: 2,
        subscribers: 2,
        rate: 500,
        duration: 1.0,
        window: 100,
        http_connections: 4,
        ..BenchArgs::default()
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
    // The link is probed every 2 s and ended after 5 s of silence; a loaded machine gets
    // twice the patience of one read.
    let closed = via_b.closed_by_server().await || via_b.closed_by_server().await;
    assert!(
        closed,
        "the sender's connection is closed without an answer"
    );

    proxy.cut();
    let mut again = b.client().await;
    again.send(r"CF\CNSales1\SIq4\CA2\TK4").await;
    again.expect(&[r"MV\TK4"]).await;
}

/// `n` outcomes through `client` (CF of calls nobody registered: one outcome each), the last
/// one acknowledged.
async fn report(client: &mut Client, prefix: &str, n: usize) {
    for i in 0..n {
        let tk = if i + 1 == n { r"\TKlast" } else { "" };
        client.send(&format!(r"CF\CA2\CNc\SI{prefix}{i}{tk}")).await;
    }
    client.expect(&[r"MV\TKlast"]).await;
}

/// The value of `code` in `frame`.
fn param<'a>(frame: &'a str, code: &str) -> Option<&'a str> {
    frame.split('\\').skip(1).find_map(|p| p.strip_prefix(code))
}

/// The XS of an OZ.
fn seq(frame: &str) -> u64 {
    assert!(frame.starts_with(r"OZ\"), "not an OZ: {frame}");
    param(frame, "XS")
        .and_then(|xs| xs.parse().ok())
        .unwrap_or_else(|| panic!("no XS in {frame}"))
}

/// The newest node of the database (the one started last).
async fn newest_node(db: &pg_common::TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT max(node) FROM nodes", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_reissue_on_another_node_takes_the_transaction_over() {
    let db = pg_common::database().await;
    let a = Node::start(&db.url).await;
    let b = Node::start(&db.url).await;
    let mut held = a.client().await;
    held.send(r"EO\TXp\FO\XS\PSk\TKe").await;
    held.expect(&[r"MV\TKe"]).await;
    let mut dialer = a.client().await;
    report(&mut dialer, "one", 3).await;
    let seqs: Vec<u64> = [held.recv().await, held.recv().await, held.recv().await]
        .iter()
        .map(|frame| seq(frame))
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    // Acknowledged up to 2, durably (MV after the commit).
    held.send(r"XA\TXp\XS2\TKa").await;
    held.expect(&[r"MV\TKa"]).await;

    // Re-issued on the other node: it resumes after the stored cursor, and the node that
    // held it ends it there.
    let mut taker = b.client().await;
    taker.send(r"EO\TXp\FO\XS\PSk\CS1000000\TKr").await;
    let mut frames = vec![taker.recv().await, taker.recv().await];
    frames.sort();
    assert_eq!(frames[0], r"MV\TKr", "{frames:?}");
    assert_eq!(seq(&frames[1]), 3, "{frames:?}");
    held.expect(&[r"EF\TXp"]).await;

    // From now on, only the new owner delivers it.
    report(&mut dialer, "two", 2).await;
    assert_eq!(seq(&taker.recv().await), 4);
    assert_eq!(seq(&taker.recv().await), 5);
    held.expect_silence(Duration::from_millis(500)).await;
    taker.expect_silence(Duration::from_millis(100)).await;

    // The row is the new owner's: an XA through the first node moves nothing (it answers as
    // for any transaction of the tenant, but it never sent those events there).
    held.send(r"XA\TXp\XS5\TKb").await;
    held.expect(&[r"MV\TKb"]).await;
    taker.send(r"XA\TXp\XS5\TKc").await;
    taker.expect(&[r"MV\TKc"]).await;
    let cursor: i64 = db
        .client()
        .await
        .query_one("SELECT cursor FROM transactions WHERE ps = 'k'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(cursor, 5);
    // And back again: the second node's connection is told in turn.
    drop(held);
    let mut again = a.client().await;
    again.send(r"EO\TXp\FO\XS\PSk\TKs").await;
    again.expect(&[r"MV\TKs"]).await;
    taker.expect(&[r"EF\TXp"]).await;
    report(&mut dialer, "three", 1).await;
    assert_eq!(seq(&again.recv().await), 6);
    taker.expect_silence(Duration::from_millis(300)).await;

    // Ended through the other node: the node that holds it ends it too.
    taker.send(r"EE\TXp\TKz").await;
    taker.expect(&[r"EF\TXp", r"MV\TKz"]).await;
    again.expect(&[r"EF\TXp"]).await;
    report(&mut dialer, "four", 1).await;
    again.expect_silence(Duration::from_millis(300)).await;
}

/// Sends `frame` (with TK `t`) until it is answered MV: the other node's connection closes
/// asynchronously.
async fn accepted_soon(client: &mut Client, frame: &str) {
    for _ in 0..40 {
        client.send(frame).await;
        let answer = client.recv().await;
        if answer == r"MV\TKt" {
            return;
        }
        assert!(answer.starts_with(r"ER\EC809"), "{answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{frame} was never accepted");
}

#[tokio::test]
async fn a_tx_active_on_another_node_is_refused_until_it_ends() {
    let db = pg_common::database().await;
    let a = Node::start(&db.url).await;
    let b = Node::start(&db.url).await;
    let mut on_a = a.client().await;
    on_a.send(r"EO\TXplain\SO\TK1").await;
    on_a.send(r"EO\TXkept\FO\PSk\TK2").await;
    on_a.expect(&[r"MV\TK1", r"MV\TK2"]).await;

    let mut on_b = b.client().await;
    for frame in [
        r"EO\TXplain\SO",
        r"EO\TXplain\FO\PSother",
        r"EO\TXkept\SO",
        r"EO\TXkept\FO\PSother",
    ] {
        on_b.send(frame).await;
        let answer = on_b.recv().await;
        assert!(answer.starts_with(r"ER\EC809\"), "{frame}: {answer}");
    }
    // Refused, the EO left nothing behind: the TX is still the first node's.
    let mut other = a.client().await;
    other.send(r"EO\TXplain\SO").await;
    assert!(other.recv().await.starts_with(r"ER\EC809\"));

    // Once the first node's connection closed, its transaction without PS is gone; the
    // persisted one keeps its TX (until it is ended), and its PS re-issues it anywhere.
    drop(on_a);
    accepted_soon(&mut on_b, r"EO\TXplain\SO\TKt").await;
    on_b.send(r"EO\TXkept\SO").await;
    assert!(on_b.recv().await.starts_with(r"ER\EC809\"));
    on_b.send(r"EE\TXkept\TKe").await;
    on_b.expect(&[r"EF\TXkept", r"MV\TKe"]).await;
    on_b.send(r"EO\TXkept\SO\TKf").await;
    on_b.expect(&[r"MV\TKf"]).await;

    // The other way round, and a node that stops: its TX are free again.
    other.send(r"EO\TXplain\SO").await;
    assert!(other.recv().await.starts_with(r"ER\EC809\"));
    drop(on_b);
    b.server.shutdown().await.expect("the second node stops");
    accepted_soon(&mut other, r"EO\TXplain\SO\TKt").await;
    other.send(r"EO\TXkept\SO\TKg").await;
    other.expect(&[r"MV\TKg"]).await;
}

#[tokio::test]
async fn a_node_that_cannot_hear_pauses_and_ends_what_was_taken_over_meanwhile() {
    let db = pg_common::database().await;
    let a = Node::start(&db.url).await;
    let a_node = newest_node(&db).await;
    let b = Node::start(&db.url).await;
    let mut dialer = a.client().await;
    report(&mut dialer, "old", 20).await;
    // From the start of the log, at 2 a second: it has a backlog for a while.
    let mut held = a.client().await;
    held.send(r"EO\TXp\FO\XS\PSk\XR0\CS2\TKe").await;
    let mut first = Vec::new();
    while first.len() < 2 {
        let frame = held.recv().await;
        if frame != r"MV\TKe" {
            first.push(seq(&frame));
        }
    }
    assert_eq!(first, [1, 2]);

    // The first node's listener goes, and cannot come back (its first read waits for a lock).
    let admin = db.client().await;
    admin
        .batch_execute("BEGIN; LOCK TABLE meta IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let ended = db
        .client()
        .await
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            &[&format!("ozbus-listen-{a_node}")],
        )
        .await
        .unwrap();
    assert_eq!(ended.len(), 1, "the first node's listener");
    // What was on its way goes; then nothing while it cannot hear.
    while held.recv_within(Duration::from_millis(300)).await.is_some() {}
    held.expect_silence(Duration::from_millis(1000)).await;

    // Meanwhile the other node takes the transaction over (a write nobody locked out).
    let mut taker = b.client().await;
    taker.send(r"EO\TXp\FO\XS\PSk\CS1000000\TKr").await;
    let mut last = 0;
    let mut answered = false;
    while last < 20 || !answered {
        let frame = taker.recv().await;
        if frame == r"MV\TKr" {
            answered = true;
        } else {
            last = seq(&frame);
        }
    }
    // Paused, the first node delivers nothing of it...
    held.expect_silence(Duration::from_millis(1500)).await;
    // ... and once it hears again, it learns that it lost it.
    admin.batch_execute("ROLLBACK").await.unwrap();
    held.expect(&[r"EF\TXp"]).await;
    held.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn persisted_per_tenant_counts_the_transactions_of_every_node() {
    let db = pg_common::database().await;
    let limit = |config: &mut Config| config.limits.persisted_per_tenant = 2;
    let a = Node::start_with(&db.url, limit).await;
    let b = Node::start_with(&db.url, limit).await;
    let mut on_a = a.client().await;
    on_a.send(r"EO\TXp1\FO\PSk1\TK1").await;
    on_a.send(r"EO\TXp2\FO\PSk2\TK2").await;
    on_a.expect(&[r"MV\TK1", r"MV\TK2"]).await;
    let mut on_b = b.client().await;
    on_b.send(r"EO\TXp3\FO\PSk3\TK3").await;
    let refused = on_b.recv().await;
    assert!(refused.starts_with(r"ER\EC814\"), "{refused}");
    // Held or not: released ones count too.
    drop(on_a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    on_b.send(r"EO\TXp3\FO\PSk3\TK4").await;
    let refused = on_b.recv().await;
    assert!(refused.starts_with(r"ER\EC814\"), "{refused}");
    // A re-issue is not a new one; ending one makes room.
    on_b.send(r"EO\TXp1\FO\PSk1\TK5").await;
    on_b.expect(&[r"MV\TK5"]).await;
    on_b.send(r"EE\TXp2\TK6").await;
    on_b.expect(&[r"EF\TXp2", r"MV\TK6"]).await;
    on_b.send(r"EO\TXp3\FO\PSk3\TK7").await;
    on_b.expect(&[r"MV\TK7"]).await;
}

#[tokio::test]
async fn a_node_reads_a_released_transaction_from_the_store_each_time() {
    let db = pg_common::database().await;
    let a = Node::start(&db.url).await;
    let b = Node::start(&db.url).await;
    let mut dialer = a.client().await;
    let mut first = a.client().await;
    first.send(r"EO\TXp\FO\XS\PSk\TKe").await;
    first.expect(&[r"MV\TKe"]).await;
    report(&mut dialer, "one", 3).await;
    for want in 1..=3 {
        assert_eq!(seq(&first.recv().await), want);
    }
    first.send(r"XA\TXp\XS1\TKa").await;
    first.expect(&[r"MV\TKa"]).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Used on the other node meanwhile, which moves its cursor.
    let mut second = b.client().await;
    second.send(r"EO\TXp\FO\XS\PSk\CS1000000\TKe").await;
    let mut frames = vec![
        second.recv().await,
        second.recv().await,
        second.recv().await,
    ];
    frames.sort();
    assert_eq!(frames[0], r"MV\TKe");
    assert_eq!((seq(&frames[1]), seq(&frames[2])), (2, 3), "{frames:?}");
    second.send(r"XA\TXp\XS3\TKa").await;
    second.expect(&[r"MV\TKa"]).await;
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Back on the first node: it resumes where the other node left it, not where it did.
    let mut third = a.client().await;
    third.send(r"EO\TXp\FO\XS\PSk\CS1000000\TKe").await;
    third.expect(&[r"MV\TKe"]).await;
    report(&mut dialer, "two", 1).await;
    assert_eq!(seq(&third.recv().await), 4);
}

/// A node whose database cannot be reached refuses what it cannot decide without it (EC 816:
/// nothing was done) and goes on: it does not stop.
#[tokio::test]
async fn a_node_that_cannot_reach_the_database_refuses_and_goes_on() {
    let db = pg_common::database().await;
    let proxy = pg_common::Proxy::start(&db.url).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::for_test(dir.path());
    config.store.url = Some(proxy.url(&db.url));
    let node = RunningServer::start(config).await.expect("node starts");
    let mut client = Client::connect(node.addr_8bit(), WireForm::Bits8).await;
    assert_eq!(
        settled(&mut client, r"CF\CNSales1\SIu1\CA2\XKk1\TK1").await,
        r"MV\TK1"
    );
    drop(proxy);
    client.send(r"CF\CNSales1\SIu2\CA2\XKk2\TK2").await;
    let refused = client.recv().await;
    assert!(refused.starts_with(r"ER\EC816\"), "{refused}");
    client.send(r"VS\TK3").await;
    client.expect(&[r"DA", r"MV\TK3"]).await;
}

/// Calls that fall due close exactly once, whichever node holds the book then: records made
/// through both nodes expire (CE) after their holder stopped, closed by the node that took
/// the book over, one outcome each.
#[tokio::test]
async fn due_calls_close_once_after_the_book_moved() {
    let db = pg_common::database().await;
    let a = Node::start(&db.url).await;
    let mut via_a = a.client().await;
    assert_eq!(
        settled(&mut via_a, r"MC\CNSales1\SIe1\CE3\TK1").await,
        r"MV\TK1"
    );
    let b = Node::start(&db.url).await;
    let mut subscriber = b.client().await;
    subscriber.send(r"EO\CNSales1\TXdue\FO\TKe").await;
    subscriber.expect(&[r"MV\TKe"]).await;
    let mut via_b = b.client().await;
    via_b.send(r"MC\CNSales1\SIe2\CE3\TK2").await;
    via_b.expect(&[r"MV\TK2"]).await;
    a.server.shutdown().await.expect("the holder stops");

    let mut closed = vec![subscriber.recv().await, subscriber.recv().await];
    closed.sort();
    assert_eq!(
        closed,
        [
            r"OZ\TXdue\CNSales1\SIe1\RE0\DT",
            r"OZ\TXdue\CNSales1\SIe2\RE0\DT"
        ]
    );
    subscriber.expect_silence(Duration::from_secs(2)).await;
}
