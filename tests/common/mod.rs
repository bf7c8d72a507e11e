//! Shared harness for the integration tests: runs the real `gantry` binary against the real
//! test dockerd that `scripts/test.sh` starts in a private network namespace.
//!
//! Environment (set by `scripts/test.sh`):
//! - `GANTRY_TEST_DOCKER_HOST`: `unix:///...` of a DISPOSABLE dockerd. The prune tests remove
//!   every unused image, stopped container and unused volume there: never point it at a
//!   daemon whose state matters.
//! - `GANTRY_TEST_IMAGE`: a local image with busybox (default `gantry-test/busybox:latest`).
//! - `GANTRY_TEST_DOCKER_CLI`: the docker CLI to use (default `/usr/local/bin/docker` when it
//!   exists, else `docker` on PATH).
//!
//! The Docker-backed tests are `#[ignore]`d, so a plain `cargo test` lists them as ignored;
//! `scripts/test.sh` runs them with `--include-ignored`. Run without `GANTRY_TEST_DOCKER_HOST`,
//! they skip loudly, except under CI ([`in_ci`]), where that is a failure.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use nix::sys::signal::Signal;

pub mod bundle;
pub mod fleet;
pub mod pki;
pub mod proxy;
pub mod ws;

pub const DEFAULT_TEST_IMAGE: &str = "gantry-test/busybox:latest";

/// The authenticated status route of every listener.
pub const STATUS_PATH: &str = "/gantry/status";

// ---------------------------------------------------------------------------------------------
// Environment and skipping

/// CI is set: `CI` is true, 1 or yes (any case), the same rule as `scripts/test.sh`.
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str(),
        "true" | "1" | "yes"
    )
}

/// The test dockerd, `unix:///...`, when the test script started one.
pub fn docker_host() -> Option<String> {
    std::env::var("GANTRY_TEST_DOCKER_HOST")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

/// The filesystem path of the test dockerd's socket.
pub fn docker_socket_path() -> PathBuf {
    let host = docker_host().expect("GANTRY_TEST_DOCKER_HOST is not set");
    PathBuf::from(
        host.strip_prefix("unix://")
            .unwrap_or_else(|| panic!("GANTRY_TEST_DOCKER_HOST={host} is not unix:///path")),
    )
}

pub fn test_image() -> String {
    std::env::var("GANTRY_TEST_IMAGE")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_IMAGE.to_string())
}

/// `Some(host)` when the test dockerd is there. Otherwise panics under CI (a skipped
/// Docker-backed test is a failure there) or prints a loud skip notice and returns `None`.
pub fn docker_host_or_skip(test: &str) -> Option<String> {
    if let Some(h) = docker_host() {
        return Some(h);
    }
    if in_ci() {
        panic!(
            "{test}: GANTRY_TEST_DOCKER_HOST is not set but CI=true: Docker-backed tests must \
             not be skipped in CI (run them with `bash scripts/test.sh` as root)"
        );
    }
    skip_loudly(
        test,
        "GANTRY_TEST_DOCKER_HOST is not set; run `bash scripts/test.sh` as root to run the \
         Docker-backed tests",
    );
    None
}

/// Says on the process's own stderr that `test` was skipped and why: libtest captures
/// `eprintln!` of passing tests, so a skip said that way would go unseen.
pub fn skip_loudly(test: &str, why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!!!! SKIPPED {test}: {why} !!!!!!!!!!\n"
    );
}

#[doc(hidden)]
pub fn type_name_of<T>(_: T) -> &'static str {
    std::any::type_name::<T>()
}

/// Yields the test dockerd's host, or returns from the calling test (loudly; panics in CI).
#[macro_export]
macro_rules! require_docker {
    () => {{
        fn here() {}
        let name = $crate::common::type_name_of(here);
        let name = name.strip_suffix("::here").unwrap_or(name);
        match $crate::common::docker_host_or_skip(name) {
            Some(h) => h,
            None => return,
        }
    }};
}

/// A name no other test (nor another run) uses: `gt-<pid>-<n>-<label>`. Lowercase, so it is
/// valid as a container, volume and image repository name.
pub fn unique(label: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "gt-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        label
    )
}

