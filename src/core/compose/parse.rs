//! From compose text to the typed model: YAML, `<<` merges, the allowed-keys check,
//! interpolation, the type conversions compose 1.29 applies after interpolating, and then
//! docker-compose-types for the typed parse.
//!
//! docker-compose-types has no `cpus` field and cannot hold a list mixing short and long port
//! syntax, so those two are parsed here into [`ServiceExtras`] and removed from the tree
//! before the typed parse.

use std::collections::HashMap;

use docker_compose_types::{ComposeVolume, MapOrEmpty, NetworkSettings, Service};
use indexmap::IndexMap;
use serde_norway::{Mapping, Value};

use super::interpolate::{interpolate, InterpolationError, MAX_EXPANDED_BYTES, MAX_VALUE_BYTES};
use super::{validate, ComposeError};

/// The parsed compose file.
#[derive(Debug, Clone)]
pub struct ComposeModel {
    pub services: IndexMap<String, ParsedService>,
    pub networks: IndexMap<String, Option<NetworkSettings>>,
    pub volumes: IndexMap<String, Option<ComposeVolume>>,
    /// Variables referenced but not set (compose warns and uses "").
    pub missing_vars: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ParsedService {
    pub spec: Service,
    pub extras: ServiceExtras,
}

/// What docker-compose-types cannot hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceExtras {
    pub cpus: Option<f64>,
    pub ports: Vec<PortSpec>,
}

/// One published or exposed port, after expanding ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub target: u16,
    /// `"8080"`, a range `"8000-8010"` (Docker picks a free one), or None for a random port.
    pub published: Option<String>,
    pub host_ip: Option<String>,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
}

fn invalid(scope: &str, message: impl Into<String>) -> ComposeError {
    ComposeError::Invalid {
        scope: scope.to_string(),
        message: message.into(),
    }
}

/// Parses and checks a compose document. `vars` are the interpolation variables.
pub fn parse(text: &str, vars: &HashMap<String, String>) -> Result<ComposeModel, ComposeError> {
    let mut root: Value = serde_norway::from_str(text).map_err(|e| ComposeError::Yaml {
        message: e.to_string(),
    })?;
    root.apply_merge().map_err(|e| ComposeError::Yaml {
        message: e.to_string(),
    })?;
    validate::check(&root)?;
    let Value::Mapping(mut top) = root else {
        unreachable!("validate::check accepts only mappings");
    };

    let mut missing = Vec::new();
    // What interpolation made so far: the whole document's values are capped together.
    let mut expanded = 0usize;
    let mut model = ComposeModel {
        services: IndexMap::new(),
        networks: IndexMap::new(),
        volumes: IndexMap::new(),
        missing_vars: Vec::new(),
    };

    if let Some(Value::Mapping(services)) = top.shift_remove("services") {
        for (name, svc) in services {
            let name = name.as_str().unwrap_or_default().to_string();
            let scope = format!("service \"{name}\"");
            let Value::Mapping(mut svc) = svc else {
                unreachable!("validate::check accepts only mappings")
            };
            strip_extensions(&mut svc);
            interpolate_entries(&scope, &mut svc, vars, &mut missing, &mut expanded)?;
            let extras = normalize_service(&scope, &mut svc)?;
            let spec: Service = serde_norway::from_value(Value::Mapping(svc))
                .map_err(|e| invalid(&scope, e.to_string()))?;
            model.services.insert(name, ParsedService { spec, extras });
        }
    }
    for section in ["networks", "volumes"] {
        let Some(Value::Mapping(entries)) = top.shift_remove(section) else {
            continue;
        };
        let what = &section[..section.len() - 1];
        for (name, def) in entries {
            let name = name.as_str().unwrap_or_default().to_string();
            let scope = format!("{what} \"{name}\"");
            let def = match def {
                Value::Mapping(mut m) => {
                    strip_extensions(&mut m);
                    interpolate_entries(&scope, &mut m, vars, &mut missing, &mut expanded)?;
                    normalize_resource(&scope, &mut m)?;
                    Some(m)
                }
                _ => None,
            };
            if section == "networks" {
                let settings = match def {
                    Some(m) => Some(
                        serde_norway::from_value::<MapOrEmpty<NetworkSettings>>(Value::Mapping(m))
                            .map_err(|e| invalid(&scope, e.to_string()))?,
                    ),
                    None => None,
                };
                model.networks.insert(name, settings.and_then(Option::from));
            } else {
                let settings = match def {
                    Some(m) => Some(
                        serde_norway::from_value::<MapOrEmpty<ComposeVolume>>(Value::Mapping(m))
                            .map_err(|e| invalid(&scope, e.to_string()))?,
                    ),
                    None => None,
                };
                model.volumes.insert(name, settings.and_then(Option::from));
            }
        }
    }
    model.missing_vars = missing;
    Ok(model)
}

