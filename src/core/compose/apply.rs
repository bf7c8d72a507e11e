//! Applying a plan over the [`ContainerEngine`]: `up` (idempotent by config hash), `down`
//! and `status`, with compose-like output lines sent as the operations happen.
//!
//! Services whose dependencies are satisfied are converged concurrently; `down` stops in
//! reverse dependency order, concurrently within a level, and keeps going past errors so a
//! half-failed teardown still removes as much as it can.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerStateStatusEnum, ContainerSummary, ContainerSummaryStateEnum, HealthStatusEnum,
};
use futures_util::future::{join_all, BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::plan::{
    config_hash, Condition, ServicePlan, DEFAULT_STOP_TIMEOUT, LABEL_CONFIG_HASH, LABEL_ONEOFF,
    LABEL_PROJECT, LABEL_SERVICE,
};
use super::{ComposeError, ComposeProject};
use crate::core::engine::{ContainerEngine, EngineError, Filter};

/// What `up` did, for the API's `DockerComposeUpResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpResult {
    /// Names of the project's containers running when `up` finished.
    pub running_containers: Vec<String>,
    /// Images `up` had to pull.
    pub pulled_images: Vec<String>,
    /// Every output line, in the order sent.
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownOptions {
    /// Remove the project's images when no container (of any app) uses them.
    pub remove_images: bool,
    /// Remove the project's named volumes (and its containers' anonymous ones) when no
    /// other container uses them.
    pub remove_volumes: bool,
    /// Images other apps need even though no container uses them now; never removed.
    pub protected_images: Vec<String>,
    /// Stop timeout for every container, instead of each service's `stop_grace_period`.
    pub timeout: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownResult {
    pub lines: Vec<String>,
    pub removed_containers: Vec<String>,
    pub removed_networks: Vec<String>,
    pub removed_volumes: Vec<String>,
    pub removed_images: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub service: String,
    /// False for containers of services no longer in the compose file.
    pub defined: bool,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub name: String,
    pub id: String,
    pub image: String,
    /// Docker's state word: created, running, exited, restarting, ...
    pub state: String,
    /// Docker's human status, e.g. `Up 3 minutes (healthy)`.
    pub status: String,
    pub running: bool,
    pub image_id: String,
    /// Unix seconds.
    pub created: Option<i64>,
    /// As `docker ps` shows them: `127.0.0.1:8080->80/tcp`, or `80/tcp` when unpublished.
    pub ports: Vec<String>,
}

pub(crate) fn port_mappings(c: &ContainerSummary) -> Vec<String> {
    let mut out: Vec<String> = c
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let proto = p.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into());
            match (p.ip.as_deref(), p.public_port) {
                (Some(ip), Some(public)) if ip.contains(':') => {
                    format!("[{ip}]:{public}->{}/{proto}", p.private_port)
                }
                (Some(ip), Some(public)) => format!("{ip}:{public}->{}/{proto}", p.private_port),
                (None, Some(public)) => format!("{public}->{}/{proto}", p.private_port),
                _ => format!("{}/{proto}", p.private_port),
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Collects lines and forwards each to the caller as it is produced.
struct Output<'a> {
    on_line: &'a (dyn Fn(&str) + Send + Sync),
    lines: Mutex<Vec<String>>,
    /// Names are padded to this width, as compose aligns its `... done` columns.
    width: usize,
}

impl<'a> Output<'a> {
    fn new(on_line: &'a (dyn Fn(&str) + Send + Sync), width: usize) -> Self {
        Self {
            on_line,
            lines: Mutex::new(Vec::new()),
            width,
        }
    }

    fn line(&self, s: impl Into<String>) {
        let s = s.into();
        (self.on_line)(&s);
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    /// `Creating x_web_1 ... ` now, then `Creating x_web_1 ... done` (or `error`) after `op`.
    async fn step<T>(
        &self,
        verb: &str,
        name: &str,
        op: impl std::future::Future<Output = Result<T, ComposeError>>,
    ) -> Result<T, ComposeError> {
        let head = format!("{verb} {name:<width$} ...", width = self.width);
        self.line(head.clone());
        let res = op.await;
        self.line(format!(
            "{head} {}",
            if res.is_ok() { "done" } else { "error" }
        ));
        res
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn project_label(p: &ComposeProject) -> Filter {
    Filter::Label(format!("{LABEL_PROJECT}={}", p.name()))
}

fn container_name(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_else(|| c.id.clone().unwrap_or_default())
}

fn label<'c>(c: &'c ContainerSummary, key: &str) -> Option<&'c str> {
    c.labels.as_ref()?.get(key).map(String::as_str)
}

fn is_running(c: &ContainerSummary) -> bool {
    matches!(
        c.state,
        Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::RESTARTING)
    )
}

fn width(p: &ComposeProject, extra: &[ContainerSummary]) -> usize {
    p.plan()
        .services
        .iter()
        .map(|s| s.container_name.len())
        .chain(extra.iter().map(|c| container_name(c).len()))
        .max()
        .unwrap_or(0)
}

pub async fn up(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    on_line: &(dyn Fn(&str) + Send + Sync),
) -> Result<UpResult, ComposeError> {
    let out = Output::new(on_line, width(p, &[]));
    for w in p.warnings() {
        out.line(w.clone());
    }
    match up_inner(p, engine, &out).await {
        Ok((running_containers, pulled_images)) => Ok(UpResult {
            running_containers,
            pulled_images,
            lines: out.take(),
        }),
        Err(e) => {
            out.line(format!("ERROR: {e}"));
            Err(e)
        }
    }
}

async fn up_inner(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
) -> Result<(Vec<String>, Vec<String>), ComposeError> {
    let plan = p.plan();
    let limit = p.parallel_limit.max(1);

    // Images, the lookups of networks and volumes, and the project's containers: all at once.
    let filters = [
        project_label(p),
        Filter::Label(format!("{LABEL_ONEOFF}=False")),
    ];
    let (images, networks, volumes, existing) = tokio::join!(
        ensure_images(p, engine, out),
        bounded(
            limit,
            plan.networks
                .iter()
                .map(|n| check_network(p, engine, n).boxed())
                .collect()
        ),
        bounded(
            limit,
            plan.volumes
                .iter()
                .map(|v| check_volume(engine, v).boxed())
                .collect()
        ),
        engine.list_containers_filtered(&filters),
    );
    let (image_ids, pulled) = images?;
    let networks = first_error(networks)?;
    let volumes = first_error(volumes)?;
    let existing = existing.map_err(ComposeError::engine("listing the project's containers"))?;

    // Then the missing networks and volumes, announced in plan order, created concurrently.
    let mut creates: Vec<BoxFuture<'_, Result<(), ComposeError>>> = Vec::new();
    for n in plan
        .networks
        .iter()
        .zip(networks)
        .filter_map(|(n, new)| new.then_some(n))
    {
        let driver = match &n.request.driver {
            Some(d) => format!("driver \"{d}\""),
            None => "the default driver".to_string(),
        };
        out.line(format!("Creating network \"{}\" with {driver}", n.name));
        creates.push(Box::pin(async move {
            engine
                .create_network(n.request.clone())
                .await
                .map(|_| ())
                .map_err(ComposeError::engine(format!("creating network {}", n.name)))
        }));
    }
    for v in plan
        .volumes
        .iter()
        .zip(volumes)
        .filter_map(|(v, new)| new.then_some(v))
    {
        out.line(format!(
            "Creating volume \"{}\" with {} driver",
            v.name,
            v.request.driver.as_deref().unwrap_or("default")
        ));
        creates.push(Box::pin(async move {
            engine
                .create_volume(v.request.clone())
                .await
                .map(|_| ())
                .map_err(ComposeError::engine(format!("creating volume {}", v.name)))
        }));
    }
    first_error(bounded(limit, creates).await)?;

    let mut by_service: HashMap<String, Vec<ContainerSummary>> = HashMap::new();
    let mut orphans = Vec::new();
    for c in existing {
        match label(&c, LABEL_SERVICE) {
            Some(s) if plan.service(s).is_some() => {
                by_service.entry(s.to_string()).or_default().push(c)
            }
            _ => orphans.push(c),
        }
    }
    for c in &orphans {
        out.line(format!(
            "Removing orphan container \"{}\"",
            container_name(c)
        ));
    }
    first_error(
        bounded(
            limit,
            orphans
                .iter()
                .map(|c| remove_container(engine, c, DEFAULT_STOP_TIMEOUT).boxed())
                .collect(),
        )
        .await,
    )?;

    // A fresh service (no container yet, no `network_mode: service:x`) has its container
    // created right away, whatever it depends on: only its start waits for the dependencies.
    // Each service is then started (or converged: kept, started, recreated) as soon as every
    // service it depends on is up; a dependency's healthy/completed condition is awaited by
    // the dependent before it takes a slot. The `Creating x ... done` lines still frame the
    // start, in dependency order.
    let slots = tokio::sync::Semaphore::new(limit);
    let slots = &slots;
    enum Ev {
        Created(String, Result<String, ComposeError>),
        Up(String, Result<String, ComposeError>),
    }
    let mut tasks: FuturesUnordered<BoxFuture<'_, Ev>> = FuturesUnordered::new();
    // Services being created ahead, and those created ahead (name -> id) not yet started.
    let mut creating: HashSet<&str> = HashSet::new();
    let mut precreated: HashMap<String, String> = HashMap::new();
    for s in &plan.services {
        if s.network_of.is_some() || by_service.contains_key(&s.name) {
            continue;
        }
        creating.insert(s.name.as_str());
        let image_id = image_ids.get(&s.image).cloned().unwrap_or_default();
        tasks.push(Box::pin(async move {
            let _slot = slots.acquire().await;
            let (body, _) = create_body(s, &image_id, None);
            Ev::Created(s.name.clone(), create(s, engine, body).await)
        }));
    }
    let mut pending: Vec<&ServicePlan> = plan.services.iter().collect();
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut errors = Vec::new();
    loop {
        if errors.is_empty() {
            let (ready, wait): (Vec<&ServicePlan>, Vec<&ServicePlan>) =
                pending.into_iter().partition(|s| {
                    !creating.contains(s.name.as_str()) && s.all_deps().all(|d| ids.contains_key(d))
                });
            pending = wait;
            for s in ready {
                let deps: HashMap<String, String> = s
                    .all_deps()
                    .filter_map(|d| ids.get(d).map(|id| (d.to_string(), id.clone())))
                    .collect();
                let image_id = image_ids.get(&s.image).cloned().unwrap_or_default();
                let current = by_service.remove(&s.name).unwrap_or_default();
                let ahead = precreated.remove(&s.name);
                tasks.push(Box::pin(async move {
                    let res = converge(
                        s,
                        engine,
                        out,
                        slots,
                        image_id,
                        deps,
                        current,
                        ahead,
                        p.wait_timeout,
                    )
                    .await;
                    Ev::Up(s.name.clone(), res)
                }));
            }
        }
        match tasks.next().await {
            Some(Ev::Created(name, Ok(id))) => {
                creating.remove(name.as_str());
                precreated.insert(name, id);
            }
            Some(Ev::Created(name, Err(e))) => {
                creating.remove(name.as_str());
                let shown = plan
                    .service(&name)
                    .map_or(name.as_str(), |s| &s.container_name);
                let head = format!("Creating {shown:<width$} ...", width = out.width);
                out.line(head.clone());
                out.line(format!("{head} error"));
                errors.push(e);
            }
            Some(Ev::Up(name, Ok(id))) => {
                ids.insert(name, id);
            }
            Some(Ev::Up(_, Err(e))) => errors.push(e),
            None => break,
        }
    }
    drop(tasks);
    if !errors.is_empty() {
        // Containers created ahead for services that never got their turn: gone again, as
        // if they had never been created (best effort; `down` removes them anyway).
        let leftovers: Vec<BoxFuture<'_, ()>> = precreated
            .values()
            .map(|id| {
                async move {
                    let _ = engine.remove_container(id, true, false).await;
                }
                .boxed()
            })
            .collect();
        bounded(limit, leftovers).await;
        return Err(if errors.len() == 1 {
            errors.remove(0)
        } else {
            ComposeError::Several(errors)
        });
    }

    let now = engine
        .list_containers_filtered(&[project_label(p)])
        .await
        .map_err(ComposeError::engine("listing the project's containers"))?;
    let mut running_names: Vec<String> = now
        .iter()
        .filter(|c| is_running(c))
        .map(container_name)
        .collect();
    running_names.sort();
    Ok((running_names, pulled))
}

/// Runs `jobs` at most `limit` at a time; the results in the jobs' order. (Boxed futures in
/// a Vec, not a lazy iterator of closures: the latter trips the compiler's `Send` inference
/// for the spawned tasks that call `up`.)
async fn bounded<T>(limit: usize, jobs: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    futures_util::stream::iter(jobs)
        .buffered(limit.max(1))
        .collect()
        .await
}

/// The values, or the first error (in the jobs' order).
fn first_error<T>(results: Vec<Result<T, ComposeError>>) -> Result<Vec<T>, ComposeError> {
    results.into_iter().collect()
}

/// Inspects every image, pulling the missing ones; returns image ids by reference.
async fn ensure_images(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
) -> Result<(HashMap<String, String>, Vec<String>), ComposeError> {
    let plan = p.plan();
    let jobs = p.images().into_iter().map(|image| {
        async move {
            match engine.inspect_image(&image).await {
                Ok(i) => Ok((image, i.id.unwrap_or_default(), false)),
                Err(EngineError::NotFound(_)) => {
                    let service = plan
                        .services
                        .iter()
                        .find(|s| s.image == image)
                        .map(|s| s.name.as_str())
                        .unwrap_or_default();
                    out.line(format!("Pulling {service} ({image})..."));
                    match tokio::time::timeout(p.pull_timeout, engine.pull_image(&image)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            return Err(ComposeError::Image {
                                image: image.clone(),
                                message: e.to_string(),
                            })
                        }
                        Err(_) => {
                            return Err(ComposeError::Image {
                                image: image.clone(),
                                message: format!(
                                    "the pull did not finish within {}s",
                                    p.pull_timeout.as_secs()
                                ),
                            })
                        }
                    }
                    let i =
                        engine
                            .inspect_image(&image)
                            .await
                            .map_err(|e| ComposeError::Image {
                                image: image.clone(),
                                message: format!("pulled, but then: {e}"),
                            })?;
                    Ok((image, i.id.unwrap_or_default(), true))
                }
                Err(e) => Err(ComposeError::Engine {
                    action: format!("inspecting image {image}"),
                    source: e,
                }),
            }
        }
        .boxed()
    });
    let mut ids = HashMap::new();
    let mut pulled = Vec::new();
    let mut errors = Vec::new();
    for r in bounded(p.parallel_limit, jobs.collect()).await {
        match r {
            Ok((image, id, was_pulled)) => {
                if was_pulled {
                    pulled.push(image.clone());
                }
                ids.insert(image, id);
            }
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok((ids, pulled)),
        1 => Err(errors.remove(0)),
        _ => Err(ComposeError::Several(errors)),
    }
}

/// Checks the network `n`: true when it has to be created; an error when it cannot be used
/// (external and missing, or owned by another project).
async fn check_network(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    n: &super::plan::NetworkPlan,
) -> Result<bool, ComposeError> {
    let found = engine
        .list_networks(&[Filter::Name(n.name.clone())])
        .await
        .map_err(ComposeError::engine(format!(
            "looking up network {}",
            n.name
        )))?;
    let existing = found
        .iter()
        .find(|x| x.name.as_deref() == Some(n.name.as_str()));
    if n.external {
        return match existing {
            Some(_) => Ok(false),
            None => Err(external_missing("network", &n.key, &n.name)),
        };
    }
    if let Some(x) = existing {
        let owner = x
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_PROJECT))
            .map(String::as_str);
        if owner != Some(p.name()) {
            return Err(ComposeError::Invalid {
                scope: format!("network \"{}\"", n.key),
                message: format!(
                    "network \"{}\" already exists and does not belong to project \"{}\"",
                    n.name,
                    p.name()
                ),
            });
        }
        return Ok(false);
    }
    Ok(true)
}

