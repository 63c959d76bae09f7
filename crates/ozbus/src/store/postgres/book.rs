//! The call book's lease: which node holds the book, and this node's bid for it.
//!
//! Owns: the lease connection (one of its own, never pooled; reconnected with back-off), the
//! session-level advisory lock [`BOOK_LOCK`] that this node holds on it while it holds the
//! book, the writes of the `book_lease` row that take and let go of the book, and what this
//! node publishes about the holder: [`BookHolder`] for the service, and the epoch the writer
//! fences the book's groups with ([`Book::epoch`]). Never: writes the book's data (the
//! writer does, fenced), decides anything about calls, bids before the store was given an
//! address ([`Book::advertise`]), and never says `Me` before its own raise of the epoch
//! committed, nor goes on saying it once a check of the lock's session failed or went
//! unanswered (safety does not hang on that timing: the writer's fence keeps it).
//!
//! # Taking the book
//!
//! A node that bids tries `pg_try_advisory_lock(BOOK_LOCK)` at once when it is given its
//! address, then every [`CHECK_INTERVAL`] and at every announcement on [`BOOK_CHANNEL`]. The
//! session that gets the lock raises the row's epoch and names this node and its address (one
//! statement, which also announces it), then publishes `Me { epoch }`. A node alone therefore
//! holds the book a few milliseconds after it was given its address.
//!
//! # Holding it
//!
//! The lock lives as long as the lease connection's session. The holder reads the row every
//! [`CHECK_INTERVAL`] (and when the writer found its epoch fenced out): a read that fails, or
//! takes longer than [`CHECK_TIMEOUT`], or finds another epoch, makes it publish `Unknown` at
//! once (it can no longer tell), drop the connection, and bid again only after [`STEP_BACK`],
//! so that a node whose connection is sound takes over first. The server ends the session of
//! a node that vanished within about 15 s (`schema::SERVER_KEEPALIVES`), which frees the lock.
//! At close the holder clears the row's node and address, unlocks and announces it, so that
//! another node takes over at once; and publishes `Unknown`.
//!
//! # Fencing
//!
//! Only a group transaction whose `SELECT ozbus_book_fence(epoch)` passed can write the book
//! (see `writer`). The function locks the row FOR SHARE for the rest of that transaction, and
//! a new holder's raise of the epoch is an UPDATE of the row, which takes the row's FOR NO KEY
//! UPDATE lock: the two conflict. Under READ COMMITTED:
//!
//! - a fence that passed before the raise holds its lock until its transaction ends, so the
//!   raise waits until every such group of the old holder has committed (or rolled back);
//! - a fence that comes while the raise holds the row waits for the raise's transaction, then
//!   re-reads the row's newest version (as READ COMMITTED does for a locking read) and no
//!   longer finds the old epoch: SQLSTATE OZ001, the group rolls back;
//! - a fence after the raise committed reads the new epoch at once: OZ001.
//!
//! So the new epoch commits after every committed group of the old holder (happens-after),
//! and no group of the old holder commits after it; the new holder, which reads the book only
//! once its raise committed, finds all of them. (Under a stricter default isolation the second
//! case fails as a serialization failure instead, which the writer tries again: then the
//! third.)
//!
//! # Other nodes
//!
//! A node that does not hold the book reads the row every [`CHECK_INTERVAL`] and at every
//! announcement, and publishes `Peer` when the row names another node and somebody holds the
//! lock; `Unknown` when the row names nobody, names this node (a session of it that is
//! gone), or when nobody holds the lock (the holder's session ended and nobody took over yet).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};
use tokio_util::sync::CancellationToken;

use super::schema::{BOOK_CHANNEL, BOOK_LOCK};
use super::Shared;
use crate::store::{BookHolder, StoreError};

/// How often the holder makes sure it still holds the book, and another node reads who does
/// (and bids, if it does).
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A check that takes longer than this counts as failed: the holder publishes `Unknown`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// After it lost the book with its connection, a node bids again only after this long.
const STEP_BACK: Duration = Duration::from_secs(3);
/// First wait before reconnecting; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What this node knows of the book's holder, shared by the lease task, the writer and every
/// handle.
pub(crate) struct Book {
    holder: watch::Sender<BookHolder>,
    /// The epoch under which this node holds the book; 0: it does not. Changed before
    /// `holder`, so the writer knows first when the node takes the book, and first when it no
    /// longer holds it.
    epoch: AtomicI64,
    /// The address at which this node takes reports from its peers; `None`: it does not bid.
    addr: watch::Sender<Option<String>>,
    /// Wakes the lease task to check at once.
    check: Notify,
}

