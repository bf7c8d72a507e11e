//! The Distillery dialect end to end: a websocket client speaking its protocol (binary call
//! and cancel frames, text lines, one binary result) against the gantry binary and, for the
//! calls, real containers of the test dockerd; the JSON API; named-token authentication.
//! Apps are imported through the Transfer API and must look the same through both.

#[path = "distillery/client.rs"]
mod client;
mod common;
#[path = "distillery/registry.rs"]
mod registry;
#[path = "distillery/serve.rs"]
mod serve;

use std::time::Duration;

use client::{assert_failed, assert_success, Dist, Dws, CI_TOKEN, TOKEN};
use common::bundle::{app_zip, fresh_big_image, import, saved_image, slow_app, zip_of};
use common::{
    app_containers, docker_exists, docker_id, docker_ok, enc, metric, run_gantry, test_image,
    unique, unique_image, wait_for, Cleanup, Gantry,
};
use serde_json::{json, Value};

/// A service that idles and stops at once on SIGTERM.
const IDLE: &str = "[\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 600 & wait\"]";

/// The compose project slug of an app id (what gantry derives).
fn slug(id: &str) -> String {
    id.to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect()
}

fn web_compose(image: &str, command: &str) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    command: {command}\n    stop_grace_period: 1s\n"
    )
}

/// Imports an app of one idle `web` service through the Transfer API; its id and slug.
fn import_idle(d: &Dist, label: &str) -> (String, String) {
    import_compose(d, label, &web_compose(&test_image(), IDLE))
}

fn import_compose(d: &Dist, label: &str, compose: &str) -> (String, String) {
    let name = unique(label);
    let app = import(&d.g, &app_zip(&name, "1", compose)).expect_json(200);
    let id = app["Id"].as_str().unwrap().to_string();
    (id.clone(), slug(&id))
}

/// A bundle of the app `name` (version 1) with `compose` and the image archive `tar`.
fn with_image(name: &str, compose: &str, tar: &[u8]) -> Vec<u8> {
    zip_of(&[
        (
            "config.yml",
            format!("Name: {name}\nVersion: 1\n").as_bytes(),
        ),
        ("compose.yaml", compose.as_bytes()),
        ("docker/web.tar", tar),
    ])
}

/// Imports `zip` through the Transfer API; the app's id.
fn import_id(g: &Gantry, zip: &[u8]) -> String {
    import(g, zip).expect_json(200)["Id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn transfer_app(g: &Gantry, id: &str) -> Option<Value> {
    let r = g.get(&format!("/api/1/transfer/apps/{}", enc(id)));
    (r.status == 200).then(|| r.json())
}

/// Waits until the Transfer API shows the app `id` with `status` and not busy.
fn wait_status(g: &Gantry, id: &str, status: &str) -> Value {
    wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
        transfer_app(g, id).filter(|a| a["Status"] == status && a["Busy"] == false)
    })
    .unwrap_or_else(|| panic!("{id} never became {status}: {:?}", transfer_app(g, id)))
}

// ---------------------------------------------------------------------------------------
// Authentication and the protocol's refusals (no Docker needed)

