//! The tools over TLS and as users, run as the real binary against a server with users and TLS
//! listeners: `send` and `tail` as a user over TLS, `bench --addr` authenticating every
//! connection, a client certificate, a refused user (exit status 1, the RS in words), and
//! plain and TLS mixed up.

mod tls_common;
mod users_common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use ozbus::config::Config;
use ozbus::server::RunningServer;
use sdmp::WireForm;
use sdmp_client::{Connection, Credentials, CONFIRM_WAIT};
use tokio::process::Command;

use tls_common::{tls_config, Pki};
use users_common::{user, PASSWORD};

/// Every run of the binary ends within this.
const LIMIT: Duration = Duration::from_secs(30);

struct Server {
    server: RunningServer,
    dir: tempfile::TempDir,
}

impl Server {
    /// Users of two tenants, TLS listeners for both wire forms, plain ones beside them.
    async fn start() -> Server {
        Self::start_with(false).await
    }

    /// [`start`](Self::start); with `client_certificates`, TLS clients must show a certificate
    /// the test's CA signed (written as client.pem and client.key).
    async fn start_with(client_certificates: bool) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("tools");
        pki.install(dir.path());
        for (file, pem) in [
            ("ca.pem", &pki.ca),
            ("client.pem", &pki.client_cert),
            ("client.key", &pki.client_key),
        ] {
            std::fs::write(dir.path().join(file), pem).unwrap();
        }
        let mut config = Config::for_test(&dir.path().join("data"));
        config.users = vec![
            user("acme", "dialer", 8),
            user("acme", "crm", 2),
            user("acme", "bench", 8 | 2),
            user("globex", "dialer", 8),
        ];
        tls_config(&mut config, dir.path(), client_certificates);
        let server = RunningServer::start(config).await.unwrap();
        Server { server, dir }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn tls_8bit(&self) -> String {
        self.server.tls_addr_8bit().unwrap().to_string()
    }

    fn tls_utf16(&self) -> String {
        self.server.tls_addr_utf16().unwrap().to_string()
    }

    /// `<tool> --addr <addr> --tls --ca-file <the CA>`, then `rest`.
    fn tls_args(&self, tool: &str, addr: &str, rest: &[&str]) -> Vec<String> {
        let ca = self.ca_file().to_string_lossy().into_owned();
        let head = [tool, "--addr", addr, "--tls", "--ca-file", &ca];
        words(&[&head[..], rest].concat())
    }

    /// A plain connection, logged in as `tenant`/`name`.
    async fn logged_in(&self, tenant: &str, name: &str) -> Connection {
        let addr = self.server.addr_8bit().to_string();
        let mut conn = Connection::connect(&addr, WireForm::Bits8).await.unwrap();
        let credentials = Credentials {
            tenant: tenant.into(),
            name: name.into(),
            password: PASSWORD.into(),
        };
        conn.log_in(&credentials, CONFIRM_WAIT).await.unwrap();
        conn
    }
}

/// `ozbus <args>` with `password` in OZBUS_PASSWORD (none: unset), nothing on standard input.
fn ozbus(args: &[String], password: Option<&str>) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ozbus"));
    command
        .args(args)
        .env("OZBUS_LOG", "warn")
        .env_remove("OZBUS_ADDR")
        .env_remove("OZBUS_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(password) = password {
        command.env("OZBUS_PASSWORD", password);
    }
    command
}

/// Runs `command` to its end (bounded).
async fn output(command: &mut Command) -> Output {
    tokio::time::timeout(LIMIT, command.output())
        .await
        .expect("the tool ended in time")
        .expect("the tool ran")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|word| word.to_string()).collect()
}

/// `--user` and `--user-tenant` of the users every test has.
const DIALER: [&str; 4] = ["--user", "dialer", "--user-tenant", "acme"];
const CRM: [&str; 4] = ["--user", "crm", "--user-tenant", "acme"];

