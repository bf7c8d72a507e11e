//! The Transfer App's websockets end to end (`/events/transfer/import`, `/events/import`,
//! `/events/transfer/apps/{id}/start`, `/events/start`, `/events/transfer/apps/{id}/stop`,
//! `/events/system/loadimage`) and
//! `PUT /api/cancel/{id}`, with a real websocket client against the gantry binary and the
//! test dockerd.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{docker, docker_ok, enc, test_image, unique, wait_for, Gantry};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Guards every read so a broken server fails the test instead of hanging it.
const READ_GUARD: Duration = Duration::from_secs(180);

/// A websocket client on its own current-thread runtime, used synchronously.
struct Ws {
    rt: tokio::runtime::Runtime,
    ws: WebSocketStream<tokio::net::TcpStream>,
    /// The server sent a close frame.
    closed: bool,
}

impl Ws {
    fn connect(g: &Gantry, path: &str) -> Ws {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr = g.addr;
        let url = format!("ws://{addr}{path}");
        let ws = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (ws, resp) = tokio_tungstenite::client_async(url.as_str(), tcp)
                .await
                .unwrap_or_else(|e| panic!("websocket handshake for {path} failed: {e}"));
            assert_eq!(resp.status().as_u16(), 101);
            ws
        });
        Ws {
            rt,
            ws,
            closed: false,
        }
    }

    fn send(&mut self, m: Message) {
        let Ws { rt, ws, .. } = self;
        rt.block_on(ws.send(m)).expect("websocket send failed");
    }

    fn text(&mut self, v: Value) {
        self.send(Message::text(v.to_string()));
    }

    fn binary(&mut self, b: &[u8]) {
        self.send(Message::binary(b.to_vec()));
    }

    fn length(&mut self, n: usize) {
        self.text(json!({"Name": "Length", "Value": n}));
    }

    /// The next JSON message; None once the server closed (or the connection ended).
    fn recv(&mut self) -> Option<Value> {
        let Ws { rt, ws, closed } = self;
        loop {
            let m = rt
                .block_on(async { tokio::time::timeout(READ_GUARD, ws.next()).await })
                .expect("no websocket message for a long time");
            match m {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("a JSON message"))
                }
                Some(Ok(Message::Close(_))) => {
                    *closed = true;
                    // Answer the close and read to the end.
                    let _ = rt.block_on(async {
                        tokio::time::timeout(READ_GUARD, async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await
                    });
                    return None;
                }
                Some(Ok(Message::Binary(_))) => panic!("unexpected binary message"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Every message until the server closes.
    fn rest(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        for _ in 0..1_000_000 {
            match self.recv() {
                Some(v) => out.push(v),
                None => return out,
            }
        }
        panic!("the server never closed the websocket");
    }

    fn cancel_id(&mut self) -> String {
        let first = self.recv().expect("the CancelID message");
        assert_eq!(first["Name"], "CancelID", "{first}");
        let id = first["Value"].as_str().expect("CancelID is a string");
        assert_eq!(id.len(), 36, "{id}");
        id.to_string()
    }
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// `docker save` of the test image under a new unique reference (then untagged).
fn saved_image(label: &str) -> (String, Vec<u8>) {
    let reference = format!("{}:1", unique(label));
    docker_ok(&["tag", &test_image(), &reference]);
    let file = tempfile::NamedTempFile::new().unwrap();
    docker_ok(&["save", "-o", file.path().to_str().unwrap(), &reference]);
    docker_ok(&["rmi", &reference]);
    (reference, std::fs::read(file.path()).unwrap())
}

/// A new image of `mib` MiB of random data (its own id, so rollback really removes it).
fn fresh_big_image(label: &str, mib: usize) -> (String, Vec<u8>) {
    let reference = format!("{}:1", unique(label));
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; mib << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    std::fs::write(dir.path().join("blob"), &data).unwrap();
    let tar = std::process::Command::new("tar")
        .args(["-C", dir.path().to_str().unwrap(), "-c", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let mut import = std::process::Command::new(common::docker_cli())
        .args([
            "-H",
            &common::docker_host().unwrap(),
            "import",
            "-",
            &reference,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    assert!(import.wait().unwrap().success());
    let file = tempfile::NamedTempFile::new().unwrap();
    docker_ok(&["save", "-o", file.path().to_str().unwrap(), &reference]);
    docker_ok(&["rmi", &reference]);
    (reference, std::fs::read(file.path()).unwrap())
}

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

/// Waits until the task is over: cancelling it answers 404.
fn wait_task_ended(g: &Gantry, id: &str) {
    let ended = wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
        (g.put(&format!("/api/cancel/{id}")).status == 404).then_some(())
    });
    assert!(ended.is_some(), "task {id} never ended");
}

#[test]
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

    let mut ws = Ws::connect(&g, "/events/transfer/import");
    let cancel_id = ws.cancel_id();
    ws.length(zip.len());
    ws.binary(&zip);
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
    assert!(docker(&["image", "inspect", &image.0]).status.success());
    // The task is over: its id is no longer cancellable.
    wait_task_ended(&g, &cancel_id);
    g.delete(&format!("{}?force=true", app_path(&id)))
        .expect_empty(200);
}

#[test]
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
            !docker(&["image", "inspect", r]).status.success(),
            "image {r} of the cancelled import is still there"
        );
    }
}

#[test]
fn cancel_mid_import_rolls_back() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let (id, refs, zip) = big_bundle("wscx");
    let mut ws = Ws::connect(&g, "/events/transfer/import");
    let cancel_id = ws.cancel_id();
    ws.length(zip.len());
    ws.binary(&zip);
    let mut steps = Vec::new();
    loop {
        let s = ws.recv().expect("the import ended before loading images");
        let first_load = s["StepType"] == "LOAD_IMAGE";
        steps.push(s);
        if first_load {
            break;
        }
    }
    g.put(&format!("/api/cancel/{cancel_id}")).expect_empty(200);
    steps.extend(ws.rest());
    assert!(ws.closed);
    let f = failure(&steps);
    assert_eq!(f["StepType"], "CANCEL", "{f}");
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
fn a_client_leaving_mid_import_cancels_it() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let (id, refs, zip) = big_bundle("wsgone");
    let mut ws = Ws::connect(&g, "/events/transfer/import");
    let cancel_id = ws.cancel_id();
    ws.length(zip.len());
    ws.binary(&zip);
    for _ in 0..1000 {
        let s = ws.recv().expect("the import ended before loading images");
        if s["StepType"] == "LOAD_IMAGE" {
            break;
        }
    }
    drop(ws);
    wait_task_ended(&g, &cancel_id);
    assert_rolled_back(&g, &id, &refs);
    // The daemon is not stuck: the same bundle imports fine afterwards? It would need the
    // images again; a small import on a new connection is enough to show it serves.
    g.get("/api/1/transfer/apps").expect_empty(204);
}

