//! Helpers shared by the store integration tests: a fresh place for a store of either backend,
//! the macro that runs a common test on both, and what the tests write (outcomes, call records,
//! persisted transactions).
//!
//! A common test is an `async fn(Kind)` that opens its stores through [`Place`] and uses them
//! as the service does, through [`Store`] (the `Backend` trait); [`on_both_backends!`] makes
//! it two tests, `<name>::sqlite` and `<name>::postgres`. The PostgreSQL one needs the server
//! named by `OZBUS_TEST_PG_URL`, and fails without it (see `pg_common::server_url`).
#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use ozbus::store::{
    Backend, CallRecord, Mutation, NewOutcome, Outcome, OutcomeClass, PersistedTransaction,
    RecordState, SqliteStore, Store, StoreError, StoreOptions,
};

use ozbus::store::postgres::PgStore;

use crate::pg_common::{self, TestDb};

/// Which backend a common test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn(Kind)` as two tests, `<name>::sqlite` and `<name>::postgres`,
/// under the given test attribute (`#[tokio::test]`, or with a multi-thread flavor).
#[allow(unused_macros)]
macro_rules! on_both_backends {
    (#[$test:meta] $($name:ident),+ $(,)?) => {$(
        mod $name {
            use $crate::store_common::Kind;

            #[$test]
            async fn sqlite() {
                super::$name(Kind::Sqlite).await
            }

            #[$test]
            async fn postgres() {
                super::$name(Kind::Postgres).await
            }
        }
    )+};
}
#[allow(unused_imports)]
pub(crate) use on_both_backends;

/// Where a test's store lives, new for the test: a temporary directory (SQLite's database,
/// PostgreSQL's node directory) and, for PostgreSQL, a database of its own. A store opened
/// again at the same place finds what the ones before it committed (a restart).
pub struct Place {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub db: Option<TestDb>,
}

impl Place {
    pub async fn new(kind: Kind) -> Place {
        let db = match kind {
            Kind::Sqlite => None,
            Kind::Postgres => Some(pg_common::database().await),
        };
        Place {
            kind,
            dir: tempfile::tempdir().unwrap(),
            db,
        }
    }

    /// The default options of a store at this place (change fields with `..place.options()`).
    pub fn options(&self) -> StoreOptions {
        StoreOptions {
            url: self.db.as_ref().map(|db| db.url.clone()),
            ..options(&self.dir)
        }
    }

    /// A store at this place, with the default options.
    pub async fn open(&self) -> Store {
        open_with(self.options()).await
    }
}

/// A store with `options` (made from a [`Place`]'s), holding the call book as the service's
/// would (on PostgreSQL it bids, alone on its database, and takes it at once).
pub async fn open_with(options: StoreOptions) -> Store {
    let store = Store::open(options).await.expect("open store");
    pg_common::hold_book(&*store).await;
    store
}

/// The options of a SQLite store in `dir`.
pub fn options(dir: &tempfile::TempDir) -> StoreOptions {
    StoreOptions {
        dir: dir.path().to_path_buf(),
        ..StoreOptions::default()
    }
}

/// A SQLite store in `dir`, for the tests of what only SQLite has.
pub fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(options(dir)).expect("open store")
}

/// The log reads of the tests: `read_after_bounded` without a bound in bytes.
pub trait ReadAfter {
    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<Outcome>>, StoreError>>;
}

impl ReadAfter for Store {
    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<Outcome>>, StoreError>> {
        self.read_after_bounded(after, limit, u64::MAX)
    }
}

/// A `Store`, or a backend the test opened itself (PostgreSQL's own tests).
pub trait AnyStore {
    fn backend(&self) -> &dyn Backend;
}

impl AnyStore for Store {
    fn backend(&self) -> &dyn Backend {
        &**self
    }
}

impl AnyStore for PgStore {
    fn backend(&self) -> &dyn Backend {
        self
    }
}

/// Appends `outcomes` in one batch; their seqs.
pub async fn append(store: &impl AnyStore, outcomes: Vec<NewOutcome>) -> Vec<u64> {
    store
        .backend()
        .submit(outcomes.into_iter().map(Mutation::Append).collect())
        .await
        .expect("commit")
}

