//! The live dashboard at `/` in a real browser: Debian's chromium, headless, driven by
//! `tests/browser/dashboard.mjs` (playwright-core) against a real `ozbus serve` while this test
//! drives SDMP traffic. What a user sees is asserted there (see its top comment); here, what
//! the SDMP side observes: the connection holding the transaction ended from the page gets its
//! EF. Screenshots land in `target/artifacts/`.
//!
//! Needs `/usr/bin/chromium` (`apt-get install chromium`) and the script's `node_modules`
//! (`npm ci` in `crates/ozbus/tests/browser`); `scripts/test` sets up both. Without them this
//! test fails, saying so: it is never skipped.

mod server_common;
mod users_common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use server_common::{Client, ServerProcess};
use tokio::io::{AsyncBufReadExt, BufReader};
use users_common::{user, users_toml, PASSWORD};

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the browser script may take, all steps together (beyond the soak time).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `target/artifacts` of this workspace (or of `CARGO_TARGET_DIR`).
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("artifacts")
}

/// Fails, saying what to do, when the browser or the driver is missing.
fn check_prerequisites() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "the dashboard's browser test needs Debian's chromium at {CHROMIUM}: \
         `apt-get install -y chromium` (scripts/test installs it when it is missing)"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "the dashboard's browser test needs playwright-core: run `npm ci` in {} \
         (scripts/test does when node_modules is missing)",
        browser_dir().display()
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "the dashboard's browser test needs node (Debian's nodejs package)"
    );
}

