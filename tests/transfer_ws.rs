//! The Transfer App's websockets end to end (`/events/transfer/import`, `/events/import`,
//! `/events/transfer/apps/{id}/start`, `/events/start`, `/events/transfer/apps/{id}/stop`,
//! `/events/system/loadimage`) and
//! `PUT /api/cancel/{id}`, with a real websocket client against the gantry binary and the
//! test dockerd.

mod common;

use std::time::Duration;

use common::bundle::{app_zip, fresh_big_image, import, saved_image, slow_app, zip_of};
use common::ws::Ws;
use common::{app_containers, docker_exists, docker_ok, enc, test_image, unique, wait_for, Gantry};
use serde_json::{json, Value};

fn bundle(name: &str, compose: &str, images: &[(String, Vec<u8>)]) -> Vec<u8> {
    let config = format!("Name: {name}\nVersion: 1.0\n");
    let files: Vec<(String, &[u8])> = images
        .iter()
        .enumerate()
        .map(|(i, (_, tar))| (format!("docker/img{i}.tar"), tar.as_slice()))
        .collect();
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("config.yml", config.as_bytes()),
        ("docker-compose.yml", compose.as_bytes()),
    ];
    entries.extend(files.iter().map(|(n, d)| (n.as_str(), *d)));
    zip_of(&entries)
}

fn sleeper_compose(images: &[&str]) -> String {
    let mut c = String::from("services:\n");
    for (i, r) in images.iter().enumerate() {
        c += &format!(
            "  s{i}:\n    image: {r}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 600 & wait\"]\n    stop_grace_period: 1s\n"
        );
    }
    c
}

fn app_path(id: &str) -> String {
    format!("/api/1/transfer/apps/{}", enc(id))
}

fn failure(steps: &[Value]) -> &Value {
    steps
        .iter()
        .find(|s| s["Success"] == false)
        .unwrap_or_else(|| panic!("no failure step in {steps:#?}"))
}

/// Step types after the upload, with consecutive LOAD_IMAGE steps of one subject as one.
fn pipeline(steps: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut last_subject = Value::Null;
    for s in steps {
        let t = s["StepType"].as_str().unwrap().to_string();
        if t == "DATA_TRANSFER" {
            continue;
        }
        if t == "LOAD_IMAGE" && out.last() == Some(&t) && s["Subject"] == last_subject {
            continue;
        }
        last_subject = s["Subject"].clone();
        out.push(t);
    }
    out
}

/// Reads steps up to and including the first for which `stop` holds; panics with `what` when
/// the stream ends before.
fn steps_until(ws: &mut Ws, what: &str, mut stop: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let mut steps = Vec::new();
    loop {
        let s = ws.recv().expect(what);
        let last = stop(&s);
        steps.push(s);
        if last {
            return steps;
        }
    }
}

/// Cancels the task `cancel_id` that `ws` streams (over REST), reads the rest of its steps
/// into `steps` up to a clean close, and returns the failure step, which must be the CANCEL.
fn cancel_over_rest(g: &Gantry, ws: &mut Ws, cancel_id: &str, steps: &mut Vec<Value>) -> Value {
    g.put(&format!("/api/cancel/{cancel_id}")).expect_empty(200);
    steps.extend(ws.rest());
    assert!(ws.closed, "no clean close after {steps:#?}");
    let f = failure(steps).clone();
    assert_eq!(f["StepType"], "CANCEL", "{steps:#?}");
    f
}

