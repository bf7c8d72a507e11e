//! Follows Docker's container events so a container that starts again (restarted by the
//! client, by Docker's restart policy, or by dockerd after a reboot) gets its network back,
//! and a stopped one releases it.
//!
//! Each (re)subscription is followed by a full resync, because events between two
//! subscriptions are lost; every event then triggers a reconcile of that one container,
//! which asks Docker for the current state instead of trusting the event.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{IntervirtAgent, LABEL};
use crate::core::engine::{Filter, Resubscribe};

/// Runs until `stop`.
pub async fn run(agent: Arc<IntervirtAgent>, stop: CancellationToken) {
    let mut resubscribe = Resubscribe::default();
    while !stop.is_cancelled() {
        let mut events = agent
            .engine
            .container_events(&[Filter::Label(format!("{LABEL}=1"))]);
        agent.recover().await;
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
        if !resubscribe.wait(received && resynced.is_ok(), &stop).await {
            return;
        }
    }
}
