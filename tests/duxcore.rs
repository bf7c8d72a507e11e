//! The duxcore dialect against the real binary: the calls duxcore's TypeScript core makes
//! (under `/v1`), replayed on real containers of the test dockerd; the core key on every route
//! and on the websocket; `bind_contents` from a local HTTP server; attach and stats over the
//! websocket.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::*;

const UNAUTHORIZED: &str = r#"{"error":{"code":401,"reason":"Unauthorized","description":"Accessing this daemon requires core authorization."}}"#;

/// A gantry serving the duxcore dialect, and its core key (binary, as the original's
/// `dd if=/dev/random` key is).
struct Dux {
    g: Gantry,
    key: String,
    key_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn key_bytes(seed: u8) -> Vec<u8> {
    (0..64u32)
        .map(|i| (i * 37 + u32::from(seed)) as u8)
        .collect()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn dux_in(state: Option<&Path>, extra: &[&str]) -> Dux {
    dux_on(Gantry::builder(), state, extra)
}

/// A duxcore daemon from `b` (its listener's other keys set there).
fn dux_on(b: GantryBuilder, state: Option<&Path>, extra: &[&str]) -> Dux {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("corekey.bin");
    std::fs::write(&key_file, key_bytes(1)).unwrap();
    let mut section = format!(
        "[duxcore]\ncorekey_file = {:?}",
        key_file.display().to_string()
    );
    for l in extra {
        section += "\n";
        section += l;
    }
    let mut b = b.dialect("duxcore").config(&section);
    if let Some(s) = state {
        b = b.state_dir(s);
    }
    Dux {
        g: b.start(),
        key: b64(&key_bytes(1)),
        key_file,
        _dir: dir,
    }
}

fn dux(extra: &[&str]) -> Dux {
    dux_in(None, extra)
}

impl Dux {
    /// A call as the TypeScript core makes it: the key header, a JSON body.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let body = body.map(|b| b.to_string().into_bytes());
        self.with_key(Some(&self.key), method, path, body)
    }

    fn with_key(&self, key: Option<&str>, method: &str, path: &str, body: Option<Vec<u8>>) -> Resp {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(k) = key {
            headers.push(("X-Duxcore-CoreKey", k));
        }
        self.g.request(method, path, &headers, body)
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.call(method, path, body);
        assert_eq!(r.status, 200, "{method} {path}: {r}");
        r.json()
    }

    fn state_dir(&self) -> PathBuf {
        self.g.config_path.parent().unwrap().join("state")
    }

    fn service_dir(&self, id: &str) -> PathBuf {
        self.state_dir().join("duxcore/services").join(id)
    }

    fn create(&self, cleanup: &mut Cleanup, label: &str, params: Value) -> (String, Resp) {
        let id = unique(label);
        cleanup.container(&id);
        let mut p = params;
        p["id"] = json!(id);
        let r = self.call(
            "POST",
            "/v1/service",
            Some(json!({"type": "raw", "params": p})),
        );
        (id, r)
    }
}

/// A daemon and one service of the test image made by `POST /v1/service` with `params`.
fn with_service(label: &str, params: Value) -> (Dux, Cleanup, String) {
    let d = dux(&[]);
    let (cleanup, id) = service_of(&d, label, params);
    (d, cleanup, id)
}

/// One service of the test image made on `d` by `POST /v1/service` with `params`.
fn service_of(d: &Dux, label: &str, params: Value) -> (Cleanup, String) {
    let mut cleanup = Cleanup::new();
    let mut p = json!({"image": test_image(), "bind_dir": "data"});
    p.as_object_mut()
        .unwrap()
        .extend(params.as_object().unwrap().clone());
    let (id, r) = d.create(&mut cleanup, label, p);
    assert_eq!(r.status, 200, "{r}");
    (cleanup, id)
}

fn inspect(name: &str) -> Value {
    let out = docker_ok(&["inspect", name]);
    serde_json::from_str::<Value>(&out).unwrap()[0].clone()
}

fn running(name: &str) -> bool {
    inspect(name)["State"]["Running"] == json!(true)
}

fn assert_unauthorized(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {r}");
    assert_eq!(r.text(), UNAUTHORIZED, "{what}");
    assert_eq!(r.content_type(), "application/json", "{what}");
}

/// Every route, the core key missing, wrong, or not base64, with and without `/v1`: 401 with
/// the original's body, and nothing done. SIGHUP reads the key file again.
#[test]
fn every_route_wants_the_core_key_and_sighup_reads_it_again() {
    let d = dux(&[]);
    let wrong = b64(&key_bytes(2));
    let routes = [
        ("POST", "/service"),
        ("GET", "/service/some-id"),
        ("DELETE", "/service/some-id"),
        ("POST", "/service/some-id/ctl"),
        ("GET", "/service/some-id/stats"),
        ("PATCH", "/service/some-id/env"),
        ("POST", "/docker/image"),
    ];
    for (method, route) in routes {
        for prefix in ["", "/v1"] {
            let path = format!("{prefix}{route}");
            for key in [
                None,
                Some(wrong.as_str()),
                Some("%%% not base64 %%%"),
                Some(""),
            ] {
                let r = d.with_key(key, method, &path, Some(b"{}".to_vec()));
                let what = format!("{method} {path} with {key:?}");
                assert_unauthorized(&r, &what);
                // The body may be unread: the connection is not reused after the refusal.
                assert_eq!(r.header("connection"), Some("close"), "{what}");
            }
        }
    }
    // With the key, the same routes are reached: no such service (or no Docker) is a 400.
    let r = d.call("GET", "/v1/service/some-id", None);
    assert_eq!(r.status, 400, "{r}");
    assert_eq!(r.json()["error"]["reason"], "Bad Request");

    std::fs::write(&d.key_file, key_bytes(3)).unwrap();
    d.g.signal(Signal::SIGHUP);
    let new = b64(&key_bytes(3));
    let reloaded = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        let r = d.with_key(Some(&new), "GET", "/service/x-1", None);
        (r.status == 400).then_some(())
    });
    assert!(
        reloaded.is_some(),
        "the new key was not taken: {}",
        d.g.stderr()
    );
    let r = d.with_key(Some(&d.key), "GET", "/service/x-1", None);
    assert_unauthorized(&r, "the old key after SIGHUP");
    // A key file that cannot be read any more keeps the key in use.
    std::fs::remove_file(&d.key_file).unwrap();
    d.g.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.with_key(Some(&new), "GET", "/service/x-1", None).status,
        400
    );
}

