//! The one scheduler of `up` and `down`: jobs that wait for other jobs, run as soon as
//! those are done, independent ones concurrently, and at most `limit` of those that do
//! engine work at once.
//!
//! The order comes from the plan's dependencies, used in either [`Direction`]: forwards by
//! `up` (a service's start after the starts of the services it depends on), backwards by
//! `down` (a service's stop after the stops of the services that depend on it).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Semaphore;

use super::super::plan::Plan;
use crate::core::compose::ComposeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// Dependencies first.
    Forward,
    /// Dependents first.
    Backward,
}

/// Each service of `plan` (in file order) with the services whose work must be done before
/// its own, in `direction`.
pub(super) fn order(plan: &Plan, direction: Direction) -> Vec<(&str, Vec<&str>)> {
    plan.services
        .iter()
        .map(|s| {
            let first: Vec<&str> = match direction {
                Direction::Forward => s.all_deps().collect(),
                Direction::Backward => plan
                    .services
                    .iter()
                    .filter(|d| d.all_deps().any(|x| x == s.name))
                    .map(|d| d.name.as_str())
                    .collect(),
            };
            (s.name.as_str(), first)
        })
        .collect()
}

/// What a failed job means for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnError {
    /// Nothing more is started (what runs finishes): `up` stops its rollout.
    Halt,
    /// The failed job counts as done: a half-failed `down` still removes what it can.
    Continue,
}

/// Whether a job does engine work, and so holds one of the slots while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Needed,
    /// Waiting (for a dependency's health, say) takes no slot.
    None,
}

type Work<'a, K, T> =
    Box<dyn FnOnce(HashMap<K, T>) -> BoxFuture<'a, Result<T, ComposeError>> + Send + 'a>;

struct Job<'a, K, T> {
    key: K,
    after: Vec<K>,
    slot: Slot,
    work: Work<'a, K, T>,
}

/// What the jobs did.
pub(super) struct Outcome<K, T> {
    /// What each job that succeeded returned.
    pub outputs: HashMap<K, T>,
    /// The jobs that were started (succeeded, failed or not).
    pub launched: HashSet<K>,
    /// The failures, in the order they happened.
    pub errors: Vec<ComposeError>,
}

pub(super) struct Scheduler<'a, K, T> {
    limit: usize,
    on_error: OnError,
    jobs: Vec<Job<'a, K, T>>,
}

impl<'a, K, T> Scheduler<'a, K, T>
where
    K: Clone + Eq + Hash + Send + Sync + 'a,
    T: Clone + Send + 'a,
{
    pub fn new(limit: usize, on_error: OnError) -> Self {
        Self {
            limit: limit.max(1),
            on_error,
            jobs: Vec::new(),
        }
    }

    /// Adds the job `key`, to run once every job in `after` is done. `work` gets what those
    /// returned. Jobs that become ready together start in the order they were added.
    pub fn add(
        &mut self,
        key: K,
        after: Vec<K>,
        slot: Slot,
        work: impl FnOnce(HashMap<K, T>) -> BoxFuture<'a, Result<T, ComposeError>> + Send + 'a,
    ) {
        self.jobs.push(Job {
            key,
            after,
            slot,
            work: Box::new(work),
        });
    }

    pub async fn run(self) -> Outcome<K, T> {
        let slots = Semaphore::new(self.limit);
        let slots = &slots;
        let mut pending = self.jobs;
        let mut done: HashSet<K> = HashSet::new();
        let mut out = Outcome {
            outputs: HashMap::new(),
            launched: HashSet::new(),
            errors: Vec::new(),
        };
        let mut running = FuturesUnordered::new();
        loop {
            if out.errors.is_empty() || self.on_error == OnError::Continue {
                let (ready, waiting): (Vec<_>, Vec<_>) = pending
                    .into_iter()
                    .partition(|j| j.after.iter().all(|k| done.contains(k)));
                pending = waiting;
                for job in ready {
                    out.launched.insert(job.key.clone());
                    running.push(launch(job, &out.outputs, slots));
                }
            }
            let Some((key, result)) = running.next().await else {
                break;
            };
            match result {
                Ok(v) => {
                    out.outputs.insert(key.clone(), v);
                    done.insert(key);
                }
                Err(e) => {
                    out.errors.push(e);
                    if self.on_error == OnError::Continue {
                        done.insert(key);
                    }
                }
            }
        }
        out
    }
}

/// The job's work, with what its predecessors returned, holding a slot if it needs one.
fn launch<'s, 'a: 's, K, T>(
    job: Job<'a, K, T>,
    outputs: &HashMap<K, T>,
    slots: &'s Semaphore,
) -> BoxFuture<'s, (K, Result<T, ComposeError>)>
where
    K: Clone + Eq + Hash + Send + Sync + 'a,
    T: Clone + Send + 'a,
{
    let inputs: HashMap<K, T> = job
        .after
        .iter()
        .filter_map(|k| outputs.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    Box::pin(async move {
        // The semaphore is never closed: acquiring cannot fail.
        let _slot = match job.slot {
            Slot::Needed => slots.acquire().await.ok(),
            Slot::None => None,
        };
        (job.key, (job.work)(inputs).await)
    })
}
