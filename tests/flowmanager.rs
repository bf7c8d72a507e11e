//! The flowmanager dialect against the real test dockerd, with python-socketio as the client
//! (long-polling, websocket, and the upgrade between them) and the test playing the
//! container's side of its unix socket through the container's own mount.

mod common;
#[path = "flowmanager/harness.rs"]
mod harness;

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{
    docker, docker_ok, metric, read_raw_response, test_image, unique, write_all, Cleanup,
};
use harness::{in_container, short, FdStore, Fm, Peer, Sio};

const T: Duration = Duration::from_secs(30);

/// The test dockerd, python-socketio and gantry with `flow` in its `[flowmanager]` table:
/// `(gantry, python, cleanup, a client)`; the test skips (fails under CI) without them.
macro_rules! setup {
    ($flow:expr) => {{
        let host = require_docker!();
        let py = require_python!();
        let fm = Fm::start(&host, $flow);
        let client = fm.client(&py, None);
        (fm, py, Cleanup::new(), client)
    }};
}

/// A container command that ends at once on SIGTERM, and runs `/app/run.sh` first when an
/// update put one there.
const RUN: &str =
    "trap 'exit 0' TERM; if [ -f /app/run.sh ]; then . /app/run.sh; fi; sleep 300 & wait";

fn create(c: &mut Sio, cleanup: &mut Cleanup, label: &str, extra: Value) -> Value {
    let name = unique(label);
    cleanup.container(&name);
    let mut data = json!({"image": test_image(), "name": name, "command": ["sh", "-c", RUN]});
    if let (Value::Object(d), Value::Object(e)) = (&mut data, extra) {
        d.extend(e);
    }
    c.request("create_container", data, "container_created")
}

fn running(c: &mut Sio, cleanup: &mut Cleanup, label: &str) -> (String, String) {
    let made = create(c, cleanup, label, json!({}));
    let name = made["name"].as_str().unwrap().to_string();
    c.request(
        "start_container",
        json!({"container_id": name}),
        "container_started",
    );
    (made["container_id"].as_str().unwrap().to_string(), name)
}

