//! Follows Docker's container events so that app status changes made outside gantry (a
//! `docker stop` of an app's container, a crash, Docker's restart policy) reach the event
//! bus as App events.
//!
//! Like the Intervirt watcher (src/core/intervirt/watch.rs) it shares the engine's
//! `container_events` seam: each (re)subscription is followed by a resync of every app,
//! since events between two subscriptions are lost, and each event makes gantry re-read its
//! app's state from Docker instead of trusting the event; an App event is published only
//! when that state differs from the last one published.

use std::ops::Deref;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::lifecycle::Apps;
use super::AppId;
use crate::core::compose::plan::LABEL_APP_ID;
use crate::core::engine::{ContainerEngine, Filter};

const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Events taken together at most, before their apps are re-read.
const MAX_BATCH: usize = 256;

/// Container actions that can change an app's status or container list. (`kill` only
/// sends a signal; the `die` that follows is the change.)
fn relevant(action: &str) -> bool {
    matches!(
        action,
        "create" | "start" | "restart" | "die" | "stop" | "oom" | "pause" | "unpause" | "destroy"
    )
}

/// The apps service of a shared core, for [`run`].
pub struct CoreApps(pub std::sync::Arc<crate::core::Core>);

impl Deref for CoreApps {
    type Target = Apps;
    fn deref(&self) -> &Apps {
        &self.0.apps
    }
}

/// Runs until `stop`; `apps` is anything that leads to the apps service (e.g. the core).
pub async fn run<A>(apps: A, engine: &dyn ContainerEngine, stop: CancellationToken)
where
    A: Deref<Target = Apps>,
{
    let mut retry = RETRY_MIN;
    while !stop.is_cancelled() {
        let mut events = engine.container_events(&[Filter::Label(LABEL_APP_ID.to_string())]);
        let resynced = tokio::select! {
            _ = stop.cancelled() => return,
            r = apps.publish_changes() => r,
        };
        if let Err(e) = &resynced {
            tracing::debug!(error = %e, "app status resync failed; retrying");
        }
        let mut received = false;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = events.next() => n,
            };
            let mut ended = false;
            let mut changed: Vec<AppId> = Vec::new();
            let mut died: Vec<String> = Vec::new();
            let mut next = next;
            let mut batch = 0;
            // Events already waiting are taken together: one re-read per app, not per event
            // (a `docker stop` alone sends kill, die and stop).
            loop {
                match next {
                    Some(Ok(event)) => {
                        received = true;
                        if relevant(&event.action) {
                            if let Some(id) = event.labels.get(LABEL_APP_ID) {
                                tracing::debug!(app = %id, container = %event.name, action = %event.action, "app container event");
                                let id = AppId::from(id.as_str());
                                if !changed.contains(&id) {
                                    changed.push(id);
                                }
                                if event.action == "die" && !died.contains(&event.id) {
                                    died.push(event.id.clone());
                                }
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "Docker event stream failed");
                        ended = true;
                        break;
                    }
                    None => {
                        ended = true;
                        break;
                    }
                }
                batch += 1;
                if batch >= MAX_BATCH {
                    break;
                }
                match events.next().now_or_never() {
                    Some(n) => next = n,
                    None => break,
                }
            }
            // dockerd sends `die` before its container list says so; an inspect waits for
            // the container's lock, i.e. until dockerd has recorded the exit.
            for container in &died {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = engine.inspect_container(container) => {}
                }
            }
            for id in &changed {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = apps.publish_app(id, false) => {}
                }
            }
            if ended {
                break;
            }
        }
        // A stream that worked is retried at once; a failing Docker with growing pauses.
        retry = if received && resynced.is_ok() {
            RETRY_MIN
        } else {
            (retry * 2).min(RETRY_MAX)
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}