fn rest_import(g: &Gantry, zip: &[u8]) {
    let boundary = "----gantrywsboundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"app\"; filename=\"app.zip\"\r\nContent-Type: application/zip\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(zip);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    g.post(
        "/api/1/transfer/import",
        &format!("multipart/form-data; boundary={boundary}"),
        body,
    )
    .expect_json(200);
}

#[test]
fn start_over_websocket_streams_lines_and_the_result() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("WsStart");
    let id = format!("{name}:1.0");
    rest_import(&g, &bundle(&name, &sleeper_compose(&[&test_image()]), &[]));

    let mut ws = Ws::connect(&g, &format!("/events/transfer/apps/{}/start", enc(&id)));
    ws.cancel_id();
    let steps = ws.rest();
    assert!(ws.closed);
    assert_eq!(steps[0]["StepType"], "ANNOUNCEMENT", "{steps:#?}");
    assert_eq!(
        steps[0]["Message"],
        format!("Starting App instance {id}").as_str()
    );
    let lines: Vec<&str> = steps
        .iter()
        .filter_map(|s| s["ProcessLine"]["Line"].as_str())
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("Creating network")),
        "{steps:#?}"
    );
    assert!(lines.iter().any(|l| l.ends_with("... done")), "{steps:#?}");
    let line = steps.iter().find(|s| s["ProcessLine"].is_object()).unwrap();
    assert_eq!(line["StepType"], "PROCESS_PROGRESS");
    assert_eq!(line["ProcessLine"]["IsStderr"], true);
    let n = steps.len();
    assert_eq!(steps[n - 2]["StepType"], "ANNOUNCEMENT");
    assert_eq!(
        steps[n - 2]["Message"],
        format!("Successfully started App {id}").as_str()
    );
    let last = &steps[n - 1];
    assert_eq!(last["StepType"], "PROCESS_PROGRESS");
    assert_eq!(last["Success"], true);
    assert_eq!(last["ProcessResult"]["ExitCode"], 0, "{last}");
    assert_eq!(
        last["ProcessResult"]["RunningContainers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        last["ProcessResult"]["Lines"].as_array().unwrap().len(),
        lines.len()
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

/// Two services; the second waits for the first to be healthy (about 3 s).
fn slow_app(name: &str) -> Vec<u8> {
    let compose = format!(
        "services:\n  db:\n    image: {img}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3; touch /ready; sleep 600 & wait\"]\n    healthcheck:\n      test: [\"CMD-SHELL\", \"[ -f /ready ]\"]\n      interval: 1s\n      retries: 30\n    stop_grace_period: 1s\n  web:\n    image: {img}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 600 & wait\"]\n    depends_on:\n      db:\n        condition: service_healthy\n    stop_grace_period: 1s\n",
        img = test_image()
    );
    zip_of(&[
        (
            "config.yml",
            format!("Name: {name}\nVersion: 1\n").as_bytes(),
        ),
        ("compose.yaml", compose.as_bytes()),
    ])
}

#[test]
fn cancel_mid_start_leaves_the_app_stopped() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("WsSlow");
    let id = format!("{name}:1");
    rest_import(&g, &slow_app(&name));
    let mut ws = Ws::connect(&g, &format!("/events/transfer/apps/{}/start", enc(&id)));
    let cancel_id = ws.cancel_id();
    let mut steps = Vec::new();
    // Cancel once the first container was created (the second waits for its health).
    loop {
        let s = ws
            .recv()
            .expect("the start ended before creating a container");
        let created = s["ProcessLine"]["Line"]
            .as_str()
            .is_some_and(|l| l.contains("db") && l.ends_with("done"));
        steps.push(s);
        if created {
            break;
        }
    }
    g.put(&format!("/api/cancel/{cancel_id}")).expect_empty(200);
    steps.extend(ws.rest());
    assert!(ws.closed);
    let f = failure(&steps);
    assert_eq!(f["StepType"], "CANCEL", "{steps:#?}");
    assert!(f["Message"].as_str().unwrap().contains("stopped"), "{f}");
    wait_task_ended(&g, &cancel_id);
    let app = g.get(&app_path(&id)).expect_json(200);
    assert_eq!(app["Status"], "Stopped", "{app}");
    assert_eq!(app["Busy"], false);
    assert_eq!(app["Containers"].as_array().unwrap().len(), 0, "{app}");
    let ps = docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=io.gantry.app-id={id}"),
        "--format",
        "{{.Names}}",
    ]);
    assert!(ps.trim().is_empty(), "containers left: {ps}");
    g.delete(&app_path(&id)).expect_empty(200);
}

