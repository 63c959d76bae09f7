//! TLS for the SDMP listeners: the certificate chain and key from PEM files, optional client
//! certificates, and a reload that the next handshake sees while connections already up go on
//! undisturbed (the command line reloads on SIGHUP).
//!
//! Owns the current rustls configuration. Never: reads the files on the accept path (a reload
//! reads them once), or keeps a half-loaded configuration (a reload that fails keeps the old one).

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context as _;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// The TLS side of the listeners: what each new handshake uses.
pub struct Tls {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads the certificate chain, key and client CAs the settings name.
    pub fn load(settings: &TlsConfig) -> anyhow::Result<Tls> {
        Ok(Tls {
            current: RwLock::new(Arc::new(server_config(settings)?)),
            settings: settings.clone(),
        })
    }

    /// Reads the files again; new handshakes use them, established connections keep theirs.
    /// On an error the configuration in force stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = Arc::new(server_config(&self.settings)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn server_config(settings: &TlsConfig) -> anyhow::Result<ServerConfig> {
    let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
        anyhow::bail!("a TLS listener needs [tls] cert and key (PEM files)");
    };
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key in {}", key.display()))?;
    let provider = Arc::new(default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &settings.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(path)? {
                roots
                    .add(certificate)
                    .with_context(|| format!("a client CA in {}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("the client CAs in {}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, key)
        .with_context(|| format!("the certificate in {} and its key", cert.display()))
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    if chain.is_empty() {
        anyhow::bail!("no certificate in {}", path.display());
    }
    Ok(chain)
}
