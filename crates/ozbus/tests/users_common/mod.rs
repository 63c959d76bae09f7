//! Users for the tests that authenticate: one password for all of them, hashed once (hashing
//! is slow by design), and `[[users]]` entries as the configuration takes them, in process or
//! written into a configuration file for an `ozbus serve` process.
#![allow(dead_code)]

use std::sync::OnceLock;

use ozbus::config::UserConfig;

/// Every test user's password.
pub const PASSWORD: &str = "correct horse";

/// The hash of [`PASSWORD`], made once per test binary.
pub fn hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| ozbus::core::auth::hash_password(PASSWORD.as_bytes()).unwrap())
}

/// A user of `tenant` with the PG flags `pg` and the password [`PASSWORD`].
pub fn user(tenant: &str, name: &str, pg: u16) -> UserConfig {
    UserConfig {
        tenant: tenant.into(),
        name: name.into(),
        password_hash: hash().into(),
        pg,
    }
}

/// `users` as `[[users]]` tables of a TOML configuration file.
pub fn users_toml(users: &[UserConfig]) -> String {
    users
        .iter()
        .map(|user| {
            format!(
                "[[users]]\ntenant = {:?}\nname = {:?}\npassword_hash = {:?}\npg = {}\n",
                user.tenant, user.name, user.password_hash, user.pg
            )
        })
        .collect()
}
