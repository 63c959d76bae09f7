//! Which nodes are alive: this node's row in `nodes`, refreshed while its store is open.
//!
//! Owns: inserting this node's row at open, refreshing it every [`HEARTBEAT`] by the
//! database's clock (`ozbus_now_ms()`, never a node's own), marking it stopped at close,
//! removing rows of nodes long gone, the group numbers (`ozbus_commits`) of stopped nodes and
//! the TX claims (`active_transactions`) of nodes gone; and the node's directory ([`Place`]),
//! which says which
//! node ran in it before. A node is alive while its row is not stopped and was refreshed
//! within [`LEASE`]. A node that died without closing is gone once its row is that old, or at
//! once when a node starts in its directory (one node at a time runs in a directory: it is
//! locked). Never: decides anything about what a gone node held (the readers of `nodes` do),
//! and never fails the store: a refresh that cannot reach the database is tried again at the
//! next beat.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Context;
use crate::store::StoreError;

/// How often a node refreshes its row.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);

/// A node whose row was not refreshed for this long is not alive.
pub(crate) const LEASE: Duration = Duration::from_secs(15);

/// Rows of nodes gone for this long are removed (a missing row also means gone).
const FORGET_MS: i64 = 24 * 60 * 60 * 1000;

/// The file in a node's directory that names the node that last ran in it.
const NODE_FILE: &str = "ozbus-node";

/// A node's directory, locked for as long as this value lives.
#[derive(Debug)]
pub(crate) struct Place {
    dir: PathBuf,
    /// The node that ran here before, if one did.
    before: Option<i64>,
    _lock: File,
}

impl Place {
    /// Creates and locks `dir` (`StoreError::InUse` when another process holds it), and reads
    /// which node ran in it before.
    pub(crate) fn take(dir: &Path) -> Result<Place, StoreError> {
        let lock = crate::store::lock_dir(dir)?;
        let before = match std::fs::read_to_string(dir.join(NODE_FILE)) {
            Ok(text) => text.trim().parse().ok(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error.into()),
        };
        Ok(Place {
            dir: dir.to_path_buf(),
            before,
            _lock: lock,
        })
    }
}

/// Inserts this node's row (at open, before the store is used). The node that ran in `place`
/// before is marked stopped: it is gone, whatever its heartbeat says.
pub(crate) async fn register(
    client: &tokio_postgres::Client,
    node: i64,
    place: Option<&Place>,
) -> Result<(), StoreError> {
    if let Some(before) = place.and_then(|p| p.before) {
        client
            .execute(
                "UPDATE nodes SET stopped = true WHERE node = $1",
                &[&before],
            )
            .await?;
    }
    client
        .execute(
            "INSERT INTO nodes (node, started_ms, seen_ms) \
             VALUES ($1, ozbus_now_ms(), ozbus_now_ms())",
            &[&node],
        )
        .await?;
    if let Some(place) = place {
        std::fs::write(place.dir.join(NODE_FILE), format!("{node}\n"))?;
    }
    Ok(())
}

/// Refreshes this node's row every beat until `stop`.
pub(crate) async fn heartbeat(ctx: Arc<Context>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEARTBEAT) => {}
        }
        let beat = tokio::select! {
            () = stop.cancelled() => return,
            beat = beat(&ctx) => beat,
        };
        if let Err(error) = beat {
            tracing::debug!(%error, node = ctx.node, "node heartbeat failed; trying again");
        }
    }
}

async fn beat(ctx: &Context) -> Result<(), StoreError> {
    let client = ctx.pool.get().await.map_err(super::pool_error)?;
    // Only while not stopped: a node that another started in its place is gone for good.
    client
        .execute(
            "UPDATE nodes SET seen_ms = ozbus_now_ms() WHERE node = $1 AND NOT stopped",
            &[&ctx.node],
        )
        .await?;
    // Group numbers serve only their own node, to tell after a lost connection whether a
    // group committed; a stopped node never asks again.
    client
        .execute(
            "DELETE FROM ozbus_commits c USING nodes n WHERE c.node = n.node AND n.stopped",
            &[],
        )
        .await?;
    client
        .execute(
            "DELETE FROM nodes WHERE seen_ms < ozbus_now_ms() - $1",
            &[&FORGET_MS],
        )
        .await?;
    // The TX claims of nodes that are gone count for nothing; they go too (a seek per node
    // gone on `active_transactions_by_node`).
    client
        .execute(
            "DELETE FROM active_transactions WHERE node IN \
             (SELECT node FROM nodes WHERE stopped OR seen_ms < ozbus_now_ms() - $1)",
            &[&lease_ms()],
        )
        .await?;
    Ok(())
}

/// Marks this node stopped (at close), within a bounded time: a node that closes while the
/// database is away is found gone by its age instead.
pub(crate) async fn unregister(ctx: &Context) {
    let stopped = tokio::time::timeout(HEARTBEAT, async {
        let client = ctx.pool.get().await.map_err(super::pool_error)?;
        client
            .execute(
                "UPDATE nodes SET stopped = true, seen_ms = ozbus_now_ms() WHERE node = $1",
                &[&ctx.node],
            )
            .await?;
        client
            .execute(
                "DELETE FROM active_transactions WHERE node = $1",
                &[&ctx.node],
            )
            .await?;
        Ok::<_, StoreError>(())
    })
    .await;
    if !matches!(stopped, Ok(Ok(()))) {
        tracing::debug!(node = ctx.node, "could not mark this node stopped at close");
    }
}

/// Which nodes are gone, in brief: how many rows say so, and the latest time one of them was
/// seen. It changes when a node goes (or a day after, when its row is removed).
pub(crate) type Gone = (i64, i64);

pub(crate) async fn gone(client: &deadpool_postgres::Client) -> Result<Gone, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT count(*), coalesce(max(seen_ms), 0) FROM nodes \
             WHERE stopped OR seen_ms < ozbus_now_ms() - $1",
        )
        .await?;
    let row = client.query_one(&stmt, &[&lease_ms()]).await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// The lease in milliseconds, as the queries take it.
pub(crate) fn lease_ms() -> i64 {
    i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX)
}
