//! The service's recent activity, as operators' screens show it: how many outcomes were
//! accepted in each second of the last minutes (by tenant, campaign and class), the latest
//! outcomes of each tenant, refusals by EC, and the store's commits.
//!
//! Owns the follower that counts outcomes (a cursor over the log, like a delivery, reading the
//! same in-memory tail; it delivers nothing), the windows of per-second counts, the
//! process-wide count of refusals by EC (every front end calls [`rejected`] where it counts
//! `ozbus_rejections_total`), the samples of the store's commit counters, and
//! [`Core::summary`]: the tenant rules of what a session sees of all that (those of the
//! transactions list). Never: reads the store's past (it starts at the log end and, when it
//! falls far behind, skips ahead rather than read the database), holds its lock while the
//! store answers, or keeps memory that grows with traffic (every window, list and map here
//! has a bound).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use sdmp::{ErrorCode, Rejection};
use tokio_util::sync::CancellationToken;

use super::auth::Act;
use super::{now_ms, Core, Session};
use crate::store::{NewOutcome, Outcome, OutcomeClass, Store, StoreStats};

/// The longest window a summary covers, in seconds.
pub const WINDOW_SECONDS: usize = 300;
/// The latest outcomes kept per tenant.
pub const LATEST: usize = 20;
/// Campaigns a summary names; the others are added up as one.
pub const TOP_CAMPAIGNS: usize = 8;
/// Distinct (tenant, campaign) counted in one second; beyond, they count as one, unnamed.
const KEYS_PER_SECOND: usize = 256;
/// Tenants whose latest outcomes are kept; the one that has been quiet longest makes room.
const TENANTS_KEPT: usize = 256;
/// DT and AS of a latest outcome are kept up to this many bytes.
const VALUE_BYTES: usize = 256;
/// The follower reads this many outcomes per step ...
const READ_BATCH: usize = 4096;
/// ... and about this many bytes of them.
const READ_BYTES: u64 = 4 * 1024 * 1024;
/// Further behind the log end than this, the follower skips ahead (those outcomes are not
/// counted) rather than read them from the database.
const MAX_LAG: u64 = 100_000;
/// Samples of the store's counters kept (one a second).
const STORE_SAMPLES: usize = 61;
/// The commit rate and latency a summary gives are over this many seconds.
const COMMIT_SPAN: usize = 10;

/// One second's outcome counts, by (tenant, campaign), per class.
struct Second {
    at: i64,
    counts: HashMap<(Bytes, Bytes), [u32; 3]>,
}

#[derive(Default)]
struct Outcomes {
    /// Ascending by `at`, at most [`WINDOW_SECONDS`] apart.
    seconds: VecDeque<Second>,
    /// Each tenant's latest outcomes, newest last.
    latest: HashMap<Bytes, VecDeque<Arc<Outcome>>>,
    /// Outcomes the follower skipped because it fell too far behind.
    skipped: u64,
}

/// What the core keeps of its recent activity.
#[derive(Default)]
pub(crate) struct Activity {
    outcomes: Mutex<Outcomes>,
    /// (unix second, the store's counters then), newest last.
    store: Mutex<VecDeque<(i64, StoreStats)>>,
}

/// The key that stands for every (tenant, campaign) beyond [`KEYS_PER_SECOND`] in a second.
fn overflow_key() -> (Bytes, Bytes) {
    (Bytes::new(), Bytes::new())
}

fn class_index(class: OutcomeClass) -> usize {
    match class {
        OutcomeClass::Success => 0,
        OutcomeClass::Failure => 1,
        OutcomeClass::Management => 2,
    }
}

/// `value`'s first [`VALUE_BYTES`] bytes (at a character boundary when it is UTF-8), copied so
/// that the outcome's own buffer is not kept alive.
fn shortened(value: &Bytes) -> Bytes {
    let mut end = value.len().min(VALUE_BYTES);
    if let Ok(text) = std::str::from_utf8(value) {
        while !text.is_char_boundary(end) {
            end -= 1;
        }
    }
    Bytes::copy_from_slice(&value[..end])
}

