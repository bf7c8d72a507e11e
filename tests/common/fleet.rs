//! A fleet for the App Pool tests: server gantrys, each with its own dockerd in its own
//! network namespace (joined to the test's namespace by a veth pair, addresses in
//! 198.19.0.0/16), the local registry (Debian's `docker-registry`) on 127.0.0.1 as the
//! store, and a TCP proxy in front of it or of a server, to slow a transfer down or cut it.
//!
//! Everything lives below the test dockerd's temp dir (so `scripts/test.sh` removes what a
//! killed test left) and in namespaces named after the test's own
//! (`<test namespace>-f<k>s<i>`, which `scripts/test.sh` deletes too); `Drop` tears it down.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{docker_cli, docker_socket_path, unique, wait_for, Gantry};

/// The test dockerd's temp dir (`scripts/test.sh`'s), where fleets put their state.
fn base_dir() -> PathBuf {
    docker_socket_path()
        .parent()
        .expect("the test dockerd's socket has a directory")
        .to_path_buf()
}

fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The name of the network namespace this test runs in (`ip netns identify`).
fn own_netns() -> String {
    let out = Command::new("ip")
        .args(["netns", "identify", &std::process::id().to_string()])
        .output()
        .expect("ip netns identify");
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !name.is_empty(),
        "the test does not run in a named network namespace"
    );
    name
}

/// SIGTERM, then SIGKILL after `grace`; waits for it.
pub fn stop_child(child: &mut Child, grace: Duration) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Unmounts everything below `dir` (deepest first) and removes it.
pub fn remove_tree(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        // As written: a mount a restarted dockerd covered is not found through a
        // canonical path.
        let _ = Command::new("umount")
            .args(["-l", "--no-canonicalize", m])
            .status();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// One server of the fleet: a namespace, a dockerd in it, a gantry in it.
pub struct Server {
    pub netns: String,
    /// The server's address (its veth end); the test's end is `.1` of the same /24.
    pub ip: String,
    pub docker_host: String,
    pub token: String,
    pub token_file: PathBuf,
    pub gantry: Option<Gantry>,
    dockerd: Option<Child>,
}

impl Server {
    pub fn gantry(&self) -> &Gantry {
        self.gantry.as_ref().expect("the server's gantry runs")
    }

    /// The server's Transfer base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.gantry().addr)
    }

    /// Runs the docker CLI against this server's dockerd.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = Command::new(docker_cli())
            .arg("-H")
            .arg(&self.docker_host)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

pub struct Fleet {
    pub servers: Vec<Server>,
    dir: PathBuf,
    containerd: Option<Child>,
}

static FLEETS: AtomicUsize = AtomicUsize::new(0);

impl Fleet {
    /// The directory holding the servers' token files (the pool's `token_dir`).
    pub fn token_dir(&self) -> &Path {
        &self.dir
    }

    /// `n` servers, each a dockerd and a token-authenticated gantry in a namespace of its own.
    pub fn start(n: usize) -> Fleet {
        let k = FLEETS.fetch_add(1, Ordering::SeqCst);
        let dir = base_dir().join(unique(&format!("fleet{k}")));
        std::fs::create_dir_all(&dir).unwrap();
        let mut fleet = Fleet {
            servers: Vec::new(),
            containerd: Some(start_containerd(&dir)),
            dir,
        };
        let own = own_netns();
        for i in 0..n {
            fleet.add_node(&own, k, i);
        }
        for s in &fleet.servers {
            wait_dockerd(&s.docker_host, &fleet.dir);
        }
        for i in 0..n {
            let g = fleet.start_gantry(i);
            fleet.servers[i].gantry = Some(g);
        }
        fleet
    }

    fn add_node(&mut self, own: &str, k: usize, i: usize) {
        let netns = format!("{own}-f{k}s{i}");
        let subnet = 100 + k * 8 + i;
        assert!(subnet < 200, "too many fleets in one test run");
        let (host_if, node_if) = (format!("gf{k}s{i}a"), format!("gf{k}s{i}b"));
        sh("ip", &["netns", "add", &netns]);
        let ip = format!("198.19.{subnet}.2");
        self.servers.push(Server {
            netns: netns.clone(),
            ip: ip.clone(),
            docker_host: String::new(),
            token: format!("fleet-token-{}-{k}-{i}-abcdefgh", std::process::id()),
            token_file: self.dir.join(format!("s{i}.token")),
            gantry: None,
            dockerd: None,
        });
        sh(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &node_if, "netns", &netns,
            ],
        );
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("198.19.{subnet}.1/24"),
                "dev",
                &host_if,
            ],
        );
        sh("ip", &["link", "set", &host_if, "up"]);
        sh(
            "ip",
            &[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &node_if,
            ],
        );
        sh("ip", &["-n", &netns, "link", "set", &node_if, "up"]);
        sh("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        let node_dir = self.dir.join(format!("s{i}"));
        let (docker_host, child) = start_dockerd(&self.dir, &node_dir, &netns, k, i);
        let s = self.servers.last_mut().unwrap();
        std::fs::write(&s.token_file, &s.token).unwrap();
        s.docker_host = docker_host;
        s.dockerd = Some(child);
    }

    fn start_gantry(&self, i: usize) -> Gantry {
        let s = &self.servers[i];
        Gantry::builder()
            .docker_host(&s.docker_host)
            .netns(&s.netns)
            .address(&format!("{}:0", s.ip))
            .listener("auth = \"token\"")
            .listener(&format!(
                "token_file = {:?}",
                s.token_file.display().to_string()
            ))
            // A token in clear off loopback must be allowed in so many words: the fleet's
            // links are veth pairs between the test's namespaces.
            .listener("allow_plain_http = true")
            .start()
            .with_token(&s.token)
    }
}

