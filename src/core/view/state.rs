//! One state of the live view (a [`Snapshot`]) and how events and fetched facts change it.
//!
//! The order rule: a record carries the engine time up to which it is current (`as_of`).
//! An event older than that is already part of it and is skipped; a fetched record (an
//! inspect sent at time t) replaces one only when no newer event was applied meanwhile.
//! dockerd stamps an event while it holds the container's lock, and an inspect waits for
//! that lock, so an inspect sent after an event's time sees that event's change. Removed
//! containers leave a tombstone for a while, so that a late event cannot bring them back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bollard::models::{ContainerInspectResponse, ContainerSummary, ImageSummary, Volume};

use super::model::{Container, ContainerState, Health, RunState};
use crate::core::apps::lifecycle::AppImage;
use crate::core::apps::store::StoredApp;
use crate::core::apps::AppId;
use crate::core::engine::{EngineEvent, EventObject};

/// How long a removed container's id is remembered (late events for it are dropped).
const TOMBSTONE_NS: i64 = 300 * 1_000_000_000;
/// At most this many tombstones are kept (the oldest go first).
const MAX_TOMBSTONES: usize = 4096;

/// A stored app as the view keeps it.
#[derive(Debug, Clone)]
pub struct AppEntry {
    pub app: StoredApp,
    /// Its compose project name.
    pub project: String,
    /// Its services in plan order; None when its compose file does not load.
    pub services: Option<Vec<String>>,
}

/// One consistent state of everything the view serves. Readers get it as an `Arc` and
/// never block writers; writers make the next one from a copy.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Changes with every change (of anything a read can show).
    pub generation: u64,
    pub containers: HashMap<String, Arc<Container>>,
    pub images: HashMap<String, Arc<ImageSummary>>,
    /// What Docker knows of each image (from its inspect), by every reference and id.
    pub image_info: HashMap<String, Arc<AppImage>>,
    pub volumes: HashMap<String, Arc<Volume>>,
    pub apps: BTreeMap<AppId, Arc<AppEntry>>,
    /// Apps with an operation in flight, and which.
    pub busy: BTreeMap<AppId, &'static str>,
    /// Removed containers: id -> engine time of the removal.
    tombstones: HashMap<String, i64>,
    /// When the container list of the last resync was asked for: a container an older
    /// event names but that list did not have was gone by then.
    listed_at: i64,
}

/// What must be fetched after an event to complete what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followup {
    Nothing,
    /// Inspect the container (ports, networks, exact times).
    Inspect(String),
    /// Inspect the container and fetch its list entry (a new or renamed container).
    Fetch(String),
    /// List the images again (and the containers' image names with them).
    Images,
    Volumes,
}

/// A fetched container: its inspect and, when asked for, its list entry.
pub type Fetched = (ContainerInspectResponse, Option<ContainerSummary>);

impl Snapshot {
    /// Applies one engine event; says what to fetch to complete it.
    pub fn apply_event(&mut self, e: &EngineEvent) -> Followup {
        match e.object {
            EventObject::Container => self.container_event(e),
            EventObject::Network if matches!(e.action.as_str(), "connect" | "disconnect") => {
                match e.attributes.get("container") {
                    Some(id) if self.containers.contains_key(id) => Followup::Inspect(id.clone()),
                    _ => Followup::Nothing,
                }
            }
            EventObject::Image => Followup::Images,
            EventObject::Volume if matches!(e.action.as_str(), "create" | "destroy" | "prune") => {
                Followup::Volumes
            }
            _ => Followup::Nothing,
        }
    }

    fn container_event(&mut self, e: &EngineEvent) -> Followup {
        let t = e.time_nano;
        if self.tombstones.get(&e.id).is_some_and(|&at| at >= t) {
            return Followup::Nothing;
        }
        let (action, detail) = match e.action.split_once(':') {
            Some((a, d)) => (a.trim(), d.trim()),
            None => (e.action.as_str(), ""),
        };
        let Some(current) = self.containers.get(&e.id) else {
            return self.unknown_container_event(e, action);
        };
        if current.as_of > t {
            return Followup::Nothing;
        }
        let mut c = Container::clone(current);
        c.as_of = t;
        let followup = match change_of(&mut c, e, action, detail) {
            // A record whose list entry is still missing gets it with the next fetch.
            Some(Followup::Inspect(id)) if !c.listed => Followup::Fetch(id),
            Some(f) => f,
            None if action == "destroy" => {
                self.remove(&e.id, t);
                return Followup::Nothing;
            }
            None => return Followup::Nothing,
        };
        self.containers.insert(e.id.clone(), Arc::new(c));
        followup
    }

    /// An event of a container the view does not have: a new one, one it missed, or a
    /// stale event of one that is gone.
    fn unknown_container_event(&mut self, e: &EngineEvent, action: &str) -> Followup {
        if action == "destroy" {
            self.tombstone(&e.id, e.time_nano);
            return Followup::Nothing;
        }
        if e.time_nano < self.listed_at {
            return Followup::Nothing;
        }
        if action == "create" {
            let c = placeholder(e);
            self.containers.insert(e.id.clone(), Arc::new(c));
        }
        Followup::Fetch(e.id.clone())
    }