/// A copy of `outcome` small enough to keep: DT and AS shortened, every value copied.
fn keepable(outcome: &Outcome) -> Arc<Outcome> {
    let o = &outcome.outcome;
    let copy = |b: &Option<Bytes>| b.as_ref().map(|b| Bytes::copy_from_slice(b));
    Arc::new(Outcome {
        seq: outcome.seq,
        accepted_ms: outcome.accepted_ms,
        outcome: NewOutcome {
            tenant: Bytes::copy_from_slice(&o.tenant),
            class: o.class,
            cn: Bytes::copy_from_slice(&o.cn),
            an: copy(&o.an),
            si: Bytes::copy_from_slice(&o.si),
            tn: copy(&o.tn),
            re: o.re,
            ao: o.ao,
            dd: o.dd,
            as_data: o.as_data.as_ref().map(shortened),
            co: copy(&o.co),
            ba: copy(&o.ba),
            bn: copy(&o.bn),
            bt: copy(&o.bt),
            dt: shortened(&o.dt),
        },
        rendered: Default::default(),
    })
}

impl Outcomes {
    /// Counts a batch of committed outcomes (ascending seq).
    fn count(&mut self, batch: &[Arc<Outcome>]) {
        for outcome in batch {
            let at = outcome.accepted_ms.div_euclid(1000);
            let newest = self.seconds.back().map_or(i64::MIN, |s| s.at);
            if at < newest.saturating_sub(WINDOW_SECONDS as i64) {
                continue;
            }
            let index = match self.seconds.iter().rposition(|s| s.at <= at) {
                Some(i) if self.seconds[i].at == at => i,
                found => {
                    let i = found.map_or(0, |i| i + 1);
                    self.seconds.insert(
                        i,
                        Second {
                            at,
                            counts: HashMap::new(),
                        },
                    );
                    i
                }
            };
            let second = &mut self.seconds[index];
            let o = &outcome.outcome;
            // A clone of the outcome's values to look up with; a new key is a copy of them, so
            // that the window keeps no outcome's buffer alive.
            let probe = (o.tenant.clone(), o.cn.clone());
            let key = if second.counts.contains_key(&probe) {
                probe
            } else if second.counts.len() >= KEYS_PER_SECOND {
                overflow_key()
            } else {
                (
                    Bytes::copy_from_slice(&o.tenant),
                    Bytes::copy_from_slice(&o.cn),
                )
            };
            second.counts.entry(key).or_default()[class_index(o.class)] += 1;
        }
        if let Some(newest) = self.seconds.back().map(|s| s.at) {
            while self
                .seconds
                .front()
                .is_some_and(|s| s.at <= newest - WINDOW_SECONDS as i64)
            {
                self.seconds.pop_front();
            }
        }
        // The latest of each tenant: only the batch's last LATEST of each are copied.
        let mut taken: HashMap<&[u8], usize> = HashMap::new();
        for outcome in batch.iter().rev() {
            let tenant = &outcome.outcome.tenant[..];
            let n = taken.entry(tenant).or_default();
            if *n >= LATEST {
                continue;
            }
            *n += 1;
            if !self.latest.contains_key(tenant) && self.latest.len() >= TENANTS_KEPT {
                let quietest = self
                    .latest
                    .iter()
                    .min_by_key(|(_, list)| list.back().map_or(0, |o| o.seq))
                    .map(|(tenant, _)| tenant.clone());
                if let Some(quietest) = quietest {
                    self.latest.remove(&quietest);
                }
            }
            let list = self
                .latest
                .entry(Bytes::copy_from_slice(tenant))
                .or_default();
            // Newest last: this batch is walked backwards, so insert before what it added.
            let at = list.partition_point(|o| o.seq < outcome.seq);
            list.insert(at, keepable(outcome));
            while list.len() > LATEST {
                list.pop_front();
            }
        }
    }
}

/// The outcomes accepted in each second of a window, for one series of a chart.
pub type Series = Vec<u64>;

/// One campaign's outcomes in a summary's window.
#[derive(Clone, Debug)]
pub struct CampaignRate {
    pub tenant: Bytes,
    pub campaign: Bytes,
    pub total: u64,
    pub per_second: Series,
}

/// Refusals of one EC.
#[derive(Clone, Copy, Debug)]
pub struct RejectionCount {
    pub code: ErrorCode,
    /// Since the process started.
    pub total: u64,
    /// In the last 60 seconds.
    pub last_minute: u64,
}

