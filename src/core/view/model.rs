//! What the live view holds per container, and how it renders Docker's own models from it.
//!
//! A container's static fields (names, image, command, labels, mounts, host config) are kept
//! as Docker listed them; its state (run state, exit code, health, start and finish times,
//! ports, networks) is kept apart, because events change it. Docker's human status text
//! ("Up 3 minutes (healthy)") depends on the time of the read, so it is rendered then, the
//! way dockerd renders it.

use std::collections::HashMap;

use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    ContainerSummaryHealthStatusEnum, ContainerSummaryNetworkSettings, ContainerSummaryStateEnum,
    EndpointSettings, HealthStatusEnum, PortMap, PortSummary, PortSummaryTypeEnum,
};

/// A container's run state, Docker's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl RunState {
    pub fn word(self) -> &'static str {
        match self {
            RunState::Created => "created",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Restarting => "restarting",
            RunState::Removing => "removing",
            RunState::Exited => "exited",
            RunState::Dead => "dead",
        }
    }

    /// Running as gantry counts it for an app's status (as the compose engine does):
    /// running or restarting.
    pub fn is_running(self) -> bool {
        matches!(self, RunState::Running | RunState::Restarting)
    }

    fn summary_enum(self) -> ContainerSummaryStateEnum {
        match self {
            RunState::Created => ContainerSummaryStateEnum::CREATED,
            RunState::Running => ContainerSummaryStateEnum::RUNNING,
            RunState::Paused => ContainerSummaryStateEnum::PAUSED,
            RunState::Restarting => ContainerSummaryStateEnum::RESTARTING,
            RunState::Removing => ContainerSummaryStateEnum::REMOVING,
            RunState::Exited => ContainerSummaryStateEnum::EXITED,
            RunState::Dead => ContainerSummaryStateEnum::DEAD,
        }
    }

    fn from_inspect(s: Option<ContainerStateStatusEnum>) -> Self {
        match s {
            Some(ContainerStateStatusEnum::RUNNING) => RunState::Running,
            Some(ContainerStateStatusEnum::PAUSED) => RunState::Paused,
            Some(ContainerStateStatusEnum::RESTARTING) => RunState::Restarting,
            Some(ContainerStateStatusEnum::REMOVING) => RunState::Removing,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::STOPPING) => {
                RunState::Exited
            }
            Some(ContainerStateStatusEnum::DEAD) => RunState::Dead,
            _ => RunState::Created,
        }
    }
}

/// A container's health, for containers with a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn word(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }

    /// From a word of Docker's (`health_status: healthy` events, inspect's status).
    pub fn parse(word: &str) -> Option<Self> {
        match word.trim() {
            "starting" => Some(Health::Starting),
            "healthy" => Some(Health::Healthy),
            "unhealthy" => Some(Health::Unhealthy),
            _ => None,
        }
    }

    fn from_inspect(s: Option<HealthStatusEnum>) -> Option<Self> {
        match s? {
            HealthStatusEnum::STARTING => Some(Health::Starting),
            HealthStatusEnum::HEALTHY => Some(Health::Healthy),
            HealthStatusEnum::UNHEALTHY => Some(Health::Unhealthy),
            _ => None,
        }
    }

    fn summary_enum(h: Option<Self>) -> ContainerSummaryHealthStatusEnum {
        match h {
            None => ContainerSummaryHealthStatusEnum::NONE,
            Some(Health::Starting) => ContainerSummaryHealthStatusEnum::STARTING,
            Some(Health::Healthy) => ContainerSummaryHealthStatusEnum::HEALTHY,
            Some(Health::Unhealthy) => ContainerSummaryHealthStatusEnum::UNHEALTHY,
        }
    }
}

/// The part of a container that events change.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerState {
    pub run: RunState,
    pub exit_code: i64,
    pub health: Option<Health>,
    /// Unix nanoseconds; None before the first start.
    pub started_at: Option<i64>,
    /// Unix nanoseconds; None before the first exit.
    pub finished_at: Option<i64>,
    /// Published and exposed ports, as Docker lists them (empty while not running).
    pub ports: Vec<PortSummary>,
    pub networks: Option<HashMap<String, EndpointSettings>>,
}

