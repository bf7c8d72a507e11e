//! The daemon as a process: CLI, configuration errors, authentication, HTTP errors, Docker
//! outages, systemd notifications and graceful shutdown. Runs the real binary.

#[macro_use]
mod common;

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "s3cret-Token-0123456789abcdef";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn check_config(path: &str) -> std::process::Output {
    run_gantry(&["check-config", "--config", path], &[])
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit code 78 and that stderr mentions each of `needles`.
fn assert_config_error(o: &std::process::Output, needles: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(78),
        "expected exit 78 (bad config); status {:?}, stdout {:?}, stderr {:?}",
        o.status,
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    for n in needles {
        assert!(
            err.to_lowercase().contains(&n.to_lowercase()),
            "the error message should mention {n:?}: {err:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// CLI and configuration

#[test]
fn version_prints_name_and_crate_version() {
    let o = run_gantry(&["--version"], &[]);
    assert!(o.status.success(), "--version failed: {o:?}");
    assert_eq!(
        stdout(&o).trim(),
        format!("gantry {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_a_good_config_and_summarises_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", &format!("{TOKEN}\n"));
    let path = write(
        dir.path(),
        "gantry.toml",
        &format!(
            r#"state_dir = "{state}"
docker_host = "unix:///run/gantry-test-nothing/docker.sock"
log_level = "warn"
shutdown_timeout_secs = 3

[http]
max_upload_bytes = 1000000

[[listeners]]
dialect = "transfer"
address = "127.0.0.1:54999"

[[listeners]]
dialect = "transfer"
address = "0.0.0.0:54998"
auth = "token"
token_file = "{token}"
allow_plain_http = true
"#,
            state = dir.path().join("state").display()
        ),
    );
    let o = check_config(&path);
    assert_eq!(o.status.code(), Some(0), "check-config failed: {o:?}");
    let out = stdout(&o);
    for needle in [
        "127.0.0.1:54999",
        "0.0.0.0:54998",
        "unix:///run/gantry-test-nothing/docker.sock",
    ] {
        assert!(
            out.contains(needle),
            "summary should mention {needle}: {out}"
        );
    }
    assert!(
        !out.contains(TOKEN),
        "the summary must not print the token: {out}"
    );
}

#[test]
fn check_config_rejects_invalid_toml() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.toml", "state_dir = \n[[listeners\n");
    assert_config_error(&check_config(&path), &[&path]);
}

/// Asserts that check-config refuses (exit 78) a config of one `[[listeners]]` table made of
/// `listener`'s lines, naming each of `needles`.
fn assert_listener_refused(listener: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "g.toml", &format!("[[listeners]]\n{listener}"));
    assert_config_error(&check_config(&path), needles);
}

#[test]
fn check_config_rejects_an_unknown_dialect() {
    assert_listener_refused(
        "dialect = \"gopher\"\naddress = \"127.0.0.1:54997\"\n",
        &["gopher"],
    );
}

#[test]
fn check_config_rejects_a_non_loopback_listener_without_auth() {
    assert_listener_refused(
        "dialect = \"transfer\"\naddress = \"0.0.0.0:54996\"\n",
        &["auth"],
    );
}

#[test]
fn check_config_rejects_loopback_auth_on_a_non_loopback_address() {
    assert_listener_refused(
        "dialect = \"transfer\"\naddress = \"0.0.0.0:54995\"\nauth = \"loopback\"\n",
        &["loopback"],
    );
}

#[test]
fn check_config_rejects_token_auth_without_token_file() {
    assert_listener_refused(
        "dialect = \"transfer\"\naddress = \"127.0.0.1:54994\"\nauth = \"token\"\n",
        &["token_file"],
    );
}

#[test]
fn check_config_rejects_a_short_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "short-token\n");
    assert_listener_refused(
        &format!(
            "dialect = \"transfer\"\naddress = \"127.0.0.1:54993\"\nauth = \"token\"\ntoken_file = \"{token}\"\n"
        ),
        &["16"],
    );
}

#[test]
fn a_missing_config_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("does-not-exist.toml").display().to_string();
    assert_config_error(&check_config(&path), &[&path]);
    // `serve` refuses it the same way, before binding anything.
    let o = run_gantry(&["serve", "--config", &path], &[]);
    assert_config_error(&o, &[&path]);
}

#[test]
fn serve_refuses_a_bad_config_with_78() {
    let dir = tempfile::tempdir().unwrap();
    // A port this test holds: had gantry tried to bind it, it would have failed with 1
    // ("in use"), so 78 shows the config was refused before anything was bound.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let path = write(
        dir.path(),
        "g.toml",
        &format!("[[listeners]]\ndialect = \"transfer\"\naddress = \"0.0.0.0:{port}\"\n"),
    );
    let o = run_gantry(&["serve", "--config", &path], &[]);
    assert_config_error(&o, &["auth"]);
    let out = String::from_utf8_lossy(&o.stderr);
    assert!(!out.contains("listening"), "{out}");
}

#[test]
fn environment_overrides_the_listener_address() {
    // The file names a port this test holds: serving the file's address would fail.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let file_address = held.local_addr().unwrap();
    let g = Gantry::builder()
        .address(&file_address.to_string())
        .env("GANTRY_TRANSFER_ADDRESS", "127.0.0.2:0")
        .start();
    // start() found /healthz answering 200 on the address gantry reported.
    assert_eq!(
        g.addr.ip(),
        std::net::IpAddr::from([127, 0, 0, 2]),
        "gantry should serve the environment's address, not the file's {file_address}:\n{}",
        g.stderr()
    );
    assert_ne!(g.addr.port(), 0);
}

// ---------------------------------------------------------------------------------------------
// HTTP basics

/// Polls the status route (up to `limit`) until its `docker.reachable` is `reachable`;
/// returns that document.
fn wait_docker_reachable(
    g: &Gantry,
    reachable: bool,
    limit: Duration,
) -> Option<serde_json::Value> {
    wait_for(limit, Duration::from_millis(200), || {
        let v = g.health();
        (v["docker"]["reachable"] == reachable).then_some(v)
    })
}

#[test]
fn healthz_reports_gantry_and_docker() {
    let g = Gantry::start();
    // /healthz, without auth, says only ok or degraded: no versions, no error texts.
    let h = g.get("/healthz").expect_json(200);
    let keys: Vec<&String> = h.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["status"], "{h}");
    assert!(h["status"] == "ok" || h["status"] == "degraded", "{h}");
    let r = g.get(STATUS_PATH);
    let v = r.expect_json(200);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
    let reachable = v["docker"]["reachable"]
        .as_bool()
        .unwrap_or_else(|| panic!("docker.reachable missing: {v}"));
    if docker_host().is_some() {
        // The probe runs every second; the first answer may predate it.
        let v = wait_docker_reachable(&g, true, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("docker never reachable: {}", g.health()));
        assert_eq!(v["status"], "ok", "{v}");
        assert!(
            v["docker"]["version"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{v}"
        );
        assert!(
            v["docker"]["api_version"]
                .as_str()
                .is_some_and(|s| s.contains('.')),
            "{v}"
        );
    } else {
        assert!(!reachable, "{v}");
        assert_eq!(v["status"], "degraded", "{v}");
    }
}

#[test]
fn unknown_route_is_a_404_problem() {
    let g = Gantry::start();
    for path in [
        "/api/1/no/such/route",
        "/nothing-here",
        "/api/1/system/imagez",
    ] {
        let r = g.get(path);
        r.expect_problem(404, path);
    }
}

#[test]
fn wrong_method_is_a_405_problem_with_allow() {
    let g = Gantry::start();
    let r = g.put("/api/1/system/images");
    r.expect_problem(405, "/api/1/system/images");
    let allow = r
        .header("allow")
        .unwrap_or_else(|| panic!("no Allow header: {r}"));
    let methods: Vec<String> = allow.split(',').map(|m| m.trim().to_uppercase()).collect();
    assert!(methods.contains(&"GET".to_string()), "Allow: {allow}");
    assert!(methods.contains(&"POST".to_string()), "Allow: {allow}");
    assert!(!methods.contains(&"PUT".to_string()), "Allow: {allow}");

    let r = g.get("/api/1/system/containers/x/start");
    r.expect_problem(405, "/api/1/system/containers/x/start");
    assert_eq!(r.header("allow").map(str::trim), Some("PUT"), "{r}");
}

#[test]
fn an_oversize_upload_is_a_413_problem() {
    // Declared too large: refused from the headers, before anything reaches Docker.
    let g = Gantry::builder().http("max_upload_bytes = 4096").start();
    let mut s = g.connect();
    let head = format!(
        "POST /api/1/system/images HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-tar\r\n\
         Content-Length: 10000000\r\nConnection: close\r\n\r\n",
        g.addr
    );
    write_all(&mut s, head.as_bytes()).unwrap();
    let _ = write_all(&mut s, &[0u8; 1024]);
    let (status, text) = read_raw_response(&mut s);
    assert_eq!(status, 413, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("application/problem+json"), "{text}");
    assert!(text.contains("\"status\":413"), "{text}");
    assert!(
        text.contains("/api/1/system/images"),
        "instance missing: {text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Token authentication

fn token_gantry(dir: &Path) -> Gantry {
    let token_file = write(dir, "token", &format!("  {TOKEN}\n"));
    Gantry::builder()
        // Docker down on purpose: a request that passed auth then answers 503, deterministically.
        .docker_host(&format!("unix://{}/no-docker.sock", dir.display()))
        .listener("auth = \"token\"")
        .listener(&format!("token_file = \"{token_file}\""))
        .start()
}

#[test]
fn token_auth_rejects_missing_and_wrong_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let g = token_gantry(dir.path());
    let path = "/api/1/system/images";

    let none = g.get(path);
    none.expect_problem(401, path);
    let www = none
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate: {none}"));
    assert!(www.starts_with("Bearer"), "WWW-Authenticate: {www}");

    for bad in [
        "Bearer wrong-token-0123456789abcdef".to_string(),
        format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]),
        format!("Bearer {TOKEN}x"),
        format!("Basic {TOKEN}"),
        TOKEN.to_string(),
    ] {
        let r = g.request("GET", path, &[("Authorization", &bad)], None);
        r.expect_problem(401, path);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{r}"
        );
    }
    // Unknown routes do not reveal themselves without a token either.
    let r = g.get("/api/1/nope");
    assert_eq!(r.status, 401, "{r}");
}

