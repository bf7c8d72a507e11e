//! The Intervirt agent over its real websocket protocol: the `gantry` binary runs inside a
//! network namespace this test creates (`nsenter --net=...`), its dataplane plumbs real
//! containers from the test dockerd, and the clients connect from threads that entered the
//! same namespace. Nothing here touches the host's own network.
//!
//! Power commands go to the recording backend (`power = "record"`), and every agent runs with
//! `GANTRY_FORBID_REAL_POWER=1`, which makes the real backends a configuration error.
//!
//! Needs root, `ip`, `nsenter`, `nft`, the docker CLI and `GANTRY_TEST_DOCKER_HOST`: the
//! tests are `#[ignore]`d and `scripts/test.sh` runs them; without the latter they skip
//! loudly (fail under CI).

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use common::{run, run_ok, test_image};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

/// `wipe` removes every Intervirt container of the dockerd: the tests take turns.
static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

const PORT: u16 = 55436;
const IMAGE_ALIAS: &str = "debian/13";
/// Keys a strict client knows.
const STRICT_KEYS: &[&str] = &[
    "type", "refID", "error", "code", "progress", "output", "version",
];

struct Docker {
    host: String,
}

impl Docker {
    fn run(&self, args: &[&str]) -> Output {
        common::docker(args)
    }
    fn ok(&self, args: &[&str]) -> String {
        common::docker_ok(args)
    }
    fn exists(&self, name: &str) -> bool {
        self.run(&["inspect", "--type", "container", name])
            .status
            .success()
    }
    fn running(&self, name: &str) -> bool {
        self.run(&["inspect", "-f", "{{.State.Running}}", name])
            .stdout
            .starts_with(b"true")
    }
    fn intervirt_containers(&self) -> Vec<String> {
        let out = self.ok(&[
            "ps",
            "-a",
            "--filter",
            "label=io.gantry.intervirt=1",
            "--format",
            "{{.Names}}",
        ]);
        out.lines().map(str::to_string).collect()
    }
    /// Pings up to three times (a fresh link may drop the first packet).
    fn reaches(&self, from: &str, to: &str) -> bool {
        (0..3).any(|_| {
            self.run(&["exec", from, "ping", "-c", "1", "-W", "2", to])
                .status
                .success()
        })
    }
    /// One probe that must go unanswered (a reachable peer answers at once).
    fn blocked(&self, from: &str, to: &str) -> bool {
        !self
            .run(&["exec", from, "ping", "-c", "1", "-W", "1", to])
            .status
            .success()
    }
}

