//! The whole service under untrusted bytes: one input is a script that opens three SDMP
//! connections (either wire form, authenticated as one of the configured users or not), sends
//! each of them chunks of bytes in the order the script says, and closes them all. The
//! connections are served by a real server (core, call book, transactions, SQLite store) through
//! `RunningServer::serve_stream`, over in-memory pipes instead of TCP.
//!
//! What must hold for every input:
//! - nothing panics, in any task or thread of the server (libFuzzer's panic hook aborts the
//!   process, so a panic that tokio would otherwise catch in a spawned task is still a crash);
//! - every frame the server writes back is a whole frame of the connection's wire form that the
//!   `sdmp` codec decodes, and a message ozbus may send (ER, MV, EF, DA, US, OZ, XG); every ER
//!   carries one of the documented error codes;
//! - every connection ends once its peer closes (a hang shows as a libFuzzer timeout), and the
//!   server never stops by itself;
//! - the process's resident memory stays below [`RSS_CEILING`].
//!
//! The two servers (with and without users) live as long as the process, as a long-running
//! service does: the store, open call records, persisted transactions and lock-outs carry over
//! from one input to the next. Their settings keep all of that bounded (short call timeout and
//! persist TTL, size retention, a small in-memory tail), which is what makes the memory ceiling a
//! real check and not a matter of how long the fuzzer ran. A crash that needs the state earlier
//! inputs left behind reproduces by replaying the corpus, not always the one input alone.
//!
//! Script (see `seeds/service.txt` for examples): the input is cut at every 0xFF byte. The first
//! piece is the header: its byte 0 picks the server (odd: users configured), its bytes 1..=3
//! open the three connections (see [`Opening`]). Every further piece is one step: its first byte
//! says what to do (modulo 8, see [`Script::step`]), its second byte which connection (modulo 3),
//! and the rest is the step's data.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use futures::{FutureExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use ozbus::config::{Config, UserConfig};
use ozbus::server::RunningServer;
use sdmp::framing::Frame;
use sdmp::{ErrorCode, Message, SdmpCodec, WireForm};
use tokio::io::{AsyncWriteExt, DuplexStream, WriteHalf};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;

/// Connections an input drives at once.
const SLOTS: usize = 3;
/// Cuts an input into its header and steps.
const SEPARATOR: u8 = 0xFF;
/// The password of every configured user.
const PASSWORD: &str = "fuzz-pw";
/// Tenant, name and PG of the configured users; an [`Opening`] or an authenticate step names
/// them by position, from 1.
const USERS: [(&str, &str, u16); 4] = [
    ("acme", "crm", 2 | 8),
    ("acme", "agent7", 1 | 4),
    ("globex", "ops", 256),
    ("landlord", "root", 256),
];
/// A tenant nobody is configured in that a landlord may still name.
const EXTRA_TENANT: &str = "initech";
/// Largest frame the servers accept: small, so that a few chunks make an oversize frame.
const MAX_FRAME: usize = 1024;
/// Largest frame the fuzzer accepts from the server: well above anything ozbus may send (an OZ
/// with the longest DT), so that only a broken frame is refused.
const MAX_OUTPUT_FRAME: usize = 1 << 20;
/// Bytes in flight in each direction of a connection's pipe.
const PIPE_CAPACITY: usize = 64 * 1024;
/// The process's resident memory may not grow past this (libFuzzer's own limit, 2 GiB by
/// default, is higher, so this assertion names the problem first).
const RSS_CEILING: u64 = 1536 << 20;
/// Sync steps send `VS\TK<this><n>` and wait for its MV.
const SYNC_TOKEN: &[u8] = b"zzsync";

fuzz_target!(|data: &[u8]| {
    let world = World::get();
    let script = Script::parse(data);
    let server = match script.users {
        true => &world.with_users,
        false => &world.without_users,
    };
    let peer = world.next_peer();
    world.runtime.block_on(async {
        script.run(server, peer).await;
        assert!(
            server.server.stopped().now_or_never().is_none(),
            "the server stopped by itself"
        );
    });
    let rss = resident_bytes();
    assert!(
        rss < RSS_CEILING,
        "resident memory {} MiB is past the ceiling of {} MiB",
        rss >> 20,
        RSS_CEILING >> 20
    );
});