#[test]
fn a_missing_core_key_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gantry.toml");
    let text = format!(
        "state_dir = {:?}\n[[listeners]]\ndialect = \"duxcore\"\naddress = \"127.0.0.1:0\"\n",
        dir.path().join("state").display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let out = run_gantry(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corekey.bin"),
        "{out:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A websocket client that sees binary messages and close frames.

struct WsClient {
    rt: tokio::runtime::Runtime,
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
}

enum Got {
    Text(String),
    Binary(Vec<u8>),
    Closed(u16, String),
    Nothing,
}

impl WsClient {
    fn connect(addr: SocketAddr, path: &str) -> WsClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ws = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let url = format!("ws://{addr}{path}");
            tokio_tungstenite::client_async(url.as_str(), tcp)
                .await
                .unwrap_or_else(|e| panic!("websocket handshake for {path} failed: {e}"))
                .0
        });
        WsClient { rt, ws }
    }

    fn send(&mut self, m: Message) {
        let WsClient { rt, ws } = self;
        rt.block_on(ws.send(m)).expect("websocket send failed");
    }

    fn next(&mut self, limit: Duration) -> Got {
        let WsClient { rt, ws } = self;
        rt.block_on(async {
            loop {
                match tokio::time::timeout(limit, ws.next()).await {
                    Err(_) => return Got::Nothing,
                    Ok(Some(Ok(Message::Text(t)))) => return Got::Text(t.as_str().to_string()),
                    Ok(Some(Ok(Message::Binary(b)))) => return Got::Binary(b.to_vec()),
                    Ok(Some(Ok(Message::Close(f)))) => {
                        let f = f.map(|f| (u16::from(f.code), f.reason.as_str().to_string()));
                        let (code, reason) = f.unwrap_or((1005, String::new()));
                        return Got::Closed(code, reason);
                    }
                    Ok(Some(Ok(_))) => continue,
                    Ok(_) => return Got::Closed(1006, String::new()),
                }
            }
        })
    }

    /// The close frame the server sends next (other messages are skipped).
    fn closed(&mut self) -> (u16, String) {
        for _ in 0..1000 {
            match self.next(Duration::from_secs(20)) {
                Got::Closed(code, reason) => return (code, reason),
                Got::Nothing => panic!("the server did not close"),
                _ => {}
            }
        }
        panic!("the server never closed");
    }
}