/// Polls `f` every `every` until it returns `Some` or `limit` passed.
pub fn wait_for<T>(
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

// ---------------------------------------------------------------------------------------------
// The gantry process

/// Variables a developer's or CI's environment might carry that would change what gantry does.
const SCRUBBED_ENV: &[&str] = &[
    "GANTRY_STATE_DIR",
    "GANTRY_DOCKER_HOST",
    "GANTRY_LOG_LEVEL",
    "GANTRY_SHUTDOWN_TIMEOUT_SECS",
    "GANTRY_TRANSFER_ADDRESS",
    "GANTRY_TRANSFER_AUTH",
    "GANTRY_TRANSFER_TOKEN_FILE",
    "GANTRY_TRANSFER_PREFIX",
    "GANTRY_DISTILLERY_ADDRESS",
    "GANTRY_DISTILLERY_AUTH",
    "GANTRY_DISTILLERY_TOKEN_FILE",
    "GANTRY_DOCKER_TIMEOUT_SECS",
    "GANTRY_DOCKER_TRANSFER_TIMEOUT_SECS",
    "GANTRY_DOCKER_PROBE_INTERVAL_SECS",
    "GANTRY_HEADER_READ_TIMEOUT_SECS",
    "GANTRY_POOL_REGISTRY",
    "DOCKER_HOST",
    "STATE_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

pub fn gantry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gantry")
}

/// A `Command` for the gantry binary with a clean environment for the variables it reads.
pub fn gantry_command() -> Command {
    let mut c = Command::new(gantry_bin());
    for k in SCRUBBED_ENV {
        c.env_remove(k);
    }
    c.stdin(Stdio::null());
    c
}

/// Runs `gantry <args>` to completion (bounded) and returns its output.
pub fn run_gantry(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = gantry_command();
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().expect("cannot run the gantry binary");
    wait_output(child, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("gantry {args:?} did not finish within 30 s"))
}

/// Runs `program <args>` to completion (bounded to 120 s) and returns its output.
pub fn run(program: &str, args: &[&str]) -> Output {
    run_with_input(program, args, None)
}

/// Runs `program <args>` with `input`, if any, as its stdin, to completion (bounded to
/// 120 s); returns its output.
pub fn run_with_input(program: &str, args: &[&str], input: Option<&[u8]>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let Some(bytes) = input {
        let mut stdin = child.stdin.take().expect("no stdin");
        stdin
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("cannot feed {program}: {e}"));
    }
    wait_output(child, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("{program} {args:?} did not finish within 120 s"))
}

