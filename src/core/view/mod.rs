//! The live view: one in-memory picture of what gantry manages (apps with their status and
//! busy mark, every container with its state, health, ports, image and times, images,
//! volumes), built from Docker at start, kept current from Docker's event stream
//! ([`sync`]), rebuilt in full after the stream reconnects, and updated by gantry's own
//! operations before they answer ([`fetch`]). Every read of every dialect is served from it
//! without a Docker call.
//!
//! The read API is small: [`LiveView::current`] (a [`Snapshot`] once the view is current),
//! the typed reads on it (`app_list`, `app`, `containers_newest_first`, `images_newest_first`,
//! `volumes_by_name`, `container`), and [`LiveView::memo`] for a dialect that wants to keep
//! a rendered body until the next change. Consistency rules: docs/DECISIONS.md, "Live view".

pub mod apps;
pub mod fetch;
pub mod model;
pub mod reads;
pub mod state;
pub mod sync;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

pub use model::now_ns;

fn unavailable(why: String) -> CoreError {
    CoreError::Engine(crate::core::engine::EngineError::Unavailable(why))
}
pub use state::Snapshot;

use self::apps::Fingerprint;
use crate::core::apps::AppId;
use crate::core::events::{AppEvent, EventBus};
use crate::core::health::EngineStatus;
use crate::core::{CoreError, CoreResult};

/// How long a read waits for a view being rebuilt before it answers 503.
const READ_WAIT: Duration = Duration::from_secs(5);

/// Whether the view is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Docker cannot be followed (unreachable, or the event stream dropped): the view may
    /// be stale and is not served.
    Down(String),
    /// Subscribed again; the full resync runs. Reads wait for it.
    Building,
    Ready,
}

/// What publishing needs across writers: the last App state published per app.
struct Writer {
    published: HashMap<AppId, Fingerprint>,
    events: EventBus,
}

/// A rendered body kept until the view changes or the second (of status texts) turns.
struct Memo {
    generation: u64,
    second: i64,
    body: Bytes,
}

pub struct LiveView {
    current: RwLock<Arc<Snapshot>>,
    writer: Mutex<Writer>,
    readiness: watch::Sender<Readiness>,
    health: Mutex<Option<watch::Receiver<EngineStatus>>>,
    memos: Mutex<HashMap<&'static str, Memo>>,
}

impl LiveView {
    pub fn new(events: EventBus) -> Self {
        Self {
            current: RwLock::new(Arc::new(Snapshot::default())),
            writer: Mutex::new(Writer {
                published: HashMap::new(),
                events,
            }),
            // The follower starts at once; reads wait for its first resync.
            readiness: watch::Sender::new(Readiness::Building),
            health: Mutex::new(None),
            memos: Mutex::new(HashMap::new()),
        }
    }

    /// Where App events go (before anything subscribed).
    pub fn set_events(&self, events: EventBus) {
        self.writer().events = events;
    }

    /// Docker's reachability as the health probe sees it: reads answer 503 while it says
    /// unreachable, even when the event stream still stands.
    pub fn follow_health(&self, health: watch::Receiver<EngineStatus>) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = Some(health);
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest snapshot, current or not.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the view: `change` edits a copy of the latest snapshot, which then becomes
    /// the latest; apps whose state changed get their App event, in order (writers take
    /// turns).
    pub fn update<R>(&self, change: impl FnOnce(&mut Snapshot) -> R) -> R {
        let mut writer = self.writer();
        let mut next = Snapshot::clone(&self.snapshot());
        let result = change(&mut next);
        next.generation += 1;
        let next = Arc::new(next);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        self.publish_changes(&mut writer, &next, None);
        result
    }

    /// Publishes App for the apps whose state differs from the one last published, and
    /// for `force` whatever its state.
    fn publish_changes(&self, writer: &mut Writer, snap: &Snapshot, force: Option<&AppId>) {
        let known = self.is_current();
        let now = now_ns();
        let projects = apps::by_project(snap);
        writer.published.retain(|id, _| snap.apps.contains_key(id));
        for (id, entry) in &snap.apps {
            let view = snap.app_view(entry, &projects, known, now);
            let print = Fingerprint::of(&view);
            if force == Some(id) || writer.published.get(id) != Some(&print) {
                tracing::debug!(app = %id, status = ?view.status, busy = view.busy, "app event");
                writer.published.insert(id.clone(), print);
                writer.events.publish(AppEvent::App(view));
            }
        }
    }

