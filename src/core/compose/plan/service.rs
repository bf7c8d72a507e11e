//! One service's plan: its create body assembled from the parts (labels, environment, ports,
//! mounts, networks, resources, the policy-gated keys) and its dependencies.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use docker_compose_types::{
    Command, DependsOnOptions, Entrypoint, Environment, Service, StringOrList,
};
use indexmap::IndexMap;

use super::labels::service_labels;
use super::mounts::{resolve_host_path, service_mounts, tmpfs};
use super::networks::service_networks;
use super::resources::{bytes, resources};
use super::{
    invalid, policy, refused, Condition, Dependency, NetworkPlan, PlanContext, ServicePlan,
    VolumePlan, DEFAULT_STOP_TIMEOUT,
};
use crate::core::compose::interpolate::parse_env_file;
use crate::core::compose::parse::{ComposeModel, ParsedService, PortSpec};
use crate::core::compose::ComposeError;
use crate::core::safe_fs;

/// The parts are planned in a fixed order, so that of several mistakes in a service the
/// same one is reported first every time; the policy comes first of all.
pub(super) fn plan_service(
    name: &str,
    parsed: &ParsedService,
    model: &ComposeModel,
    networks: &[NetworkPlan],
    volumes: &[VolumePlan],
    ctx: &PlanContext<'_>,
) -> Result<ServicePlan, ComposeError> {
    let scope = &format!("service \"{name}\"");
    let s = &parsed.spec;
    let image = s.image.clone().filter(|i| !i.trim().is_empty());
    let image = image.ok_or_else(|| invalid(scope, "no image is given"))?;
    let container_name = container_name(scope, name, s, ctx)?;
    policy::check(scope, parsed, ctx.policy)?;
    let env = environment(scope, s, ctx)?;
    let mounts = service_mounts(scope, &s.volumes, volumes, ctx)?;
    let net = service_networks(scope, name, s, model, networks, ctx)?;
    let mut res = resources(scope, parsed)?;
    let devices = policy::devices(scope, s)?;
    let depends_on = depends_on(scope, name, &s.depends_on)?;
    let shm_size = bytes(scope, "shm_size", &s.shm_size)?;
    let (exposed, port_bindings) = ports(&parsed.extras.ports);
    let (healthcheck, stop_timeout) = (res.healthcheck.take(), res.stop_timeout);
    let host_config = HostConfig {
        binds: non_empty(mounts.binds),
        mounts: non_empty(mounts.mounts),
        // compose 1.29 always sends PortBindings, empty when nothing is published.
        port_bindings: Some(port_bindings),
        network_mode: net.network_mode,
        pid_mode: s.pid.clone(),
        ipc_mode: s.ipc.clone(),
        privileged: s.privileged.then_some(true),
        readonly_rootfs: s.read_only.then_some(true),
        init: s.init.then_some(true),
        shm_size,
        cap_add: non_empty(s.cap_add.clone()),
        cap_drop: non_empty(s.cap_drop.clone()),
        devices: non_empty(devices),
        extra_hosts: non_empty(s.extra_hosts.clone()),
        tmpfs: Some(tmpfs(s.tmpfs.as_ref())).filter(|t| !t.is_empty()),
        ..res.into_host_config()
    };
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        env: non_empty(env),
        labels: Some(service_labels(name, &s.labels, ctx)),
        exposed_ports: non_empty(exposed),
        volumes: non_empty(mounts.config_volumes),
        healthcheck,
        stop_timeout: stop_timeout.map(i64::from),
        host_config: Some(host_config),
        networking_config: net.networking_config,
        ..container_config(scope, s)?
    };
    Ok(ServicePlan {
        name: name.to_string(),
        container_name,
        image,
        body,
        extra_networks: net.extra,
        depends_on,
        network_of: net.network_of,
        stop_timeout: stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
    })
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// Compose's name for a service's (first) container: `<project>_<service>_1`.
pub(super) fn default_container_name(project: &str, service: &str) -> String {
    format!("{project}_{service}_1")
}

/// `container_name`, or compose's `<project>_<service>_1`.
fn container_name(
    scope: &str,
    service: &str,
    s: &Service,
    ctx: &PlanContext<'_>,
) -> Result<String, ComposeError> {
    let Some(n) = &s.container_name else {
        return Ok(default_container_name(ctx.project, service));
    };
    let ok = n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !ok {
        return Err(invalid(scope, format!("invalid container_name \"{n}\"")));
    }
    Ok(n.clone())
}

/// The create body's plain settings: command, entrypoint, user, terminal, ...
fn container_config(scope: &str, s: &Service) -> Result<ContainerCreateBody, ComposeError> {
    Ok(ContainerCreateBody {
        cmd: match &s.command {
            None => None,
            Some(Command::Simple(c)) => Some(split_command(scope, "command", c)?),
            Some(Command::Args(a)) => Some(a.clone()),
        },
        entrypoint: match &s.entrypoint {
            None => None,
            Some(Entrypoint::Simple(c)) => Some(split_command(scope, "entrypoint", c)?),
            Some(Entrypoint::List(a)) => Some(a.clone()),
        },
        user: s.user.clone(),
        working_dir: s.working_dir.clone(),
        hostname: s.hostname.clone(),
        stop_signal: s.stop_signal.clone(),
        tty: s.tty.then_some(true),
        open_stdin: s.stdin_open.then_some(true),
        ..Default::default()
    })
}

