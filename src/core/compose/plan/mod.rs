//! From the typed model to what Docker is asked to create: networks, volumes and container
//! create bodies with the standard compose labels, in the shapes docker-compose 1.29.2 sends
//! (short-syntax volumes as `Binds`, long syntax as `Mounts`, the primary network at create
//! and the others connected before start).
//!
//! One service's plan ([`service`]) is assembled from parts, one module each: [`labels`],
//! [`mounts`] (volumes, binds, tmpfs), [`networks`] (with aliases and `network_mode`),
//! [`resources`] (limits, ulimits, restart, healthcheck, ...) and [`policy`] (the keys the
//! gateway's policy gates).

pub mod labels;
mod mounts;
mod networks;
mod policy;
mod resources;
mod service;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, NetworkCreateRequest, VolumeCreateRequest,
};
use docker_compose_types::SingleValue;
use indexmap::IndexMap;

use super::parse::ComposeModel;
use super::{ComposeError, ComposePolicy};

pub use labels::{config_hash, LABEL_CONFIG_HASH, LABEL_ONEOFF, LABEL_PROJECT, LABEL_SERVICE};
pub use resources::parse_bytes;

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

fn refused(scope: &str, message: impl Into<String>) -> ComposeError {
    ComposeError::Policy {
        scope: scope.to_string(),
        message: message.into(),
    }
}

pub fn plan(model: &ComposeModel, ctx: &PlanContext<'_>) -> Result<Plan, ComposeError> {
    let networks = networks::plan_networks(model, ctx)?;
    let volumes = mounts::plan_volumes(model, ctx)?;
    let mut services = Vec::new();
    for (name, svc) in &model.services {
        let s = service::plan_service(name, svc, model, &networks, &volumes, ctx)?;
        services.push(s);
    }
    let plan = Plan {
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
