//! Follows Docker's container events so that app status changes made outside gantry (a
//! `docker stop` of an app's container, a crash, Docker's restart policy) reach the event
//! bus as App events.
//!
//! Like the Intervirt watcher (src/core/intervirt/watch.rs) it shares the engine's
//! `container_events` seam: each (re)subscription is followed by a resync of every app,
//! since events between two subscriptions are lost, and each event makes gantry re-read its
//! app's state from Docker instead of trusting the event; an App event is published only
//! when that state differs from the last one published.

use std::ops::Deref;

use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::lifecycle::Apps;
use super::AppId;
use crate::core::compose::plan::LABEL_APP_ID;
use crate::core::engine::{ContainerEngine, Filter, Resubscribe};

/// Events taken together at most, before their apps are re-read.
const MAX_BATCH: usize = 256;

/// Container actions that can change an app's status or container list. (`kill` only
/// sends a signal; the `die` that follows is the change.)
fn relevant(action: &str) -> bool {
    matches!(
        action,
        "create" | "start" | "restart" | "die" | "stop" | "oom" | "pause" | "unpause" | "destroy"
    )
}

/// The apps service of a shared core, for [`run`].
pub struct CoreApps(pub std::sync::Arc<crate::core::Core>);

impl Deref for CoreApps {
    type Target = Apps;
    fn deref(&self) -> &Apps {
        &self.0.apps
    }
}

