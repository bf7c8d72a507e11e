//! Resources and lifecycle: memory and CPU limits (also from `deploy.resources.limits`),
//! ulimits, sysctls, logging, the restart policy, the healthcheck and the stop grace period,
//! with the duration and size syntaxes compose 1.29 accepts.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    HealthConfig, HostConfig, HostConfigLogConfig, ResourcesUlimits, RestartPolicy,
    RestartPolicyNameEnum,
};
use docker_compose_types::{
    Healthcheck, HealthcheckTest, Service, StringOrUnsigned, SysCtls, Ulimit,
};

use super::invalid;
use crate::core::compose::parse::ParsedService;
use crate::core::compose::ComposeError;

/// What a service asks of the host besides its mounts and networks.
pub(super) struct Resources {
    pub restart_policy: Option<RestartPolicy>,
    pub healthcheck: Option<HealthConfig>,
    /// Seconds, from `stop_grace_period`.
    pub stop_timeout: Option<u32>,
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub ulimits: Vec<ResourcesUlimits>,
    pub sysctls: HashMap<String, String>,
    pub log_config: Option<HostConfigLogConfig>,
}

impl Resources {
    /// The host config's share of the resources (the healthcheck and the stop timeout go to
    /// the container config).
    pub fn into_host_config(self) -> HostConfig {
        HostConfig {
            restart_policy: self.restart_policy,
            memory: self.memory,
            nano_cpus: self.nano_cpus,
            ulimits: (!self.ulimits.is_empty()).then_some(self.ulimits),
            sysctls: (!self.sysctls.is_empty()).then_some(self.sysctls),
            log_config: self.log_config,
            ..Default::default()
        }
    }
}

pub(super) fn resources(scope: &str, parsed: &ParsedService) -> Result<Resources, ComposeError> {
    let s = &parsed.spec;
    let restart_policy = match s.restart.as_deref() {
        None => None,
        Some(r) => Some(restart(scope, r)?),
    };
    let healthcheck = match &s.healthcheck {
        None => None,
        Some(h) => Some(healthcheck(scope, h)?),
    };
    let stop_timeout = stop_timeout(scope, s)?;
    let (memory, nano_cpus) = limits(scope, parsed)?;
    Ok(Resources {
        restart_policy,
        healthcheck,
        stop_timeout,
        memory,
        nano_cpus,
        ulimits: ulimits(scope, s)?,
        sysctls: sysctls(scope, &s.sysctls)?,
        log_config: s.logging.as_ref().map(|l| HostConfigLogConfig {
            typ: l.driver.clone(),
            config: l
                .options
                .as_ref()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()),
        }),
    })
}

fn restart(scope: &str, r: &str) -> Result<RestartPolicy, ComposeError> {
    let bad = || invalid(scope, format!("invalid restart policy \"{r}\""));
    let (name, count) = match r.split_once(':') {
        Some(("on-failure", n)) => (
            RestartPolicyNameEnum::ON_FAILURE,
            n.parse::<i64>().map_err(|_| bad())?,
        ),
        Some(_) => return Err(bad()),
        None => (
            match r {
                "no" | "" => RestartPolicyNameEnum::NO,
                "always" => RestartPolicyNameEnum::ALWAYS,
                "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
                "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
                _ => return Err(bad()),
            },
            0,
        ),
    };
    Ok(RestartPolicy {
        name: Some(name),
        maximum_retry_count: Some(count),
    })
}

fn healthcheck(scope: &str, h: &Healthcheck) -> Result<HealthConfig, ComposeError> {
    let nanos = |key: &str, v: &Option<String>| -> Result<Option<i64>, ComposeError> {
        let Some(v) = v else { return Ok(None) };
        parse_duration(v)
            .map(|d| Some(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)))
            .ok_or_else(|| {
                invalid(
                    scope,
                    format!("healthcheck.{key}: invalid duration \"{v}\""),
                )
            })
    };
    let test = match (&h.test, h.disable) {
        (_, true) => Some(vec!["NONE".to_string()]),
        (None, false) => None,
        (Some(HealthcheckTest::Single(cmd)), false) => {
            Some(vec!["CMD-SHELL".to_string(), cmd.clone()])
        }
        (Some(HealthcheckTest::Multiple(v)), false) => {
            let first = v.first().map(String::as_str);
            if !matches!(first, Some("NONE" | "CMD" | "CMD-SHELL")) {
                return Err(invalid(
                    scope,
                    "healthcheck.test must start with NONE, CMD or CMD-SHELL",
                ));
            }
            Some(v.clone())
        }
    };
    Ok(HealthConfig {
        test,
        interval: nanos("interval", &h.interval)?,
        timeout: nanos("timeout", &h.timeout)?,
        retries: (h.retries != 0).then_some(h.retries),
        start_period: nanos("start_period", &h.start_period)?,
        ..Default::default()
    })
}

/// `stop_grace_period` in whole seconds, rounded up.
fn stop_timeout(scope: &str, s: &Service) -> Result<Option<u32>, ComposeError> {
    let Some(v) = &s.stop_grace_period else {
        return Ok(None);
    };
    let d = parse_duration(v).ok_or_else(|| {
        invalid(
            scope,
            format!("stop_grace_period: invalid duration \"{v}\""),
        )
    })?;
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Ok(Some(u32::try_from(secs).unwrap_or(u32::MAX)))
}

