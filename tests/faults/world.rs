//! The fault tests' world: a network namespace of their own with a private containerd and
//! dockerd in it (so the tests can stop and restart dockerd, and the oracle sees exactly what
//! gantry made), the test image loaded into it. Everything is undone on drop, also after a
//! failed test: containers, daemons, mounts, the directory and the namespace.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::fleet::{remove_tree, stop_child};
use crate::common::{self, run, run_ok, run_with_input, test_image};

/// How long a daemon of the world may take to come up.
const UP_WITHIN: Duration = Duration::from_secs(180);

/// The Intervirt client names its image like this; the test image is tagged so.
pub const IMAGE_ALIAS: &str = "debian/13";

pub struct World {
    pub dir: PathBuf,
    pub netns: String,
    containerd: Option<Child>,
    /// Restarted by the tests while gantry runs, hence shared.
    dockerd: std::sync::Mutex<Option<Child>>,
    /// The two images of the test apps, saved once (see [`World::app_images`]).
    app_images: std::sync::OnceLock<[Vec<u8>; 2]>,
    big_images: std::sync::OnceLock<[Vec<u8>; 2]>,
    /// A root filesystem tar for the image imports (see [`World::rootfs`]).
    rootfs: std::sync::OnceLock<Vec<u8>>,
    /// The HTTP server of a service's `bind_contents` (see [`World::contents_url`]).
    contents: std::sync::OnceLock<String>,
    /// The test image's id.
    base_id: std::sync::OnceLock<String>,
    /// Containers Docker could not remove (each reported once, by the run that left it).
    stuck: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The App Pool's store (a local registry in the world's namespace), started by the
    /// first run that needs it.
    registry: std::sync::OnceLock<crate::common::fleet::Registry>,
}