/// One container as the view knows it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    /// As Docker listed it; state, status, ports, networks and health are rendered from
    /// `state` instead.
    pub summary: ContainerSummary,
    pub state: ContainerState,
    /// Creation time, Unix nanoseconds (Docker lists newest first).
    pub created_ns: i64,
    pub has_healthcheck: bool,
    /// `summary` is Docker's list entry (not one made from an event or an inspect): until it
    /// is, every fetch after an event asks for the list entry too.
    pub listed: bool,
    /// The engine time (Unix nanoseconds) up to which this record is known to be current:
    /// the time of the last event applied, or when the inspect it came from was sent.
    /// Older events are already part of it and are not applied again.
    pub as_of: i64,
}

impl Container {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.summary.labels.as_ref()?.get(key).map(String::as_str)
    }

    pub fn image(&self) -> &str {
        self.summary.image.as_deref().unwrap_or_default()
    }

    pub fn image_id(&self) -> &str {
        self.summary.image_id.as_deref().unwrap_or_default()
    }

    pub fn running(&self) -> bool {
        self.state.run.is_running()
    }

    /// Docker's ContainerSummary as `GET /containers/json?all=1` would answer it at `now`
    /// (Unix nanoseconds).
    pub fn render(&self, now: i64) -> ContainerSummary {
        let mut s = self.summary.clone();
        s.state = Some(self.state.run.summary_enum());
        s.status = Some(status_text(&self.state, now));
        s.ports = Some(self.state.ports.clone());
        s.network_settings = Some(ContainerSummaryNetworkSettings {
            networks: self.state.networks.clone(),
        });
        if let Some(h) = s.health.as_mut() {
            h.status = Some(Health::summary_enum(self.state.health));
        }
        s
    }

    /// A record from Docker's inspect (`as_of`: when it was sent) and, when known, its list
    /// entry; without one, the static fields are taken from the inspect.
    pub fn from_inspect(
        i: &ContainerInspectResponse,
        listed: Option<ContainerSummary>,
        as_of: i64,
    ) -> Self {
        let from_list = listed.is_some();
        let summary = listed.unwrap_or_else(|| summary_of_inspect(i));
        let id = i.id.clone().unwrap_or_default();
        let name = i.name.as_deref().unwrap_or_default();
        Container {
            id,
            name: name.trim_start_matches('/').to_string(),
            created_ns: i
                .created
                .as_deref()
                .and_then(parse_time)
                .unwrap_or_default(),
            has_healthcheck: has_healthcheck(i),
            state: state_of_inspect(i),
            summary,
            listed: from_list,
            as_of,
        }
    }
}

fn has_healthcheck(i: &ContainerInspectResponse) -> bool {
    let test = i.config.as_ref().and_then(|c| c.healthcheck.as_ref());
    let test = test.and_then(|h| h.test.as_ref());
    test.is_some_and(|t| !t.is_empty() && t.first().map(String::as_str) != Some("NONE"))
}

/// The state part of an inspect.
pub fn state_of_inspect(i: &ContainerInspectResponse) -> ContainerState {
    let st = i.state.clone().unwrap_or_default();
    let net = i.network_settings.as_ref();
    ContainerState {
        run: RunState::from_inspect(st.status),
        exit_code: st.exit_code.unwrap_or_default(),
        health: Health::from_inspect(st.health.and_then(|h| h.status)),
        started_at: st.started_at.as_deref().and_then(parse_time),
        finished_at: st.finished_at.as_deref().and_then(parse_time),
        ports: ports_of(net.and_then(|n| n.ports.as_ref())),
        networks: net.and_then(|n| n.networks.clone()),
    }
}

