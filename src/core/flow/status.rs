//! A container's status as the Flow Manager reports it: Docker's state and health, uptime,
//! its socket, and resource usage computed from Docker's stats.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerInspectResponse, ContainerSummary};

use super::sockets::Hub;
use super::{id_of, name_of, ContainerInfo, FlowManager, LABEL_SOCKET};
use crate::core::engine::{CpuCounters, ResourceSample};
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

fn health_of(c: &ContainerInspectResponse) -> String {
    c.state
        .as_ref()
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".to_string())
}

/// Seconds since the epoch of an RFC 3339 UTC time as Docker writes it
/// (`2024-02-29T12:00:00.123456789Z`); None for Docker's zero time or anything else.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if y < 1970 || !(1..=12).contains(&m) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let nanos: u32 = format!("{frac:0<9}")[..9].parse().ok()?;
    let secs = days * 86_400 + hh * 3_600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
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

fn uptime_of(c: &ContainerInspectResponse) -> Option<String> {
    if !is_running(c) {
        return None;
    }
    let started = parse_time(c.state.as_ref()?.started_at.as_deref()?)?;
    Some(uptime_text(
        SystemTime::now()
            .duration_since(started)
            .unwrap_or_default(),
    ))
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
    /// The status of container `id`. `precise`: ask Docker for two samples a second apart
    /// (an accurate CPU share); else one sample against the previous one seen.
    pub async fn status(&self, id: &str, precise: bool) -> CoreResult<ContainerStatus> {
        let c = self.resolve(id).await?;
        let (id, name) = (id_of(&c), name_of(&c));
        let ep = self.sockets.get(&name);
        let resources = if is_running(&c) {
            match self.engine.resource_usage(&id, !precise).await {
                Ok(sample) => {
                    let previous = self.monitor.swap_cpu(&id, sample.cpu);
                    Some(usage(&sample, previous))
                }
                Err(e) => {
                    tracing::debug!(container = %name, error = %e, "no stats");
                    None
                }
            }
        } else {
            None
        };
        Ok(ContainerStatus {
            state: state_of(&c),
            health: health_of(&c),
            uptime: uptime_of(&c),
            socket_connected: ep.as_ref().is_some_and(|e| e.connected()),
            last_communication: ep.as_ref().and_then(|e| e.last_communication()),
            resources,
            id,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_times_parse() {
        let t = parse_time("2024-02-29T12:00:01.5Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_709_208_001, 500_000_000)
        );
        assert_eq!(
            crate::core::apps::store::rfc3339(parse_time("1999-12-31T23:59:59Z").unwrap()),
            "1999-12-31T23:59:59Z"
        );
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }

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
