//! The allowed-keys check, run on the raw YAML tree before typed parsing, so that an error
//! names the exact key and service, and keys the typed model would silently drop are caught.

use serde_norway::{Mapping, Value};

use super::ComposeError;

const TOP_LEVEL: &[&str] = &["version", "services", "networks", "volumes"];

/// Every service key gantry plans; anything else fails the import.
pub const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "volumes",
    "networks",
    "network_mode",
    "restart",
    "labels",
    "healthcheck",
    "user",
    "working_dir",
    "hostname",
    "container_name",
    "extra_hosts",
    "tmpfs",
    "ulimits",
    "sysctls",
    "stop_grace_period",
    "stop_signal",
    "read_only",
    "shm_size",
    "init",
    "tty",
    "stdin_open",
    "mem_limit",
    "cpus",
    "deploy",
    "logging",
    "devices",
    "cap_add",
    "cap_drop",
    "privileged",
    "depends_on",
    "pid",
    "ipc",
];

const HEALTHCHECK_KEYS: &[&str] = &[
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "disable",
];
const PORT_KEYS: &[&str] = &["target", "published", "host_ip", "protocol", "mode"];
const VOLUME_MOUNT_KEYS: &[&str] = &[
    "type",
    "source",
    "target",
    "read_only",
    "bind",
    "volume",
    "tmpfs",
];
const SERVICE_NETWORK_KEYS: &[&str] = &["aliases", "ipv4_address", "ipv6_address"];
const NETWORK_KEYS: &[&str] = &[
    "driver",
    "driver_opts",
    "external",
    "name",
    "labels",
    "internal",
    "enable_ipv6",
    "attachable",
    "ipam",
];
const VOLUME_KEYS: &[&str] = &["driver", "driver_opts", "external", "name", "labels"];

fn is_extension(key: &str) -> bool {
    key.starts_with("x-")
}

fn unsupported(scope: &str, key: &str) -> ComposeError {
    let hint = match key {
        "build" => "; building images is not supported: put the image into the app bundle",
        "expose" => "; publish the port with `ports` or reach it over the app's network",
        "secrets" | "configs" => "; mount a file from the app directory instead",
        "profiles" | "extends" | "include" => "; this compose feature is not supported",
        "name" => "; the project name is derived from the app id",
        "uts" | "userns_mode" | "cgroup" | "cgroup_parent" | "security_opt" => {
            "; apps cannot change the host's namespaces or the container's confinement"
        }
        _ => "",
    };
    ComposeError::UnsupportedKey {
        scope: scope.to_string(),
        key: key.to_string(),
        hint: hint.to_string(),
    }
}

fn invalid(scope: &str, message: impl Into<String>) -> ComposeError {
    ComposeError::Invalid {
        scope: scope.to_string(),
        message: message.into(),
    }
}

fn key_str<'a>(scope: &str, key: &'a Value) -> Result<&'a str, ComposeError> {
    key.as_str()
        .ok_or_else(|| invalid(scope, format!("keys must be strings, found {key:?}")))
}

/// Checks that every key of `map` is in `allowed` (or an `x-` extension); `prefix` is the
/// dotted path of the map inside its scope, for the error.
fn check_keys(
    scope: &str,
    prefix: &str,
    map: &Mapping,
    allowed: &[&str],
) -> Result<(), ComposeError> {
    for k in map.keys() {
        let k = key_str(scope, k)?;
        if !allowed.contains(&k) && !is_extension(k) {
            return Err(unsupported(scope, &format!("{prefix}{k}")));
        }
    }
    Ok(())
}

fn mapping<'a>(
    scope: &str,
    what: &str,
    value: &'a Value,
) -> Result<Option<&'a Mapping>, ComposeError> {
    match value {
        Value::Mapping(m) => Ok(Some(m)),
        Value::Null => Ok(None),
        _ => Err(invalid(scope, format!("\"{what}\" must be a mapping"))),
    }
}

