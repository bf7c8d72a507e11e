//! The keys the gateway's `[apps]` policy gates ([`ComposePolicy`]): what would give an app
//! the host (`privileged`, `devices`, `cap_add`, the host's namespaces, volume drivers, network
//! options, logging drivers, published ports on gantry's own listeners) or another app's
//! resources. Every refusal names the service (or network, volume), the key and the switch of
//! `[apps]` that would allow it. (Bind mount and env file paths are checked where they are
//! resolved, in [`super::mounts`]; what other apps own is checked against Docker when the
//! project is applied, in `apply::prepare`.)

use std::net::{IpAddr, SocketAddr};

use bollard::models::DeviceMapping;
use docker_compose_types::{Labels, Service};

use super::labels::labels_map;
use super::{invalid, refused};
use crate::core::compose::parse::{ParsedService, PortSpec};
use crate::core::compose::{ComposeError, ComposePolicy};

/// Logging drivers that keep the logs on the gateway.
pub const LOCAL_LOGGING_DRIVERS: &[&str] = &["local", "json-file", "journald"];

/// gantry's own label prefix: a bundle may not set these.
pub const GANTRY_LABEL_PREFIX: &str = "io.gantry.";

/// A refusal of `what` that `apps.<switch> = true` would allow.
pub(super) fn gated(scope: &str, what: &str, switch: &str) -> ComposeError {
    refused(
        scope,
        format!("{what} is not allowed by this gateway's policy (apps.{switch} = true allows it)"),
    )
}

/// Refuses what the policy does not allow; checked before anything else of a service, so a
/// refused app hears about it first.
pub(super) fn check(
    scope: &str,
    parsed: &ParsedService,
    allowed: &ComposePolicy,
) -> Result<(), ComposeError> {
    let s = &parsed.spec;
    let asked = [
        (
            s.privileged,
            allowed.allow_privileged,
            "\"privileged\"",
            "allow_privileged",
        ),
        (
            !s.devices.is_empty(),
            allowed.allow_devices,
            "\"devices\"",
            "allow_devices",
        ),
        (
            !s.cap_add.is_empty(),
            allowed.allow_capabilities,
            "\"cap_add\"",
            "allow_capabilities",
        ),
    ];
    if let Some((_, _, what, switch)) = asked.iter().find(|(asked, ok, ..)| *asked && !*ok) {
        return Err(gated(scope, what, switch));
    }
    namespaces(scope, s, allowed)?;
    logging(scope, s, allowed)?;
    own_labels(scope, "labels", &s.labels)?;
    ports(scope, &parsed.extras.ports, allowed)
}

/// `pid` and `ipc`: the host's only with the switch; `network_mode: host` and `bridge`.
fn namespaces(scope: &str, s: &Service, allowed: &ComposePolicy) -> Result<(), ComposeError> {
    for (key, value) in [("pid", &s.pid), ("ipc", &s.ipc)] {
        match value.as_deref() {
            None => {}
            Some("host") if allowed.allow_host_namespaces => {}
            Some("host") => {
                let what = format!("\"{key}: host\" (the host's {key} namespace)");
                return Err(gated(scope, &what, "allow_host_namespaces"));
            }
            Some("private" | "shareable" | "none") if key == "ipc" => {}
            Some(other) => {
                return Err(invalid(scope, format!("unsupported {key} \"{other}\"")));
            }
        }
    }
    match s.network_mode.as_deref() {
        Some("host") if !allowed.allow_host_namespaces => Err(gated(
            scope,
            "\"network_mode: host\" (the host's network namespace)",
            "allow_host_namespaces",
        )),
        Some("bridge") if !allowed.allow_shared_resources => Err(gated(
            scope,
            "\"network_mode: bridge\" (Docker's default network, shared with other apps)",
            "allow_shared_resources",
        )),
        _ => Ok(()),
    }
}

fn logging(scope: &str, s: &Service, allowed: &ComposePolicy) -> Result<(), ComposeError> {
    let driver = s.logging.as_ref().and_then(|l| l.driver.as_deref());
    match driver {
        Some(d) if !LOCAL_LOGGING_DRIVERS.contains(&d) && !allowed.allow_logging_drivers => {
            let what = format!("\"logging.driver: {d}\" (only local, json-file and journald keep logs on the gateway)");
            Err(gated(scope, &what, "allow_logging_drivers"))
        }
        _ => Ok(()),
    }
}

/// `io.gantry.*` labels are gantry's: a bundle cannot set them (no switch).
pub(super) fn own_labels(scope: &str, key: &str, labels: &Labels) -> Result<(), ComposeError> {
    match labels_map(labels)
        .keys()
        .find(|k| k.starts_with(GANTRY_LABEL_PREFIX))
    {
        Some(k) => Err(refused(
            scope,
            format!("\"{key}\": the label \"{k}\" is gantry's own ({GANTRY_LABEL_PREFIX}*) and cannot be set by an app"),
        )),
        None => Ok(()),
    }
}

/// The inclusive host port range of `published` (`"8080"` or `"8000-8010"`).
fn published_range(published: &str) -> Option<(u16, u16)> {
    match published.split_once('-') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => published.parse().ok().map(|p| (p, p)),
    }
}

/// The host address a port binds: None for every address.
fn host_ip(p: &PortSpec) -> Option<IpAddr> {
    p.host_ip
        .as_deref()
        .and_then(|h| h.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified())
}

