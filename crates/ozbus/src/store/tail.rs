//! The in-memory tail of the log: the most recent committed outcomes.
//!
//! Owns: a bounded window of `Arc<Outcome>` so caught-up subscribers read without touching
//! SQLite. Never: holds anything that is not committed (the writer pushes only after the
//! commit), and never answers for a position it does not fully cover (the caller then reads
//! SQLite).

use std::collections::VecDeque;
use std::sync::Arc;

use super::model::Outcome;
use super::rows::outcome_size;

pub(crate) struct Tail {
    capacity: usize,
    /// Bound on the outcomes' bytes too: a DT may be 128,000 characters, so a count alone
    /// would not bound memory.
    max_bytes: u64,
    bytes: u64,
    entries: VecDeque<Arc<Outcome>>,
    /// The tail holds every retained committed outcome with `seq > covers_after`.
    covers_after: u64,
}

impl Tail {
    /// An empty tail that covers everything after `last_seq` (nothing, yet).
    pub(crate) fn new(capacity: usize, max_bytes: u64, last_seq: u64) -> Tail {
        Tail {
            capacity,
            max_bytes,
            bytes: 0,
            entries: VecDeque::with_capacity(capacity.min(4096)),
            covers_after: last_seq,
        }
    }

    /// Adds freshly committed outcomes (ascending seq), evicting the oldest beyond capacity.
    pub(crate) fn extend(&mut self, outcomes: impl IntoIterator<Item = Arc<Outcome>>) {
        for outcome in outcomes {
            if self.capacity == 0 {
                self.covers_after = outcome.seq;
                continue;
            }
            self.bytes += outcome_size(&outcome.outcome);
            self.entries.push_back(outcome);
            while self.entries.len() > self.capacity
                || (self.bytes > self.max_bytes && self.entries.len() > 1)
            {
                let Some(evicted) = self.entries.pop_front() else {
                    break;
                };
                self.bytes -= outcome_size(&evicted.outcome);
                self.covers_after = evicted.seq;
            }
        }
    }

    /// Drops outcomes that retention removed from the log (every seq <= `upto`), so the tail
    /// never serves what SQLite no longer has.
    pub(crate) fn forget_upto(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|o| o.seq <= upto) {
            if let Some(evicted) = self.entries.pop_front() {
                self.bytes -= outcome_size(&evicted.outcome);
            }
        }
        self.covers_after = self.covers_after.max(upto);
    }

    /// Outcomes with seq > `after`, ascending, at most `limit` and about `max_bytes` (at least
    /// one); `None` when the tail does not cover `after`.
    pub(crate) fn read_after(
        &self,
        after: u64,
        limit: usize,
        max_bytes: u64,
    ) -> Option<Vec<Arc<Outcome>>> {
        if after < self.covers_after {
            return None;
        }
        let start = self.entries.partition_point(|o| o.seq <= after);
        let mut bytes = 0u64;
        let mut taken = 0usize;
        Some(
            self.entries
                .range(start..)
                .take(limit)
                .take_while(|o| {
                    let more = taken == 0 || bytes < max_bytes;
                    bytes = bytes.saturating_add(outcome_size(&o.outcome));
                    taken += 1;
                    more
                })
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::{NewOutcome, OutcomeClass};
    use bytes::Bytes;

    fn outcome(seq: u64) -> Arc<Outcome> {
        Arc::new(Outcome {
            seq,
            accepted_ms: 0,
            outcome: NewOutcome::new(
                Bytes::from_static(b"t"),
                OutcomeClass::Failure,
                Bytes::from_static(b"c"),
                Bytes::from_static(b"s"),
                0,
            ),
            rendered: Default::default(),
        })
    }

    fn seqs(v: Option<Vec<Arc<Outcome>>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|o| o.seq).collect())
    }

    #[test]
    fn covers_only_what_it_holds() {
        let mut tail = Tail::new(3, u64::MAX, 10);
        assert_eq!(seqs(tail.read_after(10, 10, u64::MAX)), Some(vec![]));
        assert_eq!(seqs(tail.read_after(9, 10, u64::MAX)), None);
        tail.extend((11..=15).map(outcome));
        assert_eq!(seqs(tail.read_after(11, 10, u64::MAX)), None);
        assert_eq!(
            seqs(tail.read_after(12, 10, u64::MAX)),
            Some(vec![13, 14, 15])
        );
        assert_eq!(seqs(tail.read_after(13, 1, u64::MAX)), Some(vec![14]));
        assert_eq!(seqs(tail.read_after(20, 10, u64::MAX)), Some(vec![]));
        tail.forget_upto(14);
        assert_eq!(seqs(tail.read_after(13, 10, u64::MAX)), None);
        assert_eq!(seqs(tail.read_after(14, 10, u64::MAX)), Some(vec![15]));
    }

    #[test]
    fn zero_capacity_never_serves_old_positions() {
        let mut tail = Tail::new(0, u64::MAX, 0);
        tail.extend((1..=3).map(outcome));
        assert_eq!(seqs(tail.read_after(2, 10, u64::MAX)), None);
        assert_eq!(seqs(tail.read_after(3, 10, u64::MAX)), Some(vec![]));
    }

    #[test]
    fn the_tail_is_bounded_by_bytes_too() {
        let one = outcome_size(&outcome(1).outcome);
        let mut tail = Tail::new(100, one * 2, 0);
        tail.extend((1..=5).map(outcome));
        // Only the two newest fit; the tail no longer answers for positions before them.
        assert_eq!(tail.read_after(2, 10, u64::MAX), None);
        let kept: Vec<u64> = tail
            .read_after(3, 10, u64::MAX)
            .unwrap()
            .iter()
            .map(|o| o.seq)
            .collect();
        assert_eq!(kept, vec![4, 5]);
    }

    #[test]
    fn a_read_takes_about_max_bytes_and_at_least_one_outcome() {
        let one = outcome_size(&outcome(1).outcome);
        let mut tail = Tail::new(100, u64::MAX, 0);
        tail.extend((1..=5).map(outcome));
        assert_eq!(seqs(tail.read_after(0, 10, one * 2)), Some(vec![1, 2]));
        assert_eq!(
            seqs(tail.read_after(0, 10, one * 2 + 1)),
            Some(vec![1, 2, 3])
        );
        assert_eq!(seqs(tail.read_after(0, 10, 0)), Some(vec![1]));
        assert_eq!(seqs(tail.read_after(0, 2, u64::MAX)), Some(vec![1, 2]));
    }
}
