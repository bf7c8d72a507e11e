//! One service brought to its planned state: kept when its container is up to date,
//! started, or (re)created; and the waits for its dependencies' conditions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerState, ContainerStateStatusEnum, ContainerSummary, HealthStatusEnum,
};
use futures_util::future::join_all;

use super::super::plan::{config_hash, Condition, ServicePlan, LABEL_CONFIG_HASH};
use super::{container_name, is_running, label, remove_container, Output};
use crate::core::compose::ComposeError;
use crate::core::engine::ContainerEngine;

/// Waits until every dependency of `s` meets its condition; `deps` are their container ids.
/// Waiting takes no slot.
pub(super) async fn wait_for_dependencies(
    s: &ServicePlan,
    engine: &dyn ContainerEngine,
    deps: &HashMap<String, String>,
    timeout: Duration,
) -> Result<(), ComposeError> {
    let waits = s.depends_on.iter().filter_map(|d| {
        let id = deps.get(&d.service)?;
        (d.condition != Condition::Started)
            .then(|| wait_for(engine, &s.name, &d.service, id, d.condition, timeout))
    });
    join_all(waits).await.into_iter().collect()
}

/// Starts the container created ahead for a fresh service (only its start waited for the
/// dependencies).
pub(super) async fn start_created(
    s: &ServicePlan,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
    id: String,
) -> Result<String, ComposeError> {
    let name = &s.container_name;
    out.step("Creating", name, start(engine, &id, name)).await?;
    Ok(id)
}

async fn start(engine: &dyn ContainerEngine, id: &str, name: &str) -> Result<(), ComposeError> {
    engine
        .start_container(id)
        .await
        .map_err(ComposeError::engine(format!("starting {name}")))
}

/// Keeps the service's up-to-date container (starting it if needed, removing the others),
/// or recreates it; returns the container id. `network_of` is the container id of the
/// service named by `network_mode: service:x`.
pub(super) async fn converge(
    s: &ServicePlan,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
    image_id: &str,
    network_of: Option<&String>,
    current: Vec<ContainerSummary>,
) -> Result<String, ComposeError> {
    let (body, hash) = create_body(s, image_id, network_of);
    let up_to_date = current
        .iter()
        .filter(|c| label(c, LABEL_CONFIG_HASH) == Some(hash.as_str()))
        .max_by_key(|c| container_name(c) == s.container_name);
    match up_to_date {
        Some(keep) => keep_container(s, engine, out, keep, &current).await,
        None => recreate(s, engine, out, body, &current).await,
    }
}

/// Keeps `keep`, removing the service's other containers, and starts it if it is stopped.
async fn keep_container(
    s: &ServicePlan,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
    keep: &ContainerSummary,
    current: &[ContainerSummary],
) -> Result<String, ComposeError> {
    let keep_id = keep.id.clone().unwrap_or_default();
    for c in current.iter().filter(|c| c.id != keep.id) {
        let name = container_name(c);
        let removal = remove_container(engine, c, s.stop_timeout);
        out.step("Removing", &name, removal).await?;
    }
    let name = container_name(keep);
    if is_running(keep) {
        out.line(format!("{name} is up-to-date"));
    } else {
        out.step("Starting", &name, start(engine, &keep_id, &name))
            .await?;
    }
    Ok(keep_id)
}

/// Removes the service's containers (if any) and creates and starts a new one.
async fn recreate(
    s: &ServicePlan,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
    body: bollard::models::ContainerCreateBody,
    current: &[ContainerSummary],
) -> Result<String, ComposeError> {
    let verb = if current.is_empty() {
        "Creating"
    } else {
        "Recreating"
    };
    let shown = current
        .first()
        .map(container_name)
        .unwrap_or_else(|| s.container_name.clone());
    out.step(verb, &shown, async {
        for c in current {
            remove_container(engine, c, s.stop_timeout).await?;
        }
        let id = create(s, engine, body).await?;
        start(engine, &id, &s.container_name).await?;
        Ok(id)
    })
    .await
}