/// A network namespace owned by the test, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let name = format!(
            "gantry-iv-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run_ok("ip", &["netns", "add", &name]);
        run_ok("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
    fn ok(&self, cmd: &[&str]) -> String {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend(cmd);
        run_ok("ip", &args)
    }
    fn run(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend(cmd);
        run("ip", &args)
    }
    fn gantry_links(&self) -> Vec<String> {
        self.ok(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("gv-"))
            .collect()
    }
    fn table_exists(&self) -> bool {
        self.run(&["nft", "list", "table", "inet", "gantry"])
            .status
            .success()
    }
    fn iptables_rules(&self) -> Vec<String> {
        ["iptables", "ip6tables"]
            .iter()
            .flat_map(|t| {
                self.ok(&[t, "-S"])
                    .lines()
                    .filter(|l| l.contains("gantry"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// The `gantry` binary serving the Intervirt dialect inside a namespace.
struct Agent {
    child: Option<Child>,
    netns: PathBuf,
    dir: PathBuf,
    config: PathBuf,
}

impl Agent {
    fn start(netns: &Netns, dir: &Path, docker: &str, intervirt: &str) -> Agent {
        Self::start_with(netns, dir, docker, "", intervirt)
    }

    /// Like `start`, with `listener` lines added to the listener's table.
    fn start_with(
        netns: &Netns,
        dir: &Path,
        docker: &str,
        listener: &str,
        intervirt: &str,
    ) -> Agent {
        let config = dir.join("gantry.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\ndocker_host = \"{docker}\"\nshutdown_timeout_secs = 3\n\
                 log_level = \"debug\"\n\n\
                 [[listeners]]\ndialect = \"intervirt\"\naddress = \"127.0.0.1:{PORT}\"\n\
                 auth = \"none\"\n{listener}\n\n[intervirt]\n{intervirt}\n",
                dir.join("state").display()
            ),
        )
        .unwrap();
        let mut agent = Agent {
            child: None,
            netns: netns.path(),
            dir: dir.to_path_buf(),
            config,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("gantry.log"))
            .unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg(env!("CARGO_BIN_EXE_gantry"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("GANTRY_FORBID_REAL_POWER", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("GANTRY_INTERVIRT_POWER")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn nsenter gantry");
        self.child = Some(child);
        // Ready when the listener accepts (it binds after the dataplane is applied).
        for _ in 0..600 {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gantry exited at start ({status}):\n{}", self.log());
            }
            if connect_in(&self.netns).is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gantry did not listen within 30 s:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gantry.log")).unwrap_or_default()
    }

    fn state(&self, file: &str) -> PathBuf {
        self.dir.join("state/intervirt").join(file)
    }

    fn client(&self) -> Client {
        Client::connect(&self.netns)
    }

    /// A crash: SIGKILL, no cleanup.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status (waits at most 30 s, then kills).
    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..300 {
            if let Some(s) = c.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP connection to the agent, opened from a thread inside its namespace (the socket
/// stays in that namespace wherever it is used afterwards).
fn connect_in(netns: &Path) -> Option<TcpStream> {
    let file = std::fs::File::open(netns).unwrap();
    // Only this short-lived thread changes namespace.
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        TcpStream::connect(("127.0.0.1", PORT)).ok()
    })
    .join()
    .unwrap()
}

struct Client {
    ws: WebSocket<TcpStream>,
    /// Replies read while waiting for another refID.
    buffered: Vec<Value>,
    /// Every message received, for the key checks.
    seen: Vec<Value>,
    n: usize,
}

impl Client {
    fn connect(netns: &Path) -> Client {
        let stream = connect_in(netns).expect("connect to the agent");
        // A bound on every wait for a reply (a failure, not a timing check).
        stream
            .set_read_timeout(Some(Duration::from_secs(180)))
            .unwrap();
        let (ws, resp) = tungstenite::client::client(
            format!("ws://127.0.0.1:{PORT}/containerManagement"),
            stream,
        )
        .expect("websocket handshake");
        assert_eq!(resp.status(), 101);
        Client {
            ws,
            buffered: Vec::new(),
            seen: Vec::new(),
            n: 0,
        }
    }

    fn uuid(&mut self) -> String {
        self.n += 1;
        format!("00000000-0000-4000-8000-{:012}", self.n)
    }

    /// Sends a request with a fresh uuid; returns the uuid.
    fn send(&mut self, mut request: Value) -> String {
        let uuid = self.uuid();
        request["uuid"] = json!(uuid);
        self.ws
            .send(Message::text(request.to_string()))
            .expect("send");
        uuid
    }

    fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_string())).expect("send");
    }

    fn next(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read a reply") {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("reply is JSON");
                    assert!(v["type"] == "General" || v["type"] == "Version", "{v}");
                    assert!(v["refID"].is_string(), "{v}");
                    if v["type"] == "General" {
                        assert!(v["code"].is_i64(), "{v}");
                    }
                    self.seen.push(v.clone());
                    return v;
                }
                Message::Close(_) => panic!("the agent closed the socket"),
                _ => continue,
            }
        }
    }

    /// The next message for `uuid`, keeping others for later.
    fn reply_to(&mut self, uuid: &str) -> Value {
        if let Some(i) = self.buffered.iter().position(|v| v["refID"] == uuid) {
            return self.buffered.remove(i);
        }
        for _ in 0..10_000 {
            let v = self.next();
            if v["refID"] == uuid {
                return v;
            }
            self.buffered.push(v);
        }
        panic!("no reply for {uuid}");
    }

    fn request(&mut self, request: Value) -> Value {
        let uuid = self.send(request);
        self.reply_to(&uuid)
    }

    fn code(&mut self, request: Value) -> i64 {
        let v = self.request(request);
        v["code"].as_i64().unwrap()
    }

    /// A streamed request: its progress messages, then the final reply.
    fn stream(&mut self, request: Value) -> (Vec<Value>, Value) {
        let uuid = self.send(request);
        let mut progress = Vec::new();
        for _ in 0..100_000 {
            let v = self.reply_to(&uuid);
            if v.get("progress").is_some() {
                progress.push(v);
            } else {
                return (progress, v);
            }
        }
        panic!("stream {uuid} never ended");
    }

    /// Nothing else arrives for these refIDs before a fresh request's reply.
    fn assert_no_more(&mut self, refs: &[String]) {
        let sentinel = self.send(json!({"type": "Command", "command": "version"}));
        let _ = self.reply_to(&sentinel);
        for v in self.buffered.drain(..) {
            let r = v["refID"].as_str().unwrap_or("").to_string();
            assert!(!refs.contains(&r), "a second reply for {r}: {v}");
        }
    }
}

fn add(name: &str, v4: &str, v6: &str, mac: &str) -> Value {
    json!({"type": "AddContainer", "id": name, "ipv4": v4, "ipv6": v6, "mac": mac,
           "internet": false, "image": IMAGE_ALIAS})
}

fn id(kind: &str, name: &str) -> Value {
    json!({"type": kind, "id": name})
}

fn pair(kind: &str, a: &str, b: &str) -> Value {
    json!({"type": kind, "id1": a, "id2": b})
}

fn command(c: &str) -> Value {
    json!({"type": "Command", "command": c})
}

/// The `output` lines of a stream's progress messages.
fn outputs(progress: &[Value]) -> Vec<&str> {
    progress
        .iter()
        .filter_map(|p| p["output"].as_str())
        .collect()
}

fn assert_error(v: &Value, code: i64) {
    assert_eq!(v["code"], code, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "code {code} needs a message: {v}"
    );
}

/// Common setup: the docker handle, the image alias, a clean slate of Intervirt containers.
fn setup(test: &str) -> Option<(Docker, tempfile::TempDir, Netns)> {
    let host = common::docker_host_or_skip(test)?;
    let docker = Docker { host };
    docker.ok(&["tag", &test_image(), IMAGE_ALIAS]);
    for name in docker.intervirt_containers() {
        docker.ok(&["rm", "-f", &name]);
    }
    Some((docker, tempfile::tempdir().unwrap(), Netns::new()))
}

fn unique(tag: &str) -> String {
    format!("iv{}{tag}", std::process::id())
}

#[test]
#[ignore = "needs root, network namespaces and the test dockerd (run scripts/test.sh)"]
fn every_request_kind_and_error_code() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((docker, dir, ns)) = setup("every_request_kind_and_error_code") else {
        return;
    };
    let agent = Agent::start(
        &ns,
        dir.path(),
        &docker.host,
        "power = \"record\"\nstop_timeout_secs = 1\npull_on_update = true\n\
         upgrade_command = [\"sh\", \"-c\", \"echo upgrading pkg-a; echo upgrading pkg-b >&2\"]",
    );
    let (a, b) = (unique("a"), unique("b"));
    let mut c = agent.client();
    requests_and_their_errors(&mut c, &docker, &a, &b);
    network_requests_and_their_errors(&mut c, &docker, &a, &b);
    overlapping_requests(&mut c, &docker, &a, &b);
    let other = garbage_spares_other_clients(&mut c, &agent, &a, &b);
    update_remove_and_power(&mut c, &docker, &agent, &a, &b);
    wipe_leaves_nothing(&mut c, &docker, &ns, &a, &b);
    // Every message had the client's shape (plus "status" on progress in this mode).
    for v in c.seen.iter().chain(other.seen.iter()) {
        for k in v.as_object().unwrap().keys() {
            assert!(STRICT_KEYS.contains(&k.as_str()) || k == "status", "{v}");
        }
    }
}

/// version, add, start and stop, with the errors each can give; leaves `a` and `b` running.
fn requests_and_their_errors(c: &mut Client, docker: &Docker, a: &str, b: &str) {
    // version
    let v = c.request(command("version"));
    assert_eq!(v["type"], "Version");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v.as_object().unwrap().len(), 3, "{v}");

    // AddContainer: created without Docker networking, running, plumbed.
    let r = c.request(add(a, "198.19.40.2", "2001:db8:40::2", "02:00:5e:28:00:02"));
    assert_eq!(
        r,
        json!({"type": "General", "refID": r["refID"], "code": 0})
    );
    assert_eq!(
        docker.ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.NetworkMode}} {{.State.Running}}",
            a
        ]),
        "none true"
    );
    assert_eq!(
        docker.ok(&["exec", a, "cat", "/sys/class/net/eth0/address"]),
        "02:00:5e:28:00:02"
    );
    assert_error(
        &c.request(add(a, "198.19.40.9", "", "02:00:5e:28:00:09")),
        3,
    );
    // An address another container has: already taken.
    assert_error(
        &c.request(add(b, "198.19.40.2", "", "02:00:5e:28:00:03")),
        3,
    );
    assert_eq!(
        c.code(add(b, "198.19.40.3", "2001:db8:40::3", "02:00:5e:28:00:03")),
        0
    );
    // Invalid arguments.
    assert_error(&c.request(add("x1", "198.19.40.4", "", "not-a-mac")), 8);
    assert_error(
        &c.request(add("x1", "198.19.40.400", "", "02:00:5e:28:00:04")),
        8,
    );
    assert_error(
        &c.request(add(
            "x1",
            "198.19.40.4",
            "2001:db8::zz",
            "02:00:5e:28:00:04",
        )),
        8,
    );
    assert_error(
        &c.request(add("bad name!", "198.19.40.4", "", "02:00:5e:28:00:04")),
        8,
    );
    assert_error(
        &c.request(json!({"type": "AddContainer", "id": "x1", "mac": "02:00:5e:28:00:04"})),
        8,
    );
    // An image that is nowhere: not found, and nothing is left behind.
    let mut missing = add("x2", "198.19.40.5", "", "02:00:5e:28:00:05");
    missing["image"] = json!("gantry-iv-missing/none:1");
    assert_error(&c.request(missing), 6);
    assert!(!docker.exists("x2"));
    // A container that cannot start: Docker's reason, code 4, rolled back.
    let tmp = unique("tmpl");
    docker.ok(&["create", "--name", &tmp, &test_image()]);
    let broken = format!("gantry-iv-broken:{}", std::process::id());
    docker.ok(&[
        "commit",
        "--change",
        "ENTRYPOINT [\"/nonexistent\"]",
        &tmp,
        &broken,
    ]);
    docker.ok(&["rm", &tmp]);
    let mut bad = add("x3", "198.19.40.6", "", "02:00:5e:28:00:06");
    bad["image"] = json!(broken);
    let r = c.request(bad.clone());
    assert_error(&r, 4);
    assert!(r["error"].as_str().unwrap().contains("nonexistent"), "{r}");
    assert!(!docker.exists("x3"));
    bad["image"] = json!(IMAGE_ALIAS);
    assert_eq!(c.code(bad), 0, "the failed add left nothing in the way");
    assert_eq!(c.stream(id("RemoveContainer", "x3")).1["code"], 0);
    docker.ok(&["rmi", &broken]);

    // Start / stop.
    assert_error(&c.request(id("StartContainer", a)), 3);
    assert_eq!(c.code(id("StopContainer", a)), 0);
    assert!(!docker.running(a));
    assert_error(&c.request(id("StopContainer", a)), 3);
    assert_eq!(c.code(id("StartContainer", a)), 0);
    assert!(docker.running(a));
    assert_error(&c.request(id("StartContainer", "ghost")), 6);
    assert_error(&c.request(id("StopContainer", "ghost")), 6);
}