    /// Applies what an inspect sent at `sent_at` found (None: the container is gone).
    /// False when a newer event made it stale.
    pub fn apply_fetched(&mut self, id: &str, found: Option<Fetched>, sent_at: i64) -> bool {
        if self.tombstones.get(id).is_some_and(|&at| at > sent_at) {
            return false;
        }
        let current = self.containers.get(id);
        if current.is_some_and(|c| c.as_of > sent_at) {
            // A newer event came first: its state stands, but a list entry's static fields
            // (command, mounts, host config) are still the container's.
            if let (Some(c), Some((_, Some(entry)))) = (current, found) {
                let mut c = Container::clone(c);
                let names = c.summary.names.take();
                c.summary = entry;
                c.summary.names = names;
                c.listed = true;
                self.containers.insert(id.to_string(), Arc::new(c));
            }
            return false;
        }
        let Some((inspect, listed)) = found else {
            self.remove(id, sent_at);
            return true;
        };
        let listed = listed.or_else(|| current.map(|c| c.summary.clone()));
        let mut c = Container::from_inspect(&inspect, listed, sent_at);
        if let Some(names) = c.summary.names.as_mut() {
            *names = vec![format!("/{}", c.name)];
        }
        self.containers.insert(id.to_string(), Arc::new(c));
        true
    }

    /// Replaces every container by what a full resync found (the list was asked for at
    /// `listed_at`).
    pub fn replace_containers(&mut self, containers: Vec<Container>, listed_at: i64) {
        self.containers = containers
            .into_iter()
            .map(|c| (c.id.clone(), Arc::new(c)))
            .collect();
        self.listed_at = listed_at;
    }

    /// Takes the image names Docker now lists for each container (they follow tags).
    pub fn patch_image_names(&mut self, listed: &[ContainerSummary]) {
        for s in listed {
            let Some(id) = s.id.as_deref() else { continue };
            let Some(c) = self.containers.get(id) else {
                continue;
            };
            if c.summary.image == s.image && c.summary.image_id == s.image_id {
                continue;
            }
            let mut c = Container::clone(c);
            c.summary.image.clone_from(&s.image);
            c.summary.image_id.clone_from(&s.image_id);
            self.containers.insert(id.to_string(), Arc::new(c));
        }
    }

    fn remove(&mut self, id: &str, at: i64) {
        self.containers.remove(id);
        self.tombstone(id, at);
    }

    fn tombstone(&mut self, id: &str, at: i64) {
        let horizon = at - TOMBSTONE_NS;
        self.tombstones.retain(|_, &mut t| t >= horizon);
        if self.tombstones.len() >= MAX_TOMBSTONES {
            if let Some(oldest) = self.tombstones.iter().min_by_key(|(_, &t)| t) {
                let oldest = oldest.0.clone();
                self.tombstones.remove(&oldest);
            }
        }
        let entry = self.tombstones.entry(id.to_string()).or_insert(at);
        *entry = (*entry).max(at);
    }
}

/// What an event of a known container changes (in `c`); None for an event that changes
/// nothing the view shows (and for `destroy`, which the caller handles).
fn change_of(c: &mut Container, e: &EngineEvent, action: &str, detail: &str) -> Option<Followup> {
    let t = e.time_nano;
    let s: &mut ContainerState = &mut c.state;
    let inspect = Some(Followup::Inspect(e.id.clone()));
    match action {
        "start" => {
            s.run = RunState::Running;
            s.started_at = Some(t);
            s.exit_code = 0;
            s.health = c.has_healthcheck.then_some(Health::Starting);
            inspect
        }
        "die" => {
            s.run = RunState::Exited;
            s.finished_at = Some(t);
            s.exit_code = e
                .attributes
                .get("exitCode")
                .and_then(|x| x.parse().ok())
                .unwrap_or(s.exit_code);
            s.ports.clear();
            inspect
        }
        "pause" => {
            s.run = RunState::Paused;
            Some(Followup::Nothing)
        }
        "unpause" => {
            s.run = RunState::Running;
            Some(Followup::Nothing)
        }
        "health_status" => {
            s.health = Health::parse(detail);
            Some(Followup::Nothing)
        }
        "rename" => {
            if let Some(name) = e.attributes.get("name") {
                c.name = name.trim_start_matches('/').to_string();
                c.summary.names = Some(vec![format!("/{}", c.name)]);
            }
            Some(Followup::Fetch(e.id.clone()))
        }
        "update" => inspect,
        _ => None,
    }
}

/// A container just created, from its `create` event alone (its list entry follows).
fn placeholder(e: &EngineEvent) -> Container {
    let mut labels: HashMap<String, String> = e.attributes.clone().into_iter().collect();
    let name = labels.remove("name").unwrap_or_default();
    let image = labels.remove("image");
    let name = name.trim_start_matches('/').to_string();
    Container {
        id: e.id.clone(),
        summary: ContainerSummary {
            id: Some(e.id.clone()),
            names: Some(vec![format!("/{name}")]),
            image,
            created: Some(e.time_nano / 1_000_000_000),
            labels: Some(labels),
            ..Default::default()
        },
        name,
        state: ContainerState {
            run: RunState::Created,
            exit_code: 0,
            health: None,
            started_at: None,
            finished_at: None,
            ports: Vec::new(),
            networks: None,
        },
        created_ns: e.time_nano,
        has_healthcheck: false,
        listed: false,
        as_of: e.time_nano,
    }
}
