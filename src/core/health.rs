//! Tracks whether the container engine is reachable, by probing it periodically.
//!
//! gantry keeps serving while dockerd is down; this state feeds `/healthz`, systemd STATUS=
//! lines and logs. Reconnecting needs no action: every engine call opens a fresh connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::engine::{ContainerEngine, EngineVersion};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineStatus {
    /// Not probed yet.
    Unknown,
    Reachable(EngineVersion),
    Unreachable(String),
}

impl EngineStatus {
    pub fn is_reachable(&self) -> bool {
        matches!(self, EngineStatus::Reachable(_))
    }

    /// One line for logs and systemd's STATUS=.
    pub fn summary(&self) -> String {
        match self {
            EngineStatus::Unknown => "docker: not probed yet".to_string(),
            EngineStatus::Reachable(v) => format!("docker {} reachable", v.version),
            EngineStatus::Unreachable(e) => e.clone(),
        }
    }
}

#[derive(Clone)]
pub struct EngineHealth {
    rx: watch::Receiver<EngineStatus>,
}

impl EngineHealth {
    pub fn current(&self) -> EngineStatus {
        self.rx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<EngineStatus> {
        self.rx.clone()
    }

    /// Starts the probe loop; it ends when `cancel` fires.
    pub fn spawn(
        engine: Arc<dyn ContainerEngine>,
        interval: Duration,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = watch::channel(EngineStatus::Unknown);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let status = match engine.version().await {
                    Ok(v) => EngineStatus::Reachable(v),
                    Err(e) => EngineStatus::Unreachable(e.to_string()),
                };
                tx.send_if_modified(|cur| {
                    if *cur == status {
                        return false;
                    }
                    if status.is_reachable() {
                        tracing::info!(status = %status.summary(), "container engine reachable");
                    } else {
                        tracing::warn!(status = %status.summary(), "container engine unreachable");
                    }
                    *cur = status;
                    true
                });
            }
        });
        Self { rx }
    }
}