/// The summary fields an inspect has, for a container not listed yet.
fn summary_of_inspect(i: &ContainerInspectResponse) -> ContainerSummary {
    let config = i.config.clone().unwrap_or_default();
    let mut command = i.path.clone().unwrap_or_default();
    for a in i.args.iter().flatten() {
        command.push(' ');
        command.push_str(a);
    }
    ContainerSummary {
        id: i.id.clone(),
        names: i.name.clone().map(|n| vec![n]),
        image: config.image,
        image_id: i.image.clone(),
        command: Some(command),
        created: i
            .created
            .as_deref()
            .and_then(parse_time)
            .map(|ns| ns / 1_000_000_000),
        labels: config.labels,
        mounts: i.mounts.clone(),
        ..Default::default()
    }
}

/// Docker's port list from an inspect's port map: one entry per binding, or one without a
/// public port for a port that is only exposed. Sorted (Docker's order is a map's).
pub fn ports_of(map: Option<&PortMap>) -> Vec<PortSummary> {
    let mut out = Vec::new();
    for (key, bindings) in map.into_iter().flatten() {
        let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        let Ok(private_port) = port.parse::<u16>() else {
            continue;
        };
        let typ = Some(match proto {
            "udp" => PortSummaryTypeEnum::UDP,
            "sctp" => PortSummaryTypeEnum::SCTP,
            _ => PortSummaryTypeEnum::TCP,
        });
        let bindings = bindings.as_deref().unwrap_or_default();
        if bindings.is_empty() {
            out.push(PortSummary {
                private_port,
                typ,
                ..Default::default()
            });
        }
        for b in bindings {
            out.push(PortSummary {
                // Docker leaves an empty address out.
                ip: b.host_ip.clone().filter(|ip| !ip.is_empty()),
                private_port,
                public_port: b.host_port.as_deref().and_then(|p| p.parse().ok()),
                typ,
            });
        }
    }
    out.sort_by_key(port_key);
    out
}

fn port_key(p: &PortSummary) -> (u16, Option<u16>, Option<String>, String) {
    let typ = p.typ.map(|t| t.to_string()).unwrap_or_default();
    (p.private_port, p.public_port, p.ip.clone(), typ)
}

/// Docker's status text at `now` (dockerd's `State.String()`).
pub fn status_text(s: &ContainerState, now: i64) -> String {
    let since = |t: Option<i64>| human_duration(now - t.unwrap_or(now));
    match s.run {
        RunState::Paused => format!("Up {} (Paused)", since(s.started_at)),
        RunState::Restarting => {
            format!("Restarting ({}) {} ago", s.exit_code, since(s.finished_at))
        }
        RunState::Running => match s.health {
            Some(Health::Starting) => format!("Up {} (health: starting)", since(s.started_at)),
            Some(h) => format!("Up {} ({})", since(s.started_at), h.word()),
            None => format!("Up {}", since(s.started_at)),
        },
        RunState::Removing => "Removal In Progress".to_string(),
        RunState::Dead => "Dead".to_string(),
        RunState::Created => "Created".to_string(),
        RunState::Exited if s.started_at.is_none() => "Created".to_string(),
        RunState::Exited if s.finished_at.is_none() => String::new(),
        RunState::Exited => format!("Exited ({}) {} ago", s.exit_code, since(s.finished_at)),
    }
}

/// A duration as Docker words it (go-units' `HumanDuration`).
pub fn human_duration(ns: i64) -> String {
    let secs = ns.max(0) / 1_000_000_000;
    let minutes = secs / 60;
    // Hours are rounded to the nearest one.
    let hours = (ns.max(0) + 1_800_000_000_000) / 3_600_000_000_000;
    match () {
        _ if secs < 1 => "Less than a second".to_string(),
        _ if secs == 1 => "1 second".to_string(),
        _ if secs < 60 => format!("{secs} seconds"),
        _ if minutes == 1 => "About a minute".to_string(),
        _ if minutes < 60 => format!("{minutes} minutes"),
        _ if hours == 1 => "About an hour".to_string(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", secs / 3600 / 24 / 365),
    }
}

/// An RFC 3339 time as Docker writes it (`2024-01-02T03:04:05.123456789Z`, or with an
/// offset), as Unix nanoseconds; None for Go's zero time and what does not parse.
pub fn parse_time(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, day) = (d.next()??, d.next()??, d.next()??);
    if y <= 1 {
        return None;
    }
    let (clock, offset) = split_offset(rest)?;
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    let digits: String = frac.chars().take(9).collect();
    let nanos = format!("{digits:0<9}").parse::<i64>().ok()?;
    let days = days_from_civil(y, mo, day);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(secs * 1_000_000_000 + nanos)
}

