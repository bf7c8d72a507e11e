//! Watches the Flow Manager's containers through Docker's event stream (no per-container
//! polling): state changes, crashes and health warnings as they happen, including those made
//! behind gantry's back (`docker stop`), and a status update of every container each
//! `status_interval` (its state from the live view, its resource usage from Docker's stats).
//!
//! A crash is a `die` with a non-zero exit code that no stop or kill asked for: `docker
//! stop`, `docker kill` and gantry's own stop, restart and update all send a `kill` event
//! first, which marks the exit as requested until the container starts again.
//!
//! A crash carries the container's last log lines, read from its log file or kept from a
//! follow of its logs ([`super::tails`]), so that the crash goes out as soon as the `die`
//! arrives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::tails::{Source, Tail, Tails};
use super::{log_tail, FlowEvent, FlowManager, DIALECT, LABEL_DIALECT};
use crate::core::engine::{ContainerEvent, CpuCounters, EngineResult, Filter, Resubscribe};

/// What the monitor remembers of one container.
#[derive(Debug, Clone, Default)]
struct Track {
    state: String,
    /// A kill (stop, kill, restart) was asked for since the last start.
    killed: bool,
    /// The kernel's OOM killer hit it since the last start.
    oom: bool,
}

/// The monitor's memory, by container id.
#[derive(Default)]
pub struct Tracker {
    containers: Mutex<HashMap<String, Track>>,
    /// The last CPU counters seen per container (CPU share between two samples).
    cpu: Mutex<HashMap<String, CpuCounters>>,
    /// The last log lines of each running container.
    tails: Tails,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tracker {
    /// Stores `now` as the container's last CPU counters; returns the ones before.
    pub fn swap_cpu(&self, id: &str, now: CpuCounters) -> Option<CpuCounters> {
        lock(&self.cpu).insert(id.to_string(), now)
    }
}

/// The state Docker is in after `action`, for the actions that change it.
fn state_after(action: &str) -> Option<&'static str> {
    Some(match action {
        "create" => "created",
        "start" | "restart" | "unpause" => "running",
        "die" | "stop" => "exited",
        "pause" => "paused",
        _ => return None,
    })
}

/// Signals that end a container when sent by a stop or kill (a `kill -USR1` does not).
fn ends_container(event: &ContainerEvent) -> bool {
    match event.labels.get("signal").map(String::as_str) {
        None => true,
        Some(s) => matches!(
            s,
            "1" | "2" | "3" | "9" | "15" | "SIGHUP" | "SIGINT" | "SIGQUIT" | "SIGKILL" | "SIGTERM"
        ),
    }
}

impl FlowManager {
    /// Follows one event: state change, crash, health warning.
    fn on_event(self: &Arc<Self>, event: &ContainerEvent) {
        let action = event.action.as_str();
        if let Some(health) = action.strip_prefix("health_status: ") {
            if health == "unhealthy" {
                self.publish(FlowEvent::HealthWarning {
                    id: event.id.clone(),
                    name: event.name.clone(),
                    health: health.to_string(),
                });
            }
            return;
        }
        if action == "destroy" {
            lock(&self.monitor.containers).remove(&event.id);
            lock(&self.monitor.cpu).remove(&event.id);
            self.monitor.tails.take(&event.id);
            return;
        }
        let (old, track) = self.track(event);
        let mut crash = None;
        match action {
            "start" => self.keep_last_lines(&event.id),
            "die" => {
                let tail = self.monitor.tails.take(&event.id);
                let code: i64 = event
                    .labels
                    .get("exitCode")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                if code != 0 && !track.killed {
                    crash = Some((code, track.oom, tail));
                }
            }
            _ => {}
        }
        if let Some(old) = old.filter(|o| *o != track.state) {
            self.publish(FlowEvent::StatusChanged {
                id: event.id.clone(),
                name: event.name.clone(),
                old,
                new: track.state,
            });
        }
        if let Some((code, oom, tail)) = crash {
            self.on_crash(event, code, oom, tail);
        }
    }

    /// Publishes a crash at once when its last lines are there (a log file, a complete
    /// follow), else once they are.
    fn on_crash(
        self: &Arc<Self>,
        event: &ContainerEvent,
        code: i64,
        oom: bool,
        tail: Option<Tail>,
    ) {
        match tail.as_ref().and_then(Tail::lines_now) {
            Some((lines, source)) => {
                self.publish_crash(event.clone(), code, oom, Ok(lines), source)
            }
            None => {
                tokio::spawn(self.clone().crashed(event.clone(), code, oom, tail));
            }
        }
    }

    /// Notes `event` in the container's track; returns its state before and its track now.
    fn track(&self, event: &ContainerEvent) -> (Option<String>, Track) {
        let mut all = lock(&self.monitor.containers);
        let known = all.contains_key(&event.id);
        let t = all.entry(event.id.clone()).or_default();
        let old = known.then(|| t.state.clone());
        match event.action.as_str() {
            "kill" if ends_container(event) => t.killed = true,
            "oom" => t.oom = true,
            "start" => (t.killed, t.oom) = (false, false),
            _ => {}
        }
        if let Some(s) = state_after(&event.action) {
            t.state = s.to_string();
        }
        (old, t.clone())
    }

