//! A container's status as the Flow Manager reports it: Docker's state and health and the
//! uptime (from the live view), its socket, and resource usage computed from Docker's stats
//! (the one part asked of Docker).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerInspectResponse, ContainerSummary};

use super::sockets::Hub;
use super::{
    id_of, name_of, ContainerInfo, FlowError, FlowManager, DIALECT, LABEL_DIALECT, LABEL_SOCKET,
};
use crate::core::engine::{CpuCounters, ResourceSample};
use crate::core::view::model::{Container, Health, RunState};
use crate::core::view::now_ns;
use crate::core::CoreResult;

/// Resource usage of a running container.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResourceUsage {
    pub cpu_percent: f64,
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub memory_percent: f64,
    pub network_rx_bytes: u64,
    pub network_tx_bytes: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub at: SystemTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    /// created, running, paused, restarting, removing, exited or dead.
    pub state: String,
    /// healthy, unhealthy, starting or none.
    pub health: String,
    /// `H:MM:SS` (with `N day(s), ` before it) while running.
    pub uptime: Option<String>,
    pub socket_connected: bool,
    pub last_communication: Option<SystemTime>,
    /// Only while running.
    pub resources: Option<ResourceUsage>,
}

pub fn is_running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().and_then(|s| s.running).unwrap_or(false)
}

pub fn state_of(c: &ContainerInspectResponse) -> String {
    c.state
        .as_ref()
        .and_then(|s| s.status)
        .map_or_else(|| "dead".to_string(), |s| s.to_string())
}

/// Python's `str(timedelta)` without the fraction: `0:10:30`, `1 day, 2:03:04`.
pub fn uptime_text(d: Duration) -> String {
    let s = d.as_secs();
    let (days, rem) = (s / 86_400, s % 86_400);
    let hms = format!("{}:{:02}:{:02}", rem / 3_600, rem % 3_600 / 60, rem % 60);
    match days {
        0 => hms,
        1 => format!("1 day, {hms}"),
        n => format!("{n} days, {hms}"),
    }
}

/// Running as Docker's `State.Running` says it: also while paused or restarting.
fn docker_running(run: RunState) -> bool {
    matches!(
        run,
        RunState::Running | RunState::Paused | RunState::Restarting
    )
}

/// The time since the container started, while it runs.
fn uptime_of(c: &Container, now: i64) -> Option<String> {
    if !docker_running(c.state.run) {
        return None;
    }
    let up = u64::try_from(now - c.state.started_at?).unwrap_or(0);
    Some(uptime_text(Duration::from_nanos(up)))
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        (part / whole * 10_000.0).round() / 100.0
    } else {
        0.0
    }
}

/// Usage from `sample`, the CPU share measured against `previous` (Docker's own earlier
/// sample when it sent one, else the caller's).
pub fn usage(sample: &ResourceSample, previous: Option<CpuCounters>) -> ResourceUsage {
    let cpu = match sample.previous_cpu.or(previous) {
        Some(p) if sample.cpu.system > p.system => {
            let c = sample.cpu.container.saturating_sub(p.container) as f64;
            let s = (sample.cpu.system - p.system) as f64;
            percent(c * f64::from(sample.online_cpus), s)
        }
        _ => 0.0,
    };
    ResourceUsage {
        cpu_percent: cpu,
        memory_usage: sample.memory_usage,
        memory_limit: sample.memory_limit,
        memory_percent: percent(sample.memory_usage as f64, sample.memory_limit as f64),
        network_rx_bytes: sample.net_rx,
        network_tx_bytes: sample.net_tx,
        disk_read_bytes: sample.disk_read,
        disk_write_bytes: sample.disk_write,
        at: SystemTime::now(),
    }
}

/// Container port (without `/tcp`) to host port, from Docker's port bindings.
fn ports_of(bindings: Option<&bollard::models::PortMap>) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = bindings
        .into_iter()
        .flatten()
        .filter_map(|(key, b)| {
            let host = b.as_ref()?.first()?.host_port.as_deref()?.parse().ok()?;
            let port = key.strip_suffix("/tcp").unwrap_or(key);
            Some((port.to_string(), host))
        })
        .collect();
    out.sort();
    out
}

