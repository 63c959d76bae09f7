//! Users, privileges and tenants, tried the way a client (honest or hostile) would: every RS of
//! US, lock-out and its expiry, EC 811 for each message a privilege lacks and for each attempt
//! to act in another tenant, what a landlord may do, the authentication deadline, and the
//! refusal to listen beyond loopback without users.

mod users_common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ozbus::config::{Config, UserConfig};
use ozbus::server::RunningServer;
use sdmp::framing::Frame;
use sdmp::{SdmpCodec, WireForm};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Framed;
use users_common::{user, PASSWORD};

const PATIENCE: Duration = Duration::from_secs(10);

/// Two tenants, each with a system user, a supervisor and two agents; a landlord; an
/// operator with every flag but the super user's.
fn users() -> Vec<UserConfig> {
    vec![
        user("acme", "dialer", 8),
        user("acme", "crm", 2),
        user("acme", "joe", 1),
        user("acme", "bob", 1),
        user("globex", "dialer", 8),
        user("globex", "crm", 2),
        user("landlord", "root", 256),
        user("acme", "config", 4),
    ]
}

struct Server {
    server: RunningServer,
    _dir: tempfile::TempDir,
}

async fn start(adjust: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.users = users();
    adjust(&mut config);
    let server = RunningServer::start(config).await.unwrap();
    Server { server, _dir: dir }
}

struct Client(Framed<TcpStream, SdmpCodec>);

impl Server {
    /// A connection from 127.0.0.1.
    async fn connect(&self) -> Client {
        self.connect_from([127, 0, 0, 1]).await
    }

    /// A connection from another loopback address (a client elsewhere, for lock-outs).
    async fn connect_from(&self, source: [u8; 4]) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(IpAddr::from(source), 0))
            .unwrap();
        let stream = socket.connect(self.server.addr_8bit()).await.unwrap();
        Client(Framed::new(stream, SdmpCodec::new(WireForm::Bits8)))
    }

    /// A connection authenticated as tenant/name.
    async fn login(&self, tenant: &str, name: &str) -> Client {
        let mut client = self.connect().await;
        client.login(tenant, name).await;
        client
    }
}

impl Client {
    async fn send(&mut self, frame: &str) {
        self.0.send(frame.as_bytes()).await.unwrap();
    }