fn strip_extensions(m: &mut Mapping) {
    m.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with("x-")));
}

/// Interpolates every string below each key of `m` (keys themselves are left alone).
fn interpolate_entries(
    scope: &str,
    m: &mut Mapping,
    vars: &HashMap<String, String>,
    missing: &mut Vec<String>,
    expanded: &mut usize,
) -> Result<(), ComposeError> {
    for (k, v) in m.iter_mut() {
        let key = k.as_str().unwrap_or_default();
        interpolate_value(v, vars, missing, expanded).map_err(|(s, e)| match e {
            InterpolationError::TooLarge => ComposeError::Interpolation {
                scope: scope.to_string(),
                key: key.to_string(),
                message: format!(
                    "interpolating \"{}\" would make a value over {MAX_VALUE_BYTES} bytes or \
                     the compose file's values over {MAX_EXPANDED_BYTES} bytes",
                    s.chars().take(64).collect::<String>()
                ),
            },
            InterpolationError::Invalid => ComposeError::Interpolation {
                scope: scope.to_string(),
                key: key.to_string(),
                message: format!("invalid interpolation format in \"{s}\""),
            },
            InterpolationError::Required(msg) => ComposeError::Interpolation {
                scope: scope.to_string(),
                key: key.to_string(),
                message: format!("missing mandatory value interpolating \"{s}\": {msg}"),
            },
        })?;
    }
    Ok(())
}

fn interpolate_value(
    v: &mut Value,
    vars: &HashMap<String, String>,
    missing: &mut Vec<String>,
    expanded: &mut usize,
) -> Result<(), (String, InterpolationError)> {
    match v {
        Value::String(s) => {
            let out = interpolate(s, vars, missing).map_err(|e| (s.clone(), e))?;
            *expanded += out.len();
            if *expanded > MAX_EXPANDED_BYTES {
                return Err((s.clone(), InterpolationError::TooLarge));
            }
            *s = out;
        }
        Value::Sequence(items) => {
            for item in items {
                interpolate_value(item, vars, missing, expanded)?;
            }
        }
        Value::Mapping(m) => {
            for (_, item) in m.iter_mut() {
                interpolate_value(item, vars, missing, expanded)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        _ => None,
    }
}

/// compose 1.29's `to_boolean`.
fn to_bool(scope: &str, key: &str, v: &mut Value) -> Result<(), ComposeError> {
    if let Value::String(s) = v {
        let b = match s.to_ascii_lowercase().as_str() {
            "y" | "yes" | "true" | "on" => true,
            "n" | "no" | "false" | "off" => false,
            _ => {
                return Err(invalid(
                    scope,
                    format!("\"{key}\": \"{s}\" is not a valid boolean"),
                ))
            }
        };
        *v = Value::Bool(b);
    }
    Ok(())
}

fn to_int(scope: &str, key: &str, v: &mut Value) -> Result<(), ComposeError> {
    if let Value::String(s) = v {
        let n: i64 = s
            .trim()
            .parse()
            .map_err(|_| invalid(scope, format!("\"{key}\": \"{s}\" is not a valid integer")))?;
        *v = Value::Number(n.into());
    }
    Ok(())
}

/// Numbers and booleans where docker-compose-types wants a string.
fn to_str(v: &mut Value) {
    if matches!(v, Value::Number(_) | Value::Bool(_)) {
        *v = Value::String(scalar_string(v).unwrap_or_default());
    }
}

fn list_items_to_str(v: &mut Value) {
    if let Value::Sequence(items) = v {
        items.iter_mut().for_each(to_str);
    } else {
        to_str(v);
    }
}

fn map_values_to_str(v: &mut Value, null_as_empty: bool) {
    if let Value::Mapping(m) = v {
        for (_, item) in m.iter_mut() {
            if null_as_empty && item.is_null() {
                *item = Value::String(String::new());
            } else {
                to_str(item);
            }
        }
    } else {
        list_items_to_str(v);
    }
}

/// Converts a service's values to what docker-compose-types reads, as compose 1.29 does
/// after interpolating, and takes out what it cannot hold.
fn normalize_service(scope: &str, svc: &mut Mapping) -> Result<ServiceExtras, ComposeError> {
    normalize_scalars(scope, svc)?;
    if let Some(Value::Mapping(hc)) = svc.get_mut("healthcheck") {
        normalize_healthcheck(scope, hc)?;
    }
    if let Some(Value::Mapping(limits)) = get_path(svc, &["deploy", "resources", "limits"]) {
        for key in ["cpus", "memory"] {
            if let Some(v) = limits.get_mut(key) {
                to_str(v);
            }
        }
    }
    if let Some(Value::Mapping(ulimits)) = svc.get_mut("ulimits") {
        normalize_ulimits(scope, ulimits)?;
    }
    if let Some(Value::Sequence(vols)) = svc.get_mut("volumes") {
        for v in vols.iter_mut() {
            if let Value::Mapping(m) = v {
                normalize_long_volume(scope, m)?;
            }
        }
    }
    if let Some(Value::Mapping(nets)) = svc.get_mut("networks") {
        for (_, n) in nets.iter_mut() {
            if let Some(a) = n.get_mut("aliases") {
                list_items_to_str(a);
            }
        }
    }
    take_extras(scope, svc)
}

/// The mapping at `path` below `m`, each step a mapping.
fn get_path<'m>(m: &'m mut Mapping, path: &[&str]) -> Option<&'m mut Value> {
    let (first, rest) = path.split_first()?;
    let v = m.get_mut(*first)?;
    match (rest.is_empty(), v) {
        (true, v) => Some(v),
        (false, Value::Mapping(inner)) => get_path(inner, rest),
        _ => None,
    }
}

