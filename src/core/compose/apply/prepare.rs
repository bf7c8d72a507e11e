//! What `up` does before the services: images present (pulled when missing), the
//! project's networks and volumes checked, and the missing ones created.

use std::collections::HashMap;

use bollard::models::ContainerSummary;
use futures_util::future::{BoxFuture, FutureExt};

use super::super::plan::{NetworkPlan, VolumePlan, LABEL_ONEOFF, LABEL_PROJECT};
use super::{bounded, first_error, one_error, project_label, Output};
use crate::core::compose::{ComposeError, ComposeProject, PULL_TIMEOUT};
use crate::core::engine::{ContainerEngine, EngineError, Filter};

/// What `up` found.
pub(super) struct Prepared {
    /// Image ids by reference.
    pub image_ids: HashMap<String, String>,
    /// The images that had to be pulled.
    pub pulled: Vec<String>,
    /// The project's containers.
    pub existing: Vec<ContainerSummary>,
}

/// Images, the lookups of networks and volumes, and the project's containers: all at once;
/// then the missing networks and volumes, announced in plan order, created concurrently.
pub(super) async fn prepare(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
) -> Result<Prepared, ComposeError> {
    let plan = p.plan();
    let limit = p.parallel_limit.max(1);
    let filters = [
        project_label(p),
        Filter::Label(format!("{LABEL_ONEOFF}=False")),
    ];
    let networks = plan
        .networks
        .iter()
        .map(|n| check_network(p, engine, n).boxed());
    let volumes = plan
        .volumes
        .iter()
        .map(|v| check_volume(p, engine, v).boxed());
    let (images, networks, volumes, existing) = tokio::join!(
        ensure_images(p, engine, out),
        bounded(limit, networks.collect()),
        bounded(limit, volumes.collect()),
        engine.list_containers_filtered(&filters),
    );
    let (image_ids, pulled) = images?;
    let networks = first_error(networks)?;
    let volumes = first_error(volumes)?;
    let existing = existing.map_err(ComposeError::engine("listing the project's containers"))?;
    let missing_networks = plan.networks.iter().zip(networks).filter(|(_, new)| *new);
    let missing_volumes = plan.volumes.iter().zip(volumes).filter(|(_, new)| *new);
    let mut creates: Vec<BoxFuture<'_, Result<(), ComposeError>>> = Vec::new();
    for (n, _) in missing_networks {
        creates.push(create_network(engine, out, n));
    }
    for (v, _) in missing_volumes {
        creates.push(create_volume(engine, out, v));
    }
    first_error(bounded(limit, creates).await)?;
    Ok(Prepared {
        image_ids,
        pulled,
        existing,
    })
}

/// Announces the network now, creates it when polled.
fn create_network<'a>(
    engine: &'a dyn ContainerEngine,
    out: &Output<'_>,
    n: &'a NetworkPlan,
) -> BoxFuture<'a, Result<(), ComposeError>> {
    let driver = match &n.request.driver {
        Some(d) => format!("driver \"{d}\""),
        None => "the default driver".to_string(),
    };
    out.line(format!("Creating network \"{}\" with {driver}", n.name));
    Box::pin(async move {
        engine
            .create_network(n.request.clone())
            .await
            .map(|_| ())
            .map_err(ComposeError::engine(format!("creating network {}", n.name)))
    })
}

/// Announces the volume now, creates it when polled.
fn create_volume<'a>(
    engine: &'a dyn ContainerEngine,
    out: &Output<'_>,
    v: &'a VolumePlan,
) -> BoxFuture<'a, Result<(), ComposeError>> {
    out.line(format!(
        "Creating volume \"{}\" with {} driver",
        v.name,
        v.request.driver.as_deref().unwrap_or("default")
    ));
    Box::pin(async move {
        engine
            .create_volume(v.request.clone())
            .await
            .map(|_| ())
            .map_err(ComposeError::engine(format!("creating volume {}", v.name)))
    })
}

/// Inspects every image, pulling the missing ones; returns image ids by reference and the
/// images pulled.
async fn ensure_images(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
) -> Result<(HashMap<String, String>, Vec<String>), ComposeError> {
    let jobs = p
        .images()
        .into_iter()
        .map(|image| ensure_image(p, engine, out, image));
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
    if errors.is_empty() {
        Ok((ids, pulled))
    } else {
        Err(one_error(errors))
    }
}

/// The image's id, and whether it had to be pulled.
fn ensure_image<'a>(
    p: &'a ComposeProject,
    engine: &'a dyn ContainerEngine,
    out: &'a Output<'_>,
    image: String,
) -> BoxFuture<'a, Result<(String, String, bool), ComposeError>> {
    Box::pin(async move {
        match engine.inspect_image(&image).await {
            Ok(i) => Ok((image, i.id.unwrap_or_default(), false)),
            Err(EngineError::NotFound(_)) => {
                let id = pull(p, engine, out, &image).await?;
                Ok((image, id, true))
            }
            Err(e) => Err(ComposeError::Engine {
                action: format!("inspecting image {image}"),
                source: e,
            }),
        }
    })
}

