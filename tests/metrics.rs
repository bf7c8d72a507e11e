//! `GET /metrics`: served only on listeners that opt in, behind their auth, in the
//! Prometheus text format that `promtool check metrics` accepts, with figures that follow
//! what the daemon did (operations, apps, connections, websockets).

mod common;

use std::time::Duration;

use common::bundle::{app_zip, import};
use common::ws::Ws;
use common::{enc, metric as sample, promtool_accepts, test_image, unique, wait_for, Gantry, Resp};

const TOKEN: &str = "metrics-test-token-0123456789ab";

fn scrape(g: &Gantry) -> String {
    let r = g.get("/metrics");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(
        r.content_type(),
        "text/plain; version=0.0.4; charset=utf-8",
        "{r}"
    );
    r.text()
}

#[test]
fn metrics_are_served_only_where_enabled_and_behind_the_listeners_auth() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let g = with_metrics(
        Gantry::builder()
            .listener("auth = \"token\"")
            .listener(&format!("token_file = \"{}\"", token.display())),
    );
    assert_eq!(g.get("/metrics").status, 401);
    let g = g.with_token(TOKEN);
    let text = scrape(&g);
    assert!(text.contains("gantry_build_info{version=\""), "{text}");
    assert!(
        sample(&text, "process_resident_memory_bytes").unwrap() > 1e6,
        "{text}"
    );
    assert!(sample(&text, "gantry_http_connections{dialect=\"transfer\"}").unwrap() >= 1.0);
    promtool_accepts(&text);

    let off = Gantry::builder().start();
    off.get("/metrics").expect_problem(404, "/metrics");
}

fn ticking_app(name: &str) -> Vec<u8> {
    app_zip(
        name,
        "1",
        &format!(
            "services:\n  main:\n    image: {}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do echo tick; sleep 0.5; done\"]\n    stop_grace_period: 1s\n",
            test_image()
        ),
    )
}

fn put(g: &Gantry, path: &str) -> Resp {
    g.put(path)
}

fn with_metrics(b: common::GantryBuilder) -> Gantry {
    b.listener("metrics = true").start()
}

/// A ticking app imported into `g`: its id and its REST path.
fn imported_app(g: &Gantry) -> (String, String) {
    let name = unique("metrics");
    import(g, &ticking_app(&name)).expect_json(200);
    let id = format!("{name}:1");
    let app = format!("/api/1/transfer/apps/{}", enc(&id));
    (id, app)
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn metrics_follow_operations_apps_and_websockets() {
    let host = require_docker!();
    let g = with_metrics(Gantry::builder().docker_host(&host));
    let (id, app) = imported_app(&g);
    put(&g, &format!("{app}/start")).expect_json(200);

    let text = scrape(&g);
    let ok = |kind: &str| format!("gantry_operations_total{{kind=\"{kind}\",outcome=\"ok\"}}");
    assert_eq!(sample(&text, &ok("import")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &ok("start")), Some(1.0), "{text}");
    let count = "gantry_operation_duration_seconds_count{kind=\"start\",outcome=\"ok\"}";
    assert_eq!(sample(&text, count), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "gantry_apps{status=\"running\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "gantry_docker_up"), Some(1.0), "{text}");

    // A websocket session (the app's logs followed) is counted while it is open.
    let ws = Ws::connect(&g, &format!("/events/transfer/apps/{}/logs", enc(&id)));
    let open = "gantry_websocket_sessions{dialect=\"transfer\"}";
    assert_eq!(sample(&scrape(&g), open), Some(1.0));
    drop(ws);
    let closed = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        (sample(&scrape(&g), open) == Some(0.0)).then_some(())
    });
    assert!(closed.is_some(), "the session stayed counted");

    // The stop makes Docker events, which gantry's watcher acts on.
    let events = sample(&text, "gantry_docker_events_total").unwrap_or(0.0);
    put(&g, &format!("{app}/stop")).expect_json(200);
    let text = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        let t = scrape(&g);
        (sample(&t, "gantry_docker_events_total").unwrap_or(0.0) > events).then_some(t)
    })
    .expect("no Docker event was counted");
    assert!(
        sample(&text, "gantry_docker_event_lag_seconds").is_some(),
        "{text}"
    );
    assert_eq!(sample(&text, &ok("stop")), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "gantry_apps{status=\"stopped\"}"),
        Some(1.0),
        "{text}"
    );
    promtool_accepts(&text);
}
