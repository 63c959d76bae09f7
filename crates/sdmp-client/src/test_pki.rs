//! Certificates for TLS tests, made with rcgen: a CA, a server certificate it signed for
//! `localhost` and 127.0.0.1, and a client certificate it signed, all as PEM.
//!
//! Owns only the making of the certificates: this crate's test server and the ozbus tests
//! (which include this file by its path) each add what they do with them.
//!
//! Never: uses anything but rcgen, so that it compiles wherever it is included.

/// A CA, a server certificate for localhost and 127.0.0.1, and a client certificate, as PEM.
pub struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl Pki {
    /// A fresh PKI; `name` names its CA (two PKIs never trust each other's certificates).
    pub fn new(name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let signed = |names: &[&str]| {
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = signed(&["localhost", "127.0.0.1"]);
        let (client_cert, client_key) = signed(&["a-client"]);
        Pki {
            ca: ca.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }
}
