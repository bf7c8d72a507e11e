//! Apps as the view shows them: each stored app with its status, busy mark, containers and
//! images, derived from one snapshot (no Docker call).

use std::collections::HashMap;
use std::sync::Arc;

use super::model::Container;
use super::state::{AppEntry, Snapshot};
use crate::core::apps::lifecycle::{AppImage, AppStatus, AppView};
use crate::core::apps::AppId;
use crate::core::compose::plan::{LABEL_ONEOFF, LABEL_PROJECT, LABEL_SERVICE};
use crate::core::compose::{port_mappings, ContainerStatus};

/// The part of an app's state whose change is an App event: not e.g. Docker's "Up 3
/// seconds" text, which changes all the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    status: AppStatus,
    busy: bool,
    containers: Vec<(String, bool)>,
}

impl Fingerprint {
    pub fn of(v: &AppView) -> Self {
        let mut containers: Vec<_> = v
            .containers
            .iter()
            .map(|c| (c.id.clone(), c.running))
            .collect();
        containers.sort();
        Self {
            status: v.status,
            busy: v.busy,
            containers,
        }
    }
}

/// The containers of every compose project (one-off containers left out), newest first.
pub fn by_project(snap: &Snapshot) -> HashMap<&str, Vec<&Arc<Container>>> {
    let mut out: HashMap<&str, Vec<&Arc<Container>>> = HashMap::new();
    for c in snap.containers.values() {
        if c.label(LABEL_ONEOFF) != Some("False") {
            continue;
        }
        if let Some(p) = c.label(LABEL_PROJECT) {
            out.entry(p).or_default().push(c);
        }
    }
    for cs in out.values_mut() {
        cs.sort_by(|a, b| b.created_ns.cmp(&a.created_ns).then(a.id.cmp(&b.id)));
    }
    out
}

impl Snapshot {
    /// The app `id`, or None when no such app is stored. `known`: the view is current
    /// (else the status is Unknown, as when Docker cannot be asked).
    pub fn app(&self, id: &AppId, known: bool, now: i64) -> Option<AppView> {
        let entry = self.apps.get(id)?;
        let projects = by_project(self);
        Some(self.app_view(entry, &projects, known, now))
    }

    /// Every stored app, by id.
    pub fn app_list(&self, known: bool, now: i64) -> Vec<AppView> {
        let projects = by_project(self);
        self.apps
            .values()
            .map(|e| self.app_view(e, &projects, known, now))
            .collect()
    }

    pub fn app_view(
        &self,
        entry: &AppEntry,
        projects: &HashMap<&str, Vec<&Arc<Container>>>,
        known: bool,
        now: i64,
    ) -> AppView {
        let busy = self.busy.contains_key(entry.app.id());
        let images = self.app_images(entry);
        if !known {
            return AppView {
                app: entry.app.clone(),
                status: AppStatus::Unknown,
                busy,
                containers: Vec::new(),
                images,
            };
        }
        let own = projects.get(entry.project.as_str());
        let containers = in_service_order(entry, own.map(Vec::as_slice).unwrap_or_default());
        let containers: Vec<ContainerStatus> = containers.iter().map(|c| status(c, now)).collect();
        AppView {
            app: entry.app.clone(),
            status: app_status(entry, &containers),
            busy,
            containers,
            images,
        }
    }

    fn app_images(&self, entry: &AppEntry) -> Vec<AppImage> {
        let records = &entry.app.record.images;
        records
            .iter()
            .map(|r| {
                let name = r
                    .references
                    .first()
                    .cloned()
                    .unwrap_or_else(|| r.id.clone());
                match self.image_info.get(&name) {
                    Some(i) => AppImage {
                        name,
                        ..AppImage::clone(i)
                    },
                    // Not in Docker (any more): what the app recorded.
                    None => AppImage {
                        name,
                        id: Some(r.id.clone()),
                        created: None,
                        platform: None,
                        size: None,
                    },
                }
            })
            .collect()
    }
}

/// Running when every service has a running container, Partially Running when some do,
/// Stopped when none (a compose file that does not load counts its containers).
fn app_status(entry: &AppEntry, containers: &[ContainerStatus]) -> AppStatus {
    let running = containers.iter().filter(|c| c.running).count();
    let expected = entry.services.as_ref().map_or(containers.len(), Vec::len);
    if running == 0 {
        AppStatus::Stopped
    } else if running >= expected {
        AppStatus::Running
    } else {
        AppStatus::PartiallyRunning
    }
}

/// The compose engine's order: services in file order, then containers of services no
/// longer in the file, grouped by service.
fn in_service_order<'a>(entry: &AppEntry, cs: &[&'a Arc<Container>]) -> Vec<&'a Arc<Container>> {
    let service = |c: &Container| c.label(LABEL_SERVICE).unwrap_or_default().to_string();
    let defined = entry.services.clone().unwrap_or_default();
    let mut out: Vec<&Arc<Container>> = Vec::with_capacity(cs.len());
    for s in &defined {
        out.extend(cs.iter().filter(|c| &service(c) == s));
    }
    let mut others: Vec<String> = Vec::new();
    for c in cs {
        let s = service(c);
        if !defined.contains(&s) && !others.contains(&s) {
            others.push(s);
        }
    }
    for s in &others {
        out.extend(cs.iter().filter(|c| &service(c) == s));
    }
    out
}

/// A container as an app lists it.
fn status(c: &Container, now: i64) -> ContainerStatus {
    let summary = c.render(now);
    ContainerStatus {
        name: c.name.clone(),
        id: c.id.clone(),
        image: c.image().to_string(),
        state: c.state.run.word().to_string(),
        status: summary.status.clone().unwrap_or_default(),
        running: c.running(),
        image_id: c.image_id().to_string(),
        created: summary.created,
        ports: port_mappings(&summary),
    }
}
