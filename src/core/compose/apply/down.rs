//! `down`: the project's containers stopped and removed through the scheduler, backwards
//! (dependents first), then its networks, and its volumes and images when asked and unused.
//! It keeps going past errors, so a half-failed teardown still removes as much as it can,
//! and reports them all.

use bollard::models::{ContainerSummary, Network, Volume};
use futures_util::future::{BoxFuture, FutureExt};

use super::super::plan::{Plan, DEFAULT_STOP_TIMEOUT, LABEL_SERVICE};
use super::schedule::{order, Direction, OnError, Scheduler, Slot};
use super::{
    bounded, container_name, is_running, label, one_error, project_label, width, DownOptions,
    DownResult, Output,
};
use crate::core::compose::{ComposeError, ComposeProject};
use crate::core::engine::{ContainerEngine, EngineError, Filter};

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
    let containers = match containers {
        Ok(c) => c,
        Err(e) => {
            let e = ComposeError::engine("listing the project's containers")(e);
            on_line(&format!("ERROR: {e}"));
            return Err(e);
        }
    };
    let out = Output::new(on_line, width(p, &containers));
    for w in p.warnings() {
        out.line(w.clone());
    }
    let mut t = Teardown {
        p,
        engine,
        out: &out,
        opts,
        errors: Vec::new(),
    };
    let mut result = DownResult {
        removed_containers: stop_and_remove(&mut t, &containers).await,
        ..Default::default()
    };
    match networks {
        Ok(nets) => result.removed_networks = remove_networks(&mut t, nets).await,
        Err(e) => t.fail(ComposeError::engine("listing the project's networks")(e)),
    }
    if opts.remove_volumes {
        result.removed_volumes = remove_volumes(&mut t).await;
    }
    if opts.remove_images {
        result.removed_images = remove_images(&mut t, &containers).await;
    }
    if t.errors.is_empty() {
        result.lines = out.take();
        return Ok(result);
    }
    let e = one_error(t.errors);
    out.line(format!("ERROR: {e}"));
    Err(e)
}

/// One `down`: what it works with, and the errors it met (it keeps going past them).
struct Teardown<'a> {
    p: &'a ComposeProject,
    engine: &'a dyn ContainerEngine,
    out: &'a Output<'a>,
    opts: &'a DownOptions,
    errors: Vec<ComposeError>,
}

impl Teardown<'_> {
    fn fail(&mut self, e: ComposeError) {
        self.errors.push(e);
    }
}

/// The jobs of `down`, by container (index in the listing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Step {
    Stop(usize),
    Remove(usize),
}

/// Stops and removes the containers, dependents first: a service's containers are stopped
/// once every service depending on it has its containers stopped; containers of services no
/// longer in the file go first (they count as dependents of every service). Each container
/// is removed as soon as it has stopped (also when the stop failed: the removal forces), so
/// removals overlap the remaining stops. Returns the names of the containers removed.
async fn stop_and_remove(t: &mut Teardown<'_>, containers: &[ContainerSummary]) -> Vec<String> {
    let (p, engine, out, opts) = (t.p, t.engine, t.out, t.opts);
    let plan = p.plan();
    let stops_of = |service: Option<&str>| -> Vec<Step> {
        let of = containers.iter().enumerate();
        of.filter(|(_, c)| service_of(plan, c) == service)
            .map(|(i, _)| Step::Stop(i))
            .collect()
    };
    let mut jobs = Scheduler::new(p.parallel_limit, OnError::Continue);
    // Removals first: one that becomes ready starts before the stops that became ready with
    // it.
    for (i, c) in containers.iter().enumerate() {
        let work = move |_| remove(engine, out, c, opts.remove_volumes);
        jobs.add(Step::Remove(i), vec![Step::Stop(i)], Slot::Needed, work);
    }
    let orphans = stops_of(None);
    let mut groups = vec![(None, Vec::new())];
    for (service, dependents) in order(plan, Direction::Backward) {
        let mut after = orphans.clone();
        after.extend(dependents.into_iter().flat_map(|d| stops_of(Some(d))));
        groups.push((Some(service), after));
    }
    for (service, after) in groups {
        for step in stops_of(service) {
            let Step::Stop(i) = step else { continue };
            let c = &containers[i];
            let slot = if is_running(c) {
                Slot::Needed
            } else {
                Slot::None
            };
            let work = move |_| stop(p, engine, out, opts, c);
            jobs.add(step, after.clone(), slot, work);
        }
    }
    let outcome = jobs.run().await;
    t.errors.extend(outcome.errors);
    let removed = |i: &usize| outcome.outputs.contains_key(&Step::Remove(*i));
    let all = containers.iter().enumerate();
    all.filter(|(i, _)| removed(i))
        .map(|(_, c)| container_name(c))
        .collect()
}

/// The service of `c`, None when the file no longer has it.
fn service_of<'c>(plan: &Plan, c: &'c ContainerSummary) -> Option<&'c str> {
    label(c, LABEL_SERVICE).filter(|s| plan.service(s).is_some())
}

/// Stops a running container (with `--timeout`, or its service's stop grace period).
fn stop<'a>(
    p: &'a ComposeProject,
    engine: &'a dyn ContainerEngine,
    out: &'a Output<'_>,
    opts: &'a DownOptions,
    c: &'a ContainerSummary,
) -> BoxFuture<'a, Result<(), ComposeError>> {
    Box::pin(async move {
        if !is_running(c) {
            return Ok(());
        }
        let timeout = opts.timeout.unwrap_or_else(|| {
            let service = label(c, LABEL_SERVICE).and_then(|s| p.plan().service(s));
            service.map_or(DEFAULT_STOP_TIMEOUT, |s| s.stop_timeout)
        });
        let name = container_name(c);
        let id = c.id.clone().unwrap_or_default();
        let stop = engine.stop_container_with_timeout(&id, timeout);
        let stop = async {
            stop.await
                .map_err(ComposeError::engine(format!("stopping {name}")))
        };
        out.step("Stopping", &name, stop).await
    })
}