#[tokio::test]
async fn send_over_tls_as_a_user_prints_the_mv_in_both_wire_forms() {
    let server = Server::start().await;
    for (addr, utf16, si) in [
        (server.tls_8bit(), false, "1"),
        (server.tls_utf16(), true, "2"),
    ] {
        let cf = format!(r"CF\CA2\CNs\SI{si}\TK{si}");
        let mut rest = vec!["--wait", "0.3"];
        if utf16 {
            rest.push("--utf16");
        }
        rest.extend(DIALER);
        rest.push(&cf);
        let out = output(&mut ozbus(
            &server.tls_args("send", &addr, &rest),
            Some(PASSWORD),
        ))
        .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("MV\\TK{si}\n"));
    }
    server.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tail_over_tls_as_a_user_shows_its_tenants_outcome() {
    let server = Server::start().await;
    let rest = [&CRM[..], &["--raw", "--count", "1", "--tx", "t1"]].concat();
    let tail = ozbus(
        &server.tls_args("tail", &server.tls_8bit(), &rest),
        Some(PASSWORD),
    )
    .spawn()
    .unwrap();
    let mut acme = server.logged_in("acme", "dialer").await;
    let mut globex = server.logged_in("globex", "dialer").await;
    // The tail's EO may not be in yet: report until it has shown one. Each round reports an
    // outcome of the other tenant first, which the tail must never show.
    let reporting = async {
        for n in 1.. {
            globex
                .send(format!(r"CF\CA2\CNs\SIg{n}").as_str())
                .await
                .unwrap();
            acme.send(format!(r"CF\CA2\CNs\SIa{n}").as_str())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let out = tokio::select! {
        out = tokio::time::timeout(LIMIT, tail.wait_with_output()) => out.expect("tail ended in time").unwrap(),
        () = reporting => unreachable!("reports forever"),
    };
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.starts_with(r"OZ\TXt1\TDacme\CNs\SIa") && shown.ends_with("\\RE2\\DT\n"),
        "{shown}"
    );
    server.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bench_against_a_tls_server_authenticates_every_connection() {
    let server = Server::start().await;
    let rest = [
        "--user",
        "bench",
        "--user-tenant",
        "acme",
        "--duration",
        "0.5",
        "--connections",
        "2",
        "--subscribers",
        "1",
        "--json",
    ];
    let out = output(&mut ozbus(
        &server.tls_args("bench", &server.tls_8bit(), &rest),
        Some(PASSWORD),
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["accepted"].as_u64().unwrap() > 0, "{report}");
    assert!(report["delivered"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");

    // JSON ingest as the same user, over the (plain, loopback) HTTP listener: a bearer token is
    // taken once and sent with every request (Basic on each would be a rate-limited UA each).
    let http = server.server.http_addr().unwrap().to_string();
    let mut json_rest = rest.to_vec();
    json_rest.extend([
        "--ingest",
        "json,json-bulk:20",
        "--http-addr",
        &http,
        "--http-connections",
        "2",
        "--sse",
        "1",
    ]);
    let out = output(&mut ozbus(
        &server.tls_args("bench", &server.tls_8bit(), &json_rest),
        Some(PASSWORD),
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let phases: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(phases.len(), 2, "{phases:?}");
    for (report, ingest) in phases.iter().zip(["json", "json-bulk:20"]) {
        assert_eq!(report["ingest"], ingest, "{report}");
        assert!(report["accepted"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(report["errors"], 0, "{report}");
        assert!(report["sse"]["delivered"].as_u64().unwrap() > 0, "{report}");
    }

    // Without --addr there is nothing to log in to.
    let in_process = words(&["bench", "--user", "bench", "--user-tenant", "acme"]);
    let out = output(&mut ozbus(&in_process, Some(PASSWORD))).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("are for a server given with --addr"),
        "{}",
        text(&out.stderr)
    );
    server.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refused_user_is_exit_status_1_with_the_status_in_words() {
    let server = Server::start().await;
    let addr = server.tls_8bit();
    let send = |user: &str, tenant: &str| {
        let rest = [
            "--user",
            user,
            "--user-tenant",
            tenant,
            r"CF\CA2\CNs\SI9\TK9",
        ];
        server.tls_args("send", &addr, &rest)
    };
    let tail = server.tls_args("tail", &addr, &[&CRM[..], &["--count", "1"]].concat());
    let cases = [
        (send("dialer", "acme"), Some("wrong"), "RS 2 (bad password)"),
        (
            send("nobody", "acme"),
            Some(PASSWORD),
            "RS 1 (user does not exist)",
        ),
        (tail, Some("wrong"), "RS 2 (bad password)"),
        // No OZBUS_PASSWORD and no terminal: the password is the first line of standard
        // input, here none.
        (
            send("dialer", "acme"),
            None,
            "no password for --user dialer",
        ),
    ];
    for (words, password, says) in cases {
        let out = output(&mut ozbus(&words, password)).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{words:?}: {stderr}");
        assert!(stderr.contains(says), "{words:?}: {stderr}");
        assert_eq!(text(&out.stdout), "", "nothing was sent, nothing shown");
    }
    // A refusal names the user, the tenant and the status.
    let out = output(&mut ozbus(&send("dialer", "acme"), Some("wrong"))).await;
    assert!(
        text(&out.stderr)
            .contains("not authenticated as dialer in tenant acme: RS 2 (bad password)"),
        "{}",
        text(&out.stderr)
    );
    server.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn plain_and_tls_mixed_up_fail_with_a_clear_message() {
    let server = Server::start().await;
    let rest = [&DIALER[..], &[r"CF\CA2\CNs\SI7\TK7"]].concat();
    let plain_to_tls = words(&[&["send", "--addr", &server.tls_8bit()][..], &rest].concat());
    let plain_addr = server.server.addr_8bit().to_string();
    let tls_to_plain = server.tls_args("send", &plain_addr, &rest);
    for (words, says) in [
        (plain_to_tls, "the other end speaks TLS"),
        (tls_to_plain, "TLS handshake with 127.0.0.1:"),
    ] {
        let out = output(&mut ozbus(&words, Some(PASSWORD))).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{words:?}: {stderr}");
        assert!(stderr.contains(says), "{words:?}: {stderr}");
    }
    server.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_server_that_requires_client_certificates_takes_the_one_given() {
    let server = Server::start_with(true).await;
    let file = |name: &str| server.dir.path().join(name).to_string_lossy().into_owned();
    let (cert, key) = (file("client.pem"), file("client.key"));
    let send = |with_certificate: bool| {
        let mut rest = vec!["--wait", "0.3"];
        if with_certificate {
            rest.extend(["--client-cert", &cert, "--client-key", &key]);
        }
        rest.extend(DIALER);
        rest.push(r"CF\CA2\CNs\SI5\TK5");
        server.tls_args("send", &server.tls_8bit(), &rest)
    };
    let out = output(&mut ozbus(&send(true), Some(PASSWORD))).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "MV\\TK5\n");
    // Without one, the server ends the connection before the UA is answered.
    let out = output(&mut ozbus(&send(false), Some(PASSWORD))).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("authenticating to 127.0.0.1:"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");
    server.server.shutdown().await.unwrap();
}

/// A CA file that cannot be used is named in the error, before anything is sent.
#[tokio::test]
async fn an_unusable_ca_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad: &Path = &dir.path().join("ca.pem");
    std::fs::write(bad, "not a certificate").unwrap();
    let bad_ca = bad.to_string_lossy();
    let args = words(&[
        "send",
        "--addr",
        "127.0.0.1:1",
        "--tls",
        "--ca-file",
        &bad_ca,
        "VS",
    ]);
    let out = output(&mut ozbus(&args, None)).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("TLS settings: {}", bad.display())),
        "{stderr}"
    );
}
