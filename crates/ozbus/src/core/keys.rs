//! Idempotency keys (XK) in memory: the keys of batches still in flight, and the most recently
//! committed ones, within fixed bounds; every other key is looked up in the store.
//!
//! Owns: which keys are in flight (with the commit a re-send waits for), which were committed
//! recently, when, and with which seq (a re-send is answered with it, as the first send was),
//! and a short memory of the recent ones it had to drop to stay within its bounds. Never: reads
//! the store, locks, spawns or waits. The core keeps it behind a lock of its own, taken after
//! the call book's, and does the store reads with no lock held.
//!
//! # Bounded, and still never missing a key
//!
//! A key is in memory from the moment its report is applied (under the book's lock) until its
//! batch resolves (in flight); if the batch committed, it stays (recent) until it is older than
//! the window or, to keep memory bounded in count and bytes, dropped oldest first. A key
//! dropped for space was committed before it was dropped, so any store read that starts after
//! the drop sees it. A request with a key therefore:
//!
//! 1. under this lock, finds the key in memory (done: it waits for the commit in flight, or is
//!    a re-send of a committed message), or takes a [`Mark`] of the drops so far;
//! 2. with no lock held, asks the store whether the key was committed within the window;
//! 3. under the book's lock and then this one, looks in memory again, and applies its report
//!    only if the key is still unknown and no drop since the mark can have been this key
//!    ([`Keys::recheck`]); otherwise it goes back to 1.
//!
//! Why no committed key is missed: suppose the key was committed by an earlier message. If
//! that message was applied after step 1, step 3 finds it in memory, or, if it was dropped
//! since, sees a drop after the mark. If it was applied before step 1 and was not in memory at
//! step 1, it had been dropped (committed) before step 1, so the store read of step 2, which
//! starts later, sees it. Two requests with the same new key cannot both apply: the second
//! to reach step 3 finds the first in flight. Drops are remembered as hashes, the last
//! [`DROPS_REMEMBERED`] of them; when more happened since a mark than that, or a hash matches
//! (possibly another key's), step 3 says "look again": a store read more, never a miss.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};

use crate::store::{CommitTicket, StoreError, UsedKey};

/// How many drops (for space) are remembered, as hashes, for requests between steps 1 and 3.
pub(super) const DROPS_REMEMBERED: usize = 4096;
/// What an entry costs besides its bytes: its place in the map (with its time and seq) and in
/// the queue.
const ENTRY_OVERHEAD: usize = 112;

/// The commit of a batch in flight, as every request waiting for it sees it.
type SharedCommit = Shared<BoxFuture<'static, Result<Vec<u64>, Arc<StoreError>>>>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct KeyId {
    tenant: Bytes,
    key: Bytes,
}

impl KeyId {
    fn new(tenant: &[u8], key: &[u8]) -> KeyId {
        KeyId {
            tenant: Bytes::copy_from_slice(tenant),
            key: Bytes::copy_from_slice(key),
        }
    }

    fn size(&self) -> usize {
        self.tenant.len() + self.key.len() + ENTRY_OVERHEAD
    }
}

/// The drops for space so far, taken before a store read (step 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mark(u64);

/// What memory says about a key at step 3.
pub(super) enum Recheck {
    /// Used already: the request's ticket (a committed message's, or the commit in flight).
    Seen(CommitTicket),
    /// Not in memory, and possibly dropped since the mark: look in the store again.
    Retry,
    /// Unknown: the request may apply, and registers its key with [`Keys::begin`].
    Unseen,
}

/// A committed key in memory.
struct Recent {
    /// When it was committed.
    at: i64,
    /// What the store holds with it.
    used: UsedKey,
}

/// Keys in flight and recently committed, for every tenant.
pub(super) struct Keys {
    in_flight: HashMap<KeyId, SharedCommit>,
    /// Committed keys, when and with which seq, oldest first in `order` (a key used again
    /// after its window may be in `order` twice; only the time `recent` holds counts).
    recent: HashMap<KeyId, Recent>,
    order: VecDeque<(KeyId, i64)>,
    recent_bytes: usize,
    /// Hashes of the last keys dropped for space, newest last.
    drops: VecDeque<u64>,
    dropped: u64,
    hasher: RandomState,
    window_ms: i64,
    max_keys: usize,
    max_bytes: usize,
}

