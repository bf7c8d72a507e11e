//! From the typed model to what Docker is asked to create: networks, volumes and container
//! create bodies with the standard compose labels, in the shapes docker-compose 1.29.2 sends
//! (short-syntax volumes as `Binds`, long syntax as `Mounts`, the primary network at create
//! and the others connected before start).

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, DeviceMapping, EndpointIpamConfig, EndpointSettings, HealthConfig,
    HostConfig, HostConfigLogConfig, Ipam, IpamConfig, Mount, MountBindOptions,
    MountBindOptionsPropagationEnum, MountTmpfsOptions, MountType, MountVolumeOptions,
    NetworkCreateRequest, NetworkingConfig, PortBinding, ResourcesUlimits, RestartPolicy,
    RestartPolicyNameEnum, VolumeCreateRequest,
};
use docker_compose_types::{
    Command, DependsOnOptions, Entrypoint, Environment, ExternalVolume, HealthcheckTest, Labels,
    Networks, SingleValue, SysCtls, Tmpfs, Ulimit, Volumes,
};
use indexmap::IndexMap;

use super::interpolate::parse_env_file;
use super::parse::{ComposeModel, ParsedService};
use super::{ComposeError, ComposePolicy};

pub const LABEL_PROJECT: &str = "com.docker.compose.project";
pub const LABEL_SERVICE: &str = "com.docker.compose.service";
pub const LABEL_ONEOFF: &str = "com.docker.compose.oneoff";
pub const LABEL_CONTAINER_NUMBER: &str = "com.docker.compose.container-number";
pub const LABEL_CONFIG_HASH: &str = "com.docker.compose.config-hash";
pub const LABEL_VERSION: &str = "com.docker.compose.version";
pub const LABEL_WORKING_DIR: &str = "com.docker.compose.project.working_dir";
pub const LABEL_CONFIG_FILES: &str = "com.docker.compose.project.config_files";
pub const LABEL_NETWORK: &str = "com.docker.compose.network";
pub const LABEL_VOLUME: &str = "com.docker.compose.volume";
pub const LABEL_APP_ID: &str = "io.gantry.app-id";
/// The version label says whose semantics the objects follow: docker-compose 1.29.2's, and
/// 1.29.2 itself parses it (objects with a version below 1.21 get its legacy name handling).
pub const COMPOSE_VERSION: &str = "1.29.2";
/// docker-compose's default stop timeout.
pub const DEFAULT_STOP_TIMEOUT: u32 = 10;

/// What the planner needs besides the model.
pub struct PlanContext<'a> {
    pub project: &'a str,
    pub app_id: &'a str,
    /// Absolute app directory: relative paths resolve against it.
    pub dir: &'a Path,
    /// Absolute path of the compose file (for the config_files label).
    pub compose_file: &'a Path,
    /// Variables for valueless `environment` entries and env files.
    pub vars: &'a HashMap<String, String>,
    pub policy: &'a ComposePolicy,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub project: String,
    pub networks: Vec<NetworkPlan>,
    pub volumes: Vec<VolumePlan>,
    /// In file order.
    pub services: Vec<ServicePlan>,
}

#[derive(Debug, Clone)]
pub struct NetworkPlan {
    pub key: String,
    pub name: String,
    /// Must exist already; never created or removed.
    pub external: bool,
    pub request: NetworkCreateRequest,
}

#[derive(Debug, Clone)]
pub struct VolumePlan {
    pub key: String,
    pub name: String,
    pub external: bool,
    pub request: VolumeCreateRequest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

impl Condition {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "service_started" => Some(Self::Started),
            "service_healthy" => Some(Self::Healthy),
            "service_completed_successfully" => Some(Self::CompletedSuccessfully),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub service: String,
    pub condition: Condition,
}

#[derive(Debug, Clone)]
pub struct ServicePlan {
    pub name: String,
    pub container_name: String,
    pub image: String,
    /// The create body without the config-hash label. With `network_of`, its network mode
    /// is filled in when the other service's container exists.
    pub body: ContainerCreateBody,
    /// Networks after the primary one, connected before the container starts.
    pub extra_networks: Vec<(String, EndpointSettings)>,
    pub depends_on: Vec<Dependency>,
    /// `network_mode: service:<name>`.
    pub network_of: Option<String>,
    pub stop_timeout: u32,
}

impl Plan {
    pub fn service(&self, name: &str) -> Option<&ServicePlan> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Services grouped into levels: each level depends only on earlier ones.
    pub fn levels(&self) -> Vec<Vec<String>> {
        let mut done: HashSet<&str> = HashSet::new();
        let mut levels = Vec::new();
        while done.len() < self.services.len() {
            let level: Vec<String> = self
                .services
                .iter()
                .filter(|s| !done.contains(s.name.as_str()))
                .filter(|s| s.all_deps().all(|d| done.contains(d)))
                .map(|s| s.name.clone())
                .collect();
            if level.is_empty() {
                break; // cycles are refused at planning
            }
            for n in &level {
                if let Some(s) = self.service(n) {
                    done.insert(s.name.as_str());
                }
            }
            levels.push(level);
        }
        levels
    }
}

impl ServicePlan {
    /// Every service this one must wait for.
    pub fn all_deps(&self) -> impl Iterator<Item = &str> {
        self.depends_on
            .iter()
            .map(|d| d.service.as_str())
            .chain(self.network_of.as_deref())
    }
}

fn invalid(scope: &str, message: impl Into<String>) -> ComposeError {
    ComposeError::Invalid {
        scope: scope.to_string(),
        message: message.into(),
    }
}

fn policy(scope: &str, message: impl Into<String>) -> ComposeError {
    ComposeError::Policy {
        scope: scope.to_string(),
        message: message.into(),
    }
}

pub fn plan(model: &ComposeModel, ctx: &PlanContext<'_>) -> Result<Plan, ComposeError> {
    let networks = plan_networks(model, ctx)?;
    let volumes = plan_volumes(model, ctx);
    let mut services = Vec::new();
    for (name, svc) in &model.services {
        services.push(plan_service(name, svc, model, &networks, &volumes, ctx)?);
    }
    let plan = Plan {
        project: ctx.project.to_string(),
        networks,
        volumes,
        services,
    };
    check_dependencies(&plan)?;
    Ok(plan)
}

fn check_dependencies(plan: &Plan) -> Result<(), ComposeError> {
    for s in &plan.services {
        for d in s.all_deps() {
            if plan.service(d).is_none() {
                return Err(invalid(
                    &format!("service \"{}\"", s.name),
                    format!("depends on undefined service \"{d}\""),
                ));
            }
        }
    }
    let placed: usize = plan.levels().iter().map(Vec::len).sum();
    if placed < plan.services.len() {
        let levels = plan.levels();
        let placed: HashSet<&String> = levels.iter().flatten().collect();
        let mut cycle: Vec<&str> = plan
            .services
            .iter()
            .filter(|s| !placed.contains(&s.name))
            .map(|s| s.name.as_str())
            .collect();
        cycle.sort_unstable();
        return Err(invalid(
            "compose file",
            format!("circular dependency between services {}", cycle.join(", ")),
        ));
    }
    Ok(())
}

fn compose_labels(ctx: &PlanContext<'_>) -> Vec<(String, String)> {
    vec![
        (LABEL_PROJECT.into(), ctx.project.into()),
        (LABEL_VERSION.into(), COMPOSE_VERSION.into()),
        (LABEL_APP_ID.into(), ctx.app_id.into()),
    ]
}

fn labels_map(labels: &Labels) -> IndexMap<String, String> {
    match labels {
        Labels::List(items) => items
            .iter()
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect(),
        Labels::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

fn opts_map(opts: &IndexMap<String, Option<SingleValue>>) -> Option<HashMap<String, String>> {
    (!opts.is_empty()).then(|| {
        opts.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                )
            })
            .collect()
    })
}

