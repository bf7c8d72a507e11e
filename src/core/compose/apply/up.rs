//! `up`: images, networks and volumes first ([`super::prepare`]), orphans removed, then the
//! services through the scheduler, forwards.
//!
//! A fresh service (no container yet, no `network_mode: service:x`) has its container
//! created right away, whatever it depends on: only its start waits for the dependencies.
//! Each service is then started (or converged: kept, started, recreated) as soon as every
//! service it depends on is up and their healthy/completed conditions are met (the waits
//! take no slot). The `Creating x ... done` lines still frame the start, in dependency order.

use std::collections::HashMap;

use bollard::models::ContainerSummary;
use futures_util::future::{BoxFuture, FutureExt};

use super::super::plan::{ServicePlan, DEFAULT_STOP_TIMEOUT, LABEL_SERVICE};
use super::converge::{converge, create, create_body, start_created, wait_for_dependencies};
use super::prepare::{prepare, Prepared};
use super::schedule::{order, Direction, OnError, Scheduler, Slot};
use super::{
    bounded, container_name, first_error, is_running, label, one_error, project_label,
    remove_container, width, Output, UpResult,
};
use crate::core::compose::{ComposeError, ComposeProject};
use crate::core::engine::ContainerEngine;

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

/// The running containers' names and the images pulled.
async fn up_inner(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
) -> Result<(Vec<String>, Vec<String>), ComposeError> {
    let Prepared {
        image_ids,
        pulled,
        existing,
    } = prepare(p, engine, out).await?;
    let by_service = remove_orphans(p, engine, out, existing).await?;
    start_services(p, engine, out, &image_ids, by_service).await?;
    let now = engine
        .list_containers_filtered(&[project_label(p)])
        .await
        .map_err(ComposeError::engine("listing the project's containers"))?;
    let mut running: Vec<String> = now
        .iter()
        .filter(|c| is_running(c))
        .map(container_name)
        .collect();
    running.sort();
    Ok((running, pulled))
}

/// Removes the containers of services no longer in the file; returns the others by service.
async fn remove_orphans(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
    existing: Vec<ContainerSummary>,
) -> Result<HashMap<String, Vec<ContainerSummary>>, ComposeError> {
    let mut by_service: HashMap<String, Vec<ContainerSummary>> = HashMap::new();
    let mut orphans = Vec::new();
    for c in existing {
        match label(&c, LABEL_SERVICE) {
            Some(s) if p.plan().service(s).is_some() => {
                by_service.entry(s.to_string()).or_default().push(c)
            }
            _ => orphans.push(c),
        }
    }
    for c in &orphans {
        let name = container_name(c);
        out.line(format!("Removing orphan container \"{name}\""));
    }
    let removals = orphans
        .iter()
        .map(|c| remove_container(engine, c, DEFAULT_STOP_TIMEOUT).boxed())
        .collect();
    first_error(bounded(p.parallel_limit, removals).await)?;
    Ok(by_service)
}