/// Booleans, strings and lists of strings where compose 1.29 converts them.
fn normalize_scalars(scope: &str, svc: &mut Mapping) -> Result<(), ComposeError> {
    for key in ["read_only", "init", "tty", "stdin_open", "privileged"] {
        if let Some(v) = svc.get_mut(key) {
            to_bool(scope, key, v)?;
        }
    }
    for key in [
        "image",
        "user",
        "working_dir",
        "hostname",
        "container_name",
        "stop_signal",
        "network_mode",
        "pid",
        "ipc",
        "restart",
        "mem_limit",
        "shm_size",
        "stop_grace_period",
    ] {
        if let Some(v) = svc.get_mut(key) {
            to_str(v);
        }
    }
    for key in [
        "command",
        "entrypoint",
        "env_file",
        "tmpfs",
        "devices",
        "cap_add",
        "cap_drop",
        "extra_hosts",
    ] {
        if let Some(v) = svc.get_mut(key) {
            list_items_to_str(v);
        }
    }
    // compose's environment values: numbers as written, booleans as Python prints them.
    if let Some(v) = svc.get_mut("environment") {
        map_values_to_str(v, false);
    }
    for key in ["labels", "sysctls"] {
        if let Some(v) = svc.get_mut(key) {
            map_values_to_str(v, true);
        }
    }
    extra_hosts_as_list(svc);
    if let Some(opts) = get_path(svc, &["logging", "options"]) {
        map_values_to_str(opts, true);
    }
    Ok(())
}

/// `extra_hosts` as a mapping becomes the list `host:address`.
fn extra_hosts_as_list(svc: &mut Mapping) {
    let Some(Value::Mapping(m)) = svc.get("extra_hosts") else {
        return;
    };
    let list = m
        .iter()
        .map(|(k, v)| {
            Value::String(format!(
                "{}:{}",
                scalar_string(k).unwrap_or_default(),
                scalar_string(v).unwrap_or_default()
            ))
        })
        .collect();
    svc.insert("extra_hosts".into(), Value::Sequence(list));
}

fn normalize_healthcheck(scope: &str, hc: &mut Mapping) -> Result<(), ComposeError> {
    if let Some(v) = hc.get_mut("retries") {
        to_int(scope, "healthcheck.retries", v)?;
    }
    if let Some(v) = hc.get_mut("disable") {
        to_bool(scope, "healthcheck.disable", v)?;
    }
    if let Some(v) = hc.get_mut("test") {
        list_items_to_str(v);
    }
    for key in ["interval", "timeout", "start_period"] {
        if let Some(v) = hc.get_mut(key) {
            to_str(v);
        }
    }
    Ok(())
}

