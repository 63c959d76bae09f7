//! A tiny SDMP server for this crate's own tests: each accepted connection is handed, as a
//! [`Connection`], to a function the test writes, which plays the server's part; over plain
//! TCP, or over TLS with certificates the test makes.
//!
//! Owns: a listener on a free loopback port, an address where nobody listens, what the tests
//! do with the certificates of [`Pki`] (a client's settings, the server's acceptor), and the
//! few frames and subscriptions the tests share.
//!
//! Never: knows anything of SDMP beyond the codec; each test says what its server answers.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sdmp::WireForm;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::connection::Connection;
use crate::frames::MAX_FRAME;
use crate::subscription::Subscribe;
pub use crate::test_pki::Pki;
use crate::tls::Tls;

/// A server that runs `handler` for every accepted connection, until dropped.
pub struct TestServer {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start<F, Fut>(form: WireForm, handler: F) -> TestServer
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::listen(form, None, handler).await
    }

    /// A server that speaks TLS with `pki`'s server certificate; with `client_certificates`,
    /// it admits only clients showing a certificate `pki`'s CA signed. A connection whose
    /// handshake fails never reaches `handler`.
    pub async fn start_tls<F, Fut>(
        form: WireForm,
        pki: &Pki,
        client_certificates: bool,
        handler: F,
    ) -> TestServer
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::listen(form, Some(pki.acceptor(client_certificates)), handler).await
    }

    async fn listen<F, Fut>(form: WireForm, tls: Option<TlsAcceptor>, handler: F) -> TestServer
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address").to_string();
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let peer = peer.to_string();
                let (handler, tls) = (handler.clone(), tls.clone());
                tokio::spawn(async move {
                    let conn = match tls {
                        None => Connection::from_stream(stream, &peer, form, MAX_FRAME),
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => Connection::from_stream(stream, &peer, form, MAX_FRAME),
                            Err(_) => return,
                        },
                    };
                    handler(conn).await;
                });
            }
        });
        TestServer { addr, task }
    }

    /// A server that greets its first connection with a DA (over TLS, sent once its own
    /// side of the handshake is done) and then reads until the connection ends; the receiver
    /// learns how it ended: the kind of the error that ended it, `None` for an orderly end.
    pub async fn watching_the_end(
        pki: Option<&Pki>,
    ) -> (TestServer, oneshot::Receiver<Option<io::ErrorKind>>) {
        let (seen_tx, seen_rx) = oneshot::channel();
        let seen_tx = Mutex::new(Some(seen_tx));
        let watch = move |mut conn: Connection| {
            let seen = seen_tx.lock().unwrap().take();
            async move {
                conn.send("DA").await.unwrap();
                let mut kind = None;
                while let Some(item) = conn.next_frame().await {
                    if let Err(e) = item {
                        kind = Some(e.kind());
                        break;
                    }
                }
                if let Some(seen) = seen {
                    let _ = seen.send(kind);
                }
            }
        };
        let acceptor = pki.map(|pki| pki.acceptor(false));
        (
            Self::listen(WireForm::Bits8, acceptor, watch).await,
            seen_rx,
        )
    }

    /// A server whose `n`-th connection (from 0) runs `script(n, log, conn)`, with a log the
    /// script writes and the test reads.
    pub async fn scripted<F, Fut>(form: WireForm, script: F) -> (TestServer, Log)
    where
        F: Fn(usize, Log, Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::scripted_on(form, None, script).await
    }

    /// [`scripted`](Self::scripted) over TLS with `pki`'s server certificate.
    pub async fn scripted_tls<F, Fut>(form: WireForm, pki: &Pki, script: F) -> (TestServer, Log)
    where
        F: Fn(usize, Log, Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::scripted_on(form, Some(pki.acceptor(false)), script).await
    }

    async fn scripted_on<F, Fut>(
        form: WireForm,
        tls: Option<TlsAcceptor>,
        script: F,
    ) -> (TestServer, Log)
    where
        F: Fn(usize, Log, Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let log = Log::default();
        let seen = log.clone();
        let count = AtomicUsize::new(0);
        let server = TestServer::listen(form, tls, move |conn| {
            script(count.fetch_add(1, Ordering::SeqCst), seen.clone(), conn)
        })
        .await;
        (server, log)
    }
}

impl Pki {
    /// A client's settings: trusts this CA; shows this PKI's client certificate when asked to.
    pub fn client(&self, with_certificate: bool) -> Tls {
        let identity =
            with_certificate.then_some((self.client_cert.as_bytes(), self.client_key.as_bytes()));
        Tls::from_pem(self.ca.as_bytes(), identity).expect("client TLS settings")
    }

    fn acceptor(&self, client_certificates: bool) -> TlsAcceptor {
        let provider = Arc::new(default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_certificates {
            false => builder.with_no_client_auth(),
            true => {
                let mut roots = RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_slice(self.ca.as_bytes()).unwrap())
                    .unwrap();
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(self.server_cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(self.server_key.as_bytes()).unwrap(),
            )
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address where nobody listens (a port that was free a moment ago).
pub async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local address").to_string()
}

/// The next frame a test server reads, as text; `None` once the client is gone.
pub async fn read_text(conn: &mut Connection) -> Option<String> {
    match conn.next_frame().await? {
        Ok(frame) => Some(crate::frames::frame_text(&frame).into_owned()),
        Err(_) => None,
    }
}

/// Writes each frame (text) and flushes once.
pub async fn write_all(conn: &mut Connection, frames: &[&str]) {
    for frame in frames {
        conn.feed(*frame).await.expect("feed");
    }
    conn.flush().await.expect("flush");
}

/// Frames received by a test server, shared with the test.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, frame: &str) {
        self.0.lock().unwrap().push(frame.to_owned());
    }

    pub fn frames(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// The subscription most tests use: TX `t`, failure outcomes, PS `p`, sequenced.
pub fn subscribe() -> Subscribe {
    Subscribe {
        failure: true,
        persist: Some("p".into()),
        sequenced: true,
        ..Subscribe::new("t")
    }
}

/// An OZ of transaction `tx` with sequence number `xs`.
pub fn oz(tx: &str, xs: u64) -> String {
    format!("OZ\\TX{tx}\\CNc\\SIs{xs}\\RE2\\XS{xs}\\XT2026-11-25T17:27:57.123Z\\DT")
}