/// Waits until the task is over: cancelling it answers 404.
fn wait_task_ended(g: &Gantry, id: &str) {
    let ended = wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
        (g.put(&format!("/api/cancel/{id}")).status == 404).then_some(())
    });
    assert!(ended.is_some(), "task {id} never ended");
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn import_over_websocket_reports_every_step() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let image = saved_image("wsimp");
    let name = unique("WsImport");
    let id = format!("{name}:1.0");
    let zip = bundle(
        &name,
        &sleeper_compose(&[&image.0]),
        std::slice::from_ref(&image),
    );

    let (mut ws, cancel_id) = Ws::upload(&g, "/events/transfer/import", &zip);
    let steps = ws.rest();
    assert!(ws.closed, "no clean close");
    assert!(steps.iter().all(|s| s["Success"] == true), "{steps:#?}");
    let transfer: Vec<&Value> = steps
        .iter()
        .filter(|s| s["StepType"] == "DATA_TRANSFER")
        .collect();
    assert_eq!(transfer.len(), 1, "{steps:#?}");
    assert_eq!(transfer[0]["Message"], "100");
    assert_eq!(transfer[0]["Details"], zip.len().to_string());
    assert_eq!(transfer[0]["Required"], true);
    assert_eq!(
        pipeline(&steps),
        [
            "ANNOUNCEMENT",
            "CHECK_ZIP",
            "CHECK_CONFIG",
            "CHECK_COMPOSE",
            "CHECK_DISK_SPACE",
            "ANNOUNCEMENT",
            "LOAD_IMAGE",
            "LOAD_IMAGE",
            "ANNOUNCEMENT",
            "STORE_INSTANCE",
            "ANNOUNCEMENT"
        ],
        "{steps:#?}"
    );
    let loads: Vec<&Value> = steps
        .iter()
        .filter(|s| s["Subject"] == "docker/img0.tar")
        .collect();
    assert_eq!(loads.first().unwrap()["Message"], "0");
    let loaded = loads.last().unwrap();
    assert_eq!(loaded["Message"], "100");
    assert!(
        loaded["Details"].as_str().unwrap().contains(&image.0),
        "{loaded}"
    );
    let stored = steps
        .iter()
        .find(|s| s["StepType"] == "STORE_INSTANCE")
        .unwrap();
    assert_eq!(stored["Message"], "Successfully stored App");
    let last = steps.last().unwrap();
    assert_eq!(last["StepType"], "ANNOUNCEMENT");
    assert_eq!(last["Required"], false);
    assert_eq!(last["Details"], id.as_str(), "{last}");

    let app = g.get(&app_path(&id)).expect_json(200);
    assert_eq!(app["Status"], "Stopped");
    assert!(docker_exists("image", &image.0));
    // The task is over: its id is no longer cancellable.
    wait_task_ended(&g, &cancel_id);
    g.delete(&format!("{}?force=true", app_path(&id)))
        .expect_empty(200);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn legacy_import_in_several_binary_messages() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("WsLegacy");
    let id = format!("{name}:1.0");
    let zip = bundle(&name, &sleeper_compose(&[&test_image()]), &[]);
    let mut ws = Ws::connect(&g, "/events/import");
    ws.cancel_id();
    ws.length(zip.len());
    let third = zip.len() / 3;
    ws.binary(&zip[..third]);
    ws.binary(&zip[third..2 * third]);
    ws.binary(&zip[2 * third..]);
    let steps = ws.rest();
    assert!(ws.closed);
    let transfer: Vec<(String, String)> = steps
        .iter()
        .filter(|s| s["StepType"] == "DATA_TRANSFER")
        .map(|s| {
            (
                s["Message"].as_str().unwrap().to_string(),
                s["Details"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(transfer.len(), 3, "{steps:#?}");
    assert_eq!(transfer[0].1, third.to_string());
    assert_eq!(transfer[1].1, (2 * third).to_string());
    assert_eq!(transfer[2], ("100".to_string(), zip.len().to_string()));
    let last = steps.last().unwrap();
    assert_eq!(last["Details"], id.as_str(), "{steps:#?}");
    // No images in the bundle: no image steps, straight to storing.
    assert!(!pipeline(&steps).contains(&"LOAD_IMAGE".to_string()));
    g.get(&app_path(&id)).expect_json(200);
    g.delete(&app_path(&id)).expect_empty(200);
}

fn big_bundle(label: &str) -> (String, Vec<String>, Vec<u8>) {
    let images: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| fresh_big_image(&format!("{label}{i}"), 12))
        .collect();
    let name = unique(label);
    let refs: Vec<String> = images.iter().map(|(r, _)| r.clone()).collect();
    let compose = sleeper_compose(&refs.iter().map(String::as_str).collect::<Vec<_>>());
    (
        format!("{name}:1.0"),
        refs,
        bundle(&name, &compose, &images),
    )
}

fn assert_rolled_back(g: &Gantry, id: &str, refs: &[String]) {
    g.get(&app_path(id)).expect_problem(404, &app_path(id));
    for r in refs {
        assert!(
            !docker_exists("image", r),
            "image {r} of the cancelled import is still there"
        );
    }
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn cancel_mid_import_rolls_back() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let (id, refs, zip) = big_bundle("wscx");
    let (mut ws, cancel_id) = Ws::upload(&g, "/events/transfer/import", &zip);
    let mut steps = steps_until(&mut ws, "the import ended before loading images", |s| {
        s["StepType"] == "LOAD_IMAGE"
    });
    let f = cancel_over_rest(&g, &mut ws, &cancel_id, &mut steps);
    assert_eq!(f["Required"], true);
    assert!(f["Message"].as_str().unwrap().contains("cancelled"), "{f}");
    assert!(
        !steps.iter().any(|s| s["StepType"] == "STORE_INSTANCE"),
        "{steps:#?}"
    );
    wait_task_ended(&g, &cancel_id);
    assert_rolled_back(&g, &id, &refs);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_client_leaving_mid_import_cancels_it() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let (id, refs, zip) = big_bundle("wsgone");
    let (mut ws, cancel_id) = Ws::upload(&g, "/events/transfer/import", &zip);
    steps_until(&mut ws, "the import ended before loading images", |s| {
        s["StepType"] == "LOAD_IMAGE"
    });
    drop(ws);
    wait_task_ended(&g, &cancel_id);
    assert_rolled_back(&g, &id, &refs);
    // The daemon is not stuck: the same bundle imports fine afterwards? It would need the
    // images again; a small import on a new connection is enough to show it serves.
    g.get("/api/1/transfer/apps").expect_empty(204);
}

/// Checks the steps of a start or stop streamed over a websocket: the announcement
/// `{action} App instance {id}` first, then the process's lines, the announcement
/// `Successfully {done} App {id}`, and last the successful process result, which carries
/// every line. Returns the lines and that last step.
fn assert_process_steps<'a>(
    steps: &'a [Value],
    action: &str,
    done: &str,
    id: &str,
) -> (Vec<&'a str>, &'a Value) {
    assert_eq!(steps[0]["StepType"], "ANNOUNCEMENT", "{steps:#?}");
    assert_eq!(
        steps[0]["Message"],
        format!("{action} App instance {id}").as_str()
    );
    let lines = process_lines(steps);
    let n = steps.len();
    assert_eq!(steps[n - 2]["StepType"], "ANNOUNCEMENT");
    assert_eq!(
        steps[n - 2]["Message"],
        format!("Successfully {done} App {id}").as_str()
    );
    let last = &steps[n - 1];
    assert_eq!(last["StepType"], "PROCESS_PROGRESS");
    assert_eq!(last["Success"], true);
    assert_eq!(last["ProcessResult"]["ExitCode"], 0, "{last}");
    assert_eq!(
        last["ProcessResult"]["Lines"].as_array().unwrap().len(),
        lines.len()
    );
    (lines, last)
}

/// The lines of the process steps.
fn process_lines(steps: &[Value]) -> Vec<&str> {
    steps
        .iter()
        .filter_map(|s| s["ProcessLine"]["Line"].as_str())
        .collect()
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn start_over_websocket_streams_lines_and_the_result() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("WsStart");
    let id = format!("{name}:1.0");
    import(&g, &bundle(&name, &sleeper_compose(&[&test_image()]), &[])).expect_json(200);

    let mut ws = Ws::connect(&g, &format!("/events/transfer/apps/{}/start", enc(&id)));
    ws.cancel_id();
    let steps = ws.rest();
    assert!(ws.closed);
    let (lines, last) = assert_process_steps(&steps, "Starting", "started", &id);
    assert!(
        lines.iter().any(|l| l.starts_with("Creating network")),
        "{steps:#?}"
    );
    assert!(lines.iter().any(|l| l.ends_with("... done")), "{steps:#?}");
    let line = steps.iter().find(|s| s["ProcessLine"].is_object()).unwrap();
    assert_eq!(line["StepType"], "PROCESS_PROGRESS");
    assert_eq!(line["ProcessLine"]["IsStderr"], true);
    assert_eq!(
        last["ProcessResult"]["RunningContainers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(g.get(&app_path(&id)).expect_json(200)["Status"], "Running");

    // The legacy form by name and version.
    g.put(&format!("{}/stop", app_path(&id))).expect_json(200);
    let mut ws = Ws::connect(
        &g,
        &format!("/events/start?name={}&version=1.0", enc(&name)),
    );
    ws.cancel_id();
    let steps = ws.rest();
    assert_eq!(
        steps.last().unwrap()["ProcessResult"]["ExitCode"],
        0,
        "{steps:#?}"
    );
    assert_eq!(g.get(&app_path(&id)).expect_json(200)["Status"], "Running");
    // Unknown apps and missing parameters are refused before the upgrade.
    g.get("/events/start?name=nope&version=1")
        .expect_problem(404, "/events/start");
    g.get("/events/start?name=nope")
        .expect_problem(400, "/events/start");
    g.delete(&format!("{}?force=true", app_path(&id)))
        .expect_empty(200);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn cancel_mid_start_leaves_the_app_stopped() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("WsSlow");
    let id = format!("{name}:1");
    import(&g, &slow_app(&name)).expect_json(200);
    let mut ws = Ws::connect(&g, &format!("/events/transfer/apps/{}/start", enc(&id)));
    let cancel_id = ws.cancel_id();
    // Cancel once the first container was created (the second waits for its health).
    let mut steps = steps_until(
        &mut ws,
        "the start ended before creating a container",
        |s| {
            s["ProcessLine"]["Line"]
                .as_str()
                .is_some_and(|l| l.contains("db") && l.ends_with("done"))
        },
    );
    let f = cancel_over_rest(&g, &mut ws, &cancel_id, &mut steps);
    assert!(f["Message"].as_str().unwrap().contains("stopped"), "{f}");
    wait_task_ended(&g, &cancel_id);
    let app = g.get(&app_path(&id)).expect_json(200);
    assert_eq!(app["Status"], "Stopped", "{app}");
    assert_eq!(app["Busy"], false);
    assert_eq!(app["Containers"].as_array().unwrap().len(), 0, "{app}");
    let left = app_containers(&id, true);
    assert!(left.is_empty(), "containers left: {left:?}");
    g.delete(&app_path(&id)).expect_empty(200);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn load_image_over_websocket() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let (reference, tar) = saved_image("wsload");
    let mut ws = Ws::connect(&g, "/events/system/loadimage");
    ws.cancel_id();
    ws.length(tar.len());
    let half = tar.len() / 2;
    ws.binary(&tar[..half]);
    ws.binary(&tar[half..]);
    let steps = ws.rest();
    assert!(ws.closed);
    assert!(steps.iter().all(|s| s["Success"] == true), "{steps:#?}");
    assert_eq!(
        pipeline(&steps),
        ["ANNOUNCEMENT", "LOAD_IMAGE", "ANNOUNCEMENT"],
        "{steps:#?}"
    );
    let last = steps.last().unwrap();
    assert!(
        last["Details"].as_str().unwrap().starts_with("sha256:"),
        "{last}"
    );
    assert!(
        last["Message"].as_str().unwrap().contains(&reference),
        "{last}"
    );
    assert!(docker_exists("image", &reference));
    docker_ok(&["rmi", &reference]);

    // Not an image: a failure step naming the problem.
    let mut ws = Ws::connect(&g, "/events/system/loadimage");
    ws.cancel_id();
    let junk = vec![7u8; 2048];
    ws.length(junk.len());
    ws.binary(&junk);
    let steps = ws.rest();
    let f = failure(&steps);
    assert_eq!(f["StepType"], "LOAD_IMAGE", "{f}");
    assert!(f["Message"].as_str().unwrap().contains("tar"), "{f}");
}

/// Expects a failure step (after the CancelID and any DATA_TRANSFER steps) and a clean close.
fn expect_protocol_failure(ws: &mut Ws, needle: &str) {
    let steps = ws.rest();
    assert!(ws.closed, "no clean close after {steps:#?}");
    let f = failure(&steps);
    assert_eq!(f["StepType"], "DATA_TRANSFER", "{f}");
    assert_eq!(f["Required"], true);
    let m = f["Message"].as_str().unwrap();
    assert!(m.contains(needle), "{m:?} does not mention {needle:?}");
    assert_eq!(f, steps.last().unwrap());
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn malformed_uploads_fail_cleanly_and_others_are_served() {
    let host = require_docker!();
    let g = Gantry::builder()
        .docker_host(&host)
        .http("max_upload_bytes = 4000")
        .http("header_read_timeout_secs = 2")
        .start();

    // Binary data instead of the Length message.
    let mut ws = Ws::connect(&g, "/events/transfer/import");
    ws.cancel_id();
    ws.binary(b"PK\x03\x04");
    expect_protocol_failure(&mut ws, "Length");

    // A text message that is not Length.
    let mut ws = Ws::connect(&g, "/events/import");
    ws.cancel_id();
    ws.text(json!({"Name": "Size", "Value": 10}));
    expect_protocol_failure(&mut ws, "Length");

    // Too many bytes.
    let mut ws = Ws::connect(&g, "/events/transfer/import");
    ws.cancel_id();
    ws.length(100);
    ws.binary(&[1u8; 60]);
    ws.binary(&[1u8; 60]);
    expect_protocol_failure(&mut ws, "more than the 100 bytes");

    // Text instead of binary data.
    let mut ws = Ws::connect(&g, "/events/system/loadimage");
    ws.cancel_id();
    ws.length(100);
    ws.text(json!("hello"));
    expect_protocol_failure(&mut ws, "binary");

    // Over http.max_upload_bytes.
    let mut ws = Ws::connect(&g, "/events/transfer/import");
    ws.cancel_id();
    ws.length(5000);
    expect_protocol_failure(&mut ws, "exceeds the limit of 4000 bytes");

    // Too few bytes: the upload stalls. Meanwhile another client imports successfully.
    let mut stalled = Ws::connect(&g, "/events/transfer/import");
    stalled.cancel_id();
    stalled.length(100);
    stalled.binary(&[1u8; 50]);
    let name = unique("WsOther");
    let zip = bundle(&name, &sleeper_compose(&[&test_image()]), &[]);
    assert!(zip.len() < 4000);
    let (mut other, _) = Ws::upload(&g, "/events/transfer/import", &zip);
    let steps = other.rest();
    assert_eq!(
        steps.last().unwrap()["Details"],
        format!("{name}:1.0").as_str(),
        "{steps:#?}"
    );
    expect_protocol_failure(&mut stalled, "only 50 of the 100 bytes");

    // A plain HTTP request to a websocket route, and the cancel route's errors.
    let detail = g
        .get("/events/transfer/import")
        .expect_problem(426, "/events/transfer/import");
    assert!(detail.contains("websocket"), "{detail}");
    g.get("/events/nothing/here")
        .expect_problem(404, "/events/nothing/here");
    g.put("/api/cancel/0000-unknown")
        .expect_problem(404, "/api/cancel/0000-unknown");
    g.put("/api/cancel/").expect_problem(400, "/api/cancel/");
    g.put("/api/1/cancel").expect_problem(400, "/api/1/cancel");
    g.delete(&app_path(&format!("{name}:1.0")))
        .expect_empty(200);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn stop_over_websocket_streams_lines_and_the_result() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("WsStop");
    let id = format!("{name}:1.0");
    import(&g, &bundle(&name, &sleeper_compose(&[&test_image()]), &[])).expect_json(200);
    g.put(&format!("{}/start", app_path(&id))).expect_json(200);
    assert_eq!(g.get(&app_path(&id)).expect_json(200)["Status"], "Running");

    let mut ws = Ws::connect(&g, &format!("/events/transfer/apps/{}/stop", enc(&id)));
    let cancel_id = ws.cancel_id();
    let steps = ws.rest();
    assert!(ws.closed);
    let (lines, last) = assert_process_steps(&steps, "Stopping", "stopped", &id);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Stopping") && l.ends_with("... done")),
        "{steps:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Removing network")),
        "{steps:#?}"
    );
    assert!(
        last["ProcessResult"]["Command"]
            .as_str()
            .unwrap()
            .ends_with(" down"),
        "{last}"
    );
    wait_task_ended(&g, &cancel_id);
    let app = g.get(&app_path(&id)).expect_json(200);
    assert_eq!(app["Status"], "Stopped", "{app}");
    assert_eq!(app["Busy"], false, "{app}");
    // Unknown apps are refused before the upgrade.
    g.get("/events/transfer/apps/nope%3A1/stop")
        .expect_problem(404, "/events/transfer/apps/nope%3A1/stop");
    g.delete(&app_path(&id)).expect_empty(200);
}

/// Two services: `quick` stops at once; `stubborn` ignores SIGTERM and has a grace period of
/// ten minutes, so a stop of the app is held on it until cancelled.
fn stubborn_app(name: &str) -> Vec<u8> {
    let compose = format!(
        "services:\n  quick:\n    image: {img}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 600 & wait\"]\n    stop_grace_period: 1s\n  stubborn:\n    image: {img}\n    command: [\"sh\", \"-c\", \"trap '' TERM; sleep 3600 & wait\"]\n    stop_grace_period: 10m\n",
        img = test_image()
    );
    app_zip(name, "1", &compose)
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn cancel_mid_stop_starts_the_app_again() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("WsStubborn");
    let id = format!("{name}:1");
    import(&g, &stubborn_app(&name)).expect_json(200);
    g.put(&format!("{}/start", app_path(&id))).expect_json(200);
    let before = g.get(&app_path(&id)).expect_json(200);
    assert_eq!(before["Status"], "Running", "{before}");
    assert_eq!(before["Containers"].as_array().unwrap().len(), 2);

    let mut ws = Ws::connect(&g, &format!("/events/transfer/apps/{}/stop", enc(&id)));
    let cancel_id = ws.cancel_id();
    // Cancel once `quick` is gone while `stubborn` is still being stopped (for ten minutes).
    let (mut quick_removed, mut stubborn_stopping) = (false, false);
    let mut steps = steps_until(&mut ws, "the stop ended before it was cancelled", |s| {
        if let Some(l) = s["ProcessLine"]["Line"].as_str() {
            quick_removed |=
                l.starts_with("Removing") && l.contains("_quick_") && l.ends_with("done");
            stubborn_stopping |=
                l.starts_with("Stopping") && l.contains("_stubborn_") && l.ends_with("...");
            assert!(
                !(l.starts_with("Stopping") && l.contains("_stubborn_") && l.ends_with("done")),
                "stubborn stopped before the cancel: {l}"
            );
        }
        quick_removed && stubborn_stopping
    });
    assert_eq!(
        g.get(&app_path(&id)).expect_json(200)["Busy"],
        true,
        "the app is not busy while it is being stopped"
    );
    let f = cancel_over_rest(&g, &mut ws, &cancel_id, &mut steps);
    assert!(
        f["Message"].as_str().unwrap().contains("started again"),
        "{f}"
    );
    let lines = process_lines(&steps);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Finishing the stop") && l.contains("_stubborn_")),
        "{lines:#?}"
    );
    wait_task_ended(&g, &cancel_id);
    let app = g.get(&app_path(&id)).expect_json(200);
    assert_eq!(app["Status"], "Running", "{app}");
    assert_eq!(app["Busy"], false, "{app}");
    let containers = app["Containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2, "{app}");
    assert!(containers.iter().all(|c| c["Running"] == true), "{app}");
    // Cleanup without waiting ten minutes for `stubborn`: kill it first.
    for c in app_containers(&id, false) {
        docker_ok(&["kill", &c]);
    }
    g.delete(&format!("{}?force=true", app_path(&id)))
        .expect_empty(200);
}
