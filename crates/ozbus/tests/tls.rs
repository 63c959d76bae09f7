//! TLS listeners for both wire forms, with certificates made by the test: a round trip on each,
//! a reload (in process and by SIGHUP) under live connections, a plain-text client on a TLS
//! port, and client certificates.

mod tls_common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use ozbus::config::Config;
use ozbus::server::RunningServer;
use sdmp::framing::Frame;
use sdmp::{SdmpCodec, WireForm};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::crypto::ring::default_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

use tls_common::{tls_config, Pki};

const PATIENCE: Duration = Duration::from_secs(10);

impl Pki {
    /// A connector that trusts this CA, presenting this PKI's client certificate if asked to.
    fn connector(&self, with_client_cert: bool) -> TlsConnector {
        let client = with_client_cert.then_some((&self.client_cert[..], &self.client_key[..]));
        connector(&self.ca, client)
    }
}

/// A connector that trusts the CA `server_ca` and presents `client` (certificate, key) if given.
fn connector(server_ca: &str, client: Option<(&str, &str)>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.as_bytes()).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

async fn start(dir: &Path, pki: &Pki, client_certificates: bool) -> RunningServer {
    pki.install(dir);
    let mut config = Config::for_test(&dir.join("data"));
    tls_config(&mut config, dir, client_certificates);
    RunningServer::start(config).await.unwrap()
}

struct Client<S>(Framed<S, SdmpCodec>);

type TlsClient = Client<TlsStream<TcpStream>>;

async fn tls_connect(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

async fn connect(addr: SocketAddr, connector: &TlsConnector, form: WireForm) -> TlsClient {
    let stream = tls_connect(addr, connector).await.expect("TLS handshake");
    Client(Framed::new(stream, SdmpCodec::new(form)))
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Client<S> {
    async fn send(&mut self, frame: &str) {
        self.0.send(frame.as_bytes()).await.unwrap();
    }

    /// The next frame, or `None` when the connection failed or closed.
    async fn next(&mut self) -> Option<String> {
        match tokio::time::timeout(PATIENCE, self.0.next()).await {
            Ok(Some(Ok(Frame::Message(frame)))) => Some(String::from_utf8_lossy(&frame).into()),
            Ok(None) | Ok(Some(Err(_))) => None,
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn ask(&mut self, frame: &str) -> String {
        self.send(frame).await;
        self.next().await.expect("a reply")
    }
}

#[tokio::test]
async fn both_wire_forms_round_trip_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("one");
    let server = start(dir.path(), &pki, false).await;
    let connector = pki.connector(false);

    let mut sub = connect(server.tls_addr_8bit().unwrap(), &connector, WireForm::Bits8).await;
    assert_eq!(sub.ask(r"EO\TXt\FO\TK1").await, r"MV\TK1");
    let mut dialer = connect(
        server.tls_addr_utf16().unwrap(),
        &connector,
        WireForm::Utf16Le,
    )
    .await;
    assert_eq!(dialer.ask(r"CF\CA2\CNsécurité\SI1\TK2").await, r"MV\TK2");
    assert_eq!(sub.next().await.unwrap(), r"OZ\TXt\CNsécurité\SI1\RE2\DT");
    assert_eq!(dialer.ask("VS").await, "DA");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reload_serves_new_certificates_to_new_connections_only() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Pki::new("old"), Pki::new("new"));
    let server = start(dir.path(), &old, false).await;
    let addr = server.tls_addr_8bit().unwrap();
    let mut live = connect(addr, &old.connector(false), WireForm::Bits8).await;
    assert_eq!(live.ask("VS").await, "DA");

    new.install(dir.path());
    server.reload_tls().unwrap();
    assert_eq!(
        live.ask("VS").await,
        "DA",
        "a live connection survives the reload"
    );
    assert!(tls_connect(addr, &old.connector(false)).await.is_err());
    let mut fresh = connect(addr, &new.connector(false), WireForm::Bits8).await;
    assert_eq!(fresh.ask("VS").await, "DA");

    // A reload that cannot read its files keeps what is in force.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let error = format!("{:#}", server.reload_tls().unwrap_err());
    assert!(error.contains("key.pem"), "{error}");
    let mut after = connect(addr, &new.connector(false), WireForm::Bits8).await;
    assert_eq!(after.ask("VS").await, "DA");
    assert_eq!(live.ask("VS").await, "DA");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn plain_text_on_a_tls_port_gets_no_answer_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("one");
    let server = start(dir.path(), &pki, false).await;
    for addr in [
        server.tls_addr_8bit().unwrap(),
        server.tls_addr_utf16().unwrap(),
    ] {
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"CF\\CA2\\CNs\\SI1\\TK1\0VS\0")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, plain.read_to_end(&mut answer))
            .await
            .expect("closed in time")
            .ok();
        let text = String::from_utf8_lossy(&answer);
        assert!(!text.contains("MV") && !text.contains("DA"), "{text:?}");
    }
    // Nothing was reported, and TLS clients are still served.
    let mut sub = connect(
        server.tls_addr_8bit().unwrap(),
        &pki.connector(false),
        WireForm::Bits8,
    )
    .await;
    assert_eq!(sub.ask(r"EO\TXt\FO\XS\XR0\TK1").await, r"MV\TK1");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "the log must be empty"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_it_signed_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, stranger) = (Pki::new("one"), Pki::new("stranger"));
    let server = start(dir.path(), &pki, true).await;
    let addr = server.tls_addr_8bit().unwrap();
    // Without a certificate, or with one another CA signed: no session. (With TLS 1.3 the
    // client may finish its handshake before the server refuses; it then reads nothing.)
    let signed_elsewhere = connector(&pki.ca, Some((&stranger.client_cert, &stranger.client_key)));
    for connector in [pki.connector(false), signed_elsewhere] {
        if let Ok(stream) = tls_connect(addr, &connector).await {
            let mut client = Client(Framed::new(stream, SdmpCodec::new(WireForm::Bits8)));
            client.send("VS").await;
            assert_eq!(client.next().await, None);
        }
    }
    let mut admitted = connect(addr, &pki.connector(true), WireForm::Bits8).await;
    assert_eq!(admitted.ask("VS").await, "DA");
    server.shutdown().await.unwrap();
}

/// `ozbus serve` reloads its certificates on SIGHUP, and keeps its connections.
#[tokio::test]
async fn sighup_reloads_the_certificates_of_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Pki::new("old"), Pki::new("new"));
    old.install(dir.path());
    let config: PathBuf = dir.path().join("ozbus.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten_8bit = \"127.0.0.1:0\"\nlisten_utf16 = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [store]\ndata_dir = {:?}\n\
             [tls]\nlisten_8bit = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
            dir.path().join("data"),
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
        ),
    )
    .unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_ozbus"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("OZBUS_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let addr: SocketAddr = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tls8bit="))
        .unwrap_or_else(|| panic!("no tls8bit= in {ready}"))
        .parse()
        .unwrap();

    let mut live = connect(addr, &old.connector(false), WireForm::Bits8).await;
    new.install(dir.path());
    let hup = Command::new("kill")
        .args(["-HUP", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + PATIENCE;
    let mut fresh = loop {
        match tls_connect(addr, &new.connector(false)).await {
            Ok(stream) => break Client(Framed::new(stream, SdmpCodec::new(WireForm::Bits8))),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(error) => panic!("the new certificate was never served: {error}"),
        }
    };
    assert_eq!(fresh.ask("VS").await, "DA");
    assert_eq!(live.ask("VS").await, "DA");
    let term = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(server.wait().unwrap().success());
}