/// Addresses, links, internet access, port forwards and garbage, with their errors.
fn network_requests_and_their_errors(c: &mut Client, docker: &Docker, a: &str, b: &str) {
    // Addresses: the client's key and the document's.
    let set4 =
        |key: &str, addr: &str, name: &str| json!({"type": "IDWithNewIpv4", "id": name, key: addr});
    let set6 =
        |key: &str, addr: &str, name: &str| json!({"type": "IDWithNewIpv6", "id": name, key: addr});
    assert_eq!(c.code(set4("newIpv4", "198.19.40.30", b)), 0);
    assert_eq!(c.code(set4("newIP", "198.19.40.31", b)), 0);
    assert_eq!(c.code(set6("newIpv6", "2001:db8:40::30", b)), 0);
    assert_eq!(c.code(set6("newIP", "2001:db8:40::31", b)), 0);
    let addrs = docker.ok(&["exec", b, "ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(
        addrs.contains("198.19.40.31/32") && addrs.contains("2001:db8:40::31/128"),
        "{addrs}"
    );
    assert_error(&c.request(set4("newIpv4", "2001:db8::1", b)), 8);
    assert_error(&c.request(set6("newIP", "198.19.40.7", b)), 8);
    assert_error(&c.request(set4("newIpv4", "198.19.40.8", "ghost")), 6);
    assert_error(&c.request(set4("newIpv4", "198.19.40.2", b)), 3);

    // Connect / Disconnect.
    assert_eq!(c.code(pair("Connect", a, b)), 0);
    assert_error(&c.request(pair("Connect", b, a)), 3);
    assert_error(&c.request(pair("Connect", a, "ghost")), 6);
    assert_error(&c.request(pair("Connect", "ghost", "ghost2")), 6);
    assert_error(&c.request(pair("Connect", a, a)), 8);
    assert!(docker.reaches(a, "198.19.40.31"));
    assert_eq!(c.code(pair("Disconnect", a, b)), 0);
    assert_error(&c.request(pair("Disconnect", a, b)), 3);
    assert_error(&c.request(pair("Disconnect", a, "ghost")), 6);

    // Internet access.
    assert_eq!(c.code(inet(a, true)), 0);
    assert_eq!(c.code(inet(a, false)), 0);
    assert_error(&c.request(inet("ghost", true)), 6);
    assert_error(
        &c.request(json!({"type": "SetInternetAccess", "id": &a, "enabled": "yes"})),
        8,
    );

    // Port forwarding.
    let fwd = |name: &str, ext: Value, proto: &str| {
        json!({"type": "AddPortForwarding", "id": name,
        "internalPort": 80, "externalPort": ext, "protocol": proto})
    };
    let unfwd = |ext: Value, proto: &str| json!({"type": "RemovePortForwarding", "externalPort": ext, "protocol": proto});
    assert_eq!(c.code(fwd(a, json!(8080), "tcp")), 0);
    assert_eq!(c.code(fwd(a, json!(8080), "udp")), 0);
    assert_error(&c.request(fwd(b, json!(8080), "tcp")), 3);
    assert_error(&c.request(fwd(a, json!(8081), "sctp")), 8);
    assert_error(&c.request(fwd(a, json!(70000), "tcp")), 8);
    assert_error(&c.request(fwd(a, json!(0), "tcp")), 8);
    assert_error(&c.request(fwd("ghost", json!(8082), "tcp")), 6);
    assert_eq!(c.code(unfwd(json!(8080), "tcp")), 0);
    assert_error(&c.request(unfwd(json!(8080), "tcp")), 6);
    assert_error(&c.request(unfwd(json!(8080), "icmp")), 8);

    // Unknown things and garbage.
    assert_error(&c.request(json!({"type": "Teleport"})), 7);
    assert_error(&c.request(command("dance")), 7);
    assert_error(&c.request(json!({"command": "version"})), 8);
    c.send_raw("{this is not json");
    let v = c.reply_to("");
    assert_error(&v, 8);
}

/// Overlapping requests on one socket, each answered once, matched by refID.
fn overlapping_requests(c: &mut Client, docker: &Docker, a: &str, b: &str) {
    let batch = vec![
        c.send(id("StopContainer", a)),
        c.send(id("StopContainer", b)),
        c.send(command("version")),
        c.send(pair("Connect", a, b)),
        c.send(id("StartContainer", "ghost")),
        c.send(inet(b, true)),
    ];
    let replies: Vec<Value> = batch.iter().map(|u| c.reply_to(u)).collect();
    assert_eq!(replies[0]["code"], 0);
    assert_eq!(replies[1]["code"], 0);
    assert_eq!(replies[2]["type"], "Version");
    assert_eq!(replies[3]["code"], 0);
    assert_eq!(replies[4]["code"], 6);
    assert_eq!(replies[5]["code"], 0);
    c.assert_no_more(&batch);
    let batch = vec![
        c.send(id("StartContainer", a)),
        c.send(id("StartContainer", b)),
    ];
    for u in &batch {
        assert_eq!(c.reply_to(u)["code"], 0);
    }
    c.assert_no_more(&batch);
    assert!(
        docker.reaches(a, "198.19.40.31"),
        "connected while both were stopped"
    );
}

/// A second client is unaffected by the first one's garbage.
fn garbage_spares_other_clients(c: &mut Client, agent: &Agent, a: &str, b: &str) -> Client {
    let mut other = agent.client();
    c.send_raw("][");
    c.ws.send(Message::binary(vec![0xff, 0x00, 0x13])).unwrap();
    c.send_raw(&"x".repeat(100_000));
    assert_eq!(other.request(command("version"))["type"], "Version");
    assert_eq!(other.code(pair("Disconnect", a, b)), 0);
    for _ in 0..3 {
        assert_error(&c.reply_to(""), 8);
    }
    assert_eq!(c.code(pair("Connect", a, b)), 0);
    other
}

/// update, RemoveContainer, shutdown and reboot.
fn update_remove_and_power(c: &mut Client, docker: &Docker, agent: &Agent, a: &str, b: &str) {
    // update: the upgrade command's lines stream, then the containers restart (the image
    // cannot be pulled here: kept) with their network.
    let (progress, done) = c.stream(command("update"));
    assert_eq!(done["code"], 0, "{done}");
    let lines = outputs(&progress);
    assert!(
        lines.contains(&"upgrading pkg-a") && lines.contains(&"upgrading pkg-b"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("Restarting container")),
        "{lines:?}"
    );
    for p in &progress {
        assert_eq!(
            p["status"], -1,
            "the document's marker is on by default: {p}"
        );
        assert_eq!(p["code"], 0);
        let f = p["progress"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f));
    }
    assert!(docker.running(a) && docker.running(b));
    assert!(docker.reaches(a, "198.19.40.31"));

    // RemoveContainer streams, then answers.
    let (progress, done) = c.stream(id("RemoveContainer", b));
    assert_eq!(done["code"], 0, "{done}");
    assert!(!progress.is_empty());
    assert!(!docker.exists(b));
    let (progress, done) = c.stream(id("RemoveContainer", b));
    assert!(progress.is_empty());
    assert_error(&done, 6);

    // shutdown and reboot: containers stopped, the request recorded, nothing executed.
    assert_eq!(c.code(command("shutdown")), 0);
    assert!(!docker.running(a));
    assert_eq!(
        power_log_when(&agent.state("power-requests.log"), "poweroff\n"),
        "poweroff\n"
    );
    assert_eq!(c.code(id("StartContainer", a)), 0);
    assert_eq!(c.code(command("reboot")), 0);
    assert_eq!(
        power_log_when(&agent.state("power-requests.log"), "poweroff\nreboot\n"),
        "poweroff\nreboot\n"
    );
}