/// What every input shares: the runtime and the two servers.
struct World {
    runtime: tokio::runtime::Runtime,
    with_users: Served,
    without_users: Served,
    inputs: AtomicU64,
    syncs: AtomicU64,
}

/// A server and the directory its store lives in.
struct Served {
    server: RunningServer,
    _dir: tempfile::TempDir,
}

impl World {
    fn get() -> &'static World {
        static WORLD: OnceLock<World> = OnceLock::new();
        WORLD.get_or_init(World::start)
    }

    fn start() -> World {
        // One thread: tasks interleave the same way for the same input as far as the store's
        // writer thread and the clock allow, which keeps most crashes reproducible alone.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let base = data_base();
        let hash = password_hash();
        let (with_users, without_users) = runtime.block_on(async {
            (
                Served::start(&base, Some(&hash)).await,
                Served::start(&base, None).await,
            )
        });
        World {
            runtime,
            with_users,
            without_users,
            inputs: AtomicU64::new(0),
            // Token 0 would count as seen before anything came back.
            syncs: AtomicU64::new(1),
        }
    }

    /// Each input comes from an address of its own (as from another host), so that lock-outs
    /// of source addresses one input earned do not shut the door for the next thousand.
    /// Lock-outs of users still carry over, for the short lock-out time the server is given.
    fn next_peer(&self) -> SocketAddr {
        let n = self.inputs.fetch_add(1, Ordering::Relaxed);
        let host = 0x0A00_0000 | (n as u32 & 0x00FF_FFFF);
        SocketAddr::from((Ipv4Addr::from(host), 40_000))
    }
}

impl Served {
    async fn start(base: &std::path::Path, users_hash: Option<&str>) -> Served {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", dir_prefix()))
            .tempdir_in(base)
            .expect("a directory for the store");
        let mut config = Config::for_test(dir.path());
        config.server.max_frame = MAX_FRAME;
        // Bounded state (see the module's comment); each setting also sends inputs down the
        // paths that a long-running server takes: calls closed by the sweep, persisted
        // transactions forgotten, the log trimmed under a subscriber (XG), subscribers reading
        // from the store rather than from the tail.
        config.calls.call_timeout = Duration::from_secs(2);
        config.transactions.persist_ttl = Duration::from_secs(5);
        config.store.retention_max_bytes = Some(1 << 20);
        config.store.tail_capacity = 64;
        config.store.tail_max_bytes = 64 << 10;
        if let Some(hash) = users_hash {
            config.users = USERS
                .iter()
                .map(|&(tenant, name, pg)| UserConfig {
                    tenant: tenant.into(),
                    name: name.into(),
                    password_hash: hash.into(),
                    pg,
                })
                .collect();
            config.auth.tenants = vec![EXTRA_TENANT.into()];
            // Short enough that a user locked out by one input is free again a few hundred
            // inputs later.
            config.auth.lockout_time = Duration::from_millis(250);
        }
        let server = RunningServer::start(config).await.expect("server starts");
        Served { server, _dir: dir }
    }
}

