//! Asking Docker and putting the answer into the view: the full resync, one container, a
//! compose project's containers, the images, the volumes. The follower calls these after
//! events; gantry's own operations call them before they answer, so that every read that
//! starts after a mutating call returned sees its effect.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::models::{ContainerSummary, ImageInspect};
use futures_util::StreamExt;

use super::model::{now_ns, Container};
use super::state::Fetched;
use super::LiveView;
use crate::core::apps::lifecycle::AppImage;
use crate::core::apps::store::StoredApp;
use crate::core::compose::plan::LABEL_PROJECT;
use crate::core::engine::{ContainerEngine, EngineError, EngineResult, Filter};

/// Inspects at most this many containers at once.
const PARALLEL: usize = 8;

/// One inspected container: its id, what was found (None: gone), when the inspect was sent.
type Inspected = (String, Option<Fetched>, i64);

async fn inspect(
    engine: &dyn ContainerEngine,
    id: String,
    listed: Option<ContainerSummary>,
) -> EngineResult<Inspected> {
    let sent_at = now_ns();
    match engine.inspect_container(&id).await {
        Ok(i) => Ok((id, Some((i, listed)), sent_at)),
        Err(EngineError::NotFound(_)) => Ok((id, None, sent_at)),
        Err(e) => Err(e),
    }
}

