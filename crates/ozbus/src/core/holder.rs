//! Where call reports are decided: here, when this node holds the call book, or at the node
//! that holds it, to which they are forwarded.
//!
//! Owns: this node's view of who holds the book (the store's [`BookHolder`], and whether the
//! book in memory is loaded for the epoch the store gave), the one link to the holder (an SDMP
//! session authenticated as [`NODE_USER`] with the cluster's secret), and turning a report into
//! the frame the holder decides (the same message, in the tenant this node admitted it for,
//! with the sender's XK). Never: decides a report itself, checks a sender's rights (the core
//! did that before asking where to go), or sends a report twice: a report whose link broke
//! before its answer is reported as unanswered, and only its sender may send it again.
//!
//! One store alone (SQLite) always holds the book, from its first moment: nothing here is ever
//! used then but [`Holder::held`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sdmp::{Dialect, Envelope, ErrorCode, Message, MessageView, Rejection, WireForm};
use sdmp_client::{Connection, Credentials, Session, SessionOptions};
use tokio::sync::watch;

use super::auth::LANDLORD;
use crate::store::{BookHolder, CommitTicket, StoreError, NODE_USER};

/// How long a report waits for the book to have a holder (a node starting, a takeover)
/// before it is refused with EC 815.
pub(super) const BOOK_WAIT: Duration = Duration::from_secs(5);
/// How long connecting to the holder and authenticating may take.
const LINK_SETUP: Duration = Duration::from_secs(2);
/// How often the link is asked for a sign of life, and how long the answer may take.
const LINK_PROBE: Duration = Duration::from_secs(2);
const LINK_PROBE_WAIT: Duration = Duration::from_secs(5);
/// How long a link to a holder that was replaced may still bring answers.
const LINK_GRACE: Duration = Duration::from_secs(5);
/// Reports in flight on the link at most; more wait for room.
const LINK_WINDOW: usize = 16_384;

/// Where a report goes.
pub(super) enum Route {
    /// This node holds the book and has it loaded.
    Here,
    /// To the holder, over this session.
    Forward(Arc<Session>),
}

/// Who holds the call book, as this node knows it.
pub(super) struct Holder {
    holder: watch::Receiver<BookHolder>,
    /// True while this node holds the book and the book in memory is the store's for its
    /// epoch. Changed by [`Core::follow_book_holder`](super::Core) only.
    held: watch::Sender<bool>,
    secret: Option<Bytes>,
    link: tokio::sync::Mutex<Option<Link>>,
}

struct Link {
    node: i64,
    epoch: i64,
    session: Arc<Session>,
}