/// Published ports: never on one of gantry's listeners; within the allow-lists when set.
fn ports(scope: &str, ports: &[PortSpec], allowed: &ComposePolicy) -> Result<(), ComposeError> {
    for p in ports {
        let range = p.published.as_deref().and_then(published_range);
        if let (Some((lo, hi)), "tcp") = (range, p.protocol.as_str()) {
            if let Some(l) = allowed
                .reserved
                .iter()
                .find(|l| collides(l, host_ip(p), lo, hi))
            {
                return Err(refused(
                    scope,
                    format!(
                        "\"ports\": {} would take the port of gantry's own listener on {l}",
                        shown(p)
                    ),
                ));
            }
        }
        if !allowed.allowed_host_ports.is_empty() {
            let inside = range.is_some_and(|(lo, hi)| {
                allowed
                    .allowed_host_ports
                    .iter()
                    .any(|(a, b)| *a <= lo && hi <= *b)
            });
            if !inside {
                let what = format!(
                    "\"ports\": {} (a host port outside the allowed ones)",
                    shown(p)
                );
                return Err(refused(scope, format!("{what} is not allowed by this gateway's policy (see apps.allowed_host_ports)")));
            }
        }
        if !allowed.allowed_host_ips.is_empty() {
            let ip = p.host_ip.as_deref().and_then(|h| h.parse::<IpAddr>().ok());
            if !ip.is_some_and(|ip| allowed.allowed_host_ips.contains(&ip)) {
                let what = format!(
                    "\"ports\": {} (a host address outside the allowed ones)",
                    shown(p)
                );
                return Err(refused(scope, format!("{what} is not allowed by this gateway's policy (see apps.allowed_host_ips)")));
            }
        }
    }
    Ok(())
}

fn collides(listener: &SocketAddr, ip: Option<IpAddr>, lo: u16, hi: u16) -> bool {
    let port = listener.port();
    let same_ip = listener.ip().is_unspecified() || ip.is_none_or(|ip| ip == listener.ip());
    same_ip && lo <= port && port <= hi
}

fn shown(p: &PortSpec) -> String {
    format!(
        "{}{}:{}/{}",
        p.host_ip
            .as_deref()
            .map(|h| format!("{h}:"))
            .unwrap_or_default(),
        p.published.as_deref().unwrap_or(""),
        p.target,
        p.protocol
    )
}

/// `host[:container[:permissions]]`, permissions `rwm` unless given.
pub(super) fn devices(scope: &str, s: &Service) -> Result<Vec<DeviceMapping>, ComposeError> {
    s.devices
        .iter()
        .map(|d| {
            let parts: Vec<&str> = d.split(':').collect();
            let (host, cont, perms) = match parts.as_slice() {
                [h] => (*h, *h, "rwm"),
                [h, c] => (*h, *c, "rwm"),
                [h, c, p] => (*h, *c, *p),
                _ => return Err(invalid(scope, format!("invalid device \"{d}\""))),
            };
            Ok(DeviceMapping {
                path_on_host: Some(host.to_string()),
                path_in_container: Some(cont.to_string()),
                cgroup_permissions: Some(perms.to_string()),
            })
        })
        .collect()
}

/// A network definition: the host's network, drivers, driver options and IPAM.
pub(super) fn network(
    scope: &str,
    def: &docker_compose_types::NetworkSettings,
    name: &str,
    external: bool,
    allowed: &ComposePolicy,
) -> Result<(), ComposeError> {
    own_labels(scope, "labels", &def.labels)?;
    let driver = def.driver.as_deref();
    let host = (external && name == "host") || driver == Some("host");
    if host && !allowed.allow_host_namespaces {
        let what = "the host's network (\"host\")";
        return Err(gated(scope, what, "allow_host_namespaces"));
    }
    if def.ipam.is_some() && !allowed.allow_network_options {
        return Err(gated(scope, "\"ipam\"", "allow_network_options"));
    }
    let plain = ["bridge", "host"];
    driver_and_options(
        scope,
        driver,
        &plain,
        def.driver_opts.is_empty(),
        allowed.allow_network_options,
        "allow_network_options",
    )
}

/// A `driver` outside `plain`, or any `driver_opts`, unless `allowed` (`switch`).
fn driver_and_options(
    scope: &str,
    driver: Option<&str>,
    plain: &[&str],
    no_options: bool,
    allowed: bool,
    switch: &str,
) -> Result<(), ComposeError> {
    if allowed {
        return Ok(());
    }
    if let Some(d) = driver.filter(|d| !plain.contains(d)) {
        return Err(gated(scope, &format!("\"driver: {d}\""), switch));
    }
    if !no_options {
        return Err(gated(scope, "\"driver_opts\"", switch));
    }
    Ok(())
}

/// A volume definition: a driver other than `local`, or driver options, can mount anything
/// of the host (`type: none, o: bind, device: /`).
pub(super) fn volume(
    scope: &str,
    def: &docker_compose_types::ComposeVolume,
    allowed: &ComposePolicy,
) -> Result<(), ComposeError> {
    own_labels(scope, "labels", &def.labels)?;
    let driver = def.driver.as_deref();
    driver_and_options(
        scope,
        driver,
        &["local"],
        def.driver_opts.is_empty(),
        allowed.allow_volume_drivers,
        "allow_volume_drivers",
    )
}