fn normalize_ulimits(scope: &str, ulimits: &mut Mapping) -> Result<(), ComposeError> {
    for (name, u) in ulimits.iter_mut() {
        let name = name.as_str().unwrap_or_default().to_string();
        match u {
            Value::Mapping(m) => {
                for key in ["soft", "hard"] {
                    if let Some(v) = m.get_mut(key) {
                        to_int(scope, &format!("ulimits.{name}.{key}"), v)?;
                    }
                }
            }
            other => to_int(scope, &format!("ulimits.{name}"), other)?,
        }
    }
    Ok(())
}

/// A long-syntax volume: its booleans, and its tmpfs size in bytes.
fn normalize_long_volume(scope: &str, m: &mut Mapping) -> Result<(), ComposeError> {
    if let Some(ro) = m.get_mut("read_only") {
        to_bool(scope, "volumes.read_only", ro)?;
    }
    if let Some(nc) = get_path(m, &["volume", "nocopy"]) {
        to_bool(scope, "volumes.volume.nocopy", nc)?;
    }
    if let Some(size) = get_path(m, &["tmpfs", "size"]) {
        if let Value::String(s) = size {
            let n = super::plan::parse_bytes(s).ok_or_else(|| {
                invalid(
                    scope,
                    format!("\"volumes.tmpfs.size\": \"{s}\" is not a size"),
                )
            })?;
            *size = Value::Number(n.into());
        }
    }
    Ok(())
}

/// Takes out `cpus` and `ports`, which docker-compose-types cannot hold.
fn take_extras(scope: &str, svc: &mut Mapping) -> Result<ServiceExtras, ComposeError> {
    let mut extras = ServiceExtras::default();
    if let Some(v) = svc.shift_remove("cpus") {
        let cpus = match &v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|c| c.is_finite() && *c >= 0.0)
        .ok_or_else(|| invalid(scope, format!("\"cpus\": {v:?} is not a number of CPUs")))?;
        extras.cpus = Some(cpus);
    }
    if let Some(v) = svc.shift_remove("ports") {
        let Value::Sequence(items) = v else {
            return Err(invalid(scope, "\"ports\" must be a list"));
        };
        for item in &items {
            extras.ports.extend(parse_port_item(scope, item)?);
        }
    }
    Ok(extras)
}

fn normalize_resource(scope: &str, m: &mut Mapping) -> Result<(), ComposeError> {
    for key in ["external", "internal", "attachable", "enable_ipv6"] {
        if let Some(v) = m.get_mut(key) {
            to_bool(scope, key, v)?;
        }
    }
    if let Some(v) = m.get_mut("labels") {
        map_values_to_str(v, true);
    }
    if let Some(v) = m.get_mut("name") {
        to_str(v);
    }
    Ok(())
}

fn parse_port_item(scope: &str, item: &Value) -> Result<Vec<PortSpec>, ComposeError> {
    match item {
        Value::Number(_) | Value::String(_) => {
            let s = scalar_string(item).unwrap_or_default();
            parse_port_short(&s).map_err(|m| invalid(scope, m))
        }
        Value::Mapping(m) => {
            let target = match m.get("target") {
                Some(v) => port_number(&scalar_string(v).unwrap_or_default()),
                None => None,
            }
            .ok_or_else(|| invalid(scope, "a port needs a numeric \"target\""))?;
            let published = match m.get("published") {
                None | Some(Value::Null) => None,
                Some(v) => {
                    let s = scalar_string(v).unwrap_or_default();
                    let ok = match s.split_once('-') {
                        Some((a, b)) => port_number(a).is_some() && port_number(b).is_some(),
                        None => port_number(&s).is_some(),
                    };
                    if !ok {
                        return Err(invalid(scope, format!("invalid published port \"{s}\"")));
                    }
                    Some(s)
                }
            };
            let host_ip = m
                .get("host_ip")
                .and_then(scalar_string)
                .filter(|s| !s.is_empty());
            let protocol = m
                .get("protocol")
                .and_then(scalar_string)
                .unwrap_or_else(|| "tcp".to_string())
                .to_ascii_lowercase();
            if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
                return Err(invalid(
                    scope,
                    format!("invalid port protocol \"{protocol}\""),
                ));
            }
            Ok(vec![PortSpec {
                target,
                published,
                host_ip,
                protocol,
            }])
        }
        _ => Err(invalid(scope, format!("invalid port entry {item:?}"))),
    }
}

fn port_number(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `a` or `a-b` -> inclusive range.
fn port_range(s: &str) -> Option<(u16, u16)> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port_number(a)?, port_number(b)?);
            (a <= b).then_some((a, b))
        }
        None => port_number(s).map(|p| (p, p)),
    }
}