/// wipe: one progress message per step, then nothing of gantry is left.
fn wipe_leaves_nothing(c: &mut Client, docker: &Docker, ns: &Netns, a: &str, b: &str) {
    assert_eq!(c.code(add(b, "198.19.40.3", "", "02:00:5e:28:00:03")), 0);
    let (progress, done) = c.stream(command("wipe"));
    assert_eq!(done["code"], 0, "{done}");
    let steps = outputs(&progress);
    assert!(
        steps.contains(&format!("Removing container {a}").as_str()),
        "{steps:?}"
    );
    assert!(
        steps.contains(&format!("Removing container {b}").as_str()),
        "{steps:?}"
    );
    assert!(docker.intervirt_containers().is_empty());
    assert!(ns.gantry_links().is_empty());
    assert!(!ns.table_exists());
    assert_error(&c.request(id("StartContainer", a)), 6);
}

fn inet(name: &str, on: bool) -> Value {
    json!({"type": "SetInternetAccess", "id": name, "enabled": on})
}

#[test]
#[ignore = "needs root, network namespaces and the test dockerd (run scripts/test.sh)"]
fn strict_client_failures_and_graceful_shutdown() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((docker, dir, ns)) = setup("strict_client_failures_and_graceful_shutdown") else {
        return;
    };
    let mut agent = Agent::start(
        &ns,
        dir.path(),
        &docker.host,
        "strict_client = true\npower = \"none\"\nstop_timeout_secs = 1\npull_on_update = false\n\
         upgrade_command = [\"sh\", \"-c\", \"echo fetching; echo broken mirror >&2; exit 3\"]",
    );
    let a = unique("s");
    let mut c = agent.client();
    assert_eq!(
        c.code(add(
            &a,
            "198.19.42.2",
            "2001:db8:42::2",
            "02:00:5e:2a:00:02"
        )),
        0
    );

    // A failing upgrade command: its lines, then code 5 with the reason.
    let (progress, done) = c.stream(command("update"));
    assert!(
        progress.iter().any(|p| p["output"] == "broken mirror"),
        "{progress:?}"
    );
    assert_error(&done, 5);
    assert!(
        done["error"].as_str().unwrap().contains("status 3"),
        "{done}"
    );

    // Power control switched off: an error, and the containers keep running.
    assert_error(&c.request(command("shutdown")), 4);
    assert!(docker.running(&a));
    assert!(!agent.state("power-requests.log").exists());

    // The real client reads only the first reply of a RemoveContainer: one reply, the
    // final result, and nothing after it; a failure is that one reply too.
    let (progress, done) = c.stream(id("RemoveContainer", &a));
    assert!(progress.is_empty(), "{progress:?}");
    assert_eq!(done["code"], 0);
    let uuid = c.send(id("RemoveContainer", &a));
    assert_error(&c.reply_to(&uuid), 6);
    c.assert_no_more(&[uuid]);
    assert_eq!(c.code(add(&a, "198.19.42.2", "", "02:00:5e:2a:00:02")), 0);
    let (progress, done) = c.stream(command("wipe"));
    assert!(!progress.is_empty());
    assert_eq!(done["code"], 0);
    assert_error(&c.request(command("nope")), 7);
    c.send_raw("nope");
    assert_error(&c.reply_to(""), 8);

    // Strict: only the keys the client knows, on every message.
    assert!(c.seen.iter().any(|v| v.get("progress").is_some()));
    for v in &c.seen {
        for k in v.as_object().unwrap().keys() {
            assert!(STRICT_KEYS.contains(&k.as_str()), "unknown key {k} in {v}");
        }
    }

    // Graceful shutdown closes open websockets and exits 0.
    let mut idle = agent.client();
    let status = agent.terminate().expect("gantry exits after SIGTERM");
    assert!(status.success(), "{status}\n{}", agent.log());
    let closed = (0..10).any(|_| matches!(idle.ws.read(), Ok(Message::Close(_))));
    assert!(closed, "the idle socket got a close frame");
}

