//! Helpers shared by the store integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use ozbus::store::{NewOutcome, OutcomeClass, SqliteStore, StoreOptions};

pub fn options(dir: &tempfile::TempDir) -> StoreOptions {
    StoreOptions {
        dir: dir.path().to_path_buf(),
        ..StoreOptions::default()
    }
}

pub fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(options(dir)).expect("open store")
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