fn start_containerd(dir: &Path) -> Child {
    let cdir = dir.join("containerd");
    std::fs::create_dir_all(&cdir).unwrap();
    let config = format!(
        "version = 2\nroot = \"{c}/root\"\nstate = \"{c}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{c}/containerd.sock\"\n[debug]\n  address = \"{c}/debug.sock\"\n  level = \"warn\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{c}/opt\"\n",
        c = cdir.display()
    );
    std::fs::write(cdir.join("config.toml"), config).unwrap();
    let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(cdir.join("config.toml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("cannot start containerd");
    let sock = cdir.join("containerd.sock");
    wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        sock.exists().then_some(())
    })
    .expect("containerd did not come up");
    child
}

/// A dockerd in `netns`, on the fleet's containerd (its own containerd namespace).
fn start_dockerd(fleet: &Path, dir: &Path, netns: &str, k: usize, i: usize) -> (String, Child) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("daemon.json"), "{}").unwrap();
    let sock = dir.join("docker.sock");
    let bip = format!("198.19.{}.1/24", 208 + (k * 8 + i) % 48);
    let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
    let arg = |s: &str, p: &Path| format!("{s}{}", p.display());
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("dockerd")
        .arg(arg("--host=unix://", &sock))
        .arg(arg(
            "--containerd=",
            &fleet.join("containerd/containerd.sock"),
        ))
        .arg(format!("--containerd-namespace=fleet{k}-{i}"))
        .arg(format!(
            "--containerd-plugins-namespace=fleet{k}-{i}-plugins"
        ))
        .arg(arg("--data-root=", &dir.join("data")))
        .arg(arg("--exec-root=", &dir.join("exec")))
        .arg(arg("--pidfile=", &dir.join("docker.pid")))
        .arg(arg("--config-file=", &dir.join("daemon.json")))
        .arg(format!("--bip={bip}"))
        .arg("--default-address-pool=base=198.19.0.0/19,size=24")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("cannot start dockerd");
    (format!("unix://{}", sock.display()), child)
}

fn wait_dockerd(host: &str, fleet: &Path) {
    let up = wait_for(Duration::from_secs(60), Duration::from_millis(250), || {
        Command::new(docker_cli())
            .args(["-H", host, "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
    });
    assert!(
        up.is_some(),
        "the fleet's dockerd at {host} did not come up (logs in {})",
        fleet.display()
    );
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.gantry = None;
            let ids = s.docker(&["ps", "-aq"]);
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.lines());
                s.docker(&args);
            }
            if let Some(mut d) = s.dockerd.take() {
                stop_child(&mut d, Duration::from_secs(15));
            }
        }
        if let Some(mut c) = self.containerd.take() {
            stop_child(&mut c, Duration::from_secs(10));
        }
        for s in &self.servers {
            let pids = Command::new("ip")
                .args(["netns", "pids", &s.netns])
                .output();
            for pid in pids
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
                .lines()
            {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            let _ = Command::new("ip").args(["netns", "del", &s.netns]).status();
        }
        remove_tree(&self.dir);
    }
}

/// Debian's registry (distribution 2.8) on 127.0.0.1, its storage below the test dockerd's
/// temp dir; restartable on the same storage.
pub struct Registry {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
    guard: Guard,
}

/// What a registry asks of its clients: TLS with a certificate and its key, and basic
/// authentication against an htpasswd file (bcrypt entries).
#[derive(Default)]
pub struct Guard {
    pub tls: Option<(PathBuf, PathBuf)>,
    pub htpasswd: Option<PathBuf>,
}

impl Registry {
    /// An anonymous registry over plain HTTP.
    pub fn start() -> Registry {
        Registry::start_guarded(Guard::default())
    }

    pub fn start_guarded(guard: Guard) -> Registry {
        let dir = base_dir().join(unique("registry"));
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let mut r = Registry {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: None,
            guard,
        };
        r.run();
        r
    }