/// Pulls `image` (bounded by the pull timeout); returns its id.
async fn pull(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    out: &Output<'_>,
    image: &str,
) -> Result<String, ComposeError> {
    let fail = |message: String| ComposeError::Image {
        image: image.to_string(),
        message,
    };
    let plan = p.plan();
    let service = plan.services.iter().find(|s| s.image == image);
    let service = service.map(|s| s.name.as_str()).unwrap_or_default();
    out.line(format!("Pulling {service} ({image})..."));
    match tokio::time::timeout(PULL_TIMEOUT, engine.pull_image(image)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(fail(e.to_string())),
        Err(_) => {
            let secs = PULL_TIMEOUT.as_secs();
            return Err(fail(format!("the pull did not finish within {secs}s")));
        }
    }
    let i = engine.inspect_image(image).await;
    let i = i.map_err(|e| fail(format!("pulled, but then: {e}")))?;
    Ok(i.id.unwrap_or_default())
}

/// Checks the network `n`: true when it has to be created; an error when it cannot be used
/// (external and missing, or owned by another project).
async fn check_network(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    n: &NetworkPlan,
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
            Some(x) => {
                owner_allows(p, "network", &n.key, &n.name, x.labels.as_ref()).map(|()| false)
            }
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
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
    v: &VolumePlan,
) -> Result<bool, ComposeError> {
    let found = engine
        .list_volumes_filtered(&[Filter::Name(v.name.clone())])
        .await
        .map_err(ComposeError::engine(format!(
            "looking up volume {}",
            v.name
        )))?;
    match found.iter().find(|x| x.name == v.name) {
        // An existing volume keeps its data: it must be this app's (or sharing allowed).
        Some(x) => owner_allows(p, "volume", &v.key, &v.name, Some(&x.labels)).map(|()| false),
        None if v.external => Err(external_missing("volume", &v.key, &v.name)),
        None => Ok(true),
    }
}

/// Refuses a volume or network (`kind`; `key` in the file, `name` in Docker) whose compose
/// project label is not this project's, unless the policy allows sharing.
fn owner_allows(
    p: &ComposeProject,
    kind: &str,
    key: &str,
    name: &str,
    labels: Option<&HashMap<String, String>>,
) -> Result<(), ComposeError> {
    let owner = labels.and_then(|l| l.get(LABEL_PROJECT));
    if p.allow_shared || owner.map(String::as_str) == Some(p.name()) {
        return Ok(());
    }
    let whose = match owner {
        Some(o) => format!("belongs to another app (compose project \"{o}\")"),
        None => "belongs to no app".to_string(),
    };
    Err(ComposeError::Policy {
        scope: format!("{kind} \"{key}\""),
        message: format!(
            "{kind} \"{name}\" {whose}: using it is not allowed by this gateway's policy \
             (apps.allow_shared_resources = true allows it)"
        ),
    })
}

/// The import's ownership check: every planned volume and external network that exists
/// already must be this project's (or sharing allowed); missing ones are left for `up`.
pub(in crate::core::compose) async fn check_owners(
    p: &ComposeProject,
    engine: &dyn ContainerEngine,
) -> Result<(), ComposeError> {
    for n in p.plan().networks.iter().filter(|n| n.external) {
        let found = engine.list_networks(&[Filter::Name(n.name.clone())]).await;
        let found = found.map_err(ComposeError::engine(format!(
            "looking up network {}",
            n.name
        )))?;
        if let Some(x) = found
            .iter()
            .find(|x| x.name.as_deref() == Some(n.name.as_str()))
        {
            owner_allows(p, "network", &n.key, &n.name, x.labels.as_ref())?;
        }
    }
    for v in &p.plan().volumes {
        let found = engine
            .list_volumes_filtered(&[Filter::Name(v.name.clone())])
            .await;
        let found = found.map_err(ComposeError::engine(format!(
            "looking up volume {}",
            v.name
        )))?;
        if let Some(x) = found.iter().find(|x| x.name == v.name) {
            owner_allows(p, "volume", &v.key, &v.name, Some(&x.labels))?;
        }
    }
    Ok(())
}

/// An external network or volume (`kind`) that does not exist: `key` in the file, `name`
/// in Docker.
fn external_missing(kind: &str, key: &str, name: &str) -> ComposeError {
    ComposeError::Invalid {
        scope: format!("{kind} \"{key}\""),
        message: format!("declared as external, but {kind} \"{name}\" does not exist"),
    }
}