/// A size key (`mem_limit`, `shm_size`, ...) in bytes.
pub(super) fn bytes(
    scope: &str,
    key: &str,
    v: &Option<String>,
) -> Result<Option<i64>, ComposeError> {
    match v {
        None => Ok(None),
        Some(v) => parse_bytes(v)
            .map(Some)
            .ok_or_else(|| invalid(scope, format!("{key}: invalid size \"{v}\""))),
    }
}

/// Memory and nano-CPUs: `mem_limit` and `cpus`, overridden by `deploy.resources.limits`.
fn limits(scope: &str, parsed: &ParsedService) -> Result<(Option<i64>, Option<i64>), ComposeError> {
    let s = &parsed.spec;
    let mut memory = bytes(scope, "mem_limit", &s.mem_limit)?;
    let mut nano_cpus = parsed.extras.cpus.map(|c| (c * 1e9) as i64);
    let deploy = s.deploy.as_ref().and_then(|d| d.resources.as_ref());
    let Some(limits) = deploy.and_then(|r| r.limits.as_ref()) else {
        return Ok((memory, nano_cpus));
    };
    if let Some(m) = bytes(scope, "deploy.resources.limits.memory", &limits.memory)? {
        memory = Some(m);
    }
    if let Some(c) = &limits.cpus {
        let c: f64 = c
            .trim()
            .parse()
            .ok()
            .filter(|c: &f64| c.is_finite() && *c >= 0.0)
            .ok_or_else(|| {
                invalid(
                    scope,
                    format!("deploy.resources.limits.cpus: invalid \"{c}\""),
                )
            })?;
        nano_cpus = Some((c * 1e9) as i64);
    }
    Ok((memory, nano_cpus))
}

fn ulimits(scope: &str, s: &Service) -> Result<Vec<ResourcesUlimits>, ComposeError> {
    let ulimit = |name: &String, u: &Ulimit| {
        let num = |v: &StringOrUnsigned| -> Result<i64, ComposeError> {
            match v {
                StringOrUnsigned::Unsigned(n) => Ok(*n),
                StringOrUnsigned::String(s) => s.trim().parse().map_err(|_| {
                    invalid(scope, format!("ulimits.{name}: \"{s}\" is not a number"))
                }),
            }
        };
        let (soft, hard) = match u {
            Ulimit::Single(v) => (num(v)?, num(v)?),
            Ulimit::SoftHard { soft, hard } => (num(soft)?, num(hard)?),
        };
        Ok(ResourcesUlimits {
            name: Some(name.clone()),
            soft: Some(soft),
            hard: Some(hard),
        })
    };
    s.ulimits.0.iter().map(|(n, u)| ulimit(n, u)).collect()
}

fn sysctls(scope: &str, sysctls: &SysCtls) -> Result<HashMap<String, String>, ComposeError> {
    match sysctls {
        SysCtls::List(items) => items
            .iter()
            .map(|i| match i.split_once('=') {
                Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                None => Err(invalid(scope, format!("sysctls: \"{i}\" is not key=value"))),
            })
            .collect(),
        SysCtls::Map(m) => Ok(m
            .iter()
            .map(|(k, v)| {
                let v = v.as_ref().map(|v| v.to_string()).unwrap_or_default();
                (k.clone(), v)
            })
            .collect()),
    }
}

/// Go-style durations as compose 1.29 reads them: `1h2m3s`, `1.5s`, `500ms`, `10us`, `5ns`;
/// units in decreasing order, each at most once.
pub fn parse_duration(s: &str) -> Option<Duration> {
    const UNITS: &[(&str, f64)] = &[
        ("h", 3600.0),
        ("m", 60.0),
        ("s", 1.0),
        ("ms", 1e-3),
        ("us", 1e-6),
        ("µs", 1e-6),
        ("ns", 1e-9),
    ];
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut last_unit: Option<usize> = None;
    let mut secs = 0.0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let idx = UNITS.iter().position(|(u, _)| *u == unit)?;
        // us and µs are the same slot.
        let slot = if idx >= 5 { idx - 1 } else { idx };
        if last_unit.is_some_and(|l| slot <= l) {
            return None;
        }
        last_unit = Some(slot);
        secs += num * UNITS[idx].1;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// Sizes as docker-py's `parse_bytes` reads them: a number of bytes, or a number with a
/// `b`, `k`, `m` or `g` suffix (optionally followed by `b`), powers of 1024.
pub fn parse_bytes(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    if s.is_empty() {
        return None;
    }
    let s = if s.len() >= 2
        && s.ends_with('b')
        && s[..s.len() - 1].ends_with(|c: char| c.is_ascii_alphabetic())
    {
        &s[..s.len() - 1]
    } else {
        s.as_str()
    };
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 'b'),
    };
    let mult: f64 = match unit {
        'b' => 1.0,
        'k' => 1024.0,
        'm' => 1024.0 * 1024.0,
        'g' => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let n: f64 = digits.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    Some((n * mult) as i64)
}
