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
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::core::apps::import::ImportSettings;
    use crate::core::apps::lifecycle::AppStatus;
    use crate::core::engine::{ContainerEvent, EngineError, EngineResult};
    use crate::core::events::AppEvent;
    use crate::testutil::{store_web_app, web_app_container, FakeEngine};

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

        // Docker as far as the watcher sees it: the app's container, whose state the test
        // sets, and the event streams the test feeds.
        let docker = Arc::new(FakeEngine::default());
        docker.add_container(web_app_container(true));
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
        docker.set_running("c1", false);
        docker.emit(event("die", Some("web:1")));
        assert_eq!(next_status(&mut sub).await, AppStatus::Stopped);

        // The stream breaks while the container starts again, unseen: the resync after the
        // resubscription publishes it.
        docker.set_running("c1", true);
        docker.emit(Err(EngineError::Unavailable("dockerd went away".into())));
        assert_eq!(next_status(&mut sub).await, AppStatus::Running);
        let app_label = vec![Filter::Label(LABEL_APP_ID.to_string())];
        assert_eq!(docker.subscriptions(), [app_label.clone(), app_label]);

        // On the second stream: a stop (kill, die, stop) gives one App event; events of other
        // containers and events that change nothing give none, so the next event is the
        // start after them.
        docker.set_running("c1", false);
        for a in ["kill", "die", "stop"] {
            docker.emit(event(a, Some("web:1")));
        }
        assert_eq!(next_status(&mut sub).await, AppStatus::Stopped);
        docker.emit(event("die", None));
        docker.emit(event("stop", Some("web:1")));
        docker.emit(event("destroy", Some("web:1")));
        // Let those be handled before the state changes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        docker.set_running("c1", true);
        docker.emit(event("start", Some("web:1")));
        assert_eq!(next_status(&mut sub).await, AppStatus::Running);

        // Stop ends the watcher promptly, even while it waits for events.
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watcher did not stop")
            .unwrap();
    }
}