/// The activity log of `kind` about `id` (both key spellings checked).
fn activity(c: &mut Sio, kind: &str, id: &str) -> Value {
    let a = c.expect_where("activity_log", T, |a| {
        a["type"] == kind && a["container_id"] == id
    });
    assert_eq!(a["activity_type"], kind, "{a}");
    assert!(
        a["timestamp"].is_string() && a["message"].is_string(),
        "{a}"
    );
    a
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn clients_connect_over_polling_websocket_and_the_upgrade() {
    let (fm, py, _cleanup, _first) = setup!("");
    for transports in [Some(&["polling"][..]), Some(&["websocket"][..]), None] {
        let mut c = fm.client(&py, transports);
        let hello = c.expect("connected", T);
        assert_eq!(hello["message"], "Connected to flow-manager");
        let list = c.request("list_containers", json!({}), "container_list");
        assert!(
            list["containers"].is_array() && list["count"].is_u64(),
            "{list}"
        );
        let want = match transports {
            Some(t) => t[0],
            None => "websocket",
        };
        let got = common::wait_for(T, Duration::from_millis(100), || {
            let t = c.transport();
            (t == want).then_some(t)
        });
        assert_eq!(got.as_deref(), Some(want), "{transports:?}");
    }
    // GET /health on the same port (CORS: see a_foreign_origin_is_refused_unless_configured).
    let r = common::agent()
        .get(&format!("{}/health", fm.url()))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = serde_json::from_reader(r.into_body().into_reader()).unwrap();
    assert_eq!(body["service"], "flow-manager");
    let r = common::agent()
        .get(&format!("{}/nope", fm.url()))
        .call()
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A raw Socket.IO client on the websocket transport alone: it joins the namespace and sends
/// `list_containers` the moment the CONNECT acknowledgement arrives, as a fast client does.
/// `Err` says what came instead of `container_list` within `wait`.
async fn request_at_connect(port: u16, wait: Duration) -> Result<(), String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let text = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t.as_str().to_string(),
            Ok(Some(Ok(_))) => continue,
            Ok(end) => return Err(format!("the connection ended ({end:?}) after {seen:?}")),
            Err(_) => return Err(format!("no container_list within {wait:?}; got {seen:?}")),
        };
        // The Engine.IO open packet, the namespace's acknowledgement, a ping, the reply.
        let answer = match text.as_str() {
            t if t.starts_with("0{") => Some("40"),
            t if t.starts_with("40") => Some(r#"42["list_containers",{}]"#),
            "2" => Some("3"),
            t if t.starts_with(r#"42["container_list","#) => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            _ => None,
        };
        if let Some(a) = answer {
            ws.send(Message::text(a)).await.map_err(|e| e.to_string())?;
        }
        seen.push(text);
    }
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_request_sent_right_after_the_connect_acknowledgement_is_answered() {
    let host = require_docker!();
    let fm = Fm::start(&host, "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Connections one after the other, bounded in number and time; each must be answered.
    let (rounds, until) = (200, Instant::now() + Duration::from_secs(60));
    let mut answered = 0;
    while answered < rounds && Instant::now() < until {
        if let Err(e) = rt.block_on(request_at_connect(fm.port, Duration::from_secs(10))) {
            panic!("connection {} of {rounds}: {e}", answered + 1);
        }
        answered += 1;
    }
    assert!(
        answered >= 50,
        "only {answered} connections were made in the time allowed"
    );
}

/// A raw request to the listener as a browser page would send it (`head` without the blank
/// line); the status and the response (its head only after a 101).
fn raw(fm: &Fm, head: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", fm.port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write_all(&mut s, format!("{head}\r\n").as_bytes()).unwrap();
    if !head.contains("Upgrade: websocket") {
        return read_raw_response(&mut s);
    }
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
        got.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (
        status.unwrap_or_else(|| panic!("no status in {text:?}")),
        text,
    )
}

/// The Engine.IO handshake over `transport` (polling or websocket) with `origin`.
fn handshake(fm: &Fm, transport: &str, origin: Option<&str>) -> (u16, String) {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let connection = match transport {
        "websocket" => {
            "Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        }
        _ => "Connection: close\r\n",
    };
    let (status, text) = raw(
        fm,
        &format!(
            "GET /socket.io/?EIO=4&transport={transport} HTTP/1.1\r\n\
             Host: 127.0.0.1:{}\r\n{origin}{connection}",
            fm.port
        ),
    );
    (status, text.to_ascii_lowercase())
}

/// The CORS preflight of a polling POST from `origin`.
fn preflight(fm: &Fm, origin: &str) -> (u16, String) {
    let (status, text) = raw(
        fm,
        &format!(
            "OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n",
            fm.port
        ),
    );
    (status, text.to_ascii_lowercase())
}

/// The original answers CORS for any origin; here a page from another origin cannot open
/// the Socket.IO connection (polling, websocket, preflight) unless the listener's
/// `allowed_origins` names it, and `["*"]` (the original's openness) must be written out.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_foreign_origin_is_refused_unless_configured() {
    let host = require_docker!();
    let fm = Fm::start(&host, "");
    let own = fm.url();
    for (transport, served) in [("polling", 200), ("websocket", 101)] {
        let (status, text) = handshake(&fm, transport, Some("http://evil.example"));
        assert_eq!(status, 403, "{transport}: {text}");
        // Clients without Origin (python-socketio's polling) and the listener's own origin
        // (its websocket transport sends it) are served.
        let (status, text) = handshake(&fm, transport, None);
        assert_eq!(status, served, "{transport}: {text}");
        let (status, text) = handshake(&fm, transport, Some(&own));
        assert_eq!(status, served, "{transport}: {text}");
    }
    let (_, text) = handshake(&fm, "polling", Some("http://evil.example"));
    assert!(text.contains("allowed_origins"), "{text}");
    let (_, text) = handshake(&fm, "polling", None);
    assert!(
        text.contains("0{\"sid\""),
        "the Engine.IO open packet: {text}"
    );
    assert!(!text.contains("access-control-allow-origin"), "{text}");
    assert_eq!(preflight(&fm, "http://evil.example").0, 403);
    drop(fm);

    // A configured origin gets in, with CORS answers; others still do not.
    let ui = "http://ui.example";
    let fm = Fm::start_with(&host, &format!("allowed_origins = [\"{ui}\"]\n"), "");
    let (status, text) = handshake(&fm, "polling", Some(ui));
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains(&format!("access-control-allow-origin: {ui}")),
        "{text}"
    );
    assert_eq!(handshake(&fm, "websocket", Some(ui)).0, 101);
    let (status, text) = preflight(&fm, ui);
    assert_eq!(status, 204, "{text}");
    assert!(
        text.contains(&format!("access-control-allow-origin: {ui}")),
        "{text}"
    );
    assert_eq!(
        handshake(&fm, "polling", Some("http://evil.example")).0,
        403
    );
    assert_eq!(
        handshake(&fm, "websocket", Some("http://evil.example")).0,
        403
    );
    drop(fm);

    // Any origin, written out.
    let fm = Fm::start_with(&host, "allowed_origins = [\"*\"]\n", "");
    let (status, text) = handshake(&fm, "polling", Some("http://evil.example"));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("access-control-allow-origin: *"), "{text}");
    assert_eq!(
        handshake(&fm, "websocket", Some("http://evil.example")).0,
        101
    );
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn every_request_event_answers_and_logs_activity_for_every_client() {
    let (fm, py, mut cleanup, mut c) = setup!("");
    let mut other = fm.client(&py, Some(&["polling"]));
    let made = create(
        &mut c,
        &mut cleanup,
        "fm-life",
        json!({"environment": {"GREETING": "hi", "N": 3}, "ports": {"8080": 0}}),
    );
    let (id, name) = (
        made["container_id"].as_str().unwrap().to_string(),
        made["name"].as_str().unwrap().to_string(),
    );
    assert_eq!(made["status"], "created");
    assert_eq!(made["image"], test_image());
    let socket = fm.socket_dir().join(format!("{name}.sock"));
    assert_eq!(made["socket_path"], socket.display().to_string());
    activity(&mut other, "container_created", &id);
    // Docker sees the label naming the dialect, the socket mount and the environment.
    let labels = docker_ok(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"io.gantry.dialect\"}}",
        &name,
    ]);
    assert_eq!(labels.trim(), "flowmanager");
    let mounts = docker_ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Source}}>{{.Destination}} {{end}}",
        &name,
    ]);
    assert!(
        mounts.contains(&format!("{}>/var/run/kawaflow.sock", socket.display())),
        "{mounts}"
    );
    let env = docker_ok(&["inspect", "-f", "{{json .Config.Env}}", &name]);
    assert!(env.contains("GREETING=hi") && env.contains("N=3"), "{env}");

    let r = c.request(
        "start_container",
        json!({"container_id": name}),
        "container_started",
    );
    assert_eq!(r, json!({"container_id": name, "status": "running"}));
    activity(&mut other, "container_started", &id);
    // Both clients get the broadcast.
    for cl in [&mut c, &mut other] {
        cl.expect_where("status_changed", T, |s| {
            s["container_id"] == id && s["new_state"] == "running" && s["old_state"] == "created"
        });
    }
    let st = c.request(
        "get_container_status",
        json!({"container_id": id}),
        "container_status",
    );
    assert_eq!(st["state"], "running");
    assert_eq!(st["health"], "none");
    assert_eq!(st["socket_connected"], false);
    assert!(st["uptime"].as_str().unwrap().starts_with("0:00:"), "{st}");
    for k in [
        "cpu_percent",
        "memory_usage",
        "memory_limit",
        "memory_percent",
        "network_rx_bytes",
        "network_tx_bytes",
        "disk_read_bytes",
        "disk_write_bytes",
        "timestamp",
    ] {
        assert!(!st["resource_usage"][k].is_null(), "{k}: {st}");
    }
    let r = c.request(
        "restart_container",
        json!({"container_id": name}),
        "container_restarted",
    );
    assert_eq!(r["status"], "running");
    activity(&mut other, "container_restarted", &id);
    let r = c.request(
        "stop_container",
        json!({"container_id": name}),
        "container_stopped",
    );
    assert_eq!(r["status"], "stopped");
    activity(&mut other, "container_stopped", &id);
    other.expect_where("status_changed", T, |s| {
        s["container_id"] == id && s["new_state"] == "exited"
    });
    // The list holds only the Flow Manager's containers.
    let mut plain = Cleanup::new();
    let outsider = common::create_container(&mut plain, "fm-outsider", &[], &["true"]);
    let list = c.request("list_containers", json!({}), "container_list");
    let names: Vec<&str> = list["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&name.as_str()) && !names.contains(&outsider.as_str()),
        "{list}"
    );
    let entry = list["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .unwrap()
        .clone();
    assert_eq!(entry["id"], id);
    assert_eq!(entry["status"], "exited");
    assert!(entry["created"].as_str().unwrap().ends_with('Z'), "{entry}");
    let r = c.request(
        "delete_container",
        json!({"container_id": name}),
        "container_deleted",
    );
    assert_eq!(r, json!({"container_id": name, "status": "deleted"}));
    activity(&mut other, "container_deleted", &id);
    assert!(!socket.exists(), "the socket file is removed");
    assert!(
        !docker(&["inspect", &name]).status.success(),
        "the container is removed"
    );
}