impl Book {
    pub(crate) fn new() -> Book {
        Book {
            holder: watch::Sender::new(BookHolder::Unknown),
            epoch: AtomicI64::new(0),
            addr: watch::Sender::new(None),
            check: Notify::new(),
        }
    }

    /// The epoch under which this node holds the book, 0 when it does not.
    pub(crate) fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Follows the holder.
    pub(crate) fn subscribe(&self) -> watch::Receiver<BookHolder> {
        self.holder.subscribe()
    }

    /// This node bids for the book from now on, taking reports at `addr` (a holder updates the
    /// address in the row).
    pub(crate) fn advertise(&self, addr: String) {
        self.addr.send_if_modified(|current| {
            let changed = current.as_deref() != Some(addr.as_str());
            *current = Some(addr);
            changed
        });
    }

    /// The writer found that `epoch` is no longer the book's: the lease task checks at once.
    pub(crate) fn fenced_out(&self, epoch: i64) {
        tracing::info!(epoch, "another node took the call book");
        self.check.notify_one();
    }

    fn publish(&self, holder: BookHolder) {
        let epoch = match holder {
            BookHolder::Me { epoch } => epoch,
            _ => 0,
        };
        self.epoch.store(epoch, Ordering::Release);
        self.holder.send_if_modified(|current| {
            let changed = *current != holder;
            if changed {
                match &holder {
                    BookHolder::Me { epoch } => {
                        tracing::info!(epoch, "this node holds the call book")
                    }
                    BookHolder::Peer { node, epoch, addr } => {
                        tracing::info!(node, epoch, addr, "another node holds the call book")
                    }
                    BookHolder::Unknown => tracing::info!("who holds the call book is not known"),
                }
                *current = holder;
            }
            changed
        });
    }
}

/// The application name of a node's lease connection.
pub(crate) fn application_name(node: i64) -> String {
    format!("ozbus-book-{node}")
}

/// The lease connection: the client, the task that drives it, and the announcements on
/// [`BOOK_CHANNEL`] (the channel closes when the connection ends).
struct Session {
    client: Client,
    driver: JoinHandle<()>,
    announced: mpsc::UnboundedReceiver<()>,
}

impl Session {
    /// Closes the connection: the server ends the session, which frees the lock.
    async fn end(self) {
        let Session { client, driver, .. } = self;
        drop(client);
        let mut driver = driver;
        if tokio::time::timeout(Duration::from_secs(1), &mut driver)
            .await
            .is_err()
        {
            driver.abort();
        }
    }
}

/// Why a turn did not go through.
enum Fault {
    /// The connection failed, or PostgreSQL refused.
    Failed(StoreError),
    /// No answer within [`CHECK_TIMEOUT`].
    Late,
    /// The row holds another epoch than the one this session took.
    Displaced { epoch: i64, found: i64 },
    /// The store closes.
    Stopped,
}

/// How a session ended.
enum Ended {
    /// The store closes.
    Stopped,
    /// The connection failed, or this node can no longer tell that it holds the book;
    /// `held`: it held it.
    Lost { held: bool },
}

/// The lease task.
pub(crate) struct Lease {
    config: Config,
    node: i64,
    shared: Arc<Shared>,
    session: Option<Session>,
    /// No bid before this time (after the book was lost with a connection).
    bid_from: Instant,
}

impl Lease {
    /// Connects (the first connection must succeed, as the writer's must).
    pub(crate) async fn connect(
        config: &Config,
        node: i64,
        shared: Arc<Shared>,
    ) -> Result<Lease, StoreError> {
        let mut config = config.clone();
        config.application_name(application_name(node));
        let session = Some(open_session(&config).await?);
        Ok(Lease {
            config,
            node,
            shared,
            session,
            bid_from: Instant::now(),
        })
    }

    fn book(&self) -> &Book {
        &self.shared.book
    }