/// Checks the volume `v`: true when it has to be created; an error when it is external and
/// missing.
async fn check_volume(
    engine: &dyn ContainerEngine,
    v: &super::plan::VolumePlan,
) -> Result<bool, ComposeError> {
    let found = engine
        .list_volumes_filtered(&[Filter::Name(v.name.clone())])
        .await
        .map_err(ComposeError::engine(format!(
            "looking up volume {}",
            v.name
        )))?;
    let exists = found.iter().any(|x| x.name == v.name);
    if v.external {
        if exists {
            return Ok(false);
        }
        return Err(external_missing("volume", &v.key, &v.name));
    }
    // An existing volume keeps its data, whoever created it (compose does the same).
    Ok(!exists)
}

/// An external network or volume (`kind`) that does not exist: `key` in the file, `name`
/// in Docker.
fn external_missing(kind: &str, key: &str, name: &str) -> ComposeError {
    ComposeError::Invalid {
        scope: format!("{kind} \"{key}\""),
        message: format!("declared as external, but {kind} \"{name}\" does not exist"),
    }
}

/// Brings one service to its planned state; returns its container id.
#[allow(clippy::too_many_arguments)]
async fn converge(
    s: &ServicePlan,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
    slots: &tokio::sync::Semaphore,
    image_id: String,
    deps: HashMap<String, String>,
    current: Vec<ContainerSummary>,
    precreated: Option<String>,
    wait_timeout: Duration,
) -> Result<String, ComposeError> {
    let waits = s.depends_on.iter().filter_map(|d| {
        let id = deps.get(&d.service)?;
        (d.condition != Condition::Started)
            .then(|| wait_for(engine, &s.name, &d.service, id, d.condition, wait_timeout))
    });
    for r in join_all(waits).await {
        if let Err(e) = r {
            if let Some(id) = &precreated {
                // Created ahead, never to be started: gone again (best effort).
                let _ = engine.remove_container(id, true, false).await;
            }
            return Err(e);
        }
    }
    // Waiting for a condition takes no slot; the engine work does. The semaphore is never
    // closed, so acquiring only fails if it were.
    let _slot = slots.acquire().await.map_err(|_| ComposeError::Invalid {
        scope: format!("service \"{}\"", s.name),
        message: "the operation was shut down".into(),
    })?;

    if let Some(id) = precreated {
        // Created ahead (a fresh service): only the start was waiting for the dependencies.
        let name = &s.container_name;
        out.step("Creating", name, async {
            engine
                .start_container(&id)
                .await
                .map_err(ComposeError::engine(format!("starting {name}")))
        })
        .await?;
        return Ok(id);
    }

    let (body, hash) = create_body(
        s,
        &image_id,
        s.network_of.as_ref().and_then(|o| deps.get(o)),
    );

    let up_to_date = current
        .iter()
        .filter(|c| label(c, LABEL_CONFIG_HASH) == Some(hash.as_str()))
        .max_by_key(|c| container_name(c) == s.container_name);
    if let Some(keep) = up_to_date {
        let keep_id = keep.id.clone().unwrap_or_default();
        for c in current.iter().filter(|c| c.id != keep.id) {
            let name = container_name(c);
            out.step(
                "Removing",
                &name,
                remove_container(engine, c, s.stop_timeout),
            )
            .await?;
        }
        let name = container_name(keep);
        if is_running(keep) {
            out.line(format!("{name} is up-to-date"));
        } else {
            out.step("Starting", &name, async {
                engine
                    .start_container(&keep_id)
                    .await
                    .map_err(ComposeError::engine(format!("starting {name}")))
            })
            .await?;
        }
        return Ok(keep_id);
    }

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
        for c in &current {
            remove_container(engine, c, s.stop_timeout).await?;
        }
        let name = &s.container_name;
        let id = create(s, engine, body).await?;
        engine
            .start_container(&id)
            .await
            .map_err(ComposeError::engine(format!("starting {name}")))?;
        Ok(id)
    })
    .await
}

