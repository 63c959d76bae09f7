//! A throw-away PostgreSQL cluster of the test's own, run with `scripts/pg-cluster` (as
//! `scripts/test` runs its cluster; as root the script runs PostgreSQL as the `postgres` user),
//! so that the chaos may restart it and take it away: started in a temporary directory,
//! restarted as a crash would (`restart`), stopped and started again on the same port (`halt`,
//! `resume`), and removed when dropped, however the test ends.
//!
//! Owns: the cluster's directory and URL, and running the script on it, always with a time
//! limit. Never: touches another cluster (the one `OZBUS_TEST_PG_URL` names included), or
//! leaves its cluster running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::blocking;

/// The script, beside the workspace's other scripts.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg-cluster");
/// A restart (crash recovery included) or a resume must be done within this.
const SCRIPT_PATIENCE: Duration = Duration::from_secs(90);

pub struct PgCluster {
    /// The cluster's directory (the script creates it, and removes it at `stop`).
    dir: PathBuf,
    /// The temporary directory that holds it; removed after the cluster is stopped.
    _parent: tempfile::TempDir,
    /// The database the nodes share: `postgres://ozbus@127.0.0.1:<port>/postgres`.
    pub url: String,
}

impl PgCluster {
    /// Creates and starts the cluster. Without PostgreSQL's server programs (or when it does
    /// not start) the error is the script's own message.
    pub fn start() -> Result<PgCluster, String> {
        let parent = tempfile::tempdir().map_err(|error| format!("temp dir: {error}"))?;
        let dir = parent.path().join("pg");
        let url = run_script("start", &dir)?;
        Ok(PgCluster {
            dir,
            _parent: parent,
            url: url.trim().to_owned(),
        })
    }

    /// `pg_ctl restart -m immediate`: every connection is cut, the database recovers as after
    /// a crash, on the same port; returns once it accepts connections.
    pub async fn restart(&self) -> Result<(), String> {
        self.command("restart").await
    }

    /// Stops the database at once (`-m immediate`), keeping its data.
    pub async fn halt(&self) -> Result<(), String> {
        self.command("halt").await
    }

    /// Starts the halted database again, on the same port; returns once it accepts
    /// connections.
    pub async fn resume(&self) -> Result<(), String> {
        self.command("resume").await
    }

    async fn command(&self, command: &'static str) -> Result<(), String> {
        let dir = self.dir.clone();
        blocking(
            SCRIPT_PATIENCE,
            &format!("scripts/pg-cluster {command}"),
            move || run_script(command, &dir),
        )
        .await?
        .map(drop)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(error) = run_script("stop", &self.dir) {
            eprintln!("removing the test's PostgreSQL cluster: {error}");
        }
    }
}

/// Runs `scripts/pg-cluster <command> <dir>`; its standard output, or its error message.
fn run_script(command: &str, dir: &Path) -> Result<String, String> {
    let output = Command::new(SCRIPT)
        .arg(command)
        .arg(dir)
        .output()
        .map_err(|error| format!("running {SCRIPT}: {error}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "scripts/pg-cluster {command} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