/// The websocket wants the key in its first message, and that message in time.
#[test]
fn the_websocket_wants_the_core_key_first() {
    let d = dux(&[]);
    let wrong = b64(&key_bytes(2));
    let inits = [
        json!({"command": {"type": "stats", "data": "x1"}}),
        json!({"corekey": wrong, "command": {"type": "stats", "data": "x1"}}),
        json!({"corekey": "%%%", "type": "attach", "data": "x1"}),
    ];
    for (path, init) in ["/ws", "/v1/ws", "/v1/service/x1/ctl"].iter().zip(inits) {
        let mut ws = WsClient::connect(d.g.addr, path);
        ws.send(Message::text(init.to_string()));
        let (code, reason) = ws.closed();
        assert_eq!(code, 1008, "{path}: {reason}");
        assert!(
            reason.contains("requires core authorization"),
            "{path}: {reason}"
        );
    }
    let mut ws = WsClient::connect(d.g.addr, "/ws");
    let started = std::time::Instant::now();
    let (code, reason) = ws.closed();
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("no first message"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(15));
    // A plain GET of the websocket path is told to upgrade.
    assert_eq!(d.g.get("/ws").status, 426);
}

// ---------------------------------------------------------------------------------------------
// Services on real containers

/// Create with every param, as the TypeScript core sends it; Docker shows each of them.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn create_with_every_param_and_a_second_create_with_the_same_id() {
    let _host = require_docker!();
    let d = dux(&[]);
    let mut cleanup = Cleanup::new();
    let (id, r) = d.create(
        &mut cleanup,
        "every",
        json!({
            "image": test_image(), "bind_dir": "srv/data", "unknown_field": {"x": 1},
            "cmd": STOPPABLE, "shell": ["/bin/sh", "-c"], "user": "nobody",
            "working_dir": "/tmp", "hostname": "svc-host", "env": ["GREETING=hi there"],
            "port_map": {
                "80/tcp": {"HostIp": "127.0.0.1", "HostPort": ""},
                "81/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]
            },
            "network_disabled": false, "max_cpu": 50000, "max_ram": 64 << 20
        }),
    );
    assert_eq!(r.status, 200, "{r}");
    let answer = r.json();
    assert_eq!(answer["id"], id.as_str());
    assert_eq!(answer["type"], "raw");
    let c = inspect(&id);
    assert_eq!(answer["internal_id"], c["Id"]);
    let (config, host) = (&c["Config"], &c["HostConfig"]);
    assert_eq!(config["Tty"], true, "tty defaults to true");
    assert_eq!(config["OpenStdin"], true, "open_stdin defaults to true");
    assert_eq!(config["User"], "nobody");
    assert_eq!(config["WorkingDir"], "/tmp");
    assert_eq!(config["Hostname"], "svc-host");
    assert_eq!(config["Shell"], json!(["/bin/sh", "-c"]));
    assert_eq!(config["Cmd"], json!(STOPPABLE));
    assert!(config["Env"]
        .as_array()
        .unwrap()
        .contains(&json!("GREETING=hi there")));
    assert_eq!(config["Labels"]["io.gantry.dialect"], "duxcore");
    assert_eq!(host["Memory"], 64 << 20);
    assert_eq!(host["CpuQuota"], 50000);
    for port in ["80/tcp", "81/tcp"] {
        assert_eq!(
            host["PortBindings"][port][0]["HostIp"], "127.0.0.1",
            "{port}"
        );
    }
    let mount = &c["Mounts"][0];
    assert_eq!(mount["Destination"], "/srv/data");
    assert_eq!(
        Path::new(mount["Source"].as_str().unwrap()),
        d.service_dir(&id).join("bind")
    );
    assert!(!running(&id), "a created service is not started");
    // GET /service/{id} answers Docker's ContainerInspect.
    let got = d.ok("GET", &format!("/v1/service/{id}"), None);
    assert_eq!(got["Id"], c["Id"]);
    assert_eq!(got["Config"]["Hostname"], "svc-host");

    // The same id again: Docker's reason, and the first service untouched.
    std::fs::write(d.service_dir(&id).join("bind/keep"), b"x").unwrap();
    let again = d.call(
        "POST",
        "/service",
        Some(json!({"type": "raw", "params": {
        "id": id, "image": test_image(), "bind_dir": "data"}})),
    );
    assert_eq!(again.status, 400, "{again}");
    let why = again.json()["error"]["description"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("already in use"), "{why}");
    assert_eq!(inspect(&id)["Id"], c["Id"]);
    assert!(d.service_dir(&id).join("bind/keep").exists());

    // network_disabled, and a type that is not raw.
    let (quiet, r) = d.create(
        &mut cleanup,
        "nonet",
        json!({"image": test_image(), "bind_dir": "/data", "network_disabled": true,
               "tty": false, "open_stdin": false}),
    );
    assert_eq!(r.status, 200, "{r}");
    let q = inspect(&quiet);
    assert_eq!(q["Config"]["NetworkDisabled"], true);
    assert_eq!(q["Config"]["Tty"], false);
    let r = d.call(
        "POST",
        "/v1/service",
        Some(json!({"type": "compose", "params": {}})),
    );
    assert_eq!(r.status, 400, "{r}");
}

