//! gantry as the fault tests run it: inside the world's namespace, with a transfer and an
//! Intervirt listener on that namespace's loopback (ports the kernel picks, read from the
//! log), restarted on the same state after each fault. The test thread enters the namespace
//! ([`enter`]) so its HTTP and websocket clients reach those listeners.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

use super::world::World;
use crate::common;

/// Moves the calling thread (and the threads it starts) into the world's namespace.
pub fn enter(world: &World) {
    let ns = std::fs::File::open(world.netns_path()).unwrap();
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

pub struct Daemon {
    pub dir: PathBuf,
    config: PathBuf,
    netns: PathBuf,
    child: Option<Child>,
    log_from: usize,
    pub transfer: SocketAddr,
    pub intervirt: SocketAddr,
    pub distillery: SocketAddr,
    pub duxcore: SocketAddr,
    pub flow: SocketAddr,
    agent: ureq::Agent,
}

/// The duxcore core key (its file's bytes), as clients send it (base64).
pub const CORE_KEY_B64: &str = "ZmF1bHRzLWNvcmUta2V5LWZvci1nYW50cnktdGVzdHM=";
const CORE_KEY: &[u8] = b"faults-core-key-for-gantry-tests";

/// The token of the Distillery listener's tokens file.
pub const TOKEN: &str = "0123456789abcdef-faults";

/// How a crash-armed run ended.
#[derive(Debug)]
pub struct Crashed {
    /// What the crash point wrote before exiting (`point`, and `file`/`durable` for a point
    /// between a write and its fsync).
    pub note: Value,
}

impl Daemon {
    /// Writes a config for a fresh state directory under `dir`; `extra` goes at its end.
    pub fn new(world: &World, dir: &Path, extra: &str) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let tokens = dir.join("distillery-tokens");
        std::fs::write(&tokens, format!("faults {TOKEN}\n")).unwrap();
        let corekey = dir.join("corekey.bin");
        std::fs::write(&corekey, CORE_KEY).unwrap();
        let config = dir.join("gantry.toml");
        let text = format!(
            "state_dir = \"{state}\"\ndocker_host = \"{docker}\"\nlog_level = \"debug\"\n\
             shutdown_timeout_secs = 3\ndocker_probe_interval_secs = 1\n\n\
             [[listeners]]\ndialect = \"transfer\"\naddress = \"127.0.0.1:0\"\n\n\
             [[listeners]]\ndialect = \"intervirt\"\naddress = \"127.0.0.2:0\"\nauth = \"none\"\n\n\
             [[listeners]]\ndialect = \"distillery\"\naddress = \"127.0.0.3:0\"\ntoken_file = \"{tokens}\"\n\n\
             [[listeners]]\ndialect = \"duxcore\"\naddress = \"127.0.0.4:0\"\n\n\
             [duxcore]\ncorekey_file = \"{corekey}\"\n\n\
             [[listeners]]\ndialect = \"flowmanager\"\naddress = \"127.0.0.5:0\"\n\n\
             [flowmanager]\nsocket_dir = \"{sockets}\"\nstop_timeout_secs = 1\n\
             pull_missing_images = false\n\n\
             [snapshots]\nkeep_backups = 1\n\n\
             [intervirt]\npower = \"record\"\nupgrade_command = [\"true\"]\npull_on_update = false\n\
             stop_timeout_secs = 1\n{extra}\n",
            state = dir.join("state").display(),
            docker = world.host(),
            tokens = tokens.display(),
            corekey = corekey.display(),
            sockets = dir.join("sockets").display(),
        );
        std::fs::write(&config, text).unwrap();
        Daemon {
            dir: dir.to_path_buf(),
            config,
            netns: world.netns_path(),
            child: None,
            log_from: 0,
            transfer: SocketAddr::from(([127, 0, 0, 1], 0)),
            intervirt: SocketAddr::from(([127, 0, 0, 1], 0)),
            distillery: SocketAddr::from(([127, 0, 0, 1], 0)),
            duxcore: SocketAddr::from(([127, 0, 0, 1], 0)),
            flow: SocketAddr::from(([127, 0, 0, 1], 0)),
            agent: common::agent(),
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The Flow Manager's socket directory (its containers' sockets and code).
    pub fn sockets(&self) -> PathBuf {
        self.dir.join("sockets")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("gantry.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn note_path(&self) -> PathBuf {
        self.dir.join("crash-note.json")
    }

    /// Starts gantry (killing a running one first), armed to crash at `crash` (`name` or
    /// `name@n`); returns once both listeners answer.
    pub fn start(&mut self, crash: Option<&str>) {
        self.kill();
        let _ = std::fs::remove_file(self.note_path());
        self.log_from = self.log().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .arg(gantry_under_test())
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("GANTRY_FORBID_REAL_POWER", "1")
            .env("GANTRY_CRASH_NOTE", self.note_path())
            .env_remove("GANTRY_CRASH_AT")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(point) = crash {
            c.env("GANTRY_CRASH_AT", point);
        }
        self.child = Some(c.spawn().expect("cannot start gantry"));
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.try_wait() {
                panic!("gantry exited at start ({st}):\n{}", self.log());
            }
            let log = self.log();
            let fresh = &log[self.log_from.min(log.len())..];
            let addresses = (
                listening(fresh, "transfer"),
                listening(fresh, "intervirt"),
                listening(fresh, "distillery"),
                listening(fresh, "duxcore"),
                listening(fresh, "flowmanager"),
            );
            if let (Some(t), Some(i), Some(d), Some(x), Some(f)) = addresses {
                self.flow = f;
                self.transfer = t;
                self.intervirt = i;
                self.distillery = d;
                self.duxcore = x;
                if self.get("/healthz").0 == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gantry did not listen within 60 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL (a power cut, an OOM kill).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (up to `limit`) for the armed crash; None when gantry is still running.
    pub fn wait_crash(&mut self, limit: Duration) -> Option<Crashed> {
        let status = common::wait_for(limit, Duration::from_millis(10), || self.try_wait())?;
        self.child = None;
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "gantry ended otherwise: {status}\n{}",
            self.log()
        );
        let note = std::fs::read(self.note_path()).unwrap_or_default();
        let note = serde_json::from_slice(&note)
            .unwrap_or_else(|e| panic!("no crash note ({e}); killed otherwise?\n{}", self.log()));
        Some(Crashed { note })
    }

    // --- the transfer API ---------------------------------------------------------------

    /// A request; (status, body as JSON or a string, Null when empty). A transport error
    /// (gantry died under the request) is status 0.
    pub fn request(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> (u16, Value) {
        let url = format!("http://{}{}", self.transfer, path);
        let b = ureq::http::Request::builder().method(method).uri(url);
        let (b, bytes) = match body {
            Some((ct, bytes)) => (b.header("Content-Type", ct), bytes),
            None => (b, Vec::new()),
        };
        let resp = match self.agent.run(b.body(bytes).unwrap()) {
            Ok(r) => r,
            Err(_) => return (0, Value::Null),
        };
        let status = resp.status().as_u16();
        let mut resp = resp;
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        });
        (status, v)
    }

    /// A duxcore request (its core key header): (status, body as JSON or a string).
    pub fn duxcore(&self, method: &str, path: &str, body: Option<(&str, Vec<u8>)>) -> (u16, Value) {
        duxcore_request(&self.agent, self.duxcore, method, path, body).unwrap_or((0, Value::Null))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None)
    }

    pub fn put(&self, path: &str) -> (u16, Value) {
        self.request("PUT", path, None)
    }

    /// The apps, as `GET /api/1/transfer/apps` lists them.
    pub fn apps(&self) -> Vec<Value> {
        match self.get("/api/1/transfer/apps") {
            (204, _) => Vec::new(),
            (200, Value::Array(a)) => a,
            other => panic!("listing apps: {other:?}\n{}", self.log()),
        }
    }

    /// The templates, as `GET /api/1/transfer/templates` lists them.
    pub fn templates(&self) -> Vec<Value> {
        match self.get("/api/1/transfer/templates") {
            (204, _) => Vec::new(),
            (200, Value::Array(a)) => a,
            other => panic!("listing templates: {other:?}\n{}", self.log()),
        }
    }

    // --- the Intervirt dialect -----------------------------------------------------------

    /// A websocket to the Intervirt listener.
    pub fn intervirt(&self) -> Intervirt {
        let stream = TcpStream::connect(self.intervirt).expect("connect to the agent");
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let url = format!("ws://{}/containerManagement", self.intervirt);
        let (ws, _) = tungstenite::client::client(url, stream).expect("websocket handshake");
        Intervirt::from_socket(ws)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- gantry's log ({}):\n{}",
                self.dir.display(),
                self.log()
            );
        }
    }
}