/// Validates the raw document.
pub fn check(root: &Value) -> Result<(), ComposeError> {
    let top = match root {
        Value::Mapping(m) => m,
        _ => return Err(invalid("compose file", "the document must be a mapping")),
    };
    check_no_tags("compose file", root)?;
    check_keys("top level", "", top, TOP_LEVEL)?;
    if let Some(v) = top.get("version") {
        if !matches!(v, Value::String(_) | Value::Number(_)) {
            return Err(invalid("top level", "\"version\" must be a string"));
        }
    }
    let services = match top.get("services") {
        Some(v) => mapping("top level", "services", v)?,
        None => None,
    };
    let Some(services) = services.filter(|s| !s.is_empty()) else {
        return Err(invalid("compose file", "no services are defined"));
    };
    for (name, svc) in services {
        let name = key_str("services", name)?;
        let scope = format!("service \"{name}\"");
        let Some(svc) = mapping(&scope, "the service", svc)? else {
            return Err(invalid(
                &scope,
                "the service is empty (it needs at least an image)",
            ));
        };
        check_service(&scope, svc)?;
    }
    for (section, allowed, what) in [
        ("networks", NETWORK_KEYS, "network"),
        ("volumes", VOLUME_KEYS, "volume"),
    ] {
        let Some(v) = top.get(section) else { continue };
        let Some(entries) = mapping("top level", section, v)? else {
            continue;
        };
        for (name, def) in entries {
            let name = key_str(section, name)?;
            let scope = format!("{what} \"{name}\"");
            let Some(def) = mapping(&scope, what, def)? else {
                continue;
            };
            check_keys(&scope, "", def, allowed)?;
            if let Some(Value::Mapping(ext)) = def.get("external") {
                check_keys(&scope, "external.", ext, &["name"])?;
            }
            if section == "networks" {
                if let Some(ipam) = def.get("ipam") {
                    if let Some(ipam) = mapping(&scope, "ipam", ipam)? {
                        check_keys(&scope, "ipam.", ipam, &["driver", "config"])?;
                        if let Some(Value::Sequence(configs)) = ipam.get("config") {
                            for c in configs {
                                if let Some(c) = mapping(&scope, "ipam.config", c)? {
                                    check_keys(&scope, "ipam.config.", c, &["subnet", "gateway"])?;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_service(scope: &str, svc: &Mapping) -> Result<(), ComposeError> {
    check_keys(scope, "", svc, SERVICE_KEYS)?;
    if let Some(hc) = svc.get("healthcheck") {
        if let Some(hc) = mapping(scope, "healthcheck", hc)? {
            check_keys(scope, "healthcheck.", hc, HEALTHCHECK_KEYS)?;
        }
    }
    if let Some(deploy) = svc.get("deploy") {
        if let Some(deploy) = mapping(scope, "deploy", deploy)? {
            check_keys(scope, "deploy.", deploy, &["resources"])?;
            if let Some(res) = deploy.get("resources") {
                if let Some(res) = mapping(scope, "deploy.resources", res)? {
                    check_keys(scope, "deploy.resources.", res, &["limits"])?;
                    if let Some(limits) = res.get("limits") {
                        if let Some(limits) = mapping(scope, "deploy.resources.limits", limits)? {
                            check_keys(
                                scope,
                                "deploy.resources.limits.",
                                limits,
                                &["cpus", "memory"],
                            )?;
                        }
                    }
                }
            }
        }
    }
    if let Some(logging) = svc.get("logging") {
        if let Some(logging) = mapping(scope, "logging", logging)? {
            check_keys(scope, "logging.", logging, &["driver", "options"])?;
        }
    }
    if let Some(Value::Sequence(ports)) = svc.get("ports") {
        for p in ports {
            if let Value::Mapping(p) = p {
                check_keys(scope, "ports.", p, PORT_KEYS)?;
            }
        }
    }
    if let Some(Value::Sequence(vols)) = svc.get("volumes") {
        for v in vols {
            if let Value::Mapping(v) = v {
                check_keys(scope, "volumes.", v, VOLUME_MOUNT_KEYS)?;
                for (sub, allowed) in [
                    ("bind", &["propagation", "create_host_path"][..]),
                    ("volume", &["nocopy"][..]),
                    ("tmpfs", &["size"][..]),
                ] {
                    if let Some(Value::Mapping(m)) = v.get(sub) {
                        check_keys(scope, &format!("volumes.{sub}."), m, allowed)?;
                    }
                }
            }
        }
    }
    if let Some(Value::Mapping(nets)) = svc.get("networks") {
        for (_, n) in nets {
            if let Value::Mapping(n) = n {
                check_keys(scope, "networks.", n, SERVICE_NETWORK_KEYS)?;
            }
        }
    }
    if let Some(Value::Mapping(deps)) = svc.get("depends_on") {
        for (_, d) in deps {
            if let Value::Mapping(d) = d {
                check_keys(scope, "depends_on.", d, &["condition"])?;
            }
        }
    }
    if let Some(Value::Mapping(ulimits)) = svc.get("ulimits") {
        for (_, u) in ulimits {
            if let Value::Mapping(u) = u {
                check_keys(scope, "ulimits.", u, &["soft", "hard"])?;
            }
        }
    }
    Ok(())
}

/// YAML tags (`!reset`, `!override`, custom ones) carry meaning gantry does not implement.
fn check_no_tags(scope: &str, v: &Value) -> Result<(), ComposeError> {
    match v {
        Value::Tagged(t) => Err(invalid(
            scope,
            format!("YAML tag {} is not supported", t.tag),
        )),
        Value::Sequence(s) => s.iter().try_for_each(|v| check_no_tags(scope, v)),
        Value::Mapping(m) => m.iter().try_for_each(|(k, v)| {
            check_no_tags(scope, k)?;
            check_no_tags(scope, v)
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> Result<(), ComposeError> {
        let v: Value = serde_norway::from_str(yaml).unwrap();
        check(&v)
    }

    fn rejected(yaml: &str) -> (String, String) {
        match run(yaml) {
            Err(ComposeError::UnsupportedKey { scope, key, .. }) => (scope, key),
            other => panic!("expected an unsupported key, got {other:?}"),
        }
    }

    #[test]
    fn accepts_every_supported_key() {
        let yaml = r#"
version: "3.8"
x-common: &c {a: 1}
services:
  web:
    x-note: fine
    image: busybox
    command: ["sleep", "1"]
    entrypoint: sh
    environment: {A: 1}
    env_file: .env
    ports: ["80", {target: 81, published: 8081, host_ip: 127.0.0.1, protocol: tcp, mode: host}]
    volumes: ["data:/d", {type: bind, source: ./x, target: /x, read_only: true, bind: {propagation: rprivate}}]
    networks: {back: {aliases: [w], ipv4_address: 198.18.0.5}}
    restart: always
    labels: [a=b]
    healthcheck: {test: ["CMD", "true"], interval: 1s, timeout: 1s, retries: 2, start_period: 1s}
    user: "1000"
    working_dir: /
    hostname: h
    container_name: c
    extra_hosts: ["a:198.18.0.1"]
    tmpfs: /run
    ulimits: {nofile: {soft: 1, hard: 2}, nproc: 3}
    sysctls: {net.core.somaxconn: 1024}
    stop_grace_period: 1s
    stop_signal: SIGINT
    read_only: true
    shm_size: 64m
    init: true
    tty: true
    stdin_open: true
    mem_limit: 64m
    cpus: 0.5
    deploy: {resources: {limits: {cpus: "0.5", memory: 64m}}}
    logging: {driver: json-file, options: {max-size: 1m}}
    devices: ["/dev/null:/dev/x"]
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    privileged: false
    depends_on: {db: {condition: service_healthy}}
  db:
    image: busybox
networks:
  back: {driver: bridge, internal: true, ipam: {config: [{subnet: 198.18.5.0/24}]}, labels: {a: b}}
  ext: {external: true}
volumes:
  data: {driver: local, labels: [a=b]}
  old: {external: {name: x}}
"#;
        run(yaml).unwrap();
    }

    #[test]
    fn each_rejection_names_key_and_service() {
        let (scope, key) = rejected("services: {web: {image: a, build: .}}");
        assert_eq!((scope.as_str(), key.as_str()), ("service \"web\"", "build"));
        let (scope, key) = rejected("services: {api: {image: a, expose: [80]}}");
        assert_eq!(
            (scope.as_str(), key.as_str()),
            ("service \"api\"", "expose")
        );
        let (scope, key) = rejected("services: {web: {image: a, deploy: {replicas: 2}}}");
        assert_eq!(
            (scope.as_str(), key.as_str()),
            ("service \"web\"", "deploy.replicas")
        );
        let (_, key) = rejected(
            "services: {web: {image: a, deploy: {resources: {reservations: {memory: 1m}}}}}",
        );
        assert_eq!(key, "deploy.resources.reservations");
        let (_, key) = rejected("services: {web: {image: a, healthcheck: {start_interval: 1s}}}");
        assert_eq!(key, "healthcheck.start_interval");
        let (_, key) = rejected("services: {web: {image: a, ports: [{target: 1, foo: 2}]}}");
        assert_eq!(key, "ports.foo");
        let (_, key) = rejected(
            "services: {web: {image: a, volumes: [{type: volume, target: /x, volume: {subpath: a}}]}}",
        );
        assert_eq!(key, "volumes.volume.subpath");
        let (_, key) = rejected("services: {web: {image: a, networks: {n: {priority: 1}}}}");
        assert_eq!(key, "networks.priority");
        let (_, key) = rejected(
            "services: {web: {image: a, depends_on: {db: {condition: service_started, restart: true}}}}",
        );
        assert_eq!(key, "depends_on.restart");
        let (_, key) = rejected("services: {web: {image: a, security_opt: [x]}}");
        assert_eq!(key, "security_opt");
        let (scope, key) = rejected("services: {web: {image: a}}\nsecrets: {}");
        assert_eq!((scope.as_str(), key.as_str()), ("top level", "secrets"));
        let (scope, key) = rejected("services: {web: {image: a}}\nnetworks: {n: {driver_opt: {}}}");
        assert_eq!(
            (scope.as_str(), key.as_str()),
            ("network \"n\"", "driver_opt")
        );
        let (scope, key) =
            rejected("services: {web: {image: a}}\nvolumes: {v: {external: {nam: x}}}");
        assert_eq!(
            (scope.as_str(), key.as_str()),
            ("volume \"v\"", "external.nam")
        );
    }

    #[test]
    fn build_error_explains() {
        let e = run("services: {web: {build: .}}").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("service \"web\""), "{msg}");
        assert!(msg.contains("\"build\""), "{msg}");
        assert!(msg.contains("bundle"), "{msg}");
    }

    #[test]
    fn structure_errors() {
        assert!(matches!(run("- a"), Err(ComposeError::Invalid { .. })));
        assert!(matches!(
            run("version: '3'"),
            Err(ComposeError::Invalid { .. })
        ));
        assert!(matches!(
            run("services: {web: }"),
            Err(ComposeError::Invalid { .. })
        ));
        assert!(matches!(
            run("services: {web: {image: !reset a}}"),
            Err(ComposeError::Invalid { .. })
        ));
    }
}