/// The clock part and the offset in seconds (`Z`, `+01:00`, `-05:30`).
fn split_offset(rest: &str) -> Option<(&str, i64)> {
    if let Some(clock) = rest.strip_suffix('Z') {
        return Some((clock, 0));
    }
    let at = rest.rfind(['+', '-'])?;
    let (clock, off) = rest.split_at(at);
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let (oh, om) = off[1..].split_once(':')?;
    Some((
        clock,
        sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Now, Unix nanoseconds (the clock dockerd stamps its events with, on the same host).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn durations_read_as_dockers() {
        let m = 60 * S;
        let h = 60 * m;
        let day = 24 * h;
        for (ns, text) in [
            (S / 2, "Less than a second"),
            (S, "1 second"),
            (59 * S, "59 seconds"),
            (m, "About a minute"),
            (35 * m + 40 * S, "35 minutes"),
            (h + 29 * m, "About an hour"),
            (h + 31 * m, "2 hours"),
            (3 * h + 31 * m, "4 hours"),
            (day + 12 * h, "36 hours"),
            (13 * day + 5 * h, "13 days"),
            (14 * day, "2 weeks"),
            (44 * day, "6 weeks"),
            (60 * day, "2 months"),
            (24 * 30 * day, "24 months"),
            (24 * 30 * day + 14 * day, "2 years"),
            (3 * 365 * day + 60 * day, "3 years"),
        ] {
            assert_eq!(human_duration(ns), text, "{ns}");
        }
    }

    #[test]
    fn times_parse_as_rfc3339() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time("2024-02-29T12:34:56.123456789Z"),
            Some(1_709_210_096_123_456_789)
        );
        assert_eq!(
            parse_time("2024-02-29T13:34:56.5+01:00"),
            Some(1_709_210_096_500_000_000)
        );
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_time("yesterday"), None);
    }

    fn state(run: RunState) -> ContainerState {
        ContainerState {
            run,
            exit_code: 137,
            health: None,
            started_at: Some(100 * S),
            finished_at: Some(200 * S),
            ports: Vec::new(),
            networks: None,
        }
    }

    #[test]
    fn status_text_reads_as_dockers() {
        let now = 230 * S;
        assert_eq!(status_text(&state(RunState::Running), now), "Up 2 minutes");
        assert_eq!(
            status_text(&state(RunState::Exited), now),
            "Exited (137) 30 seconds ago"
        );
        assert_eq!(
            status_text(&state(RunState::Paused), now),
            "Up 2 minutes (Paused)"
        );
        let mut s = state(RunState::Running);
        s.health = Some(Health::Starting);
        assert_eq!(status_text(&s, now), "Up 2 minutes (health: starting)");
        s.health = Some(Health::Unhealthy);
        assert_eq!(status_text(&s, now), "Up 2 minutes (unhealthy)");
        let mut s = state(RunState::Created);
        s.started_at = None;
        assert_eq!(status_text(&s, now), "Created");
        assert_eq!(
            status_text(&state(RunState::Restarting), now),
            "Restarting (137) 30 seconds ago"
        );
    }

    #[test]
    fn ports_list_bindings_and_exposed_ports() {
        let map: PortMap = HashMap::from([
            ("80/tcp".to_string(), None),
            (
                "53/udp".to_string(),
                Some(vec![bollard::models::PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some("5353".into()),
                }]),
            ),
        ]);
        let ports = ports_of(Some(&map));
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].private_port, 53);
        assert_eq!(ports[0].public_port, Some(5353));
        assert_eq!(ports[0].typ, Some(PortSummaryTypeEnum::UDP));
        assert_eq!(ports[1].private_port, 80);
        assert_eq!(ports[1].public_port, None);
    }
}