#[test]
fn token_auth_accepts_the_right_token_and_healthz_needs_none() {
    let dir = tempfile::tempdir().unwrap();
    let g = token_gantry(dir.path());
    let path = "/api/1/system/images";

    let h = g.get("/healthz");
    let v = h.expect_json(200);
    assert_eq!(v, serde_json::json!({"status": "degraded"}), "{v}");
    // The details are behind the token.
    assert_eq!(g.get(STATUS_PATH).status, 401);
    let auth = format!("Bearer {TOKEN}");
    let r = g.request("GET", STATUS_PATH, &[("Authorization", &auth)], None);
    assert_eq!(r.expect_json(200)["docker"]["reachable"], false, "{r}");

    let r = g.request("GET", path, &[("Authorization", &auth)], None);
    // Past authentication; Docker is down in this test, so the route answers 503.
    r.expect_problem(503, path);
    let r = g.request("GET", "/api/1/nope", &[("Authorization", &auth)], None);
    r.expect_problem(404, "/api/1/nope");
    let g = g.with_token(TOKEN);
    g.get(path).expect_problem(503, path);
}

// ---------------------------------------------------------------------------------------------
// Docker down and back

#[test]
fn docker_down_degrades_health_and_answers_503() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let g = Gantry::builder()
        .docker_host(&format!("unix://{}", sock.display()))
        .start();
    let v = g.health();
    assert_eq!(v["status"], "degraded", "{v}");
    assert_eq!(v["docker"]["reachable"], false, "{v}");
    assert!(
        v["docker"]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "an unreachable Docker should come with an error: {v}"
    );
    for path in [
        "/api/1/system/images",
        "/api/1/system/containers",
        "/api/1/system/volumes",
        "/api/1/system/images/anything",
    ] {
        g.get(path).expect_problem(503, path);
    }
    g.delete("/api/1/system/prune/images")
        .expect_problem(503, "/api/1/system/prune/images");
    // The daemon keeps running.
    let mut g = g;
    assert!(g.try_wait().is_none(), "gantry exited: {}", g.stderr());
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn reconnects_when_docker_appears() {
    require_docker!();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let g = Gantry::builder()
        .docker_host(&format!("unix://{}", sock.display()))
        .probe_interval_secs(1)
        .start();
    assert_eq!(g.health()["docker"]["reachable"], false);
    g.get("/api/1/system/images")
        .expect_problem(503, "/api/1/system/images");

    // dockerd "starts": its socket appears where gantry looks.
    symlink(docker_socket_path(), &sock).unwrap();
    let v = wait_docker_reachable(&g, true, Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "/healthz never reported Docker reachable: {}\n{}",
            g.health(),
            g.stderr()
        )
    });
    assert_eq!(v["status"], "ok", "{v}");
    let r = g.get("/api/1/system/images");
    let list = r.expect_json(200);
    assert!(
        list.as_array().is_some_and(|a| !a.is_empty()),
        "the test image should be listed: {r}"
    );

    // And down again.
    fs::remove_file(&sock).unwrap();
    wait_docker_reachable(&g, false, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("/healthz still says reachable: {}", g.health()));
    g.get("/api/1/system/images")
        .expect_problem(503, "/api/1/system/images");
}