/// What opening a store with the service's `request_tx` made of two rows stored without a TX
/// (tenant `t`): `p`, whose request names TX `old` (cursor 7), is found by it; `q`, whose
/// request the service cannot read, has no TX and is found by its PersistToken only.
pub async fn check_the_tx_filled_in(store: &impl AnyStore) {
    let store = store.backend();
    let found = store.find_transactions(b"t", None, b"old").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (&found[0].ps[..], &found[0].tx[..], found[0].cursor),
        (&b"p"[..], &b"old"[..], 7)
    );
    let unread = store
        .find_transactions(b"t", Some(b"q"), b"")
        .await
        .unwrap();
    assert_eq!(unread.len(), 1);
    assert!(unread[0].tx.is_empty());
}

/// A whole pass of `held_at_stop`, one row a step: what each step found.
pub async fn held_in_steps_of_one(store: &impl AnyStore) -> Vec<Vec<PersistedTransaction>> {
    let (mut steps, mut at) = (Vec::new(), 0);
    loop {
        let (rows, next) = store.backend().held_at_stop(at, 1).await.unwrap();
        steps.push(rows);
        match next {
            Some(next) => at = next,
            None => return steps,
        }
    }
}

pub fn seqs(outcomes: &[Arc<Outcome>]) -> Vec<u64> {
    outcomes.iter().map(|o| o.seq).collect()
}

pub fn b(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

/// A failure outcome of `tenant`/`cn` for session `si`, with everything optional left out.
pub fn outcome(tenant: &[u8], cn: &[u8], si: &[u8]) -> NewOutcome {
    NewOutcome::new(b(tenant), OutcomeClass::Failure, b(cn), b(si), 1)
}

/// Everything set, with bytes that are not UTF-8 and edge values.
pub fn full_outcome(n: u32) -> NewOutcome {
    NewOutcome {
        tenant: b(b"acme"),
        class: OutcomeClass::Success,
        cn: b(b"Sales\xff1"),
        an: Some(b(b"Jo\xe9")),
        si: Bytes::from(format!("si-{n}").into_bytes()),
        tn: Some(b(b"\x00\x01+44 20")),
        re: u16::MAX,
        ao: Some(0),
        dd: true,
        as_data: Some(b(&[0xc3, 0x28, 0x00, 0xfe])),
        co: Some(Bytes::new()),
        ba: Some(b(b"agent\x80")),
        bn: Some(b(b"0123")),
        bt: Some(b(b"2026-11-25 17:00")),
        dt: Bytes::from(vec![n as u8; (n as usize % 5) * 1000]),
    }
}

/// An outcome's size, roughly as retention counts it: what makes the byte bound of a read.
pub fn approximate_size(o: &NewOutcome) -> u64 {
    let optional = [&o.an, &o.tn, &o.as_data, &o.co, &o.ba, &o.bn, &o.bt];
    (o.tenant.len() + o.cn.len() + o.si.len() + o.dt.len()) as u64
        + optional
            .iter()
            .map(|v| v.as_ref().map_or(0, |b| b.len() as u64))
            .sum::<u64>()
}

/// A call record of tenant `t` for session `si`, with bytes that are not UTF-8.
pub fn record(si: &[u8], state: RecordState) -> CallRecord {
    CallRecord {
        tenant: b(b"t"),
        si: b(si),
        cn: b(b"Sales"),
        tn: Some(b(b"0123\xff")),
        preview_agent: None,
        agent: None,
        as_data: Some(b(b"\x00as")),
        dt: Some(Bytes::new()),
        state,
        created_ms: 1_700_000_000_000,
        expires_ms: Some(1_700_000_060_000),
        connected_ms: None,
    }
}

/// A held persisted transaction of tenant `t` with PersistToken `ps` and TX `a`.
pub fn transaction(ps: &[u8], cursor: u64) -> PersistedTransaction {
    PersistedTransaction {
        tenant: b(b"t"),
        ps: b(ps),
        tx: b(b"a"),
        request: b(b"EO\\TXa\\FO\\PS\xe9"),
        cursor,
        released_ms: None,
    }
}