    async fn recv(&mut self) -> String {
        match tokio::time::timeout(PATIENCE, self.0.next()).await {
            Ok(Some(Ok(Frame::Message(frame)))) => String::from_utf8_lossy(&frame).into_owned(),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Sends `frame` and returns the one reply it gets.
    async fn ask(&mut self, frame: &str) -> String {
        self.send(frame).await;
        self.recv().await
    }

    async fn expect(&mut self, frame: &str) {
        assert_eq!(self.recv().await, frame);
    }

    /// Sends `frame` and expects these replies in any order (an OZ the request caused may come
    /// before or after its MV).
    async fn ask_all(&mut self, frame: &str, replies: &[&str]) {
        self.send(frame).await;
        let mut got = Vec::new();
        for _ in replies {
            got.push(self.recv().await);
        }
        got.sort();
        let mut want: Vec<String> = replies.iter().map(ToString::to_string).collect();
        want.sort();
        assert_eq!(got, want, "{frame}");
    }

    async fn login(&mut self, tenant: &str, name: &str) {
        let us = self
            .ask(&format!(r"UA\TD{tenant}\AN{name}\PW{PASSWORD}"))
            .await;
        assert!(us.contains(r"\RS0\"), "{us}");
    }

    async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(frame) = tokio::time::timeout(wait, self.0.next()).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    /// The EC of the ER that answers `frame` (panics on any other answer).
    async fn refused(&mut self, frame: &str) -> u16 {
        let reply = self.ask(frame).await;
        let ec = reply
            .strip_prefix(r"ER\EC")
            .and_then(|rest| rest.split('\\').next())
            .unwrap_or_else(|| panic!("{frame}: expected an ER, got {reply}"));
        ec.parse().unwrap()
    }

    /// Asserts the server closes the connection.
    async fn expect_closed(&mut self) {
        match tokio::time::timeout(PATIENCE, self.0.next()).await {
            Ok(None) | Ok(Some(Err(_))) => {}
            other => panic!("expected the connection closed, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn ua_answers_every_status() {
    let server = start(|_| {}).await;
    let mut c = server.connect().await;
    assert_eq!(
        c.ask(&format!(r"UA\TDacme\ANcrm\PW{PASSWORD}")).await,
        r"US\TDacme\ANcrm\RS0\PG2"
    );
    assert_eq!(
        c.ask(&format!(r"UA\TDacme\ANnobody\PW{PASSWORD}")).await,
        r"US\TDacme\ANnobody\RS1"
    );
    // A user of one tenant does not exist in another.
    assert_eq!(
        c.ask(&format!(r"UA\TDglobex\ANjoe\PW{PASSWORD}")).await,
        r"US\TDglobex\ANjoe\RS1"
    );
    assert_eq!(
        c.ask(r"UA\TDacme\ANcrm\PWwrong").await,
        r"US\TDacme\ANcrm\RS2"
    );
    // QI names the user like AN.
    assert_eq!(
        c.ask(&format!(r"UA\TDacme\QIcrm\PW{PASSWORD}")).await,
        r"US\TDacme\ANcrm\RS0\PG2"
    );
    // QI is any text, a name is not: a QI that no name can be names nobody, and the US goes
    // without the AN it cannot carry (found by the service fuzzer: the US did not decode).
    assert_eq!(c.ask(r"UA\TDacme\QIcrm/1\PWx").await, r"US\TDacme\RS1");
    for badly_formed in [
        r"UA\TDacme\ANcrm",
        r"UA\ANcrm\PWx",
        r"UA\TDacme\PWx",
        r"UA\TDacme\ANcrm\QIjoe\PWx",
    ] {
        let us = c.ask(badly_formed).await;
        assert!(
            us.starts_with("US\\") && us.ends_with(r"\RS3"),
            "{badly_formed}: {us}"
        );
    }
    // With TK: the US, then the MV.
    c.send(&format!(r"UA\TDacme\ANjoe\PW{PASSWORD}\TKu")).await;
    c.expect(r"US\TDacme\ANjoe\RS0\PG1").await;
    c.expect(r"MV\TKu").await;
}

#[tokio::test]
async fn failures_lock_out_a_user_and_an_address_until_the_lockout_time_passes() {
    let server = start(|c| {
        c.auth.lockout_failures = 3;
        c.auth.lockout_time = Duration::from_secs(2);
    })
    .await;
    let good = format!(r"UA\TDacme\ANcrm\PW{PASSWORD}");

    // A user: three bad passwords from three addresses lock the user out everywhere.
    for source in [2, 3, 4] {
        let mut c = server.connect_from([127, 0, 0, source]).await;
        assert!(c.ask(r"UA\TDacme\ANcrm\PWguess").await.ends_with(r"\RS2"));
    }
    let mut elsewhere = server.connect_from([127, 0, 0, 5]).await;
    assert_eq!(elsewhere.ask(&good).await, r"US\TDacme\ANcrm\RS5");
    // Other users are not locked out.
    assert!(elsewhere
        .ask(&format!(r"UA\TDacme\ANjoe\PW{PASSWORD}"))
        .await
        .ends_with(r"\RS0\PG1"));

    // An address: three failures with names nobody has lock the address out, for every user.
    let mut prober = server.connect_from([127, 0, 0, 6]).await;
    for name in ["a", "b", "c"] {
        let us = prober.ask(&format!(r"UA\TDacme\AN{name}\PWx")).await;
        assert!(us.ends_with(r"\RS1"), "{us}");
    }
    assert!(prober
        .ask(&format!(r"UA\TDglobex\ANcrm\PW{PASSWORD}"))
        .await
        .ends_with(r"\RS5"));
    let mut neighbour = server.connect_from([127, 0, 0, 7]).await;
    assert!(neighbour
        .ask(&format!(r"UA\TDglobex\ANcrm\PW{PASSWORD}"))
        .await
        .ends_with(r"\RS0\PG2"));

    // Both expire.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(elsewhere.ask(&good).await, r"US\TDacme\ANcrm\RS0\PG2");
    assert!(prober.ask(&good).await.ends_with(r"\RS0\PG2"));
}

#[tokio::test]
async fn before_authenticating_only_ua_and_vs_are_allowed() {
    let server = start(|_| {}).await;
    let mut c = server.connect().await;
    for frame in [
        r"MC\CNs\TN1",
        r"RN\CNs\TN1",
        r"LC\CNs\TN1",
        r"CF\CA2\CNs\TN1",
        r"TC\ANjoe",
        r"BD\ANjoe",
        r"UO\TXu\CNs\TN1\RE2\DTx",
        r"EO\TXt\FO",
        r"EE\TXt",
        r"XA\TXt\XS1",
    ] {
        assert_eq!(c.refused(frame).await, 811, "{frame}");
    }
    assert_eq!(c.ask(r"VS\TKv").await, "DA");
    c.expect(r"MV\TKv").await;
    // A failed UA changes nothing; a good one lets the user do what it may.
    assert!(c.ask(r"UA\TDacme\ANcrm\PWno").await.ends_with(r"\RS2"));
    assert_eq!(c.refused(r"EO\TXt\FO").await, 811);
    c.login("acme", "crm").await;
    assert_eq!(c.ask(r"EO\TXt\FO\TKe").await, r"MV\TKe");
}

#[tokio::test]
async fn each_privilege_allows_what_the_table_says_and_nothing_more() {
    let server = start(|_| {}).await;
    let mut dialer = server.login("acme", "dialer").await;
    let mut crm = server.login("acme", "crm").await;
    let mut joe = server.login("acme", "joe").await;
    let mut config = server.login("acme", "config").await;

    // System: the call reports, TC and BD for any agent; no subscriptions or corrections.
    for frame in [
        r"MC\CNs\SI1\TK1",
        r"LC\CNs\SI1\ANjoe\TK2",
        r"MC\CNs\SI2\ANbob\TK3",
        r"RN\CNs\SI2\TK4",
        r"CF\CA2\CNs\SI3\TK5",
    ] {
        let tk = frame.rsplit("TK").next().unwrap();
        assert_eq!(dialer.ask(frame).await, format!(r"MV\TK{tk}"), "{frame}");
    }
    for frame in [
        r"EO\TXd\FO",
        r"UO\TXu\CNs\SI3\RE1\DTx",
        r"EE\TXd",
        r"XA\TXd\XS1",
    ] {
        assert_eq!(dialer.refused(frame).await, 811, "{frame}");
    }

    // An agent: TC and BD for itself only.
    assert_eq!(joe.refused(r"MC\CNs\SI9").await, 811);
    assert_eq!(joe.refused(r"EO\TXj\FO").await, 811);
    assert_eq!(joe.refused(r"TC\ANbob").await, 811);
    assert_eq!(joe.refused(r"BD\ANbob\DD").await, 811);
    assert_eq!(joe.ask(r"TC\ANjoe\AO105\TKj").await, r"MV\TKj");

    // A supervisor: subscriptions and corrections; no call reports, no agent actions.
    assert_eq!(crm.ask(r"EO\TXc\FO\SO\MO\TKc").await, r"MV\TKc");
    assert_eq!(crm.refused(r"CF\CA2\CNs\SI4").await, 811);
    assert_eq!(crm.refused(r"TC\ANjoe").await, 811);
    crm.ask_all(
        r"UO\TXu\CNs\SI3\RE1\DTx\TKu",
        &[r"MV\TKu", r"OZ\TXc\TDacme\CNs\SI3\RE1\DTx"],
    )
    .await;
    assert_eq!(crm.ask(r"EE\TXc").await, r"EF\TXc");

    // Configuration: nothing more than being authenticated.
    for frame in [r"MC\CNs\SI5", r"EO\TXk\FO", r"TC\ANconfig"] {
        assert_eq!(config.refused(frame).await, 811, "{frame}");
    }
}

/// Sets up acme's state a thief will try to reach: a call record (SI 100, connected to joe), a
/// persisted sequenced transaction `t` (PS `p`), and a subscriber receiving acme's outcomes.
async fn acme_with_a_call_and_a_subscriber(server: &Server) -> (Client, Client) {
    let mut dialer = server.login("acme", "dialer").await;
    assert_eq!(dialer.ask(r"MC\CNs\SI100\TK1").await, r"MV\TK1");
    assert_eq!(dialer.ask(r"LC\CNs\SI100\ANjoe\TK2").await, r"MV\TK2");
    let mut crm = server.login("acme", "crm").await;
    assert_eq!(crm.ask(r"EO\TXt\FO\SO\MO\PSp\XS\TKo").await, r"MV\TKo");
    (dialer, crm)
}

#[tokio::test]
async fn another_tenant_cannot_read_or_change_anything_of_acme() {
    let server = start(|_| {}).await;
    let (mut acme_dialer, mut acme) = acme_with_a_call_and_a_subscriber(&server).await;
    let mut thief = server.login("globex", "dialer").await;
    let mut thief_crm = server.login("globex", "crm").await;

    // Naming acme with TD: EC 811 for every message, whatever it is.
    for frame in [
        r"MC\TDacme\CNs\SI200",
        r"RN\TDacme\CNs\SI100",
        r"LC\TDacme\CNs\SI100",
        r"CF\TDacme\CA2\CNs\SI100",
        r"TC\TDacme\ANjoe",
        r"BD\TDacme\ANjoe",
    ] {
        assert_eq!(thief.refused(frame).await, 811, "{frame}");
    }
    for frame in [
        r"EO\TDacme\TXspy\FO\SO\MO",
        r"EO\TDacme\TXspy\FO\PSp\XR0",
        r"EE\TDacme\TXt",
        r"XA\TDacme\TXt\XS1",
        r"UO\TDacme\TXu\CNs\SI100\RE1\DTx",
        // A tenant that does not exist is refused the same way.
        r"EO\TDnowhere\TXspy\FO",
    ] {
        assert_eq!(thief_crm.refused(frame).await, 811, "{frame}");
    }

    // Acme's TX, PS and SI without TD: the thief acts in its own tenant and reaches nothing.
    assert_eq!(thief_crm.refused(r"EE\TXt").await, 810);
    assert_eq!(thief_crm.refused(r"XA\TXt\XS1").await, 810);
    assert_eq!(thief_crm.refused(r"UO\TXu\CNs\SI100\RE1\DTx").await, 411);
    assert_eq!(thief.refused(r"RN\CNs\SI100").await, 411);
    assert_eq!(thief.refused(r"TC\ANjoe").await, 410);
    // The same TX and PS in globex are globex's own: no EC 809, no takeover of acme's.
    assert_eq!(
        thief_crm.ask(r"EO\TXt\FO\SO\MO\PSp\XS\TKg").await,
        r"MV\TKg"
    );
    // An SI acme uses is free in globex, and a CF for it closes nothing of acme's.
    assert_eq!(thief.ask(r"MC\CNs\SI100\TKm").await, r"MV\TKm");
    assert_eq!(thief.ask(r"CF\CA2\CNs\SI100\TKf").await, r"MV\TKf");
    assert_eq!(
        thief_crm.recv().await.split("\\XT").next().unwrap(),
        r"OZ\TXt\TDglobex\CNs\SI100\RE2\XS1"
    );

    // Acme saw none of it, still holds its transaction, and its call is still joe's.
    acme.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(acme_dialer.refused(r"MC\CNs\SI100").await, 412);
    let mut joe = server.login("acme", "joe").await;
    assert_eq!(joe.ask(r"TC\ANjoe\AO105\TKj").await, r"MV\TKj");
    let oz = acme.recv().await;
    assert!(
        oz.starts_with(r"OZ\TXt\TDacme\CNs\ANjoe\SI100\RE10\AO105\XS2\XT"),
        "{oz}"
    );
}

#[tokio::test]
async fn a_landlord_acts_for_every_tenant_by_td() {
    let server = start(|c| c.auth.tenants = vec!["initech".into()]).await;
    let mut root = server.login("landlord", "root").await;
    assert_eq!(root.ask(r"EO\TXall\FO\TKa").await, r"MV\TKa");
    root.ask_all(
        r"CF\TDacme\CA2\CNs\SI1\TKb",
        &[r"MV\TKb", r"OZ\TXall\TDacme\CNs\SI1\RE2\DT"],
    )
    .await;
    root.ask_all(
        r"CF\TDglobex\CA2\CNs\SI1\TKc",
        &[r"MV\TKc", r"OZ\TXall\TDglobex\CNs\SI1\RE2\DT"],
    )
    .await;
    // A tenant only named in [auth] tenants is known too; one nobody configured is not.
    root.ask_all(
        r"CF\TDinitech\CA2\CNs\SI1\TKd",
        &[r"MV\TKd", r"OZ\TXall\TDinitech\CNs\SI1\RE2\DT"],
    )
    .await;
    assert_eq!(root.refused(r"CF\TDnowhere\CA2\CNs\SI1").await, 812);
    // With TD, its EO sees that tenant only.
    assert_eq!(root.ask(r"EO\TDglobex\TXg\FO\TKe").await, r"MV\TKe");
    let mut acme = server.login("acme", "dialer").await;
    assert_eq!(acme.ask(r"CF\CA2\CNs\SI2\TKf").await, r"MV\TKf");
    assert_eq!(root.recv().await, r"OZ\TXall\TDacme\CNs\SI2\RE2\DT");
    root.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn the_last_successful_authentication_counts() {
    let server = start(|_| {}).await;
    let mut c = server.connect().await;
    c.login("acme", "crm").await;
    c.login("globex", "dialer").await;
    // Now globex's system user: call reports yes, subscriptions no, in globex.
    assert_eq!(c.refused(r"EO\TXt\FO").await, 811);
    assert_eq!(c.ask(r"CF\CA2\CNs\SI1\TK1").await, r"MV\TK1");
    assert_eq!(c.refused(r"CF\TDacme\CA2\CNs\SI1").await, 811);
    // A failed attempt leaves it as it was.
    assert!(c.ask(r"UA\TDlandlord\ANroot\PWno").await.ends_with(r"\RS2"));
    assert_eq!(c.ask(r"CF\CA2\CNs\SI2\TK2").await, r"MV\TK2");
}

#[tokio::test]
async fn a_connection_that_does_not_authenticate_in_time_is_closed() {
    let server = start(|c| c.auth.timeout = Duration::from_millis(300)).await;
    let mut idle = server.connect().await;
    let mut user = server.login("acme", "crm").await;
    idle.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(user.ask(r"VS").await, "DA");
}

#[tokio::test]
async fn without_users_ozbus_refuses_to_listen_beyond_loopback_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.server.listen_8bit = "0.0.0.0:0".parse().unwrap();
    let refusal = match RunningServer::start(config.clone()).await {
        Ok(_) => panic!("started on 0.0.0.0 without users"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        refusal.contains("refusing to listen on 0.0.0.0:0"),
        "{refusal}"
    );
    assert!(
        refusal.contains("[[users]]") && refusal.contains("--insecure"),
        "{refusal}"
    );

    // With users, or told so, it starts.
    config.users = users();
    RunningServer::start(config.clone())
        .await
        .unwrap()
        .shutdown()
        .await
        .unwrap();
    config.users.clear();
    config.server.insecure = true;
    let server = RunningServer::start(config).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_users_are_refused_at_start_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(UserConfig, &str); 4] = [
        (
            UserConfig {
                password_hash: "secret".into(),
                ..user("acme", "x", 2)
            },
            "not a PHC string",
        ),
        (user("ac me", "x", 2), "tenant"),
        (user("acme", "a/b", 2), "name"),
        (user("acme", "x", 16), "pg"),
    ];
    for (bad, says) in cases {
        let mut config = Config::for_test(dir.path());
        config.users = vec![bad];
        let error = match RunningServer::start(config).await {
            Ok(_) => panic!("started with a bad user"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(says), "{error}");
    }
}

/// `ozbus user hash` makes the hash a `[[users]]` entry needs; a real server started with it
/// authenticates that user, and its log records successes, failures and refusals with user,
/// tenant and peer address, never a password.
#[tokio::test]
async fn user_hash_and_the_audit_log_work_end_to_end() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let hash = |stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ozbus"))
            .args(["user", "hash"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let empty = hash("\n");
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("password is empty"));
    let made = hash("s3cret pass\n");
    assert!(made.status.success());
    let phc = String::from_utf8(made.stdout).unwrap().trim().to_string();
    assert!(phc.starts_with("$argon2id$"), "{phc}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ozbus.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten_8bit = \"127.0.0.1:0\"\nlisten_utf16 = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [store]\ndata_dir = {:?}\n\
             [[users]]\ntenant = \"acme\"\nname = \"crm\"\npassword_hash = \"{phc}\"\npg = 2\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let log_path = dir.path().join("stderr.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_ozbus"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let addr: SocketAddr = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("8bit="))
        .unwrap()
        .parse()
        .unwrap();

    let stream = TcpStream::connect(addr).await.unwrap();
    let mut c = Client(Framed::new(stream, SdmpCodec::new(WireForm::Bits8)));
    assert!(c.ask(r"UA\TDacme\ANcrm\PWhunter2").await.ends_with(r"\RS2"));
    assert_eq!(
        c.ask(r"UA\TDacme\ANcrm\PWs3cret pass").await,
        r"US\TDacme\ANcrm\RS0\PG2"
    );
    assert_eq!(c.refused(r"EO\TDglobex\TXt\FO").await, 811);
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(server.wait().unwrap().success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in the log:\n{log}"))
            .to_string()
    };
    for (what, fields) in [
        (
            "authentication failed",
            &["tenant=acme", "user=crm", "peer=127.0.0.1:", "rs=2"][..],
        ),
        (
            "authenticated",
            &["tenant=acme", "user=crm", "peer=127.0.0.1:", "pg=2"][..],
        ),
        (
            "refused",
            &[
                "tenant=acme",
                "user=crm",
                "peer=127.0.0.1:",
                "ec=811",
                "td=globex",
            ][..],
        ),
    ] {
        let line = line(what);
        for field in fields {
            assert!(line.contains(field), "{field} missing in {line}");
        }
    }
    assert!(!log.contains("hunter2") && !log.contains("s3cret"), "{log}");
}