/// The store as operators watch it.
#[derive(Clone, Copy, Debug)]
pub struct StoreHealth {
    /// Out of space: reports are refused (EC 813) until there is room.
    pub full: bool,
    /// A commit failed otherwise: the server is stopping.
    pub failed: bool,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    pub log_bytes: u64,
    /// Group commits per second, over the last [`COMMIT_SPAN`] seconds.
    pub commits_per_second: f64,
    /// Their mean duration in milliseconds (fsync included), over the same span; `None`
    /// without commits.
    pub commit_ms: Option<f64>,
}

/// What a session sees of the recent activity; see [`Core::summary`].
#[derive(Clone, Debug)]
pub struct Summary {
    pub now_ms: i64,
    /// The unix second the series end with (the last complete second).
    pub last_second: i64,
    /// Outcomes per second by class (success, failure, management), oldest first.
    pub classes: [Series; 3],
    /// The busiest campaigns of the window, busiest first (at most [`TOP_CAMPAIGNS`]).
    pub campaigns: Vec<CampaignRate>,
    /// Every other campaign's outcomes, added up.
    pub other_campaigns: Series,
    /// The latest outcomes, newest first (DT and AS shortened to 256 bytes).
    pub latest: Vec<Arc<Outcome>>,
    /// Refusals by EC (every tenant's: as `/metrics` counts them), those ever counted.
    pub rejections: Vec<RejectionCount>,
    pub store: StoreHealth,
    /// Outcomes left uncounted since the start because counting fell behind.
    pub skipped: u64,
}

/// Refusals by EC: since start, and per second for the last minute.
struct Rejections {
    total: [u64; ErrorCode::ALL.len()],
    seconds: VecDeque<(i64, [u32; ErrorCode::ALL.len()])>,
}

static REJECTIONS: LazyLock<Mutex<Rejections>> = LazyLock::new(|| {
    Mutex::new(Rejections {
        total: [0; ErrorCode::ALL.len()],
        seconds: VecDeque::new(),
    })
});

/// Counts a refusal a front end sends (an ER, a problem document): in
/// `ozbus_rejections_total{ec}` and for [`Core::summary`]. Process-wide, like the metric.
pub fn rejected(code: ErrorCode) {
    metrics::counter!("ozbus_rejections_total", "ec" => code.number().to_string()).increment(1);
    let Some(index) = ErrorCode::ALL.iter().position(|c| *c == code) else {
        return;
    };
    let at = now_ms().div_euclid(1000);
    let mut rejections = REJECTIONS.lock();
    rejections.total[index] += 1;
    if rejections.seconds.back().is_none_or(|(s, _)| *s < at) {
        rejections
            .seconds
            .push_back((at, [0; ErrorCode::ALL.len()]));
    }
    while rejections
        .seconds
        .front()
        .is_some_and(|(s, _)| *s <= at - 60)
    {
        rejections.seconds.pop_front();
    }
    if let Some((_, counts)) = rejections.seconds.back_mut() {
        counts[index] += 1;
    }
}

fn rejection_counts(now_s: i64) -> Vec<RejectionCount> {
    let rejections = REJECTIONS.lock();
    ErrorCode::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| rejections.total[*i] > 0)
        .map(|(i, code)| RejectionCount {
            code: *code,
            total: rejections.total[i],
            last_minute: rejections
                .seconds
                .iter()
                .filter(|(s, _)| *s > now_s - 60)
                .map(|(_, counts)| u64::from(counts[i]))
                .sum(),
        })
        .collect()
}

