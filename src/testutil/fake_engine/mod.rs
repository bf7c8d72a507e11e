//! One in-memory Docker for the unit tests: [`FakeEngine`] implements [`ContainerEngine`]
//! over containers, images, networks and volumes kept in memory, records every call (in
//! order, with its start and end) and lets a test shape the calls: a delay, a gate (calls
//! that wait until all of them are in flight together), a hold (a call that never returns)
//! or a failure of the next matching call. The container event stream is the test's to
//! drive ([`FakeEngine::emit`]: the live view's engine events and the container events).
//!
//! Calls are named by patterns (see [`calls::Call::is`]): `start_container` (or
//! `start_container *`) for every start, `start_container web_1` for the start of one
//! container, by its id or its name.
//!
//! What it does not do: registries (a pull always fails), image loading and export,
//! prunes, logs; anonymous volumes; events of its own (only what the test emits).

mod calls;
mod engine;
mod world;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

pub use world::FakeContainer;

use crate::core::engine::{ContainerEvent, EngineError, EngineEvent, EngineResult, EventObject};
use calls::{CallLog, Rules};
use world::World;

/// A hook told of every container process that starts (`true`) or ends (`false`).
type ProcessHook = Box<dyn Fn(u32, bool) + Send + Sync>;

#[derive(Default)]
pub struct FakeEngine {
    world: Mutex<World>,
    log: CallLog,
    rules: Mutex<Rules>,
    on_process: Mutex<Option<ProcessHook>>,
    /// The senders of the open container event streams (the Intervirt watcher's).
    streams: Mutex<Vec<UnboundedSender<EngineResult<ContainerEvent>>>>,
    /// The senders of the open engine event streams (the live view's).
    engine_streams: Mutex<Vec<UnboundedSender<EngineResult<EngineEvent>>>>,
}

impl FakeEngine {
    /// An engine that has the images `images` and nothing else.
    pub fn with_images(images: &[&str]) -> Self {
        let fake = Self::default();
        for i in images {
            fake.world().add_image(i);
        }
        fake
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    fn rules(&self) -> MutexGuard<'_, Rules> {
        self.rules.lock().unwrap()
    }

    // --- the world ---------------------------------------------------------------------------

    /// Adds a container as if it had been created (and started) before.
    pub fn add_container(&self, c: FakeContainer) {
        let pid = self.world().add_container(c);
        self.process(pid, true);
    }

    /// The container `id_or_name`, as it is now.
    pub fn container(&self, id_or_name: &str) -> Option<FakeContainer> {
        let world = self.world();
        let found = world
            .containers
            .iter()
            .find(|c| c.id == id_or_name || c.name == id_or_name);
        found.cloned()
    }

    /// Every container, in creation order.
    pub fn containers(&self) -> Vec<FakeContainer> {
        self.world().containers.clone()
    }

    /// Every create request the engine accepted, in order: (name, body).
    pub fn create_requests(&self) -> Vec<(String, bollard::models::ContainerCreateBody)> {
        self.world().created.clone()
    }

    /// Starts or stops a container behind the API's back (someone's `docker stop`, a
    /// crash): no call is recorded and no event sent.
    pub fn set_running(&self, id_or_name: &str, running: bool) {
        let changed = if running {
            self.world().start(id_or_name)
        } else {
            self.world().stop(id_or_name)
        };
        self.process(changed.expect("no such container"), running);
    }

    /// Tells the hook (if any) that the process `pid` started or ended.
    fn process(&self, pid: Option<u32>, alive: bool) {
        if let (Some(pid), Some(hook)) = (pid, self.on_process.lock().unwrap().as_ref()) {
            hook(pid, alive);
        }
    }

    /// Calls `hook(pid, alive)` for every container process that starts or ends from now on.
    pub fn on_process(&self, hook: impl Fn(u32, bool) + Send + Sync + 'static) {
        *self.on_process.lock().unwrap() = Some(Box::new(hook));
    }

    // --- shaping the calls -------------------------------------------------------------------

    /// Each call `pattern` names takes `delay` (after any gate).
    pub fn delay(&self, pattern: &str, delay: Duration) {
        self.rules().delay(pattern, delay);
    }

    /// Each call named by one of `patterns` waits until calls for all of them are in flight:
    /// made one after the other they never meet, and the wait fails the test after 30 s
    /// instead. A pattern for every call of a method (`create_container *`) given n times
    /// gates those calls in groups of n.
    pub fn gate(&self, patterns: &[&str]) {
        self.rules().gate(patterns);
    }

    /// Each call `pattern` names never returns (until its caller drops it).
    pub fn hold(&self, pattern: &str) {
        self.rules().hold(pattern);
    }

    /// The next call `pattern` names fails with `error` (once).
    pub fn fail_next(&self, pattern: &str, error: EngineError) {
        self.rules().fail_next(pattern, error);
    }

    // --- the record --------------------------------------------------------------------------

    /// The calls (since the start or the last [`FakeEngine::clear_calls`]) to `methods`, as `method target[ arg]`.
    pub fn calls_to(&self, methods: &[&str]) -> Vec<String> {
        let calls = self.log.all().into_iter();
        calls
            .filter(|c| methods.contains(&c.method))
            .map(|c| c.text())
            .collect()
    }

    pub fn clear_calls(&self) {
        self.log.clear();
    }

    /// The call `a` had returned before the call `b` was made (each pattern must name
    /// exactly one call).
    pub fn finished_before(&self, a: &str, b: &str) -> bool {
        self.log.finished_before(a, b)
    }

    /// The most calls the fake held (delayed, gated, held) that were in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.log.max_in_flight()
    }

    /// Waits until a call `pattern` names has been made.
    pub async fn reached(&self, pattern: &str) {
        self.log.reached(pattern).await
    }

    /// The calls as text, for assertion messages.
    pub fn listing(&self) -> String {
        calls::listing(&self.log.all())
    }

    // --- events ------------------------------------------------------------------------------

    /// Sends `event` to every open event stream, unfiltered (so a test can also send what
    /// Docker would have filtered out): engine streams get it as it is, container streams
    /// the container events; an error ends them all.
    pub fn emit(&self, event: EngineResult<EngineEvent>) {
        let mut streams = self.engine_streams.lock().unwrap();
        streams.retain(|tx| tx.send(event.clone()).is_ok());
        let container = match &event {
            Ok(e) if e.object != EventObject::Container => None,
            Ok(e) => Some(Ok(container_event(e))),
            Err(e) => Some(Err(e.clone())),
        };
        let mut old = self.streams.lock().unwrap();
        if let Some(c) = container {
            old.retain(|tx| tx.send(c.clone()).is_ok());
        }
        if event.is_err() {
            streams.clear();
            old.clear();
        }
    }
}

/// A container event as the container event stream carries it.
fn container_event(e: &EngineEvent) -> ContainerEvent {
    let mut labels = e.attributes.clone();
    let name = labels.remove("name").unwrap_or_default();
    labels.remove("image");
    ContainerEvent {
        id: e.id.clone(),
        name,
        action: e.action.clone(),
        labels,
    }
}