    /// Its base URL (`https://127.0.0.1:port` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.guard.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The registry's config file for `addr`.
    fn config(&self, addr: SocketAddr) -> String {
        let mut c = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            self.dir.join("storage").display()
        );
        if let Some((cert, key)) = &self.guard.tls {
            c += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        if let Some(file) = &self.guard.htpasswd {
            c += &format!(
                "auth:\n  htpasswd:\n    realm: gantry-tests\n    path: {}\n",
                file.display()
            );
        }
        c
    }

    /// Starts the registry on a port of the ephemeral range, another one on a collision.
    fn run(&mut self) {
        for attempt in 0..20u32 {
            let port = if self.addr.port() != 0 && attempt == 0 {
                self.addr.port()
            } else {
                (20000 + rand_u32() % 30000) as u16
            };
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            std::fs::write(self.dir.join("config.yml"), self.config(addr)).unwrap();
            let log = std::fs::File::create(self.dir.join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(self.dir.join("config.yml"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect(
                    "cannot start docker-registry (is it installed? scripts/test.sh installs it)",
                );
            let up = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
                if child.try_wait().ok().flatten().is_some() {
                    return Some(false);
                }
                registry_answers(addr).then_some(true)
            });
            if up == Some(true) {
                self.addr = addr;
                self.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the registry did not start; its log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on its storage (and its port, unless that was taken meanwhile).
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// The repositories the registry stores (below `namespace`), from its storage.
    pub fn repositories(&self, namespace: &str) -> Vec<String> {
        let dir = self
            .dir
            .join("storage/docker/registry/v2/repositories")
            .join(namespace);
        std::fs::read_dir(dir).map_or_else(
            |_| Vec::new(),
            |d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            },
        )
    }

    /// The file holding a blob's bytes in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("----- registry log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    u32::from_le_bytes(b)
}

/// Whether the registry answers HTTP at `addr` (one behind TLS answers a plain request too,
/// with a 400).
fn registry_answers(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    if s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// A TCP proxy on 127.0.0.1 (a port the kernel picked) to an upstream that may change,
/// that can slow what flows back to the client and cut every connection at once. It notes
/// request heads that carry a `Range` header.
pub struct Proxy {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    /// Bytes per second in each direction; 0: unlimited.
    rate: Arc<AtomicU64>,
    /// Bytes that went towards the client.
    pub delivered: Arc<AtomicU64>,
    /// Bytes that went towards the upstream.
    pub uploaded: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    ranges: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = Proxy {
            addr: listener.local_addr().unwrap(),
            upstream: Arc::new(Mutex::new(upstream)),
            rate: Arc::new(AtomicU64::new(0)),
            delivered: Arc::new(AtomicU64::new(0)),
            uploaded: Arc::new(AtomicU64::new(0)),
            conns: Arc::new(Mutex::new(Vec::new())),
            ranges: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (up, rate, conns, ranges, stop) = (
            p.upstream.clone(),
            p.rate.clone(),
            p.conns.clone(),
            p.ranges.clone(),
            p.stop.clone(),
        );
        let (delivered, uploaded) = (p.delivered.clone(), p.uploaded.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let target = *up.lock().unwrap();
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                conns.lock().unwrap().push(client.try_clone().unwrap());
                conns.lock().unwrap().push(server.try_clone().unwrap());
                let (c, s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(
                    c,
                    s,
                    Some(rate.clone()),
                    Some(ranges.clone()),
                    Some(uploaded.clone()),
                );
                pipe(
                    server,
                    client,
                    Some(rate.clone()),
                    None,
                    Some(delivered.clone()),
                );
            }
        });
        p
    }

    pub fn set_upstream(&self, addr: SocketAddr) {
        *self.upstream.lock().unwrap() = addr;
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Closes every connection through the proxy (new ones are still accepted).
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// How many requests carried a `Range` header asking for more than the start.
    pub fn range_requests(&self) -> u64 {
        self.ranges.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` on a thread, at most `rate` bytes per second when given, counting
/// request heads with a Range header into `ranges` and bytes into `count`.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    rate: Option<Arc<AtomicU64>>,
    ranges: Option<Arc<AtomicU64>>,
    count: Option<Arc<AtomicU64>>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(r) = &ranges {
                let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let resumes = text
                    .split("\r\nrange: bytes=")
                    .skip(1)
                    .any(|rest| !rest.starts_with("0-"));
                if resumes {
                    r.fetch_add(1, Ordering::SeqCst);
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            if let Some(c) = &count {
                c.fetch_add(n as u64, Ordering::SeqCst);
            }
            // Each chunk takes its share of a second at the current rate.
            let limit = rate.as_ref().map_or(0, |r| r.load(Ordering::SeqCst));
            if limit > 0 {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / limit as f64));
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
    });
}
