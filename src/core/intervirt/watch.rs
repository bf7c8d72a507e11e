//! Follows Docker's container events so a container that starts again (restarted by the
//! client, by Docker's restart policy, or by dockerd after a reboot) gets its network back,
//! and a stopped one releases it.
//!
//! Each (re)subscription is followed by a full resync, because events between two
//! subscriptions are lost; every event then triggers a reconcile of that one container,
//! which asks Docker for the current state instead of trusting the event.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{IntervirtAgent, LABEL};
use crate::core::engine::Filter;

const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs until `stop`.
pub async fn run(agent: Arc<IntervirtAgent>, stop: CancellationToken) {
    let mut retry = RETRY_MIN;
    while !stop.is_cancelled() {
        let mut events = agent
            .engine
            .container_events(&[Filter::Label(format!("{LABEL}=1"))]);
        let resynced = agent.resync().await;
        if let Err(e) = &resynced {
            tracing::debug!(error = %e, "Intervirt resync failed; retrying");
        }
        let mut received = false;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = events.next() => n,
            };
            let event = match next {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "Docker event stream failed");
                    break;
                }
                None => break,
            };
            received = true;
            if !matches!(event.action.as_str(), "start" | "die" | "stop" | "destroy") {
                continue;
            }
            if let Err(e) = agent.reconcile(&event.name).await {
                tracing::warn!(container = %event.name, action = %event.action, error = %e, "cannot follow a container event");
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