/// Runs `program <args>` and returns its trimmed stdout; panics with its output when it
/// fails.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Collects a child's output while waiting (bounded) for it: the pipes are drained on their
/// own threads so a chatty child never blocks on a full pipe.
fn wait_output(mut child: Child, limit: Duration) -> Option<Output> {
    fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

/// How to start a gantry daemon for one test.
pub struct GantryBuilder {
    docker_host: String,
    shutdown_timeout_secs: u64,
    probe_interval_secs: u64,
    top: Vec<String>,
    http: Vec<String>,
    listener: Vec<String>,
    env: Vec<(String, String)>,
    address: String,
    netns: Option<String>,
    dialect: String,
    state_dir: Option<PathBuf>,
    extra: Vec<String>,
}

impl GantryBuilder {
    /// Docker at `host` (`unix:///...`).
    pub fn docker_host(mut self, host: &str) -> Self {
        self.docker_host = host.to_string();
        self
    }
    pub fn shutdown_timeout_secs(mut self, secs: u64) -> Self {
        self.shutdown_timeout_secs = secs;
        self
    }
    pub fn probe_interval_secs(mut self, secs: u64) -> Self {
        self.probe_interval_secs = secs;
        self
    }
    /// Extra top-level config lines (`key = value`).
    pub fn config(mut self, line: &str) -> Self {
        self.top.push(line.to_string());
        self
    }
    /// Extra lines inside `[http]`.
    pub fn http(mut self, line: &str) -> Self {
        self.http.push(line.to_string());
        self
    }
    /// Extra lines inside the one `[[listeners]]` table (e.g. `auth = "token"`).
    pub fn listener(mut self, line: &str) -> Self {
        self.listener.push(line.to_string());
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    /// The listener's dialect (default `transfer`).
    pub fn dialect(mut self, dialect: &str) -> Self {
        self.dialect = dialect.to_string();
        self
    }
    /// The state directory (default: `state` in the daemon's own temp dir), e.g. one that
    /// an earlier daemon used.
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }
    /// Another `[[listeners]]` table after the transfer one (its lines, without the header).
    pub fn extra_listener(mut self, lines: &str) -> Self {
        self.extra.push(lines.to_string());
        self
    }
    /// The listener's address in the config file (default `127.0.0.1:0`: the kernel picks a
    /// free port and gantry reports it).
    pub fn address(mut self, address: &str) -> Self {
        self.address = address.to_string();
        self
    }
    /// Runs gantry in the network namespace `/run/netns/<name>` (through nsenter).
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_string());
        self
    }

    fn config_text(&self, state_dir: &Path) -> String {
        let mut t = String::new();
        t += &format!("state_dir = {:?}\n", state_dir.display().to_string());
        t += &format!("docker_host = {:?}\n", self.docker_host);
        t += "log_level = \"debug\"\n";
        t += &format!("shutdown_timeout_secs = {}\n", self.shutdown_timeout_secs);
        t += &format!(
            "docker_probe_interval_secs = {}\n",
            self.probe_interval_secs
        );
        for l in &self.top {
            t += l;
            t += "\n";
        }
        t += "\n[http]\n";
        for l in &self.http {
            t += l;
            t += "\n";
        }
        t += &format!("\n[[listeners]]\ndialect = {:?}\n", self.dialect);
        t += &format!("address = {:?}\n", self.address);
        for l in &self.listener {
            t += l;
            t += "\n";
        }
        for x in &self.extra {
            t += "\n[[listeners]]\n";
            t += x;
            t += "\n";
        }
        t
    }

    /// Starts gantry and waits (up to 15 s) until it reports the address it listens on and
    /// `/healthz` answers 200 there.
    pub fn start(self) -> Gantry {
        self.start_with(true)
    }

    /// Starts gantry and waits (up to 15 s) until it reports the address it listens on,
    /// without asking `/healthz` (for listeners this harness cannot speak to: TLS).
    pub fn start_unprobed(self) -> Gantry {
        self.start_with(false)
    }

    fn start_with(self, probe: bool) -> Gantry {
        let dir = tempfile::Builder::new()
            .prefix("gantry-it-")
            .tempdir()
            .expect("cannot create a temp dir");
        let mut g = self.spawn_in(dir.path());
        g.dir = Some(dir);
        g.netns = self.netns.clone();
        g.wait_ready(&self.dialect, probe);
        g
    }
}