    /// Keeps the last lines of running container `id` from now on.
    fn keep_last_lines(&self, id: &str) {
        let lines = self.settings.crash_log_lines;
        self.monitor.tails.keep(&self.engine, id, lines);
    }

    /// Publishes a crash with the container's last lines: from its log file, or its follow
    /// once complete, or Docker's logs request, whichever answers first.
    async fn crashed(
        self: Arc<Self>,
        event: ContainerEvent,
        exit_code: i64,
        oom_killed: bool,
        tail: Option<Tail>,
    ) {
        let lines = u64::from(self.settings.crash_log_lines);
        let request = log_tail(self.engine.as_ref(), &event.id, lines);
        let (logs, source) = match tail {
            Some(t) => t.last_lines(request).await,
            None => (request.await, Source::LogsRequest),
        };
        self.publish_crash(event, exit_code, oom_killed, logs, source);
    }

    fn publish_crash(
        &self,
        event: ContainerEvent,
        exit_code: i64,
        oom_killed: bool,
        logs: EngineResult<Vec<String>>,
        source: Source,
    ) {
        tracing::debug!(container = %event.name, source = ?source, "crash logs");
        let logs = logs.unwrap_or_else(|e| vec![format!("(logs unavailable: {e})")]);
        self.publish(FlowEvent::Crashed {
            id: event.id,
            name: event.name,
            exit_code,
            oom_killed,
            logs,
        });
    }

    /// Re-reads every container's state (after a (re)subscription: events in between are
    /// lost); a change seen only now is published too.
    async fn resync(&self) -> crate::core::CoreResult<()> {
        let now = self.list_raw().await?;
        let mut all = lock(&self.monitor.containers);
        let mut seen = HashMap::new();
        for c in now {
            let (Some(id), Some(state)) = (c.id, c.state.map(|s| s.to_string())) else {
                continue;
            };
            let name = c
                .names
                .and_then(|n| n.into_iter().next())
                .unwrap_or_default();
            let mut t = all.remove(&id).unwrap_or_default();
            let old = std::mem::replace(&mut t.state, state.clone());
            if !old.is_empty() && old != state {
                self.publish(FlowEvent::StatusChanged {
                    id: id.clone(),
                    name: name.trim_start_matches('/').to_string(),
                    old,
                    new: state,
                });
            }
            seen.insert(id, t);
        }
        let running: std::collections::HashSet<String> = seen
            .iter()
            .filter(|(_, t)| matches!(t.state.as_str(), "running" | "paused"))
            .map(|(id, _)| id.clone())
            .collect();
        *all = seen;
        drop(all);
        self.monitor.tails.retain(&running);
        for id in &running {
            self.keep_last_lines(id);
        }
        Ok(())
    }
}

/// Follows Docker's events of the Flow Manager's containers until `stop`; then the follows of
/// their logs end too.
pub async fn watch(flow: Arc<FlowManager>, stop: CancellationToken) {
    follow_events(&flow, &stop).await;
    flow.monitor.tails.clear();
}

async fn follow_events(flow: &Arc<FlowManager>, stop: &CancellationToken) {
    let mut resubscribe = Resubscribe::default();
    let filter = [Filter::Label(format!("{LABEL_DIALECT}={DIALECT}"))];
    while !stop.is_cancelled() {
        let mut events = flow.engine.container_events(&filter);
        let resynced = flow.resync().await;
        if resynced.is_ok() {
            // Docker may have been unreachable at start: serve the sockets found now.
            let _ = flow.reopen_sockets().await;
        }
        let mut received = false;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = events.next() => n,
            };
            match next {
                Some(Ok(e)) => {
                    received = true;
                    flow.on_event(&e);
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "Docker event stream failed");
                    break;
                }
                None => break,
            }
        }
        if !resubscribe.wait(received && resynced.is_ok(), stop).await {
            return;
        }
    }
}

/// Publishes every container's status each `status_interval` until `stop`.
pub async fn periodic(flow: Arc<FlowManager>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(flow.settings.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The containers and their state from the live view; only the stats ask Docker.
        let Ok(snap) = flow.view.current().await else {
            continue;
        };
        let ids: Vec<String> = FlowManager::ours(&snap).map(|c| c.id.clone()).collect();
        let statuses = futures_util::stream::iter(ids)
            .map(|id| {
                let flow = flow.clone();
                async move { flow.status(&id, false).await }
            })
            .buffer_unordered(4)
            .collect::<Vec<_>>();
        let statuses = tokio::select! {
            _ = stop.cancelled() => return,
            s = statuses => s,
        };
        for s in statuses.into_iter().flatten() {
            flow.publish(FlowEvent::StatusUpdate(Box::new(s)));
        }
    }
}
