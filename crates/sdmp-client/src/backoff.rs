//! Exponential back-off with jitter, for reconnecting to a server that is away.
//!
//! Owns: the pause before each attempt: it doubles from a first step up to a ceiling, and each
//! pause is drawn between half the step and the whole step, so that many clients cut off by
//! one server restart do not all come back in the same millisecond.
//!
//! Never: decides when to retry or when to stop; the caller asks for the next pause and
//! resets after a success.
//!
//! Written here rather than taken from a crate: it is a dozen lines, and the reconnect loops
//! that use it also fail over between addresses and re-issue subscriptions, which no retry
//! crate knows how to do.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The pauses between attempts.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    most: Duration,
    step: Duration,
    /// The source of jitter: a keyed hash (random keys per process) of an attempt counter.
    random: RandomState,
    drawn: u64,
}

impl Backoff {
    /// The default first step.
    pub const FIRST: Duration = Duration::from_millis(50);
    /// The default ceiling.
    pub const MOST: Duration = Duration::from_secs(5);

    /// Steps from `first`, doubling, up to `most` (at least `first`).
    pub fn new(first: Duration, most: Duration) -> Backoff {
        Backoff {
            first,
            most: most.max(first),
            step: first,
            random: RandomState::new(),
            drawn: 0,
        }
    }

    /// The pause before the next attempt: between half the current step and the step; the
    /// step then doubles (up to the ceiling).
    pub fn next_pause(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.most);
        let half = step / 2;
        let spread = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.random_below(spread.saturating_add(1)))
    }

    /// Sleeps for [`next_pause`](Self::next_pause).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.first;
    }

    fn random_below(&mut self, n: u64) -> u64 {
        self.drawn += 1;
        let mut hasher = self.random.build_hasher();
        hasher.write_u64(self.drawn);
        hasher.finish() % n.max(1)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Backoff::FIRST, Backoff::MOST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_ceiling_with_jitter_below_each_step() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(700));
        for step in [100, 200, 400, 700, 700, 700] {
            let pause = backoff.next_pause();
            assert!(
                pause >= ms(step) / 2 && pause <= ms(step),
                "{pause:?} for step {step} ms"
            );
        }
        backoff.reset();
        assert!(backoff.next_pause() <= ms(100));
    }

    #[test]
    fn the_jitter_spreads_the_pauses() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let pauses: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff.next_pause()).collect();
        assert!(pauses.len() > 10, "{pauses:?}");
    }

    #[test]
    fn a_zero_step_never_panics() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(backoff.next_pause(), Duration::ZERO);
    }
}