/// ctl each op, stats, the environment round trip with hostile values, delete.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn ctl_stats_env_and_delete_as_the_typescript_core_calls_them() {
    let _host = require_docker!();
    let (d, _cleanup, id) = with_service("life", json!({ "cmd": STOPPABLE }));
    let ctl = |op: &str| {
        d.ok(
            "POST",
            &format!("/v1/service/{id}/ctl"),
            Some(json!({ "op": op })),
        )
    };
    assert_eq!(ctl("start"), json!({"id": id, "op": "start"}));
    assert!(running(&id));
    let started = inspect(&id)["State"]["StartedAt"].clone();
    assert_eq!(ctl("restart")["op"], "restart");
    assert!(running(&id));
    assert_ne!(
        inspect(&id)["State"]["StartedAt"],
        started,
        "restart restarts"
    );
    let sample = d.ok("GET", &format!("/v1/service/{id}/stats"), None);
    assert!(
        sample["cpu_stats"].is_object() && sample["memory_stats"].is_object(),
        "{sample}"
    );
    assert!(sample["read"].is_string(), "{sample}");
    ctl("stop");
    assert!(!running(&id));
    ctl("start");
    ctl("kill");
    assert!(!running(&id));
    let r = d.call(
        "POST",
        &format!("/v1/service/{id}/ctl"),
        Some(json!({"op": "pause"})),
    );
    assert_eq!(r.status, 400, "{r}");

    // PATCH env: values that break naive quoting survive exactly, at the next restart.
    let hostile: Vec<(&str, &str)> = vec![
        ("SPACES", "a b  c "),
        ("QUOTES", r#"it's "quoted" `x` $(echo no) \n"#),
        ("EQUALS", "k=v=w"),
        ("NEWLINES", "line1\nline2\r\n"),
        ("EMPTY", ""),
        ("UNICODE", "grüße ✓"),
    ];
    let env: serde_json::Map<String, Value> = hostile
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let answer = d.ok(
        "PATCH",
        &format!("/v1/service/{id}/env"),
        Some(Value::Object(env.clone())),
    );
    assert_eq!(answer, json!({"id": id, "env": env}));
    assert!(
        inspect(&id)["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| { !e.as_str().unwrap().starts_with("SPACES=") }),
        "not applied before the restart"
    );
    ctl("start");
    ctl("restart");
    assert!(running(&id));
    let env_now = inspect(&id)["Config"]["Env"].clone();
    for (k, v) in &hostile {
        assert!(
            env_now
                .as_array()
                .unwrap()
                .contains(&json!(format!("{k}={v}"))),
            "{k}: {env_now}"
        );
        // What the service's processes see, byte for byte.
        let script = format!("printf %s \"${k}\"");
        let printed = docker(&["exec", &id, "sh", "-c", &script]);
        assert_eq!(String::from_utf8_lossy(&printed.stdout), *v, "{k}");
    }
    let r = d.call(
        "PATCH",
        &format!("/v1/service/{id}/env"),
        Some(json!({"A": 1})),
    );
    assert_eq!(r.status, 400, "{r}");

    let gone = d.ok("DELETE", &format!("/v1/service/{id}"), None);
    assert_eq!(gone, json!({ "id": id }));
    assert!(!docker_exists("container", &id));
    assert!(!d.service_dir(&id).exists());
    let r = d.call("DELETE", &format!("/v1/service/{id}"), None);
    assert_eq!(r.status, 400, "{r}");
}

/// A container of the same name that this dialect did not create is no service.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn other_containers_are_not_services_and_services_survive_a_restart() {
    let _host = require_docker!();
    let mut cleanup = Cleanup::new();
    let foreign = create_container(&mut cleanup, "foreign", &[], STOPPABLE);
    let state = tempfile::tempdir().unwrap();
    let d = dux_in(Some(state.path()), &[]);
    let start = Some(json!({"op": "start"}));
    for (m, p, body) in [
        ("GET", format!("/service/{foreign}"), None),
        ("DELETE", format!("/service/{foreign}"), None),
        ("POST", format!("/service/{foreign}/ctl"), start),
    ] {
        let r = d.call(m, &p, body);
        assert_eq!(r.status, 400, "{m} {p}: {r}");
        assert!(r.text().contains("not a service"), "{r}");
    }
    assert!(docker_exists("container", &foreign) && !running(&foreign));

    let (id, r) = d.create(
        &mut cleanup,
        "survivor",
        json!({"image": test_image(), "bind_dir": "data", "cmd": STOPPABLE}),
    );
    assert_eq!(r.status, 200, "{r}");
    let patched = d.call(
        "PATCH",
        &format!("/service/{id}/env"),
        Some(json!({"AFTER": "restart"})),
    );
    assert_eq!(patched.status, 200, "{patched}");
    drop(d);
    // A new daemon on the same state: the service and its waiting env are still there.
    let d = dux_in(Some(state.path()), &[]);
    d.ok(
        "POST",
        &format!("/service/{id}/ctl"),
        Some(json!({"op": "start"})),
    );
    assert!(running(&id));
    let env = inspect(&id)["Config"]["Env"].clone();
    assert!(
        env.as_array().unwrap().contains(&json!("AFTER=restart")),
        "{env}"
    );
    // A container removed behind gantry's back comes back from the service's record.
    docker_ok(&["rm", "-f", &id]);
    d.ok(
        "POST",
        &format!("/service/{id}/ctl"),
        Some(json!({"op": "start"})),
    );
    assert!(running(&id));
    let env = inspect(&id)["Config"]["Env"].clone();
    assert!(
        env.as_array().unwrap().contains(&json!("AFTER=restart")),
        "{env}"
    );
    d.ok("DELETE", &format!("/service/{id}"), None);
    assert!(!docker_exists("container", &id));
}

