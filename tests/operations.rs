//! Long operations owned by the core, seen through the Transfer REST routes: a client names
//! the operation (`?cancel_id=<UUID>`), sees it in `GET /api/tasks`, cancels it with `PUT
//! /api/cancel/{id}`; a client that goes away from a REST start leaves the app started, never
//! half; the per-listener websocket session cap refuses clearly while other sessions work.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::bundle::{app_zip, import, multipart, saved_image, slow_app, zip_of, IMPORT};
use common::ws::Ws;
use common::{
    app_containers, docker_exists, enc, read_raw_response, test_image, unique, wait_for, write_all,
    Gantry,
};
use serde_json::Value;

/// A UUID no other test uses.
fn task_uuid() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn gantry(host: String) -> Gantry {
    Gantry::builder().docker_host(&host).start()
}

fn app_path(id: &str) -> String {
    format!("/api/1/transfer/apps/{}", enc(id))
}

/// The running task `id` as `GET /api/tasks` lists it.
fn listed(g: &Gantry, id: &str) -> Option<Value> {
    let r = g.get("/api/1/tasks");
    if r.status == 204 {
        return None;
    }
    let list = r.expect_json(200);
    list.as_array()?.iter().find(|t| t["Id"] == id).cloned()
}

/// Waits (bounded) until the task `id` is listed; returns its entry.
fn wait_listed(g: &Gantry, id: &str) -> Value {
    wait_for(Duration::from_secs(30), Duration::from_millis(20), || {
        listed(g, id)
    })
    .unwrap_or_else(|| panic!("the operation {id} was never listed"))
}

fn wait_unlisted(g: &Gantry, id: &str) {
    let gone = wait_for(Duration::from_secs(120), Duration::from_millis(50), || {
        listed(g, id).is_none().then_some(())
    });
    assert!(gone.is_some(), "the operation {id} never ended");
}

fn cancel(g: &Gantry, id: &str) {
    g.put(&format!("/api/cancel/{id}")).expect_empty(200);
}

/// Sends a request's head (and `body`) on a raw connection, leaving the response unread.
fn raw_request(g: &Gantry, head: &str, body: &[u8]) -> TcpStream {
    let mut s = g.connect();
    write_all(&mut s, head.as_bytes()).unwrap();
    write_all(&mut s, body).unwrap();
    s
}