    /// Publishes App for `id` whatever its state (a refresh asked for a fresh picture).
    pub fn publish_app(&self, id: &AppId) {
        let mut writer = self.writer();
        let snap = self.snapshot();
        self.publish_changes(&mut writer, &snap, Some(id));
    }

    /// Publishes `event` (Import, Remove, Refresh) in order with the App events, after
    /// `change`; the apps it names count as published in their new state.
    pub fn update_and_publish(
        &self,
        change: impl FnOnce(&mut Snapshot),
        event: impl FnOnce(&Snapshot, bool) -> AppEvent,
    ) {
        let mut writer = self.writer();
        let mut next = Snapshot::clone(&self.snapshot());
        change(&mut next);
        next.generation += 1;
        let next = Arc::new(next);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        let event = event(&next, self.is_current());
        match &event {
            AppEvent::Import(v) => {
                writer
                    .published
                    .insert(v.app.id().clone(), Fingerprint::of(v));
            }
            AppEvent::Remove(v) => {
                writer.published.remove(v.app.id());
            }
            _ => {}
        }
        writer.events.publish(event);
        self.publish_changes(&mut writer, &next, None);
    }

    #[cfg(test)]
    pub fn readiness(&self) -> Readiness {
        self.readiness.borrow().clone()
    }

    pub(crate) fn set_readiness(&self, r: Readiness) {
        let changed = self.readiness.send_if_modified(|cur| {
            let changed = *cur != r;
            *cur = r.clone();
            changed
        });
        if changed {
            tracing::info!(state = ?r, "live view");
            // A new generation: memoised bodies and app statuses follow the readiness.
            self.update(|_| ());
        }
    }

    fn docker_unreachable(&self) -> Option<String> {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let status = health.as_ref()?.borrow();
        if let EngineStatus::Unreachable(e) = &*status {
            return Some(e.clone());
        }
        None
    }

    /// The view is current: synchronised, following Docker's events, Docker reachable.
    pub fn is_current(&self) -> bool {
        *self.readiness.borrow() == Readiness::Ready && self.docker_unreachable().is_none()
    }

    /// The current snapshot: at once when the view is current, after waiting (up to 5 s)
    /// while it is rebuilt; `Unavailable` while Docker cannot be followed. A snapshot
    /// answered here is never older than the last reconnect to Docker.
    pub async fn current(&self) -> CoreResult<Arc<Snapshot>> {
        let mut rx = self.readiness.subscribe();
        let deadline = tokio::time::Instant::now() + READ_WAIT;
        loop {
            if let Some(e) = self.docker_unreachable() {
                return Err(unavailable(e));
            }
            let state = rx.borrow_and_update().clone();
            match state {
                Readiness::Ready => return Ok(self.snapshot()),
                Readiness::Down(e) if self.health_says_down() => return Err(unavailable(e)),
                _ => {}
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(unavailable(
                    "Docker's state is being read again after a reconnect; try again".into(),
                ));
            }
        }
    }

    /// No probe says Docker is up (a view that is down waits only while one does: then the
    /// follower is about to subscribe again).
    fn health_says_down(&self) -> bool {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        !health.as_ref().is_some_and(|h| h.borrow().is_reachable())
    }

    /// A body rendered from `snap` by `render`, kept until the view changes or the second
    /// (the resolution of Docker's status texts) turns.
    pub fn memo(
        &self,
        key: &'static str,
        snap: &Snapshot,
        render: impl FnOnce() -> Bytes,
    ) -> Bytes {
        let second = now_ns().div_euclid(1_000_000_000);
        {
            let memos = self.memos.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = memos.get(key) {
                if m.generation == snap.generation && m.second == second {
                    return m.body.clone();
                }
            }
        }
        let body = render();
        let mut memos = self.memos.lock().unwrap_or_else(|p| p.into_inner());
        memos.insert(
            key,
            Memo {
                generation: snap.generation,
                second,
                body: body.clone(),
            },
        );
        body
    }
}