/// The service's create body with its config-hash label, and the hash. `network_of` is the
/// container id of the service named by `network_mode: service:x`.
pub(super) fn create_body(
    s: &ServicePlan,
    image_id: &str,
    network_of: Option<&String>,
) -> (bollard::models::ContainerCreateBody, String) {
    let mut body = s.body.clone();
    if s.network_of.is_some() {
        let id = network_of.cloned().unwrap_or_default();
        body.host_config
            .get_or_insert_with(Default::default)
            .network_mode = Some(format!("container:{id}"));
    }
    let hash = config_hash(&serde_json::json!({
        "name": &s.container_name,
        "container": &body,
        "networks": &s.extra_networks,
        "image_id": image_id,
    }));
    body.labels
        .get_or_insert_with(HashMap::new)
        .insert(LABEL_CONFIG_HASH.to_string(), hash.clone());
    (body, hash)
}

/// Creates the service's container and connects its extra networks; returns the id.
pub(super) async fn create(
    s: &ServicePlan,
    engine: &dyn ContainerEngine,
    body: bollard::models::ContainerCreateBody,
) -> Result<String, ComposeError> {
    let name = &s.container_name;
    let id = engine
        .create_container(name, body)
        .await
        .map_err(ComposeError::engine(format!("creating container {name}")))?;
    for (net, endpoint) in &s.extra_networks {
        engine
            .connect_network(net, &id, endpoint.clone())
            .await
            .map_err(ComposeError::engine(format!(
                "connecting {name} to network {net}"
            )))?;
    }
    Ok(id)
}

/// Waits until the dependency `dep` (container `id`) meets `cond`, polling, bounded by
/// `timeout`.
async fn wait_for(
    engine: &dyn ContainerEngine,
    service: &str,
    dep: &str,
    id: &str,
    cond: Condition,
    timeout: Duration,
) -> Result<(), ComposeError> {
    let fail = |message: String| ComposeError::Dependency {
        service: service.to_string(),
        dependency: dep.to_string(),
        message,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let info = engine
            .inspect_container(id)
            .await
            .map_err(ComposeError::engine(format!(
                "inspecting the container of {dep}"
            )))?;
        if let Some(met) = condition_met(cond, &info.state.unwrap_or_default()) {
            return met.map_err(fail);
        }
        let now = Instant::now();
        if now >= deadline {
            let what = match cond {
                Condition::Healthy => "become healthy",
                _ => "complete",
            };
            let secs = timeout.as_secs();
            return Err(fail(format!("did not {what} within {secs}s")));
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(500))).await;
    }
}

/// Whether a dependency in `state` meets `cond` (Ok), never will (Err with the reason), or
/// may yet (None).
fn condition_met(cond: Condition, state: &ContainerState) -> Option<Result<(), String>> {
    let exited = matches!(
        state.status,
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
    );
    let code = state.exit_code.unwrap_or_default();
    match cond {
        Condition::Started => Some(Ok(())),
        Condition::Healthy => match state.health.as_ref().and_then(|h| h.status) {
            Some(HealthStatusEnum::HEALTHY) => Some(Ok(())),
            Some(HealthStatusEnum::UNHEALTHY) => Some(Err("is unhealthy".into())),
            None | Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) => Some(Err(
                "has no healthcheck, so it can never become healthy".into(),
            )),
            Some(HealthStatusEnum::STARTING) if exited => Some(Err(format!(
                "exited with code {code} before becoming healthy"
            ))),
            Some(HealthStatusEnum::STARTING) => None,
        },
        Condition::CompletedSuccessfully if exited && code == 0 => Some(Ok(())),
        Condition::CompletedSuccessfully if exited => Some(Err(format!(
            "did not complete successfully: exit code {code}"
        ))),
        Condition::CompletedSuccessfully => None,
    }
}
