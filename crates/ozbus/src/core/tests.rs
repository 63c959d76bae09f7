//! The core's ordering guarantees, shown deterministically: a test hook pauses the core at the
//! point where a race would open (after computing effects, before submitting them), and the
//! test does the racing request right then.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use sdmp::framing::Frame;
use sdmp::{SdmpCodec, WireForm};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::config::Config;
use crate::server::RunningServer;
use crate::store::Mutation;

type Hook = Box<dyn Fn(&[Mutation]) + Send + Sync>;

/// Points where a test can stop the core (only in test builds).
#[derive(Default)]
pub(super) struct Hooks {
    before_flush_submit: Mutex<Option<Hook>>,
}

impl Hooks {
    /// Called by `Core::flush_cursors` with what it is about to submit.
    pub(super) fn before_flush_submit(&self, mutations: &[Mutation]) {
        if let Some(hook) = &*self.before_flush_submit.lock() {
            hook(mutations);
        }
    }
}

const PATIENCE: Duration = Duration::from_secs(10);

struct Client(Framed<TcpStream, SdmpCodec>);

impl Client {
    async fn connect(server: &RunningServer) -> Client {
        let stream = TcpStream::connect(server.addr_8bit()).await.unwrap();
        Client(Framed::new(stream, SdmpCodec::new(WireForm::Bits8)))
    }

    async fn send(&mut self, frame: &str) {
        self.0.send(frame.as_bytes()).await.unwrap();
    }

