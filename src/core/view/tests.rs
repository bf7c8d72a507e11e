//! The view's rules on their own: events in and out of order, fetched facts racing events,
//! tombstones, App events; then the follower against a fake engine (resync, reads without
//! engine calls, a dropped stream).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{
    ContainerConfig, ContainerInspectResponse, ContainerState as DockerState,
    ContainerStateStatusEnum,
};
use tokio_util::sync::CancellationToken;

use super::model::{Container, Health, RunState};
use super::state::{Followup, Snapshot};
use super::*;
use crate::core::engine::{ContainerEngine, EngineError, EngineEvent, EventObject};
use crate::testutil::{FakeContainer, FakeEngine};

const S: i64 = 1_000_000_000;

fn event(action: &str, id: &str, t: i64) -> EngineEvent {
    EngineEvent {
        object: EventObject::Container,
        action: action.into(),
        id: id.into(),
        attributes: BTreeMap::from([
            ("name".to_string(), format!("{id}-name")),
            ("exitCode".to_string(), "3".to_string()),
        ]),
        time_nano: t,
    }
}

fn inspect(id: &str, status: ContainerStateStatusEnum) -> ContainerInspectResponse {
    ContainerInspectResponse {
        id: Some(id.into()),
        name: Some(format!("/{id}-name")),
        created: Some("2024-01-01T00:00:00Z".into()),
        state: Some(DockerState {
            status: Some(status),
            started_at: Some("2024-01-01T00:00:01Z".into()),
            finished_at: Some("0001-01-01T00:00:00Z".into()),
            ..Default::default()
        }),
        config: Some(ContainerConfig {
            labels: Some([("com.docker.compose.project".to_string(), "web1".to_string())].into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn snapshot_with(id: &str, status: ContainerStateStatusEnum, as_of: i64) -> Snapshot {
    let listed = bollard::models::ContainerSummary {
        id: Some(id.into()),
        ..Default::default()
    };
    let c = Container::from_inspect(&inspect(id, status), Some(listed), as_of);
    let mut s = Snapshot::default();
    s.replace_containers(vec![c], 0);
    s
}

fn run_state(s: &Snapshot, id: &str) -> Option<RunState> {
    s.containers.get(id).map(|c| c.state.run)
}

#[test]
fn events_change_state_at_once_and_ask_for_details() {
    let mut s = snapshot_with("c1", ContainerStateStatusEnum::RUNNING, 10 * S);
    assert_eq!(
        s.apply_event(&event("die", "c1", 20 * S)),
        Followup::Inspect("c1".into())
    );
    let c = &s.containers["c1"];
    assert_eq!(c.state.run, RunState::Exited);
    assert_eq!(c.state.exit_code, 3);
    assert_eq!(c.state.finished_at, Some(20 * S));
    // The stop that follows a die changes nothing.
    assert_eq!(
        s.apply_event(&event("stop", "c1", 21 * S)),
        Followup::Nothing
    );
    s.apply_event(&event("start", "c1", 30 * S));
    assert_eq!(run_state(&s, "c1"), Some(RunState::Running));
    s.apply_event(&event("health_status: unhealthy", "c1", 31 * S));
    assert_eq!(s.containers["c1"].state.health, Some(Health::Unhealthy));
}

#[test]
fn events_older_than_what_the_view_knows_are_skipped() {
    // Inspected at 50 s, running: a die stamped at 40 s is already part of that.
    let mut s = snapshot_with("c1", ContainerStateStatusEnum::RUNNING, 50 * S);
    assert_eq!(
        s.apply_event(&event("die", "c1", 40 * S)),
        Followup::Nothing
    );
    assert_eq!(run_state(&s, "c1"), Some(RunState::Running));
    // An inspect sent before an event that was applied is stale: it is dropped.
    s.apply_event(&event("die", "c1", 60 * S));
    let stale = (inspect("c1", ContainerStateStatusEnum::RUNNING), None);
    assert!(!s.apply_fetched("c1", Some(stale), 55 * S));
    assert_eq!(run_state(&s, "c1"), Some(RunState::Exited));
    // One sent after it is taken.
    let fresh = (inspect("c1", ContainerStateStatusEnum::EXITED), None);
    assert!(s.apply_fetched("c1", Some(fresh), 61 * S));
    assert_eq!(s.containers["c1"].as_of, 61 * S);
}

#[test]
fn removed_containers_do_not_come_back_with_late_events() {
    let mut s = snapshot_with("c1", ContainerStateStatusEnum::RUNNING, 10 * S);
    s.apply_event(&event("destroy", "c1", 20 * S));
    assert!(s.containers.is_empty());
    for late in ["die", "start", "create"] {
        assert_eq!(s.apply_event(&event(late, "c1", 15 * S)), Followup::Nothing);
    }
    let late = (inspect("c1", ContainerStateStatusEnum::RUNNING), None);
    assert!(!s.apply_fetched("c1", Some(late), 19 * S));
    assert!(s.containers.is_empty());
}

#[test]
fn new_containers_appear_from_their_create_event() {
    let mut s = Snapshot::default();
    s.replace_containers(Vec::new(), 100 * S);
    // Older than the resync's list, which did not have it: gone by then.
    assert_eq!(
        s.apply_event(&event("create", "old", 90 * S)),
        Followup::Nothing
    );
    assert_eq!(
        s.apply_event(&event("create", "c2", 110 * S)),
        Followup::Fetch("c2".into())
    );
    let c = &s.containers["c2"];
    assert_eq!(c.state.run, RunState::Created);
    assert_eq!(c.name, "c2-name");
    // A start of a container the view missed asks for it.
    assert_eq!(
        s.apply_event(&event("start", "c3", 120 * S)),
        Followup::Fetch("c3".into())
    );
}

async fn next(sub: &mut crate::core::events::Subscription) -> Option<Arc<AppEvent>> {
    tokio::time::timeout(Duration::from_millis(100), sub.next())
        .await
        .ok()
        .map(|e| e.expect("subscription ended"))
}

#[test]
fn a_new_containers_list_entry_is_kept_even_when_an_event_overtook_its_fetch() {
    let mut s = Snapshot::default();
    s.replace_containers(Vec::new(), 0);
    assert_eq!(
        s.apply_event(&event("create", "c2", 10 * S)),
        Followup::Fetch("c2".into())
    );
    // The start comes before the fetch the create asked for (sent at 11 s) answers.
    assert_eq!(
        s.apply_event(&event("start", "c2", 12 * S)),
        Followup::Fetch("c2".into())
    );
    let entry = bollard::models::ContainerSummary {
        id: Some("c2".into()),
        command: Some("sleep 300".into()),
        ..Default::default()
    };
    let stale = (
        inspect("c2", ContainerStateStatusEnum::CREATED),
        Some(entry),
    );
    assert!(!s.apply_fetched("c2", Some(stale), 11 * S));
    let c = &s.containers["c2"];
    assert_eq!(c.state.run, RunState::Running);
    assert_eq!(c.summary.command.as_deref(), Some("sleep 300"));
    assert_eq!(c.summary.names, Some(vec!["/c2-name".to_string()]));
    assert!(c.listed);
}

#[tokio::test]
async fn app_events_follow_changes_but_not_status_texts() {
    let bus = crate::core::events::EventBus::default();
    let mut sub = bus.subscribe(CancellationToken::new());
    let view = LiveView::new(bus);
    view.set_readiness(Readiness::Ready);
    let state = tempfile::tempdir().unwrap();
    crate::testutil::store_web_app(state.path(), "services:\n  main:\n    image: busybox\n");
    let store = crate::core::apps::store::AppStore::open(&state.path().join("apps")).unwrap();
    let app = store.list().unwrap().remove(0);
    let id = app.id().clone();
    let entry = state::AppEntry {
        project: "web1".into(),
        services: Some(vec!["main".into()]),
        app,
    };
    view.update(|s| s.apps.insert(id.clone(), Arc::new(entry)));
    let status = |e: Option<Arc<AppEvent>>| match e.as_deref() {
        Some(AppEvent::App(v)) => (v.status, v.busy),
        other => panic!("expected App, got {other:?}"),
    };
    assert_eq!(status(next(&mut sub).await), (apps_status::Stopped, false));
    view.update(|s| s.busy.insert(id.clone(), "started"));
    assert_eq!(status(next(&mut sub).await), (apps_status::Stopped, true));
    view.update(|s| {
        let mut i = inspect("c1", ContainerStateStatusEnum::RUNNING);
        let labels = i.config.as_mut().unwrap().labels.as_mut().unwrap();
        labels.insert("com.docker.compose.oneoff".into(), "False".into());
        labels.insert("com.docker.compose.service".into(), "main".into());
        s.apply_fetched("c1", Some((i, None)), 5 * S)
    });
    assert_eq!(status(next(&mut sub).await), (apps_status::Running, true));
    // Nothing an App event shows changed (only the time): no event.
    view.update(|_| ());
    assert!(next(&mut sub).await.is_none());
}

use crate::core::apps::lifecycle::AppStatus as apps_status;

// --- the follower against the in-memory Docker ------------------------------------------------

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..500 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The engine calls a read could make.
const READ_CALLS: &[&str] = &[
    "list_containers",
    "list_containers_filtered",
    "inspect_container",
    "list_images",
    "inspect_image",
    "list_volumes",
];

#[tokio::test]
async fn the_follower_resyncs_serves_reads_without_calls_and_rebuilds_after_a_drop() {
    let fake = Arc::new(FakeEngine::with_images(&["busybox"]));
    fake.add_container(
        FakeContainer::new("one", "busybox")
            .with_id("c1")
            .running(true),
    );
    let view = Arc::new(LiveView::new(crate::core::events::EventBus::default()));
    let stop = CancellationToken::new();
    let task = tokio::spawn(sync::run(view.clone(), fake.clone(), None, stop.clone()));
    let snap = view.current().await.unwrap();
    assert_eq!(run_state(&snap, "c1"), Some(RunState::Running));
    assert_eq!(snap.images_newest_first().len(), 1);

    // Reads cost no engine call.
    fake.clear_calls();
    for _ in 0..100 {
        let snap = view.current().await.unwrap();
        assert_eq!(snap.containers_newest_first(now_ns()).len(), 1);
        assert_eq!(snap.images_newest_first().len(), 1);
        assert!(snap.container("one").is_some());
    }
    assert_eq!(fake.calls_to(READ_CALLS), Vec::<String>::new());

    // A die behind gantry's back: the event alone makes it exited (the inspect it asks
    // for says the same).
    fake.set_running("c1", false);
    fake.emit(Ok(event("die", "c1", now_ns())));
    until("the die", || {
        run_state(&view.snapshot(), "c1") == Some(RunState::Exited)
    })
    .await;

    // The stream drops; meanwhile the container is removed and another created, unseen.
    fake.emit(Err(EngineError::Unavailable("dockerd went away".into())));
    fake.remove_container("c1", true, false).await.unwrap();
    fake.add_container(FakeContainer::new("two", "busybox").with_id("c2"));
    until("the drop", || view.readiness() != Readiness::Ready).await;
    // Reads never show the state from before the drop: they fail until the rebuild, then
    // show what Docker has.
    let snap = loop {
        match view.current().await {
            Ok(s) => break s,
            Err(e) => assert_eq!(e.kind(), crate::core::ErrorKind::Unavailable),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        !snap.containers.contains_key("c1"),
        "{:?}",
        snap.containers.keys()
    );
    assert_eq!(run_state(&snap, "c2"), Some(RunState::Created));

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn images_are_found_by_their_tags() {
    let mut s = Snapshot::default();
    let image = bollard::models::ImageSummary {
        id: "sha256:1".into(),
        repo_tags: vec!["web-app:latest".into(), "reg:5000/x:1".into()],
        ..Default::default()
    };
    s.images.insert(image.id.clone(), Arc::new(image));
    for (reference, found) in [
        ("web-app:latest", true),
        ("web-app", true),
        ("web-app:2", false),
        ("reg:5000/x:1", true),
        ("reg:5000/x", false),
        ("other", false),
    ] {
        assert_eq!(s.has_image(reference), found, "{reference}");
    }
}