#[test]
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
    assert!(docker(&["image", "inspect", &reference]).status.success());
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
    let mut other = Ws::connect(&g, "/events/transfer/import");
    other.cancel_id();
    other.length(zip.len());
    other.binary(&zip);
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
fn stop_over_websocket_streams_lines_and_the_result() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("WsStop");
    let id = format!("{name}:1.0");
    rest_import(&g, &bundle(&name, &sleeper_compose(&[&test_image()]), &[]));
    g.put(&format!("{}/start", app_path(&id))).expect_json(200);
    assert_eq!(g.get(&app_path(&id)).expect_json(200)["Status"], "Running");

    let mut ws = Ws::connect(&g, &format!("/events/transfer/apps/{}/stop", enc(&id)));
    let cancel_id = ws.cancel_id();
    let steps = ws.rest();
    assert!(ws.closed);
    assert_eq!(steps[0]["StepType"], "ANNOUNCEMENT", "{steps:#?}");
    assert_eq!(
        steps[0]["Message"],
        format!("Stopping App instance {id}").as_str()
    );
    let lines: Vec<&str> = steps
        .iter()
        .filter_map(|s| s["ProcessLine"]["Line"].as_str())
        .collect();
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
    let n = steps.len();
    assert_eq!(steps[n - 2]["StepType"], "ANNOUNCEMENT");
    assert_eq!(
        steps[n - 2]["Message"],
        format!("Successfully stopped App {id}").as_str()
    );
    let last = &steps[n - 1];
    assert_eq!(last["StepType"], "PROCESS_PROGRESS");
    assert_eq!(last["Success"], true);
    assert_eq!(last["ProcessResult"]["ExitCode"], 0, "{last}");
    assert!(
        last["ProcessResult"]["Command"]
            .as_str()
            .unwrap()
            .ends_with(" down"),
        "{last}"
    );
    assert_eq!(
        last["ProcessResult"]["Lines"].as_array().unwrap().len(),
        lines.len()
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
    zip_of(&[
        (
            "config.yml",
            format!("Name: {name}\nVersion: 1\n").as_bytes(),
        ),
        ("compose.yaml", compose.as_bytes()),
    ])
}