/// Runs until `stop`; `apps` is anything that leads to the apps service (e.g. the core).
pub async fn run<A>(apps: A, engine: &dyn ContainerEngine, stop: CancellationToken)
where
    A: Deref<Target = Apps>,
{
    let mut resubscribe = Resubscribe::default();
    while !stop.is_cancelled() {
        let mut events = engine.container_events(&[Filter::Label(LABEL_APP_ID.to_string())]);
        let resynced = tokio::select! {
            _ = stop.cancelled() => return,
            r = apps.publish_changes() => r,
        };
        if let Err(e) = &resynced {
            tracing::debug!(error = %e, "app status resync failed; retrying");
        }
        let mut received = false;
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = events.next() => n,
            };
            let mut ended = false;
            let mut changed: Vec<AppId> = Vec::new();
            let mut died: Vec<String> = Vec::new();
            let mut sent = Vec::new();
            let mut next = next;
            let mut batch = 0;
            // Events already waiting are taken together: one re-read per app, not per event
            // (a `docker stop` alone sends kill, die and stop).
            loop {
                match next {
                    Some(Ok(event)) => {
                        received = true;
                        if relevant(&event.action) {
                            sent.push(event.time);
                            if let Some(id) = event.labels.get(LABEL_APP_ID) {
                                tracing::debug!(app = %id, container = %event.name, action = %event.action, "app container event");
                                let id = AppId::from(id.as_str());
                                if !changed.contains(&id) {
                                    changed.push(id);
                                }
                                if event.action == "die" && !died.contains(&event.id) {
                                    died.push(event.id.clone());
                                }
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "Docker event stream failed");
                        ended = true;
                        break;
                    }
                    None => {
                        ended = true;
                        break;
                    }
                }
                batch += 1;
                if batch >= MAX_BATCH {
                    break;
                }
                match events.next().now_or_never() {
                    Some(n) => next = n,
                    None => break,
                }
            }
            // dockerd sends `die` before its container list says so; an inspect waits for
            // the container's lock, i.e. until dockerd has recorded the exit.
            for container in &died {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = engine.inspect_container(container) => {}
                }
            }
            for id in &changed {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = apps.publish_app(id, false) => {}
                }
            }
            // The lag: from Docker sending an event to its app's state being published.
            sent.into_iter()
                .for_each(crate::core::metrics::docker_event);
            if ended {
                break;
            }
        }
        if !resubscribe.wait(received && resynced.is_ok(), &stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bollard::models::{ContainerInspectResponse, ContainerSummary};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::core::apps::import::ImportSettings;
    use crate::core::apps::lifecycle::AppStatus;
    use crate::core::engine::{ContainerEvent, EngineError, EngineResult, EventStream};
    use crate::core::events::AppEvent;
    use crate::testutil::{store_web_app, web_app_container};

    /// Docker as far as the watcher sees it: one app container whose state the test sets,
    /// and event streams the test feeds (one per subscription).
    #[derive(Default)]
    struct FakeDocker {
        running: Mutex<bool>,
        streams: Mutex<Vec<mpsc::UnboundedReceiver<EngineResult<ContainerEvent>>>>,
        subscriptions: Mutex<usize>,
    }

    crate::testutil::fake_engine! {
        impl ContainerEngine for FakeDocker;
        not_faked: version, list_images, inspect_image, load_images, export_image, remove_image,
            prune_images, list_containers, start_container, stop_container, restart_container,
            remove_container, prune_containers, list_volumes, inspect_volume, remove_volume,
            prune_volumes;
        async fn inspect_container(&self, _: &str) -> EngineResult<ContainerInspectResponse> {
            Ok(ContainerInspectResponse::default())
        }
        async fn list_containers_filtered(
            &self,
            _: &[Filter],
        ) -> EngineResult<Vec<ContainerSummary>> {
            Ok(vec![web_app_container(*self.running.lock().unwrap(), &[])])
        }

        fn container_events(&self, filters: &[Filter]) -> EventStream {
            assert_eq!(filters, &[Filter::Label(LABEL_APP_ID.to_string())]);
            *self.subscriptions.lock().unwrap() += 1;
            match self.streams.lock().unwrap().pop() {
                Some(mut rx) => Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))),
                None => Box::pin(futures_util::stream::pending()),
            }
        }
    }

    fn event(action: &str, app: Option<&str>) -> EngineResult<ContainerEvent> {
        let mut labels = BTreeMap::new();
        if let Some(app) = app {
            labels.insert(LABEL_APP_ID.to_string(), app.to_string());
        }
        Ok(ContainerEvent {
            id: "c1".into(),
            name: "web1_main_1".into(),
            action: action.into(),
            labels,
            time: None,
        })
    }

    struct Shared(Arc<Apps>);
    impl Deref for Shared {
        type Target = Apps;
        fn deref(&self) -> &Apps {
            &self.0
        }
    }

    async fn next_status(s: &mut crate::core::events::Subscription) -> AppStatus {
        let e = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("no event")
            .expect("subscription ended");
        match &*e {
            AppEvent::App(v) => v.status,
            other => panic!("expected App, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn container_events_become_app_events_and_reconnects_resync() {
        let state = tempfile::tempdir().unwrap();
        // One stored app with one service.
        store_web_app(state.path(), "services:\n  main:\n    image: busybox\n");

        let docker = Arc::new(FakeDocker::default());
        *docker.running.lock().unwrap() = true;
        let (first_tx, first_rx) = mpsc::unbounded_channel();
        let (second_tx, second_rx) = mpsc::unbounded_channel();
        // Popped from the end: the first subscription gets `first_rx`.
        docker.streams.lock().unwrap().extend([second_rx, first_rx]);
        let apps =
            Arc::new(Apps::open(docker.clone(), state.path(), ImportSettings::default()).unwrap());
        let mut sub = apps.events().subscribe(CancellationToken::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (apps, docker, stop) = (apps.clone(), docker.clone(), stop.clone());
            async move { run(Shared(apps), docker.as_ref(), stop).await }
        });

        // The first resync publishes the app's state.
        assert_eq!(next_status(&mut sub).await, AppStatus::Running);

        // Stopped behind gantry's back.
        *docker.running.lock().unwrap() = false;
        first_tx.send(event("die", Some("web:1"))).unwrap();
        assert_eq!(next_status(&mut sub).await, AppStatus::Stopped);

        // The stream breaks while the container starts again, unseen: the resync after the
        // resubscription publishes it.
        *docker.running.lock().unwrap() = true;
        first_tx
            .send(Err(EngineError::Unavailable("dockerd went away".into())))
            .unwrap();
        assert_eq!(next_status(&mut sub).await, AppStatus::Running);
        assert_eq!(*docker.subscriptions.lock().unwrap(), 2);

        // On the second stream: a stop (kill, die, stop) gives one App event; events of other
        // containers and events that change nothing give none, so the next event is the
        // start after them.
        *docker.running.lock().unwrap() = false;
        for a in ["kill", "die", "stop"] {
            second_tx.send(event(a, Some("web:1"))).unwrap();
        }
        assert_eq!(next_status(&mut sub).await, AppStatus::Stopped);
        second_tx.send(event("die", None)).unwrap();
        second_tx.send(event("stop", Some("web:1"))).unwrap();
        second_tx.send(event("destroy", Some("web:1"))).unwrap();
        // Let those be handled before the state changes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        *docker.running.lock().unwrap() = true;
        second_tx.send(event("start", Some("web:1"))).unwrap();
        assert_eq!(next_status(&mut sub).await, AppStatus::Running);

        // Stop ends the watcher promptly, even while it waits for events.
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watcher did not stop")
            .unwrap();
        drop(first_tx);
    }
}
