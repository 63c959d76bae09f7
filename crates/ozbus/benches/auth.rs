//! What a failed UA costs: for a user that exists (bad password) and one that does not. The two
//! must take the same time, or the time would tell which names exist; both verify one argon2id
//! hash with the parameters of `ozbus user hash`.
//!
//! `cargo bench -p ozbus --bench auth`

use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use ozbus::config::{AuthConfig, UserConfig};
use ozbus::core::auth::{hash_password, Credentials, Directory, Status};

fn failed_authentication(c: &mut Criterion) {
    let users = [UserConfig {
        tenant: "acme".into(),
        name: "crm".into(),
        password_hash: hash_password(b"the right one").unwrap(),
        pg: 2,
    }];
    // Never locked out, however many failures the benchmark makes.
    let auth = AuthConfig {
        lockout_failures: u32::MAX,
        ..AuthConfig::default()
    };
    let directory = Directory::new(&users, &auth).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut group = c.benchmark_group("failed UA");
    group.sample_size(30);
    for (label, name, expected) in [
        ("bad password", "crm", Status::BadPassword),
        ("unknown user", "nobody", Status::NoSuchUser),
    ] {
        let credentials = Credentials {
            tenant: Some(b"acme"),
            an: Some(name.as_bytes()),
            qi: None,
            pw: Some(b"a guess"),
        };
        assert_eq!(
            runtime.block_on(directory.authenticate(credentials, peer, 0)),
            expected
        );
        group.bench_function(label, |b| {
            b.iter(|| runtime.block_on(directory.authenticate(credentials, peer, 0)))
        });
    }
    group.finish();
}

criterion_group!(benches, failed_authentication);
criterion_main!(benches);
