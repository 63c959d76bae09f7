//! Retention on PostgreSQL: age and size limits of the log, and old idempotency keys.
//!
//! Owns: one bounded retention step (a transaction of its own on a pooled connection, at most
//! `TRIM_CHUNK` outcomes and as many keys), the advisory lock that lets one node at a time
//! apply retention, announcing what a step removed, and the periodic sweep. Never: writes
//! anything but deletions and the log's byte count, and never removes anything but a prefix
//! of the log (accepted_ms never decreases along it, whichever node appended), so the log
//! never has holes.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{pool_error, schema, Context, PgOptions};
use crate::store::rows::from_sql_u64;
use crate::store::writer::{now_ms, TrimStep, KEY_GRACE_MS, TRIM_CHUNK};
use crate::store::StoreError;

/// How often each node tries to apply retention by itself.
const TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The newest outcome older than a cut-off: one backward seek on `outcomes_by_age`.
pub(crate) const NEWEST_EXPIRED: &str = "SELECT seq FROM outcomes WHERE accepted_ms < $1 \
     ORDER BY accepted_ms DESC, seq DESC LIMIT 1";

/// Retention limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    max_age_ms: i64,
    max_bytes: Option<u64>,
    /// Idempotency keys older than this are removed (the dedup window plus its grace).
    key_max_age_ms: i64,
}

impl Retention {
    pub(crate) fn new(options: &PgOptions) -> Retention {
        Retention {
            max_age_ms: i64::try_from(options.retention_max_age.as_millis()).unwrap_or(i64::MAX),
            max_bytes: options.retention_max_bytes,
            key_max_age_ms: i64::try_from(options.dedup_window.as_millis())
                .unwrap_or(i64::MAX)
                .saturating_add(KEY_GRACE_MS),
        }
    }
}

/// The periodic sweep: every few seconds, steps until nothing is due (or another node is at
/// it), until `stop`.
pub(crate) async fn sweep(ctx: Arc<Context>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(TRIM_INTERVAL) => {}
        }
        loop {
            let stepped = tokio::select! {
                () = stop.cancelled() => return,
                stepped = step(&ctx, now_ms(), false) => stepped,
            };
            match stepped {
                Ok(step) if step.more => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "store retention failed; will retry");
                    break;
                }
            }
        }
    }
}

/// One bounded retention step in a transaction of its own: idempotency keys past their
/// time, then a prefix of the log (by age relative to `now_ms`, then by size). `wait`: wait
/// for another node's step to end rather than skip this one.
pub(crate) async fn step(ctx: &Context, now_ms: i64, wait: bool) -> Result<TrimStep, StoreError> {
    let mut client = ctx.pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await?;
    let nothing = TrimStep {
        removed: 0,
        more: false,
    };
    if wait {
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&schema::RETENTION_LOCK],
        )
        .await?;
    } else {
        let locked: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1)",
                &[&schema::RETENTION_LOCK],
            )
            .await?
            .get(0);
        if !locked {
            // Another node is applying retention.
            return Ok(nothing);
        }
    }
    let retention = ctx.retention;
    let limit = i64::try_from(TRIM_CHUNK).unwrap_or(i64::MAX);

    let key_cutoff = now_ms.saturating_sub(retention.key_max_age_ms);
    let keys_removed = tx
        .execute(
            "DELETE FROM ingest_keys WHERE ctid = ANY(ARRAY(SELECT ctid FROM ingest_keys \
             WHERE accepted_ms < $1 ORDER BY accepted_ms LIMIT $2))",
            &[&key_cutoff, &limit],
        )
        .await?;
    let keys_more = i64::try_from(keys_removed).unwrap_or(i64::MAX) >= limit;

    let row = tx
        .query_one(
            "SELECT log_bytes, (SELECT min(seq) FROM outcomes) FROM meta WHERE id = 0",
            &[],
        )
        .await?;
    let log_bytes = from_sql_u64(row.get(0), "log_bytes")?;
    // What this node knows of the log's size: as of its last retention step.
    ctx.shared.stats.set_log_bytes(log_bytes);
    let Some(oldest) = row.get::<_, Option<i64>>(1) else {
        tx.commit().await?;
        return Ok(TrimStep {
            removed: 0,
            more: keys_more,
        });
    };
    // Seqs in [oldest, bound] are at most `limit` rows.
    let bound = oldest.saturating_add(limit - 1);
    let cutoff = now_ms.saturating_sub(retention.max_age_ms);
    // accepted_ms never decreases along the log, so everything up to the newest too-old
    // outcome is too old: one backward seek on outcomes_by_age.
    let newest_expired: Option<i64> = tx
        .query_opt(NEWEST_EXPIRED, &[&cutoff])
        .await?
        .map(|row| row.get(0));
    let mut upto = oldest - 1;
    let mut age_limited = false;
    if let Some(expired) = newest_expired {
        upto = expired.min(bound);
        age_limited = expired > bound;
    }
    let mut removed_bytes: u64 = if upto >= oldest {
        let sum: i64 = tx
            .query_one(
                "SELECT coalesce(sum(size), 0)::bigint FROM outcomes WHERE seq BETWEEN $1 AND $2",
                &[&oldest, &upto],
            )
            .await?
            .get(0);
        from_sql_u64(sum, "size")?
    } else {
        0
    };
    let mut size_limited = false;
    if let Some(max_bytes) = retention.max_bytes {
        let excess = log_bytes
            .saturating_sub(removed_bytes)
            .saturating_sub(max_bytes);
        if excess > 0 && upto < bound {
            let room = bound - upto;
            let rows = tx
                .query(
                    "SELECT seq, size FROM outcomes WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&upto, &room],
                )
                .await?;
            let mut freed = 0u64;
            let mut taken = 0i64;
            for row in &rows {
                if freed >= excess {
                    break;
                }
                upto = row.get(0);
                freed = freed.saturating_add(from_sql_u64(row.get(1), "size")?);
                taken += 1;
            }
            size_limited = freed < excess && taken == room;
            removed_bytes = removed_bytes.saturating_add(freed);
        }
    }
    if upto < oldest {
        tx.commit().await?;
        return Ok(TrimStep {
            removed: 0,
            more: keys_more,
        });
    }
    let removed = tx
        .execute(
            "DELETE FROM outcomes WHERE seq BETWEEN $1 AND $2",
            &[&oldest, &upto],
        )
        .await?;
    // The meta row's lock is taken last, so appends wait only for this commit. An empty log
    // holds no bytes, whatever the running count says.
    let removed_sql = i64::try_from(removed_bytes).unwrap_or(i64::MAX);
    tx.execute(
        "UPDATE meta SET log_bytes = CASE WHEN last_seq <= $1 THEN 0 \
         ELSE greatest(log_bytes - $2, 0) END WHERE id = 0",
        &[&upto, &removed_sql],
    )
    .await?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&schema::CHANNEL, &format!("t {} {upto}", ctx.node)],
    )
    .await?;
    tx.commit().await?;
    ctx.shared.publish_trimmed(from_sql_u64(upto, "seq")?);
    Ok(TrimStep {
        removed,
        more: age_limited || size_limited || keys_more,
    })
}
