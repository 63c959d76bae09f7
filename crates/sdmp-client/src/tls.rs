//! TLS for a client: whom it trusts, the certificate it shows, the name it expects.
//!
//! Owns: [`Tls`], a rustls client configuration made once (from PEM, or given whole by the
//! caller) and shared by every connection opened with it, and the server name a connection
//! verifies: the host part of the address it opens (a name or an IP address), unless
//! [`Tls::with_server_name`] says otherwise.
//!
//! Never: trusts anything it was not given. There is no fallback to the system's certificate
//! store: a client trusts the CA certificates it was handed (or the configuration it was
//! handed), so what a connection accepts never depends on the machine it runs on.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::error::Error;

/// How a connection speaks TLS. Cheap to clone: the configuration is shared.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The configuration holds keys; what identifies it here is enough.
        f.debug_struct("Tls")
            .field(
                "client_certificate",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Trusts the CA certificates in `ca` (PEM, one or more) to sign the server's certificate,
    /// and, for a server that asks for one, presents `client`: a certificate chain (PEM, the
    /// client's own certificate first) and its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(ca: &[u8], client: Option<(&[u8], &[u8])>) -> Result<Tls, Error> {
        let roots = roots(ca).map_err(|e| settings(format!("the CA certificates: {e}")))?;
        let identity = match client {
            None => None,
            Some((chain, key)) => Some((
                certificates(chain)
                    .map_err(|e| settings(format!("the client certificate: {e}")))?,
                private_key(key).map_err(|e| settings(format!("the client key: {e}")))?,
            )),
        };
        Self::build(roots, identity)
    }

    /// [`from_pem`](Self::from_pem) with the PEM read from files: `ca`, and `client` as
    /// (certificate chain, key). Errors name the file.
    pub fn from_pem_files(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Tls, Error> {
        fn from_file<T>(path: &Path, parse: fn(&[u8]) -> Result<T, String>) -> Result<T, Error> {
            let pem = std::fs::read(path)
                .map_err(|e| settings(format!("reading {}: {e}", path.display())))?;
            parse(&pem).map_err(|e| settings(format!("{}: {e}", path.display())))
        }
        let roots = from_file(ca, roots)?;
        let identity = match client {
            None => None,
            Some((chain, key)) => Some((
                from_file(chain, certificates)?,
                from_file(key, private_key)?,
            )),
        };
        Self::build(roots, identity)
    }

    /// A configuration made by the caller (other roots, another verifier, session resumption
    /// settings): used as it is.
    pub fn from_config(config: Arc<ClientConfig>) -> Tls {
        Tls {
            config,
            server_name: None,
        }
    }

    /// Verifies the server's certificate for `name` (a DNS name or an IP address) instead of
    /// the host part of the address connected to: for a server reached by an address its
    /// certificate does not name.
    pub fn with_server_name(mut self, name: &str) -> Result<Tls, Error> {
        self.server_name = Some(server_name(name)?);
        Ok(self)
    }

    /// The name the server's certificate must carry when connecting to `addr` (`host:port`).
    pub(crate) fn server_name_for(&self, addr: &str) -> Result<ServerName<'static>, Error> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => server_name(host(addr)),
        }
    }

    pub(crate) fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.config.clone())
    }

    fn build(
        roots: RootCertStore,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Tls, Error> {
        let builder = ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| settings(format!("protocol versions: {e}")))?
            .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| settings(format!("the client certificate and its key: {e}")))?,
        };
        Ok(Tls::from_config(Arc::new(config)))
    }
}

fn settings(reason: String) -> Error {
    Error::TlsSettings(reason)
}

/// The CA certificates of a PEM text, as trust anchors.
fn roots(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for authority in certificates(pem)? {
        roots.add(authority).map_err(|e| e.to_string())?;
    }
    Ok(roots)
}

/// Every certificate of a PEM text; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let all = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if all.is_empty() {
        return Err("no certificate (PEM) found".into());
    }
    Ok(all)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| e.to_string())
}

fn server_name(name: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(name.to_owned()).map_err(|_| Error::Invalid {
        what: "TLS server name",
        reason: format!("{name:?} is neither a DNS name nor an IP address"),
    })
}

