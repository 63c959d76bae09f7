//! Connecting to PostgreSQL and bringing the schema to the current version.
//!
//! Owns: connection settings (TCP keep-alive, application names), the schema's versions (the
//! `ozbus_schema` table) and their migration under an advisory lock, so that two nodes opening
//! one database at once never both migrate it. Never: reads or writes store data.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, NoTls};

use crate::store::StoreError;

/// Schema versions in order; `MIGRATIONS[n]` brings version n to n + 1. Append, never edit.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("schema_1.sql"),
    include_str!("schema_2.sql"),
    include_str!("schema_3.sql"),
    include_str!("schema_4.sql"),
    include_str!("schema_5.sql"),
];

/// Advisory lock keys (64-bit; "ozbus" in the high bytes, so they do not collide with keys
/// another application in the database is likely to use).
pub(crate) const MIGRATION_LOCK: i64 = 0x6f7a_6275_7300_0001;
/// Held (per retention step) by the one node that applies retention at a time.
pub(crate) const RETENTION_LOCK: i64 = 0x6f7a_6275_7300_0002;
/// Held (by its lease connection's session) by the node that holds the call book (see `book`).
pub(crate) const BOOK_LOCK: i64 = 0x6f7a_6275_7300_0003;

/// The channel every commit that moves the log is announced on (see `listen`).
pub(crate) const CHANNEL: &str = "ozbus_log";
/// The channel on which a node announces that it took or let go of the call book.
pub(crate) const BOOK_CHANNEL: &str = "ozbus_book";

/// What the server is told at every connection's start (after what the URL's `options`
/// asks): to probe an idle connection after 5 s, every 2 s, 3 times, and to give up on data
/// the client does not acknowledge within 10 s. So a node that vanished (its host gone, the
/// network cut) loses its sessions within about 15 s, and with them its locks: the call book's
/// advisory lock, and the row locks of a transaction it had open. Without, the server's
/// operating system would keep such a session for hours.
const SERVER_KEEPALIVES: &str = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 \
                                 -c tcp_keepalives_count=3 -c tcp_user_timeout=10000";

/// Parses the URL and sets what every connection of the store needs: keep-alive and a bound on
/// unacknowledged writes, so a connection to a database that went away (rather than closed the
/// connection) is found dead in seconds, not after the kernel's retransmission timeout; the
/// same on the server's side ([`SERVER_KEEPALIVES`]).
pub(crate) fn config(url: &str) -> Result<Config, StoreError> {
    let mut config: Config = url.parse()?;
    let options = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {SERVER_KEEPALIVES}"),
        _ => SERVER_KEEPALIVES.to_owned(),
    };
    config
        .options(&options)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10));
    Ok(config)
}

/// A connection of our own (the writer's, the listener's): the client, and the task that
/// drives the connection (ends when the client is dropped or the connection fails).
pub(crate) async fn connect(
    config: &Config,
    application_name: &str,
) -> Result<(Client, JoinHandle<()>), StoreError> {
    let mut config = config.clone();
    config.application_name(application_name);
    let (client, connection) = config.connect(NoTls).await?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "postgres connection ended");
        }
    });
    Ok((client, driver))
}

/// The first connection of a store: a database that does not exist yet is created (with the
/// URL's user as its owner, through the `postgres` maintenance database), when the user may;
/// otherwise the error says that it does not exist.
pub(crate) async fn connect_creating(
    config: &Config,
    application_name: &str,
) -> Result<(Client, JoinHandle<()>), StoreError> {
    match connect(config, application_name).await {
        Err(StoreError::Postgres(error))
            if error.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) =>
        {
            let name = config.get_dbname().unwrap_or_default().to_owned();
            let mut maintenance = config.clone();
            maintenance.dbname("postgres");
            let (admin, driver) = connect(&maintenance, application_name).await?;
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            match admin
                .batch_execute(&format!("CREATE DATABASE {quoted}"))
                .await
            {
                Ok(()) => tracing::info!(database = %name, "created the database"),
                // Another node created it meanwhile.
                Err(error)
                    if error.code()
                        == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
                Err(error) => return Err(error.into()),
            }
            drop(admin);
            let _ = driver.await;
            connect(config, application_name).await
        }
        other => other,
    }
}

/// Creates or migrates the schema. One transaction, holding [`MIGRATION_LOCK`]: a second node
/// opening at the same time waits, then finds the schema current. A database at a newer
/// version than this build knows is refused, untouched.
pub(crate) async fn migrate(client: &mut Client, migrations: &[&str]) -> Result<(), StoreError> {
    let supported = migrations.len() as i64;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS ozbus_schema (
             id      integer PRIMARY KEY CHECK (id = 0),
             version bigint NOT NULL
         )",
    )
    .await?;
    let found: i64 = tx
        .query_opt("SELECT version FROM ozbus_schema WHERE id = 0", &[])
        .await?
        .map(|row| row.get(0))
        .unwrap_or(0);
    if found > supported {
        return Err(StoreError::UnsupportedSchema { found, supported });
    }
    if found < 0 {
        return Err(StoreError::Corrupt(format!(
            "negative schema version {found}"
        )));
    }
    if found == supported {
        tx.commit().await?;
        return Ok(());
    }
    for sql in &migrations[found as usize..] {
        tx.batch_execute(sql).await?;
    }
    tx.execute(
        "INSERT INTO ozbus_schema (id, version) VALUES (0, $1) \
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        &[&supported],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        from = found,
        to = supported,
        "postgres store schema migrated"
    );
    Ok(())
}