// ---------------------------------------------------------------------------------------------
// bind_contents from a local HTTP server

/// A .tar.gz of `entries`, names written into the header as given (`..` included).
fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&b.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// Bytes that do not compress (xorshift).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Serves `files` (path, body, whether to send Content-Length) over HTTP/1.0 on loopback,
/// on a port the kernel picked and this server keeps, until the test process ends.
fn serve_files(files: Vec<(&'static str, Vec<u8>, bool)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let files: Arc<HashMap<&str, (Vec<u8>, bool)>> =
        Arc::new(files.into_iter().map(|(p, b, l)| (p, (b, l))).collect());
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten().take(1000) {
            let files = files.clone();
            std::thread::spawn(move || answer(conn, &files));
        }
    });
    addr
}

fn answer(mut conn: std::net::TcpStream, files: &HashMap<&str, (Vec<u8>, bool)>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, body, length) = match files.get(path) {
        Some((b, l)) => ("200 OK", b.as_slice(), *l),
        None => ("404 Not Found", &b""[..], true),
    };
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    if length {
        out += &format!("Content-Length: {}\r\n", body.len());
    }
    out += "\r\n";
    let _ = conn
        .write_all(out.as_bytes())
        .and_then(|()| conn.write_all(body));
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn bind_contents_good_zip_slip_too_large_and_unreachable() {
    let _host = require_docker!();
    let d = dux(&["bind_contents_max_bytes = 65536"]);
    let mut cleanup = Cleanup::new();
    let good = tgz(&[
        ("./hello.txt", b"hello from the archive"),
        ("sub/dir/x", b"x"),
    ]);
    let slip = tgz(&[("ok.txt", b"fine"), ("../../escaped.txt", b"evil")]);
    let server = serve_files(vec![
        ("/good.tar.gz", good, true),
        ("/slip.tar.gz", slip, true),
        ("/big.tar.gz", noise(100 << 10), false),
        ("/big-declared.tar.gz", noise(100 << 10), true),
    ]);
    let params = |path: &str| {
        json!({"image": test_image(), "bind_dir": "data", "cmd": STOPPABLE,
               "bind_contents": format!("http://{server}{path}")})
    };
    let (id, r) = d.create(&mut cleanup, "good", params("/good.tar.gz"));
    assert_eq!(r.status, 200, "{r}");
    let bind = d.service_dir(&id).join("bind");
    assert_eq!(
        std::fs::read(bind.join("hello.txt")).unwrap(),
        b"hello from the archive"
    );
    assert_eq!(std::fs::read(bind.join("sub/dir/x")).unwrap(), b"x");
    d.ok(
        "POST",
        &format!("/v1/service/{id}/ctl"),
        Some(json!({"op": "start"})),
    );
    let seen = docker_ok(&["exec", &id, "cat", "/data/hello.txt"]);
    assert_eq!(seen, "hello from the archive");

    let refused = [
        ("/slip.tar.gz", "escapes"),
        ("/big.tar.gz", "larger than"),
        ("/big-declared.tar.gz", "larger than"),
        ("/missing.tar.gz", "404"),
    ];
    for (path, says) in refused {
        let (id, r) = d.create(&mut cleanup, "refused", params(path));
        assert_eq!(r.status, 400, "{path}: {r}");
        let why = r.json()["error"]["description"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(why.contains(says), "{path}: {why}");
        assert!(
            !docker_exists("container", &id),
            "{path}: a container stayed"
        );
        assert!(!d.service_dir(&id).exists(), "{path}: its directory stayed");
    }
    assert!(!d.state_dir().join("duxcore/escaped.txt").exists());
    assert!(!d.state_dir().join("duxcore/services/escaped.txt").exists());
    // Port 1 on loopback: nothing listens there.
    let mut p = params("");
    p["bind_contents"] = json!("http://127.0.0.1:1/x.tar.gz");
    let (id, r) = d.create(&mut cleanup, "unreachable", p);
    assert_eq!(r.status, 400, "{r}");
    assert!(r.text().contains("cannot fetch"), "{r}");
    assert!(!docker_exists("container", &id) && !d.service_dir(&id).exists());
}

// ---------------------------------------------------------------------------------------------
// Image import

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn image_import_of_a_busybox_root_filesystem() {
    let _host = require_docker!();
    let d = dux(&["max_image_bytes = 67108864"]);
    let mut cleanup = Cleanup::new();
    let src = create_container(&mut cleanup, "rootfs", &[], &["true"]);
    let rootfs = docker(&["export", &src]).stdout;
    assert!(is_tar(&rootfs), "docker export gave no tar");
    let headers = [
        ("X-Duxcore-CoreKey", d.key.as_str()),
        ("Content-Type", "application/x-tar"),
    ];
    let r =
        d.g.request("POST", "/v1/docker/image", &headers, Some(rootfs));
    assert_eq!(r.status, 200, "{r}");
    let image = r.json()["image_id"].as_str().unwrap().to_string();
    cleanup.image(&image);
    assert!(image.starts_with("sha256:"), "{image}");
    let layers = inspect(&image)["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(layers, 1, "an import is one layer");

    // A service of the imported image runs.
    let (id, r) = d.create(
        &mut cleanup,
        "imported",
        json!({"image": image, "bind_dir": "data", "tty": false,
               "cmd": ["/bin/sh", "-c", "echo imported > /data/out"]}),
    );
    assert_eq!(r.status, 200, "{r}");
    d.ok(
        "POST",
        &format!("/service/{id}/ctl"),
        Some(json!({"op": "start"})),
    );
    let out = d.service_dir(&id).join("bind/out");
    let done = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        std::fs::read_to_string(&out).ok().filter(|s| !s.is_empty())
    });
    assert_eq!(done.as_deref(), Some("imported\n"));

    let r = d.g.request(
        "POST",
        "/docker/image",
        &headers,
        Some(b"not a tar".to_vec()),
    );
    assert_eq!(r.status, 400, "{r}");
    // Over duxcore.max_image_bytes: refused before a byte is read.
    let mut s = d.g.connect();
    let req = format!(
        "POST /v1/docker/image HTTP/1.1\r\nHost: localhost\r\nX-Duxcore-CoreKey: {}\r\n\
         Content-Length: 67108865\r\n\r\n",
        d.key
    );
    write_all(&mut s, req.as_bytes()).unwrap();
    let (status, body) = read_raw_response(&mut s);
    assert_eq!(status, 413, "{body}");
    drop(cleanup); // the imported image goes: what stays dangling afterwards came later
    abandoned_and_oversized_imports_leave_no_image();
}