    /// The task's body: until `stop`, one session after the other. Lets go of the book, and
    /// publishes `Unknown`, when it ends.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let session = match self.session.take() {
                Some(session) => session,
                None => {
                    let opened = tokio::select! {
                        () = stop.cancelled() => break,
                        opened = open_session(&self.config) => opened,
                    };
                    match opened {
                        Ok(session) => session,
                        Err(error) => {
                            tracing::debug!(%error, "the call book's lease cannot reach postgres");
                            tokio::select! {
                                () = stop.cancelled() => break,
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                            continue;
                        }
                    }
                }
            };
            let mut session = session;
            let ended = self.serve(&mut session, &stop, &mut backoff).await;
            session.end().await;
            match ended {
                Ended::Stopped => break,
                Ended::Lost { held } => {
                    self.book().publish(BookHolder::Unknown);
                    if held {
                        self.bid_from = Instant::now() + STEP_BACK;
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.book().publish(BookHolder::Unknown);
    }

    /// One session's life: turns of bid, check or read, each followed by a wait.
    async fn serve(
        &mut self,
        session: &mut Session,
        stop: &CancellationToken,
        backoff: &mut Duration,
    ) -> Ended {
        let mut addr = self.book().addr.subscribe();
        // The epoch and the address this session holds the book under.
        let mut held: Option<(i64, String)> = None;
        if let Err(error) = session
            .client
            .batch_execute(&format!("LISTEN {BOOK_CHANNEL}"))
            .await
        {
            tracing::debug!(%error, "the call book's lease connection failed");
            return Ended::Lost { held: false };
        }
        loop {
            let bid = addr.borrow_and_update().clone();
            let turn = self.turn(&session.client, &mut held, bid, stop).await;
            let fault = match turn {
                Ok(()) => {
                    *backoff = BACKOFF_MIN;
                    None
                }
                Err(fault) => Some(fault),
            };
            if let Some(fault) = fault {
                let (node, was) = (self.node, held.is_some());
                // First of all: this node can no longer tell that it holds the book.
                if was {
                    self.book().publish(BookHolder::Unknown);
                }
                match fault {
                    Fault::Stopped => return Ended::Stopped,
                    Fault::Failed(error) => tracing::warn!(
                        %error, node, held = was, "the call book's lease connection failed"
                    ),
                    Fault::Late => tracing::warn!(
                        node,
                        held = was,
                        "the call book's lease connection did not answer in time"
                    ),
                    Fault::Displaced { epoch, found } => tracing::warn!(
                        node,
                        epoch,
                        found,
                        "the call book's epoch changed while this node held its lock"
                    ),
                }
                return Ended::Lost { held: was };
            }
            let bid_later =
                held.is_none() && addr.borrow().is_some() && self.bid_from > Instant::now();
            tokio::select! {
                () = stop.cancelled() => {
                    if let Some((epoch, _)) = held {
                        self.release(&session.client, epoch).await;
                    }
                    return Ended::Stopped;
                }
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
                () = tokio::time::sleep_until(self.bid_from), if bid_later => {}
                announced = session.announced.recv() => {
                    if announced.is_none() {
                        let was = held.is_some();
                        if was {
                            self.book().publish(BookHolder::Unknown);
                        }
                        tracing::warn!(node = self.node, held = was, "the call book's lease connection ended");
                        return Ended::Lost { held: was };
                    }
                    // Several announcements at once call for one read.
                    while session.announced.try_recv().is_ok() {}
                }
                _ = addr.changed() => {}
                () = self.book().check.notified() => {}
            }
        }
    }

    /// One turn: bids (when it may and does not hold the book), then checks that it holds it,
    /// or reads who does; publishes what it found.
    async fn turn(
        &mut self,
        client: &Client,
        held: &mut Option<(i64, String)>,
        bid: Option<String>,
        stop: &CancellationToken,
    ) -> Result<(), Fault> {
        if let (None, Some(addr)) = (&*held, &bid) {
            if Instant::now() >= self.bid_from {
                let locked: bool =
                    bounded(client.query_one("SELECT pg_try_advisory_lock($1)", &[&BOOK_LOCK]))
                        .await?
                        .get(0);
                if locked {
                    // Not bounded in time: the raise waits for the old holder's groups.
                    let taken = tokio::select! {
                        () = stop.cancelled() => return Err(Fault::Stopped),
                        taken = self.take(client, addr) => taken,
                    };
                    let epoch = taken.map_err(|error| Fault::Failed(error.into()))?;
                    *held = Some((epoch, addr.clone()));
                }
            }
        }
        match held {
            Some((epoch, written)) => {
                let row =
                    bounded(client.query_one("SELECT epoch FROM book_lease WHERE id = 0", &[]))
                        .await?;
                let found: i64 = row.get(0);
                if found != *epoch {
                    return Err(Fault::Displaced {
                        epoch: *epoch,
                        found,
                    });
                }
                if let Some(addr) = bid.filter(|addr| addr != written) {
                    let sql = format!(
                        "WITH b AS (UPDATE book_lease SET addr = $2 \
                         WHERE id = 0 AND epoch = $1 RETURNING epoch) \
                         SELECT pg_notify('{BOOK_CHANNEL}', 'h ' || epoch) FROM b"
                    );
                    bounded(client.execute(&sql, &[&*epoch, &addr])).await?;
                    *written = addr;
                }
                self.book().publish(BookHolder::Me { epoch: *epoch });
            }
            None => {
                let read = client.query_one(
                    "SELECT b.epoch, b.node, b.addr, EXISTS (
                         SELECT 1 FROM pg_locks l
                         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                           AND l.database =
                               (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND l.classid = ($1::bigint >> 32)::oid
                           AND l.objid = ($1::bigint & 4294967295)::oid)
                     FROM book_lease b WHERE b.id = 0",
                    &[&BOOK_LOCK],
                );
                let row = bounded(read).await?;
                let (epoch, node, addr, locked): (i64, Option<i64>, Option<String>, bool) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                let holder = match (node, addr) {
                    (Some(node), Some(addr)) if locked && node != self.node => {
                        BookHolder::Peer { node, epoch, addr }
                    }
                    _ => BookHolder::Unknown,
                };
                self.book().publish(holder);
            }
        }
        Ok(())
    }

    /// With the lock held: raises the epoch, names this node and `addr`, and announces it, in
    /// one statement; returns the new epoch. Waits until the old holder's groups have ended
    /// (see the module comment).
    async fn take(&self, client: &Client, addr: &str) -> Result<i64, tokio_postgres::Error> {
        let row = client
            .query_one(
                &format!(
                    "WITH b AS (UPDATE book_lease SET epoch = epoch + 1, node = $1, addr = $2 \
                     WHERE id = 0 RETURNING epoch) \
                     SELECT b.epoch FROM b, \
                     LATERAL (SELECT pg_notify('{BOOK_CHANNEL}', 'h ' || b.epoch)) n"
                ),
                &[&self.node, &addr],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Lets go of the book (at close): clears the row's node and address, unlocks, and
    /// announces it, so another node takes it at once; within a bounded time (a node that
    /// cannot do this lets go when its connection closes, and others find out by themselves).
    async fn release(&self, client: &Client, epoch: i64) {
        self.book().publish(BookHolder::Unknown);
        let released = tokio::time::timeout(
            CHECK_TIMEOUT,
            client.execute(
                &format!(
                    "WITH b AS (UPDATE book_lease SET node = NULL, addr = NULL \
                     WHERE id = 0 AND epoch = $1 RETURNING epoch) \
                     SELECT pg_advisory_unlock($2), pg_notify('{BOOK_CHANNEL}', 'r ' || epoch) \
                     FROM b"
                ),
                &[&epoch, &BOOK_LOCK],
            ),
        )
        .await;
        match released {
            Ok(Ok(_)) => tracing::info!(epoch, "this node let go of the call book"),
            Ok(Err(error)) => tracing::debug!(%error, "could not let go of the call book"),
            Err(_) => tracing::debug!("letting go of the call book took too long"),
        }
    }
}

/// `query`'s answer, within [`CHECK_TIMEOUT`].
async fn bounded<T>(
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Fault> {
    match tokio::time::timeout(CHECK_TIMEOUT, query).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Fault::Failed(error.into())),
        Err(_) => Err(Fault::Late),
    }
}

/// Connects, and forwards the announcements on [`BOOK_CHANNEL`] (once LISTENed to).
async fn open_session(config: &Config) -> Result<Session, StoreError> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (announce, announced) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if announce.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "the call book's lease connection failed");
                    break;
                }
            }
        }
    });
    Ok(Session {
        client,
        driver,
        announced,
    })
}