/// The users' PHC string, made once per process with the cheapest argon2id parameters: a UA of
/// a configured user then costs microseconds, not the tens of milliseconds of the defaults.
fn password_hash() -> String {
    let params = Params::new(Params::MIN_M_COST, Params::MIN_T_COST, 1, None).expect("params");
    let salt = SaltString::encode_b64(b"ozbus-fuzz-salt").expect("salt");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(PASSWORD.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

/// Where the stores live: memory (`/dev/shm`) where there is one, so that an fsync costs
/// nothing and inputs stay fast; the server's code is the same either way.
fn data_base() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    remove_stale_dirs(&base);
    base
}

fn dir_prefix() -> String {
    format!("ozbus-fuzz-{}", std::process::id())
}

/// libFuzzer ends the process without running destructors, so the stores of earlier runs are
/// still there: remove those whose process is gone.
fn remove_stale_dirs(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("ozbus-fuzz-")) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !PathBuf::from(format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The process's resident set, from `/proc/self/statm` (pages of 4 KiB on the machines this
/// runs on).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// How a connection starts: byte bit 0 is the wire form (set: UTF-16LE), bits 1..=3 the user
/// it authenticates as first, with the right password (0, or past the users: none). ASCII
/// digits read well in the seeds: `0` 8-bit, `1` UTF-16, `2`/`3` as user 1, ..., `8`/`9` as
/// user 4.
#[derive(Clone, Copy, Debug)]
struct Opening(u8);

impl Opening {
    fn form(self) -> WireForm {
        match self.0 & 1 {
            0 => WireForm::Bits8,
            _ => WireForm::Utf16Le,
        }
    }

    fn user(self) -> Option<usize> {
        let n = usize::from((self.0 >> 1) & 7);
        (1..=USERS.len()).contains(&n).then(|| n - 1)
    }
}

struct Script<'a> {
    users: bool,
    openings: [Opening; SLOTS],
    steps: Vec<&'a [u8]>,
}

impl<'a> Script<'a> {
    fn parse(data: &'a [u8]) -> Script<'a> {
        let mut pieces = data.split(|&b| b == SEPARATOR);
        let header = pieces.next().unwrap_or_default();
        let byte = |i: usize| header.get(i).copied().unwrap_or(0);
        Script {
            users: byte(0) & 1 == 1,
            openings: [Opening(byte(1)), Opening(byte(2)), Opening(byte(3))],
            steps: pieces.filter(|step| !step.is_empty()).collect(),
        }
    }

    async fn run(&self, served: &Served, peer: SocketAddr) {
        let world = World::get();
        let server = &served.server;
        let mut clients = Vec::with_capacity(SLOTS);
        for opening in self.openings {
            clients.push(Client::open(server, opening, peer).await);
        }
        for step in &self.steps {
            let slot = usize::from(step.get(1).copied().unwrap_or(0)) % SLOTS;
            let data = step.get(2..).unwrap_or_default();
            let client = &mut clients[slot];
            match step[0] % 8 {
                // Bytes exactly as given: on UTF-16, whatever code units (or odd bytes) they
                // make.
                0 => client.send_raw(data).await,
                // The peer closes; a new connection takes the slot, opened as the data's first
                // byte says.
                1 => {
                    let opening = Opening(data.first().copied().unwrap_or(0));
                    let old = std::mem::replace(client, Client::open(server, opening, peer).await);
                    old.close().await;
                }
                // Authenticate (again) as a configured user, with the right password.
                2 => {
                    let user = usize::from(data.first().copied().unwrap_or(0)) % USERS.len();
                    client.authenticate(user).await;
                }
                // A barrier: everything sent so far on this connection has been handled and
                // answered.
                3 => {
                    let n = world.syncs.fetch_add(1, Ordering::Relaxed);
                    client.sync(n).await;
                }
                // Text: one code unit per byte on UTF-16 (so that the seeds, written in ASCII,
                // work on either form), the bytes as given on 8-bit. The most frequent step.
                _ => client.send_text(data).await,
            }
        }
        for client in clients {
            client.close().await;
        }
    }
}

/// One connection, from the peer's side.
struct Client {
    form: WireForm,
    write: WriteHalf<DuplexStream>,
    /// UTF-16 only: an odd number of bytes was sent, the last code unit is half written.
    half_unit: bool,
    /// The highest sync token whose MV came back.
    synced: watch::Receiver<u64>,
    reader: JoinHandle<()>,
    served: JoinHandle<()>,
}

impl Client {
    async fn open(server: &RunningServer, opening: Opening, peer: SocketAddr) -> Client {
        let form = opening.form();
        let (ours, theirs) = tokio::io::duplex(PIPE_CAPACITY);
        let served = tokio::spawn(server.serve_stream(theirs, form, peer));
        let (read, write) = tokio::io::split(ours);
        let (synced_tx, synced) = watch::channel(0);
        let reader = tokio::spawn(async move {
            let codec = SdmpCodec::new(form).with_max_frame(MAX_OUTPUT_FRAME);
            let mut frames = FramedRead::new(read, codec);
            while let Some(frame) = frames.next().await {
                let frame = frame.expect("the codec never fails on input");
                if let Some(n) = check_output(frame, form) {
                    synced_tx.send_modify(|seen| *seen = (*seen).max(n));
                }
            }
        });
        let mut client = Client {
            form,
            write,
            half_unit: false,
            synced,
            reader,
            served,
        };
        if let Some(user) = opening.user() {
            client.authenticate(user).await;
        }
        client
    }

    async fn send_raw(&mut self, data: &[u8]) {
        if data.len() % 2 == 1 {
            self.half_unit = !self.half_unit;
        }
        self.write(data).await;
    }

    async fn send_text(&mut self, text: &[u8]) {
        match self.form {
            WireForm::Bits8 => self.write(text).await,
            WireForm::Utf16Le => {
                let units: Vec<u8> = text.iter().flat_map(|&b| [b, 0]).collect();
                self.write(&units).await;
            }
        }
    }

    /// Ends whatever frame is open, then sends one whole frame of text.
    async fn send_frame(&mut self, frame: &[u8]) {
        if self.half_unit {
            self.write(&[0]).await;
            self.half_unit = false;
        }
        let mut text = Vec::with_capacity(frame.len() + 2);
        text.push(b'\n');
        text.extend_from_slice(frame);
        text.push(b'\n');
        self.send_text(&text).await;
    }

    async fn authenticate(&mut self, user: usize) {
        let (tenant, name, _) = USERS[user];
        self.send_frame(format!("UA\\TD{tenant}\\AN{name}\\PW{PASSWORD}").as_bytes())
            .await;
    }

    /// Sends `VS\TK<token>` and waits for its MV, which comes after the replies to everything
    /// sent before it. A connection that ended needs no waiting.
    async fn sync(&mut self, n: u64) {
        let mut frame = b"VS\\TK".to_vec();
        frame.extend_from_slice(SYNC_TOKEN);
        frame.extend_from_slice(n.to_string().as_bytes());
        self.send_frame(&frame).await;
        let _ = self.synced.wait_for(|&seen| seen >= n).await;
    }

    async fn write(&mut self, data: &[u8]) {
        // The server closes its side only when it stops reading; the bytes then have nowhere
        // to go, which is no failure of the input.
        let _ = self.write.write_all(data).await;
    }

    /// The peer closes its side; the server must then finish the connection and close its own.
    async fn close(mut self) {
        let _ = self.write.shutdown().await;
        self.reader.await.expect("the reader checks every frame");
        self.served.await.expect("the connection ends");
    }
}

/// Checks one frame the server wrote; the number of a sync token when it is the MV of one.
fn check_output(frame: Frame, form: WireForm) -> Option<u64> {
    let Frame::Message(bytes) = frame else {
        panic!("ozbus wrote something that is no {form:?} frame: {frame:?}");
    };
    let envelope = sdmp::decode(&bytes).unwrap_or_else(|rejection| {
        panic!(
            "ozbus wrote a frame that does not decode ({rejection}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    match envelope.message {
        Message::Er(er) => {
            assert!(
                ErrorCode::from_number(er.ec).is_some(),
                "ER with an undocumented EC: {:?}",
                String::from_utf8_lossy(&bytes)
            );
            None
        }
        Message::Mv(mv) => mv
            .tk
            .strip_prefix(SYNC_TOKEN)
            .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok()),
        Message::Ef(_) | Message::Da(_) | Message::Us(_) | Message::Oz(_) | Message::Xg(_) => None,
        other => panic!(
            "ozbus sent {}, a message only its clients send: {:?}",
            other.spec().code,
            String::from_utf8_lossy(&bytes)
        ),
    }
}
