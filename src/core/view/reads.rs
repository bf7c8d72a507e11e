//! The typed reads of a snapshot that the dialects serve: Docker's own list models, rendered
//! at the time of the read, in Docker's order.

use bollard::models::{ContainerSummary, ImageSummary, Volume};

use super::model::Container;
use super::state::Snapshot;
use crate::core::compose::plan::LABEL_PROJECT;

impl Snapshot {
    /// Every container as `GET /containers/json?all=1` lists it at `now`, newest first.
    pub fn containers_newest_first(&self, now: i64) -> Vec<ContainerSummary> {
        self.sorted_containers()
            .into_iter()
            .map(|c| c.render(now))
            .collect()
    }

    fn sorted_containers(&self) -> Vec<&Container> {
        let mut all: Vec<&Container> = self.containers.values().map(|c| c.as_ref()).collect();
        all.sort_by(|a, b| b.created_ns.cmp(&a.created_ns).then(a.id.cmp(&b.id)));
        all
    }

    /// The containers of every compose project (gantry's or not), newest first.
    pub fn compose_containers(&self, now: i64) -> Vec<ContainerSummary> {
        self.sorted_containers()
            .into_iter()
            .filter(|c| c.label(LABEL_PROJECT).is_some())
            .map(|c| c.render(now))
            .collect()
    }

    /// A container by id, unique id prefix or name (as Docker resolves them).
    pub fn container(&self, key: &str) -> Option<&Container> {
        if let Some(c) = self.containers.get(key) {
            return Some(c);
        }
        let name = key.trim_start_matches('/');
        if let Some(c) = self.containers.values().find(|c| c.name == name) {
            return Some(c);
        }
        let mut by_prefix = self.containers.values().filter(|c| c.id.starts_with(key));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(c), None) if !key.is_empty() => Some(c),
            _ => None,
        }
    }

    /// Every image as `GET /images/json` lists it, newest first.
    pub fn images_newest_first(&self) -> Vec<ImageSummary> {
        let mut all: Vec<ImageSummary> = self.images.values().map(|i| (**i).clone()).collect();
        all.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        all
    }

    /// Whether Docker has an image tagged `reference` (`name:tag`; `name` is `name:latest`).
    pub fn has_image(&self, reference: &str) -> bool {
        let tagged = match reference.rsplit_once(':') {
            Some((_, tag)) if !tag.contains('/') => reference.to_string(),
            _ => format!("{reference}:latest"),
        };
        self.images.values().any(|i| i.repo_tags.contains(&tagged))
    }

    /// Every volume as `GET /volumes` lists it, by name.
    pub fn volumes_by_name(&self) -> Vec<Volume> {
        let mut all: Vec<Volume> = self.volumes.values().map(|v| (**v).clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}