/// Networks the services use (compose creates only those), `default` included when some
/// service has neither `networks` nor `network_mode`.
fn plan_networks(
    model: &ComposeModel,
    ctx: &PlanContext<'_>,
) -> Result<Vec<NetworkPlan>, ComposeError> {
    let mut used: Vec<String> = Vec::new();
    for (name, svc) in &model.services {
        if svc.spec.network_mode.is_some() {
            continue;
        }
        let keys: Vec<String> = match &svc.spec.networks {
            Networks::Simple(v) if v.is_empty() => vec!["default".into()],
            Networks::Simple(v) => v.clone(),
            Networks::Advanced(a) => a.0.keys().cloned().collect(),
        };
        for k in keys {
            if k != "default" && !model.networks.contains_key(&k) {
                return Err(invalid(
                    &format!("service \"{name}\""),
                    format!("uses an undefined network \"{k}\""),
                ));
            }
            if !used.contains(&k) {
                used.push(k);
            }
        }
    }
    let mut out = Vec::new();
    // File order, with an undeclared default last.
    let mut keys: Vec<String> = model
        .networks
        .keys()
        .filter(|k| used.contains(k))
        .cloned()
        .collect();
    if used.iter().any(|k| k == "default") && !keys.iter().any(|k| k == "default") {
        keys.push("default".into());
    }
    for key in keys {
        let def = model
            .networks
            .get(&key)
            .cloned()
            .flatten()
            .unwrap_or_default();
        let scope = format!("network \"{key}\"");
        let (external, external_name) = match &def.external {
            Some(docker_compose_types::ComposeNetwork::Bool(b)) => (*b, None),
            Some(docker_compose_types::ComposeNetwork::Detailed(d)) => (true, Some(d.name.clone())),
            None => (false, None),
        };
        let name = match (external_name, &def.name) {
            (Some(n), _) => n,
            (None, Some(n)) => n.clone(),
            (None, None) if external => key.clone(),
            (None, None) => format!("{}_{key}", ctx.project),
        };
        if name.is_empty() {
            return Err(invalid(&scope, "the network name is empty"));
        }
        let mut labels: HashMap<String, String> = labels_map(&def.labels).into_iter().collect();
        labels.extend(compose_labels(ctx));
        labels.insert(LABEL_NETWORK.into(), key.clone());
        let ipam = def.ipam.as_ref().map(|i| Ipam {
            driver: i.driver.clone(),
            config: Some(
                i.config
                    .iter()
                    .map(|c| IpamConfig {
                        subnet: Some(c.subnet.clone()),
                        gateway: c.gateway.clone(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            options: None,
        });
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: def.driver.clone(),
            internal: def.internal.then_some(true),
            attachable: Some(true),
            ipam,
            enable_ipv6: def.enable_ipv6.then_some(true),
            options: opts_map(&def.driver_opts),
            labels: Some(labels),
            ..Default::default()
        };
        out.push(NetworkPlan {
            key,
            name,
            external,
            request,
        });
    }
    Ok(out)
}

/// Every declared volume (compose creates them all, used or not).
fn plan_volumes(model: &ComposeModel, ctx: &PlanContext<'_>) -> Vec<VolumePlan> {
    model
        .volumes
        .iter()
        .map(|(key, def)| {
            let (external, external_name, driver, driver_opts, labels, name) = match def {
                Some(d) => {
                    let (ext, ext_name) = match &d.external {
                        Some(ExternalVolume::Bool(b)) => (*b, None),
                        Some(ExternalVolume::Name { name }) => (true, Some(name.clone())),
                        None => (false, None),
                    };
                    (
                        ext,
                        ext_name,
                        d.driver.clone(),
                        opts_map(&d.driver_opts),
                        labels_map(&d.labels),
                        d.name.clone(),
                    )
                }
                None => (false, None, None, None, IndexMap::new(), None),
            };
            let name = match (external_name, name) {
                (Some(n), _) => n,
                (None, Some(n)) => n,
                (None, None) if external => key.clone(),
                (None, None) => format!("{}_{key}", ctx.project),
            };
            let mut all: HashMap<String, String> = labels.into_iter().collect();
            all.extend(compose_labels(ctx));
            all.insert(LABEL_VOLUME.into(), key.clone());
            VolumePlan {
                key: key.clone(),
                name: name.clone(),
                external,
                request: VolumeCreateRequest {
                    name: Some(name),
                    driver,
                    driver_opts,
                    labels: Some(all),
                    ..Default::default()
                },
            }
        })
        .collect()
}

fn plan_service(
    name: &str,
    parsed: &ParsedService,
    model: &ComposeModel,
    networks: &[NetworkPlan],
    volumes: &[VolumePlan],
    ctx: &PlanContext<'_>,
) -> Result<ServicePlan, ComposeError> {
    let scope = format!("service \"{name}\"");
    let scope = scope.as_str();
    let s = &parsed.spec;
    let image = s
        .image
        .clone()
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| invalid(scope, "no image is given"))?;
    let container_name = match &s.container_name {
        Some(n) => {
            let ok = !n.is_empty()
                && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err(invalid(scope, format!("invalid container_name \"{n}\"")));
            }
            n.clone()
        }
        None => format!("{}_{name}_1", ctx.project),
    };

    // Policy first: a refused app should hear about it before anything else.
    if s.privileged && !ctx.policy.allow_privileged {
        return Err(policy(
            scope,
            "\"privileged\" is not allowed by this gateway's policy",
        ));
    }
    if !s.devices.is_empty() && !ctx.policy.allow_devices {
        return Err(policy(
            scope,
            "\"devices\" are not allowed by this gateway's policy",
        ));
    }
    if !s.cap_add.is_empty() && !ctx.policy.allow_capabilities {
        return Err(policy(
            scope,
            "\"cap_add\" is not allowed by this gateway's policy",
        ));
    }

    let mut labels: HashMap<String, String> = labels_map(&s.labels).into_iter().collect();
    labels.extend(compose_labels(ctx));
    labels.insert(LABEL_SERVICE.into(), name.into());
    labels.insert(LABEL_ONEOFF.into(), "False".into());
    labels.insert(LABEL_CONTAINER_NUMBER.into(), "1".into());
    labels.insert(
        LABEL_WORKING_DIR.into(),
        ctx.dir.to_string_lossy().into_owned(),
    );
    labels.insert(
        LABEL_CONFIG_FILES.into(),
        ctx.compose_file.to_string_lossy().into_owned(),
    );

    let env = environment(scope, s, ctx)?;

    // Ports.
    let mut exposed: Vec<String> = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &parsed.extras.ports {
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

    // Volumes and mounts.
    let mut binds: Vec<String> = Vec::new();
    let mut config_volumes: Vec<String> = Vec::new();
    let mut mounts: Vec<Mount> = Vec::new();
    let volume_name = |key: &str, spec: &str| -> Result<String, ComposeError> {
        volumes
            .iter()
            .find(|v| v.key == key)
            .map(|v| v.name.clone())
            .ok_or_else(|| {
                invalid(
                    scope,
                    format!(
                        "named volume \"{spec}\" is used but no declaration was found in the volumes section"
                    ),
                )
            })
    };
    for v in &s.volumes {
        match v {
            Volumes::Simple(spec) => {
                let parts: Vec<&str> = spec.split(':').collect();
                let (source, target, mode) = match parts.as_slice() {
                    [t] => (None, *t, None),
                    [s, t] => (Some(*s), *t, None),
                    [s, t, m] => (Some(*s), *t, Some(*m)),
                    _ => return Err(invalid(scope, format!("invalid volume \"{spec}\""))),
                };
                if !target.starts_with('/') {
                    return Err(invalid(
                        scope,
                        format!("volume \"{spec}\": the container path must be absolute"),
                    ));
                }
                if !config_volumes.iter().any(|c| c == target) {
                    config_volumes.push(target.to_string());
                }
                let Some(source) = source else { continue };
                let mode = mode.unwrap_or("rw");
                let host = if is_path(source) {
                    resolve_bind(scope, source, ctx)?
                        .to_string_lossy()
                        .into_owned()
                } else {
                    volume_name(source, spec)?
                };
                let bind = format!("{host}:{target}:{mode}");
                if !binds.contains(&bind) {
                    binds.push(bind);
                }
            }
            Volumes::Advanced(a) => {
                if !a.target.starts_with('/') {
                    return Err(invalid(
                        scope,
                        format!("volume target \"{}\" must be absolute", a.target),
                    ));
                }
                let mut m = Mount {
                    target: Some(a.target.clone()),
                    read_only: a.read_only.then_some(true),
                    ..Default::default()
                };
                match a._type.as_str() {
                    "volume" => {
                        m.typ = Some(MountType::VOLUME);
                        if let Some(src) = a.source.as_deref().filter(|s| !s.is_empty()) {
                            m.source = Some(volume_name(src, src)?);
                        }
                        if let Some(nocopy) = a.volume.as_ref().and_then(|v| v.nocopy) {
                            m.volume_options = Some(MountVolumeOptions {
                                no_copy: Some(nocopy),
                                ..Default::default()
                            });
                        }
                    }
                    "bind" => {
                        m.typ = Some(MountType::BIND);
                        let src = a
                            .source
                            .as_deref()
                            .filter(|s| !s.is_empty())
                            .ok_or_else(|| invalid(scope, "a bind mount needs a source"))?;
                        m.source = Some(
                            resolve_bind(scope, src, ctx)?
                                .to_string_lossy()
                                .into_owned(),
                        );
                        if let Some(p) = a.bind.as_ref().and_then(|b| b.propagation.as_deref()) {
                            m.bind_options = Some(MountBindOptions {
                                propagation: Some(propagation(scope, p)?),
                                ..Default::default()
                            });
                        }
                    }
                    "tmpfs" => {
                        m.typ = Some(MountType::TMPFS);
                        if let Some(t) = &a.tmpfs {
                            m.tmpfs_options = Some(MountTmpfsOptions {
                                size_bytes: i64::try_from(t.size).ok(),
                                ..Default::default()
                            });
                        }
                    }
                    other => {
                        return Err(invalid(
                            scope,
                            format!("unsupported volume type \"{other}\""),
                        ))
                    }
                }
                mounts.push(m);
            }
        }
    }

    // Networks.
    let mut network_mode: Option<String> = None;
    let mut network_of: Option<String> = None;
    let mut networking_config: Option<NetworkingConfig> = None;
    let mut extra_networks: Vec<(String, EndpointSettings)> = Vec::new();
    if let Some(mode) = &s.network_mode {
        if !s.networks.is_empty() {
            return Err(invalid(
                scope,
                "\"network_mode\" and \"networks\" cannot be combined",
            ));
        }
        if let Some(other) = mode.strip_prefix("service:") {
            if !model.services.contains_key(other) {
                return Err(invalid(
                    scope,
                    format!("network_mode uses undefined service \"{other}\""),
                ));
            }
            network_of = Some(other.to_string());
        } else if matches!(mode.as_str(), "host" | "none" | "bridge") {
            network_mode = Some(mode.clone());
        } else {
            return Err(invalid(
                scope,
                format!("unsupported network_mode \"{mode}\" (use host, none, bridge or service:<name>)"),
            ));
        }
    } else {
        let wanted: Vec<(
            String,
            Option<docker_compose_types::AdvancedNetworkSettings>,
        )> = match &s.networks {
            Networks::Simple(v) if v.is_empty() => vec![("default".into(), None)],
            Networks::Simple(v) => v.iter().map(|k| (k.clone(), None)).collect(),
            Networks::Advanced(a) => {
                a.0.iter()
                    .map(|(k, v)| (k.clone(), Option::from(v.clone())))
                    .collect()
            }
        };
        let mut endpoints: Vec<(String, EndpointSettings)> = Vec::new();
        for (key, settings) in wanted {
            let net = networks
                .iter()
                .find(|n| n.key == key)
                .ok_or_else(|| invalid(scope, format!("uses an undefined network \"{key}\"")))?;
            let settings = settings.unwrap_or_default();
            let mut aliases = vec![name.to_string()];
            for a in settings.aliases {
                if !aliases.contains(&a) {
                    aliases.push(a);
                }
            }
            let ipam =
                (settings.ipv4_address.is_some() || settings.ipv6_address.is_some()).then(|| {
                    EndpointIpamConfig {
                        ipv4_address: settings.ipv4_address.clone(),
                        ipv6_address: settings.ipv6_address.clone(),
                        ..Default::default()
                    }
                });
            endpoints.push((
                net.name.clone(),
                EndpointSettings {
                    aliases: Some(aliases),
                    ipam_config: ipam,
                    ..Default::default()
                },
            ));
        }
        // compose 1.29 picks the primary network by name order.
        endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        let mut it = endpoints.into_iter();
        if let Some((primary, ep)) = it.next() {
            network_mode = Some(primary.clone());
            networking_config = Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(primary, ep)])),
            });
        }
        extra_networks = it.collect();
    }

    let restart_policy = match s.restart.as_deref() {
        None => None,
        Some(r) => Some(restart(scope, r)?),
    };

    let healthcheck = match &s.healthcheck {
        None => None,
        Some(h) => {
            let dur = |key: &str, v: &Option<String>| -> Result<Option<i64>, ComposeError> {
                match v {
                    None => Ok(None),
                    Some(v) => parse_duration(v)
                        .map(|d| Some(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)))
                        .ok_or_else(|| {
                            invalid(
                                scope,
                                format!("healthcheck.{key}: invalid duration \"{v}\""),
                            )
                        }),
                }
            };
            let test = if h.disable {
                Some(vec!["NONE".to_string()])
            } else {
                match &h.test {
                    None => None,
                    Some(HealthcheckTest::Single(cmd)) => {
                        Some(vec!["CMD-SHELL".to_string(), cmd.clone()])
                    }
                    Some(HealthcheckTest::Multiple(v)) => {
                        if !v
                            .first()
                            .is_some_and(|f| matches!(f.as_str(), "NONE" | "CMD" | "CMD-SHELL"))
                        {
                            return Err(invalid(
                                scope,
                                "healthcheck.test must start with NONE, CMD or CMD-SHELL",
                            ));
                        }
                        Some(v.clone())
                    }
                }
            };
            Some(HealthConfig {
                test,
                interval: dur("interval", &h.interval)?,
                timeout: dur("timeout", &h.timeout)?,
                retries: (h.retries != 0).then_some(h.retries),
                start_period: dur("start_period", &h.start_period)?,
                ..Default::default()
            })
        }
    };

    let stop_timeout = match &s.stop_grace_period {
        None => None,
        Some(v) => Some(
            parse_duration(v)
                .map(|d| {
                    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                    u32::try_from(secs).unwrap_or(u32::MAX)
                })
                .ok_or_else(|| {
                    invalid(
                        scope,
                        format!("stop_grace_period: invalid duration \"{v}\""),
                    )
                })?,
        ),
    };

    let bytes = |key: &str, v: &Option<String>| -> Result<Option<i64>, ComposeError> {
        match v {
            None => Ok(None),
            Some(v) => parse_bytes(v)
                .map(Some)
                .ok_or_else(|| invalid(scope, format!("{key}: invalid size \"{v}\""))),
        }
    };
    let mut memory = bytes("mem_limit", &s.mem_limit)?;
    let mut nano_cpus = parsed.extras.cpus.map(|c| (c * 1e9) as i64);
    if let Some(limits) = s
        .deploy
        .as_ref()
        .and_then(|d| d.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
    {
        if let Some(m) = bytes("deploy.resources.limits.memory", &limits.memory)? {
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
    }

    let ulimits: Vec<ResourcesUlimits> = s
        .ulimits
        .0
        .iter()
        .map(|(n, u)| {
            let num = |v: &docker_compose_types::StringOrUnsigned| -> Result<i64, ComposeError> {
                match v {
                    docker_compose_types::StringOrUnsigned::Unsigned(n) => Ok(*n),
                    docker_compose_types::StringOrUnsigned::String(s) => {
                        s.trim().parse().map_err(|_| {
                            invalid(scope, format!("ulimits.{n}: \"{s}\" is not a number"))
                        })
                    }
                }
            };
            let (soft, hard) = match u {
                Ulimit::Single(v) => (num(v)?, num(v)?),
                Ulimit::SoftHard { soft, hard } => (num(soft)?, num(hard)?),
            };
            Ok(ResourcesUlimits {
                name: Some(n.clone()),
                soft: Some(soft),
                hard: Some(hard),
            })
        })
        .collect::<Result<_, ComposeError>>()?;

    let sysctls: HashMap<String, String> = match &s.sysctls {
        SysCtls::List(items) => items
            .iter()
            .map(|i| match i.split_once('=') {
                Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                None => Err(invalid(scope, format!("sysctls: \"{i}\" is not key=value"))),
            })
            .collect::<Result<_, _>>()?,
        SysCtls::Map(m) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                )
            })
            .collect(),
    };

    let tmpfs: HashMap<String, String> = match &s.tmpfs {
        None => HashMap::new(),
        Some(t) => {
            let items: Vec<String> = match t {
                Tmpfs::Simple(s) => vec![s.clone()],
                Tmpfs::List(v) => v.clone(),
            };
            items
                .iter()
                .map(|i| match i.split_once(':') {
                    Some((p, o)) => (p.to_string(), o.to_string()),
                    None => (i.to_string(), String::new()),
                })
                .collect()
        }
    };

    let devices: Vec<DeviceMapping> = s
        .devices
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
        .collect::<Result<_, ComposeError>>()?;

    let log_config = s.logging.as_ref().map(|l| HostConfigLogConfig {
        typ: l.driver.clone(),
        config: l
            .options
            .as_ref()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()),
    });

    let depends_on: Vec<Dependency> = match &s.depends_on {
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
                Condition::parse(&c.condition)
                    .map(|condition| Dependency {
                        service: d.clone(),
                        condition,
                    })
                    .ok_or_else(|| {
                        invalid(
                            scope,
                            format!("depends_on \"{d}\": unknown condition \"{}\"", c.condition),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    if depends_on.iter().any(|d: &Dependency| d.service == name) {
        return Err(invalid(scope, "a service cannot depend on itself"));
    }

    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let host_config = HostConfig {
        binds: non_empty(&binds),
        mounts: (!mounts.is_empty()).then_some(mounts),
        // compose 1.29 always sends PortBindings, empty when nothing is published.
        port_bindings: Some(bindings),
        network_mode,
        restart_policy,
        privileged: s.privileged.then_some(true),
        readonly_rootfs: s.read_only.then_some(true),
        init: s.init.then_some(true),
        shm_size: bytes("shm_size", &s.shm_size)?,
        memory,
        nano_cpus,
        cap_add: non_empty(&s.cap_add),
        cap_drop: non_empty(&s.cap_drop),
        devices: (!devices.is_empty()).then_some(devices),
        extra_hosts: non_empty(&s.extra_hosts),
        ulimits: (!ulimits.is_empty()).then_some(ulimits),
        sysctls: (!sysctls.is_empty()).then_some(sysctls),
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        log_config,
        ..Default::default()
    };

    let body = ContainerCreateBody {
        image: Some(image.clone()),
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
        env: (!env.is_empty()).then_some(env),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        volumes: (!config_volumes.is_empty()).then_some(config_volumes),
        healthcheck,
        user: s.user.clone(),
        working_dir: s.working_dir.clone(),
        hostname: s.hostname.clone(),
        stop_signal: s.stop_signal.clone(),
        stop_timeout: stop_timeout.map(i64::from),
        tty: s.tty.then_some(true),
        open_stdin: s.stdin_open.then_some(true),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    };

    Ok(ServicePlan {
        name: name.to_string(),
        container_name,
        image,
        body,
        extra_networks,
        depends_on,
        network_of,
        stop_timeout: stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT),
    })
}

/// env_file values first, then `environment`; valueless entries take the project variables,
/// or stay valueless (`KEY`, which Docker treats as unset).
fn environment(
    scope: &str,
    s: &docker_compose_types::Service,
    ctx: &PlanContext<'_>,
) -> Result<Vec<String>, ComposeError> {
    let mut env: IndexMap<String, Option<String>> = IndexMap::new();
    let files: Vec<String> = match &s.env_file {
        None => Vec::new(),
        Some(docker_compose_types::StringOrList::Simple(f)) => vec![f.clone()],
        Some(docker_compose_types::StringOrList::List(v)) => v.clone(),
    };
    for f in files {
        let path = resolve_host_path(scope, "env file", &relative(&f), ctx)?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid(scope, format!("cannot read env file \"{f}\": {e}")))?;
        for (k, v) in parse_env_file(&text, ctx.vars, true) {
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

/// env_file entries are relative to the project directory even without `./`.
fn relative(p: &str) -> String {
    if p.starts_with('/') || p.starts_with('.') || p.starts_with('~') {
        p.to_string()
    } else {
        format!("./{p}")
    }
}

/// compose 1.29 treats a volume source as a host path when it starts with `.`, `/` or `~`.
fn is_path(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/') || source.starts_with('~')
}

/// Lexical normalisation; None when `..` climbs above the root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Resolves a bind source (relative to the app directory) and checks it stays inside the
/// app directory or one of the allowed paths.
pub fn resolve_bind(
    scope: &str,
    source: &str,
    ctx: &PlanContext<'_>,
) -> Result<PathBuf, ComposeError> {
    resolve_host_path(scope, "bind mount source", source, ctx)
}

/// `what` names the path in errors ("bind mount source", "env file").
fn resolve_host_path(
    scope: &str,
    what: &str,
    source: &str,
    ctx: &PlanContext<'_>,
) -> Result<PathBuf, ComposeError> {
    if source.starts_with('~') {
        return Err(policy(
            scope,
            format!("{what} \"{source}\": home-relative paths are not allowed"),
        ));
    }
    let joined = if source.starts_with('/') {
        PathBuf::from(source)
    } else {
        ctx.dir.join(source)
    };
    let resolved = normalize(&joined).ok_or_else(|| {
        policy(
            scope,
            format!("{what} \"{source}\" leaves the file system root"),
        )
    })?;
    let inside = |base: &Path| normalize(base).is_some_and(|b| resolved.starts_with(b));
    if inside(ctx.dir) || ctx.policy.allowed_bind_paths.iter().any(|p| inside(p)) {
        Ok(resolved)
    } else {
        Err(policy(
            scope,
            format!(
                "{what} \"{source}\" ({}) is outside the app directory and the allowed paths",
                resolved.display()
            ),
        ))
    }
}

fn propagation(scope: &str, p: &str) -> Result<MountBindOptionsPropagationEnum, ComposeError> {
    use MountBindOptionsPropagationEnum as P;
    Ok(match p {
        "private" => P::PRIVATE,
        "rprivate" => P::RPRIVATE,
        "shared" => P::SHARED,
        "rshared" => P::RSHARED,
        "slave" => P::SLAVE,
        "rslave" => P::RSLAVE,
        _ => return Err(invalid(scope, format!("invalid bind propagation \"{p}\""))),
    })
}

fn restart(scope: &str, r: &str) -> Result<RestartPolicy, ComposeError> {
    let (name, count) = match r.split_once(':') {
        Some(("on-failure", n)) => (
            RestartPolicyNameEnum::ON_FAILURE,
            n.parse::<i64>()
                .map_err(|_| invalid(scope, format!("invalid restart policy \"{r}\"")))?,
        ),
        Some(_) => return Err(invalid(scope, format!("invalid restart policy \"{r}\""))),
        None => (
            match r {
                "no" | "" => RestartPolicyNameEnum::NO,
                "always" => RestartPolicyNameEnum::ALWAYS,
                "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
                "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
                _ => return Err(invalid(scope, format!("invalid restart policy \"{r}\""))),
            },
            0,
        ),
    };
    Ok(RestartPolicy {
        name: Some(name),
        maximum_retry_count: Some(count),
    })
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

fn split_command(scope: &str, key: &str, s: &str) -> Result<Vec<String>, ComposeError> {
    shlex_split(s).ok_or_else(|| invalid(scope, format!("{key}: unbalanced quotes in \"{s}\"")))
}

/// A stable, dependency-free hash: FNV-1a 64 over the canonical (sorted-keys) JSON of the
/// container's configuration, the image id and the ids it joins. Any change recreates.
pub fn config_hash(config: &serde_json::Value) -> String {
    let mut canonical = String::new();
    write_canonical(config, &mut canonical);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[*k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::compose::parse::parse;

    fn ctx_parts() -> (PathBuf, PathBuf, HashMap<String, String>, ComposePolicy) {
        (
            PathBuf::from("/var/lib/gantry/apps/demo"),
            PathBuf::from("/var/lib/gantry/apps/demo/docker-compose.yml"),
            HashMap::from([("FROM_ENV".to_string(), "e".to_string())]),
            ComposePolicy::default(),
        )
    }

    fn plan_with(yaml: &str, policy: &ComposePolicy) -> Result<Plan, ComposeError> {
        let (dir, file, vars, _) = ctx_parts();
        let model = parse(yaml, &vars)?;
        let ctx = PlanContext {
            project: "demo",
            app_id: "Demo App:1.0",
            dir: &dir,
            compose_file: &file,
            vars: &vars,
            policy,
        };
        plan(&model, &ctx)
    }

    fn plan_yaml(yaml: &str) -> Plan {
        plan_with(yaml, &ComposePolicy::default()).unwrap()
    }

    fn host(p: &Plan, svc: &str) -> HostConfig {
        p.service(svc).unwrap().body.host_config.clone().unwrap()
    }

    fn binding(ip: &str, port: &str) -> PortBinding {
        PortBinding {
            host_ip: Some(ip.into()),
            host_port: Some(port.into()),
        }
    }

    #[test]
    fn ports_short_long_ranges_udp_host_ip() {
        let p = plan_yaml(
            r#"
services:
  web:
    image: busybox
    ports:
      - "127.0.0.1:8080:80"
      - 9090
      - "127.0.0.1:5000-5001:5000-5001/udp"
      - "127.0.0.1:7000-7010:7000"
      - target: 443
        published: 8443
        host_ip: 127.0.0.1
      - target: 53
        published: "5353"
        protocol: udp
        host_ip: "2001:db8::1"
      - "127.0.0.1:8081:80"
"#,
        );
        let body = &p.service("web").unwrap().body;
        let mut exposed = body.exposed_ports.clone().unwrap();
        exposed.sort();
        assert_eq!(
            exposed,
            vec!["443/tcp", "5000/udp", "5001/udp", "53/udp", "7000/tcp", "80/tcp", "9090/tcp"]
        );
        let pb = host(&p, "web").port_bindings.unwrap();
        assert_eq!(
            pb["80/tcp"].clone().unwrap(),
            vec![binding("127.0.0.1", "8080"), binding("127.0.0.1", "8081")]
        );
        assert_eq!(pb["9090/tcp"].clone().unwrap(), vec![binding("", "")]);
        assert_eq!(
            pb["5000/udp"].clone().unwrap(),
            vec![binding("127.0.0.1", "5000")]
        );
        assert_eq!(
            pb["5001/udp"].clone().unwrap(),
            vec![binding("127.0.0.1", "5001")]
        );
        assert_eq!(
            pb["7000/tcp"].clone().unwrap(),
            vec![binding("127.0.0.1", "7000-7010")]
        );
        assert_eq!(
            pb["443/tcp"].clone().unwrap(),
            vec![binding("127.0.0.1", "8443")]
        );
        assert_eq!(
            pb["53/udp"].clone().unwrap(),
            vec![binding("2001:db8::1", "5353")]
        );
    }

    #[test]
    fn environment_list_map_file_and_valueless() {
        let p = plan_yaml(
            r#"
services:
  a:
    image: busybox
    environment: ["A=1", "B=x=y", "FROM_ENV", "UNSET_ONE"]
  b:
    image: busybox
    environment:
      N: 1
      F: 1.50
      T: true
      E: ""
      FROM_ENV:
"#,
        );
        assert_eq!(
            p.service("a").unwrap().body.env.clone().unwrap(),
            vec!["A=1", "B=x=y", "FROM_ENV=e", "UNSET_ONE"]
        );
        assert_eq!(
            p.service("b").unwrap().body.env.clone().unwrap(),
            vec!["N=1", "F=1.5", "T=True", "E=", "FROM_ENV=e"]
        );
    }

    #[test]
    fn env_file_is_read_relative_to_the_app_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.env"), "A=from-file\nB=file\n").unwrap();
        let vars = HashMap::new();
        let model = parse(
            "services: {web: {image: busybox, env_file: web.env, environment: {B: env}}}",
            &vars,
        )
        .unwrap();
        let file = dir.path().join("compose.yaml");
        let pol = ComposePolicy::default();
        let ctx = PlanContext {
            project: "p",
            app_id: "p",
            dir: dir.path(),
            compose_file: &file,
            vars: &vars,
            policy: &pol,
        };
        let p = plan(&model, &ctx).unwrap();
        assert_eq!(
            p.service("web").unwrap().body.env.clone().unwrap(),
            vec!["A=from-file", "B=env"]
        );
        let model = parse(
            "services: {web: {image: busybox, env_file: ../x.env}}",
            &vars,
        )
        .unwrap();
        assert!(matches!(
            plan(&model, &ctx),
            Err(ComposeError::Policy { .. })
        ));
    }

    #[test]
    fn labels_and_compose_labels() {
        let p = plan_yaml(
            r#"
services:
  web:
    image: busybox
    labels: ["a=b", "flag", "com.docker.compose.project=evil"]
  db:
    image: busybox
    labels: {x.y: 1, z: }
"#,
        );
        let l = p.service("web").unwrap().body.labels.clone().unwrap();
        assert_eq!(l["a"], "b");
        assert_eq!(l["flag"], "");
        assert_eq!(l[LABEL_PROJECT], "demo");
        assert_eq!(l[LABEL_SERVICE], "web");
        assert_eq!(l[LABEL_ONEOFF], "False");
        assert_eq!(l[LABEL_CONTAINER_NUMBER], "1");
        assert_eq!(l[LABEL_VERSION], COMPOSE_VERSION);
        assert_eq!(l[LABEL_APP_ID], "Demo App:1.0");
        assert_eq!(l[LABEL_WORKING_DIR], "/var/lib/gantry/apps/demo");
        assert_eq!(
            l[LABEL_CONFIG_FILES],
            "/var/lib/gantry/apps/demo/docker-compose.yml"
        );
        assert!(!l.contains_key(LABEL_CONFIG_HASH), "added when applying");
        let l = p.service("db").unwrap().body.labels.clone().unwrap();
        assert_eq!(l["x.y"], "1");
        assert_eq!(l["z"], "");
        assert_eq!(p.service("web").unwrap().container_name, "demo_web_1");
    }

    #[test]
    fn healthcheck_durations() {
        let p = plan_yaml(
            r#"
services:
  a:
    image: busybox
    healthcheck:
      test: ["CMD", "true"]
      interval: 1m30s
      timeout: 500ms
      retries: "3"
      start_period: 1.5s
  b:
    image: busybox
    healthcheck:
      test: curl -f http://localhost || exit 1
  c:
    image: busybox
    healthcheck:
      disable: true
"#,
        );
        let h = p.service("a").unwrap().body.healthcheck.clone().unwrap();
        assert_eq!(h.test.unwrap(), vec!["CMD", "true"]);
        assert_eq!(h.interval, Some(90_000_000_000));
        assert_eq!(h.timeout, Some(500_000_000));
        assert_eq!(h.retries, Some(3));
        assert_eq!(h.start_period, Some(1_500_000_000));
        let h = p.service("b").unwrap().body.healthcheck.clone().unwrap();
        assert_eq!(
            h.test.unwrap(),
            vec!["CMD-SHELL", "curl -f http://localhost || exit 1"]
        );
        let h = p.service("c").unwrap().body.healthcheck.clone().unwrap();
        assert_eq!(h.test.unwrap(), vec!["NONE"]);
        assert!(plan_with(
            "services: {a: {image: x, healthcheck: {interval: 10}}}",
            &ComposePolicy::default()
        )
        .is_err());
    }

    #[test]
    fn resources_ulimits_tmpfs_restart_and_more() {
        let p = plan_yaml(
            r#"
services:
  a:
    image: busybox
    mem_limit: 512m
    cpus: 0.5
    shm_size: "1gb"
    ulimits:
      nproc: 65535
      nofile: {soft: 20000, hard: "40000"}
    tmpfs: ["/run", "/tmp:size=64m,mode=1777"]
    restart: on-failure:3
    sysctls: ["net.core.somaxconn=1024"]
    extra_hosts: {gw: 198.18.0.1}
    read_only: "yes"
    init: true
    tty: true
    stdin_open: true
    user: 1000
    working_dir: /srv
    hostname: box
    stop_signal: SIGINT
    stop_grace_period: 1m
    command: sh -c 'echo "a b"; sleep 1'
    entrypoint: ["/bin/sh", 1]
    logging: {driver: json-file, options: {max-size: 10m, max-file: 3}}
  b:
    image: busybox
    mem_limit: 1000000
    deploy: {resources: {limits: {cpus: "1.25", memory: 1g}}}
    restart: unless-stopped
    cap_drop: [ALL]
"#,
        );
        let a = p.service("a").unwrap();
        let h = host(&p, "a");
        assert_eq!(h.memory, Some(512 * 1024 * 1024));
        assert_eq!(h.nano_cpus, Some(500_000_000));
        assert_eq!(h.shm_size, Some(1024 * 1024 * 1024));
        let mut ul = h.ulimits.unwrap();
        ul.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(
            ul,
            vec![
                ResourcesUlimits {
                    name: Some("nofile".into()),
                    soft: Some(20000),
                    hard: Some(40000)
                },
                ResourcesUlimits {
                    name: Some("nproc".into()),
                    soft: Some(65535),
                    hard: Some(65535)
                },
            ]
        );
        let t = h.tmpfs.unwrap();
        assert_eq!(t["/run"], "");
        assert_eq!(t["/tmp"], "size=64m,mode=1777");
        assert_eq!(
            h.restart_policy.unwrap(),
            RestartPolicy {
                name: Some(RestartPolicyNameEnum::ON_FAILURE),
                maximum_retry_count: Some(3)
            }
        );
        assert_eq!(h.sysctls.unwrap()["net.core.somaxconn"], "1024");
        assert_eq!(h.extra_hosts.unwrap(), vec!["gw:198.18.0.1"]);
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.init, Some(true));
        let lc = h.log_config.unwrap();
        assert_eq!(lc.typ.as_deref(), Some("json-file"));
        assert_eq!(lc.config.unwrap()["max-file"], "3");
        assert_eq!(a.body.tty, Some(true));
        assert_eq!(a.body.open_stdin, Some(true));
        assert_eq!(a.body.user.as_deref(), Some("1000"));
        assert_eq!(a.body.working_dir.as_deref(), Some("/srv"));
        assert_eq!(a.body.hostname.as_deref(), Some("box"));
        assert_eq!(a.body.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(a.body.stop_timeout, Some(60));
        assert_eq!(a.stop_timeout, 60);
        assert_eq!(
            a.body.cmd.clone().unwrap(),
            vec!["sh", "-c", "echo \"a b\"; sleep 1"]
        );
        assert_eq!(a.body.entrypoint.clone().unwrap(), vec!["/bin/sh", "1"]);
        let h = host(&p, "b");
        assert_eq!(h.memory, Some(1024 * 1024 * 1024));
        assert_eq!(h.nano_cpus, Some(1_250_000_000));
        assert_eq!(h.cap_drop.unwrap(), vec!["ALL"]);
        assert_eq!(
            h.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        assert_eq!(p.service("b").unwrap().stop_timeout, DEFAULT_STOP_TIMEOUT);
        for bad in ["sometimes", "on-failure:x", "always:1"] {
            let y = format!("services: {{a: {{image: x, restart: \"{bad}\"}}}}");
            assert!(plan_with(&y, &ComposePolicy::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn networks_volumes_and_binds() {
        let p = plan_yaml(
            r#"
services:
  web:
    image: busybox
    networks:
      front:
      back: {aliases: [api, www], ipv4_address: 198.18.7.10}
    volumes:
      - data:/data
      - ./conf:/etc/conf:ro
      - /var/cache
      - {type: volume, source: data, target: /d2, read_only: true}
      - {type: bind, source: ./static, target: /static}
      - {type: tmpfs, target: /scratch, tmpfs: {size: 1m}}
  db:
    image: busybox
  host:
    image: busybox
    network_mode: host
  side:
    image: busybox
    network_mode: "service:web"
networks:
  front: {}
  back: {driver: bridge, internal: true, ipam: {config: [{subnet: 198.18.7.0/24}]}}
  unused: {}
volumes:
  data: {}
  named: {name: exact-name}
  ext: {external: true}
"#,
        );
        let names: Vec<(&str, &str, bool)> = p
            .networks
            .iter()
            .map(|n| (n.key.as_str(), n.name.as_str(), n.external))
            .collect();
        assert_eq!(
            names,
            vec![
                ("front", "demo_front", false),
                ("back", "demo_back", false),
                ("default", "demo_default", false)
            ]
        );
        let back = &p.networks[1].request;
        assert_eq!(back.internal, Some(true));
        assert_eq!(back.attachable, Some(true));
        let nl = back.labels.clone().unwrap();
        assert_eq!(nl[LABEL_NETWORK], "back");
        assert_eq!(nl[LABEL_PROJECT], "demo");
        assert_eq!(nl[LABEL_APP_ID], "Demo App:1.0");
        let vols: Vec<(&str, &str, bool)> = p
            .volumes
            .iter()
            .map(|v| (v.key.as_str(), v.name.as_str(), v.external))
            .collect();
        assert_eq!(
            vols,
            vec![
                ("data", "demo_data", false),
                ("named", "exact-name", false),
                ("ext", "ext", true)
            ]
        );
        assert_eq!(
            p.volumes[0].request.labels.clone().unwrap()[LABEL_VOLUME],
            "data"
        );

        let web = p.service("web").unwrap();
        let h = host(&p, "web");
        // Primary network: first by name (demo_back < demo_front).
        assert_eq!(h.network_mode.as_deref(), Some("demo_back"));
        let ep = &web
            .body
            .networking_config
            .as_ref()
            .unwrap()
            .endpoints_config
            .as_ref()
            .unwrap()["demo_back"];
        assert_eq!(ep.aliases.clone().unwrap(), vec!["web", "api", "www"]);
        assert_eq!(
            ep.ipam_config.as_ref().unwrap().ipv4_address.as_deref(),
            Some("198.18.7.10")
        );
        assert_eq!(web.extra_networks.len(), 1);
        assert_eq!(web.extra_networks[0].0, "demo_front");
        assert_eq!(
            web.extra_networks[0].1.aliases.clone().unwrap(),
            vec!["web"]
        );
        assert_eq!(
            h.binds.unwrap(),
            vec![
                "demo_data:/data:rw",
                "/var/lib/gantry/apps/demo/conf:/etc/conf:ro"
            ]
        );
        assert_eq!(
            web.body.volumes.clone().unwrap(),
            vec!["/data", "/etc/conf", "/var/cache"]
        );
        let m = h.mounts.unwrap();
        assert_eq!(m[0].typ, Some(MountType::VOLUME));
        assert_eq!(m[0].source.as_deref(), Some("demo_data"));
        assert_eq!(m[0].read_only, Some(true));
        assert_eq!(
            m[1].source.as_deref(),
            Some("/var/lib/gantry/apps/demo/static")
        );
        assert_eq!(
            m[2].tmpfs_options.as_ref().unwrap().size_bytes,
            Some(1024 * 1024)
        );
        assert_eq!(host(&p, "db").network_mode.as_deref(), Some("demo_default"));
        assert_eq!(host(&p, "host").network_mode.as_deref(), Some("host"));
        let side = p.service("side").unwrap();
        assert_eq!(side.network_of.as_deref(), Some("web"));
        assert_eq!(host(&p, "side").network_mode, None);
        assert_eq!(p.levels(), vec![vec!["web", "db", "host"], vec!["side"]]);
    }

    #[test]
    fn bind_policy() {
        let pol = ComposePolicy::default();
        for bad in [
            "/etc:/x",
            "../other:/x",
            "./a/../../b:/x",
            "~/x:/x",
            "/var/lib/gantry/apps/demo2:/x",
        ] {
            let y = format!("services: {{a: {{image: x, volumes: [\"{bad}\"]}}}}");
            match plan_with(&y, &pol) {
                Err(ComposeError::Policy { scope, .. }) => assert_eq!(scope, "service \"a\""),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let ok = "services: {a: {image: x, volumes: [\"./a/../b:/x\", \"/var/lib/gantry/apps/demo/c:/y\"]}}";
        assert!(plan_with(ok, &pol).is_ok());
        let allowed = ComposePolicy {
            allowed_bind_paths: vec![PathBuf::from("/srv/data")],
            ..Default::default()
        };
        let y = "services: {a: {image: x, volumes: [\"/srv/data/x:/x\"]}}";
        assert!(plan_with(y, &pol).is_err());
        assert!(plan_with(y, &allowed).is_ok());
        let y = "services: {a: {image: x, volumes: [\"/srv/data/../etc:/x\"]}}";
        assert!(plan_with(y, &allowed).is_err());
    }

    #[test]
    fn privileged_devices_capabilities_are_gated() {
        let off = ComposePolicy::default();
        let on = ComposePolicy {
            allow_privileged: true,
            allow_devices: true,
            allow_capabilities: true,
            ..Default::default()
        };
        for y in [
            "services: {a: {image: x, privileged: true}}",
            "services: {a: {image: x, devices: [\"/dev/ttyUSB0:/dev/ttyUSB0\"]}}",
            "services: {a: {image: x, cap_add: [NET_ADMIN]}}",
        ] {
            assert!(
                matches!(plan_with(y, &off), Err(ComposeError::Policy { .. })),
                "{y}"
            );
            assert!(plan_with(y, &on).is_ok(), "{y}");
        }
        let p = plan_with("services: {a: {image: x, devices: [\"/dev/ttyUSB0\"], cap_add: [NET_ADMIN], privileged: true}}", &on).unwrap();
        let h = host(&p, "a");
        assert_eq!(h.privileged, Some(true));
        assert_eq!(h.cap_add.unwrap(), vec!["NET_ADMIN"]);
        assert_eq!(
            h.devices.unwrap(),
            vec![DeviceMapping {
                path_on_host: Some("/dev/ttyUSB0".into()),
                path_in_container: Some("/dev/ttyUSB0".into()),
                cgroup_permissions: Some("rwm".into())
            }]
        );
    }

    #[test]
    fn dependencies() {
        let p = plan_yaml(
            r#"
services:
  web: {image: x, depends_on: {db: {condition: service_healthy}, init: {condition: service_completed_successfully}}}
  db: {image: x}
  init: {image: x, depends_on: [db]}
"#,
        );
        assert_eq!(p.levels(), vec![vec!["db"], vec!["init"], vec!["web"]]);
        assert_eq!(
            p.service("web").unwrap().depends_on,
            vec![
                Dependency {
                    service: "db".into(),
                    condition: Condition::Healthy
                },
                Dependency {
                    service: "init".into(),
                    condition: Condition::CompletedSuccessfully
                },
            ]
        );
        let pol = ComposePolicy::default();
        assert!(plan_with("services: {a: {image: x, depends_on: [b]}}", &pol).is_err());
        let e = plan_with(
            "services: {a: {image: x, depends_on: [b]}, b: {image: x, depends_on: [a]}}",
            &pol,
        )
        .unwrap_err();
        assert!(e.to_string().contains("circular"), "{e}");
        assert!(plan_with(
            "services: {a: {image: x, depends_on: {b: {condition: whenever}}}, b: {image: x}}",
            &pol
        )
        .is_err());
        assert!(plan_with("services: {a: {image: x, networks: [nope]}}", &pol).is_err());
        assert!(plan_with("services: {a: {image: x, volumes: [\"nope:/x\"]}}", &pol).is_err());
        assert!(plan_with("services: {a: {command: x}}", &pol).is_err());
    }

    #[test]
    fn durations_bytes_shlex() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2us"), Some(Duration::from_micros(2)));
        for bad in ["", "10", "s", "1s1h", "1x", "1s2s"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_bytes("100"), Some(100));
        assert_eq!(parse_bytes("1k"), Some(1024));
        assert_eq!(parse_bytes("1KB"), Some(1024));
        assert_eq!(parse_bytes("1.5m"), Some(1024 * 1024 * 3 / 2));
        assert_eq!(parse_bytes("2g"), Some(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_bytes("1t"), None);
        assert_eq!(parse_bytes("m"), None);
        assert_eq!(
            shlex_split(r#"a "b c" 'd e' f\ g "h\"i" "j\k""#).unwrap(),
            vec!["a", "b c", "d e", "f g", "h\"i", "j\\k"]
        );
        assert_eq!(shlex_split("  ").unwrap(), Vec::<String>::new());
        assert_eq!(shlex_split("''").unwrap(), vec![""]);
        assert!(shlex_split("'open").is_none());
    }

    #[test]
    fn hash_is_stable_and_order_independent() {
        let a = serde_json::json!({"b": 1, "a": [1, {"y": 2, "x": 3}]});
        let b = serde_json::json!({"a": [1, {"x": 3, "y": 2}], "b": 1});
        assert_eq!(config_hash(&a), config_hash(&b));
        assert_eq!(config_hash(&a).len(), 16);
        let c = serde_json::json!({"a": [1, {"x": 3, "y": 2}], "b": 2});
        assert_ne!(config_hash(&a), config_hash(&c));
        // FNV-1a 64 of "" is the offset basis.
        assert_eq!(config_hash(&serde_json::json!("")), {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in b"\"\"" {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            format!("{h:016x}")
        });
    }
}