// ---------------------------------------------------------------------------------------------
// systemd notifications and shutdown

struct NotifySocket {
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
    path: String,
    seen: Vec<String>,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            sock,
            path: path.display().to_string(),
            _dir: dir,
            seen: Vec::new(),
        }
    }

    /// Receives one datagram (waiting at most 200 ms) and records its lines.
    fn pump(&mut self) {
        let mut buf = [0u8; 4096];
        if let Ok(n) = self.sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.extend(msg.lines().map(str::to_string));
        }
    }

    /// Waits (bounded) for a recorded line that satisfies `pred`; returns it.
    fn wait_match(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.seen.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.pump();
        }
    }

    /// Waits (bounded) for a line starting with `prefix`; returns it.
    fn wait_line(&mut self, prefix: &str, limit: Duration) -> Option<String> {
        self.wait_match(limit, |l| l.starts_with(prefix))
    }

    fn forget(&mut self) {
        self.seen.clear();
    }
}

#[test]
fn notifies_systemd_ready_status_watchdog_and_stopping() {
    let mut n = NotifySocket::new();
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gantry::builder()
        .docker_host(&format!("unix://{}/no-docker.sock", dir.path().display()))
        .env("NOTIFY_SOCKET", &n.path)
        .env("WATCHDOG_USEC", "2000000")
        .start();
    let limit = Duration::from_secs(10);
    n.wait_line("READY=1", limit)
        .unwrap_or_else(|| panic!("no READY=1; got {:?}\n{}", n.seen, g.stderr()));
    let status = n
        .wait_line("STATUS=", limit)
        .unwrap_or_else(|| panic!("no STATUS=; got {:?}", n.seen));
    assert!(status.len() > "STATUS=".len(), "empty status: {status}");
    // Docker is unreachable here; a status line says so.
    let docker_status = n.wait_match(limit, |l| {
        l.starts_with("STATUS=") && l.to_lowercase().contains("docker")
    });
    assert!(
        docker_status.is_some(),
        "no STATUS= line mentions Docker: {:?}",
        n.seen
    );
    // Half of WatchdogSec = 1 s; several pings within 10 s.
    n.forget();
    n.wait_line("WATCHDOG=1", limit)
        .unwrap_or_else(|| panic!("no WATCHDOG=1; got {:?}\n{}", n.seen, g.stderr()));
    n.forget();
    n.wait_line("WATCHDOG=1", limit)
        .unwrap_or_else(|| panic!("only one WATCHDOG=1; got {:?}", n.seen));

    g.signal(common::Signal::SIGTERM);
    n.wait_line("STOPPING=1", limit).unwrap_or_else(|| {
        panic!(
            "no STOPPING=1 after SIGTERM; got {:?}\n{}",
            n.seen,
            g.stderr()
        )
    });
    let st = g
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("gantry did not exit after SIGTERM:\n{}", g.stderr()));
    assert_eq!(st.code(), Some(0), "exit status {st:?}\n{}", g.stderr());
}

