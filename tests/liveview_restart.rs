//! The live view across a dockerd restart, against a private dockerd of this test (in a
//! network namespace of its own, no bridge, no firewall rules, its files under the test
//! dockerd's temp dir so that scripts/test.sh cleans up after a crash): while reads run in a
//! loop, dockerd stops (its containers with it) and starts again (a `--restart always`
//! container comes back, another stays exited). Reads answer 503 while the view cannot be
//! current, and once one shows the state after the restart, none shows the state before it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{agent, docker_host, docker_ok, run, run_ok, test_image, unique, wait_for, Gantry};
use serde_json::Value;

/// A dockerd of this test in a namespace of its own.
struct PrivateDockerd {
    netns: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateDockerd {
    fn start() -> PrivateDockerd {
        let main = docker_host().unwrap();
        let base = Path::new(main.trim_start_matches("unix://"))
            .parent()
            .unwrap();
        let dir = base.join(unique("lvdockerd"));
        std::fs::create_dir_all(&dir).unwrap();
        let netns = unique("lv");
        run_ok("ip", &["netns", "add", &netns]);
        run_ok("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        let mut d = PrivateDockerd {
            netns,
            dir,
            child: None,
        };
        d.launch();
        d
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    fn cli(&self, args: &[&str]) -> String {
        run_ok(
            &common::docker_cli(),
            &[&["-H", &self.host()], args].concat(),
        )
    }

    /// Starts dockerd (again) and waits until it answers.
    fn launch(&mut self) {
        let d = |p: &str| self.dir.join(p).display().to_string();
        let log = std::fs::File::create(self.dir.join("dockerd.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["dockerd", "--host", &self.host(), "--data-root", &d("data")])
            .args(["--exec-root", &d("exec"), "--pidfile", &d("docker.pid")])
            .args(["--bridge", "none", "--iptables=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start dockerd");
        self.child = Some(child);
        let host = self.host();
        let up = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
            let out = run(&common::docker_cli(), &["-H", &host, "version"]);
            out.status.success().then_some(())
        });
        assert!(
            up.is_some(),
            "the private dockerd did not start: {}",
            self.log()
        );
    }

    /// Stops dockerd (its containers stop with it) and waits for it to exit.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let gone = wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
            child.try_wait().ok().flatten()
        });
        if gone.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let host = self.host();
            let ids = run(&common::docker_cli(), &["-H", &host, "ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            for id in ids.split_whitespace() {
                let _ = run(&common::docker_cli(), &["-H", &host, "rm", "-f", id]);
            }
        }
        self.stop();
        let _ = run("ip", &["netns", "del", &self.netns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One read of the container list while dockerd restarts: when, the status, and the states
/// of the two containers (when listed).
struct Read {
    at: Instant,
    status: u16,
    states: Option<(String, String)>,
}

fn state_of(list: &Value, name: &str) -> String {
    let slash = format!("/{name}");
    list.as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            c["Names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|x| x == &slash))
        })
        .map(|c| c["State"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| "missing".into())
}

/// Reads the list in a loop until `stop`.
fn reader(url: String, names: (String, String), stop: Arc<AtomicBool>) -> Vec<Read> {
    let agent = agent();
    let mut reads = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let at = Instant::now();
        let Ok(mut r) = agent.get(&url).call() else {
            continue;
        };
        let status = r.status().as_u16();
        let states = (status == 200).then(|| {
            let v: Value = serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap();
            (state_of(&v, &names.0), state_of(&v, &names.1))
        });
        reads.push(Read { at, status, states });
        std::thread::sleep(Duration::from_millis(5));
    }
    reads
}

/// Runs a `--restart always` container and a `--restart no` one in `dockerd` (the test
/// image loaded into it first); their names.
fn two_containers(dockerd: &PrivateDockerd) -> (String, String) {
    let image = test_image();
    let saved = tempfile::NamedTempFile::new().unwrap();
    docker_ok(&["save", "-o", saved.path().to_str().unwrap(), &image]);
    dockerd.cli(&["load", "-i", saved.path().to_str().unwrap()]);
    let (always, once) = (unique("always"), unique("once"));
    let cmd = ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"];
    for (name, policy) in [(&always, "always"), (&once, "no")] {
        let args = [
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "--restart",
            policy,
        ];
        dockerd.cli(&[&args[..], &[image.as_str()], &cmd[..]].concat());
    }
    (always, once)
}

/// Waits (up to `limit`) until gantry lists the two containers in these states; when.
fn listed_as(
    g: &Gantry,
    names: &(String, String),
    states: (&str, &str),
    limit: Duration,
) -> Option<Instant> {
    wait_for(limit, Duration::from_millis(20), || {
        let r = g.get("/api/1/system/containers");
        let ok = r.status == 200
            && state_of(&r.json(), &names.0) == states.0
            && state_of(&r.json(), &names.1) == states.1;
        ok.then(Instant::now)
    })
}

/// While dockerd was away (from `stopping`), reads answered 503; once gantry noticed, no
/// read showed `once` (the second) running again, its state before the restart.
fn check_reads(reads: &[Read], stopping: Instant) {
    let first_503 = reads
        .iter()
        .find(|r| r.at >= stopping && r.status == 503)
        .map(|r| r.at)
        .expect("no read answered 503 while dockerd was down");
    for r in reads.iter().filter(|r| r.at >= first_503) {
        if let Some((_, once_state)) = &r.states {
            assert_ne!(
                once_state, "running",
                "a read after the restart began showed the old state"
            );
        }
        assert!(matches!(r.status, 200 | 503), "status {}", r.status);
    }
    let total = reads.iter().filter(|r| r.at >= stopping).count();
    let unavailable = reads
        .iter()
        .filter(|r| r.at >= stopping && r.status == 503)
        .count();
    eprintln!("{total} reads during the restart, {unavailable} answered 503");
}

#[test]
#[ignore = "needs root, network namespaces and the test dockerd (run scripts/test.sh)"]
fn reads_across_a_dockerd_restart_never_show_the_state_before_it() {
    require_docker!();
    let mut dockerd = PrivateDockerd::start();
    let names = two_containers(&dockerd);
    let g = Gantry::builder().docker_host(&dockerd.host()).start();
    listed_as(&g, &names, ("running", "running"), Duration::from_secs(20))
        .expect("gantry never listed both containers running");

    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (url, names, stop) = (
            g.url("/api/1/system/containers"),
            names.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || reader(url, names, stop))
    };
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    dockerd.stop();
    std::thread::sleep(Duration::from_millis(500));
    dockerd.launch();
    let restarted = Instant::now();
    // After the restart: `always` runs again, `once` stays exited.
    let after = listed_as(&g, &names, ("running", "exited"), Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let reads = thread.join().unwrap();
    let after = after.unwrap_or_else(|| {
        panic!(
            "gantry never showed the state after the restart:\n{}",
            g.stderr()
        )
    });
    check_reads(&reads, stopping);
    eprintln!(
        "dockerd back after {:?}, gantry current {:?} after that",
        restarted - stopping,
        after.saturating_duration_since(restarted)
    );
}