#[test]
fn missing_and_wrong_tokens_get_401_and_no_upgrade() {
    let d = Dist::with(Gantry::builder(), "");
    assert_eq!(Dws::connect(d.addr, None).err(), Some(401));
    assert_eq!(
        Dws::connect(d.addr, Some("0123456789abcdef-wrong")).err(),
        Some(401)
    );
    assert_eq!(Dws::connect(d.addr, Some(&TOKEN[..10])).err(), Some(401));
    for path in ["/api/v1/auth", "/api/v1/http/systems", "/api/v1/news"] {
        let (status, body) = d.get(path, None);
        assert_eq!(status, 401, "{path}: {body}");
        let (status, _) = d.get(path, Some("nope-nope-nope-nope"));
        assert_eq!(status, 401, "{path}");
    }
    // The token's name is who the client is.
    assert_eq!(d.json("/api/v1/auth"), json!({"Name": "admin"}));
    let (status, body) = d.get("/api/v1/http/auth", Some(CI_TOKEN));
    assert_eq!((status, body.as_str()), (200, r#"{"Name":"ci"}"#));
    // /healthz needs no token; unknown paths are 404 in the dialect's format.
    assert_eq!(d.get("/healthz", None).0, 200);
    let (status, body) = d.get("/api/v1/nothing", Some(TOKEN));
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["success"],
        false
    );
    // Both spellings of the websocket path upgrade, with either token.
    for (path, token) in [("/api/v1/ws", CI_TOKEN), ("/api/v1/ws/", TOKEN)] {
        let mut ws = Dws::connect_path(d.addr, path, Some(token)).unwrap();
        ws.call("backup", &["extra"]);
        assert_failed(&ws.rest().1, "invalid number of parameters");
    }
}

#[test]
fn the_call_must_come_within_a_second() {
    let d = Dist::with(Gantry::builder(), "");
    let mut ws = d.ws();
    let t = std::time::Instant::now();
    let (lines, result) = ws.rest();
    assert!(lines.is_empty());
    assert_eq!(
        result,
        json!({"success": false, "message": "timeout reading the first message"})
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Text frames are no call: the timer keeps running.
    let mut ws = d.ws();
    ws.input("start something");
    assert_failed(&ws.rest().1, "timeout reading the first message");
}

#[test]
fn unknown_calls_wrong_arity_and_frames_that_are_not_json_fail() {
    let d = Dist::with(Gantry::builder(), "");
    let expect = |frame: &[u8], message: &str| {
        let mut ws = d.ws();
        ws.send(tokio_tungstenite::tungstenite::Message::binary(
            frame.to_vec(),
        ));
        let (lines, result) = ws.rest();
        assert!(lines.is_empty(), "{lines:?}");
        assert_eq!(
            result,
            json!({"success": false, "message": message}),
            "{}",
            String::from_utf8_lossy(frame)
        );
    };
    for frame in [
        &b"not json"[..],
        b"\xff\x00",
        br#"{"call":"fly","params":[]}"#,
        br#"{"signal":"cancel"}"#,
        br#"{"call":"start","params":[42]}"#,
    ] {
        expect(frame, "unknown action call");
    }
    for frame in [
        &br#"{"call":"start","params":[]}"#[..],
        br#"{"call":"stop","params":["a","b"]}"#,
        br#"{"call":"backup","params":["x"]}"#,
        br#"{"call":"provision"}"#,
        br#"{"call":"exec","params":["a","web"]}"#,
    ] {
        expect(frame, "invalid number of parameters");
    }
    // A slug no app has.
    let (_, result) = d.call("start", &["no-such-app"]);
    assert_failed(&result, "no app has the id or slug \"no-such-app\"");
}

// ---------------------------------------------------------------------------------------
// Calls against real containers

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn start_and_stop_show_in_the_transfer_api_its_events_and_the_json_api() {
    let host = require_docker!();
    let d = Dist::start(&host);
    let (id, slug) = import_idle(&d, "dist-start");
    let sse = serve::Sse::connect(d.g.addr, "/api/events");

    let (lines, result) = d.call("start", &[&slug]);
    assert_success(&result, &lines);
    assert!(lines.iter().any(|l| l.ends_with("... done")), "{lines:#?}");
    assert!(lines.iter().all(|l| !l.contains('\n')));
    let app = wait_status(&d.g, &id, "Running");
    assert_eq!(app["Containers"].as_array().unwrap().len(), 1, "{app}");
    sse.wait_for(&[&format!("\"Id\":\"{id}\""), "\"Status\":\"Running\""]);

    let systems = d.json("/api/v1/systems");
    let me = systems
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Id"] == id.as_str())
        .unwrap_or_else(|| panic!("{systems}"));
    assert_eq!(me["Slug"], slug.as_str());
    assert_eq!(me["Status"], "Running");
    assert_eq!(me["Containers"][0]["Running"], true);
    let news = d.json("/api/v1/http/news");
    assert!(
        news.as_array().unwrap().iter().any(|n| n["Kind"] == "App"
            && n["System"]["Id"] == id.as_str()
            && n["System"]["Status"] == "Running"),
        "{news}"
    );
    assert!(news[0]["Time"].as_str().unwrap().ends_with('Z'), "{news}");

    // The id works as well as the slug.
    let (lines, result) = d.call("stop", &[&id]);
    assert_success(&result, &lines);
    assert!(
        lines.iter().any(|l| l.starts_with("Removing")),
        "{lines:#?}"
    );
    wait_status(&d.g, &id, "Stopped");
    sse.wait_for(&[&format!("\"Id\":\"{id}\""), "\"Status\":\"Stopped\""]);
    assert!(app_containers(&id, true).is_empty());
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn rebuild_recreates_the_containers_of_a_running_app() {
    let host = require_docker!();
    let d = Dist::start(&host);
    let (id, slug) = import_idle(&d, "dist-rebuild");
    assert_success(&d.call("start", &[&slug]).1, &[]);
    let before = docker_id("container", &app_containers(&id, false)[0]);
    let (lines, result) = d.call("rebuild", &[&slug]);
    assert_success(&result, &lines);
    assert!(
        lines.iter().any(|l| l.starts_with("Stopping")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Creating")),
        "{lines:#?}"
    );
    wait_status(&d.g, &id, "Running");
    let after = docker_id("container", &app_containers(&id, false)[0]);
    assert_ne!(before, after, "the container was not recreated");
    assert_success(&d.call("stop", &[&slug]).1, &[]);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn snapshots_and_backups_are_written_whole_listed_and_pruned() {
    let host = require_docker!();
    let dir = tempfile::tempdir().unwrap();
    let d = Dist::with(
        Gantry::builder().docker_host(&host).config(&format!(
            "[snapshots]\ndir = {:?}\nkeep_backups = 2",
            dir.path().display().to_string()
        )),
        "",
    );
    let (reference, tar) = saved_image("dist-snap");
    let name = unique("dist-snap");
    let compose = web_compose(&reference, IDLE);
    let zip = with_image(&name, &compose, &tar);
    let id = import_id(&d.g, &zip);
    let slug = slug(&id);
    let (lines, result) = d.call("snapshot", &[&slug]);
    assert_success(&result, &lines);
    let listed = d.json("/api/v1/snapshots");
    let snap = &listed[0];
    let file = snap["Name"].as_str().unwrap().to_string();
    assert!(
        file.starts_with(&format!("{slug}-")) && file.ends_with("Z.zip"),
        "{listed}"
    );
    assert_eq!(snap["Backup"], false);
    assert!(lines.iter().any(|l| l.contains(&file)), "{lines:#?}");
    // A complete bundle, with the image, re-importable elsewhere.
    let bytes = std::fs::read(dir.path().join(&file)).unwrap();
    assert_eq!(snap["Size"], bytes.len() as u64);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    assert!(zip.by_name("config.yml").is_ok());
    assert!(zip.by_name("docker/web.tar").unwrap().size() > 0);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    for _ in 0..3 {
        let (lines, result) = d.call("backup", &[]);
        assert_success(&result, &lines);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let listed = d.json("/api/v1/snapshots");
    let backups: std::collections::BTreeSet<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Backup"] == true)
        .map(|s| {
            s["Name"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(backups.len(), 2, "keep_backups = 2: {listed}");
    for b in &backups {
        assert!(dir
            .path()
            .join("backups")
            .join(b)
            .join(format!("{slug}.zip"))
            .is_file());
    }
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn purge_deletes_the_app_with_its_images_and_volumes() {
    let host = require_docker!();
    let d = Dist::start(&host);
    let (reference, tar) = saved_image("dist-purge");
    let name = unique("dist-purge");
    let compose = format!(
        "services:\n  web:\n    image: {reference}\n    command: {IDLE}\n    volumes: [\"data:/data\"]\n    stop_grace_period: 1s\nvolumes:\n  data: {{}}\n"
    );
    let zip = with_image(&name, &compose, &tar);
    let id = import_id(&d.g, &zip);
    let slug = slug(&id);
    assert_success(&d.call("start", &[&slug]).1, &[]);
    let volume = format!("{slug}_data");
    assert!(docker_exists("volume", &volume));
    let (lines, result) = d.call("purge", &[&slug]);
    assert_success(&result, &lines);
    assert!(transfer_app(&d.g, &id).is_none());
    assert!(!docker_exists("volume", &volume), "{lines:#?}");
    assert!(!docker_exists("image", &reference), "{lines:#?}");
    assert!(app_containers(&id, true).is_empty());
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn provision_imports_from_a_path_or_a_url_and_starts() {
    let host = require_docker!();
    let d = Dist::start(&host);
    let files = tempfile::tempdir().unwrap();

    let name = unique("dist-prov");
    let id = format!("{name}:1");
    let path = files.path().join("app.zip");
    std::fs::write(
        &path,
        app_zip(&name, "1", &web_compose(&test_image(), IDLE)),
    )
    .unwrap();
    let param = json!({"Slug": slug(&id), "Bundle": path.display().to_string()}).to_string();
    let (lines, result) = d.call("provision", &[&param]);
    assert_success(&result, &lines);
    assert!(lines.iter().any(|l| l.contains("ZIP check")), "{lines:#?}");
    wait_status(&d.g, &id, "Running");

    // Over HTTP, named by its id, with its image streamed into Docker.
    let (reference, tar) = saved_image("dist-prov-url");
    let name = unique("dist-prov-url");
    let id = format!("{name}:1");
    let compose = web_compose(&reference, IDLE);
    let zip = with_image(&name, &compose, &tar);
    let server = serve::Files::start(zip, None);
    let param = json!({"Slug": id, "Bundle": server.url("/app.zip")}).to_string();
    let (lines, result) = d.call("provision", &[&param]);
    assert_success(&result, &lines);
    wait_status(&d.g, &id, "Running");
    assert!(docker_exists("image", &reference));

    // The bundle must hold the app the slug names; nothing stays otherwise.
    let name = unique("dist-prov-other");
    std::fs::write(
        &path,
        app_zip(&name, "1", &web_compose(&test_image(), IDLE)),
    )
    .unwrap();
    let param = json!({"Slug": "someone-else", "Bundle": path.display().to_string()});
    let (_, result) = d.call("provision", &[&param.to_string()]);
    assert_failed(&result, "not \"someone-else\"");
    assert!(transfer_app(&d.g, &format!("{name}:1")).is_none());
    // Same checks as an import: a bundle that is no ZIP, a missing file, a 404.
    std::fs::write(&path, b"not a zip").unwrap();
    let param = json!({"Slug": "x", "Bundle": path.display().to_string()}).to_string();
    assert_failed(&d.call("provision", &[&param]).1, "ZIP");
    let param = json!({"Slug": "x", "Bundle": server.url("/missing.zip")}).to_string();
    assert_failed(&d.call("provision", &[&param]).1, "404");
    let param = json!({"Slug": "x", "Bundle": "relative.zip"}).to_string();
    assert_failed(&d.call("provision", &[&param]).1, "absolute path");
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_provision_cancelled_mid_download_leaves_no_app_and_no_image() {
    let host = require_docker!();
    let d = Dist::start(&host);
    let (reference, tar) = fresh_big_image("dist-prov-cancel", 24);
    let name = unique("dist-prov-cancel");
    let compose = web_compose(&reference, IDLE);
    let zip = with_image(&name, &compose, &tar);
    // Served slowly: the download takes about ten seconds.
    let server = serve::Files::start(zip, Some(Duration::from_millis(25)));
    let id = format!("{name}:1");
    let param = json!({"Slug": id, "Bundle": server.url("/app.zip")}).to_string();
    let mut ws = d.ws();
    ws.call("provision", &[&param]);
    ws.until(|l| l.starts_with("Downloading"));
    ws.until(|l| l.contains("docker/web.tar"));
    ws.cancel();
    let (lines, result) = ws.rest();
    assert_failed(&result, "cancelled");
    assert!(transfer_app(&d.g, &id).is_none(), "{lines:#?}");
    let gone = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        (!docker_exists("image", &reference)).then_some(())
    });
    assert!(gone.is_some(), "the half-loaded image stayed");
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_client_that_vanishes_mid_start_cancels_it() {
    let host = require_docker!();
    let d = Dist::start(&host);
    let name = unique("dist-vanish");
    let id = import(&d.g, &slow_app(&name)).expect_json(200)["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ws = d.ws();
    ws.call("start", &[&slug(&id)]);
    ws.until(|l| l.contains("_db_1") && l.ends_with("done"));
    ws.vanish();
    // The closed socket is a cancel: the start is undone, nothing stays busy or running.
    wait_status(&d.g, &id, "Stopped");
    let gone = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        app_containers(&id, true).is_empty().then_some(())
    });
    assert!(gone.is_some(), "{:?}", app_containers(&id, true));
    assert!(d.g.stderr().contains("client gone; cancelling"));
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn exec_runs_a_command_with_stdin_and_judges_its_exit_code() {
    let host = require_docker!();
    let d = Dist::start(&host);
    let (id, slug) = import_idle(&d, "dist-exec");
    assert_success(&d.call("start", &[&slug]).1, &[]);

    let mut ws = d.ws();
    let script = "read a; read b; echo \"got $a and $b\"; echo oops >&2";
    ws.call("exec", &[&slug, "web", "sh", "-c", script]);
    ws.input("hello");
    ws.input("world");
    let (lines, result) = ws.rest();
    assert_success(&result, &lines);
    // stdout and stderr are two streams: their lines may interleave either way.
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(sorted, ["got hello and world", "oops"], "{lines:#?}");

    let (lines, result) = d.call("exec", &[&id, "web", "sh", "-c", "echo before; exit 3"]);
    assert_eq!(lines, ["before"]);
    assert_failed(&result, "exited with code 3");
    assert_failed(
        &d.call("exec", &[&slug, "nope", "true"]).1,
        "no service \"nope\"",
    );

    // Cancelled, the command is ended, with the processes it started.
    let mut ws = d.ws();
    ws.call(
        "exec",
        &[&slug, "web", "sh", "-c", "sleep 300 & echo started; wait"],
    );
    ws.until(|l| l == "started");
    ws.cancel();
    assert_failed(&ws.rest().1, "cancelled");
    let top = docker_ok(&["top", &app_containers(&id, false)[0]]);
    assert!(!top.contains("sleep 300"), "{top}");
}

/// A service that says `tick N` every second.
const TICKING: &str = "[\"sh\", \"-c\", \"trap 'exit 0' TERM; i=0; while true; do echo tick $$i; i=$$((i+1)); sleep 1; done & wait\"]";

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn logs_follow_the_app_until_cancelled() {
    let host = require_docker!();
    let d = Dist::start(&host);
    let (id, slug) = import_compose(&d, "dist-logs", &web_compose(&test_image(), TICKING));
    assert_success(&d.call("start", &[&slug]).1, &[]);
    let container = app_containers(&id, false)[0].clone();
    let mut ws = d.ws();
    ws.call("logs", &[&slug]);
    let first = ws.until(|l| l.contains("tick"));
    let prefix = format!("{container} | tick ");
    assert!(first.last().unwrap().starts_with(&prefix), "{first:#?}");
    // New lines keep coming while it follows.
    let n = |l: &str| l.rsplit(' ').next().and_then(|n| n.parse::<u32>().ok());
    let seen = n(first.last().unwrap()).unwrap();
    ws.until(|l| n(l).is_some_and(|x| x >= seen + 2));
    ws.cancel();
    let (_, result) = ws.rest();
    assert_eq!(result, json!({"success": true}));
}

/// An app serving its image's /marker over HTTP on a published port, healthy while the
/// marker says `ok`; an image whose marker says `slow` takes five seconds to become ready.
fn marker_compose(image: &str) -> String {
    format!(
        "services:\n  web:\n    image: {image}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; if grep -q slow /marker; then sleep 5; fi; mkdir -p /www; cat /marker > /www/index.html; touch /ready; httpd -f -p 8080 -h /www & wait\"]\n    healthcheck:\n      test: [\"CMD-SHELL\", \"[ -f /ready ] && grep -q ok /marker\"]\n      interval: 1s\n      retries: 2\n    ports:\n      - \"127.0.0.1::8080\"\n    stop_grace_period: 1s\n"
    )
}

/// What the app's running container serves (waiting until it answers).
fn served(id: &str) -> String {
    let running = app_containers(id, false);
    assert_eq!(running.len(), 1, "{running:?}");
    let published = docker_ok(&["port", &running[0], "8080/tcp"]);
    let port: u16 = published
        .lines()
        .find_map(|l| l.strip_prefix("127.0.0.1:")?.parse().ok())
        .unwrap_or_else(|| panic!("no 127.0.0.1 port in {published}"));
    wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        serve::http_body(port)
    })
    .expect("the app never answered")
    .trim()
    .to_string()
}

fn image_of(container: &str) -> String {
    docker_ok(&["inspect", "--format", "{{.Image}}", container])
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn update_recreates_changed_services_and_rolls_back_one_that_is_not_healthy() {
    let host = require_docker!();
    let d = Dist::start(&host);
    let mut cleanup = Cleanup::new();
    // A loopback registry name nobody serves: the pull fails at once, without leaving the
    // test's network namespace.
    let tag = format!("127.0.0.1:1/{}:1", unique("dist-update"));
    let v1 = unique_image(&mut cleanup, &tag, "ok v1");
    cleanup.image(&v1);
    let (id, slug) = import_compose(&d, "dist-update", &marker_compose(&tag));
    assert_success(&d.call("start", &[&slug]).1, &[]);
    assert_eq!(served(&id), "ok v1");

    // Nothing newer: nothing is recreated.
    let before = app_containers(&id, false)[0].clone();
    let (lines, result) = d.call("update", &[&slug]);
    assert_success(&result, &lines);
    assert!(lines.iter().any(|l| l.contains("skipped")), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("newest image")),
        "{lines:#?}"
    );
    assert_eq!(
        docker_id("container", &before),
        docker_id("container", &app_containers(&id, false)[0])
    );

    // A newer image under the app's reference (loaded onto the device): recreated, healthy.
    let v2 = unique_image(&mut cleanup, &tag, "ok v2");
    cleanup.image(&v2);
    let (lines, result) = d.call("update", &[&slug]);
    assert_success(&result, &lines);
    assert!(lines.iter().any(|l| l == "web is healthy"), "{lines:#?}");
    assert_eq!(served(&id), "ok v2");
    assert_eq!(image_of(&app_containers(&id, false)[0]), v2);

    // One that never becomes healthy: the previous image and container come back.
    let bad = unique_image(&mut cleanup, &tag, "bad v3");
    cleanup.image(&bad);
    let (lines, result) = d.call("update", &[&slug]);
    assert_failed(&result, "service \"web\" is unhealthy");
    assert_failed(&result, "rolled back");
    assert!(
        lines.iter().any(|l| l.starts_with("Restoring")),
        "{lines:#?}"
    );
    wait_status(&d.g, &id, "Running");
    assert_eq!(served(&id), "ok v2");
    assert_eq!(image_of(&app_containers(&id, false)[0]), v2);
    assert_eq!(
        docker_id("image", &tag),
        v2,
        "the reference names the previous image again"
    );

    // Cancelled while the new one becomes healthy: the previous version again.
    let slow = unique_image(&mut cleanup, &tag, "ok slow v4");
    cleanup.image(&slow);
    let mut ws = d.ws();
    ws.call("update", &[&slug]);
    ws.until(|l| l.starts_with("Waiting for web"));
    ws.cancel();
    let (lines, result) = ws.rest();
    assert_failed(&result, "cancelled");
    assert!(
        lines.iter().any(|l| l.starts_with("Restoring")),
        "{lines:#?}"
    );
    wait_status(&d.g, &id, "Running");
    assert_eq!(served(&id), "ok v2");
    assert_success(&d.call("stop", &[&slug]).1, &[]);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn update_pulls_newer_images_from_a_registry_and_removes_them_on_rollback() {
    let host = require_docker!();
    let d = Dist::start(&host);
    let mut cleanup = Cleanup::new();
    let registry = registry::Registry::start();
    let repo = unique("dist-pull");
    let tag = format!("{}/{repo}:1", registry.addr);
    let v1 = unique_image(&mut cleanup, &tag, "ok v1");
    cleanup.image(&v1);
    let (id, slug) = import_compose(&d, "dist-pull", &marker_compose(&tag));
    assert_success(&d.call("start", &[&slug]).1, &[]);
    assert_eq!(served(&id), "ok v1");

    // The registry has a newer image: pulled, the service recreated from it.
    let (v2, saved) = saved_marker_image(&mut cleanup, "ok v2");
    registry.publish(&repo, &saved);
    let (lines, result) = d.call("update", &[&slug]);
    assert_success(&result, &lines);
    assert!(
        lines.iter().any(|l| l.ends_with("done: a newer image")),
        "{lines:#?}"
    );
    assert_eq!(served(&id), "ok v2");
    assert_eq!(docker_id("image", &tag), v2);

    // A newer one that is not healthy: rolled back, and the image it pulled is gone again.
    let (bad, saved) = saved_marker_image(&mut cleanup, "bad v3");
    registry.publish(&repo, &saved);
    let (lines, result) = d.call("update", &[&slug]);
    assert_failed(&result, "service \"web\" is unhealthy");
    assert!(
        lines.iter().any(|l| l.starts_with("Removed the new image")),
        "{lines:#?}"
    );
    wait_status(&d.g, &id, "Running");
    assert_eq!(served(&id), "ok v2");
    assert_eq!(docker_id("image", &tag), v2);
    assert!(!docker_exists("image", &bad), "the pulled image stayed");
    assert_success(&d.call("stop", &[&slug]).1, &[]);
}

/// A new image with /marker `marker`, saved and then removed from the dockerd: its id and
/// its `docker save` archive.
fn saved_marker_image(cleanup: &mut Cleanup, marker: &str) -> (String, Vec<u8>) {
    let tag = format!("{}:1", unique("dist-saved"));
    let id = unique_image(cleanup, &tag, marker);
    cleanup.image(&id);
    let saved = docker_save(&tag);
    docker_ok(&["rmi", &tag]);
    (id, saved)
}

fn docker_save(reference: &str) -> Vec<u8> {
    let file = tempfile::NamedTempFile::new().unwrap();
    docker_ok(&["save", "-o", file.path().to_str().unwrap(), reference]);
    std::fs::read(file.path()).unwrap()
}

// ---------------------------------------------------------------------------------------
// The operator's view: /metrics and `gantry task ls`

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_followed_log_shows_in_metrics_and_in_the_task_list() {
    let host = require_docker!();
    let d = Dist::with(Gantry::builder().docker_host(&host), "metrics = true");
    let (id, slug) = import_compose(&d, "dist-ops", &web_compose(&test_image(), TICKING));
    assert_success(&d.call("start", &[&slug]).1, &[]);
    let mut ws = d.ws();
    ws.call("logs", &[&slug]);
    ws.until(|l| l.contains("tick"));

    // /metrics on the distillery listener is behind its named tokens.
    assert_eq!(d.get("/metrics", None).0, 401);
    let scrape = || {
        let (status, body) = d.get("/metrics", Some(CI_TOKEN));
        assert_eq!(status, 200, "{body}");
        body
    };
    let sessions = "gantry_websocket_sessions{dialect=\"distillery\"}";
    let running = "gantry_operations_running{kind=\"logs\"}";
    // The start's session may still be closing.
    let text = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        let t = scrape();
        (metric(&t, sessions) == Some(1.0)).then_some(t)
    })
    .expect("the logs session is not counted");
    assert_eq!(metric(&text, running), Some(1.0), "{text}");
    let started = "gantry_operations_total{kind=\"start\",outcome=\"ok\"}";
    assert_eq!(metric(&text, started), Some(1.0), "{text}");

    // The operator's CLI lists it, through the transfer listener.
    let url = format!("http://{}", d.g.addr);
    let out = run_gantry(&["task", "ls", "--url", &url], &[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("logs"))
        .unwrap_or_else(|| panic!("no logs task in\n{table}"));
    assert!(row.contains(&id), "{table}");
    let out = run_gantry(&["task", "ls", "--json", "--url", &url], &[]);
    let tasks: Value = serde_json::from_slice(&out.stdout).unwrap();
    let task = tasks
        .as_array()
        .and_then(|a| a.iter().find(|t| t["Kind"] == "logs"))
        .unwrap_or_else(|| panic!("{tasks}"));
    assert_eq!(task["App"], id.as_str(), "{task}");

    ws.cancel();
    assert_eq!(ws.rest().1, json!({"success": true}));
    // The session is counted until the connection is closed.
    drop(ws);
    let ended = "gantry_operations_total{kind=\"logs\",outcome=\"ok\"}";
    let done = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        let t = scrape();
        let over = metric(&t, ended) == Some(1.0) && metric(&t, running) == Some(0.0);
        (over && metric(&t, sessions) == Some(0.0)).then_some(())
    });
    assert!(done.is_some(), "{}", scrape());
}