/// Every error type, each with its details (operation, the request's data), a timestamp, and
/// followed by an activity log of type container_error.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn every_error_type_carries_details_and_is_followed_by_an_activity_log() {
    let (fm, _py, mut cleanup, mut c) = setup!("socket_timeout_secs = 1\nmax_frame_bytes = 65536");
    let expect_error =
        |c: &mut Sio, event: &str, data: Value, reply: &str, error_type: &str| -> Value {
            let e = c.call(event, data.clone(), reply).expect_err(event);
            assert_eq!(e["error"], true, "{}", short(&e));
            assert_eq!(e["error_type"], error_type, "{}", short(&e));
            assert_eq!(e["details"]["operation"], event, "{}", short(&e));
            assert_eq!(e["details"]["data"], data, "{}", short(&e));
            assert!(
                e["timestamp"].as_str().unwrap().ends_with('Z') && e["message"].is_string(),
                "{}",
                short(&e)
            );
            let id = data
                .get("container_id")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string();
            let a = activity(c, "container_error", &id);
            assert_eq!(a["details"]["operation"], event, "{a}");
            e
        };
    expect_error(
        &mut c,
        "create_container",
        json!({"name": "x1"}),
        "container_created",
        "validation_error",
    );
    expect_error(
        &mut c,
        "create_container",
        json!({"image": test_image(), "ports": {"web": 80}}),
        "container_created",
        "validation_error",
    );
    expect_error(
        &mut c,
        "start_container",
        json!({}),
        "container_started",
        "validation_error",
    );
    expect_error(
        &mut c,
        "start_container",
        json!({"container_id": "gantry-no-such"}),
        "container_started",
        "container_not_found",
    );
    // A container this dialect did not create is not found either.
    let mut plain = Cleanup::new();
    let outsider = common::create_container(&mut plain, "fm-outsider", &[], &["true"]);
    expect_error(
        &mut c,
        "stop_container",
        json!({"container_id": outsider}),
        "container_stopped",
        "container_not_found",
    );
    // Missing locally, and the test dockerd reaches no registry.
    let e = expect_error(
        &mut c,
        "create_container",
        json!({"image": "gantry-test/missing:nope"}),
        "container_created",
        "image_not_found",
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("gantry-test/missing:nope"),
        "{e}"
    );
    // Docker's own reason: the name is taken (by a container that is not ours).
    let e = expect_error(
        &mut c,
        "create_container",
        json!({"image": test_image(), "name": outsider}),
        "container_created",
        "docker_api_error",
    );
    assert!(
        e["message"].as_str().unwrap().contains("already in use"),
        "{e}"
    );
    // The socket path is taken by something that is not a socket.
    let blocked = unique("fm-blocked");
    cleanup.container(&blocked);
    std::fs::create_dir_all(fm.socket_dir().join(format!("{blocked}.sock"))).unwrap();
    expect_error(
        &mut c,
        "create_container",
        json!({"image": test_image(), "name": blocked}),
        "container_created",
        "socket_error",
    );
    assert!(
        !docker(&["inspect", &blocked]).status.success(),
        "no container is left behind"
    );
    // No container connected; then one that stops reading; then one that sends garbage.
    let (_, name) = running(&mut c, &mut cleanup, "fm-err");
    let msg = json!({"container_id": name, "message": {"command": "ping"}});
    expect_error(
        &mut c,
        "send_message",
        msg.clone(),
        "message_sent",
        "socket_connection_error",
    );
    let peer = Peer::connect(&name);
    let big = json!({"container_id": name, "message": {"blob": "x".repeat(60_000)}});
    let e = (0..200)
        .find_map(|_| c.call("send_message", big.clone(), "message_sent").err())
        .expect("a timeout");
    assert_eq!(e["error_type"], "socket_timeout_error", "{}", e["message"]);
    drop(peer);
    let mut peer = Peer::connect(&name);
    peer.send_raw(&u32::MAX.to_be_bytes());
    let e = c.expect_where("error", T, |e| {
        e["details"]["operation"] == "receive_message"
    });
    assert_eq!(e["error_type"], "socket_communication_error", "{e}");
    assert!(peer.closed_by_gantry(), "the connection is reset");
    let over = json!({"container_id": name, "message": {"blob": "x".repeat(70_000)}});
    expect_error(
        &mut c,
        "send_message",
        over,
        "message_sent",
        "validation_error",
    );
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn messages_flow_both_ways_and_bad_peers_block_nothing() {
    // The slow reader's sends wait up to the socket timeout: long enough that a request
    // held up behind them is told apart from one slowed by a loaded machine.
    let (fm, py, mut cleanup, mut c) = setup!("socket_timeout_secs = 8");
    let mut other = fm.client(&py, Some(&["polling"]));
    let (id, name) = running(&mut c, &mut cleanup, "fm-msg");
    let (id2, slow) = running(&mut c, &mut cleanup, "fm-slow");
    let mut peer = Peer::connect(&name);
    // Client -> container: one frame, exactly the message.
    let message = json!({"command": "execute", "data": {"input": "sample", "n": [1, 2]}});
    let r = c.request(
        "send_message",
        json!({"container_id": name, "message": message}),
        "message_sent",
    );
    assert_eq!(
        r,
        json!({"container_id": name, "message": message, "status": "sent"})
    );
    assert_eq!(peer.recv(), message);
    activity(&mut other, "message_sent", &id);
    // Container -> every client.
    let reply = json!({"command": "result", "data": {"status": "success"}});
    peer.send(&reply);
    for cl in [&mut c, &mut other] {
        let m = cl.expect_where("message_received", T, |m| m["container_id"] == id);
        assert_eq!(m["message"], reply);
        assert!(m["timestamp"].as_str().unwrap().ends_with('Z'), "{m}");
    }
    activity(&mut other, "message_received", &id);
    let st = c.request(
        "get_container_status",
        json!({"container_id": name}),
        "container_status",
    );
    assert_eq!(st["socket_connected"], true);
    assert!(st["last_communication"].is_string(), "{st}");

    // A slow reader: its sends time out while the other container's messages, and other
    // requests, go on at once.
    let _slow_peer = Peer::connect(&slow);
    let big = json!({"container_id": slow, "message": {"blob": "y".repeat(200_000)}});
    for _ in 0..8 {
        c.emit("send_message", big.clone());
    }
    let t0 = Instant::now();
    let r = other.request(
        "send_message",
        json!({"container_id": name, "message": {"n": 1}}),
        "message_sent",
    );
    assert_eq!(r["status"], "sent");
    assert_eq!(peer.recv(), json!({"n": 1}));
    other.request("list_containers", json!({}), "container_list");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "others waited for the slow reader's timeout: {:?}",
        t0.elapsed()
    );
    // The sends the kernel's buffer cannot take time out; the connection is then reset.
    let (mut sent, mut errors) = (0, Vec::new());
    while sent + errors.len() < 8 {
        if c.try_expect("message_sent", Duration::from_millis(50), &|m| {
            m["container_id"] == slow
        })
        .is_some()
        {
            sent += 1;
        }
        if let Some(e) = c.try_expect("error", Duration::from_millis(50), &|e| {
            e["details"]["operation"] == "send_message"
        }) {
            errors.push(e["error_type"].as_str().unwrap().to_string());
        }
    }
    assert!(
        errors.iter().any(|e| e == "socket_timeout_error"),
        "{sent} sent, errors {errors:?}"
    );
    assert!(
        errors.iter().all(|e| e.starts_with("socket_")),
        "{errors:?}"
    );
    let st = c.request(
        "get_container_status",
        json!({"container_id": id2}),
        "container_status",
    );
    assert_eq!(
        st["socket_connected"], false,
        "the slow reader's connection was reset"
    );

    // Garbage from a container: refused, connection reset, nothing else disturbed.
    peer.send_raw(&[0, 0, 0, 5, b'{', b'x', b'y', b'z', b'!']);
    let e = other.expect_where("error", T, |e| e["details"]["container_id"] == id);
    assert_eq!(e["error_type"], "socket_communication_error", "{e}");
    assert!(e["message"].as_str().unwrap().contains("JSON"), "{e}");
    activity(&mut other, "container_error", &id);
    assert!(peer.closed_by_gantry());
    // A stalled frame (length, then nothing) is reset after the socket timeout.
    let mut peer = Peer::connect(&name);
    peer.send_raw(&[0, 0, 0, 9, b'{']);
    let e = other.expect_where("error", T, |e| e["details"]["container_id"] == id);
    assert_eq!(e["error_type"], "socket_timeout_error", "{e}");
    assert!(peer.closed_by_gantry());
    // The container reconnects and everything works again.
    let mut peer = Peer::connect(&name);
    peer.send(&json!({"again": true}));
    other.expect_where("message_received", T, |m| {
        m["message"] == json!({"again": true})
    });
    c.request(
        "send_message",
        json!({"container_id": id, "message": [1, "two"]}),
        "message_sent",
    );
    assert_eq!(peer.recv(), json!([1, "two"]));
}