/// The gantry the faults are tried on: this build's, or `GANTRY_FAULTS_BIN` (another build,
/// e.g. of an earlier version, to measure what the same faults did to it; the crash points
/// need this build).
fn gantry_under_test() -> String {
    match std::env::var("GANTRY_FAULTS_BIN") {
        Ok(bin) if !bin.is_empty() => bin,
        _ => common::gantry_bin().to_string(),
    }
}

/// The address of the `dialect` listener from gantry's log line.
fn listening(log: &str, dialect: &str) -> Option<SocketAddr> {
    let line = log
        .lines()
        .find(|l| l.contains(" listening ") && l.contains(&format!("dialect={dialect}")))?;
    let rest = &line[line.find("address=")? + "address=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// A duxcore request to `addr`; None when the connection failed (a crash).
pub fn duxcore_request(
    agent: &ureq::Agent,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> Option<(u16, Value)> {
    let url = format!("http://{addr}{path}");
    let b = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("X-Duxcore-CoreKey", CORE_KEY_B64);
    let (b, bytes) = match body {
        Some((ct, bytes)) => (b.header("Content-Type", ct), bytes),
        None => (b, Vec::new()),
    };
    let mut resp = agent.run(b.body(bytes).unwrap()).ok()?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Some((status, v))
}

/// A Socket.IO client of the Flow Manager (Socket.IO v5 over Engine.IO v4, websocket
/// transport).
pub struct Sio {
    ws: WebSocket<TcpStream>,
}

impl Sio {
    /// Connects to the default namespace; None when gantry does not answer.
    pub fn connect(addr: SocketAddr) -> Option<Sio> {
        let stream = TcpStream::connect(addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .ok()?;
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (ws, _) = tungstenite::client::client(url, stream).ok()?;
        let mut sio = Sio { ws };
        sio.next_where(|t| t.starts_with('0'))?;
        sio.ws.send(Message::text("40")).ok()?;
        sio.next_where(|t| t.starts_with("40"))?;
        // The server's handlers are in place once it greets (an event sent right after the
        // connect acknowledgement may come before them and go unanswered).
        sio.next_where(|t| t.starts_with("42[\"connected\""))?;
        Some(sio)
    }

    /// The next text packet satisfying `pred` (pings answered on the way), within 120 s.
    fn next_where(&mut self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if Instant::now() > deadline {
                eprintln!("    (Socket.IO: no answer within 120 s)");
                return None;
            }
            let read = self.ws.read();
            let read = read.map_err(|e| eprintln!("    (Socket.IO read: {e})"));
            let text = match read.ok()? {
                Message::Text(t) => t.to_string(),
                Message::Close(_) => return None,
                _ => continue,
            };
            if text == "2" {
                self.ws.send(Message::text("3")).ok()?;
            } else if pred(&text) {
                return Some(text);
            }
        }
    }

    /// Emits `event` with `data`: the event `reply` or `error` that answers it (its name and
    /// data), None when the connection ended first (a crash).
    pub fn call(&mut self, event: &str, data: Value, reply: &str) -> Option<(String, Value)> {
        let packet = format!("42{}", json!([event, data]));
        self.ws.send(Message::text(packet)).ok()?;
        loop {
            let text = self.next_where(|t| t.starts_with("42"))?;
            let v: Value = serde_json::from_str(&text[2..]).ok()?;
            let name = v[0].as_str().unwrap_or_default();
            if name == reply || name == "error" {
                return Some((name.to_string(), v[1].clone()));
            }
        }
    }
}

/// One Distillery call (`{"call", "params"}` as a binary frame on `/api/v1/ws`): its result,
/// None when the connection ended first (a crash).
pub fn distillery_call(addr: SocketAddr, call: &str, params: &[String]) -> Option<Value> {
    use tungstenite::client::IntoClientRequest;
    let stream = TcpStream::connect(addr).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let mut req = format!("ws://{addr}/api/v1/ws")
        .into_client_request()
        .ok()?;
    let auth = format!("Bearer {TOKEN}").parse().ok()?;
    req.headers_mut().insert("Authorization", auth);
    let (mut ws, _) = tungstenite::client::client(req, stream).ok()?;
    let msg = json!({"call": call, "params": params}).to_string();
    ws.send(Message::binary(msg.into_bytes())).ok()?;
    loop {
        match ws.read().ok()? {
            Message::Binary(b) => return serde_json::from_slice(&b).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

pub struct Intervirt {
    ws: WebSocket<TcpStream>,
    n: usize,
}

impl Intervirt {
    pub fn from_socket(ws: WebSocket<TcpStream>) -> Intervirt {
        Intervirt { ws, n: 0 }
    }

    /// Sends a request; its final reply, or None when the connection ended first (a crash).
    pub fn request(&mut self, request: Value) -> Option<Value> {
        self.exchange(request)
            .map_err(|e| eprintln!("    (Intervirt request without a reply: {e})"))
            .ok()
    }

    fn exchange(&mut self, mut request: Value) -> Result<Value, String> {
        self.n += 1;
        let uuid = format!("00000000-0000-4000-8000-{:012}", self.n);
        request["uuid"] = json!(uuid);
        let text = Message::text(request.to_string());
        self.ws.send(text).map_err(|e| format!("send: {e}"))?;
        loop {
            let text = match self.ws.read().map_err(|e| format!("read: {e}"))? {
                Message::Text(t) => t.to_string(),
                Message::Close(c) => return Err(format!("closed: {c:?}")),
                _ => continue,
            };
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
            if v["refID"] == uuid.as_str() && v.get("progress").is_none() {
                return Ok(v);
            }
        }
    }

    /// The reply's code (-1 when there was none).
    pub fn code(&mut self, request: Value) -> i64 {
        self.request(request)
            .and_then(|v| v["code"].as_i64())
            .unwrap_or(-1)
    }
}
