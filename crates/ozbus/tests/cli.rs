//! The command line refuses what it cannot do, with a message and a non-zero exit.

mod server_common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use server_common::ServerProcess;

fn ozbus(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ozbus"))
        .args(args)
        .output()
        .expect("run ozbus");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `ozbus serve` with stderr going to a pipe, as under a service manager or a log
/// collector, until it is listening, then stops it with SIGTERM; returns what it logged.
fn serve_and_stop(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ozbus"))
        .args(["serve", "--listen-8bit", "127.0.0.1:0"])
        .args([
            "--listen-utf16",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(extra)
        .env("OZBUS_LOG", "info")
        // Either would turn colour off by itself; the test is about the pipe.
        .env_remove("NO_COLOR")
        .env_remove("OZBUS_LOG_JSON")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ozbus serve");
    let mut ready = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("ready line");
    assert!(ready.starts_with("ozbus listening"), "{ready:?}");
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(stopped.success());
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success(), "{:?}", output.status);
    String::from_utf8(output.stderr).expect("logs are UTF-8")
}

#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let logs = serve_and_stop(&[]);
    // The start and the stop were logged: the check below is not about an empty capture.
    assert!(logs.contains("listening"), "{logs}");
    assert!(logs.contains("SIGTERM: shutting down"), "{logs}");
    assert!(!logs.contains("\x1b["), "{logs:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let logs = serve_and_stop(&["--log-json"]);
    assert!(!logs.contains("\x1b["), "{logs:?}");
    let mut messages = Vec::new();
    for line in logs.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let message = value
            .as_object()
            .and_then(|o| o.get("fields")?.get("message")?.as_str())
            .unwrap_or_else(|| panic!("not a log event object: {line:?}"));
        messages.push(message.to_owned());
    }
    assert!(
        messages.iter().any(|m| m.ends_with("listening")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m == "SIGTERM: shutting down"),
        "{messages:?}"
    );
}

#[test]
fn a_bad_config_file_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ozbus.toml");
    std::fs::write(&path, "[server]\nlisten_8bits = \"127.0.0.1:1\"\n").unwrap();
    let (ok, stderr) = ozbus(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("unknown field `listen_8bits`"), "{stderr}");

    let (ok, stderr) = ozbus(&["serve", "--config", "/nonexistent/ozbus.toml"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot read config file /nonexistent/ozbus.toml"),
        "{stderr}"
    );
}

#[test]
fn a_data_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _running = ServerProcess::start_on_sqlite(dir.path(), &[]);
    let data = dir.path().to_str().unwrap();
    let (ok, stderr) = ozbus(&[
        "serve",
        "--data-dir",
        data,
        "--listen-8bit",
        "127.0.0.1:0",
        "--listen-utf16",
        "127.0.0.1:0",
        "--http-listen",
        "off",
    ]);
    assert!(!ok);
    assert!(stderr.contains("is in use by another ozbus"), "{stderr}");
}

#[test]
fn send_reports_an_unreachable_server() {
    let (ok, stderr) = ozbus(&["send", "--addr", "127.0.0.1:1", "DA"]);
    assert!(!ok);
    assert!(stderr.contains("connecting to 127.0.0.1:1"), "{stderr}");
}

#[tokio::test]
async fn send_exits_1_when_a_reply_is_an_er() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let addr = server.addr_8bit.to_string();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ozbus"))
        .args([
            "send",
            "--addr",
            &addr,
            "--wait",
            "0.5",
            r"EO\CNSales1\FO\SO",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "ER\\EC803\\MStransaction identifier (TX) missing\\FM\"EO\\CNSales1\\FO\\SO\"\n"
    );
}

#[tokio::test]
async fn send_takes_several_addresses_repeated_or_separated_by_commas() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let addr = server.addr_8bit.to_string();
    for list in [
        vec!["--addr", "127.0.0.1:1", "--addr", &addr],
        vec!["--server", "127.0.0.1:1,127.0.0.1:2", "--addr", &addr],
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ozbus"))
            .arg("send")
            .args(&list)
            .args(["--wait", "0.3", r"VS\VI0\TKup"])
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{list:?}: {output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout), "MV\\TKup\n");
    }
}