#[test]
#[ignore = "needs root, network namespaces and the test dockerd (run scripts/test.sh)"]
fn containers_talk_exactly_while_connected_across_restarts() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((docker, dir, ns)) = setup("containers_talk_exactly_while_connected_across_restarts")
    else {
        return;
    };
    let mut agent = Agent::start(
        &ns,
        dir.path(),
        &docker.host,
        "power = \"record\"\nstop_timeout_secs = 1\nupgrade_command = \"none\"",
    );
    let (a, b) = (unique("p"), unique("q"));
    let (a4, b4) = ("198.19.41.2", "198.19.41.3");
    let (a6, b6) = ("2001:db8:41::2", "2001:db8:41::3");
    let mut c = agent.client();
    assert_eq!(c.code(add(&a, a4, a6, "02:00:5e:29:00:02")), 0);
    assert_eq!(c.code(add(&b, b4, b6, "02:00:5e:29:00:03")), 0);
    assert!(docker.blocked(&a, b4), "isolated until connected");
    assert_eq!(c.code(pair("Connect", &a, &b)), 0);
    assert!(docker.reaches(&a, b4) && docker.reaches(&b, a4));
    assert!(docker.reaches(&a, b6));
    assert_eq!(c.code(pair("Disconnect", &a, &b)), 0);
    assert!(docker.blocked(&a, b4) && docker.blocked(&b, a6));
    assert_eq!(c.code(pair("Connect", &a, &b)), 0);
    assert!(docker.reaches(&a, b4));

    // The agent crashes and starts again: the topology is re-applied.
    drop(c);
    agent.restart();
    assert!(docker.reaches(&a, b4) && docker.reaches(&b, a6));
    let links = ns.gantry_links();
    assert_eq!(links.len(), 2, "{links:?}");

    // Docker restarts a container behind the client's back: the watcher re-plumbs it.
    docker.ok(&["restart", "-t", "1", &a]);
    let back = (0..30).any(|_| docker.reaches(&a, b4));
    assert!(
        back,
        "network back after a Docker restart:\n{}",
        agent.log()
    );

    // reboot (recorded): containers stop; the next agent start brings them back.
    let mut c = agent.client();
    assert_eq!(c.code(command("reboot")), 0);
    assert!(!docker.running(&a) && !docker.running(&b));
    drop(c);
    agent.restart();
    assert!(docker.running(&a) && docker.running(&b));
    assert!(docker.reaches(&a, b4) && docker.reaches(&b, a4));
    assert!(!agent.state("resume.json").exists());

    // wipe leaves no container, veth, table or iptables rule.
    let mut c = agent.client();
    let (_, done) = c.stream(command("wipe"));
    assert_eq!(done["code"], 0, "{done}");
    assert!(!docker.exists(&a) && !docker.exists(&b));
    assert!(ns.gantry_links().is_empty());
    assert!(!ns.table_exists());
    assert!(ns.iptables_rules().is_empty(), "{:?}", ns.iptables_rules());
    let topology: Value =
        serde_json::from_str(&std::fs::read_to_string(agent.state("network.json")).unwrap())
            .unwrap();
    let text = topology.to_string();
    assert!(!text.contains(&a) && !text.contains(a4), "{text}");
}

