//! Interrupted operations end in a known state.
//!
//! Every long operation records its intent durably ([`intents::IntentLog`]) before it
//! touches Docker, the store or the kernel, and removes it when it is done. An intent still
//! there at start (gantry was killed, the power went) or left by an operation that could not
//! settle (Docker went away midway) is resolved by its kind's rule before the state it
//! concerns is served: an interrupted start is finished, an interrupted import rolled back,
//! and so on (docs/DECISIONS.md, "Interrupted operations", has every kind and rule).
//!
//! [`crash::crash_point`] names each step of each operation, so the fault tests
//! (`tests/faults.rs`) can make gantry exit exactly there and check the state after a
//! restart; [`points::POINTS`] lists them all.

pub mod crash;
pub mod intents;
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub mod points;

pub use crash::{crash_point, crash_point_unsynced, crash_when_answered, crash_when_sent};
pub use intents::{Intent, IntentKind, IntentLog, Pending, Record};

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::health::EngineHealth;
use super::{Core, ErrorKind};

/// An intent's first data: `value` under `key`.
pub fn noted(key: &str, value: impl serde::Serialize) -> Map<String, Value> {
    let mut data = Map::new();
    data.insert(key.to_string(), serde_json::json!(value));
    data
}

/// Errors that say whether Docker (or another service the operation needs) went away.
pub trait HasKind {
    fn error_kind(&self) -> ErrorKind;
}

impl HasKind for super::CoreError {
    fn error_kind(&self) -> ErrorKind {
        self.kind()
    }
}

impl HasKind for super::intervirt::AgentError {
    fn error_kind(&self) -> ErrorKind {
        self.kind()
    }
}

/// A resolution failing for another reason than Docker being away is tried this many times,
/// then given up (logged), so that nothing stays busy for ever.
pub const ATTEMPTS: u32 = 3;

/// Whether `log`'s pending intents (`what`, for the log) can be resolved now: there are
/// some, and Docker answers (else they wait for it).
pub async fn resolvable<K: IntentKind>(
    log: &IntentLog<K>,
    engine: &dyn super::engine::ContainerEngine,
    what: &str,
) -> bool {
    if !log.has_pending() {
        return false;
    }
    if let Err(e) = engine.version().await {
        tracing::warn!(error = %e, "interrupted {what} are recovered once Docker answers");
        return false;
    }
    true
}

/// Ends the resolution of `p` by its outcome: resolved, its intent goes; Docker away, or a
/// failure tried fewer than [`ATTEMPTS`] times, it stays pending; else it is given up.
pub fn conclude<K: IntentKind, E: HasKind + std::fmt::Display>(
    log: &IntentLog<K>,
    p: Pending<K>,
    outcome: Result<(), E>,
) {
    let name = p.record.kind.name();
    match outcome {
        Ok(()) => log.release(p, true),
        Err(e) if e.error_kind() == ErrorKind::Unavailable => {
            tracing::warn!(operation = %name, error = %e, "recovery postponed until Docker answers");
            log.release(p, false);
        }
        Err(e) if p.attempts + 1 < ATTEMPTS => {
            tracing::warn!(operation = %name, error = %e, "recovery failed; trying again later");
            log.release(p, false);
        }
        Err(e) => {
            tracing::error!(operation = %name, error = %e, "cannot recover an interrupted operation; giving up");
            log.release(p, true);
        }
    }
}

/// Ends an operation's intent by its result: Docker having gone away leaves it for the
/// resolver (the operation stopped somewhere unknown); any other end is settled.
pub fn settle<K: IntentKind, T, E: HasKind>(intent: &Intent<K>, result: &Result<T, E>) {
    match result {
        Err(e) if e.error_kind() == ErrorKind::Unavailable => intent.keep(),
        _ => intent.done(),
    }
}

/// Resolves what stays pending (Docker was down at start, or went away during an operation)
/// once Docker answers again, and retries failed resolutions now and then; until `stop`.
/// The apps', the duxcore services' and the Flow Manager's intents (the Intervirt agent's
/// are resolved by its Docker watcher).
pub async fn resolve_pending(core: Arc<Core>, health: EngineHealth, stop: CancellationToken) {
    let (apps, services, flow) = (&core.apps, core.services.as_deref(), core.flow.as_deref());
    let mut status = health.subscribe();
    loop {
        if health.current().is_reachable() {
            if apps.intents().has_pending() {
                if let Err(e) = apps.recover().await {
                    tracing::warn!(error = %e, "recovery of interrupted operations failed");
                }
            }
            if let Some(s) = services.filter(|s| s.intents().has_pending()) {
                if let Err(e) = s.recover().await {
                    tracing::warn!(error = %e, "recovery of interrupted service operations failed");
                }
            }
            if let Some(f) = flow.filter(|f| f.intents().has_pending()) {
                if let Err(e) = f.recover().await {
                    tracing::warn!(error = %e, "recovery of interrupted Flow Manager operations failed");
                }
            }
        }
        let services_pending = async {
            match services {
                Some(s) => s.intents().became_pending().await,
                None => std::future::pending().await,
            }
        };
        let flow_pending = async {
            match flow {
                Some(f) => f.intents().became_pending().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = apps.intents().became_pending() => {}
            _ = services_pending => {}
            _ = flow_pending => {}
            r = status.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
    }
}

#[cfg(test)]
mod tests;