    async fn receive(&mut self) -> String {
        let frame = tokio::time::timeout(PATIENCE, self.0.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .unwrap();
        match frame {
            Frame::Message(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
            other => panic!("unexpected frame {other:?}"),
        }
    }

    async fn expect(&mut self, frame: &str) {
        assert_eq!(self.receive().await, frame);
    }
}

/// An XA with TK is confirmed (MV) only once its cursor is committed, and from then on the
/// stored cursor never goes back: not even when a lazy write of an older cursor was computed
/// before the XA and reaches the store after it.
///
/// The server runs on a runtime of its own, so that while the core is stopped in the hook (and
/// a worker of the server waits for the lock it holds) the test's client keeps running.
#[tokio::test]
async fn a_lazy_cursor_write_never_takes_back_an_acknowledged_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime
        .spawn(RunningServer::start(Config::for_test(dir.path())))
        .await
        .unwrap()
        .unwrap();
    let mut subscriber = Client::connect(&server).await;
    let mut producer = Client::connect(&server).await;
    subscriber.send("EO\\TXt\\FO\\PSp\\XS\\TK1").await;
    subscriber.expect("MV\\TK1").await;
    for i in 1..=10 {
        producer.send(&format!("CF\\CA1\\CNc\\TN{i}\\TK{i}")).await;
        producer.expect(&format!("MV\\TK{i}")).await;
    }
    for seq in 1..=10 {
        let oz = subscriber.receive().await;
        assert!(oz.contains(&format!("\\XS{seq}\\")), "{oz}");
    }

    // The next flush that writes a cursor stops after computing it, until released.
    let (paused_tx, paused) = tokio::sync::oneshot::channel();
    let (release, released) = mpsc::channel::<()>();
    let paused_tx = Mutex::new(Some(paused_tx));
    let released = Mutex::new(released);
    let armed = AtomicBool::new(true);
    *server.core().hooks.before_flush_submit.lock() = Some(Box::new(move |mutations| {
        let writes_cursor = mutations
            .iter()
            .any(|m| matches!(m, Mutation::MoveCursor { .. }));
        if writes_cursor && armed.swap(false, Ordering::SeqCst) {
            if let Some(paused) = paused_tx.lock().take() {
                let _ = paused.send(());
            }
            // Blocks this worker thread; the runtime hands its other work to another one.
            let _ = tokio::task::block_in_place(|| released.lock().recv_timeout(PATIENCE));
        }
    }));

    // A lazy acknowledgement of 5 (VS/DA: it has been handled), then the flush computes its
    // write and stops there.
    subscriber.send("XA\\TXt\\XS5").await;
    subscriber.send("VS").await;
    subscriber.expect("DA").await;
    tokio::time::timeout(PATIENCE, paused)
        .await
        .expect("the flush reached the hook")
        .unwrap();

    // Meanwhile the client acknowledges everything with TK. Its MV may come at once (if the
    // XA does not wait for the flush) or after the flush is released: either way, once the
    // MV has come, the stored cursor must be 10 for good.
    subscriber.send("XA\\TXt\\XS10\\TK2").await;
    let early = tokio::time::timeout(Duration::from_secs(1), subscriber.receive()).await;
    release.send(()).unwrap();
    match early {
        Ok(frame) => assert_eq!(frame, "MV\\TK2"),
        Err(_) => subscriber.expect("MV\\TK2").await,
    }
    // What a crash now would leave: everything submitted so far has committed once an empty
    // batch submitted after it has.
    let store = &server.core().store;
    store.submit(Vec::new()).await.unwrap();
    let transactions = store.load_transactions().await.unwrap();
    assert_eq!(transactions.len(), 1);
    assert_eq!(
        transactions[0].cursor, 10,
        "the stored cursor went back below an acknowledged (MV) sequence number"
    );
    drop((subscriber, producer));
    runtime.spawn(server.shutdown()).await.unwrap().unwrap();
    runtime.shutdown_background();
}

/// A report is applied to the call book before its batch commits. When the batch then fails
/// for lack of space, the report is refused (EC 813) and must be gone from the book too, as it
/// is from the store: here an MC whose record would otherwise stay in memory, so that a later
/// RN would find (and close) a call the client was told was never registered.
#[tokio::test]
async fn a_report_refused_for_lack_of_space_leaves_nothing_in_the_call_book() {
    let dir = tempfile::tempdir().unwrap();
    let server = RunningServer::start(sqlite_config(dir.path()))
        .await
        .unwrap();
    let mut c = Client::connect(&server).await;
    c.send("MC\\CNc\\SIkept\\TK1").await;
    c.expect("MV\\TK1").await;

    let store = &server.core().store;
    store.sqlite().limit_growth(true).await;
    c.send(&format!("MC\\CNc\\SIlost\\DT{}\\TK2", "x".repeat(100_000)))
        .await;
    let refused = c.receive().await;
    assert!(
        refused.starts_with("ER\\EC813\\MSthe store is out of space"),
        "{refused:.200}"
    );
    // Refused up front while the store is full.
    c.send("CF\\CA2\\CNc\\SIother\\TK3").await;
    assert!(c.receive().await.starts_with("ER\\EC813\\"));
    store.sqlite().limit_growth(false).await;

    // The writer's probe finds room (this disk has it); then the record is not there.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        c.send("RN\\CNc\\SIlost\\TK4").await;
        let reply = c.receive().await;
        if reply.starts_with("ER\\EC411\\") {
            break;
        }
        assert!(reply.starts_with("ER\\EC813\\"), "{reply}");
        assert!(tokio::time::Instant::now() < deadline, "still refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What was acknowledged before is still there.
    c.send("RN\\CNc\\SIkept\\TK5").await;
    c.expect("MV\\TK5").await;
    drop(c);
    server.shutdown().await.unwrap();
}

/// A persisted transaction opens in memory at once, but its MV says its row is stored: when
/// that write fails for lack of space, the EO is not refused (its delivery has started), the
/// row is written again once there is room, and only then does the MV come.
#[tokio::test]
async fn an_eo_whose_row_found_no_room_gets_its_mv_once_the_row_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = RunningServer::start(sqlite_config(dir.path()))
        .await
        .unwrap();
    let store = &server.core().store;
    store.sqlite().limit_growth(true).await;
    // Fill the pages there are with rows of another tenant, smaller and smaller, until not even
    // a row smaller than the EO's finds room.
    let mut n = 0;
    for size in [500, 100, 20, 1] {
        loop {
            n += 1;
            let sql = format!(
                "INSERT INTO transactions (tenant, ps, request, cursor, released_ms) \
                 VALUES (x'00', CAST('{n}' AS BLOB), zeroblob({size}), 0, NULL)"
            );
            if store.sqlite().writer_sql(&sql).await.is_err() {
                break;
            }
            assert!(n < 100_000);
        }
    }

    let mut c = Client::connect(&server).await;
    c.send("EO\\TXt\\FO\\PSkeep\\TK1").await;
    let early = tokio::time::timeout(Duration::from_millis(1500), c.receive()).await;
    assert!(early.is_err(), "MV before the row was stored: {early:?}");
    assert!(store.is_full());
    store.sqlite().limit_growth(false).await;
    c.expect("MV\\TK1").await;
    let stored = store.load_transactions().await.unwrap();
    assert!(
        stored
            .iter()
            .any(|t| &t.ps[..] == b"keep" && &t.tenant[..] == b"default"),
        "{stored:?}"
    );
    drop(c);
    server.shutdown().await.unwrap();
}

/// A server on SQLite whatever store the suite runs against: these tests use SQLite's page
/// limit to run the store out of space (PostgreSQL's out-of-space handling has tests of its
/// own, in tests/pg_store.rs).
fn sqlite_config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_test(dir);
    config.store.url = None;
    config
}
