//! Networks: the project's (only those its services use), and each service's: its
//! `network_mode`, or its networks with their aliases and addresses, the primary one given
//! at create and the others connected before start.

use std::collections::HashMap;

use bollard::models::{
    EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig, NetworkCreateRequest, NetworkingConfig,
};
use docker_compose_types::{AdvancedNetworkSettings, ComposeNetwork, NetworkSettings, Networks};

use super::labels::{object_labels, LABEL_NETWORK};
use super::{invalid, opts_map, NetworkPlan, PlanContext};
use crate::core::compose::parse::ComposeModel;
use crate::core::compose::ComposeError;

/// Networks the services use (compose creates only those), `default` included when some
/// service has neither `networks` nor `network_mode`.
pub(super) fn plan_networks(
    model: &ComposeModel,
    ctx: &PlanContext<'_>,
) -> Result<Vec<NetworkPlan>, ComposeError> {
    let used = used_networks(model)?;
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
    keys.into_iter()
        .map(|key| {
            let def = model.networks.get(&key).cloned().flatten();
            network_plan(key, def.unwrap_or_default(), ctx)
        })
        .collect()
}

/// The network keys the services join, in the order they first appear.
fn used_networks(model: &ComposeModel) -> Result<Vec<String>, ComposeError> {
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
    Ok(used)
}

fn network_plan(
    key: String,
    def: NetworkSettings,
    ctx: &PlanContext<'_>,
) -> Result<NetworkPlan, ComposeError> {
    let (external, external_name) = match &def.external {
        Some(ComposeNetwork::Bool(b)) => (*b, None),
        Some(ComposeNetwork::Detailed(d)) => (true, Some(d.name.clone())),
        None => (false, None),
    };
    let name = match (external_name, &def.name) {
        (Some(n), _) => n,
        (None, Some(n)) => n.clone(),
        (None, None) if external => key.clone(),
        (None, None) => format!("{}_{key}", ctx.project),
    };
    let scope = format!("network \"{key}\"");
    if name.is_empty() {
        return Err(invalid(&scope, "the network name is empty"));
    }
    super::policy::network(&scope, &def, &name, external, ctx.policy)?;
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
        labels: Some(object_labels(&def.labels, ctx, (LABEL_NETWORK, &key))),
        ..Default::default()
    };
    Ok(NetworkPlan {
        key,
        name,
        external,
        request,
    })
}

/// How a service is networked.
#[derive(Default)]
pub(super) struct ServiceNetworks {
    /// `host`, `none`, `bridge`, or the primary network's name.
    pub network_mode: Option<String>,
    /// `network_mode: service:<name>`.
    pub network_of: Option<String>,
    /// The primary network's endpoint.
    pub networking_config: Option<NetworkingConfig>,
    /// The other networks, connected before start.
    pub extra: Vec<(String, EndpointSettings)>,
}

pub(super) fn service_networks(
    scope: &str,
    name: &str,
    s: &docker_compose_types::Service,
    model: &ComposeModel,
    networks: &[NetworkPlan],
    ctx: &PlanContext<'_>,
) -> Result<ServiceNetworks, ComposeError> {
    match &s.network_mode {
        Some(mode) => network_mode(scope, mode, s, model, ctx),
        None => joined_networks(scope, name, &s.networks, networks),
    }
}

fn network_mode(
    scope: &str,
    mode: &str,
    s: &docker_compose_types::Service,
    model: &ComposeModel,
    ctx: &PlanContext<'_>,
) -> Result<ServiceNetworks, ComposeError> {
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
        return Ok(ServiceNetworks {
            network_of: Some(other.to_string()),
            ..Default::default()
        });
    }
    // A container of this app is its service's network; any other container's only with
    // the sharing switch.
    if let Some(target) = mode.strip_prefix("container:") {
        if let Some(own) = service_of_container(model, ctx.project, target) {
            return Ok(ServiceNetworks {
                network_of: Some(own.to_string()),
                ..Default::default()
            });
        }
        if !ctx.policy.allow_shared_resources {
            let what = format!("\"network_mode: {mode}\" (a container outside the app)");
            return Err(super::policy::gated(scope, &what, "allow_shared_resources"));
        }
    }
    if mode.starts_with("container:") || matches!(mode, "host" | "none" | "bridge") {
        return Ok(ServiceNetworks {
            network_mode: Some(mode.to_string()),
            ..Default::default()
        });
    }
    Err(invalid(
        scope,
        format!("unsupported network_mode \"{mode}\" (use host, none, bridge, service:<name> or container:<name>)"),
    ))
}

/// The service of this app whose container is `container` (its `container_name`, or
/// compose's default name).
fn service_of_container<'a>(
    model: &'a ComposeModel,
    project: &str,
    container: &str,
) -> Option<&'a str> {
    model
        .services
        .iter()
        .find(|(name, svc)| match &svc.spec.container_name {
            Some(n) => n == container,
            None => super::service::default_container_name(project, name) == container,
        })
        .map(|(name, _)| name.as_str())
}

/// The service's networks; compose 1.29 picks the primary one by name order.
fn joined_networks(
    scope: &str,
    name: &str,
    wanted: &Networks,
    networks: &[NetworkPlan],
) -> Result<ServiceNetworks, ComposeError> {
    let wanted: Vec<(String, Option<AdvancedNetworkSettings>)> = match wanted {
        Networks::Simple(v) if v.is_empty() => vec![("default".into(), None)],
        Networks::Simple(v) => v.iter().map(|k| (k.clone(), None)).collect(),
        Networks::Advanced(a) => {
            a.0.iter()
                .map(|(k, v)| (k.clone(), Option::from(v.clone())))
                .collect()
        }
    };
    let mut endpoints = Vec::new();
    for (key, settings) in wanted {
        let net = networks
            .iter()
            .find(|n| n.key == key)
            .ok_or_else(|| invalid(scope, format!("uses an undefined network \"{key}\"")))?;
        endpoints.push((
            net.name.clone(),
            endpoint(name, settings.unwrap_or_default()),
        ));
    }
    endpoints.sort_by(|a, b| a.0.cmp(&b.0));
    let mut it = endpoints.into_iter();
    let mut out = ServiceNetworks::default();
    if let Some((primary, ep)) = it.next() {
        out.network_mode = Some(primary.clone());
        out.networking_config = Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(primary, ep)])),
        });
    }
    out.extra = it.collect();
    Ok(out)
}

/// The service's name is always an alias; the file's follow.
fn endpoint(service: &str, settings: AdvancedNetworkSettings) -> EndpointSettings {
    let mut aliases = vec![service.to_string()];
    for a in settings.aliases {
        if !aliases.contains(&a) {
            aliases.push(a);
        }
    }
    let ipam = (settings.ipv4_address.is_some() || settings.ipv6_address.is_some()).then(|| {
        EndpointIpamConfig {
            ipv4_address: settings.ipv4_address.clone(),
            ipv6_address: settings.ipv6_address.clone(),
            ..Default::default()
        }
    });
    EndpointSettings {
        aliases: Some(aliases),
        ipam_config: ipam,
        ..Default::default()
    }
}
