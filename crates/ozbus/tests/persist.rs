//! PersistToken: transactions that outlive their connection and the server, roll-forward at the
//! client's rate, acknowledgements, takeover, EE, TTL and retention gaps.

mod server_common;

use std::time::{Duration, Instant};

use server_common::{Client, ServerProcess, TestServer};

/// Reports `n` failure outcomes of campaign `cn` (SI `<prefix><i>`), waiting for the last MV.
async fn report(client: &mut Client, cn: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let tk = if i + 1 == n { r"\TKlast" } else { "" };
        client
            .send(&format!(r"CF\CA2\CN{cn}\SI{prefix}{i}{tk}"))
            .await;
    }
    client.expect(&[r"MV\TKlast"]).await;
}

fn param<'a>(frame: &'a str, code: &str) -> Option<&'a str> {
    frame.split('\\').skip(1).find_map(|p| p.strip_prefix(code))
}

fn si(frame: &str) -> String {
    param(frame, "SI")
        .unwrap_or_else(|| panic!("no SI in {frame}"))
        .to_string()
}

#[tokio::test]
async fn a_persisted_transaction_buffers_while_away_and_resumes_with_any_tx() {
    let server = TestServer::start().await;
    let mut sub = server.client().await;
    sub.send(r"EO\TXa1\FO\PSp1\CS1000000\TKo").await;
    sub.expect(&[r"MV\TKo"]).await;
    let mut dialer = server.client().await;
    report(&mut dialer, "c", "live", 2).await;
    sub.expect(&[r"OZ\TXa1\CNc\SIlive0\RE2\DT", r"OZ\TXa1\CNc\SIlive1\RE2\DT"])
        .await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(200)).await;

    report(&mut dialer, "c", "away", 3).await;
    // Re-issue on a new connection, same TX: what was missed, then live.
    let mut sub = server.client().await;
    sub.send(r"EO\TXa1\FO\PSp1\CS1000000").await;
    sub.expect(&[
        r"OZ\TXa1\CNc\SIaway0\RE2\DT",
        r"OZ\TXa1\CNc\SIaway1\RE2\DT",
        r"OZ\TXa1\CNc\SIaway2\RE2\DT",
    ])
    .await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Re-issue with another TX and another filter: the new terms apply.
    report(&mut dialer, "other", "x", 1).await;
    report(&mut dialer, "c", "y", 1).await;
    let mut sub = server.client().await;
    sub.send(r"EO\TXa2\FO\CNc\PSp1\CS1000000").await;
    sub.expect(&[r"OZ\TXa2\CNc\SIy0\RE2\DT"]).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    // The old TX is free again, the new one is taken.
    let mut other = server.client().await;
    other.send(r"EO\TXa1\SO\TKfree").await;
    other.expect(&[r"MV\TKfree"]).await;
    other.send(r"EO\TXa2\SO").await;
    assert!(other.recv().await.starts_with(r"ER\EC809"));
}