fn code_dir(root: &std::path::Path, name: &str, script: &str) -> std::path::PathBuf {
    let d = root.join(name);
    std::fs::create_dir_all(d.join("lib")).unwrap();
    std::fs::write(d.join("run.sh"), script).unwrap();
    std::fs::write(d.join("lib/data.txt"), name).unwrap();
    d
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn update_swaps_the_code_recreates_the_container_and_rolls_back_on_failure() {
    let (fm, _py, mut cleanup, mut c) = setup!("update_settle_secs = 1");
    let made = create(
        &mut c,
        &mut cleanup,
        "fm-upd",
        json!({"environment": {"KEEP": "me"}, "ports": {"8080": 0}, "volumes": {"/tmp": "/hosttmp"}}),
    );
    let name = made["name"].as_str().unwrap().to_string();
    c.request(
        "start_container",
        json!({"container_id": name}),
        "container_started",
    );
    let src = tempfile::tempdir().unwrap();
    let v1 = code_dir(src.path(), "v1", "echo code-v1\n");
    let r = c.request(
        "update_container",
        json!({"container_id": name, "code_path": v1}),
        "container_updated",
    );
    assert_eq!(r["status"], "updated");
    assert_eq!(r["code_path"], v1.display().to_string());
    assert_eq!(r["previous_container_id"], made["container_id"]);
    let new_id = r["container_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, made["container_id"].as_str().unwrap());
    activity(&mut c, "container_updated", &new_id);
    // Same name, image, environment, ports and mounts; the code at /app; running again.
    let fmt = "{{.Id}} {{.State.Running}} {{.Config.Image}} {{json .Config.Env}} {{json .HostConfig.PortBindings}}";
    let seen = docker_ok(&["inspect", "-f", fmt, &name]);
    assert!(
        seen.starts_with(&format!("{new_id} true {}", test_image())),
        "{seen}"
    );
    assert!(
        seen.contains("KEEP=me") && seen.contains("8080/tcp"),
        "{seen}"
    );
    let mounts = docker_ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Destination}} {{end}}",
        &name,
    ]);
    for m in ["/var/run/kawaflow.sock", "/app", "/hosttmp"] {
        assert!(mounts.contains(m), "{m}: {mounts}");
    }
    let code = fm.socket_dir().join(format!("{name}_code"));
    assert_eq!(
        std::fs::read_to_string(code.join("lib/data.txt")).unwrap(),
        "v1"
    );
    assert!(
        common::wait_for(T, Duration::from_millis(100), || docker_ok(&[
            "logs", &name
        ])
        .contains("code-v1")
        .then_some(()))
        .is_some()
    );
    // The socket still works for the new container.
    let mut peer = Peer::connect(&name);
    peer.send(&json!({"after": "update"}));
    c.expect_where("message_received", T, |m| m["container_id"] == new_id);

    // New code that exits at once: the update fails and everything comes back.
    let bad = code_dir(src.path(), "bad", "echo bad-code; exit 3\n");
    let e = c
        .call(
            "update_container",
            json!({"container_id": name, "code_path": bad}),
            "container_updated",
        )
        .unwrap_err();
    assert_eq!(e["error_type"], "docker_api_error", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("rolled back"),
        "{e}"
    );
    let seen = docker_ok(&["inspect", "-f", "{{.Id}} {{.State.Running}}", &name]);
    assert_eq!(
        seen.trim(),
        format!("{new_id} true"),
        "the previous container runs again"
    );
    assert_eq!(
        std::fs::read_to_string(code.join("lib/data.txt")).unwrap(),
        "v1",
        "the previous code is back"
    );
    let all = docker_ok(&[
        "ps",
        "-a",
        "--filter",
        "label=io.gantry.dialect=flowmanager",
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(
        all.lines().filter(|l| l.starts_with(&name)).count(),
        1,
        "{all}"
    );
    let missing = c
        .call(
            "update_container",
            json!({"container_id": name, "code_path": "/nonexistent/code"}),
            "container_updated",
        )
        .unwrap_err();
    assert_eq!(missing["error_type"], "validation_error", "{missing}");
    let _ = in_container(&name, "/app");
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn crashes_health_outside_stops_and_periodic_status_are_broadcast() {
    let (_fm, _py, mut cleanup, mut c) = setup!("status_interval_secs = 1\ncrash_log_lines = 5");
    // A crash: a non-zero exit nobody asked for, with its last log lines.
    let made = create(
        &mut c,
        &mut cleanup,
        "fm-crash",
        json!({"command": ["sh", "-c", "echo first; echo boom >&2; sleep 1; exit 7"]}),
    );
    let id = made["container_id"].as_str().unwrap().to_string();
    c.request(
        "start_container",
        json!({"container_id": id}),
        "container_started",
    );
    let crash = c.expect_where("container_crashed", T, |x| x["container_id"] == id);
    assert_eq!(crash["exit_code"], 7);
    assert!(crash["timestamp"].is_f64(), "{crash}");
    let logs = crash["crash_details"]["logs"].as_str().unwrap();
    assert!(logs.contains("first") && logs.contains("boom"), "{crash}");
    activity(&mut c, "container_crash", &id);
    c.expect_where("status_changed", T, |x| {
        x["container_id"] == id && x["old_state"] == "running" && x["new_state"] == "exited"
    });
    // Health: Docker's health check turning unhealthy.
    let health = json!({"healthcheck": {"test": ["CMD-SHELL", "exit 1"], "interval": 1, "timeout": 1, "retries": 1}});
    let made = create(&mut c, &mut cleanup, "fm-health", health);
    let hid = made["container_id"].as_str().unwrap().to_string();
    c.request(
        "start_container",
        json!({"container_id": hid}),
        "container_started",
    );
    let w = c.expect_where("container_health_warning", T, |x| x["container_id"] == hid);
    assert_eq!(w["health"], "unhealthy");
    activity(&mut c, "health_warning", &hid);
    // Periodic status of every container, with resource usage while running.
    let u = c.expect_where("container_status_update", T, |x| {
        x["container_id"] == hid && x["status"]["health"] == "unhealthy"
    });
    assert_eq!(u["status"]["state"], "running");
    assert!(
        u["status"]["resource_usage"]["memory_usage"].is_u64(),
        "{u}"
    );
    // A stop behind gantry's back: a status change, no crash.
    let (rid, rname) = running(&mut c, &mut cleanup, "fm-outside");
    docker_ok(&["kill", "-s", "KILL", &rname]);
    c.expect_where("status_changed", T, |x| {
        x["container_id"] == rid && x["new_state"] == "exited"
    });
    let crash = c.try_expect("container_crashed", Duration::from_secs(2), &|x| {
        x["container_id"] == rid
    });
    assert!(crash.is_none(), "a kill is not a crash: {crash:?}");
}

/// A container command that waits for `/tmp/go`, then writes `first`, 300 numbered lines and
/// exits with `code` at once.
fn burst(code: u8) -> String {
    format!(
        "echo first; until [ -f /tmp/go ]; do sleep 0.05; done; \
         i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo line$i; done; exit {code}"
    )
}

/// Waits until gantry keeps the last log lines of container `id` `how` (its debug log says
/// so), then lets the container's `burst` go.
fn go_once_kept(fm: &Fm, id: &str, how: &str) {
    let kept = common::wait_for(T, Duration::from_millis(50), || {
        fm.log()
            .lines()
            .any(|l| l.contains("keeping the last log lines for crash reports") && l.contains(id))
            .then_some(())
    });
    assert!(
        kept.is_some(),
        "gantry never kept {id}'s lines:\n{}",
        fm.log()
    );
    let log = fm.log();
    assert!(
        log.lines().any(|l| l.contains(id) && l.contains(how)),
        "{id}: {how}?\n{log}"
    );
    docker_ok(&["exec", id, "touch", "/tmp/go"]);
}

fn name_of(made: &Value) -> &str {
    made["name"].as_str().unwrap()
}

fn crash_lines(c: &mut Sio, id: &str, code: u8) -> Vec<String> {
    let crash = c.expect_where("container_crashed", T, |x| x["container_id"] == id);
    assert_eq!(crash["exit_code"], code, "{crash}");
    serde_json::from_value(crash["crash_details"]["log_lines"].clone()).unwrap()
}

/// The crash event carries the very last lines the container wrote before it exited: for a
/// container running before gantry started, whose log driver (`local`) gantry follows; one
/// started through gantry with Docker's default `json-file` log, which gantry reads; and one
/// that exits at once.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_crash_carries_the_last_lines_written_before_the_exit() {
    let host = require_docker!();
    let py = require_python!();
    let mut cleanup = Cleanup::new();
    let early = unique("fm-early");
    cleanup.container(&early);
    let label = "io.gantry.dialect=flowmanager";
    let image = test_image();
    let early_id = docker_ok(&[
        "run",
        "-d",
        "--name",
        &early,
        "--label",
        label,
        "--log-driver",
        "local",
        &image,
        "sh",
        "-c",
        &burst(4),
    ]);
    let early_id = early_id.trim();
    let fm = Fm::start(&host, "crash_log_lines = 5");
    let mut c = fm.client(&py, None);
    let last_five: Vec<String> = (296..=300).map(|i| format!("line{i}")).collect();
    go_once_kept(&fm, early_id, "following the logs");
    assert_eq!(crash_lines(&mut c, early_id, 4), last_five);

    let made = create(
        &mut c,
        &mut cleanup,
        "fm-burst",
        json!({"command": ["sh", "-c", burst(9)]}),
    );
    let burst_name = name_of(&made).to_string();
    let id = made["container_id"].as_str().unwrap().to_string();
    c.request(
        "start_container",
        json!({"container_id": id}),
        "container_started",
    );
    go_once_kept(&fm, &id, "the log file");
    assert_eq!(crash_lines(&mut c, &id, 9), last_five);

    let quick = "echo quick1; echo quick2 >&2; exit 3";
    let made = create(
        &mut c,
        &mut cleanup,
        "fm-quick",
        json!({"command": ["sh", "-c", quick]}),
    );
    let qid = made["container_id"].as_str().unwrap().to_string();
    c.request(
        "start_container",
        json!({"container_id": qid}),
        "container_started",
    );
    let mut lines = crash_lines(&mut c, &qid, 3);
    lines.sort();
    assert_eq!(lines, ["quick1", "quick2"]);
    // Each crash says where its lines came from (the follow or a logs request).
    let log = fm.log();
    for name in [early.as_str(), &burst_name, name_of(&made)] {
        assert!(
            log.lines()
                .any(|l| l.contains("crash logs") && l.contains(name)),
            "{name}:\n{log}"
        );
    }
}

/// Under systemd, the containers' listening sockets go to its descriptor store and come back
/// at the next start: a running container reaches the restarted gantry through the very
/// socket file it has mounted (a new socket at the same path would be a new inode, out of
/// the container's reach).
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn container_sockets_survive_a_restart_through_systemds_descriptor_store() {
    use std::os::unix::fs::MetadataExt;
    let host = require_docker!();
    let py = require_python!();
    let mut cleanup = Cleanup::new();
    let mut fm = Fm::prepare(&host, "");
    let mut store = FdStore::new(fm.dir.path());
    let mut first = fm.command();
    first.env("NOTIFY_SOCKET", &store.path);
    fm.spawn(first);
    let mut c = fm.client(&py, None);
    let (id, name) = running(&mut c, &mut cleanup, "fm-restart");
    let mut peer = Peer::connect(&name);
    peer.send(&json!({"before": "restart"}));
    c.expect_where("message_received", T, |m| m["container_id"] == id);
    store.collect();
    let key = format!("kawaflow-{name}");
    assert!(
        store.fds.iter().any(|(n, _)| *n == key),
        "gantry stored the socket"
    );
    let socket = fm.socket_dir().join(format!("{name}.sock"));
    let inode = std::fs::metadata(&socket).unwrap().ino();

    drop(c);
    fm.stop();
    assert!(
        peer.closed_by_gantry(),
        "the old connection ends with gantry"
    );
    let restarted = store.command(&fm);
    fm.spawn(restarted);
    let mut c = fm.client(&py, None);
    // The container reconnects through its own mount, and messages flow both ways.
    let mut peer = Peer::connect(&name);
    peer.send(&json!({"after": "restart"}));
    let m = c.expect_where("message_received", T, |m| m["container_id"] == id);
    assert_eq!(m["message"], json!({"after": "restart"}));
    c.request(
        "send_message",
        json!({"container_id": name, "message": {"hello": "again"}}),
        "message_sent",
    );
    assert_eq!(peer.recv(), json!({"hello": "again"}));
    assert_eq!(
        std::fs::metadata(&socket).unwrap().ino(),
        inode,
        "the same socket file"
    );
    // Deleting the container takes its socket out of the store.
    c.request(
        "delete_container",
        json!({"container_id": name}),
        "container_deleted",
    );
    store.collect();
    assert!(
        !store.fds.iter().any(|(n, _)| *n == key),
        "removed from the store"
    );
}

// ---------------------------------------------------------------------------------------
// The operator's view: /metrics on a flowmanager listener

fn scrape(fm: &Fm) -> String {
    let mut r = common::agent()
        .get(&format!("{}/metrics", fm.url()))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    r.body_mut().read_to_string().unwrap()
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn metrics_count_socketio_clients_by_transport_and_flow_operations() {
    let host = require_docker!();
    let py = require_python!();
    let fm = Fm::start_with(&host, "metrics = true", "");
    let mut cleanup = Cleanup::new();
    let mut polling = fm.client(&py, Some(&["polling"]));
    let mut ws = fm.client(&py, Some(&["websocket"]));
    polling.expect("connected", T);
    ws.expect("connected", T);
    let clients =
        |t: &str| format!("gantry_socketio_clients{{dialect=\"flowmanager\",transport=\"{t}\"}}");
    let sessions = "gantry_websocket_sessions{dialect=\"flowmanager\"}";
    let counted = |text: &str, p: f64, w: f64| {
        metric(text, &clients("polling")) == Some(p)
            && metric(text, &clients("websocket")) == Some(w)
            && metric(text, sessions) == Some(w)
    };
    let text = common::wait_for(T, Duration::from_millis(100), || {
        let t = scrape(&fm);
        counted(&t, 1.0, 1.0).then_some(t)
    });
    common::promtool_accepts(&text.unwrap_or_else(|| panic!("{}", scrape(&fm))));

    // A create is a flow-create operation, counted when it ended.
    create(&mut ws, &mut cleanup, "fm-metrics", json!({}));
    let created = "gantry_operations_total{kind=\"flow-create\",outcome=\"ok\"}";
    let done = common::wait_for(T, Duration::from_millis(100), || {
        (metric(&scrape(&fm), created) == Some(1.0)).then_some(())
    });
    assert!(done.is_some(), "{}", scrape(&fm));

    polling.disconnect();
    ws.disconnect();
    let gone = common::wait_for(T, Duration::from_millis(100), || {
        counted(&scrape(&fm), 0.0, 0.0).then_some(())
    });
    assert!(gone.is_some(), "{}", scrape(&fm));
}