fn remove<'a>(
    engine: &'a dyn ContainerEngine,
    out: &'a Output<'_>,
    c: &'a ContainerSummary,
    volumes: bool,
) -> BoxFuture<'a, Result<(), ComposeError>> {
    Box::pin(async move {
        let name = container_name(c);
        let id = c.id.clone().unwrap_or_default();
        let removal = async {
            match engine.remove_container(&id, true, volumes).await {
                Ok(()) | Err(EngineError::NotFound(_)) => Ok(()),
                Err(e) => Err(ComposeError::engine(format!("removing {name}"))(e)),
            }
        };
        out.step("Removing", &name, removal).await
    })
}

/// Removes the networks (announced in the engine's order, removed concurrently); returns the
/// names of those removed.
async fn remove_networks(t: &mut Teardown<'_>, nets: Vec<Network>) -> Vec<String> {
    let (engine, out) = (t.engine, t.out);
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
                    Err(e) => Err(ComposeError::engine(format!("removing network {name}"))(e)),
                }
            }
            .boxed()
        })
        .collect();
    let mut removed = Vec::new();
    for r in bounded(t.p.parallel_limit, removals).await {
        match r {
            Ok(name) => removed.push(name),
            Err(e) => t.fail(e),
        }
    }
    removed
}

/// Removes the project's volumes no container uses; returns the names of those removed.
async fn remove_volumes(t: &mut Teardown<'_>) -> Vec<String> {
    let vols = match t.engine.list_volumes_filtered(&[project_label(t.p)]).await {
        Ok(v) => v,
        Err(e) => {
            t.fail(ComposeError::engine("listing the project's volumes")(e));
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for v in vols {
        match remove_volume(t.engine, t.out, &v).await {
            Ok(true) => removed.push(v.name),
            Ok(false) => {}
            Err(e) => t.fail(e),
        }
    }
    removed
}

/// The names of the containers `filter` matches, joined; None when there are none.
async fn users(
    engine: &dyn ContainerEngine,
    filter: Filter,
) -> Result<Option<String>, EngineError> {
    let users = engine.list_containers_filtered(&[filter]).await?;
    let names: Vec<String> = users.iter().map(container_name).collect();
    Ok((!names.is_empty()).then(|| names.join(", ")))
}

/// Removes `v` unless a container uses it; whether it was removed.
async fn remove_volume(
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
    v: &Volume,
) -> Result<bool, ComposeError> {
    let name = &v.name;
    let users = users(engine, Filter::Volume(name.clone())).await;
    let users = users.map_err(ComposeError::engine(format!(
        "checking who uses volume {name}"
    )))?;
    if let Some(users) = users {
        out.line(format!("Volume {name} is in use by {users}, kept"));
        return Ok(false);
    }
    out.line(format!("Removing volume {name}"));
    match engine.remove_volume(name, false).await {
        Ok(()) | Err(EngineError::NotFound(_)) => Ok(true),
        Err(e) => Err(ComposeError::engine(format!("removing volume {name}"))(e)),
    }
}

/// Removes the project's images (those of the file and of its containers) that no container
/// uses and no other app needs; returns those removed.
async fn remove_images(t: &mut Teardown<'_>, containers: &[ContainerSummary]) -> Vec<String> {
    let mut images: Vec<String> = t.p.images();
    for i in containers.iter().filter_map(|c| c.image.as_ref()) {
        if !images.contains(i) {
            images.push(i.clone());
        }
    }
    let mut removed = Vec::new();
    for image in images {
        if t.opts.protected_images.contains(&image) {
            t.out
                .line(format!("Image {image} is needed by another app, kept"));
            continue;
        }
        match remove_image(t.engine, t.out, &image).await {
            Ok(true) => removed.push(image),
            Ok(false) => {}
            Err(e) => t.fail(e),
        }
    }
    removed
}

/// Removes `image` unless a container uses it; whether it was removed.
async fn remove_image(
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
    image: &str,
) -> Result<bool, ComposeError> {
    match users(engine, Filter::Ancestor(image.to_string())).await {
        Ok(Some(users)) => {
            out.line(format!("Image {image} is in use by {users}, kept"));
            return Ok(false);
        }
        Ok(None) => {}
        // An image that is gone cannot be filtered on: nothing to remove.
        Err(EngineError::NotFound(_)) | Err(EngineError::Rejected(_)) => {
            out.line(format!("Image {image} not found."));
            return Ok(false);
        }
        Err(e) => {
            return Err(ComposeError::engine(format!(
                "checking who uses image {image}"
            ))(e))
        }
    }
    out.line(format!("Removing image {image}"));
    match engine.remove_image(image, false).await {
        Ok(_) => Ok(true),
        Err(EngineError::NotFound(_)) => {
            out.line(format!("Image {image} not found."));
            Ok(false)
        }
        Err(EngineError::Conflict(m)) => {
            out.line(format!("Image {image} is still needed, kept: {m}"));
            Ok(false)
        }
        Err(e) => Err(ComposeError::engine(format!("removing image {image}"))(e)),
    }
}