impl World {
    /// A fresh world. Panics (with the daemons' logs) when it cannot be built.
    pub fn new() -> World {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let netns = format!("gantry-f-{}-{n}", std::process::id());
        let dir = PathBuf::from(format!("/tmp/gantry-f-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("containerd")).unwrap();
        run_ok("ip", &["netns", "add", &netns]);
        let mut w = World {
            dir,
            netns,
            containerd: None,
            dockerd: std::sync::Mutex::new(None),
            app_images: std::sync::OnceLock::new(),
            big_images: std::sync::OnceLock::new(),
            rootfs: std::sync::OnceLock::new(),
            contents: std::sync::OnceLock::new(),
            base_id: std::sync::OnceLock::new(),
            stuck: Default::default(),
            registry: std::sync::OnceLock::new(),
        };
        w.ip(&["link", "set", "lo", "up"]);
        w.start_containerd();
        w.start_dockerd();
        w.load_test_image();
        w
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.netns))
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.netns.as_str()];
        a.extend_from_slice(args);
        run_ok("ip", &a)
    }

    /// A command run inside the namespace.
    pub fn in_netns(&self, program: &str, args: &[&str]) -> Output {
        let net = format!("--net={}", self.netns_path().display());
        let mut a = vec![net.as_str(), program];
        a.extend_from_slice(args);
        run("nsenter", &a)
    }

    fn start_containerd(&mut self) {
        let c = self.dir.join("containerd");
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n  level = \"warn\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
            d = c.display()
        );
        std::fs::write(c.join("config.toml"), config).unwrap();
        let config_path = c.join("config.toml").display().to_string();
        let child = self.spawn("containerd", &["containerd", "--config", &config_path]);
        self.containerd = Some(child);
        let sock = c.join("containerd.sock");
        self.wait_until("containerd", || sock.exists());
    }

    /// Starts dockerd (again) on the same data.
    pub fn start_dockerd(&self) {
        if let Err(fault) = self.try_start_dockerd() {
            panic!("{fault}");
        }
    }

    /// Starts dockerd (again) on the same data; `Err` when dockerd itself exits while it
    /// starts (a Docker fault, not gantry's: Docker 20.10 stopped in the middle of a network
    /// removal may panic at every later start, in libnetwork's `reservePools`).
    pub fn try_start_dockerd(&self) -> Result<(), String> {
        std::fs::write(self.dir.join("daemon.json"), "{}").unwrap();
        let d = self.dir.display().to_string();
        let args = [
            "dockerd".to_string(),
            format!("--host=unix://{d}/docker.sock"),
            format!("--containerd={d}/containerd/containerd.sock"),
            format!("--data-root={d}/data"),
            format!("--exec-root={d}/exec"),
            format!("--pidfile={d}/docker.pid"),
            format!("--config-file={d}/daemon.json"),
            "--bip=198.19.0.1/24".into(),
            "--default-address-pool=base=198.19.64.0/18,size=24".into(),
            "--shutdown-timeout=2".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        *self.dockerd() = Some(self.spawn("dockerd", &args));
        let mut fault = None;
        self.wait_until("dockerd", || {
            // A dockerd that dies while it starts is Docker's fault, said as such.
            if let Some(status) = self.dockerd().as_mut().and_then(|c| c.try_wait().ok()?) {
                let log = std::fs::read_to_string(self.dir.join("dockerd.log"));
                let tail: Vec<String> = log.unwrap_or_default().lines().rev().take(20).map(String::from).collect();
                fault = Some(format!("dockerd itself exited ({status}) while starting again (a Docker fault, not gantry's):\n{}", tail.join("\n")));
                return true;
            }
            self.docker(&["version"]).status.success()
        });
        fault.map_or(Ok(()), Err)
    }

    /// Stops dockerd as its unit would (SIGTERM; its containers are stopped).
    pub fn stop_dockerd(&self) {
        if let Some(mut c) = self.dockerd().take() {
            stop_child(&mut c, Duration::from_secs(30));
        }
    }

    fn dockerd(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.dockerd.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(&self, name: &str, argv: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap();
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path().display()))
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
    }

    /// Waits for `ready`, at most [`UP_WITHIN`] (a restarted dockerd took more than a minute
    /// to reach its containerd on a loaded machine).
    fn wait_until(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + UP_WITHIN;
        while !ready() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join(format!("{what}.log")));
                panic!(
                    "{what} did not come up within {} s: {}",
                    UP_WITHIN.as_secs(),
                    log.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn load_test_image(&self) {
        let saved = common::saved_test_image();
        let out = self.docker_input(&["load"], &saved);
        assert!(out.status.success(), "docker load: {out:?}");
        self.docker_ok(&["tag", &test_image(), IMAGE_ALIAS]);
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        let host = self.host();
        run(
            &common::docker_cli(),
            &[&["-H", host.as_str()], args].concat(),
        )
    }

    pub fn docker_ok(&self, args: &[&str]) -> String {
        let host = self.host();
        run_ok(
            &common::docker_cli(),
            &[&["-H", host.as_str()], args].concat(),
        )
    }

    pub fn docker_input(&self, args: &[&str], input: &[u8]) -> Output {
        let host = self.host();
        let args = [&["-H", host.as_str()], args].concat();
        run_with_input(&common::docker_cli(), &args, Some(input))
    }

    /// Lines of `docker <args>` output, empty ones dropped.
    pub fn docker_lines(&self, args: &[&str]) -> Vec<String> {
        let out = self.docker_ok(args);
        out.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// A `docker load` Docker has in flight until [`HeldLoad::end`]: half of an archive
    /// sent, the rest held back.
    pub fn hold_a_load(&self) -> HeldLoad {
        use std::io::Write;
        let host = self.host();
        let mut child = Command::new(common::docker_cli())
            .args(["-H", host.as_str(), "load"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker load");
        let [(_, tar), _] = self.app_images();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&tar[..tar.len() / 2]).unwrap();
        stdin.flush().unwrap();
        let tmp = self.dir.join("data/tmp");
        self.wait_until("a load in flight", || {
            let entries = std::fs::read_dir(&tmp).into_iter().flatten().flatten();
            entries.into_iter().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("docker-import-")
            })
        });
        HeldLoad {
            child,
            stdin: Some(stdin),
        }
    }

    /// Whether `name` is a container Docker could not remove (see [`World::mark_stuck`]).
    pub fn is_stuck(&self, name: &str) -> bool {
        let stuck = self.stuck.lock().unwrap_or_else(|p| p.into_inner());
        stuck.contains(name)
    }

    /// Docker cannot remove the container `name` (its run reported it): later runs in this
    /// world leave it out, so one leak is not counted again by every run after it.
    pub fn mark_stuck(&self, name: &str) {
        let mut stuck = self.stuck.lock().unwrap_or_else(|p| p.into_inner());
        stuck.insert(name.to_string());
    }

    /// dockerd's last error lines (for a failed run's report).
    pub fn dockerd_errors(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let errors: Vec<String> = log
            .lines()
            .filter(|l| l.contains("level=error"))
            .map(String::from)
            .collect();
        errors[errors.len().saturating_sub(10)..].to_vec()
    }

    /// The base URL of the App Pool's store (a registry on the world's loopback; the
    /// calling thread must be in the world's namespace, as the tests' are).
    pub fn registry_url(&self) -> String {
        self.registry
            .get_or_init(crate::common::fleet::Registry::start)
            .url()
    }

    /// The id of the test image (also tagged [`IMAGE_ALIAS`]).
    pub fn base_id(&self) -> &str {
        self.base_id.get_or_init(|| {
            self.docker_ok(&["image", "inspect", "--format", "{{.Id}}", &test_image()])
        })
    }

    /// The references and `docker save` archives of the test apps' two images (each with an
    /// id of its own, not in Docker until an import loads it).
    pub fn app_images(&self) -> [(&'static str, &[u8]); 2] {
        const REFS: [&str; 2] = ["fault-one:1", "fault-two:1"];
        let tars = self
            .app_images
            .get_or_init(|| REFS.map(|r| self.fresh_image(r, 0)));
        [(REFS[0], &tars[0]), (REFS[1], &tars[1])]
    }

    /// Like [`World::app_images`], each image with `mib` MiB of random data more.
    pub fn big_images(&self, mib: usize) -> [(&'static str, &[u8]); 2] {
        const REFS: [&str; 2] = ["fault-big-one:1", "fault-big-two:1"];
        let tars = self
            .big_images
            .get_or_init(|| REFS.map(|r| self.fresh_image(r, mib)));
        [(REFS[0], &tars[0]), (REFS[1], &tars[1])]
    }

    /// A root filesystem (`docker export` of the test image with `mib` MiB of random data
    /// more, so that Docker takes a moment to register an import of it), made once.
    pub fn rootfs(&self, mib: usize) -> &[u8] {
        self.rootfs.get_or_init(|| {
            let builder = "build-rootfs";
            let script = format!("head -c {} /dev/urandom > /blob", mib << 20);
            let image = test_image();
            let args = [
                "run",
                "--network=none",
                "--name",
                builder,
                &image,
                "sh",
                "-c",
            ];
            let mut args = args.to_vec();
            args.push(&script);
            self.docker_ok(&args);
            let file = self.dir.join("rootfs.tar");
            self.docker_ok(&["export", "-o", file.to_str().unwrap(), builder]);
            self.docker_ok(&["rm", "-f", builder]);
            let bytes = std::fs::read(&file).unwrap();
            let _ = std::fs::remove_file(&file);
            bytes
        })
    }

    /// The URL of a small `.tar.gz` (one file, `hello.txt`) served over HTTP in the world's
    /// namespace (by a thread of the test that lives as long as the process), for a
    /// service's `bind_contents`.
    pub fn contents_url(&self) -> &str {
        self.contents.get_or_init(|| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            {
                let mut tar = tar::Builder::new(&mut gz);
                let mut header = tar::Header::new_gnu();
                header.set_size(6);
                header.set_mode(0o644);
                header.set_cksum();
                tar.append_data(&mut header, "hello.txt", &b"hello\n"[..])
                    .unwrap();
                tar.finish().unwrap();
            }
            let body = gz.finish().unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.9:0").unwrap();
            let addr = listener.local_addr().unwrap();
            std::thread::spawn(move || serve_forever(listener, body));
            format!("http://{addr}/contents.tar.gz")
        })
    }

    /// A test's own image: the test image plus a marker file (and `extra_mib` MiB of random
    /// bytes), so it has an id of its own, under `reference`, as `docker save` writes it; the
    /// image itself is removed again.
    pub fn fresh_image(&self, reference: &str, extra_mib: usize) -> Vec<u8> {
        let builder = format!("build-{}", reference.replace([':', '/'], "-"));
        let mut script = format!("echo {reference} > /marker");
        if extra_mib > 0 {
            script += &format!("; head -c {} /dev/urandom > /blob", extra_mib << 20);
        }
        let image = test_image();
        let mut args = vec!["run", "--network=none", "--name", &builder];
        args.extend([image.as_str(), "sh", "-c", &script]);
        self.docker_ok(&args);
        self.docker_ok(&["commit", &builder, reference]);
        self.docker_ok(&["rm", "-f", &builder]);
        let file = self.dir.join("saved.tar");
        self.docker_ok(&["save", "-o", file.to_str().unwrap(), reference]);
        self.docker_ok(&["rmi", reference]);
        let bytes = std::fs::read(&file).unwrap();
        let _ = std::fs::remove_file(&file);
        bytes
    }
}

/// Answers every request on `listener` with `body` (HTTP/1.0, one request a connection).
fn serve_forever(listener: std::net::TcpListener, body: Vec<u8>) {
    use std::io::{Read, Write};
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut head = [0u8; 4096];
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.read(&mut head);
        let header = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: application/gzip\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(header.as_bytes());
        let _ = stream.write_all(&body);
    }
}

/// A load Docker has in flight ([`World::hold_a_load`]).
pub struct HeldLoad {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl HeldLoad {
    /// The archive ends early: Docker's load fails and nothing of it stays.
    pub fn end(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.dockerd().is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).to_string();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = self.docker(&[&["rm", "-f", "-v"], ids.as_slice()].concat());
            }
        }
        self.stop_dockerd();
        if let Some(mut c) = self.containerd.take() {
            stop_child(&mut c, Duration::from_secs(10));
        }
        // Shims and container processes still holding the directory.
        let pids = run("ip", &["netns", "pids", &self.netns]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = run("kill", &["-KILL", pid]);
        }
        remove_tree(&self.dir);
        let _ = run("ip", &["netns", "del", &self.netns]);
    }
}