/// A ticket for a message whose key was committed: its effect is durable already, and the
/// ticket resolves with the seqs the first message's commit gave.
pub(super) fn committed(used: UsedKey) -> CommitTicket {
    CommitTicket::from_future(std::future::ready(Ok(used.seqs())))
}

/// What a committed batch's key is stored with: the first seq the batch appended (the
/// writers store the same; a keyed report appends at most one outcome).
fn used(seqs: &[u64]) -> UsedKey {
    UsedKey {
        seq: seqs.first().copied(),
    }
}

/// A request's own view of a shared commit: a failure for lack of space stays one (the
/// store's callers test for it); any other is wrapped, and `core::commit_failure` looks through
/// the wrapping, so every request waiting for the commit gets the answer the first one gets.
fn unshare(result: Result<Vec<u64>, Arc<StoreError>>) -> Result<Vec<u64>, StoreError> {
    result.map_err(|error| match &*error {
        StoreError::OutOfSpace(cause) => StoreError::OutOfSpace(cause.clone()),
        _ => StoreError::CommitFailed(error),
    })
}

impl Keys {
    /// Keys count for `window_ms`; at most `max_keys` committed ones and `max_bytes` of them are
    /// kept in memory.
    pub(super) fn new(window_ms: i64, max_keys: usize, max_bytes: usize) -> Keys {
        Keys {
            in_flight: HashMap::new(),
            recent: HashMap::new(),
            order: VecDeque::new(),
            recent_bytes: 0,
            drops: VecDeque::with_capacity(DROPS_REMEMBERED),
            dropped: 0,
            hasher: RandomState::new(),
            window_ms,
            max_keys,
            max_bytes,
        }
    }