/// The jobs of `up`: a service's container created ahead (fresh services), the wait for its
/// dependencies' conditions, its start (or convergence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Step<'p> {
    Create(&'p str),
    Ready(&'p str),
    Start(&'p str),
}

/// Converges every service, dependencies first; on the first failure nothing more starts,
/// and containers created ahead for services that never got their turn are removed again.
async fn start_services(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
    image_ids: &HashMap<String, String>,
    mut by_service: HashMap<String, Vec<ContainerSummary>>,
) -> Result<(), ComposeError> {
    let plan = p.plan();
    let mut jobs = Scheduler::new(p.parallel_limit, OnError::Halt);
    let image_id = |s: &ServicePlan| image_ids.get(&s.image).cloned().unwrap_or_default();
    let fresh: Vec<&str> = plan
        .services
        .iter()
        .filter(|s| s.network_of.is_none() && !by_service.contains_key(&s.name))
        .map(|s| s.name.as_str())
        .collect();
    for s in plan
        .services
        .iter()
        .filter(|s| fresh.contains(&s.name.as_str()))
    {
        let work = create_ahead(s, engine, out, image_id(s));
        jobs.add(Step::Create(&s.name), Vec::new(), Slot::Needed, work);
    }
    for (name, deps) in order(plan, Direction::Forward) {
        let s = plan.service(name).expect("order lists the plan's services");
        let started: Vec<Step<'_>> = deps.iter().map(|d| Step::Start(d)).collect();
        let ready = move |ids| wait(p, engine, s, ids);
        jobs.add(Step::Ready(name), started, Slot::None, ready);
        let mut after = vec![Step::Ready(name)];
        after.extend(fresh.contains(&name).then_some(Step::Create(name)));
        after.extend(s.network_of.as_deref().map(Step::Start));
        let current = by_service.remove(name).unwrap_or_default();
        let work = start(s, engine, out, image_id(s), current);
        jobs.add(Step::Start(name), after, Slot::Needed, work);
    }
    let outcome = jobs.run().await;
    if outcome.errors.is_empty() {
        return Ok(());
    }
    // Created ahead for services that never got their turn: gone again, as if they had
    // never been created (best effort; `down` removes them anyway).
    let leftovers: Vec<BoxFuture<'_, ()>> = fresh
        .iter()
        .filter(|s| !outcome.launched.contains(&Step::Start(s)))
        .filter_map(|s| outcome.outputs.get(&Step::Create(s)).cloned())
        .map(|id| {
            async move {
                let _ = engine.remove_container(&id, true, false).await;
            }
            .boxed()
        })
        .collect();
    bounded(p.parallel_limit, leftovers).await;
    Err(one_error(outcome.errors))
}

type Ids<'p> = HashMap<Step<'p>, String>;

/// Creates the fresh service's container; a failure is framed as compose frames it.
fn create_ahead<'a>(
    s: &'a ServicePlan,
    engine: &'a dyn ContainerEngine,
    out: &'a Output<'_>,
    image_id: String,
) -> impl FnOnce(Ids<'a>) -> BoxFuture<'a, Result<String, ComposeError>> + Send + 'a {
    move |_| {
        Box::pin(async move {
            let (body, _) = create_body(s, &image_id, None);
            let created = create(s, engine, body).await;
            if created.is_err() {
                let head = format!(
                    "Creating {:<width$} ...",
                    s.container_name,
                    width = out.width
                );
                out.line(head.clone());
                out.line(format!("{head} error"));
            }
            created
        })
    }
}

/// Waits for the conditions on the service's dependencies (their container ids in `ids`).
fn wait<'a>(
    p: &'a ComposeProject,
    engine: &'a dyn ContainerEngine,
    s: &'a ServicePlan,
    ids: Ids<'a>,
) -> BoxFuture<'a, Result<String, ComposeError>> {
    let deps: HashMap<String, String> = ids
        .into_iter()
        .filter_map(|(step, id)| match step {
            Step::Start(d) => Some((d.to_string(), id)),
            _ => None,
        })
        .collect();
    Box::pin(async move {
        wait_for_dependencies(s, engine, &deps, p.wait_timeout).await?;
        Ok(String::new())
    })
}

/// Starts the container created ahead, or converges the service's current containers.
fn start<'a>(
    s: &'a ServicePlan,
    engine: &'a dyn ContainerEngine,
    out: &'a Output<'_>,
    image_id: String,
    current: Vec<ContainerSummary>,
) -> impl FnOnce(Ids<'a>) -> BoxFuture<'a, Result<String, ComposeError>> + Send + 'a {
    move |ids| {
        Box::pin(async move {
            if let Some(id) = ids.get(&Step::Create(&s.name)) {
                return start_created(s, engine, out, id.clone()).await;
            }
            let network_of = s
                .network_of
                .as_deref()
                .and_then(|o| ids.get(&Step::Start(o)));
            converge(s, engine, out, &image_id, network_of, current).await
        })
    }
}
