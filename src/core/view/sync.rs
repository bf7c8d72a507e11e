//! Follows Docker's event stream into the view: subscribe (from a moment just before the
//! resync, so nothing falls between the two), rebuild the view in full, then apply every
//! event as it arrives and fetch what an event leaves open (a new container's details, the
//! ports a start assigned) in the background. When the stream ends (dockerd restarted, the
//! connection dropped) the view is marked down at once and rebuilt after the next
//! subscription; reads wait for that or answer 503, never with the older state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;

use super::state::Followup;
use super::{fetch, now_ns, LiveView, Readiness};
use crate::core::engine::{
    ContainerEngine, EngineEvent, EngineEventStream, EngineResult, Resubscribe,
};
use crate::core::health::EngineStatus;

/// Events queued between the stream and the view (the stream waits when it is full).
const QUEUE: usize = 1024;
/// Events applied together in one change of the view, at most.
const MAX_BATCH: usize = 256;
/// Fetches after events running at once, at most.
const FETCHES: usize = 4;

type Queue = mpsc::Receiver<EngineResult<EngineEvent>>;

/// Follows Docker until `stop`.
pub async fn run(
    view: Arc<LiveView>,
    engine: Arc<dyn ContainerEngine>,
    mut health: Option<watch::Receiver<EngineStatus>>,
    stop: CancellationToken,
) {
    let mut resubscribe = Resubscribe::default();
    while !stop.is_cancelled() {
        view.set_readiness(Readiness::Building);
        let queue = subscribe(engine.engine_events(Some(now_ns())), &stop);
        let synced = tokio::select! {
            _ = stop.cancelled() => return,
            r = fetch::all(&view, engine.as_ref()) => r,
        };
        let worked = match synced {
            Ok(()) => {
                view.set_readiness(Readiness::Ready);
                follow(&view, &engine, queue, &stop).await
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read Docker's state; retrying");
                view.set_readiness(Readiness::Down(e.to_string()));
                false
            }
        };
        if stop.is_cancelled() {
            return;
        }
        view.set_readiness(Readiness::Down("the Docker event stream ended".into()));
        if !pause(&mut resubscribe, worked, health.as_mut(), &stop).await {
            return;
        }
    }
}

/// Reads the stream on a task of its own from now on, so that the engine starts sending
/// while the resync runs; its events wait in the queue.
fn subscribe(mut events: EngineEventStream, stop: &CancellationToken) -> Queue {
    let (tx, rx) = mpsc::channel(QUEUE);
    let stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                n = events.next() => n,
            };
            let Some(item) = next else { return };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Waits before subscribing again: the pause grows while Docker fails, and ends early when
/// the health probe sees Docker come back. False when `stop` came first.
async fn pause(
    resubscribe: &mut Resubscribe,
    worked: bool,
    health: Option<&mut watch::Receiver<EngineStatus>>,
    stop: &CancellationToken,
) -> bool {
    let Some(health) = health else {
        return resubscribe.wait(worked, stop).await;
    };
    health.mark_unchanged();
    let back = async {
        loop {
            if health.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if health.borrow().is_reachable() {
                return;
            }
        }
    };
    tokio::select! {
        r = resubscribe.wait(worked, stop) => r,
        _ = back => !stop.is_cancelled(),
    }
}

/// Applies events until the stream ends; true when any arrived.
async fn follow(
    view: &Arc<LiveView>,
    engine: &Arc<dyn ContainerEngine>,
    mut queue: Queue,
    stop: &CancellationToken,
) -> bool {
    let fetcher = Fetcher::new(view.clone(), engine.clone());
    let mut received = false;
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return received,
            n = queue.recv() => n,
        };
        let mut batch = Vec::new();
        let mut ended = !take(first, &mut batch);
        while !ended && batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(item) => ended = !take(Some(item), &mut batch),
                Err(_) => break,
            }
        }
        received |= !batch.is_empty();
        let followups = view.update(|s| batch.iter().map(|e| s.apply_event(e)).collect::<Vec<_>>());
        crate::core::metrics::docker_events_applied(batch.iter().map(|e| e.time_nano), now_ns());
        for f in followups {
            fetcher.start(f);
        }
        if ended {
            return received;
        }
    }
}

/// Adds an event to the batch; false when the stream ended or failed.
fn take(item: Option<EngineResult<EngineEvent>>, batch: &mut Vec<EngineEvent>) -> bool {
    match item {
        Some(Ok(e)) => {
            tracing::trace!(object = ?e.object, action = %e.action, id = %e.id, "engine event");
            batch.push(e);
            true
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "Docker event stream failed");
            false
        }
        None => false,
    }
}

/// Runs the fetches events ask for, a few at a time; image and volume lists are read once
/// for any number of events that arrive while a read is running.
struct Fetcher {
    view: Arc<LiveView>,
    engine: Arc<dyn ContainerEngine>,
    slots: Arc<Semaphore>,
    images: Arc<Pending>,
    volumes: Arc<Pending>,
}

/// A list read that is running (`running`) and should run again when done (`again`).
#[derive(Default)]
struct Pending {
    running: AtomicBool,
    again: AtomicBool,
}

impl Fetcher {
    fn new(view: Arc<LiveView>, engine: Arc<dyn ContainerEngine>) -> Self {
        Self {
            view,
            engine,
            slots: Arc::new(Semaphore::new(FETCHES)),
            images: Arc::default(),
            volumes: Arc::default(),
        }
    }

    fn start(&self, f: Followup) {
        let (view, engine, slots) = (self.view.clone(), self.engine.clone(), self.slots.clone());
        match f {
            Followup::Nothing => {}
            Followup::Inspect(ref id) | Followup::Fetch(ref id) => {
                let listed = matches!(f, Followup::Fetch(_));
                let id = id.clone();
                tokio::spawn(async move {
                    let _slot = slots.acquire().await;
                    if let Err(e) = fetch::container(&view, engine.as_ref(), &id, listed).await {
                        tracing::debug!(container = %id, error = %e, "cannot read a container after its event");
                    }
                });
            }
            Followup::Images => coalesced(self.images.clone(), move || {
                let (view, engine) = (view.clone(), engine.clone());
                async move { fetch::images(&view, engine.as_ref(), &[]).await }
            }),
            Followup::Volumes => coalesced(self.volumes.clone(), move || {
                let (view, engine) = (view.clone(), engine.clone());
                async move { fetch::volumes(&view, engine.as_ref()).await }
            }),
        }
    }
}

/// Runs `read` unless one runs already; then that one runs once more when done.
fn coalesced<F, Fut>(pending: Arc<Pending>, read: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = EngineResult<()>> + Send,
{
    pending.again.store(true, Ordering::SeqCst);
    if pending.running.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async move {
        loop {
            while pending.again.swap(false, Ordering::SeqCst) {
                if let Err(e) = read().await {
                    tracing::debug!(error = %e, "cannot read a list after its event");
                }
            }
            pending.running.store(false, Ordering::SeqCst);
            // An event that came between the last read and now runs it once more.
            if !pending.again.load(Ordering::SeqCst) || pending.running.swap(true, Ordering::SeqCst)
            {
                return;
            }
        }
    });
}