/// Reports outcomes until `stop`: failed calls in two campaigns, calls that Joe completes in
/// Sales1, and now and then a completion by an agent without a call (refused, EC 410).
async fn drive_traffic(mut dialer: Client, stop: Arc<AtomicBool>) -> u64 {
    let mut sent = 0u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // A load that changes every second or so, for the chart to show.
        for i in 0..1 + (n / 300) % 4 {
            dialer
                .send(&format!(r"CF\CNRetention\SIr{n}-{i}\CA2"))
                .await;
        }
        dialer.send(&format!(r"CF\CNWinback\SIw{n}\CA3")).await;
        dialer.send(&format!(r"MC\CNSales1\TN0170{n:06}")).await;
        dialer
            .send(&format!(r"LC\CNSales1\TN0170{n:06}\ANJoe"))
            .await;
        dialer.send(r"TC\ANJoe\AO167").await;
        sent += 3 + (n / 300) % 4;
        if n.is_multiple_of(10) {
            dialer.send(r"TC\ANNobody\AO1").await;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    sent
}

/// Runs the browser script with `args` after the base URL and the artifact directory.
fn script(http: std::net::SocketAddr, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .arg(format!("http://{http}"))
        .arg(artifacts())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs")
}

/// Logs in over SDMP as `name@tenant`.
async fn login(client: &mut Client, tenant: &str, name: &str) {
    client
        .send(&format!(r"UA\TD{tenant}\AN{name}\PW{PASSWORD}"))
        .await;
    let us = client.recv().await;
    assert!(us.contains(r"\RS0"), "{us}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium() {
    check_prerequisites();
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(dir.path(), &[]);
    let http = server.http.expect("the HTTP listener");

    // crm: persisted, and released at once: its backlog grows with the traffic.
    let mut first = server.client().await;
    first.send(r"EO\TXcrm\PScrm\SO\FO\MO\TKo1").await;
    first.expect(&[r"MV\TKo1"]).await;
    drop(first);
    // audit: the same, never re-issued (a backlog that only grows, for the screenshots).
    let mut second = server.client().await;
    second.send(r"EO\TXaudit\PSaudit\SO\FO\TKo0").await;
    second.expect(&[r"MV\TKo0"]).await;
    drop(second);
    // billing: held by an SDMP connection that reads; the page ends it.
    let mut holder = server.client().await;
    holder.send(r"EO\TXbilling\CNSales1\SO\FO\TKo2").await;
    holder.expect(&[r"MV\TKo2"]).await;
    let holder = tokio::spawn(async move {
        // Every frame until its EF (OZ of Sales1 meanwhile), or the test's end.
        while let Some(frame) = holder.recv_within(Duration::from_secs(30)).await {
            if frame == r"EF\TXbilling" {
                return Some(frame);
            }
        }
        None
    });

    let artifacts = artifacts();
    let mut script = script(http, &[]);
    let mut lines = BufReader::new(script.stdout.take().expect("stdout")).lines();
    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = None;
    let mut reissued = None;
    let mut steps = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.expect("the script's output") {
            eprintln!("dashboard.mjs: {line}");
            let Some(step) = line.strip_prefix("step ") else {
                continue;
            };
            steps.push(step.to_string());
            match step {
                "ready" => {
                    let dialer = server.client().await;
                    traffic = Some(tokio::spawn(drive_traffic(dialer, stop.clone())));
                }
                "backlog-grew" => {
                    // Re-issued, paced at 3 outcomes a second: a roll-forward to watch.
                    let mut again = server.client().await;
                    again.send(r"EO\TXcrm\PScrm\SO\FO\MO\CS3\TKo3").await;
                    reissued = Some(tokio::spawn(async move {
                        while again.recv_within(Duration::from_secs(5)).await.is_some() {}
                    }));
                }
                _ => {}
            }
        }
    };
    // OZBUS_DASHBOARD_SOAK=<seconds> keeps the page under load that long before its
    // screenshot (for docs/dashboard.png).
    let soak: u64 = std::env::var("OZBUS_DASHBOARD_SOAK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    tokio::time::timeout(SCRIPT_TIMEOUT + Duration::from_secs(soak), read)
        .await
        .expect("the browser script finished in time");
    let status = script.wait().await.expect("node exits");
    stop.store(true, Ordering::Relaxed);
    let sent = match traffic {
        Some(task) => task.await.expect("traffic"),
        None => 0,
    };
    assert!(
        status.success(),
        "the browser script failed ({status}) after the steps {steps:?}; its output is above"
    );
    assert_eq!(steps, ["ready", "backlog-grew", "ended billing", "done"]);
    assert!(sent > 0, "no traffic was sent");
    let ef = tokio::time::timeout(Duration::from_secs(10), holder)
        .await
        .expect("the holder's task ends")
        .expect("holder");
    assert_eq!(
        ef.as_deref(),
        Some(r"EF\TXbilling"),
        "the SDMP connection holding billing got its end when the page ended it"
    );
    if let Some(task) = reissued {
        task.abort();
    }
    eprintln!(
        "dashboard test: {sent} outcomes reported, screenshots in {} ({:.1} s)",
        artifacts.display(),
        started.elapsed().as_secs_f64()
    );
    server.terminate();
}

/// With users configured the page asks for Basic credentials, and a supervisor sees its
/// tenant's outcomes and transactions only, while another tenant's flow too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_sees_its_tenant_only() {
    check_prerequisites();
    use ozbus::core::auth::pg;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("ozbus.toml");
    let users = [
        user("acme", "sup", pg::SUPERVISOR),
        user("acme", "ops", pg::ALL),
        user("other", "ops", pg::ALL),
    ];
    std::fs::write(&config, users_toml(&users)).unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let http = server.http.expect("the HTTP listener");

    // In each tenant: a transaction, and a dialer, named after its campaign.
    let mut clients = Vec::new();
    for (tenant, name) in [("acme", "AcmeSales"), ("other", "OtherSales")] {
        let mut holder = server.client().await;
        login(&mut holder, tenant, "ops").await;
        holder.send(&format!(r"EO\TX{name}\CNnothing\SO\TKo")).await;
        holder.expect(&[r"MV\TKo"]).await;
        let mut dialer = server.client().await;
        login(&mut dialer, tenant, "ops").await;
        clients.push((holder, dialer, name));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut holders = Vec::new();
    for (holder, mut dialer, name) in clients {
        holders.push(holder);
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                dialer.send(&format!(r"CF\CN{name}\SI{n}\CA2")).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    let mut script = script(
        http,
        &[&format!("sup@acme:{PASSWORD}"), "AcmeSales", "OtherSales"],
    );
    let mut lines = BufReader::new(script.stdout.take().expect("stdout")).lines();
    let mut steps = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.expect("the script's output") {
            eprintln!("dashboard.mjs: {line}");
            if let Some(step) = line.strip_prefix("step ") {
                steps.push(step.to_string());
            }
        }
    };
    tokio::time::timeout(SCRIPT_TIMEOUT, read)
        .await
        .expect("the browser script finished in time");
    let status = script.wait().await.expect("node exits");
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("dialer");
    }
    assert!(
        status.success(),
        "the browser script failed ({status}) after the steps {steps:?}; its output is above"
    );
    assert_eq!(steps, ["ready", "done"]);
    drop(holders);
    server.terminate();
}
