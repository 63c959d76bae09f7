//! Unit tests of the PostgreSQL store's internals (the behaviour seen through `PgStore` is
//! tested in `tests/pg_store.rs`). They need a PostgreSQL server: `OZBUS_TEST_PG_URL`.

use super::*;

fn server_url() -> String {
    std::env::var("OZBUS_TEST_PG_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "OZBUS_TEST_PG_URL is not set: the PostgreSQL store tests need a server. Run \
             `scripts/test`, which starts a throw-away cluster for them, or start one with \
             `scripts/pg-cluster start DIR` and export OZBUS_TEST_PG_URL=<the URL it prints>"
            )
        })
}

/// A new database of the test's own; its URL.
async fn database(tag: &str) -> String {
    let server = server_url();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("ozbus_unit_{tag}_{}_{nanos}", std::process::id());
    let (admin, driver) = schema::connect(&schema::config(&server).unwrap(), "ozbus-test")
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    drop(admin);
    let _ = driver.await;
    let mut config = schema::config(&server).unwrap();
    config.dbname(&name);
    // Back to a URL: the store is opened by one.
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    };
    format!(
        "host={host} port={} user={} dbname={name}",
        config.get_ports()[0],
        config.get_user().unwrap_or("postgres")
    )
}

async fn version(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT version FROM ozbus_schema", &[])
        .await
        .unwrap()
        .get(0)
}

/// A database at an older version is brought to the current one by the steps it lacks,
/// and one at a newer version is left alone.
#[tokio::test]
async fn an_older_schema_is_migrated_a_newer_refused() {
    let url = database("migrate").await;
    let config = schema::config(&url).unwrap();
    let (mut client, _driver) = schema::connect(&config, "ozbus-test").await.unwrap();
    let first = &MIGRATIONS_FOR_TEST[..1];
    schema::migrate(&mut client, first).await.unwrap();
    assert_eq!(version(&client).await, 1);
    // Again at the same version: nothing to do.
    schema::migrate(&mut client, first).await.unwrap();
    schema::migrate(&mut client, MIGRATIONS_FOR_TEST)
        .await
        .unwrap();
    assert_eq!(version(&client).await, 2);
    client
        .batch_execute("INSERT INTO migration_test (x) VALUES (1)")
        .await
        .unwrap();
    // This build knows version 1 only: version 2 is refused, untouched.
    let refused = schema::migrate(&mut client, first).await.unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::UnsupportedSchema {
                found: 2,
                supported: 1
            }
        ),
        "{refused}"
    );
    assert_eq!(version(&client).await, 2);
}

const MIGRATIONS_FOR_TEST: &[&str] = &[
    schema::MIGRATIONS[0],
    "CREATE TABLE migration_test (x integer)",
];
