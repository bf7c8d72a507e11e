//! The scheduler against the in-memory engine: concurrency within a level, order across
//! levels.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::core::compose::ComposePolicy;
use crate::testutil::FakeEngine;

/// The engine calls that change something.
const CHANGES: &[&str] = &[
    "create_container",
    "start_container",
    "stop_container_with_timeout",
    "remove_container",
    "create_network",
    "remove_network",
    "create_volume",
];

/// The engine with the image `x`, where creating, starting and stopping a container and
/// creating a network or a volume take 50 ms, so that work that may overlap does.
fn engine() -> FakeEngine {
    let fake = FakeEngine::with_images(&["x"]);
    for slow in &CHANGES[..3] {
        fake.delay(slow, Duration::from_millis(50));
    }
    fake.delay("create_network", Duration::from_millis(50));
    fake.delay("create_volume", Duration::from_millis(50));
    fake
}

/// Asserts that the call `a` had returned before the call `b` was made.
#[track_caller]
fn assert_before(fake: &FakeEngine, a: &str, b: &str) {
    let listing = fake.listing();
    assert!(
        fake.finished_before(a, b),
        "{a} did not return before {b}: {listing}"
    );
}

/// The call of `method` for the container of the service `s` of project `p`.
fn call(method: &str, s: &str) -> String {
    format!("{method} p_{s}_1")
}

async fn down(p: &ComposeProject, fake: &FakeEngine) -> DownResult {
    let res = p.down(fake, &DownOptions::default(), &|_| {}).await;
    res.unwrap_or_else(|e| panic!("{e}: {}", fake.listing()))
}

fn project(yaml: &str) -> ComposeProject {
    ComposeProject::from_text(
        Path::new("/tmp/app"),
        Path::new("/tmp/app/compose.yaml"),
        yaml,
        "p",
        "p",
        &HashMap::new(),
        &ComposePolicy::default(),
    )
    .unwrap()
}

const YAML: &str = r#"
services:
  a: {image: x, healthcheck: {test: [CMD, "true"]}}
  b: {image: x}
  c: {image: x}
  d: {image: x, depends_on: {a: {condition: service_healthy}, b: {condition: service_started}}}
"#;

#[tokio::test]
async fn independent_services_run_concurrently_dependents_after() {
    let fake = engine();
    let p = project(YAML);
    let res = p.up(&fake, &|_| {}).await.unwrap();
    // All four are fresh: created together; d (needs a healthy, b started) starts last.
    assert_eq!(fake.max_in_flight(), 4, "{}", fake.listing());
    let start = |s| call("start_container", s);
    assert_before(&fake, &start("a"), &start("d"));
    assert_before(&fake, &start("b"), &start("d"));
    assert_eq!(res.running_containers, ["p_a_1", "p_b_1", "p_c_1", "p_d_1"]);

    // Unchanged: nothing is created again.
    fake.clear_calls();
    let res = p.up(&fake, &|_| {}).await.unwrap();
    assert!(fake.calls_to(CHANGES).is_empty(), "{:?}", res.lines);
    assert!(res.lines.contains(&"p_d_1 is up-to-date".to_string()));

    // Down: d (a dependent) and c (nobody depends on it) stop first, together; a and b
    // only after d has stopped.
    fake.clear_calls();
    let stop = |s| call("stop_container_with_timeout", s);
    fake.gate(&[&stop("c"), &stop("d")]);
    let res = down(&p, &fake).await;
    for s in ["a", "b"] {
        assert_before(&fake, &stop("d"), &stop(s));
    }
    assert_eq!(res.removed_containers.len(), 4);
    assert!(fake.containers().is_empty());
}