impl Activity {
    /// Counts the outcomes committed from now on, until `stop`.
    pub(crate) async fn follow(&self, store: &Store, stop: &CancellationToken) {
        let mut log_end = store.watch_last_seq();
        let mut cursor = store.last_seq();
        loop {
            let end = *log_end.borrow_and_update();
            if cursor >= end {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = log_end.changed() => if changed.is_err() { return },
                }
                continue;
            }
            if end - cursor > MAX_LAG {
                self.outcomes.lock().skipped += end - cursor;
                cursor = end;
                continue;
            }
            let batch = tokio::select! {
                _ = stop.cancelled() => return,
                batch = store.read_after_bounded(cursor, READ_BATCH, READ_BYTES) => batch,
            };
            match batch {
                Ok(batch) => match batch.last() {
                    Some(last) => {
                        cursor = last.seq;
                        self.outcomes.lock().count(&batch);
                    }
                    // Removed by retention before it was counted.
                    None => cursor = end,
                },
                Err(error) => {
                    tracing::debug!(%error, "reading the log for the activity summary failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Takes a sample of the store's counters (once a second).
    pub(crate) fn sample_store(&self, stats: StoreStats, now_ms: i64) {
        let mut samples = self.store.lock();
        samples.push_back((now_ms.div_euclid(1000), stats));
        while samples.len() > STORE_SAMPLES {
            samples.pop_front();
        }
    }

    /// Commits per second and their mean duration in ms, from the sample about
    /// [`COMMIT_SPAN`] seconds old to `now`.
    fn commits(&self, now: StoreStats, now_ms: i64) -> (f64, Option<f64>) {
        let samples = self.store.lock();
        let now_s = now_ms as f64 / 1000.0;
        let Some((at, then)) = samples
            .iter()
            .rev()
            .find(|(at, _)| (now_s - *at as f64) >= COMMIT_SPAN as f64)
            .or_else(|| samples.front())
        else {
            return (0.0, None);
        };
        let span = (now_s - *at as f64).max(1.0);
        let commits = now.commits.saturating_sub(then.commits);
        let micros = now.commit_micros.saturating_sub(then.commit_micros);
        let mean = (commits > 0).then(|| micros as f64 / commits as f64 / 1000.0);
        (commits as f64 / span, mean)
    }

    /// The window of the last `window` complete seconds, of the tenant `tenant` (none: every
    /// tenant).
    fn outcomes(
        &self,
        tenant: Option<&[u8]>,
        window: usize,
        last_second: i64,
    ) -> (
        [Series; 3],
        Vec<CampaignRate>,
        Series,
        Vec<Arc<Outcome>>,
        u64,
    ) {
        let window = window.clamp(1, WINDOW_SECONDS);
        let first = last_second - window as i64 + 1;
        let outcomes = self.outcomes.lock();
        let mut classes: [Series; 3] = std::array::from_fn(|_| vec![0; window]);
        let mut campaigns: HashMap<(Bytes, Bytes), Series> = HashMap::new();
        let mut other = vec![0; window];
        for second in &outcomes.seconds {
            if second.at < first || second.at > last_second {
                continue;
            }
            let i = (second.at - first) as usize;
            for (key, counts) in &second.counts {
                let overflow = *key == overflow_key();
                // Overflow counts are of no tenant in particular: only a view of every tenant
                // includes them.
                if tenant.is_some_and(|want| overflow || want != &key.0[..]) {
                    continue;
                }
                for (class, count) in counts.iter().enumerate() {
                    classes[class][i] += u64::from(*count);
                }
                let sum = counts.iter().map(|c| u64::from(*c)).sum::<u64>();
                match overflow {
                    true => other[i] += sum,
                    false => {
                        campaigns
                            .entry(key.clone())
                            .or_insert_with(|| vec![0; window])[i] += sum
                    }
                }
            }
        }
        let mut ranked: Vec<CampaignRate> = campaigns
            .into_iter()
            .map(|((tenant, campaign), per_second)| CampaignRate {
                total: per_second.iter().sum(),
                tenant,
                campaign,
                per_second,
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.total
                .cmp(&a.total)
                .then_with(|| a.campaign.cmp(&b.campaign))
                .then_with(|| a.tenant.cmp(&b.tenant))
        });
        for rate in ranked.split_off(ranked.len().min(TOP_CAMPAIGNS)) {
            for (sum, n) in other.iter_mut().zip(&rate.per_second) {
                *sum += n;
            }
        }
        let mut latest: Vec<Arc<Outcome>> = match tenant {
            Some(tenant) => outcomes
                .latest
                .get(tenant)
                .map(|list| list.iter().cloned().collect())
                .unwrap_or_default(),
            None => outcomes.latest.values().flatten().cloned().collect(),
        };
        latest.sort_by_key(|o| std::cmp::Reverse(o.seq));
        latest.truncate(LATEST);
        (classes, ranked, other, latest, outcomes.skipped)
    }
}

impl Core {
    /// The recent activity `session` may see, over the last `window` seconds (at most
    /// [`WINDOW_SECONDS`]): outcome rates and latest outcomes of its tenant (a landlord's, or
    /// anyone's without users: every tenant's, or with `td` that tenant's); refusals and the
    /// store's health are the process's, as `/metrics` and `/readyz` tell anyone.
    pub fn summary(
        &self,
        session: &Session,
        td: Option<&[u8]>,
        window: usize,
    ) -> Result<Summary, Rejection> {
        let tenant = self.admit(session, Act::Supervise, td)?;
        let everyone = session.principal.as_ref().is_none_or(|p| p.is_landlord());
        let sees = match (everyone, td) {
            (true, None) => None,
            _ => Some(tenant),
        };
        let now_ms = now_ms();
        let last_second = now_ms.div_euclid(1000) - 1;
        let (classes, campaigns, other_campaigns, latest, skipped) =
            self.activity.outcomes(sees.as_deref(), window, last_second);
        let stats = self.store.stats();
        let (commits_per_second, commit_ms) = self.activity.commits(stats, now_ms);
        Ok(Summary {
            now_ms,
            last_second,
            classes,
            campaigns,
            other_campaigns,
            latest,
            rejections: rejection_counts(now_ms.div_euclid(1000)),
            store: StoreHealth {
                full: self.store.is_full(),
                failed: self.failed.is_cancelled(),
                first_seq: self.store.oldest_seq(),
                last_seq: self.store.last_seq(),
                log_bytes: stats.log_bytes,
                commits_per_second,
                commit_ms,
            },
            skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(seq: u64, ms: i64, tenant: &'static [u8], cn: &'static [u8]) -> Arc<Outcome> {
        Arc::new(Outcome {
            seq,
            accepted_ms: ms,
            outcome: NewOutcome::new(
                Bytes::from_static(tenant),
                OutcomeClass::Failure,
                Bytes::from_static(cn),
                Bytes::from_static(b"s"),
                2,
            ),
            rendered: Default::default(),
        })
    }

    #[test]
    fn counts_by_second_campaign_and_tenant() {
        let activity = Activity::default();
        let batch: Vec<_> = (1..=10)
            .map(|i| {
                let tenant: &'static [u8] = if i % 2 == 0 { b"a" } else { b"b" };
                outcome(i, 100_000 + (i as i64 % 3) * 1000, tenant, b"C1")
            })
            .collect();
        activity.outcomes.lock().count(&batch);
        let (classes, campaigns, other, latest, _) = activity.outcomes(None, 5, 102);
        assert_eq!(classes[1], vec![0, 0, 3, 4, 3]);
        assert_eq!(classes[0], vec![0; 5]);
        assert_eq!(campaigns.len(), 2);
        assert_eq!(campaigns.iter().map(|c| c.total).sum::<u64>(), 10);
        assert_eq!(other, vec![0; 5]);
        assert_eq!(latest.first().map(|o| o.seq), Some(10));
        let (classes, campaigns, _, latest, _) = activity.outcomes(Some(b"a"), 5, 102);
        assert_eq!(classes[1].iter().sum::<u64>(), 5);
        assert_eq!(campaigns.len(), 1);
        assert!(latest.iter().all(|o| &o.outcome.tenant[..] == b"a"));
    }

    #[test]
    fn windows_and_lists_stay_bounded() {
        let activity = Activity::default();
        let batch: Vec<_> = (1..=2000u64)
            .map(|i| outcome(i, (i as i64) * 1000, b"t", b"C"))
            .collect();
        activity.outcomes.lock().count(&batch);
        let outcomes = activity.outcomes.lock();
        assert!(outcomes.seconds.len() <= WINDOW_SECONDS);
        assert_eq!(outcomes.latest[&b"t"[..]].len(), LATEST);
        assert_eq!(outcomes.latest[&b"t"[..]].back().map(|o| o.seq), Some(2000));
    }

    #[test]
    fn more_campaigns_than_named_are_added_up() {
        let activity = Activity::default();
        let names: Vec<&'static [u8]> = vec![
            b"c0", b"c1", b"c2", b"c3", b"c4", b"c5", b"c6", b"c7", b"c8", b"c9",
        ];
        let batch: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, cn)| outcome(i as u64 + 1, 5_000, b"t", cn))
            .collect();
        activity.outcomes.lock().count(&batch);
        let (_, campaigns, other, _, _) = activity.outcomes(None, 1, 5);
        assert_eq!(campaigns.len(), TOP_CAMPAIGNS);
        assert_eq!(other, vec![2]);
    }

    #[test]
    fn shortened_values_keep_characters_whole() {
        let long = Bytes::from("é".repeat(200));
        let short = shortened(&long);
        assert!(short.len() <= VALUE_BYTES);
        assert!(std::str::from_utf8(&short).is_ok());
    }
}