impl Gantry {
    /// Waits (up to 15 s) until gantry reports the address its `dialect` listener listens on
    /// and (with `probe`) `/healthz` answers 200 there.
    fn wait_ready(&mut self, dialect: &str, probe: bool) {
        let g = self;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = g.try_wait() {
                panic!(
                    "gantry exited with {status} during start-up; its output:\n{}",
                    g.stderr()
                );
            }
            if let Some(addr) = listening_address_of(&g.stderr(), dialect) {
                g.addr = addr;
                if !probe || g.try_get("/healthz").is_ok_and(|r| r.status == 200) {
                    return;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "gantry did not report its address and answer /healthz with 200 within \
                     15 s; its output:\n{}",
                    g.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon and starts it again on the address it had (its state kept): for
    /// gantrys in a namespace of their own, where nothing else can take that port meanwhile.
    pub fn restart_same_address(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let old = self
            .config
            .lines()
            .find(|l| l.starts_with("address = "))
            .unwrap()
            .to_string();
        self.config = self
            .config
            .replace(&old, &format!("address = {:?}", self.addr.to_string()));
        fs::write(&self.config_path, &self.config).expect("cannot write the config");
        // Older output stays in the file (its listening line names the same address).
        let out = fs::OpenOptions::new()
            .append(true)
            .open(&self.stderr_path)
            .expect("cannot open the stderr file");
        let err = out.try_clone().unwrap();
        let mut c = spawn_command(self.netns.as_deref());
        c.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdout(out)
            .stderr(err);
        self.child = Some(c.spawn().expect("cannot spawn the gantry binary"));
        self.wait_ready("transfer", true);
    }
}

/// gantry's command, in the namespace `netns` when given.
fn spawn_command(netns: Option<&str>) -> Command {
    match netns {
        None => gantry_command(),
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(gantry_bin());
            for k in SCRUBBED_ENV {
                c.env_remove(k);
            }
            c.stdin(Stdio::null());
            c
        }
    }
}

impl GantryBuilder {
    fn spawn_in(&self, dir: &Path) -> Gantry {
        let state_dir = self.state_dir.clone().unwrap_or_else(|| dir.join("state"));
        let config_path = dir.join("gantry.toml");
        let config = self.config_text(&state_dir);
        fs::write(&config_path, &config).expect("cannot write the config");
        let stderr_path = dir.join("gantry.stderr");
        let stderr = fs::File::create(&stderr_path).expect("cannot create the stderr file");
        let stdout = stderr.try_clone().expect("cannot clone a file handle");
        let mut c = spawn_command(self.netns.as_deref());
        c.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let child = c.spawn().expect("cannot spawn the gantry binary");
        Gantry {
            child: Some(child),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            config_path,
            config,
            stderr_path,
            dir: None,
            token: None,
            agent: agent(),
            netns: None,
        }
    }
}

/// The address of the transfer listener, from gantry's log line
/// `... INFO listening dialect=transfer address=127.0.0.1:41234`.
pub fn listening_address(log: &str) -> Option<SocketAddr> {
    listening_address_of(log, "transfer")
}

/// The address of the listener of `dialect`, from gantry's log line.
pub fn listening_address_of(log: &str, dialect: &str) -> Option<SocketAddr> {
    let want = format!("dialect={dialect} ");
    log.lines()
        .filter(|l| l.contains(" listening ") && l.contains(&want))
        .find_map(|l| {
            let rest = &l[l.find("address=")? + "address=".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
}

/// A running gantry daemon, killed on drop. Its output is printed when the test failed.
pub struct Gantry {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    pub config: String,
    stderr_path: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// Sent as `Authorization: Bearer` with every request when set.
    pub token: Option<String>,
    agent: ureq::Agent,
    /// The network namespace it runs in, if not the test's.
    netns: Option<String>,
}

impl Gantry {
    /// Defaults: Docker at the test dockerd when there is one (else a socket that does not
    /// exist), shutdown timeout 2 s, Docker probe every 1 s, one transfer listener on
    /// 127.0.0.1, port 0 (the kernel's pick), with the default (loopback) auth.
    pub fn builder() -> GantryBuilder {
        GantryBuilder {
            docker_host: docker_host()
                .unwrap_or_else(|| "unix:///nonexistent/gantry-test/docker.sock".to_string()),
            shutdown_timeout_secs: 2,
            probe_interval_secs: 1,
            top: Vec::new(),
            http: Vec::new(),
            listener: Vec::new(),
            env: Vec::new(),
            address: "127.0.0.1:0".to_string(),
            netns: None,
            dialect: "transfer".to_string(),
            state_dir: None,
            extra: Vec::new(),
        }
    }

    pub fn start() -> Gantry {
        Self::builder().start()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `sig` (e.g. `Signal::SIGTERM`) to the daemon (spawned by us, not yet reaped).
    pub fn signal(&self, sig: Signal) {
        let pid = self.pid();
        assert!(pid > 0, "gantry is not running");
        if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
            panic!("kill({pid}, {sig}) failed: {e}");
        }
    }

    /// Waits up to `limit` for the daemon to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_for(limit, Duration::from_millis(20), || self.try_wait())
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    // HTTP

    /// A request to `path`, with the token when there is one.
    fn request_builder(&self, method: &str, path: &str) -> ureq::http::request::Builder {
        let b = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        match &self.token {
            Some(t) => b.header("Authorization", format!("Bearer {t}")),
            None => b,
        }
    }

    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Resp, ureq::Error> {
        let mut b = self.request_builder(method, path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        // Without a body, PUT/POST/DELETE go out with `Content-Length: 0`: ureq would send
        // an empty chunked body, which hyper may leave unread and then close the connection,
        // and ureq sometimes reuses that closed pooled connection ("Peer disconnected").
        let body = match body {
            None if !matches!(method, "GET" | "HEAD") => Some(Vec::new()),
            other => other,
        };
        let resp = match body {
            Some(bytes) => self.agent.run(b.body(bytes).expect("bad request")),
            None => self.agent.run(b.body(()).expect("bad request")),
        }?;
        Resp::read(resp)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {path} failed: {e}\ngantry's output:\n{}",
                    self.stderr()
                )
            })
    }

    fn try_get(&self, path: &str) -> Result<Resp, ureq::Error> {
        self.try_request("GET", path, &[], None)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], None)
    }
    pub fn put(&self, path: &str) -> Resp {
        self.request("PUT", path, &[], None)
    }
    pub fn delete(&self, path: &str) -> Resp {
        self.request("DELETE", path, &[], None)
    }
    pub fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> Resp {
        self.request("POST", path, &[("Content-Type", content_type)], Some(body))
    }
    /// `method` with `body` as JSON.
    pub fn send_json(&self, method: &str, path: &str, body: &Value) -> Resp {
        let body = Some(body.to_string().into_bytes());
        self.request(method, path, &[("Content-Type", "application/json")], body)
    }

    /// GET `path` and stream the body into `file`; returns the response without its body.
    pub fn download(&self, path: &str, file: &Path) -> Resp {
        let b = self.request_builder("GET", path);
        let mut resp = self
            .agent
            .run(b.body(()).expect("bad request"))
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}"));
        let status = resp.status().as_u16();
        let headers = headers_of(resp.headers());
        let mut out = fs::File::create(file).expect("cannot create the download file");
        let mut reader = resp.body_mut().as_reader();
        std::io::copy(&mut reader, &mut out).expect("download failed");
        Resp {
            status,
            headers,
            body: Vec::new(),
        }
    }

