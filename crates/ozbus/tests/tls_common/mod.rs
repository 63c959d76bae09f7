//! Certificates for the TLS tests ([`Pki`], made with rcgen by the file sdmp-client's tests
//! share), the files a server reads them from, and the `[tls]` settings of a server that uses
//! them.
#![allow(dead_code)]

use std::path::Path;

use ozbus::config::Config;

// The certificates are made the way sdmp-client's own TLS tests make them.
#[path = "../../../sdmp-client/src/test_pki.rs"]
mod test_pki;
pub use test_pki::Pki;

impl Pki {
    /// Writes the server's files (cert, key, and the CA as client CA) into `dir`.
    pub fn install(&self, dir: &Path) {
        std::fs::write(dir.join("cert.pem"), &self.server_cert).unwrap();
        std::fs::write(dir.join("key.pem"), &self.server_key).unwrap();
        std::fs::write(dir.join("clients.pem"), &self.ca).unwrap();
    }
}

/// TLS listeners for both wire forms on free loopback ports, with the files [`Pki::install`]
/// wrote into `dir`; with `client_certificates`, clients must show one the CA signed.
pub fn tls_config(config: &mut Config, dir: &Path, client_certificates: bool) {
    config.tls.listen_8bit = Some("127.0.0.1:0".parse().unwrap());
    config.tls.listen_utf16 = Some("127.0.0.1:0".parse().unwrap());
    config.tls.cert = Some(dir.join("cert.pem"));
    config.tls.key = Some(dir.join("key.pem"));
    if client_certificates {
        config.tls.client_ca = Some(dir.join("clients.pem"));
    }
}
