//! The flowmanager tests' harness: gantry with a flowmanager listener, python-socketio as
//! the real client (driven through `sio_client.py`), and the container's side of its unix
//! socket, reached through the container's own mount (`/proc/<pid>/root/var/run/...`).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{docker_ok, gantry_command, listening_address_of, wait_for};

/// The python of the virtualenv with python-socketio (`scripts/test.sh` sets it).
pub fn python() -> Option<String> {
    std::env::var("GANTRY_TEST_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
}

/// Skips the test (fails it under CI) when python-socketio is not there.
#[macro_export]
macro_rules! require_python {
    () => {
        match $crate::harness::python() {
            Some(p) => p,
            None => {
                assert!(
                    !$crate::common::in_ci(),
                    "GANTRY_TEST_PYTHON is not set: run scripts/test.sh"
                );
                fn here() {}
                let name = $crate::common::type_name_of(here);
                $crate::common::skip_loudly(
                    name.strip_suffix("::here").unwrap_or(name),
                    "GANTRY_TEST_PYTHON (python-socketio) is not set; run `bash scripts/test.sh`",
                );
                return;
            }
        }
    };
}

/// A gantry daemon with one flowmanager listener, its sockets in its own temp dir.
pub struct Fm {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub config: PathBuf,
}

impl Fm {
    /// Starts gantry; `flow` are extra lines of its `[flowmanager]` table.
    pub fn start(docker_host: &str, flow: &str) -> Fm {
        Fm::start_with(docker_host, "", flow)
    }

    /// Starts gantry with extra lines of its listener's table too.
    pub fn start_with(docker_host: &str, listener: &str, flow: &str) -> Fm {
        let mut fm = Fm::prepare_with(docker_host, listener, flow);
        let c = fm.command();
        fm.spawn(c);
        fm
    }

    /// `gantry serve` with this daemon's config.
    pub fn command(&self) -> Command {
        let mut c = gantry_command();
        c.arg("serve").arg("--config").arg(&self.config);
        c
    }

    /// The config and directories, nothing started.
    pub fn prepare(docker_host: &str, flow: &str) -> Fm {
        Fm::prepare_with(docker_host, "", flow)
    }

    fn prepare_with(docker_host: &str, listener: &str, flow: &str) -> Fm {
        let dir = tempfile::Builder::new()
            .prefix("gantry-fm-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("gantry.toml");
        let text = format!(
            "state_dir = {:?}\ndocker_host = {docker_host:?}\nlog_level = \"debug\"\n\
             shutdown_timeout_secs = 2\n\n[[listeners]]\ndialect = \"flowmanager\"\n\
             address = \"127.0.0.1:0\"\n{listener}\n[flowmanager]\nsocket_dir = {:?}\n\
             stop_timeout_secs = 2\n{flow}\n",
            dir.path().join("state").display().to_string(),
            dir.path().join("sockets").display().to_string(),
        );
        std::fs::write(&config, text).unwrap();
        Fm {
            child: None,
            dir,
            port: 0,
            config,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gantry.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `c` (a gantry serve) with its output appended to the log, and waits for its port.
    pub fn spawn(&mut self, mut c: Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let before = self.log().len();
        c.stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(c.spawn().expect("spawn gantry"));
        let port = wait_for(Duration::from_secs(20), Duration::from_millis(20), || {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gantry exited at start ({st}):\n{}", self.log());
            }
            let log = self.log();
            listening_address_of(&log[before..], "flowmanager").map(|a| a.port())
        });
        self.port = port.unwrap_or_else(|| panic!("gantry did not listen:\n{}", self.log()));
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sockets")
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// A client connected with `transports` (None: polling, then the upgrade).
    pub fn client(&self, python: &str, transports: Option<&[&str]>) -> Sio {
        let mut s = Sio::spawn(python);
        s.command(json!({"op": "connect", "url": self.url(), "transports": transports}));
        let c = s.expect("_connected", Duration::from_secs(15));
        assert!(c["sid"].is_string(), "{c}");
        s
    }
}

impl Drop for Fm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- gantry log:\n{}", self.log());
        }
    }
}

/// One python-socketio client.
pub struct Sio {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    /// Events read but not yet asked for, in order.
    pub pending: VecDeque<Value>,
}

impl Sio {
    fn spawn(python: &str) -> Sio {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flowmanager/sio_client.py");
        let mut child = Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot run the python-socketio client");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Sio {
            child,
            stdin,
            rx,
            pending: VecDeque::new(),
        }
    }

    fn command(&mut self, v: Value) {
        writeln!(self.stdin, "{v}").expect("the client is gone");
        self.stdin.flush().unwrap();
    }

    pub fn emit(&mut self, event: &str, data: Value) {
        self.command(json!({"op": "emit", "event": event, "data": data}));
    }

    /// The next event named `event` whose data satisfies `want` (others are kept).
    pub fn expect_where(
        &mut self,
        event: &str,
        timeout: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> Value {
        self.try_expect(event, timeout, &want).unwrap_or_else(|| {
            let seen: Vec<String> = self.pending.iter().map(short).collect();
            panic!("no {event} within {timeout:?}; events seen: {seen:#?}")
        })
    }

    pub fn try_expect(
        &mut self,
        event: &str,
        timeout: Duration,
        want: &dyn Fn(&Value) -> bool,
    ) -> Option<Value> {
        let hit = |v: &Value| v["event"] == event && want(&v["data"]);
        if let Some(i) = self.pending.iter().position(hit) {
            return self.pending.remove(i).map(|v| v["data"].clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let v = self.rx.recv_timeout(left).ok()?;
            if hit(&v) {
                return Some(v["data"].clone());
            }
            self.pending.push_back(v);
        }
    }

    pub fn expect(&mut self, event: &str, timeout: Duration) -> Value {
        self.expect_where(event, timeout, |_| true)
    }

    /// Emits a request and waits for its reply, or panics with the error it got.
    pub fn request(&mut self, event: &str, data: Value, reply: &str) -> Value {
        match self.call(event, data, reply) {
            Ok(v) => v,
            Err(e) => panic!("{event} failed: {e:#}"),
        }
    }

    /// Emits a request; its reply, or the `error` naming its operation.
    pub fn call(&mut self, event: &str, data: Value, reply: &str) -> Result<Value, Value> {
        self.emit(event, data);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(v) = self.try_expect(reply, Duration::ZERO, &|_| true) {
                return Ok(v);
            }
            if let Some(e) = self.try_expect("error", Duration::ZERO, &|e| {
                e["details"]["operation"] == event
            }) {
                return Err(e);
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = self.pending.iter().map(short).collect();
                panic!("no {reply} or error for {event}: {seen:#?}");
            }
            if let Ok(v) = self.rx.recv_timeout(Duration::from_millis(100)) {
                self.pending.push_back(v);
            }
        }
    }

    /// Disconnects the client, and waits until it is.
    pub fn disconnect(&mut self) {
        self.command(json!({"op": "disconnect"}));
        self.expect("_disconnected", Duration::from_secs(15));
    }

    pub fn transport(&mut self) -> String {
        self.command(json!({"op": "transport"}));
        self.expect("_transport", Duration::from_secs(5))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Sio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The container's end of its socket, connected through the container's own mount.
pub struct Peer(pub UnixStream);

/// The host path of a file inside a running container.
pub fn in_container(container: &str, path: &str) -> PathBuf {
    let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", container]);
    PathBuf::from(format!("/proc/{}/root{path}", pid.trim()))
}

impl Peer {
    pub fn connect(container: &str) -> Peer {
        let path = in_container(container, "/var/run/kawaflow.sock");
        let s = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
            UnixStream::connect(&path).ok()
        });
        let s = s.unwrap_or_else(|| panic!("cannot connect to {}", path.display()));
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Peer(s)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, v: &Value) {
        let body = serde_json::to_vec(v).unwrap();
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&body);
        self.send_raw(&f);
    }

    pub fn recv(&mut self) -> Value {
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).expect("no frame from gantry");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Whether gantry closed the connection (a read sees the end within the read timeout).
    pub fn closed_by_gantry(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0))
            || matches!(self.0.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// A JSON value for a failure message, cut to 400 characters.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(400) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// A stand-in for systemd's file descriptor store: the datagram socket gantry's
/// `NOTIFY_SOCKET` names, keeping the descriptors sent with `FDSTORE=1` by `FDNAME` (and
/// dropping them on `FDSTOREREMOVE=1`), to pass them to the next start as systemd does.
pub struct FdStore {
    sock: std::os::unix::net::UnixDatagram,
    pub path: PathBuf,
    pub fds: Vec<(String, std::os::fd::OwnedFd)>,
}

impl FdStore {
    pub fn new(dir: &Path) -> FdStore {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        FdStore {
            sock,
            path,
            fds: Vec::new(),
        }
    }

    /// Takes the messages that arrived so far.
    pub fn collect(&mut self) {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
        loop {
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([RawFd; 16]);
            let Ok(msg) = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT,
            ) else {
                return;
            };
            let mut fds: Vec<OwnedFd> = Vec::new();
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed these descriptors in this process.
                    fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
                }
            }
            let n = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..n]).to_string();
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("FDNAME="))
                .unwrap_or("stored")
                .to_string();
            if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                self.fds.retain(|(n, _)| *n != name);
            } else if text.lines().any(|l| l == "FDSTORE=1") {
                self.fds.extend(fds.into_iter().map(|f| (name.clone(), f)));
            }
        }
    }

    /// `gantry serve` started as systemd starts a service with a descriptor store: the kept
    /// descriptors at 3.., `LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID` the service's pid.
    pub fn command(&self, fm: &Fm) -> Command {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        assert!(self.fds.len() <= 16);
        let mut raws = [0i32; 16];
        for (i, (_, f)) in self.fds.iter().enumerate() {
            raws[i] = f.as_raw_fd();
        }
        let n = self.fds.len();
        let names: Vec<&str> = self.fds.iter().map(|(n, _)| n.as_str()).collect();
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("export LISTEN_PID=$$; exec \"$0\" \"$@\"")
            .arg(crate::common::gantry_bin())
            .arg("serve")
            .arg("--config")
            .arg(&fm.config)
            .env("LISTEN_FDS", n.to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env("NOTIFY_SOCKET", &self.path)
            .stdin(Stdio::null());
        // SAFETY: only fcntl and dup2 (async-signal-safe) run between fork and exec, on
        // descriptors this process owns; nothing allocates.
        unsafe {
            c.pre_exec(move || {
                let mut high = [0i32; 16];
                for (h, r) in high.iter_mut().zip(&raws).take(n) {
                    *h = libc::fcntl(*r, libc::F_DUPFD, 100);
                }
                for (i, h) in high.iter().enumerate().take(n) {
                    libc::dup2(*h, 3 + i as i32);
                }
                Ok(())
            });
        }
        c
    }
}