    /// The oldest commit time that still counts at `now_ms`.
    pub(super) fn since(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.window_ms)
    }

    /// Step 1: the ticket of a message already seen under this key, or the mark to look in the
    /// store with.
    pub(super) fn find(
        &mut self,
        tenant: &[u8],
        key: &[u8],
        now_ms: i64,
    ) -> Result<CommitTicket, Mark> {
        self.forget_expired(now_ms);
        let id = KeyId::new(tenant, key);
        if let Some(commit) = self.in_flight.get(&id) {
            return Ok(CommitTicket::from_future(commit.clone().map(unshare)));
        }
        if let Some(recent) = self.recent.get(&id) {
            if recent.at >= self.since(now_ms) {
                return Ok(committed(recent.used));
            }
        }
        Err(Mark(self.dropped))
    }

    /// Step 3, under the book's lock: whether the key is still unknown since `mark`.
    pub(super) fn recheck(
        &mut self,
        tenant: &[u8],
        key: &[u8],
        mark: Mark,
        now_ms: i64,
    ) -> Recheck {
        if let Ok(ticket) = self.find(tenant, key, now_ms) {
            return Recheck::Seen(ticket);
        }
        let since = match usize::try_from(self.dropped - mark.0) {
            Ok(0) => return Recheck::Unseen,
            Ok(n) if n <= self.drops.len() => n,
            _ => return Recheck::Retry,
        };
        let hash = self.hash(tenant, key);
        match self.drops.iter().rev().take(since).any(|h| *h == hash) {
            true => Recheck::Retry,
            false => Recheck::Unseen,
        }
    }

    /// Registers the key of a message whose batch was just submitted (`ticket`). Returns the
    /// message's own ticket and the commit to hand to [`Keys::finish`] once it resolves (the
    /// caller waits for it whether or not anyone waits for the message's ticket): what the key
    /// is stored with if the batch committed, none if it failed.
    pub(super) fn begin(
        &mut self,
        tenant: &[u8],
        key: &[u8],
        ticket: CommitTicket,
    ) -> (
        CommitTicket,
        impl std::future::Future<Output = Option<UsedKey>> + Send + 'static,
    ) {
        let commit: SharedCommit = async move { ticket.await.map_err(Arc::new) }
            .boxed()
            .shared();
        self.in_flight
            .insert(KeyId::new(tenant, key), commit.clone());
        let ticket = CommitTicket::from_future(commit.clone().map(unshare));
        (
            ticket,
            commit.map(|result| result.ok().map(|seqs| used(&seqs))),
        )
    }

    /// The batch of the key resolved: committed (`Some`), it is remembered as used at
    /// `now_ms`, with what the store holds with it; failed, it is forgotten (the message was
    /// refused, a re-send is a new message).
    pub(super) fn finish(
        &mut self,
        tenant: &[u8],
        key: &[u8],
        committed: Option<UsedKey>,
        now_ms: i64,
    ) {
        let id = KeyId::new(tenant, key);
        self.in_flight.remove(&id);
        let Some(used) = committed else {
            return;
        };
        // A key used again after its window is counted once, at its new time.
        let recent = Recent { at: now_ms, used };
        if self.recent.insert(id.clone(), recent).is_none() {
            self.recent_bytes += id.size();
        }
        self.order.push_back((id, now_ms));
        while self.recent.len() > self.max_keys || self.recent_bytes > self.max_bytes {
            let Some((id, at)) = self.order.pop_front() else {
                break;
            };
            if self.remove_recent(&id, at) {
                let hash = self.hash(&id.tenant, &id.key);
                if self.drops.len() == DROPS_REMEMBERED {
                    self.drops.pop_front();
                }
                self.drops.push_back(hash);
                self.dropped += 1;
            }
        }
    }

    /// Keys in flight, and committed keys in memory (for tests and bounds).
    #[cfg(test)]
    pub(super) fn len(&self) -> (usize, usize) {
        (self.in_flight.len(), self.recent.len())
    }

    /// Forgets committed keys past the window (not a drop: they no longer count anywhere).
    fn forget_expired(&mut self, now_ms: i64) {
        let since = self.since(now_ms);
        while let Some((id, at)) = self.order.front().cloned() {
            if at >= since {
                break;
            }
            self.order.pop_front();
            self.remove_recent(&id, at);
        }
    }

    /// Removes `id` if `at` is still its time (not a later use of the same key).
    fn remove_recent(&mut self, id: &KeyId, at: i64) -> bool {
        if self.recent.get(id).map(|recent| recent.at) != Some(at) {
            return false;
        }
        self.recent.remove(id);
        self.recent_bytes -= id.size();
        true
    }

    fn hash(&self, tenant: &[u8], key: &[u8]) -> u64 {
        self.hasher.hash_one((tenant, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> Vec<u8> {
        format!("key-{n}").into_bytes()
    }

    const NO_SEQ: UsedKey = UsedKey { seq: None };

    /// Registers and commits `key` at `now`.
    fn commit(keys: &mut Keys, tenant: &[u8], key: &[u8], now: i64) {
        let (_ticket, _done) = keys.begin(tenant, key, committed(NO_SEQ));
        keys.finish(tenant, key, Some(NO_SEQ), now);
    }

    #[tokio::test]
    async fn a_key_in_flight_is_waited_for_and_a_committed_one_answered_at_once() {
        let mut keys = Keys::new(1000, 10, 1 << 20);
        let (reply, pending) = tokio::sync::oneshot::channel();
        let (_first, done) = keys.begin(
            b"t",
            b"k",
            CommitTicket::from_future(async move { pending.await.unwrap() }),
        );
        let Ok(second) = keys.find(b"t", b"k", 0) else {
            panic!("in flight")
        };
        let waiting = tokio::spawn(second);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "waits for the commit in flight");
        reply.send(Ok(vec![7])).unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), vec![7]);
        let used = done.await;
        assert_eq!(used, Some(UsedKey { seq: Some(7) }));
        keys.finish(b"t", b"k", used, 0);
        // Committed: answered at once, with the first message's seq.
        let Ok(third) = keys.find(b"t", b"k", 10) else {
            panic!("committed")
        };
        assert_eq!(third.await.unwrap(), vec![7]);
        assert!(keys.find(b"other tenant", b"k", 10).is_err());
        // A batch that appended nothing: answered without a seq.
        let (_first, done) = keys.begin(b"t", b"mc", committed(NO_SEQ));
        let used = done.await;
        assert_eq!(used, Some(NO_SEQ));
        keys.finish(b"t", b"mc", used, 0);
        let Ok(again) = keys.find(b"t", b"mc", 10) else {
            panic!("committed")
        };
        assert_eq!(again.await.unwrap(), Vec::<u64>::new());
    }

    #[tokio::test]
    async fn a_key_whose_batch_failed_is_forgotten_and_its_waiters_refused_the_same_way() {
        let mut keys = Keys::new(1000, 10, 1 << 20);
        let full = StoreError::OutOfSpace(Arc::new(StoreError::Fenced));
        let (_first, done) = keys.begin(
            b"t",
            b"k",
            CommitTicket::from_future(std::future::ready(Err(full))),
        );
        let Ok(second) = keys.find(b"t", b"k", 0) else {
            panic!("in flight")
        };
        assert!(second.await.unwrap_err().is_out_of_space());
        let used = done.await;
        assert_eq!(used, None);
        keys.finish(b"t", b"k", used, 0);
        assert!(keys.find(b"t", b"k", 0).is_err(), "a new message now");
    }

    #[tokio::test]
    async fn a_key_whose_batch_the_book_refused_leaves_its_senders_a_refusal_not_a_failure() {
        let refusals = [
            StoreError::NotHolder,
            StoreError::RefusedByHolder {
                ec: 412,
                reason: "open".into(),
            },
            StoreError::Unanswered,
        ];
        for refusal in refusals {
            let what = refusal.to_string();
            let answer = format!("{:?}", super::super::commit_failure(&refusal));
            let mut keys = Keys::new(1000, 10, 1 << 20);
            let (first, done) = keys.begin(
                b"t",
                b"k",
                CommitTicket::from_future(std::future::ready(Err(refusal))),
            );
            let Ok(second) = keys.find(b"t", b"k", 0) else {
                panic!("in flight")
            };
            for ticket in [first, second] {
                let error = ticket.await.unwrap_err();
                // Each sender is answered as the first one would be: a refusal (or, for an
                // unanswered forward, "unknown"), never a failure that stops the service.
                let got = super::super::commit_failure(&error);
                assert_eq!(format!("{got:?}"), answer, "{what}");
                assert!(!format!("{got:?}").starts_with("Fatal"), "{what}");
            }
            assert_eq!(done.await, None, "{what}: the key stays unused");
        }
    }

    #[test]
    fn committed_keys_count_for_the_window_only() {
        let mut keys = Keys::new(1000, 10, 1 << 20);
        commit(&mut keys, b"t", b"k", 5000);
        assert!(keys.find(b"t", b"k", 5999).is_ok());
        assert!(keys.find(b"t", b"k", 6001).is_err());
        assert_eq!(keys.len(), (0, 0), "expired keys leave memory");
    }

    #[test]
    fn memory_stays_within_its_count_and_bytes_whatever_a_client_sends() {
        let mut keys = Keys::new(i64::MAX, 100, 1 << 20);
        for n in 0..10_000 {
            commit(&mut keys, b"t", &key(n), n as i64);
        }
        assert_eq!(keys.len(), (0, 100));
        assert!(keys.find(b"t", &key(9_999), 10_000).is_ok());
        assert!(
            keys.find(b"t", &key(0), 10_000).is_err(),
            "dropped: the store has it"
        );

        let long = vec![b'k'; 80];
        let mut keys = Keys::new(i64::MAX, usize::MAX, 10 * (80 + 1 + ENTRY_OVERHEAD));
        for n in 0..1000u32 {
            let mut key = long.clone();
            key.extend_from_slice(&n.to_be_bytes());
            commit(&mut keys, b"t", &key, 0);
        }
        assert!(keys.recent_bytes <= keys.max_bytes);
        assert!(keys.len().1 <= 10);
    }

    #[test]
    fn a_drop_after_the_mark_sends_the_request_back_to_the_store() {
        let mut keys = Keys::new(i64::MAX, 2, 1 << 20);
        let Err(mark) = keys.find(b"t", b"a", 0) else {
            panic!("unknown")
        };
        assert!(matches!(keys.recheck(b"t", b"a", mark, 0), Recheck::Unseen));
        // While the request read the store, "a" was committed by another message and dropped.
        commit(&mut keys, b"t", b"a", 0);
        commit(&mut keys, b"t", b"b", 0);
        commit(&mut keys, b"t", b"c", 0);
        assert!(matches!(keys.recheck(b"t", b"a", mark, 0), Recheck::Retry));
        // A drop of other keys only says nothing about this one.
        let Err(mark) = keys.find(b"t", b"z", 0) else {
            panic!("unknown")
        };
        commit(&mut keys, b"t", b"d", 0);
        assert!(matches!(keys.recheck(b"t", b"z", mark, 0), Recheck::Unseen));
        // Too many drops to tell: look again.
        let Err(mark) = keys.find(b"t", b"y", 0) else {
            panic!("unknown")
        };
        for n in 0..DROPS_REMEMBERED + 1 {
            commit(&mut keys, b"u", &key(n), 0);
        }
        assert!(matches!(keys.recheck(b"t", b"y", mark, 0), Recheck::Retry));
    }
}