#[tokio::test]
async fn a_failing_service_stops_the_rollout_and_says_so() {
    let fake = engine();
    // The fake's containers run forever: a completion wait can only time out.
    let p = project(
            "services: {a: {image: x, depends_on: {b: {condition: service_completed_successfully}}}, b: {image: x}}",
        );
    let lines = Mutex::new(Vec::new());
    let mut p = p;
    p.set_wait_timeout(Duration::from_millis(300));
    let e = p
        .up(&fake, &|l| lines.lock().unwrap().push(l.to_string()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("did not complete within 0s"), "{e}");
    let lines = lines.into_inner().unwrap();
    assert!(lines
        .last()
        .unwrap()
        .starts_with("ERROR: service \"a\": dependency \"b\""));
    assert!(!lines.iter().any(|l| l.contains("p_a_1")), "{lines:?}");
    // a's container, created ahead of b's completion, went again with the failure.
    let left: Vec<String> = fake.containers().into_iter().map(|c| c.name).collect();
    assert_eq!(left, ["p_b_1"]);
}

const FORK: &str = r#"
services:
  a: {image: x, volumes: ["data:/data"], networks: [n]}
  b: {image: x, networks: [n], healthcheck: {test: [CMD, "true"]}}
  c: {image: x, networks: [n], depends_on: [a]}
  d:
    image: x
    networks: [n]
    depends_on: {a: {condition: service_started}, b: {condition: service_healthy}}
networks:
  n: {}
volumes:
  data: {}
"#;

/// up: the network and the volume are created together; then all four containers (all
/// fresh) are created together; a and b (independent) start together; c (needs a) and d
/// (needs a, b healthy) start only after their dependencies started, and together.
/// down: the reverse, c and d together first, each container removed once stopped, the
/// network after all containers. The gates make this deterministic: run in sequence, a
/// gated call would wait for its partner forever.
#[tokio::test]
async fn independent_work_overlaps_and_dependency_order_holds() {
    let fake = engine();
    let p = project(FORK);
    let (create, start) = (
        |s| call("create_container", s),
        |s| call("start_container", s),
    );
    fake.gate(&["create_network p_n", "create_volume p_data"]);
    fake.gate(&[&create("a"), &create("b"), &create("c"), &create("d")]);
    fake.gate(&[&start("a"), &start("b")]);
    fake.gate(&[&start("c"), &start("d")]);
    let lines = Mutex::new(Vec::new());
    let res = p
        .up(&fake, &|l| lines.lock().unwrap().push(l.to_string()))
        .await
        .unwrap();
    for (dep, dependent) in [("a", "c"), ("a", "d"), ("b", "d")] {
        assert_before(&fake, &start(dep), &start(dependent));
    }
    for s in ["a", "b", "c", "d"] {
        assert_before(&fake, "create_network p_n", &create(s));
        assert_before(&fake, "create_volume p_data", &create(s));
    }
    assert_eq!(res.running_containers, ["p_a_1", "p_b_1", "p_c_1", "p_d_1"]);
    // Network and volume lines come first, in plan order; every service says done.
    let lines = lines.into_inner().unwrap();
    assert_eq!(lines, res.lines);
    assert_eq!(
        lines[..2],
        [
            "Creating network \"p_n\" with the default driver",
            "Creating volume \"p_data\" with default driver",
        ]
    );
    for s in ["a", "b", "c", "d"] {
        assert!(
            lines.contains(&format!("Creating p_{s}_1 ... done")),
            "{lines:?}"
        );
    }

    fake.clear_calls();
    let stop = |s| call("stop_container_with_timeout", s);
    let remove = |s| call("remove_container", s);
    fake.gate(&[&stop("c"), &stop("d")]);
    let res = down(&p, &fake).await;
    for (dependent, dep) in [("c", "a"), ("d", "a"), ("d", "b")] {
        assert_before(&fake, &stop(dependent), &stop(dep));
    }
    for s in ["a", "b", "c", "d"] {
        assert_before(&fake, &stop(s), &remove(s));
        assert_before(&fake, &remove(s), "remove_network p_n");
    }
    assert_eq!(res.removed_networks, ["p_n"]);
    let mut removed = res.removed_containers.clone();
    removed.sort();
    assert_eq!(removed, ["p_a_1", "p_b_1", "p_c_1", "p_d_1"]);
    assert!(fake.containers().is_empty());
}

/// Six independent services with a limit of 2: never more than two engine calls at once.
#[tokio::test]
async fn concurrency_is_bounded() {
    let fake = engine();
    let mut p = project(
            "services: {a: {image: x}, b: {image: x}, c: {image: x}, d: {image: x}, e: {image: x}, f: {image: x}}",
        );
    p.set_parallel_limit(2);
    // Creates meet in pairs (so two do run at once); more than two would show below.
    fake.gate(&["create_container *", "create_container *"]);
    p.up(&fake, &|_| {}).await.unwrap();
    assert_eq!(fake.max_in_flight(), 2, "{}", fake.listing());
    fake.clear_calls();
    let res = down(&p, &fake).await;
    assert_eq!(res.removed_containers.len(), 6);
    assert_eq!(fake.max_in_flight(), 2, "{}", fake.listing());
}

/// A chain (c needs b, b needs a) beside an independent x: up starts a, b, c in that order;
/// down stops them in the reverse order, c together with x first.
#[tokio::test]
async fn down_runs_in_reverse_dependency_order() {
    let fake = engine();
    let p = project(
        "services: {a: {image: x}, b: {image: x, depends_on: [a]}, c: {image: x, depends_on: [b]}, x: {image: x}}",
    );
    p.up(&fake, &|_| {}).await.unwrap();
    let start = |s| call("start_container", s);
    assert_before(&fake, &start("a"), &start("b"));
    assert_before(&fake, &start("b"), &start("c"));

    fake.clear_calls();
    let stop = |s| call("stop_container_with_timeout", s);
    fake.gate(&[&stop("c"), &stop("x")]);
    let res = down(&p, &fake).await;
    assert_before(&fake, &stop("c"), &stop("b"));
    assert_before(&fake, &stop("b"), &stop("a"));
    let mut removed = res.removed_containers;
    removed.sort();
    assert_eq!(removed, ["p_a_1", "p_b_1", "p_c_1", "p_x_1"]);
}

#[test]
fn the_order_runs_both_ways() {
    let p = project(
        "services: {a: {image: x}, b: {image: x, depends_on: [a]}, c: {image: x, network_mode: \"service:a\", depends_on: [b]}}",
    );
    let forward = schedule::order(p.plan(), schedule::Direction::Forward);
    assert_eq!(
        forward,
        [("a", vec![]), ("b", vec!["a"]), ("c", vec!["b", "a"])]
    );
    let backward = schedule::order(p.plan(), schedule::Direction::Backward);
    assert_eq!(
        backward,
        [("a", vec!["b", "c"]), ("b", vec!["c"]), ("c", vec![])]
    );
}

/// Job 2 waits for job 1, which fails: halted, job 2 never runs; continued, it runs with
/// nothing from job 1; job 3 (independent) runs either way.
#[tokio::test]
async fn a_failure_halts_or_is_passed() {
    use schedule::{OnError, Scheduler, Slot};
    for (on_error, second_runs) in [(OnError::Halt, false), (OnError::Continue, true)] {
        let mut jobs: Scheduler<'_, u8, u8> = Scheduler::new(2, on_error);
        let fail = ComposeError::Invalid {
            scope: "job 1".into(),
            message: "failed".into(),
        };
        jobs.add(1, vec![], Slot::Needed, move |_| {
            Box::pin(async { Err(fail) })
        });
        jobs.add(2, vec![1], Slot::Needed, |inputs| {
            Box::pin(async move { Ok(inputs.len() as u8) })
        });
        jobs.add(3, vec![], Slot::None, |_| Box::pin(async { Ok(3) }));
        let outcome = jobs.run().await;
        assert_eq!(outcome.errors.len(), 1);
        assert_eq!(outcome.launched.contains(&2), second_runs, "{on_error:?}");
        assert_eq!(outcome.outputs.get(&2).copied(), second_runs.then_some(0));
        assert_eq!(outcome.outputs.get(&3), Some(&3));
    }
}