impl Holder {
    pub(super) fn new(
        holder: watch::Receiver<BookHolder>,
        held: bool,
        secret: Option<Bytes>,
    ) -> Holder {
        Holder {
            holder,
            held: watch::channel(held).0,
            secret,
            link: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether the book in memory is this node's to decide with.
    pub(super) fn held(&self) -> bool {
        *self.held.borrow()
    }

    pub(super) fn set_held(&self, held: bool) {
        self.held.send_replace(held);
    }

    /// Follows the store's [`BookHolder`].
    pub(super) fn watch(&self) -> watch::Receiver<BookHolder> {
        self.holder.clone()
    }

    /// The cluster's secret, which a node presents to the holder.
    pub(super) fn secret(&self) -> Option<&Bytes> {
        self.secret.as_ref()
    }

    /// Where a report goes now; waits up to [`BOOK_WAIT`] while nobody holds the book or this
    /// node is loading it, then refuses with EC 815.
    pub(super) async fn route(&self) -> Result<Route, Rejection> {
        if self.held() {
            return Ok(Route::Here);
        }
        let deadline = tokio::time::Instant::now() + BOOK_WAIT;
        let (mut holder, mut held) = (self.holder.clone(), self.held.subscribe());
        loop {
            if *held.borrow_and_update() {
                return Ok(Route::Here);
            }
            let peer = match &*holder.borrow_and_update() {
                BookHolder::Peer { node, epoch, .. } => Some((*node, *epoch)),
                BookHolder::Me { .. } | BookHolder::Unknown => None,
            };
            if let Some((node, epoch)) = peer {
                return self.link(node, epoch).await.map(Route::Forward);
            }
            // A store alone never changes its holder (its sender is gone): only `held` can.
            let holder_changed = async {
                if holder.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            let changed = async {
                tokio::select! {
                    () = holder_changed => true,
                    changed = held.changed() => changed.is_ok(),
                }
            };
            match tokio::time::timeout_at(deadline, changed).await {
                Ok(true) => continue,
                Ok(false) | Err(_) => return Err(unavailable("no node holds the call book now")),
            }
        }
    }

    /// The session to the holder `node` under `epoch`, connected and authenticated now when
    /// the one in hand is to another holder, or broken.
    async fn link(&self, node: i64, epoch: i64) -> Result<Arc<Session>, Rejection> {
        let mut link = self.link.lock().await;
        if let Some(current) = link.as_ref() {
            if current.node == node && current.epoch == epoch && !current.session.is_closed() {
                return Ok(current.session.clone());
            }
        }
        if let Some(old) = link.take() {
            // Answers still on their way get a moment; then the old link ends, and what it
            // did not answer is unanswered (a holder that vanished never answers).
            tokio::spawn(async move {
                tokio::time::sleep(LINK_GRACE).await;
                old.session.abort();
            });
        }
        let Some(secret) = &self.secret else {
            return Err(unavailable("this node has no cluster secret to present"));
        };
        // Read only to connect: reports on a link in hand cost no copy of it.
        let addr = match &*self.holder.borrow() {
            BookHolder::Peer {
                node: now,
                epoch: then,
                addr,
            } if (*now, *then) == (node, epoch) => addr.clone(),
            _ => {
                return Err(unavailable(
                    "the call book moved to another node; send again",
                ))
            }
        };
        let addr = addr.as_str();
        let credentials = Credentials {
            tenant: String::from_utf8_lossy(LANDLORD).into_owned(),
            name: NODE_USER.to_owned(),
            password: String::from_utf8_lossy(secret).into_owned(),
        };
        let connect = async {
            let mut conn = Connection::connect(addr, WireForm::Bits8).await?;
            conn.log_in(&credentials, LINK_SETUP).await?;
            Ok::<_, sdmp_client::Error>(conn)
        };
        let conn = match tokio::time::timeout(LINK_SETUP, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(error)) => {
                tracing::warn!(%error, node, addr, "cannot reach the node holding the call book");
                return Err(unavailable("cannot reach the node holding the call book"));
            }
            Err(_) => {
                tracing::warn!(
                    node,
                    addr,
                    "the node holding the call book did not answer in time"
                );
                return Err(unavailable(
                    "the node holding the call book did not answer in time",
                ));
            }
        };
        tracing::info!(
            node,
            epoch,
            addr,
            "forwarding call reports to the node holding the call book"
        );
        let options = SessionOptions {
            window: LINK_WINDOW,
            token_prefix: "n".into(),
            keep_other_frames: 16,
        };
        let session = Arc::new(Session::new(conn, options));
        tokio::spawn(watch_link(Arc::downgrade(&session)));
        *link = Some(Link {
            node,
            epoch,
            session: session.clone(),
        });
        Ok(session)
    }
}

/// Asks the holder for a sign of life on the link every [`LINK_PROBE`] (a VS, answered by
/// MV) and ends the link when none comes within [`LINK_PROBE_WAIT`]: a link to a node that
/// vanished without closing it would otherwise keep its reports unanswered for as long as TCP
/// does not notice. Ends with the link.
async fn watch_link(session: std::sync::Weak<Session>) {
    loop {
        tokio::time::sleep(LINK_PROBE).await;
        let Some(link) = session.upgrade() else {
            return;
        };
        if link.is_closed() {
            return;
        }
        let answered = async {
            let receipt = link.send(b"VS").await.ok()?;
            receipt.await.ok()
        };
        if tokio::time::timeout(LINK_PROBE_WAIT, answered)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            tracing::warn!(
                peer = link.peer(),
                "the node holding the call book stopped answering on the link: ending it"
            );
            link.abort();
            return;
        }
    }
}

/// Sends `message` of `tenant` to the holder over `session`, which stays open until the answer
/// came. The ticket resolves with the seq
/// the holder's MV carries, as [`StoreError::RefusedByHolder`] on its ER, or as
/// [`StoreError::Unanswered`] when the link broke first.
pub(super) async fn forward(
    session: Arc<Session>,
    tenant: &[u8],
    message: &Message<'_>,
) -> Result<CommitTicket, Rejection> {
    let frame = Envelope {
        dialect: Dialect::V1,
        message: for_holder(*message, tenant),
    }
    .to_bytes();
    let receipt = session
        .send(&frame)
        .await
        .map_err(|_| unavailable("the link to the node holding the call book was lost"))?;
    Ok(CommitTicket::from_future(async move {
        // The session stays open until its answer came, even once the link moved on to a
        // new holder: an answer in flight is not thrown away.
        let _link = session;
        match receipt.accepted().await {
            Ok(mv) => Ok(sequence_of(&mv).into_iter().collect()),
            Err(sdmp_client::Error::Refused(er)) => Err(StoreError::RefusedByHolder {
                ec: er.ec,
                reason: er.ms.clone(),
            }),
            Err(_) => Err(StoreError::Unanswered),
        }
    }))
}

/// The message as the holder must decide it: in `tenant` (TD), without the sender's TK (the
/// link gives its own).
fn for_holder<'a>(mut message: Message<'a>, tenant: &'a [u8]) -> Message<'a> {
    macro_rules! retarget {
        ($($kind:ident),*) => {
            match &mut message {
                $( Message::$kind(m) => {
                    m.td = Some(tenant);
                    m.tk = None;
                } )*
                _ => {}
            }
        };
    }
    retarget!(Mc, Rn, Lc, Cf, Tc, Bd, Uo);
    message
}

/// XS of the holder's MV: the seq of the outcome the report produced, if any.
fn sequence_of(mv: &[u8]) -> Option<u64> {
    let view = MessageView::parse(mv).ok()?;
    std::str::from_utf8(view.first(sdmp::Code(*b"XS"))?)
        .ok()?
        .parse()
        .ok()
}

/// EC 815: nothing was done, the report may be sent again.
pub(super) fn unavailable(reason: &'static str) -> Rejection {
    Rejection::new(ErrorCode::BookUnavailable, reason)
}
