//! Certificates for the TLS tests, made by the test with rcgen: a CA, a server certificate it
//! signed for `localhost` and 127.0.0.1, and a client certificate it signed, as PEM; and the
//! `[tls]` settings of a server that uses them.
#![allow(dead_code)]

use std::path::Path;

use ozbus::config::Config;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A CA, a server certificate for localhost and 127.0.0.1, and a client certificate, as PEM.
pub struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
        let (client_cert, client_key) = leaf(vec!["a-client".into()]);
        Pki {
            ca: ca.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

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