/// Inspects every listed container, a few at a time.
async fn inspect_listed(
    engine: &dyn ContainerEngine,
    listed: Vec<ContainerSummary>,
) -> EngineResult<Vec<Inspected>> {
    let jobs = listed.into_iter().filter_map(|s| {
        let id = s.id.clone()?;
        Some(inspect(engine, id, Some(s)))
    });
    let results: Vec<EngineResult<Inspected>> = futures_util::stream::iter(jobs)
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The container `key` (id or name), with its list entry when `listed` (a new or renamed
/// container).
pub async fn container(
    view: &LiveView,
    engine: &dyn ContainerEngine,
    key: &str,
    listed: bool,
) -> EngineResult<()> {
    let (id, found, sent_at) = inspect(engine, key.to_string(), None).await?;
    let (id, found) = match found {
        Some((i, _)) => {
            let id = i.id.clone().unwrap_or(id);
            let entry = if listed {
                let f = [Filter::Id(id.clone())];
                engine
                    .list_containers_filtered(&f)
                    .await?
                    .into_iter()
                    .next()
            } else {
                None
            };
            (id, Some((i, entry)))
        }
        // Gone: a name is resolved through the view.
        None => {
            let known = view.snapshot().container(&id).map(|c| c.id.clone());
            (known.unwrap_or(id), None)
        }
    };
    view.update(|s| s.apply_fetched(&id, found, sent_at));
    Ok(())
}

/// The containers of the compose project `project`: those Docker lists are read again,
/// those it no longer lists are gone.
pub async fn project(
    view: &LiveView,
    engine: &dyn ContainerEngine,
    project: &str,
) -> EngineResult<()> {
    let listed_at = now_ns();
    let filter = [Filter::Label(format!("{LABEL_PROJECT}={project}"))];
    let listed = engine.list_containers_filtered(&filter).await?;
    let present: Vec<String> = listed.iter().filter_map(|c| c.id.clone()).collect();
    let found = inspect_listed(engine, listed).await?;
    let snap = view.snapshot();
    let gone: Vec<String> = snap
        .containers
        .values()
        .filter(|c| c.label(LABEL_PROJECT) == Some(project) && !present.contains(&c.id))
        .map(|c| c.id.clone())
        .collect();
    view.update(|s| {
        for id in &gone {
            s.apply_fetched(id, None, listed_at);
        }
        for (id, f, sent_at) in found {
            s.apply_fetched(&id, f, sent_at);
        }
    });
    Ok(())
}

/// Rebuilds the view from Docker: every container (listed, then inspected), image and
/// volume. Events stamped before this started are already in what it read.
pub async fn all(view: &LiveView, engine: &dyn ContainerEngine) -> EngineResult<()> {
    let listed_at = now_ns();
    let listed = engine.list_containers().await?;
    let found = inspect_listed(engine, listed).await?;
    let containers: Vec<Container> = found
        .into_iter()
        .filter_map(|(_, f, sent_at)| f.map(|(i, l)| Container::from_inspect(&i, l, sent_at)))
        .collect();
    let (images, info) = image_facts(view, engine, &[]).await?;
    let volumes = engine.list_volumes().await?;
    view.update(|s| {
        s.replace_containers(containers, listed_at);
        s.images = images;
        s.image_info = info;
        s.volumes = by_name(volumes);
    });
    Ok(())
}

type ImageFacts = (
    HashMap<String, Arc<bollard::models::ImageSummary>>,
    HashMap<String, Arc<AppImage>>,
);

/// The image list, and what Docker knows of each image an app brought (the stored apps'
/// and those of `extra`, an app about to be stored).
async fn image_facts(
    view: &LiveView,
    engine: &dyn ContainerEngine,
    extra: &[&StoredApp],
) -> EngineResult<ImageFacts> {
    let images = engine.list_images().await?;
    let snap = view.snapshot();
    let apps = snap
        .apps
        .values()
        .map(|a| &a.app)
        .chain(extra.iter().copied());
    let names: Vec<String> = apps
        .flat_map(|a| a.record.images.iter())
        .map(|r| {
            r.references
                .first()
                .cloned()
                .unwrap_or_else(|| r.id.clone())
        })
        .collect();
    let mut info = HashMap::new();
    for name in names {
        match engine.inspect_image(&name).await {
            Ok(i) => {
                info.insert(name.clone(), Arc::new(image_info(&name, &i)));
            }
            Err(EngineError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let images = images
        .into_iter()
        .map(|i| (i.id.clone(), Arc::new(i)))
        .collect();
    Ok((images, info))
}

fn image_info(name: &str, i: &ImageInspect) -> AppImage {
    AppImage {
        name: name.to_string(),
        id: i.id.clone(),
        created: i.created.clone(),
        platform: Some(format!(
            "{}-{}",
            i.os.clone().unwrap_or_default(),
            i.architecture.clone().unwrap_or_default()
        )),
        size: i.size,
    }
}

/// The images again (after a load, a removal, a tag), and the image names containers list
/// with them (Docker shows an image's id once its name points elsewhere); `extra`: an app
/// about to be stored, whose images are inspected too.
pub async fn images(
    view: &LiveView,
    engine: &dyn ContainerEngine,
    extra: &[&StoredApp],
) -> EngineResult<()> {
    let (images, info) = image_facts(view, engine, extra).await?;
    let containers = engine.list_containers().await?;
    view.update(|s| {
        s.images = images;
        s.image_info = info;
        s.patch_image_names(&containers);
    });
    Ok(())
}

pub async fn volumes(view: &LiveView, engine: &dyn ContainerEngine) -> EngineResult<()> {
    let volumes = engine.list_volumes().await?;
    view.update(|s| s.volumes = by_name(volumes));
    Ok(())
}

fn by_name(volumes: Vec<bollard::models::Volume>) -> HashMap<String, Arc<bollard::models::Volume>> {
    volumes
        .into_iter()
        .map(|v| (v.name.clone(), Arc::new(v)))
        .collect()
}

/// After an operation: the containers `keys` (ids or names), in this order, as Docker has
/// them now, with their list entries (the operation may have created, renamed, replaced or
/// removed them; name a replaced container's old id before its name). A failure is only
/// logged: it is Docker going away, which the follower notices too.
pub async fn changed(view: &LiveView, engine: &dyn ContainerEngine, keys: &[&str]) {
    for key in keys {
        if let Err(e) = container(view, engine, key, true).await {
            tracing::debug!(container = %key, error = %e, "cannot read a container after an operation");
        }
    }
}

/// After an operation that changed images (a pull, a load, an import, a removal): the
/// image list again; a failure is only logged, as for [`changed`].
pub async fn images_changed(view: &LiveView, engine: &dyn ContainerEngine) {
    if let Err(e) = images(view, engine, &[]).await {
        tracing::debug!(error = %e, "cannot read the images after a change");
    }
}