/// The service's create body with its config-hash label, and the hash. `network_of` is the
/// container id of the service named by `network_mode: service:x`.
fn create_body(
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
async fn create(
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

async fn remove_container(
    engine: &dyn ContainerEngine,
    c: &ContainerSummary,
    timeout: u32,
) -> Result<(), ComposeError> {
    let id = c.id.clone().unwrap_or_default();
    let name = container_name(c);
    if is_running(c) {
        engine
            .stop_container_with_timeout(&id, timeout)
            .await
            .map_err(ComposeError::engine(format!("stopping {name}")))?;
    }
    match engine.remove_container(&id, true, false).await {
        Ok(()) | Err(EngineError::NotFound(_)) => Ok(()),
        Err(e) => Err(ComposeError::Engine {
            action: format!("removing {name}"),
            source: e,
        }),
    }
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
        let state = info.state.unwrap_or_default();
        let exited = matches!(
            state.status,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
        );
        let code = state.exit_code.unwrap_or_default();
        match cond {
            Condition::Started => return Ok(()),
            Condition::Healthy => {
                let health = state.health.as_ref().and_then(|h| h.status);
                match health {
                    Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                    Some(HealthStatusEnum::UNHEALTHY) => return Err(fail("is unhealthy".into())),
                    None | Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY) => {
                        return Err(fail(
                            "has no healthcheck, so it can never become healthy".into(),
                        ))
                    }
                    Some(HealthStatusEnum::STARTING) => {}
                }
                if exited {
                    return Err(fail(format!(
                        "exited with code {code} before becoming healthy"
                    )));
                }
            }
            Condition::CompletedSuccessfully => {
                if exited {
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(fail(format!(
                            "did not complete successfully: exit code {code}"
                        )))
                    };
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let what = match cond {
                Condition::Healthy => "become healthy",
                _ => "complete",
            };
            return Err(fail(format!(
                "did not {what} within {}s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(500))).await;
    }
}

pub async fn down(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    opts: &DownOptions,
    on_line: &(dyn Fn(&str) + Send + Sync),
) -> Result<DownResult, ComposeError> {
    // The project's networks are listed together with its containers (no container of the
    // project creates one), and removed after the containers.
    let filter = [project_label(p)];
    let (containers, networks) = tokio::join!(
        engine.list_containers_filtered(&filter),
        engine.list_networks(&filter)
    );
    let containers = containers.map_err(ComposeError::engine("listing the project's containers"));
    let containers = match containers {
        Ok(c) => c,
        Err(e) => {
            on_line(&format!("ERROR: {e}"));
            return Err(e);
        }
    };
    let out = Output::new(on_line, width(p, &containers));
    for w in p.warnings() {
        out.line(w.clone());
    }
    let plan = p.plan();
    let mut result = DownResult::default();
    let mut errors: Vec<ComposeError> = Vec::new();

    // Stop and remove, dependents first. A service's containers are stopped once every
    // service depending on it has its containers stopped; containers of services no longer in
    // the file go first (they count as dependents of every service). Each container is
    // removed as soon as it has stopped, so removals overlap the remaining stops.
    // Independent services go concurrently, at most `parallel_limit` engine calls at once.
    let limit = p.parallel_limit.max(1);
    let slots = tokio::sync::Semaphore::new(limit);
    let slots = &slots;
    let known: HashSet<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
    let group_of: Vec<Option<&str>> = containers
        .iter()
        .map(|c| label(c, LABEL_SERVICE).filter(|s| known.contains(s)))
        .collect();
    let mut dependents: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in &plan.services {
        for d in s.all_deps() {
            dependents.entry(d).or_default().push(s.name.as_str());
        }
    }
    // Containers not yet stopped, by group (None: services no longer in the file).
    let mut left: HashMap<Option<&str>, usize> = HashMap::new();
    left.insert(None, 0);
    for s in &plan.services {
        left.insert(Some(s.name.as_str()), 0);
    }
    for g in &group_of {
        *left.entry(*g).or_default() += 1;
    }
    let groups: Vec<Option<&str>> = std::iter::once(None)
        .chain(plan.services.iter().map(|s| Some(s.name.as_str())))
        .collect();
    let mut launched: HashSet<Option<&str>> = HashSet::new();
    let timeout_of = |c: &ContainerSummary| {
        opts.timeout.unwrap_or_else(|| {
            label(c, LABEL_SERVICE)
                .and_then(|s| plan.service(s))
                .map_or(DEFAULT_STOP_TIMEOUT, |s| s.stop_timeout)
        })
    };
    enum Done {
        Stopped(usize, Result<(), ComposeError>),
        Removed(usize, Result<(), ComposeError>),
    }
    let out_ref = &out;
    let stop = |i: usize| -> BoxFuture<'_, Done> {
        let c = &containers[i];
        Box::pin(async move {
            if !is_running(c) {
                return Done::Stopped(i, Ok(()));
            }
            let name = container_name(c);
            let id = c.id.clone().unwrap_or_default();
            let _slot = slots.acquire().await;
            let r = out_ref
                .step("Stopping", &name, async {
                    engine
                        .stop_container_with_timeout(&id, timeout_of(c))
                        .await
                        .map_err(ComposeError::engine(format!("stopping {name}")))
                })
                .await;
            Done::Stopped(i, r)
        })
    };
    let remove = |i: usize| -> BoxFuture<'_, Done> {
        let c = &containers[i];
        Box::pin(async move {
            let name = container_name(c);
            let id = c.id.clone().unwrap_or_default();
            let _slot = slots.acquire().await;
            let r = out_ref
                .step("Removing", &name, async {
                    match engine
                        .remove_container(&id, true, opts.remove_volumes)
                        .await
                    {
                        Ok(()) | Err(EngineError::NotFound(_)) => Ok(()),
                        Err(e) => Err(ComposeError::Engine {
                            action: format!("removing {name}"),
                            source: e,
                        }),
                    }
                })
                .await;
            Done::Removed(i, r)
        })
    };
    let mut removed: Vec<bool> = vec![false; containers.len()];
    let mut tasks = FuturesUnordered::new();
    loop {
        // Launching changes no count, so one pass finds every group that is ready now.
        for g in &groups {
            if launched.contains(g) {
                continue;
            }
            let ready = match g {
                None => true,
                Some(s) => {
                    left[&None] == 0
                        && dependents
                            .get(s)
                            .is_none_or(|ds| ds.iter().all(|d| left[&Some(*d)] == 0))
                }
            };
            if ready {
                launched.insert(*g);
                for (i, cg) in group_of.iter().enumerate() {
                    if cg == g {
                        tasks.push(stop(i));
                    }
                }
            }
        }
        match tasks.next().await {
            Some(Done::Stopped(i, r)) => {
                if let Some(n) = left.get_mut(&group_of[i]) {
                    *n -= 1;
                }
                if let Err(e) = r {
                    errors.push(e);
                }
                // Removed even when the stop failed (force), as before.
                tasks.push(remove(i));
            }
            Some(Done::Removed(i, r)) => match r {
                Ok(()) => removed[i] = true,
                Err(e) => errors.push(e),
            },
            None => break,
        }
    }
    drop(tasks);
    result.removed_containers = containers
        .iter()
        .zip(&removed)
        .filter(|(_, r)| **r)
        .map(|(c, _)| container_name(c))
        .collect();

    // Networks last, announced in the engine's order, removed concurrently.
    match networks {
        Ok(nets) => {
            let names: Vec<String> = nets
                .iter()
                .map(|n| n.name.clone().unwrap_or_default())
                .collect();
            for name in &names {
                out.line(format!("Removing network {name}"));
            }
            let removals = nets
                .iter()
                .zip(&names)
                .map(|(n, name)| {
                    async move {
                        match engine.remove_network(n.id.as_deref().unwrap_or(name)).await {
                            Ok(()) | Err(EngineError::NotFound(_)) => Ok(name.clone()),
                            Err(e) => Err(ComposeError::Engine {
                                action: format!("removing network {name}"),
                                source: e,
                            }),
                        }
                    }
                    .boxed()
                })
                .collect();
            for r in bounded(limit, removals).await {
                match r {
                    Ok(name) => result.removed_networks.push(name),
                    Err(e) => errors.push(e),
                }
            }
        }
        Err(e) => errors.push(ComposeError::Engine {
            action: "listing the project's networks".into(),
            source: e,
        }),
    }

    if opts.remove_volumes {
        match engine.list_volumes_filtered(&[project_label(p)]).await {
            Ok(vols) => {
                for v in vols {
                    let users = engine
                        .list_containers_filtered(&[Filter::Volume(v.name.clone())])
                        .await;
                    match users {
                        Ok(u) if !u.is_empty() => {
                            let names: Vec<String> = u.iter().map(container_name).collect();
                            out.line(format!(
                                "Volume {} is in use by {}, kept",
                                v.name,
                                names.join(", ")
                            ));
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            errors.push(ComposeError::Engine {
                                action: format!("checking who uses volume {}", v.name),
                                source: e,
                            });
                            continue;
                        }
                    }
                    out.line(format!("Removing volume {}", v.name));
                    match engine.remove_volume(&v.name, false).await {
                        Ok(()) | Err(EngineError::NotFound(_)) => {
                            result.removed_volumes.push(v.name.clone())
                        }
                        Err(e) => errors.push(ComposeError::Engine {
                            action: format!("removing volume {}", v.name),
                            source: e,
                        }),
                    }
                }
            }
            Err(e) => errors.push(ComposeError::Engine {
                action: "listing the project's volumes".into(),
                source: e,
            }),
        }
    }

    if opts.remove_images {
        let mut images: Vec<String> = p.images();
        for c in &containers {
            if let Some(i) = &c.image {
                if !images.contains(i) {
                    images.push(i.clone());
                }
            }
        }
        for image in images {
            if opts.protected_images.contains(&image) {
                out.line(format!("Image {image} is needed by another app, kept"));
                continue;
            }
            match engine
                .list_containers_filtered(&[Filter::Ancestor(image.clone())])
                .await
            {
                Ok(u) if !u.is_empty() => {
                    let names: Vec<String> = u.iter().map(container_name).collect();
                    out.line(format!(
                        "Image {image} is in use by {}, kept",
                        names.join(", ")
                    ));
                    continue;
                }
                Ok(_) => {}
                // An image that is gone cannot be filtered on: nothing to remove.
                Err(EngineError::NotFound(_)) | Err(EngineError::Rejected(_)) => {
                    out.line(format!("Image {image} not found."));
                    continue;
                }
                Err(e) => {
                    errors.push(ComposeError::Engine {
                        action: format!("checking who uses image {image}"),
                        source: e,
                    });
                    continue;
                }
            }
            out.line(format!("Removing image {image}"));
            match engine.remove_image(&image, false).await {
                Ok(_) => result.removed_images.push(image),
                Err(EngineError::NotFound(_)) => out.line(format!("Image {image} not found.")),
                Err(EngineError::Conflict(m)) => {
                    out.line(format!("Image {image} is still needed, kept: {m}"))
                }
                Err(e) => errors.push(ComposeError::Engine {
                    action: format!("removing image {image}"),
                    source: e,
                }),
            }
        }
    }

    if errors.is_empty() {
        result.lines = out.take();
        Ok(result)
    } else {
        let e = if errors.len() == 1 {
            errors.remove(0)
        } else {
            ComposeError::Several(errors)
        };
        out.line(format!("ERROR: {e}"));
        Err(e)
    }
}

pub async fn status(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
) -> Result<Vec<ServiceStatus>, ComposeError> {
    let containers = engine
        .list_containers_filtered(&[
            project_label(p),
            Filter::Label(format!("{LABEL_ONEOFF}=False")),
        ])
        .await
        .map_err(ComposeError::engine("listing the project's containers"))?;
    let to_status = |c: &ContainerSummary| ContainerStatus {
        name: container_name(c),
        id: c.id.clone().unwrap_or_default(),
        image: c.image.clone().unwrap_or_default(),
        state: c.state.map(|s| s.to_string()).unwrap_or_default(),
        status: c.status.clone().unwrap_or_default(),
        running: is_running(c),
        image_id: c.image_id.clone().unwrap_or_default(),
        created: c.created,
        ports: port_mappings(c),
    };
    let mut out: Vec<ServiceStatus> = p
        .plan()
        .services
        .iter()
        .map(|s| ServiceStatus {
            service: s.name.clone(),
            defined: true,
            containers: containers
                .iter()
                .filter(|c| label(c, LABEL_SERVICE) == Some(s.name.as_str()))
                .map(to_status)
                .collect(),
        })
        .collect();
    for c in &containers {
        let service = label(c, LABEL_SERVICE).unwrap_or_default();
        if p.plan().service(service).is_some() {
            continue;
        }
        match out.iter_mut().find(|s| s.service == service) {
            Some(s) => s.containers.push(to_status(c)),
            None => out.push(ServiceStatus {
                service: service.to_string(),
                defined: false,
                containers: vec![to_status(c)],
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The scheduler against a fake engine: concurrency within a level, order across levels.

    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::Barrier;

    use bollard::models::{
        ContainerCreateBody, ContainerInspectResponse, ContainerState, ContainerSummary,
        EndpointSettings, Health, ImageInspect, Network, NetworkCreateRequest, Volume,
        VolumeCreateRequest,
    };

    use super::*;
    use crate::core::compose::ComposePolicy;
    use crate::core::engine::EngineResult;

    #[derive(Default)]
    struct Fake {
        containers: Mutex<Vec<ContainerSummary>>,
        networks: Mutex<Vec<Network>>,
        /// (operation, service) in call order; `+x`/`-x` mark the start/end of a slow call.
        log: Mutex<Vec<String>>,
        in_flight: Mutex<(usize, usize)>,
        /// Calls (`create a`, `stop b`, `network n`, ...) that wait at a shared barrier until
        /// all of its members are in flight: run one after the other they never meet, and
        /// the guard below fails the test instead of timing anything.
        gates: Mutex<HashMap<String, Arc<Barrier>>>,
    }

    impl Fake {
        fn service_of(&self, id: &str) -> String {
            let cs = self.containers.lock().unwrap();
            let c = cs.iter().find(|c| c.id.as_deref() == Some(id)).unwrap();
            c.labels.as_ref().unwrap()[LABEL_SERVICE].clone()
        }

        /// Makes every call in `calls` wait until all of them are in flight together. `verb *`
        /// gates every call of that kind, in groups of `calls.len()`.
        fn gate(&self, calls: &[&str]) {
            let barrier = Arc::new(Barrier::new(calls.len()));
            let mut gates = self.gates.lock().unwrap();
            for c in calls {
                gates.insert(c.to_string(), barrier.clone());
            }
        }

        async fn slow(&self, what: String) {
            let gate = {
                let gates = self.gates.lock().unwrap();
                let verb = what.split(' ').next().unwrap_or_default();
                gates
                    .get(&what)
                    .or_else(|| gates.get(&format!("{verb} *")))
                    .cloned()
            };
            if let Some(barrier) = gate {
                // A guard against a hang, not a timing assertion.
                tokio::time::timeout(Duration::from_secs(30), barrier.wait())
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "{what} never ran together with the rest of its gate: {:?}",
                            self.log.lock().unwrap()
                        )
                    });
            }
            {
                let mut f = self.in_flight.lock().unwrap();
                f.0 += 1;
                f.1 = f.1.max(f.0);
                self.log.lock().unwrap().push(format!("+{what}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.in_flight.lock().unwrap().0 -= 1;
            self.log.lock().unwrap().push(format!("-{what}"));
        }

        fn max_in_flight(&self) -> usize {
            std::mem::take(&mut *self.in_flight.lock().unwrap()).1
        }

        fn position(&self, entry: &str) -> usize {
            let log = self.log.lock().unwrap();
            log.iter()
                .position(|l| l == entry)
                .unwrap_or_else(|| panic!("{entry} not in {log:?}"))
        }
    }

    crate::testutil::fake_engine! {
        impl ContainerEngine for Fake;
        not_faked: version, list_images, load_images, export_image, remove_image, prune_images,
            list_containers, stop_container, restart_container, prune_containers, list_volumes,
            inspect_volume, remove_volume, prune_volumes;
        async fn inspect_image(&self, id: &str) -> EngineResult<ImageInspect> {
            Ok(ImageInspect {
                id: Some(format!("sha256:{id}")),
                ..Default::default()
            })
        }
        async fn inspect_container(&self, _id: &str) -> EngineResult<ContainerInspectResponse> {
            Ok(ContainerInspectResponse {
                state: Some(ContainerState {
                    status: Some(ContainerStateStatusEnum::RUNNING),
                    health: Some(Health {
                        status: Some(HealthStatusEnum::HEALTHY),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
        async fn start_container(&self, id: &str) -> EngineResult<()> {
            let svc = self.service_of(id);
            self.slow(format!("start {svc}")).await;
            for c in self.containers.lock().unwrap().iter_mut() {
                if c.id.as_deref() == Some(id) {
                    c.state = Some(ContainerSummaryStateEnum::RUNNING);
                }
            }
            Ok(())
        }
        async fn remove_container(&self, id: &str, _force: bool, _v: bool) -> EngineResult<()> {
            let svc = self.service_of(id);
            self.log.lock().unwrap().push(format!("remove {svc}"));
            self.containers
                .lock()
                .unwrap()
                .retain(|c| c.id.as_deref() != Some(id));
            Ok(())
        }
        async fn list_containers_filtered(
            &self,
            filters: &[Filter],
        ) -> EngineResult<Vec<ContainerSummary>> {
            let cs = self.containers.lock().unwrap();
            Ok(cs
                .iter()
                .filter(|c| {
                    filters.iter().all(|f| match f {
                        Filter::Label(l) => {
                            let (k, v) = l.split_once('=').unwrap_or((l, ""));
                            c.labels.as_ref().unwrap().get(k).map(String::as_str) == Some(v)
                        }
                        _ => false,
                    })
                })
                .cloned()
                .collect())
        }
        async fn create_container(
            &self,
            name: &str,
            body: ContainerCreateBody,
        ) -> EngineResult<String> {
            let svc = body.labels.as_ref().unwrap()[LABEL_SERVICE].clone();
            self.slow(format!("create {svc}")).await;
            let id = format!("id-{name}");
            self.containers.lock().unwrap().push(ContainerSummary {
                id: Some(id.clone()),
                names: Some(vec![format!("/{name}")]),
                labels: body.labels,
                state: Some(ContainerSummaryStateEnum::CREATED),
                ..Default::default()
            });
            Ok(id)
        }
        async fn stop_container_with_timeout(&self, id: &str, _t: u32) -> EngineResult<()> {
            let svc = self.service_of(id);
            self.slow(format!("stop {svc}")).await;
            Ok(())
        }
        async fn list_networks(&self, filters: &[Filter]) -> EngineResult<Vec<Network>> {
            let nets = self.networks.lock().unwrap();
            Ok(nets
                .iter()
                .filter(|n| {
                    filters.iter().all(|f| match f {
                        Filter::Name(x) => n.name.as_ref() == Some(x),
                        _ => true,
                    })
                })
                .cloned()
                .collect())
        }
        async fn remove_network(&self, id: &str) -> EngineResult<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("remove network {id}"));
            self.networks
                .lock()
                .unwrap()
                .retain(|n| n.id.as_deref() != Some(id));
            Ok(())
        }
        async fn create_network(&self, request: NetworkCreateRequest) -> EngineResult<String> {
            self.slow(format!("network {}", request.name)).await;
            self.networks.lock().unwrap().push(Network {
                id: Some(request.name.clone()),
                name: Some(request.name.clone()),
                labels: request.labels.clone(),
                ..Default::default()
            });
            Ok(request.name)
        }
        async fn connect_network(
            &self,
            _network: &str,
            _container: &str,
            _endpoint: EndpointSettings,
        ) -> EngineResult<()> {
            Ok(())
        }
        async fn list_volumes_filtered(&self, _filters: &[Filter]) -> EngineResult<Vec<Volume>> {
            Ok(Vec::new())
        }
        async fn create_volume(&self, request: VolumeCreateRequest) -> EngineResult<Volume> {
            let name = request.name.unwrap_or_default();
            self.slow(format!("volume {name}")).await;
            Ok(Volume {
                name,
                ..Default::default()
            })
        }
    }

    fn project(yaml: &str) -> ComposeProject {
        ComposeProject::from_text(
            Path::new("/tmp/app"),
            Path::new("/tmp/app/compose.yaml"),
            yaml,
            "p",
            "p",
            &HashMap::new(),
            &ComposePolicy::default(),
        )
        .unwrap()
    }

    const YAML: &str = r#"
services:
  a: {image: x}
  b: {image: x}
  c: {image: x}
  d: {image: x, depends_on: {a: {condition: service_healthy}, b: {condition: service_started}}}
"#;

    #[tokio::test]
    async fn independent_services_run_concurrently_dependents_after() {
        let fake = Fake::default();
        let p = project(YAML);
        let res = p.up(&fake, &|_| {}).await.unwrap();
        // All four are fresh: created together; d (needs a healthy, b started) starts last.
        assert_eq!(fake.max_in_flight(), 4, "{:?}", fake.log.lock().unwrap());
        assert!(fake.position("-start a") < fake.position("+start d"));
        assert!(fake.position("-start b") < fake.position("+start d"));
        assert_eq!(res.running_containers, ["p_a_1", "p_b_1", "p_c_1", "p_d_1"]);

        // Unchanged: nothing is created again.
        fake.log.lock().unwrap().clear();
        let res = p.up(&fake, &|_| {}).await.unwrap();
        assert!(fake.log.lock().unwrap().is_empty(), "{:?}", res.lines);
        assert!(res.lines.contains(&"p_d_1 is up-to-date".to_string()));

        // Down: d (a dependent) and c (nobody depends on it) stop first, together; a and b
        // only after d has stopped.
        fake.log.lock().unwrap().clear();
        fake.gate(&["stop c", "stop d"]);
        let res = p
            .down(&fake, &DownOptions::default(), &|_| {})
            .await
            .unwrap();
        let d_done = fake.position("-stop d");
        for s in ["a", "b"] {
            assert!(d_done < fake.position(&format!("+stop {s}")));
        }
        assert_eq!(res.removed_containers.len(), 4);
        assert!(fake.containers.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failing_service_stops_the_rollout_and_says_so() {
        let fake = Fake::default();
        // The fake's containers run forever: a completion wait can only time out.
        let p = project(
            "services: {a: {image: x, depends_on: {b: {condition: service_completed_successfully}}}, b: {image: x}}",
        );
        let lines = Mutex::new(Vec::new());
        let mut p = p;
        p.set_wait_timeout(Duration::from_millis(300));
        let e = p
            .up(&fake, &|l| lines.lock().unwrap().push(l.to_string()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("did not complete within 0s"), "{e}");
        let lines = lines.into_inner().unwrap();
        assert!(lines
            .last()
            .unwrap()
            .starts_with("ERROR: service \"a\": dependency \"b\""));
        assert!(!lines.iter().any(|l| l.contains("p_a_1")), "{lines:?}");
        // a's container, created ahead of b's completion, went again with the failure.
        let left: Vec<String> = fake
            .containers
            .lock()
            .unwrap()
            .iter()
            .map(container_name)
            .collect();
        assert_eq!(left, ["p_b_1"]);
    }

    const FORK: &str = r#"
services:
  a: {image: x, volumes: ["data:/data"], networks: [n]}
  b: {image: x, networks: [n]}
  c: {image: x, networks: [n], depends_on: [a]}
  d:
    image: x
    networks: [n]
    depends_on: {a: {condition: service_started}, b: {condition: service_healthy}}
networks:
  n: {}
volumes:
  data: {}
"#;

    /// up: the network and the volume are created together; then all four containers (all
    /// fresh) are created together; a and b (independent) start together; c (needs a) and d
    /// (needs a, b healthy) start only after their dependencies started, and together. down: the reverse, c and d together first, each
    /// container removed once stopped, the network after all containers. The gates make
    /// this deterministic: run in sequence, a gated call would wait for its partner forever.
    #[tokio::test]
    async fn independent_work_overlaps_and_dependency_order_holds() {
        let fake = Fake::default();
        let p = project(FORK);
        fake.gate(&["network p_n", "volume p_data"]);
        fake.gate(&["create a", "create b", "create c", "create d"]);
        fake.gate(&["start a", "start b"]);
        fake.gate(&["start c", "start d"]);
        let lines = Mutex::new(Vec::new());
        let res = p
            .up(&fake, &|l| lines.lock().unwrap().push(l.to_string()))
            .await
            .unwrap();
        let pos = |e: &str| fake.position(e);
        for (dep, dependent) in [("a", "c"), ("a", "d"), ("b", "d")] {
            assert!(
                pos(&format!("-start {dep}")) < pos(&format!("+start {dependent}")),
                "{dependent} started before {dep} started: {:?}",
                fake.log.lock().unwrap()
            );
        }
        for s in ["a", "b", "c", "d"] {
            assert!(pos("-network p_n") < pos(&format!("+create {s}")));
            assert!(pos("-volume p_data") < pos(&format!("+create {s}")));
        }
        assert_eq!(res.running_containers, ["p_a_1", "p_b_1", "p_c_1", "p_d_1"]);
        // Network and volume lines come first, in plan order; every service says done.
        let lines = lines.into_inner().unwrap();
        assert_eq!(lines, res.lines);
        assert_eq!(
            lines[..2],
            [
                "Creating network \"p_n\" with the default driver",
                "Creating volume \"p_data\" with default driver",
            ]
        );
        for s in ["a", "b", "c", "d"] {
            assert!(
                lines.contains(&format!("Creating p_{s}_1 ... done")),
                "{lines:?}"
            );
        }

        fake.log.lock().unwrap().clear();
        fake.gate(&["stop c", "stop d"]);
        let res = p
            .down(&fake, &DownOptions::default(), &|_| {})
            .await
            .unwrap();
        for (dependent, dep) in [("c", "a"), ("d", "a"), ("d", "b")] {
            assert!(
                pos(&format!("-stop {dependent}")) < pos(&format!("+stop {dep}")),
                "{dep} stopped before {dependent}: {:?}",
                fake.log.lock().unwrap()
            );
        }
        for s in ["a", "b", "c", "d"] {
            assert!(pos(&format!("-stop {s}")) < pos(&format!("remove {s}")));
            assert!(pos(&format!("remove {s}")) < pos("remove network p_n"));
        }
        assert_eq!(res.removed_networks, ["p_n"]);
        let mut removed = res.removed_containers.clone();
        removed.sort();
        assert_eq!(removed, ["p_a_1", "p_b_1", "p_c_1", "p_d_1"]);
        assert!(fake.containers.lock().unwrap().is_empty());
    }

    /// Six independent services with a limit of 2: never more than two engine calls at once.
    #[tokio::test]
    async fn concurrency_is_bounded() {
        let fake = Fake::default();
        let mut p = project(
            "services: {a: {image: x}, b: {image: x}, c: {image: x}, d: {image: x}, e: {image: x}, f: {image: x}}",
        );
        p.set_parallel_limit(2);
        // Creates meet in pairs (so two do run at once); more than two would show below.
        fake.gate(&["create *", "create *"]);
        p.up(&fake, &|_| {}).await.unwrap();
        assert_eq!(fake.max_in_flight(), 2, "{:?}", fake.log.lock().unwrap());
        let res = p
            .down(&fake, &DownOptions::default(), &|_| {})
            .await
            .unwrap();
        assert_eq!(res.removed_containers.len(), 6);
        assert_eq!(fake.max_in_flight(), 2, "{:?}", fake.log.lock().unwrap());
    }
}
