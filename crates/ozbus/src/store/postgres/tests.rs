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

/// Keys stored before schema 3 had no seq: they are still used keys, found without one; keys
/// stored after it have theirs.
#[tokio::test]
async fn the_migration_to_schema_3_keeps_older_keys_without_a_seq() {
    let url = database("keys_seq").await;
    let config = schema::config(&url).unwrap();
    let (mut client, _driver) = schema::connect(&config, "ozbus-test").await.unwrap();
    schema::migrate(&mut client, &schema::MIGRATIONS[..2])
        .await
        .unwrap();
    let now = crate::store::writer::now_ms();
    client
        .execute(
            "INSERT INTO ingest_keys (tenant, key, accepted_ms) VALUES ('t', 'old', $1)",
            &[&now],
        )
        .await
        .unwrap();
    let store = PgStore::open(PgOptions::new(url)).await.unwrap();
    assert!(version(&client).await >= 3);
    // Only the call book's holder appends.
    store.advertise("test-node".into());
    let mut holder = store.book_holder();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        holder.wait_for(|h| matches!(h, crate::store::BookHolder::Me { .. })),
    )
    .await
    .expect("the book in time")
    .unwrap();
    assert_eq!(
        store.key_committed(b"t", b"old", now).await.unwrap(),
        Some(UsedKey { seq: None })
    );
    store
        .submit(vec![
            Mutation::Append(crate::store::NewOutcome {
                tenant: bytes::Bytes::from_static(b"t"),
                class: crate::store::OutcomeClass::Failure,
                cn: bytes::Bytes::from_static(b"c"),
                an: None,
                si: bytes::Bytes::from_static(b"1"),
                tn: None,
                re: 2,
                ao: None,
                dd: false,
                as_data: None,
                co: None,
                ba: None,
                bn: None,
                bt: None,
                dt: bytes::Bytes::new(),
            }),
            Mutation::RememberKey {
                tenant: bytes::Bytes::from_static(b"t"),
                key: bytes::Bytes::from_static(b"new"),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        store.key_committed(b"t", b"new", now).await.unwrap(),
        Some(UsedKey { seq: Some(1) })
    );
    store.close().await.unwrap();
}

/// A database of the version before the call book's lease gets it: the book held by nobody
/// (epoch 0), a secret of 64 hex digits, and the fence.
#[tokio::test]
async fn the_book_lease_comes_to_an_older_database() {
    let url = database("lease").await;
    let config = schema::config(&url).unwrap();
    let (mut client, _driver) = schema::connect(&config, "ozbus-test").await.unwrap();
    let lease = schema::MIGRATIONS
        .iter()
        .position(|sql| sql.contains("CREATE TABLE book_lease"))
        .unwrap();
    schema::migrate(&mut client, &schema::MIGRATIONS[..lease])
        .await
        .unwrap();
    schema::migrate(&mut client, schema::MIGRATIONS)
        .await
        .unwrap();
    assert_eq!(version(&client).await, schema::MIGRATIONS.len() as i64);
    let row = client
        .query_one(
            "SELECT epoch, node, addr, (SELECT secret FROM ozbus_cluster) FROM book_lease",
            &[],
        )
        .await
        .unwrap();
    let (epoch, node, addr, secret): (i64, Option<i64>, Option<String>, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((epoch, node, addr), (0, None, None));
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
    client
        .execute("SELECT ozbus_book_fence(0)", &[])
        .await
        .unwrap();
    let refused = client
        .execute("SELECT ozbus_book_fence(1)", &[])
        .await
        .unwrap_err();
    assert_eq!(refused.code().map(|code| code.code()), Some("OZ001"));
}

const MIGRATIONS_FOR_TEST: &[&str] = &[
    schema::MIGRATIONS[0],
    "CREATE TABLE migration_test (x integer)",
];

/// How PostgreSQL runs `sql` (with its parameters as given), seq scans and sorts priced out
/// of reach: whether the indexes the schema has can answer it.
async fn plan(client: &tokio_postgres::Client, sql: &str, params: &str) -> String {
    client
        .batch_execute("SET enable_seqscan = off; SET enable_sort = off")
        .await
        .unwrap();
    let statement = format!("PREPARE q AS {sql}");
    client.batch_execute(&statement).await.unwrap();
    let rows = client
        .query(&format!("EXPLAIN EXECUTE q{params}"), &[])
        .await
        .unwrap();
    client.batch_execute("DEALLOCATE q").await.unwrap();
    rows.iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[tokio::test]
async fn lookups_and_retention_seek_on_the_indexes() {
    let url = database("plans").await;
    let config = schema::config(&url).unwrap();
    let (mut client, _driver) = schema::connect(&config, "ozbus-test").await.unwrap();
    schema::migrate(&mut client, schema::MIGRATIONS)
        .await
        .unwrap();
    let keys = "('t'::bytea, 'c'::bytea, 'k'::bytea)";
    let by_si = plan(&client, read::LATEST_BY_SI, keys).await;
    assert!(by_si.contains("Backward using outcomes_by_si"), "{by_si}");
    let by_number = plan(&client, read::LATEST_BY_NUMBER, keys).await;
    for step in [
        "Backward using outcomes_by_tn",
        "Backward using outcomes_by_si",
        "using outcomes_pkey",
    ] {
        assert!(by_number.contains(step), "{step}: {by_number}");
    }
    let expired = plan(&client, retention::NEWEST_EXPIRED, "(5)").await;
    assert!(
        expired.contains("Backward using outcomes_by_age"),
        "{expired}"
    );
    // Persisted transactions are read one at a time, never by a scan of the table.
    let by_ps = plan(&client, read::FIND_BY_PS, "('t'::bytea, 'p'::bytea)").await;
    assert!(by_ps.contains("transactions_pkey"), "{by_ps}");
    let by_tx = plan(&client, read::FIND_BY_TX, "('t'::bytea, 'x'::bytea)").await;
    assert!(by_tx.contains("transactions_by_tx"), "{by_tx}");
    let released = plan(&client, read::RELEASED_BEFORE, "(5, 10)").await;
    assert!(released.contains("transactions_by_release"), "{released}");
    let held = plan(&client, owners::RELEASE_HELD_BY_GONE, "(0, 10, 1, 15000)").await;
    assert!(held.contains("transactions_by_id"), "{held}");
    // What nodes ask of each other's transactions: seeks too.
    let not_owned = plan(
        &client,
        owners::NOT_OWNED,
        "(ARRAY['t']::bytea[], ARRAY['p']::bytea[], 1)",
    )
    .await;
    assert!(not_owned.contains("transactions_pkey"), "{not_owned}");
    let active = plan(
        &client,
        owners::ACTIVE_ELSEWHERE,
        "('t'::bytea, 'x'::bytea, 1, 15000)",
    )
    .await;
    assert!(active.contains("active_transactions_pkey"), "{active}");
    let count = plan(&client, owners::COUNT_OF_TENANT, "('t'::bytea)").await;
    // A range of either index that leads with the tenant.
    assert!(count.contains("Index"), "{count}");
    // The keys of a group find their rows by the primary key, whatever the table holds.
    let outcome_arrays = [
        "bigint", "bytea", "smallint", "bytea", "bytea", "bytea", "bytea", "integer", "integer",
        "boolean", "bytea", "bytea", "bytea", "bytea", "bytea", "bytea",
    ]
    .map(|ty| format!("'{{}}'::{ty}[]"))
    .join(", ");
    let append = plan(
        &client,
        &writer::append_sql(),
        &format!(
            "(1, 1, 1, 0, 0, {outcome_arrays}, ARRAY['t']::bytea[], ARRAY['k']::bytea[], \
             ARRAY[1]::bigint[])"
        ),
    )
    .await;
    assert!(append.contains("ingest_keys_pkey"), "{append}");
    let list = plan(&client, read::LIST, "('t'::bytea, 'x'::bytea, 10)").await;
    assert!(list.contains("transactions_by_tx"), "{list}");
    let list_of_tenant = plan(
        &client,
        read::LIST_OF_TENANT,
        "('t'::bytea, 'x'::bytea, 10)",
    )
    .await;
    assert!(
        list_of_tenant.contains("transactions_by_tx"),
        "{list_of_tenant}"
    );
    for plan in [
        by_si,
        by_number,
        expired,
        by_ps,
        by_tx,
        released,
        held,
        list,
        list_of_tenant,
        not_owned,
        active,
        count,
    ] {
        assert!(
            !plan.contains("Sort") && !plan.contains("Seq Scan"),
            "{plan}"
        );
    }
}

/// The server-side keep-alive settings come after the `options` a URL gives, never instead.
#[test]
fn server_keepalives_keep_the_urls_options() {
    let given = schema::config("postgres://u@h/db?options=-c%20search_path%3Dozbus").unwrap();
    let options = given.get_options().unwrap();
    assert!(options.starts_with("-c search_path=ozbus "), "{options}");
    assert!(options.contains("-c tcp_keepalives_idle=5"), "{options}");
    let plain = schema::config("postgres://u@h/db").unwrap();
    assert!(plain
        .get_options()
        .unwrap()
        .starts_with("-c tcp_keepalives_idle=5"));
}

#[test]
fn options_never_show_the_password() {
    for (url, shown) in [
        (
            "postgres://ozbus:s3cret@db:5432/ozbus?sslmode=disable",
            "postgres://ozbus:***@db:5432/ozbus?sslmode=disable",
        ),
        ("postgres://ozbus@db/ozbus", "postgres://ozbus@db/ozbus"),
        (
            "host=db user=ozbus password=s3cret dbname=ozbus",
            "host=db user=ozbus password=*** dbname=ozbus",
        ),
    ] {
        let debug = format!("{:?}", PgOptions::new(url));
        assert!(
            debug.contains(shown) && !debug.contains("s3cret"),
            "{debug}"
        );
    }
}

#[tokio::test]
async fn history_reads_seek_on_the_indexes() {
    let url = database("history_plans").await;
    let config = schema::config(&url).unwrap();
    let (mut client, _driver) = schema::connect(&config, "ozbus-test").await.unwrap();
    schema::migrate(&mut client, schema::MIGRATIONS)
        .await
        .unwrap();
    let page = plan(
        &client,
        query::PAGE,
        "(1, 2, 't'::bytea, 'c'::bytea, 'a'::bytea, 'n'::bytea, 14, 10)",
    )
    .await;
    assert!(page.contains("using outcomes_pkey"), "{page}");
    let first = plan(&client, query::FIRST_AT, "(5)").await;
    assert!(first.contains("using outcomes_by_age"), "{first}");
    let call = plan(
        &client,
        query::CALL_OUTCOMES,
        "('t'::bytea, 'c'::bytea, 's'::bytea, 10)",
    )
    .await;
    assert!(call.contains("Backward using outcomes_by_si"), "{call}");
    let record = plan(&client, query::OPEN_RECORD, "('t'::bytea, 's'::bytea)").await;
    assert!(record.contains("using records_pkey"), "{record}");
    for plan in [page, first, record] {
        assert!(
            !plan.contains("Sort") && !plan.contains("Seq Scan"),
            "{plan}"
        );
    }
}

/// A node's data directory is its alone while its store is open; the node that starts in it
/// next marks the one before stopped at once (its heartbeat is fresh: it was killed).
#[tokio::test]
async fn a_data_directory_holds_one_node_and_names_the_one_before() {
    let url = database("place").await;
    let dir = tempfile::tempdir().unwrap();
    let options = PgOptions {
        dir: Some(dir.path().to_path_buf()),
        ..PgOptions::new(url.clone())
    };
    let first = PgStore::open(options.clone()).await.unwrap();
    let second = PgStore::open(options.clone()).await;
    assert!(matches!(second, Err(StoreError::InUse(_))), "{second:?}");
    let killed = first.node();
    // Gone without closing, as after SIGKILL: its row is fresh and not stopped.
    drop(first);
    let (client, _driver) = schema::connect(&schema::config(&url).unwrap(), "ozbus-test")
        .await
        .unwrap();
    let stopped = |node: i64| {
        let client = &client;
        async move {
            client
                .query_one("SELECT stopped FROM nodes WHERE node = $1", &[&node])
                .await
                .unwrap()
                .get::<_, bool>(0)
        }
    };
    assert!(!stopped(killed).await);
    // The lock went with the store: a node starts in the directory, and the one before is gone.
    let third = PgStore::open(options).await.unwrap();
    assert!(stopped(killed).await);
    assert!(!stopped(third.node()).await);
    third.close().await.unwrap();
}