#[test]
fn cancel_mid_stop_starts_the_app_again() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("WsStubborn");
    let id = format!("{name}:1");
    rest_import(&g, &stubborn_app(&name));
    g.put(&format!("{}/start", app_path(&id))).expect_json(200);
    let before = g.get(&app_path(&id)).expect_json(200);
    assert_eq!(before["Status"], "Running", "{before}");
    assert_eq!(before["Containers"].as_array().unwrap().len(), 2);

    let mut ws = Ws::connect(&g, &format!("/events/transfer/apps/{}/stop", enc(&id)));
    let cancel_id = ws.cancel_id();
    let mut steps = Vec::new();
    // Cancel once `quick` is gone while `stubborn` is still being stopped (for ten minutes).
    let (mut quick_removed, mut stubborn_stopping) = (false, false);
    while !(quick_removed && stubborn_stopping) {
        let s = ws.recv().expect("the stop ended before it was cancelled");
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
        steps.push(s);
    }
    assert_eq!(
        g.get(&app_path(&id)).expect_json(200)["Busy"],
        true,
        "the app is not busy while it is being stopped"
    );
    g.put(&format!("/api/cancel/{cancel_id}")).expect_empty(200);
    steps.extend(ws.rest());
    assert!(ws.closed);
    let f = failure(&steps);
    assert_eq!(f["StepType"], "CANCEL", "{steps:#?}");
    assert!(
        f["Message"].as_str().unwrap().contains("started again"),
        "{f}"
    );
    let lines: Vec<&str> = steps
        .iter()
        .filter_map(|s| s["ProcessLine"]["Line"].as_str())
        .collect();
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
    let ps = docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.gantry.app-id={id}"),
    ]);
    for c in ps.split_whitespace() {
        docker_ok(&["kill", c]);
    }
    g.delete(&format!("{}?force=true", app_path(&id)))
        .expect_empty(200);
}
