//! Process-wide counters the core keeps for `GET /metrics`: operations by kind and outcome
//! with their durations, and the Docker events the live view applied. Like a Prometheus
//! client library's default registry they are statics: there is one process, and its
//! figures are the same whichever listener is asked. Rendering them is the server's job
//! (`src/server/metrics.rs`); nothing here knows the text format.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::{CoreResult, ErrorKind};

/// Upper bounds (seconds) of the operation duration histogram: an app start takes about a
/// second, an import of a large bundle minutes.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Ok,
    Failed,
    Cancelled,
}

impl Outcome {
    pub fn of<T>(result: &CoreResult<T>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) if e.kind() == ErrorKind::Cancelled => Outcome::Cancelled,
            Err(_) => Outcome::Failed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// A histogram of durations: counts per bucket (not cumulative), their total and sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; DURATION_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_seconds += secs;
    }

    /// Cumulative counts per bucket, as the exposition format wants them (`+Inf` is `count`).
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        DURATION_BUCKETS
            .iter()
            .zip(self.buckets.iter())
            .scan(0u64, |acc, (b, n)| {
                *acc += n;
                Some((*b, *acc))
            })
    }
}

type OpKey = (&'static str, Outcome);

static OPERATIONS: Mutex<BTreeMap<OpKey, Histogram>> = Mutex::new(BTreeMap::new());
static DOCKER_EVENTS: AtomicU64 = AtomicU64::new(0);
/// Lag of the last Docker event, in microseconds, plus one (0: none seen yet).
static EVENT_LAG_MICROS: AtomicU64 = AtomicU64::new(0);

/// Notes an operation of `kind` (a task kind's name) that ended with `outcome`.
pub fn operation_ended(kind: &'static str, outcome: Outcome, took: Duration) {
    let mut ops = OPERATIONS.lock().unwrap_or_else(|p| p.into_inner());
    ops.entry((kind, outcome)).or_default().observe(took);
}

/// Every (kind, outcome) seen so far with its histogram, sorted.
pub fn operations() -> Vec<(&'static str, Outcome, Histogram)> {
    let ops = OPERATIONS.lock().unwrap_or_else(|p| p.into_inner());
    ops.iter().map(|((k, o), h)| (*k, *o, h.clone())).collect()
}

/// Notes Docker events the live view applied, `now_ns` (Unix nanoseconds); each event's
/// time stamp is its `time_nano` (0: none).
pub fn docker_events_applied(sent_ns: impl IntoIterator<Item = i64>, now_ns: i64) {
    let mut last = None;
    for sent in sent_ns {
        DOCKER_EVENTS.fetch_add(1, Ordering::Relaxed);
        if sent > 0 {
            last = Some(sent);
        }
    }
    if let Some(sent) = last {
        EVENT_LAG_MICROS.store(lag_micros(sent, now_ns) + 1, Ordering::Relaxed);
    }
}

/// Microseconds from `sent` to `now` (nanoseconds); a clock step backwards counts as none.
fn lag_micros(sent: i64, now: i64) -> u64 {
    u64::try_from(now.saturating_sub(sent) / 1000)
        .unwrap_or(0)
        .min(u64::MAX - 1)
}

/// Docker events applied so far, and the lag of the last one (None before the first).
pub fn docker_events() -> (u64, Option<Duration>) {
    let lag = match EVENT_LAG_MICROS.load(Ordering::Relaxed) {
        0 => None,
        n => Some(Duration::from_micros(n - 1)),
    };
    (DOCKER_EVENTS.load(Ordering::Relaxed), lag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::CoreError;

    #[test]
    fn histograms_count_per_bucket_and_accumulate_in_order() {
        let mut h = Histogram::default();
        for ms in [10, 60, 60, 2000, 2_000_000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.count, 5);
        let c: Vec<(f64, u64)> = h.cumulative().collect();
        assert_eq!(c[0], (0.05, 1));
        assert_eq!(c[1], (0.1, 3));
        assert_eq!(c[5], (2.5, 4));
        // 2000 s is above every bound: only `+Inf` (the count) holds it.
        assert_eq!(c.last(), Some(&(900.0, 4)));
        assert!((h.sum_seconds - 2002.13).abs() < 1e-9);
    }

    #[test]
    fn outcomes_follow_the_error_kind() {
        assert_eq!(Outcome::of(&Ok::<(), CoreError>(())), Outcome::Ok);
        let cancelled: CoreResult<()> = Err(CoreError::Cancelled("x".into()));
        assert_eq!(Outcome::of(&cancelled), Outcome::Cancelled);
        let failed: CoreResult<()> = Err(CoreError::Invalid("x".into()));
        assert_eq!(Outcome::of(&failed), Outcome::Failed);
    }

    #[test]
    fn event_lag_is_from_dockers_stamp_to_now() {
        assert_eq!(lag_micros(1_000_000_000, 3_500_000_000), 2_500_000);
        assert_eq!(lag_micros(3_500_000_000, 1_000_000_000), 0);
    }

    #[test]
    fn operations_are_kept_by_kind_and_outcome() {
        operation_ended("test-kind", Outcome::Failed, Duration::from_millis(1));
        operation_ended("test-kind", Outcome::Failed, Duration::from_millis(1));
        let ops = operations();
        let (_, _, h) = ops
            .iter()
            .find(|(k, o, _)| *k == "test-kind" && *o == Outcome::Failed)
            .unwrap();
        assert_eq!(h.count, 2);
    }
}