#[test]
fn no_watchdog_pings_when_watchdog_pid_is_another_process() {
    let mut n = NotifySocket::new();
    let dir = tempfile::tempdir().unwrap();
    let _g = Gantry::builder()
        .docker_host(&format!("unix://{}/no-docker.sock", dir.path().display()))
        .env("NOTIFY_SOCKET", &n.path)
        .env("WATCHDOG_USEC", "400000")
        .env("WATCHDOG_PID", "1")
        .start();
    n.wait_line("READY=1", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no READY=1; got {:?}", n.seen));
    // The watchdog is meant for PID 1, not gantry: 2 s is 10 periods without a ping.
    assert_eq!(n.wait_line("WATCHDOG=1", Duration::from_secs(2)), None);
}

#[test]
fn sigint_and_sigterm_exit_0() {
    for sig in [common::Signal::SIGINT, common::Signal::SIGTERM] {
        let mut g = Gantry::start();
        g.signal(sig);
        let st = g
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("gantry did not exit on signal {sig}:\n{}", g.stderr()));
        assert_eq!(
            st.code(),
            Some(0),
            "signal {sig}: {st:?} {:?}\n{}",
            st.signal(),
            g.stderr()
        );
    }
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn shutdown_drops_a_stalled_upload_after_the_grace_period() {
    let _host = require_docker!();
    const GRACE: u64 = 4;
    let mut g = Gantry::builder().shutdown_timeout_secs(GRACE).start();

    // An image upload that never completes: headers, the start of a real `docker save` tar,
    // then nothing. gantry is streaming it into Docker and waiting for more.
    let tar = saved_test_image();
    let mut s = g.connect();
    let head = format!(
        "POST /api/1/system/images HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-tar\r\n\
         Content-Length: {}\r\n\r\n",
        g.addr,
        tar.len()
    );
    write_all(&mut s, head.as_bytes()).unwrap();
    write_all(&mut s, &tar[..8192.min(tar.len() / 2)]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(g.try_wait().is_none(), "gantry died:\n{}", g.stderr());

    let t0 = Instant::now();
    g.signal(common::Signal::SIGTERM);
    // Within the grace period gantry is still there (waiting for the upload) but no longer
    // accepts connections.
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        g.try_wait().is_none(),
        "gantry exited at once instead of waiting for the request in flight:\n{}",
        g.stderr()
    );
    assert!(
        TcpStream::connect(g.addr).is_err(),
        "gantry still accepts connections after SIGTERM"
    );
    let st = g
        .wait_exit(Duration::from_secs(GRACE + 10))
        .unwrap_or_else(|| {
            panic!(
                "gantry did not exit within shutdown_timeout_secs ({GRACE}) + 10 s:\n{}",
                g.stderr()
            )
        });
    assert_eq!(st.code(), Some(0), "exit status {st:?}\n{}", g.stderr());
    eprintln!("exited {:?} after SIGTERM", t0.elapsed());

    // The stalled connection was dropped.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "the connection should be closed, got {e}"
        ),
    }
}