/// A listing entry from Docker's container summary.
pub fn summary_info(c: ContainerSummary, hub: &Hub) -> ContainerInfo {
    let name = c
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    let socket_path = c
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SOCKET))
        .map_or_else(|| hub.path_of(&name), PathBuf::from);
    let created = c.created.and_then(|t| u64::try_from(t).ok()).unwrap_or(0);
    let mut ports: Vec<(String, u16)> = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let proto = p.typ.map(|t| t.to_string()).unwrap_or_default();
            let key = match proto.as_str() {
                "" | "tcp" => p.private_port.to_string(),
                other => format!("{}/{other}", p.private_port),
            };
            Some((key, p.public_port?))
        })
        .collect();
    ports.sort();
    ports.dedup();
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name,
        image: c.image.unwrap_or_default(),
        state: c.state.map(|s| s.to_string()).unwrap_or_default(),
        created: crate::core::apps::store::rfc3339(UNIX_EPOCH + Duration::from_secs(created)),
        socket_path,
        ports,
    }
}

/// A listing entry from Docker's inspect data.
pub fn inspect_info(c: &ContainerInspectResponse, socket_path: PathBuf) -> ContainerInfo {
    ContainerInfo {
        id: id_of(c),
        name: name_of(c),
        image: c
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default(),
        state: state_of(c),
        created: c.created.clone().unwrap_or_default(),
        socket_path,
        ports: ports_of(
            c.host_config
                .as_ref()
                .and_then(|h| h.port_bindings.as_ref()),
        ),
    }
}

impl FlowManager {
    /// The status of container `id` (an id, id prefix or name): its state, health and
    /// uptime from the live view, its resource usage from Docker's stats. `precise`: ask
    /// Docker for two samples a second apart (an accurate CPU share); else one sample
    /// against the previous one seen.
    pub async fn status(&self, id: &str, precise: bool) -> CoreResult<ContainerStatus> {
        let snap = self.view.current().await?;
        let c = snap
            .container(id)
            .filter(|c| c.label(LABEL_DIALECT) == Some(DIALECT))
            .ok_or_else(|| FlowError::ContainerNotFound(format!("container {id} not found")))?;
        let (id, name, running) = (c.id.clone(), c.name.clone(), docker_running(c.state.run));
        let ep = self.sockets.get(&name);
        let mut status = ContainerStatus {
            state: c.state.run.word().to_string(),
            health: c.state.health.map_or("none", Health::word).to_string(),
            uptime: uptime_of(c, now_ns()),
            socket_connected: ep.as_ref().is_some_and(|e| e.connected()),
            last_communication: ep.as_ref().and_then(|e| e.last_communication()),
            resources: None,
            id,
            name,
        };
        if running {
            status.resources = self.resources(&status.id, &status.name, precise).await;
        }
        Ok(status)
    }

    /// The container's resource usage from Docker's stats; None when Docker has none.
    async fn resources(&self, id: &str, name: &str, precise: bool) -> Option<ResourceUsage> {
        match self.engine.resource_usage(id, !precise).await {
            Ok(sample) => {
                let previous = self.monitor.swap_cpu(id, sample.cpu);
                Some(usage(&sample, previous))
            }
            Err(e) => {
                tracing::debug!(container = %name, error = %e, "no stats");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_reads_like_python() {
        assert_eq!(uptime_text(Duration::from_secs(630)), "0:10:30");
        assert_eq!(
            uptime_text(Duration::from_secs(86_400 + 3_784)),
            "1 day, 1:03:04"
        );
        assert_eq!(
            uptime_text(Duration::from_secs(3 * 86_400)),
            "3 days, 0:00:00"
        );
    }

    #[test]
    fn cpu_share_from_two_samples() {
        let s = ResourceSample {
            cpu: CpuCounters {
                container: 150,
                system: 2_000,
            },
            online_cpus: 2,
            memory_usage: 50,
            memory_limit: 200,
            ..Default::default()
        };
        let prev = CpuCounters {
            container: 100,
            system: 1_000,
        };
        let u = usage(&s, Some(prev));
        assert_eq!(u.cpu_percent, 10.0);
        assert_eq!(u.memory_percent, 25.0);
        assert_eq!(usage(&s, None).cpu_percent, 0.0);
    }
}