/// Exposed ports (`80/tcp`, in order of appearance) and their host bindings.
fn ports(specs: &[PortSpec]) -> (Vec<String>, HashMap<String, Option<Vec<PortBinding>>>) {
    let mut exposed: Vec<String> = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in specs {
        let key = format!("{}/{}", p.target, p.protocol);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        let b = PortBinding {
            host_ip: Some(p.host_ip.clone().unwrap_or_default()),
            host_port: Some(p.published.clone().unwrap_or_default()),
        };
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(b);
    }
    (exposed, bindings)
}

fn depends_on(
    scope: &str,
    service: &str,
    d: &DependsOnOptions,
) -> Result<Vec<Dependency>, ComposeError> {
    let depends_on: Vec<Dependency> = match d {
        DependsOnOptions::Simple(v) => v
            .iter()
            .map(|d| Dependency {
                service: d.clone(),
                condition: Condition::Started,
            })
            .collect(),
        DependsOnOptions::Conditional(m) => m
            .iter()
            .map(|(d, c)| {
                let condition = Condition::parse(&c.condition).ok_or_else(|| {
                    invalid(
                        scope,
                        format!("depends_on \"{d}\": unknown condition \"{}\"", c.condition),
                    )
                })?;
                Ok(Dependency {
                    service: d.clone(),
                    condition,
                })
            })
            .collect::<Result<_, _>>()?,
    };
    if depends_on.iter().any(|d| d.service == service) {
        return Err(invalid(scope, "a service cannot depend on itself"));
    }
    Ok(depends_on)
}

/// env_file values first, then `environment`; valueless entries take the project variables,
/// or stay valueless (`KEY`, which Docker treats as unset).
fn environment(
    scope: &str,
    s: &Service,
    ctx: &PlanContext<'_>,
) -> Result<Vec<String>, ComposeError> {
    let mut env: IndexMap<String, Option<String>> = IndexMap::new();
    let files: Vec<String> = match &s.env_file {
        None => Vec::new(),
        Some(StringOrList::Simple(f)) => vec![f.clone()],
        Some(StringOrList::List(v)) => v.clone(),
    };
    for f in files {
        let Some(text) = env_file(scope, &f, ctx)? else {
            continue;
        };
        let pairs = parse_env_file(&text, ctx.vars, true)
            .map_err(|e| invalid(scope, format!("env file \"{f}\": {e}")))?;
        for (k, v) in pairs {
            env.insert(k, Some(v));
        }
    }
    match &s.environment {
        Environment::List(items) => {
            for i in items {
                match i.split_once('=') {
                    Some((k, v)) => env.insert(k.to_string(), Some(v.to_string())),
                    None => env.insert(i.to_string(), None),
                };
            }
        }
        Environment::KvPair(m) => {
            for (k, v) in m {
                env.insert(k.clone(), v.as_ref().map(|v| v.to_string()));
            }
        }
    }
    Ok(env
        .into_iter()
        .map(|(k, v)| match v.or_else(|| ctx.vars.get(&k).cloned()) {
            Some(v) => format!("{k}={v}"),
            None => k,
        })
        .collect())
}

/// An env file's text, read without following a symlink (a container may have planted one
/// in a directory it has bind-mounted) and at most [`MAX_ENV_FILE_BYTES`]. None while an
/// import plans the app (its directory is not there yet; the start reads the file).
fn env_file(scope: &str, f: &str, ctx: &PlanContext<'_>) -> Result<Option<String>, ComposeError> {
    let path = resolve_host_path(scope, "env file", &relative(f), ctx)?;
    if ctx.policy.skip_host_files || !ctx.dir.exists() {
        return Ok(None);
    }
    safe_fs::read_text(&path.base, &path.rel, MAX_ENV_FILE_BYTES)
        .map(Some)
        .map_err(|e| match e {
            e @ safe_fs::SafeFsError::Symlink(_) => {
                refused(scope, format!("env file \"{f}\": {e}"))
            }
            e => invalid(scope, format!("cannot read env file \"{f}\": {e}")),
        })
}

/// The largest env file read.
const MAX_ENV_FILE_BYTES: u64 = 1 << 20;

/// env_file entries are relative to the project directory even without `./`.
fn relative(p: &str) -> String {
    if p.starts_with('/') || p.starts_with('.') || p.starts_with('~') {
        p.to_string()
    } else {
        format!("./{p}")
    }
}

fn split_command(scope: &str, key: &str, s: &str) -> Result<Vec<String>, ComposeError> {
    shlex_split(s).ok_or_else(|| invalid(scope, format!("{key}: unbalanced quotes in \"{s}\"")))
}

/// POSIX shell-like splitting, as Python's `shlex.split` (what docker-py applies to string
/// commands): whitespace separates words, single quotes are literal, double quotes allow
/// `\"` and `\\`, a backslash outside quotes escapes the next character.
pub fn shlex_split(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return None,
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some('"') | Some('\\') => word.push(chars.next().unwrap_or('\\')),
                            _ => word.push('\\'),
                        },
                        Some(c) => word.push(c),
                        None => return None,
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return None,
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}