/// The power request is carried out after the reply has gone out (the client must get its
/// answer before the machine goes down), so the recording may land a moment after the
/// reply: read the log until it holds `expected`, for at most 10 s, and return what it holds.
fn power_log_when(path: &std::path::Path, expected: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text == expected || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The agent accepts wipe, update and power only from its allowed peers: here the client
/// connects from 127.0.0.1, outside `allowed_peers`, and is refused before the websocket
/// upgrade; nothing reaches the power backend. `/healthz` still answers (for the watchdog).
#[test]
#[ignore = "needs root, network namespaces and the test dockerd (run scripts/test.sh)"]
fn peers_outside_the_allow_list_cannot_command_the_agent() {
    use std::io::{Read, Write};
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((docker, dir, ns)) = setup("peers_outside_the_allow_list_cannot_command_the_agent")
    else {
        return;
    };
    let agent = Agent::start_with(
        &ns,
        dir.path(),
        &docker.host,
        "allowed_peers = [\"198.18.0.0/15\", \"2001:db8::/32\"]",
        "power = \"record\"",
    );
    let ask = |head: &str| -> String {
        let mut s = connect_in(&ns.path()).expect("connect to the agent");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let upgrade = format!(
        "GET /containerManagement HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let refused = ask(&upgrade);
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("allowed_peers"), "{refused}");
    let health = ask(&format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nConnection: close\r\n\r\n"
    ));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(!agent.state("power-requests.log").exists());
}

/// A websocket client that answers nothing, not even the agent's ping, is closed after
/// `http.websocket_idle_timeout_secs`; a client that answers pings stays connected however
/// long it sends no request (the Intervirt host keeps one connection for hours).
#[test]
#[ignore = "needs root, network namespaces and the test dockerd (run scripts/test.sh)"]
fn silent_websocket_clients_are_pinged_then_closed() {
    use std::io::{Read, Write};
    use std::time::Instant;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some((docker, dir, ns)) = setup("silent_websocket_clients_are_pinged_then_closed") else {
        return;
    };
    let agent = Agent::start(
        &ns,
        dir.path(),
        &docker.host,
        "power = \"none\"\n\n[http]\nwebsocket_idle_timeout_secs = 2",
    );
    let mut live = agent.client();
    let mut silent = connect_in(&ns.path()).expect("connect to the agent");
    silent
        .write_all(
            format!(
                "GET /containerManagement HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let opened = Instant::now();
    // The silent client reads (so that its socket buffer never fills) but answers nothing.
    let silent_reader = std::thread::spawn(move || {
        silent
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            match silent.read(&mut buf) {
                Ok(0) | Err(_) => return (got, None),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            let opcodes = frame_opcodes(&got);
            if opcodes.contains(&8) {
                return (got, Some(opened.elapsed()));
            }
        }
    });
    // Meanwhile the live one reads for 5 s: tungstenite answers each ping with a pong.
    live.ws
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut pings = 0;
    while opened.elapsed() < Duration::from_secs(5) {
        match live.ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Close(c)) => panic!("the live client was closed: {c:?}"),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("the live client lost its connection: {e}"),
        }
    }
    assert!(pings >= 2, "the live client was pinged {pings} times");
    let (got, closed_after) = silent_reader.join().unwrap();
    let opcodes = frame_opcodes(&got);
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"),
        "{got:?}"
    );
    assert_eq!(opcodes.first(), Some(&9), "pinged first: {opcodes:?}");
    let closed_after = closed_after.expect("the silent client was never closed");
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );
    live.ws
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(live.request(command("version"))["type"], "Version");
}

/// The opcodes of the (unmasked, short) frames after an HTTP response head in `bytes`.
fn frame_opcodes(bytes: &[u8]) -> Vec<u8> {
    let Some(head) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Vec::new();
    };
    let mut rest = &bytes[head + 4..];
    let mut ops = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(rest[1] & 0x7f);
        if len >= 126 || rest.len() < 2 + len {
            break;
        }
        ops.push(rest[0] & 0x0f);
        rest = &rest[2 + len..];
    }
    ops
}