    /// The parsed status document (`/gantry/status`, behind the listener's auth: gantry's
    /// version and Docker's reachability, version or error).
    pub fn health(&self) -> Value {
        let r = self.get(STATUS_PATH);
        assert_eq!(r.status, 200, "{STATUS_PATH}: {r}");
        r.json()
    }

    /// A raw TCP connection to the listener, for requests a client library will not send.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("cannot connect to gantry");
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        s.set_write_timeout(Some(Duration::from_secs(60))).ok();
        s
    }
}

impl Drop for Gantry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- gantry on {} (config {}):\n{}\n----- its output:\n{}\n----- end of gantry output",
                self.addr,
                self.config_path.display(),
                self.config,
                self.stderr()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

fn headers_of(h: &ureq::http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A response: status, headers (names lowercase) and the whole body.
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    fn read(mut resp: ureq::http::Response<ureq::Body>) -> Result<Resp, ureq::Error> {
        let status = resp.status().as_u16();
        let headers = headers_of(resp.headers());
        let body = resp.body_mut().with_config().limit(1 << 30).read_to_vec()?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self}"))
    }

    /// Asserts status `status` with an `application/json` body, and returns it.
    pub fn expect_json(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status: {self}");
        assert!(
            self.content_type().starts_with("application/json"),
            "expected application/json: {self}"
        );
        self.json()
    }

    /// Asserts status `status` with no body (204, 304).
    pub fn expect_empty(&self, status: u16) {
        assert_eq!(self.status, status, "unexpected status: {self}");
        assert!(self.body.is_empty(), "expected no body: {self}");
    }

    /// Asserts an RFC 7807 problem (transfer dialect): status, content type, and the members
    /// type "about:blank", title, status, detail, instance (the request path). Returns the
    /// detail.
    pub fn expect_problem(&self, status: u16, instance: &str) -> String {
        assert_eq!(self.status, status, "unexpected status: {self}");
        assert!(
            self.content_type().starts_with("application/problem+json"),
            "expected application/problem+json: {self}"
        );
        let v = self.json();
        assert_eq!(v["type"], "about:blank", "problem type: {self}");
        assert_eq!(v["status"], status, "problem status member: {self}");
        let title = v["title"].as_str().unwrap_or("");
        let reason = reason_phrase(status);
        assert!(
            title.eq_ignore_ascii_case(reason),
            "problem title {title:?}, expected {reason:?}: {self}"
        );
        assert_eq!(
            v["instance"].as_str(),
            Some(instance.split('?').next().unwrap_or(instance)),
            "problem instance: {self}"
        );
        let detail = v["detail"].as_str().unwrap_or("").to_string();
        assert!(!detail.is_empty(), "problem without detail: {self}");
        detail
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.text();
        let body = if body.len() > 2000 {
            format!("{}... ({} bytes)", &body[..2000], self.body.len())
        } else {
            body
        };
        write!(f, "HTTP {} {:?} {}", self.status, self.headers, body)
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Percent-encodes every byte that is not alphanumeric, for ids and names in paths.
pub fn enc(s: &str) -> String {
    percent_encode(s, b"")
}

/// Like JavaScript's encodeURIComponent, as the spec's file ids are encoded.
pub fn enc_uri(s: &str) -> String {
    percent_encode(s, b"-_.!~*'()")
}

/// Percent-encodes every byte that is neither alphanumeric nor in `keep`.
fn percent_encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads an HTTP/1.1 response from a raw connection (until EOF or the headers plus
/// Content-Length bytes); returns the status and the whole raw text.
pub fn read_raw_response(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                if buf.is_empty() {
                    panic!("reading the response failed: {e}");
                }
                break;
            }
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(len) = len {
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"));
    (status, text)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn write_all(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(bytes)?;
    s.flush()
}

// ---------------------------------------------------------------------------------------------
// The docker CLI, against the test dockerd

pub fn docker_cli() -> String {
    if let Ok(c) = std::env::var("GANTRY_TEST_DOCKER_CLI") {
        if !c.trim().is_empty() {
            return c;
        }
    }
    if Path::new("/usr/local/bin/docker").exists() {
        "/usr/local/bin/docker".to_string()
    } else {
        "docker".to_string()
    }
}

/// Runs `docker -H $GANTRY_TEST_DOCKER_HOST <args>` (bounded to 120 s).
pub fn docker(args: &[&str]) -> Output {
    let host = docker_host().expect("GANTRY_TEST_DOCKER_HOST is not set");
    run(&docker_cli(), &[&["-H", host.as_str()], args].concat())
}

/// Runs docker and returns its trimmed stdout; panics with its output when it fails.
pub fn docker_ok(args: &[&str]) -> String {
    let host = docker_host().expect("GANTRY_TEST_DOCKER_HOST is not set");
    run_ok(&docker_cli(), &[&["-H", host.as_str()], args].concat())
}

/// Runs docker with `stdin` as its input (bounded to 120 s).
pub fn docker_with_input(args: &[&str], stdin: &[u8]) -> Output {
    let host = docker_host().expect("GANTRY_TEST_DOCKER_HOST is not set");
    run_with_input(
        &docker_cli(),
        &[&["-H", host.as_str()], args].concat(),
        Some(stdin),
    )
}

pub fn docker_exists(kind: &str, name: &str) -> bool {
    docker(&[kind, "inspect", name]).status.success()
}

/// Full id (`sha256:...` for images, 64 hex for containers) of `name`.
pub fn docker_id(kind: &str, name: &str) -> String {
    docker_ok(&[kind, "inspect", "--format", "{{.Id}}", name])
}

/// The names of the containers of the gantry app `id` (its `io.gantry.app-id` label): the
/// running ones, or with `all` every one.
pub fn app_containers(id: &str, all: bool) -> Vec<String> {
    let label = format!("label=io.gantry.app-id={id}");
    let mut args = vec!["ps", "--filter", &label, "--format", "{{.Names}}"];
    if all {
        args.push("-a");
    }
    docker_ok(&args)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Removes, on drop, what a test created in the test dockerd: containers (with their
/// anonymous volumes), then volumes, then images. Errors (already gone) are ignored.
#[derive(Default)]
pub struct Cleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
}

impl Cleanup {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn container(&mut self, name: &str) -> &mut Self {
        self.containers.push(name.to_string());
        self
    }
    pub fn volume(&mut self, name: &str) -> &mut Self {
        self.volumes.push(name.to_string());
        self
    }
    pub fn image(&mut self, name: &str) -> &mut Self {
        self.images.push(name.to_string());
        self
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if docker_host().is_none() {
            return;
        }
        for c in self.containers.iter().rev() {
            let _ = docker(&["rm", "-f", "-v", c]);
        }
        for v in self.volumes.iter().rev() {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
        for i in self.images.iter().rev() {
            let _ = docker(&["rmi", "-f", i]);
        }
    }
}

/// Creates (not starts) a container from the test image running `cmd`; registered for
/// cleanup.
pub fn create_container(
    cleanup: &mut Cleanup,
    label: &str,
    extra: &[&str],
    cmd: &[&str],
) -> String {
    let name = unique(label);
    cleanup.container(&name);
    let image = test_image();
    let mut args = vec!["create", "--name", name.as_str(), "--network", "none"];
    args.extend_from_slice(extra);
    args.push(image.as_str());
    args.extend_from_slice(cmd);
    docker_ok(&args);
    name
}

/// A shell command for a container that exits promptly on SIGTERM (busybox `sleep` as PID 1
/// ignores it, so a plain `sleep` would make every stop wait 10 s).
pub const STOPPABLE: &[&str] = &["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"];

/// A new image of its own (own id, one tag `tag`) derived from the test image, holding
/// /marker with `marker` in it; registered for cleanup.
pub fn unique_image(cleanup: &mut Cleanup, tag: &str, marker: &str) -> String {
    cleanup.image(tag);
    commit_derived_image("builder", &format!("echo {marker} > /marker"), Some(tag));
    docker_id("image", tag)
}

/// A dangling image (no tag) derived from the test image; returns its id.
pub fn dangling_image(cleanup: &mut Cleanup) -> String {
    let id = commit_derived_image("dangling", "echo x > /x", None);
    cleanup.image(&id);
    id
}

/// Runs `script` in a container of the test image and commits the result, tagged `tag` when
/// given; returns the new image's id as `docker commit` printed it.
fn commit_derived_image(label: &str, script: &str, tag: Option<&str>) -> String {
    let builder = unique(label);
    let image = test_image();
    docker_ok(&[
        "run",
        "--name",
        &builder,
        "--network",
        "none",
        &image,
        "sh",
        "-c",
        script,
    ]);
    let mut commit = vec!["commit", builder.as_str()];
    commit.extend(tag);
    let out = docker(&commit);
    let _ = docker(&["rm", "-f", &builder]);
    assert!(
        out.status.success(),
        "docker commit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The test image's `docker save` output.
pub fn saved_test_image() -> Vec<u8> {
    let out = docker(&["save", &test_image()]);
    assert!(
        out.status.success(),
        "docker save failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Whether `bytes` look like a tar archive: the `ustar` magic of the first header.
pub fn is_tar(bytes: &[u8]) -> bool {
    bytes.len() >= 512 && &bytes[257..262] == b"ustar"
}

/// Finds `needle` in a JSON array of strings.
pub fn json_strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("expected strings in {v}"))
                .to_string()
        })
        .collect()
}

/// The entries of a tar archive: (name, contents). Enough of ustar/GNU for `docker save`.
pub fn tar_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    fn field(b: &[u8]) -> String {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    }
    let mut out = Vec::new();
    let mut off = 0usize;
    let mut long_name: Option<String> = None;
    while off + 512 <= bytes.len() {
        let h = &bytes[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let size_text = field(&h[124..136]);
        let size = u64::from_str_radix(size_text.trim().trim_matches('\0'), 8)
            .unwrap_or_else(|_| panic!("bad tar size field {size_text:?} at offset {off}"))
            as usize;
        let data_start = off + 512;
        let data_end = (data_start + size).min(bytes.len());
        let data = bytes[data_start..data_end].to_vec();
        let typeflag = h[156];
        let mut name = field(&h[0..100]);
        if &h[257..262] == b"ustar" {
            let prefix = field(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        match typeflag {
            b'L' => long_name = Some(field(&data)),
            b'x' | b'g' => {
                // PAX header: a `path=` record overrides the next entry's name.
                let text = String::from_utf8_lossy(&data).into_owned();
                if let Some(p) = text
                    .lines()
                    .find_map(|l| l.split_once(" path=").map(|(_, p)| p.to_string()))
                {
                    long_name = Some(p);
                }
            }
            _ => out.push((long_name.take().unwrap_or(name), data)),
        }
        off = data_start + size.div_ceil(512) * 512;
    }
    out
}

/// The value of the sample `series` (name and labels exactly as written) in a `/metrics`
/// text, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `promtool check metrics` on `text`: exit 0 and no lint complaint. Without promtool the
/// check is skipped, loudly (a failure in CI, where scripts/test.sh installs it).
pub fn promtool_accepts(text: &str) {
    if !std::path::Path::new("/usr/bin/promtool").exists() {
        assert!(!in_ci(), "promtool is missing (Debian package prometheus)");
        skip_loudly(
            "promtool check metrics",
            "promtool is not installed: the exposition format was not checked",
        );
        return;
    }
    let out = run_with_input(
        "/usr/bin/promtool",
        &["check", "metrics"],
        Some(text.as_bytes()),
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
}