/// The tar header of a regular file `name` of `size` bytes.
fn tar_header(name: &str, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h.as_bytes().to_vec()
}

fn dangling_images() -> std::collections::BTreeSet<String> {
    docker_ok(&["images", "-q", "--no-trunc", "--filter", "dangling=true"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// An upload that stops (the client gone) or grows past `duxcore.max_image_bytes` (no
/// Content-Length: chunked) leaves no image, although what went through to Docker up to
/// there is a tar that could end cleanly: a complete file, then part of a second one.
fn abandoned_and_oversized_imports_leave_no_image() {
    let d = dux(&["max_image_bytes = 1048576"]);
    let before = dangling_images();
    let mut start = tar_header("first", 512);
    start.extend(noise(512));
    start.extend(tar_header("second", 4 << 20));
    start.extend(noise(64 << 10));

    // The client goes after the start of a 4 MiB upload.
    let mut s = d.g.connect();
    let head = format!(
        "POST /v1/docker/image HTTP/1.1\r\nHost: localhost\r\nX-Duxcore-CoreKey: {}\r\n\
         Content-Length: {}\r\n\r\n",
        d.key,
        start.len() + (4 << 20)
    );
    write_all(&mut s, head.as_bytes()).unwrap();
    write_all(&mut s, &start).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(s);

    // Chunked past the limit (the rest of `second`, 1 MiB and more): 413.
    let mut s = d.g.connect();
    let head = format!(
        "POST /v1/docker/image HTTP/1.1\r\nHost: localhost\r\nX-Duxcore-CoreKey: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        d.key
    );
    write_all(&mut s, head.as_bytes()).unwrap();
    let body = [start, noise(1 << 20)].concat();
    for part in body.chunks(128 << 10) {
        let chunk = [format!("{:x}\r\n", part.len()).as_bytes(), part, b"\r\n"].concat();
        // gantry may answer and close before it has read everything.
        if write_all(&mut s, &chunk).is_err() {
            break;
        }
    }
    let _ = write_all(&mut s, b"0\r\n\r\n");
    let (status, body) = read_raw_response(&mut s);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("max_image_bytes"), "{body}");

    // Had either upload reached Docker as a clean end, an image would come within moments.
    for _ in 0..30 {
        let new: Vec<_> = dangling_images().difference(&before).cloned().collect();
        assert!(new.is_empty(), "an abandoned import left images {new:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Attach and stats over the websocket

impl WsClient {
    /// Reads binary output until it holds `needle`; all text read so far.
    fn output_until(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline {
            match self.next(Duration::from_millis(500)) {
                Got::Binary(b) => seen.extend_from_slice(&b),
                Got::Text(t) => panic!("attach sent text: {t}"),
                Got::Closed(code, reason) => panic!("closed {code} {reason}"),
                Got::Nothing => {}
            }
            if String::from_utf8_lossy(&seen).contains(needle) {
                break;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    }
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn attach_and_stats_over_the_websocket() {
    let _host = require_docker!();
    let (d, _cleanup, id) = with_service("tty", json!({"cmd": ["sh"]}));
    // The document's first message; attach starts the service.
    let mut ws = WsClient::connect(d.g.addr, "/ws");
    let init = json!({"corekey": d.key, "command": {"type": "attach", "data": id}});
    ws.send(Message::text(init.to_string()));
    ws.send(Message::binary(b"echo dux-$((6*7))\n".to_vec()));
    let out = ws.output_until("dux-42", Duration::from_secs(30));
    assert!(out.contains("dux-42"), "{out:?}");
    assert!(running(&id));
    drop(ws);
    std::thread::sleep(Duration::from_millis(500));
    assert!(running(&id), "detaching leaves the service running");

    // The TypeScript core's: its path, the flat message, data as an object, text input.
    let mut ws = WsClient::connect(d.g.addr, &format!("/v1/service/{id}/ctl"));
    let init =
        json!({"corekey": d.key, "type": "attach", "data": {"service_id": id, "logs": true}});
    ws.send(Message::text(init.to_string()));
    ws.send(Message::text("echo again-$((2+3))\n"));
    let out = ws.output_until("again-5", Duration::from_secs(30));
    assert!(out.contains("again-5"), "{out:?}");
    drop(ws);

    let mut ws = WsClient::connect(d.g.addr, "/v1/ws");
    let init = json!({"corekey": d.key, "type": "stats", "data": id});
    ws.send(Message::text(init.to_string()));
    for n in 0..2 {
        match ws.next(Duration::from_secs(30)) {
            Got::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert!(v["cpu_stats"].is_object(), "sample {n}: {v}");
            }
            _ => panic!("no stats sample {n}"),
        }
    }
    drop(ws);
    let mut ws = WsClient::connect(d.g.addr, "/ws");
    let init = json!({"corekey": d.key, "command": {"type": "stats", "data": "no-such-svc"}});
    ws.send(Message::text(init.to_string()));
    let (code, reason) = ws.closed();
    assert_eq!(code, 1011, "{reason}");
    assert!(reason.contains("no-such-svc"), "{reason}");
}

// ---------------------------------------------------------------------------------------------
// The operator's view: /metrics on a duxcore listener

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn metrics_need_the_core_key_and_count_services_and_websockets() {
    let _host = require_docker!();
    let d = dux_on(Gantry::builder().listener("metrics = true"), None, &[]);
    let scrape = || {
        let r = d.with_key(Some(&d.key), "GET", "/metrics", None);
        assert_eq!(r.status, 200, "{r}");
        r.text()
    };
    // The listener is loopback: the core key is what a client proves itself with.
    let r = d.g.get("/metrics");
    assert_eq!(r.status, 401, "{r}");
    assert_eq!(r.json()["error"]["code"], 401, "{r}");
    let wrong = b64(&key_bytes(2));
    assert_eq!(
        d.with_key(Some(&wrong), "GET", "/metrics", None).status,
        401
    );

    let (_cleanup, id) = service_of(&d, "dux-metrics", json!({"cmd": ["sh"]}));
    let created = "gantry_operations_total{kind=\"create-service\",outcome=\"ok\"}";
    assert_eq!(metric(&scrape(), created), Some(1.0));
    let idle = "gantry_operations_running{kind=\"create-service\"}";
    assert_eq!(metric(&scrape(), idle), Some(0.0));

    // A stats session is a websocket of this dialect while it lasts.
    let mut ws = WsClient::connect(d.g.addr, "/v1/ws");
    let init = json!({"corekey": d.key, "type": "stats", "data": id});
    ws.send(Message::text(init.to_string()));
    assert!(matches!(ws.next(Duration::from_secs(30)), Got::Text(_)));
    let sessions = "gantry_websocket_sessions{dialect=\"duxcore\"}";
    assert_eq!(metric(&scrape(), sessions), Some(1.0));
    let connections = "gantry_http_connections_total{dialect=\"duxcore\"}";
    assert!(metric(&scrape(), connections).unwrap() >= 2.0);
    drop(ws);
    let closed = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        (metric(&scrape(), sessions) == Some(0.0)).then_some(())
    });
    assert!(closed.is_some(), "the session stayed counted");
}