/// The host of `host:port`, `[v6]:port`, or of an address without a port.
fn host(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((v6, _)) = rest.split_once(']') {
            return v6;
        }
    }
    match addr.rsplit_once(':') {
        // More than one colon and no brackets: an IPv6 address without a port.
        Some((host, _)) if !host.contains(':') => host,
        Some(_) => addr,
        None => addr,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use sdmp::{Frame, WireForm};

    use super::*;
    use crate::auth::Credentials;
    use crate::connection::{ConnectOptions, Connection};
    use crate::event::Event;
    use crate::resume::{ResumeFrom, ResumeOptions, ResumingSubscription};
    use crate::servers::Servers;
    use crate::session::{Session, SessionOptions};
    use crate::testing::{oz, read_text, subscribe, write_all, Pki, TestServer};
    use crate::Backoff;

    const WITHIN: Duration = Duration::from_secs(5);

    fn options(tls: Tls) -> ConnectOptions {
        ConnectOptions {
            connect_timeout: WITHIN,
            tls: Some(tls),
            ..ConnectOptions::default()
        }
    }

    /// A TLS server that echoes every frame.
    async fn echo(form: WireForm, pki: &Pki, client_certificates: bool) -> TestServer {
        TestServer::start_tls(form, pki, client_certificates, |mut conn| async move {
            while let Some(Ok(Frame::Message(frame))) = conn.next_frame().await {
                conn.send(&frame).await.expect("echo");
            }
        })
        .await
    }

    async fn round_trip(conn: &mut Connection, frame: &str) -> Option<String> {
        conn.send(frame).await.ok()?;
        match tokio::time::timeout(WITHIN, conn.next_frame()).await {
            Ok(Some(Ok(frame))) => Some(crate::frame_text(&frame).into_owned()),
            _ => None,
        }
    }

    /// `127.0.0.1:port` as `localhost:port`.
    fn by_name(addr: &str) -> String {
        addr.replace("127.0.0.1", "localhost")
    }

    #[tokio::test]
    async fn frames_go_both_ways_over_tls_to_a_name_or_an_ip_address() {
        let pki = Pki::new("one");
        for form in [WireForm::Bits8, WireForm::Utf16Le] {
            let server = echo(form, &pki, false).await;
            for addr in [server.addr.clone(), by_name(&server.addr)] {
                let mut conn = Connection::connect_with(&addr, form, &options(pki.client(false)))
                    .await
                    .unwrap_or_else(|e| panic!("{addr}: {}", e.with_causes()));
                assert!(conn.is_tls());
                assert_eq!(conn.peer(), addr);
                assert_eq!(
                    round_trip(&mut conn, "MV\\TKcafé").await.as_deref(),
                    Some("MV\\TKcafé")
                );
            }
        }
    }

    #[tokio::test]
    async fn the_halves_of_a_tls_connection_never_wait_for_each_other() {
        let pki = Pki::new("one");
        let server = echo(WireForm::Bits8, &pki, false).await;
        let conn =
            Connection::connect_with(&server.addr, WireForm::Bits8, &options(pki.client(false)))
                .await
                .unwrap();
        let (mut reader, mut writer) = conn.split();
        // The reader waits first, with nothing to read; the writer must still get through.
        let read = tokio::spawn(async move {
            use futures::StreamExt;
            let mut got = Vec::new();
            while got.len() < 100 {
                match reader.next().await {
                    Some(Ok(Frame::Message(frame))) => got.push(frame),
                    other => panic!("{other:?}"),
                }
            }
            got
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        for n in 0..100 {
            use futures::SinkExt;
            let frame = format!("VS\\VI{n}");
            tokio::time::timeout(WITHIN, writer.send(frame.as_str()))
                .await
                .expect("the write was not held up by the waiting read")
                .unwrap();
        }
        let got = tokio::time::timeout(WITHIN, read).await.unwrap().unwrap();
        assert_eq!(got[99], Bytes::from("VS\\VI99"));
    }

    #[tokio::test]
    async fn an_untrusted_certificate_or_another_name_fails_the_handshake_for_good() {
        let (pki, stranger) = (Pki::new("one"), Pki::new("stranger"));
        let server = echo(WireForm::Bits8, &pki, false).await;
        let untrusted = stranger.client(false);
        let wrong_name = pki
            .client(false)
            .with_server_name("elsewhere.example")
            .unwrap();
        for tls in [untrusted, wrong_name] {
            let error = Connection::connect_with(&server.addr, WireForm::Bits8, &options(tls))
                .await
                .unwrap_err();
            assert!(matches!(error, Error::Handshake { .. }), "{error:?}");
            let text = error.with_causes();
            assert!(
                text.starts_with(&format!(
                    "TLS handshake with {}: invalid peer certificate",
                    server.addr
                )),
                "{text}"
            );
            assert!(
                !error.is_connection_failure(),
                "retrying cannot help: {text}"
            );
        }
    }

    #[tokio::test]
    async fn a_server_that_wants_a_client_certificate_admits_only_one_it_trusts() {
        let (pki, stranger) = (Pki::new("one"), Pki::new("stranger"));
        let server = echo(WireForm::Bits8, &pki, true).await;
        let signed_elsewhere = Tls::from_pem(
            pki.ca.as_bytes(),
            Some((
                stranger.client_cert.as_bytes(),
                stranger.client_key.as_bytes(),
            )),
        )
        .unwrap();
        for tls in [pki.client(false), signed_elsewhere] {
            // With TLS 1.3 the client finishes its handshake before the server refuses it; it
            // then reads nothing.
            if let Ok(mut conn) =
                Connection::connect_with(&server.addr, WireForm::Bits8, &options(tls)).await
            {
                assert_eq!(round_trip(&mut conn, "VS").await, None);
            }
        }
        let mut conn =
            Connection::connect_with(&server.addr, WireForm::Bits8, &options(pki.client(true)))
                .await
                .unwrap();
        assert_eq!(round_trip(&mut conn, "VS").await.as_deref(), Some("VS"));
    }

    #[tokio::test]
    async fn plain_and_tls_mixed_up_fail_with_a_message_that_says_so() {
        let pki = Pki::new("one");
        let tls_server = echo(WireForm::Bits8, &pki, false).await;
        let mut plain = Connection::connect(&tls_server.addr, WireForm::Bits8)
            .await
            .unwrap();
        plain.send("VS").await.unwrap();
        let error = match tokio::time::timeout(WITHIN, plain.next_frame()).await {
            Ok(Some(Err(error))) => Error::from(error),
            other => panic!("expected a read error, got {other:?}"),
        };
        assert!(
            error.with_causes().contains("speaks TLS"),
            "{}",
            error.with_causes()
        );
        assert!(!error.is_connection_failure());

        // A plain server answers the client's hello, read as frames it cannot make out, with
        // ERs. (This one answers at once: its own connection would refuse to read the hello,
        // seeing TLS.)
        let plain_server = TestServer::start(WireForm::Bits8, |mut conn| async move {
            conn.send("ER\\EC800\\MSunknown message code\\FM\"?\"")
                .await
                .unwrap();
            while let Some(Ok(_)) = conn.next_frame().await {}
        })
        .await;
        let error = Connection::connect_with(
            &plain_server.addr,
            WireForm::Bits8,
            &options(pki.client(false)),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, Error::Handshake { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "TLS handshake with {} (the server's answer is not TLS: a plain listener?)",
                plain_server.addr
            )
        );
        assert!(!error.is_connection_failure(), "{}", error.with_causes());
    }

    #[tokio::test]
    async fn a_session_authenticates_over_tls_before_its_first_message() {
        let pki = Pki::new("one");
        let (server, log) =
            TestServer::scripted_tls(WireForm::Bits8, &pki, |_, log, mut conn| async move {
                while let Some(frame) = read_text(&mut conn).await {
                    log.push(&frame);
                    let answer = match frame.rsplit_once("\\TK") {
                        _ if frame.starts_with("UA") => "US\\TDacme\\ANcrm\\RS0\\PG8".to_owned(),
                        Some((_, tk)) => format!("MV\\TK{tk}"),
                        None => continue,
                    };
                    write_all(&mut conn, &[&answer]).await;
                }
            })
            .await;
        let credentials = Credentials {
            tenant: "acme".into(),
            name: "crm".into(),
            password: "pw".into(),
        };
        let mut servers = Servers::new([server.addr.clone()], WireForm::Bits8)
            .unwrap()
            .with_options(options(pki.client(false)));
        let session =
            Session::connect_to(&mut servers, Some(&credentials), SessionOptions::default())
                .await
                .unwrap();
        session
            .send(b"CF\\CA2\\CNc\\SI1")
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(
            log.frames(),
            ["UA\\ANcrm\\PWpw\\TDacme", "CF\\CA2\\CNc\\SI1\\TKc1"]
        );
    }

    #[tokio::test]
    async fn a_resuming_subscription_reconnects_over_tls_and_authenticates_again() {
        let pki = Pki::new("one");
        let (server, log) =
            TestServer::scripted_tls(WireForm::Bits8, &pki, |n, log, mut conn| async move {
                let ua = read_text(&mut conn).await.unwrap();
                log.push(&ua);
                write_all(&mut conn, &["US\\TDacme\\ANcrm\\RS0\\PG2"]).await;
                log.push(&read_text(&mut conn).await.unwrap());
                write_all(&mut conn, &["MV\\TKeo", &oz("t", n as u64 + 1)]).await;
                // The first connection is gone after one outcome.
                while n > 0 && read_text(&mut conn).await.is_some() {}
            })
            .await;
        let servers = Servers::new([server.addr.clone()], WireForm::Bits8)
            .unwrap()
            .with_options(options(pki.client(false)));
        let resume = ResumeOptions {
            resume_from: ResumeFrom::Delivered,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(20)),
            give_up_after: Some(WITHIN),
            credentials: Some(Credentials {
                tenant: "acme".into(),
                name: "crm".into(),
                password: "pw".into(),
            }),
            ..ResumeOptions::default()
        };
        let mut subscription = ResumingSubscription::new(servers, subscribe(), resume).unwrap();
        for want in [1, 2] {
            match subscription.next().await {
                Ok(Some(Event::Outcome(outcome))) => assert_eq!(outcome.xs, Some(want)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(subscription.reconnects(), 1);
        assert_eq!(
            log.frames(),
            [
                "UA\\ANcrm\\PWpw\\TDacme",
                "EO\\TXt\\FO\\PSp\\XS\\TKeo",
                "UA\\ANcrm\\PWpw\\TDacme",
                "EO\\TXt\\FO\\PSp\\XS\\XR1\\TKeo"
            ]
        );
    }

    #[tokio::test]
    async fn a_reset_over_tls_reaches_the_server_as_a_reset() {
        let pki = Pki::new("one");
        let (server, seen) = TestServer::watching_the_end(Some(&pki)).await;
        let mut conn =
            Connection::connect_with(&server.addr, WireForm::Bits8, &options(pki.client(false)))
                .await
                .unwrap();
        // The DA: the server's side of the handshake is done, the reset finds a connection.
        assert!(matches!(conn.next_frame().await, Some(Ok(_))));
        conn.send("VS").await.unwrap();
        conn.reset();
        assert_eq!(
            tokio::time::timeout(WITHIN, seen).await.unwrap().unwrap(),
            Some(std::io::ErrorKind::ConnectionReset)
        );
    }

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(host("ozbus.example:6512"), "ozbus.example");
        assert_eq!(host("127.0.0.1:6512"), "127.0.0.1");
        assert_eq!(host("[::1]:6512"), "::1");
        assert_eq!(host("::1"), "::1");
        assert_eq!(host("localhost"), "localhost");
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("localhost"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(server_name("not a name").is_err());
    }

    #[test]
    fn settings_that_cannot_be_used_say_why() {
        let error = Tls::from_pem(b"no PEM here", None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "TLS settings: the CA certificates: no certificate (PEM) found"
        );
        let missing = Path::new("/nonexistent/ca.pem");
        let error = Tls::from_pem_files(missing, None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("TLS settings: reading /nonexistent/ca.pem: "),
            "{error}"
        );
        assert!(!error.is_connection_failure());
    }
}