#[tokio::test]
async fn a_reissue_takes_over_from_a_connection_that_still_holds_it() {
    let server = TestServer::start().await;
    let mut first = server.client().await;
    first.send(r"EO\TXold\FO\PSshared\TKo").await;
    first.expect(&[r"MV\TKo"]).await;
    let mut second = server.client().await;
    second.send(r"EO\TXnew\FO\PSshared\TKn").await;
    second.expect(&[r"MV\TKn"]).await;
    first.expect(&[r"EF\TXold"]).await;

    let mut dialer = server.client().await;
    report(&mut dialer, "c", "s", 1).await;
    second.expect(&[r"OZ\TXnew\CNc\SIs0\RE2\DT"]).await;
    first.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn ee_forgets_a_persisted_transaction_completely() {
    let server = TestServer::start().await;
    let mut sub = server.client().await;
    sub.send(r"EO\TXe\FO\PSgone").await;
    sub.send(r"EE\TXe\TKee").await;
    sub.expect(&[r"EF\TXe", r"MV\TKee"]).await;
    let mut dialer = server.client().await;
    report(&mut dialer, "c", "after", 2).await;
    // Same PS again: a new transaction at the end of the log, nothing buffered.
    sub.send(r"EO\TXe\FO\PSgone\TKagain").await;
    sub.expect(&[r"MV\TKagain"]).await;
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn with_xs_the_cursor_moves_only_on_xa_and_repeats_carry_the_same_xs() {
    let server = TestServer::start().await;
    let mut sub = server.client().await;
    sub.send(r"EO\TXq\FO\XS\PSack\CS1000000").await;
    let mut dialer = server.client().await;
    report(&mut dialer, "c", "e", 4).await;
    let got: Vec<String> = vec![
        sub.recv().await,
        sub.recv().await,
        sub.recv().await,
        sub.recv().await,
    ];
    let xs: Vec<u64> = got
        .iter()
        .map(|f| param(f, "XS").unwrap().parse().unwrap())
        .collect();
    // Acknowledge the first two, then vanish.
    sub.send(&format!(r"XA\TXq\XS{}\TKa", xs[1])).await;
    sub.expect(&[r"MV\TKa"]).await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut sub = server.client().await;
    sub.send(r"EO\TXq\FO\XS\PSack\CS1000000").await;
    for i in 2..4 {
        let again = sub.recv().await;
        assert_eq!(si(&again), si(&got[i]));
        assert_eq!(param(&again, "XS").unwrap().parse::<u64>().unwrap(), xs[i]);
    }
    sub.expect_silence(Duration::from_millis(300)).await;
    // XA on a transaction without PS and XS is 810.
    sub.send(r"EO\TXplain\FO").await;
    sub.send(r"XA\TXplain\XS1").await;
    assert!(sub.recv().await.starts_with(r"ER\EC810"));
}

#[tokio::test]
async fn xr_resumes_after_the_given_sequence_number() {
    let server = TestServer::start().await;
    let mut dialer = server.client().await;
    let mut probe = server.client().await;
    probe.send(r"EO\TXprobe\FO\XS").await;
    report(&mut dialer, "c", "r", 3).await;
    let first = probe.recv().await;
    let seq: u64 = param(&first, "XS").unwrap().parse().unwrap();
    let mut sub = server.client().await;
    sub.send(&format!(r"EO\TXx\FO\PSxr\CS1000000\XR{seq}"))
        .await;
    sub.expect(&[r"OZ\TXx\CNc\SIr1\RE2\DT", r"OZ\TXx\CNc\SIr2\RE2\DT"])
        .await;
}

/// Re-issues a transaction with `cs` over `n` buffered events; returns events per second
/// measured from the first to the last event after the initial burst.
async fn measured_rate(cs: u32, n: usize) -> f64 {
    let server = TestServer::start().await;
    let mut sub = server.client().await;
    sub.send(&format!(r"EO\TXr\FO\PSrate\CS{cs}\TKo")).await;
    sub.expect(&[r"MV\TKo"]).await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut dialer = server.client().await;
    report(&mut dialer, "c", "b", n).await;

    let mut sub = server.client().await;
    sub.send(&format!(r"EO\TXr\FO\PSrate\CS{cs}")).await;
    let burst = (cs / 10).max(1) as usize;
    let mut started = None;
    for i in 0..n {
        sub.recv().await;
        if i + 1 == burst {
            started = Some(Instant::now());
        }
    }
    let elapsed = started.unwrap().elapsed().as_secs_f64();
    (n - burst) as f64 / elapsed
}

#[tokio::test]
async fn roll_forward_is_paced_at_cs_events_per_second() {
    // At least 3 seconds each after the burst; margins are generous for a shared machine.
    for (cs, n) in [(10u32, 32usize), (100, 310), (1000, 3100)] {
        let rate = measured_rate(cs, n).await;
        eprintln!("CS{cs}: {rate:.1} events/s");
        assert!(rate <= cs as f64 * 1.10, "CS{cs} delivered {rate:.1}/s");
        assert!(
            rate >= cs as f64 * 0.70,
            "CS{cs} delivered only {rate:.1}/s"
        );
    }
}

#[tokio::test]
async fn live_events_during_a_roll_forward_queue_behind_the_backlog_in_order() {
    let server = TestServer::start().await;
    let mut sub = server.client().await;
    sub.send(r"EO\TXl\FO\PSlive\CS20\TKo").await;
    sub.expect(&[r"MV\TKo"]).await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut dialer = server.client().await;
    report(&mut dialer, "c", "old", 10).await;
    let mut sub = server.client().await;
    sub.send(r"EO\TXl\FO\PSlive\CS20").await;
    sub.expect(&[r"OZ\TXl\CNc\SIold0\RE2\DT"]).await;
    // While the backlog rolls forward at 20/s, new outcomes arrive.
    report(&mut dialer, "c", "new", 5).await;
    let mut order = Vec::new();
    for _ in 0..14 {
        order.push(si(&sub.recv().await));
    }
    let expected: Vec<String> = (1..10)
        .map(|i| format!("old{i}"))
        .chain((0..5).map(|i| format!("new{i}")))
        .collect();
    assert_eq!(order, expected);
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_persisted_transaction_and_its_cursor_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut sub = server.client().await;
    sub.send(r"EO\TXk\FO\XS\PScrash\CS1000000\TKo").await;
    sub.expect(&[r"MV\TKo"]).await;
    let mut dialer = server.client().await;
    report(&mut dialer, "c", "k", 3).await;
    let first = sub.recv().await;
    let xs = param(&first, "XS").unwrap().to_string();
    sub.send(&format!(r"XA\TXk\XS{xs}\TKa")).await;
    // The other two OZ may come before the MV: the acknowledgement is durable at the MV.
    while sub.recv().await != r"MV\TKa" {}
    server.kill();

    let server = ServerProcess::start(dir.path(), &[]);
    let mut dialer = server.client().await;
    report(&mut dialer, "c", "after", 1).await;
    let mut sub = server.client().await;
    sub.send(r"EO\TXk2\FO\XS\PScrash\CS1000000").await;
    let resumed: Vec<String> = vec![sub.recv().await, sub.recv().await, sub.recv().await];
    assert_eq!(
        resumed.iter().map(|f| si(f)).collect::<Vec<_>>(),
        vec!["k1", "k2", "after0"]
    );
}

#[tokio::test]
async fn events_lost_to_retention_are_announced_with_xg() {
    let server = TestServer::start_with(|c| c.store.retention = Duration::from_secs(1)).await;
    let mut sub = server.client().await;
    sub.send(r"EO\TXg\FO\XS\PSgap\CS1000000\TKo").await;
    sub.expect(&[r"MV\TKo"]).await;
    drop(sub);
    let mut dialer = server.client().await;
    let mut probe = server.client().await;
    probe.send(r"EO\TXprobe\FO\XS").await;
    report(&mut dialer, "c", "old", 3).await;
    let seqs: Vec<u64> = [probe.recv().await, probe.recv().await, probe.recv().await]
        .iter()
        .map(|f| param(f, "XS").unwrap().parse().unwrap())
        .collect();
    // The store applies retention on its own every few seconds.
    tokio::time::sleep(Duration::from_secs(7)).await;
    report(&mut dialer, "c", "new", 1).await;

    let mut sub = server.client().await;
    sub.send(r"EO\TXg\FO\XS\PSgap\CS1000000").await;
    assert_eq!(
        sub.recv().await,
        format!(r"XG\TXg\XF{}\XL{}", seqs[0], seqs[2])
    );
    assert_eq!(si(&sub.recv().await), "new0");
}

#[tokio::test]
async fn a_persisted_transaction_nobody_holds_past_its_ttl_is_forgotten() {
    let server =
        TestServer::start_with(|c| c.transactions.persist_ttl = Duration::from_secs(1)).await;
    let mut sub = server.client().await;
    sub.send(r"EO\TXt\FO\PSshort\TKo").await;
    sub.expect(&[r"MV\TKo"]).await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut dialer = server.client().await;
    report(&mut dialer, "c", "missed", 2).await;
    // Expiry is checked every half second.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut sub = server.client().await;
    sub.send(r"EO\TXt\FO\PSshort\TKagain").await;
    sub.expect(&[r"MV\TKagain"]).await;
    sub.expect_silence(Duration::from_millis(300)).await;
}

/// A re-issue with XR moves the stored cursor back to where the client asked, also below what
/// it acknowledged before; without XR, nothing moves it back (not even a restart).
#[tokio::test]
async fn xr_rewinds_the_stored_cursor_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut sub = server.client().await;
    sub.send(r"EO\TXw\FO\XS\PSrewind\CS1000000\TKo").await;
    sub.expect(&[r"MV\TKo"]).await;
    let mut dialer = server.client().await;
    report(&mut dialer, "c", "w", 3).await;
    let got: Vec<String> = vec![sub.recv().await, sub.recv().await, sub.recv().await];
    let xs: Vec<&str> = got.iter().map(|f| param(f, "XS").unwrap()).collect();
    sub.send(&format!(r"XA\TXw\XS{}\TKa", xs[2])).await;
    sub.expect(&[r"MV\TKa"]).await;
    // Read again from after the first event; the re-issue's MV says the rewind is durable.
    sub.send(&format!(r"EO\TXw\FO\XS\PSrewind\CS1000000\XR{}\TKr", xs[0]))
        .await;
    let mut frames = Vec::new();
    while frames.len() < 3 {
        frames.push(sub.recv().await);
    }
    assert!(frames.contains(&r"MV\TKr".to_string()), "{frames:?}");
    server.kill();

    let server = ServerProcess::start(dir.path(), &[]);
    let mut sub = server.client().await;
    sub.send(r"EO\TXw\FO\XS\PSrewind\CS1000000").await;
    let resumed = [sub.recv().await, sub.recv().await];
    assert_eq!(
        resumed.iter().map(|f| si(f)).collect::<Vec<_>>(),
        vec!["w1", "w2"]
    );
    sub.expect_silence(Duration::from_millis(300)).await;
}

// After a restart the server has read none of its persisted transactions: each is loaded
// from the store when a request names it. What a client sees is the same as if it had them all
// in memory.

/// Starts `ozbus serve` on `dir` with `config` (TOML) as its configuration file.
fn start_with_config(dir: &std::path::Path, config: &str) -> ServerProcess {
    let file = dir.join("ozbus.toml");
    std::fs::write(&file, config).unwrap();
    ServerProcess::start(&dir.join("data"), &["--config", file.to_str().unwrap()])
}

/// Opens the persisted transaction `EO\TX<tx>\FO\PS<ps>` and waits for its MV.
async fn open_persisted(client: &mut Client, tx: &str, ps: &str) {
    client
        .send(&format!(r"EO\TX{tx}\FO\PS{ps}\CS1000000\TKopen"))
        .await;
    client.expect(&[r"MV\TKopen"]).await;
}

#[tokio::test]
async fn after_a_restart_a_reissue_resumes_at_the_stored_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let (mut away, mut held) = (server.client().await, server.client().await);
    open_persisted(&mut away, "a", "away").await;
    open_persisted(&mut held, "h", "held").await;
    let mut dialer = server.client().await;
    report(&mut dialer, "c", "seen", 2).await;
    for (client, tx) in [(&mut away, "a"), (&mut held, "h")] {
        client
            .expect(&[
                &format!(r"OZ\TX{tx}\CNc\SIseen0\RE2\DT"),
                &format!(r"OZ\TX{tx}\CNc\SIseen1\RE2\DT"),
            ])
            .await;
    }
    // One lets go before the server stops, the other still holds its transaction then.
    drop(away);
    tokio::time::sleep(Duration::from_millis(300)).await;
    report(&mut dialer, "c", "missed", 2).await;
    held.expect(&[
        r"OZ\TXh\CNc\SImissed0\RE2\DT",
        r"OZ\TXh\CNc\SImissed1\RE2\DT",
    ])
    .await;
    assert!(server.terminate().success());

    let server = ServerProcess::start(dir.path(), &[]);
    let mut dialer = server.client().await;
    report(&mut dialer, "c", "after", 1).await;
    let mut away = server.client().await;
    away.send(r"EO\TXa\FO\PSaway\CS1000000").await;
    away.expect(&[
        r"OZ\TXa\CNc\SImissed0\RE2\DT",
        r"OZ\TXa\CNc\SImissed1\RE2\DT",
        r"OZ\TXa\CNc\SIafter0\RE2\DT",
    ])
    .await;
    away.expect_silence(Duration::from_millis(300)).await;
    // Held when the server stopped: its cursor was written at the stop, after what it received.
    let mut held = server.client().await;
    held.send(r"EO\TXh2\FO\PSheld\CS1000000").await;
    held.expect(&[r"OZ\TXh2\CNc\SIafter0\RE2\DT"]).await;
    held.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn after_a_restart_the_tx_of_a_persisted_transaction_nobody_named_yet_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let mut sub = server.client().await;
    open_persisted(&mut sub, "k", "p").await;
    drop(sub);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.terminate().success());

    let server = ServerProcess::start(dir.path(), &[]);
    let mut other = server.client().await;
    other.send(r"EO\TXk\FO\PSother").await;
    assert_eq!(
        other.recv().await,
        r#"ER\EC809\MSTX already names an active transaction\FM"EO\TXk\FO\PSother""#
    );
    other.send(r"EO\TXk\SO").await;
    assert!(other.recv().await.starts_with(r"ER\EC809\"));
    // Its own PS re-issues it, under its TX or another.
    other.send(r"EO\TXk\FO\PSp\TKmine").await;
    other.expect(&[r"MV\TKmine"]).await;
}

#[tokio::test]
async fn after_a_restart_a_tenant_at_its_persisted_limit_gets_814_for_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[limits]\npersisted_per_tenant = 3\n";
    let server = start_with_config(dir.path(), config);
    let mut sub = server.client().await;
    for i in 0..3 {
        open_persisted(&mut sub, &format!("t{i}"), &format!("p{i}")).await;
    }
    drop(sub);
    assert!(server.terminate().success());

    let server = start_with_config(dir.path(), config);
    let mut sub = server.client().await;
    sub.send(r"EO\TXt3\FO\PSp3").await;
    assert!(sub.recv().await.starts_with(r"ER\EC814\"));
    // A re-issue is not a new one; ending one makes room.
    sub.send(r"EO\TXt0\FO\PSp0\TKagain").await;
    sub.expect(&[r"MV\TKagain"]).await;
    sub.send(r"EE\TXt1\TKend").await;
    sub.expect(&[r"EF\TXt1", r"MV\TKend"]).await;
    sub.send(r"EO\TXt3\FO\PSp3\TKnew").await;
    sub.expect(&[r"MV\TKnew"]).await;
}

/// The TTL forgets persisted transactions nobody has named since the restart: one released
/// before the stop (its TTL runs from then), and one held when the server stopped (its TTL runs
/// from the restart, however long the server was down). A re-issue afterwards is a new
/// transaction, at the end of the log.
async fn the_ttl_forgets_transactions_nobody_named_after(stop: fn(ServerProcess)) {
    let dir = tempfile::tempdir().unwrap();
    let config = "[transactions]\npersist_ttl = \"2s\"\n";
    let server = start_with_config(dir.path(), config);
    let mut released = server.client().await;
    open_persisted(&mut released, "r", "released").await;
    drop(released);
    let mut held = server.client().await;
    open_persisted(&mut held, "h", "held").await;
    open_persisted(&mut held, "w", "waiting").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(server);
    drop(held);
    // Down for longer than the TTL.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let server = start_with_config(dir.path(), config);
    let mut dialer = server.client().await;
    report(&mut dialer, "c", "missed", 2).await;
    // Held at the stop: still there right after the restart.
    let mut waiting = server.client().await;
    waiting.send(r"EO\TXw\FO\PSwaiting\CS1000000").await;
    waiting
        .expect(&[
            r"OZ\TXw\CNc\SImissed0\RE2\DT",
            r"OZ\TXw\CNc\SImissed1\RE2\DT",
        ])
        .await;
    // Past the TTL of the restart, and the half second in which expiry is checked.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    for (tx, ps) in [("r", "released"), ("h", "held")] {
        let mut again = server.client().await;
        again
            .send(&format!(r"EO\TX{tx}\FO\PS{ps}\CS1000000\TKagain"))
            .await;
        again.expect(&[r"MV\TKagain"]).await;
        again.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn after_a_crash_the_ttl_forgets_transactions_nobody_named() {
    the_ttl_forgets_transactions_nobody_named_after(ServerProcess::kill).await;
}

/// A clean stop leaves what connections held as held, like a crash: its TTL starts again at the
/// restart.
#[tokio::test]
async fn after_a_clean_stop_the_ttl_forgets_transactions_nobody_named() {
    the_ttl_forgets_transactions_nobody_named_after(|server| {
        assert!(server.terminate().success());
    })
    .await;
}