fn app_status(g: &Gantry, id: &str) -> Value {
    g.get(&app_path(id)).expect_json(200)
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_rest_import_is_listed_and_cancelled_by_the_id_its_client_chose() {
    let g = gantry(require_docker!());
    let (reference, tar) = saved_image("opsimport");
    let name = unique("OpsImport");
    let compose = format!("services:\n  web:\n    image: {reference}\n");
    let config = format!("Name: {name}\nVersion: 1\n");
    let zip = zip_of(&[
        ("config.yml", config.as_bytes()),
        ("compose.yaml", compose.as_bytes()),
        ("docker/web.tar", &tar),
    ]);
    let (content_type, body) = multipart("app", &zip);
    let id = task_uuid();
    let head = format!(
        "POST {IMPORT}?cancel_id={id} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        g.addr,
        body.len()
    );
    // Half the upload, then the import waits for the rest: cancel it meanwhile.
    let half = body.len() / 2;
    let mut s = raw_request(&g, &head, &body[..half]);
    let task = wait_listed(&g, &id);
    assert_eq!(task["Kind"], "import", "{task}");
    cancel(&g, &id);
    s.write_all(&body[half..]).unwrap();
    let (status, text) = read_raw_response(&mut s);
    assert_eq!(status, 409, "{text}");
    assert!(text.to_lowercase().contains("cancel"), "{text}");
    g.get(&app_path(&format!("{name}:1")))
        .expect_problem(404, &app_path(&format!("{name}:1")));
    let test_image_kept = docker_exists("image", &test_image());
    let ref_kept = docker_exists("image", &reference);
    assert!(
        test_image_kept,
        "the rollback removed an image that was there before"
    );
    assert!(
        !ref_kept,
        "the cancelled import kept the reference it loaded"
    );
    wait_unlisted(&g, &id);
    // The id is free again, and a malformed one is refused before anything starts.
    let bad = g.put(&format!("{}/start?cancel_id=not-a-uuid", app_path("x:1")));
    assert_eq!(bad.status, 400, "{bad}");
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_rest_start_and_a_rest_stop_are_cancelled_through_the_cancel_route() {
    let g = gantry(require_docker!());
    let name = unique("OpsStart");
    let app = format!("{name}:1");
    import(&g, &slow_app(&name)).expect_json(200);

    // The start waits about 3 s for its first service to be healthy: cancel it then.
    let id = task_uuid();
    let start = format!("{}/start?cancel_id={id}", app_path(&app));
    let started = std::thread::scope(|s| {
        let call = s.spawn(|| g.put(&start));
        let task = wait_listed(&g, &id);
        assert_eq!(
            (task["Kind"].as_str(), task["App"].as_str()),
            (Some("start"), Some(app.as_str()))
        );
        cancel(&g, &id);
        call.join().unwrap()
    });
    assert_eq!(started.status, 409, "{started}");
    assert!(started.text().contains("cancelled"), "{started}");
    assert!(
        app_containers(&app, false).is_empty(),
        "a cancelled start left containers running"
    );
    let view = app_status(&g, &app);
    assert_eq!(
        (view["Status"].as_str(), view["Busy"].as_bool()),
        (Some("Stopped"), Some(false))
    );

    // A stop of a service that ignores SIGTERM waits its grace period: cancel it then, and
    // the app runs again.
    let name = unique("OpsStop");
    let app = format!("{name}:1");
    let compose = format!(
        "services:\n  stubborn:\n    image: {}\n    command: [\"sh\", \"-c\", \"trap '' TERM; sleep 600 & wait\"]\n    stop_grace_period: 8s\n",
        test_image()
    );
    import(&g, &app_zip(&name, "1", &compose)).expect_json(200);
    g.put(&format!("{}/start", app_path(&app))).expect_json(200);
    let id = task_uuid();
    let stop = format!("{}/stop?cancel_id={id}", app_path(&app));
    let stopped = std::thread::scope(|s| {
        let call = s.spawn(|| g.put(&stop));
        wait_listed(&g, &id);
        cancel(&g, &id);
        call.join().unwrap()
    });
    assert_eq!(stopped.status, 409, "{stopped}");
    assert!(stopped.text().contains("started again"), "{stopped}");
    assert_eq!(app_status(&g, &app)["Status"], "Running");
    g.put(&format!("{}/stop", app_path(&app))).expect_json(200);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_client_gone_mid_rest_start_leaves_the_app_started_never_half() {
    let g = gantry(require_docker!());
    let name = unique("OpsGone");
    let app = format!("{name}:1");
    import(&g, &slow_app(&name)).expect_json(200);
    let id = task_uuid();
    let head = format!(
        "PUT {}/start?cancel_id={id} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
        app_path(&app),
        g.addr
    );
    let s = raw_request(&g, &head, b"");
    wait_listed(&g, &id);
    // The client goes away while the start waits for its first service.
    s.shutdown(Shutdown::Both).unwrap();
    drop(s);
    wait_unlisted(&g, &id);
    let view = app_status(&g, &app);
    assert_eq!(view["Status"], "Running", "{view}");
    assert_eq!(view["Busy"], false, "{view}");
    assert_eq!(app_containers(&app, false).len(), 2, "both services run");
    g.put(&format!("{}/stop", app_path(&app))).expect_json(200);
}

/// A websocket handshake on a raw connection: the status, and the answer up to its body's
/// end (a 101's head only: the connection then stays open).
fn handshake(g: &Gantry, path: &str) -> (u16, String) {
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        g.addr
    );
    let mut s = raw_request(g, &head, b"");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut text = String::new();
    let mut byte = [0u8; 1];
    while !text.ends_with("\r\n\r\n") {
        match std::io::Read::read(&mut s, &mut byte) {
            Ok(1) => text.push(byte[0] as char),
            _ => break,
        }
    }
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let length = text.to_ascii_lowercase().lines().find_map(|l| {
        l.strip_prefix("content-length:")?
            .trim()
            .parse::<usize>()
            .ok()
    });
    if let (false, Some(n)) = (status == 101, length) {
        let mut body = vec![0u8; n];
        std::io::Read::read_exact(&mut s, &mut body).unwrap();
        text.push_str(&String::from_utf8_lossy(&body));
    }
    (status, text)
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn the_websocket_session_cap_refuses_clearly_and_other_sessions_keep_working() {
    let host = require_docker!();
    let g = Gantry::builder()
        .docker_host(&host)
        .http("max_websocket_sessions = 2")
        .start();
    let mut a = Ws::connect(&g, "/events/transfer/import");
    a.cancel_id();
    let mut b = Ws::connect(&g, "/events/transfer/import");
    b.cancel_id();

    let (status, text) = handshake(&g, "/events/transfer/import");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("max_websocket_sessions"), "{text}");

    // The sessions that were admitted work on: an import through the first one.
    let name = unique("OpsCap");
    let zip = app_zip(
        &name,
        "1",
        &format!("services:\n  web:\n    image: {}\n", test_image()),
    );
    a.length(zip.len());
    a.binary(&zip);
    let steps = a.rest();
    let last = steps.last().expect("the import's steps");
    assert!(
        last["Message"]
            .as_str()
            .unwrap_or("")
            .contains("Successfully imported"),
        "{steps:#?}"
    );
    assert_eq!(g.get(&app_path(&format!("{name}:1"))).status, 200);
    // Their slots free up when they end: a new session is admitted again.
    drop(b);
    let admitted = wait_for(Duration::from_secs(20), Duration::from_millis(50), || {
        (handshake(&g, "/events/transfer/import").0 == 101).then_some(())
    });
    assert!(
        admitted.is_some(),
        "no slot came free after two sessions ended"
    );
}
