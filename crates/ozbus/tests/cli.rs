//! The command line refuses what it cannot do, with a message and a non-zero exit.

mod server_common;

use std::process::Command;

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
    let _running = ServerProcess::start(dir.path(), &[]);
    let data = dir.path().to_str().unwrap();
    let (ok, stderr) = ozbus(&[
        "serve",
        "--data-dir",
        data,
        "--listen-8bit",
        "127.0.0.1:0",
        "--listen-utf16",
        "127.0.0.1:0",
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
