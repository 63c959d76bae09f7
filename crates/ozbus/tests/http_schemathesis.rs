//! The OpenAPI document checked against the running server by schemathesis (every check: no
//! 5xx, no status, header, content type or body the document does not allow, schema-valid
//! reports never refused as malformed, schema-violating ones always refused).
//!
//! schemathesis comes from PyPI into `target/py` (scripts/test installs it); it may also be
//! named by `OZBUS_SCHEMATHESIS`. Its settings and hooks are in `tests/schemathesis/`.

mod server_common;

use std::path::PathBuf;
use std::process::Command;

use server_common::ServerProcess;

fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("OZBUS_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/py/bin/schemathesis")
}

#[test]
fn the_openapi_document_holds_for_the_running_server() {
    let program = schemathesis();
    assert!(
        program.exists(),
        "schemathesis is missing ({}): run scripts/test, which installs it into target/py \
         (python3 -m venv target/py && target/py/bin/pip install schemathesis)",
        program.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let addr = server.http.expect("HTTP listener");
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let output = Command::new(&program)
        .current_dir(&here)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["run", &format!("http://{addr}/openapi.json")])
        .args([
            "--checks",
            "all",
            "--max-examples",
            "20",
            "--generation-deterministic",
        ])
        .args(["--no-color", "--report-dir"])
        .arg(dir.path().join("report"))
        .output()
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&output.stdout);
    println!("{text}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{text}"
    );
    assert!(text.contains("passed"), "{text}");
}