/// Short syntax, as docker-py's `split_port` reads it:
/// `[[host_ip:][published[-end]]:]target[-end][/protocol]`; the host IP may be bracketed.
pub fn parse_port_short(spec: &str) -> Result<Vec<PortSpec>, String> {
    let bad = || {
        format!(
            "invalid port \"{spec}\", should be [[host_ip:]published_port[-end]:]port[-end][/protocol]"
        )
    };
    let (rest, protocol) = match spec.rsplit_once('/') {
        Some((r, p)) if matches!(p, "tcp" | "udp" | "sctp") => (r, p),
        Some(_) => return Err(bad()),
        None => (spec, "tcp"),
    };
    let (outer, internal) = match rest.rsplit_once(':') {
        Some((o, i)) => (Some(o), i),
        None => (None, rest),
    };
    let (t0, t1) = port_range(internal).ok_or_else(bad)?;
    let (host, external) = match outer {
        None => (None, None),
        Some(o) => match o.rsplit_once(':') {
            Some((h, e)) => {
                let h = h
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(h);
                let valid_host = !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_hexdigit() || c == '.' || c == ':');
                if !valid_host {
                    return Err(bad());
                }
                (Some(h.to_string()), Some(e))
            }
            None => (None, Some(o)),
        },
    };
    let count = usize::from(t1 - t0) + 1;
    let external = match external {
        None | Some("") => None,
        Some(e) => Some(port_range(e).ok_or_else(bad)?),
    };
    let mut out = Vec::with_capacity(count);
    match external {
        None => {
            for t in t0..=t1 {
                out.push(PortSpec {
                    target: t,
                    published: None,
                    host_ip: host.clone(),
                    protocol: protocol.to_string(),
                });
            }
        }
        // One target, a published range: Docker picks a free port from the range.
        Some((e0, e1)) if count == 1 && e0 != e1 => out.push(PortSpec {
            target: t0,
            published: Some(format!("{e0}-{e1}")),
            host_ip: host.clone(),
            protocol: protocol.to_string(),
        }),
        Some((e0, e1)) => {
            if usize::from(e1 - e0) + 1 != count {
                return Err(format!("port ranges don't match in length in \"{spec}\""));
            }
            for (t, e) in (t0..=t1).zip(e0..=e1) {
                out.push(PortSpec {
                    target: t,
                    published: Some(e.to_string()),
                    host_ip: host.clone(),
                    protocol: protocol.to_string(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(target: u16, published: Option<&str>, host: Option<&str>, proto: &str) -> PortSpec {
        PortSpec {
            target,
            published: published.map(str::to_string),
            host_ip: host.map(str::to_string),
            protocol: proto.to_string(),
        }
    }

    #[test]
    fn short_ports() {
        assert_eq!(
            parse_port_short("80").unwrap(),
            vec![p(80, None, None, "tcp")]
        );
        assert_eq!(
            parse_port_short("8080:80").unwrap(),
            vec![p(80, Some("8080"), None, "tcp")]
        );
        assert_eq!(
            parse_port_short("127.0.0.1:8080:80/udp").unwrap(),
            vec![p(80, Some("8080"), Some("127.0.0.1"), "udp")]
        );
        assert_eq!(
            parse_port_short("127.0.0.1::80").unwrap(),
            vec![p(80, None, Some("127.0.0.1"), "tcp")]
        );
        assert_eq!(
            parse_port_short("[2001:db8::1]:53:53/udp").unwrap(),
            vec![p(53, Some("53"), Some("2001:db8::1"), "udp")]
        );
        assert_eq!(
            parse_port_short("::1:8080:80").unwrap(),
            vec![p(80, Some("8080"), Some("::1"), "tcp")]
        );
        assert_eq!(
            parse_port_short("127.0.0.1:9000-9001:80-81").unwrap(),
            vec![
                p(80, Some("9000"), Some("127.0.0.1"), "tcp"),
                p(81, Some("9001"), Some("127.0.0.1"), "tcp")
            ]
        );
        assert_eq!(
            parse_port_short("8000-8010:80").unwrap(),
            vec![p(80, Some("8000-8010"), None, "tcp")]
        );
        assert_eq!(
            parse_port_short("80-81/udp").unwrap(),
            vec![p(80, None, None, "udp"), p(81, None, None, "udp")]
        );
        for bad in [
            "",
            "x",
            "80/http",
            "8080-8082:80-81",
            "1.2.3.4:80",
            "70000",
            "81-80",
            "h:1:2",
        ] {
            assert!(parse_port_short(bad).is_err(), "{bad}");
        }
    }
}
