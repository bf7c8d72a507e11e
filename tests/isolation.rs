//! Hostile app bundles against the real test dockerd: each tries to reach the host or another
//! app, and each must be refused (a 400 at import naming the service, the key and the switch
//! of `[apps]` that would allow it, or a failed start), never run.

mod common;

use std::time::{Duration, Instant};

use common::bundle::{app_zip, import, zip_of};
use common::{
    app_containers, docker, docker_ok, enc, enc_uri, test_image, unique, wait_for, Gantry,
};

const IMPORT: &str = "/api/1/transfer/import";

/// A service of the test image running `script` (and then idling, stoppable at once).
fn service(name: &str, script: &str) -> String {
    format!(
        "  {name}:\n    image: {}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; {script} sleep 600 & wait\"]\n    stop_grace_period: 1s\n",
        test_image()
    )
}

/// [`service`] with more keys (lines of `    key: value\n`).
fn service_with(name: &str, script: &str, keys: &str) -> String {
    service(name, script).replace(
        "    stop_grace_period",
        &format!("{keys}    stop_grace_period"),
    )
}

/// Imports `zip` and asserts a 400 whose detail names every one of `words`.
fn refused(g: &Gantry, zip: &[u8], words: &[&str]) -> String {
    let detail = import(g, zip).expect_problem(400, IMPORT);
    for w in words {
        assert!(
            detail.contains(w),
            "the refusal does not name {w:?}: {detail}"
        );
    }
    detail
}

fn docker_gantry(host: &str) -> Gantry {
    Gantry::builder().docker_host(host).start()
}

/// Removes an app (its containers and volumes) when dropped.
struct App<'a> {
    g: &'a Gantry,
    id: String,
}

impl App<'_> {
    fn path(&self) -> String {
        format!("/api/1/transfer/apps/{}", enc(&self.id))
    }
    fn start(&self) -> serde_json::Value {
        self.g
            .put(&format!("{}/start", self.path()))
            .expect_json(200)
    }
    fn stop(&self) {
        let down = self
            .g
            .put(&format!("{}/stop", self.path()))
            .expect_json(200);
        assert_eq!(down["ExitCode"], 0, "{down}");
    }
}

impl Drop for App<'_> {
    fn drop(&mut self) {
        let path = format!(
            "{}?force=true&remove_images=false&remove_volumes=true",
            self.path()
        );
        let _ = self.g.try_request("DELETE", &path, &[], None);
    }
}

fn imported<'a>(g: &'a Gantry, zip: &[u8]) -> App<'a> {
    let v = import(g, zip).expect_json(200);
    App {
        g,
        id: v["Id"].as_str().unwrap().to_string(),
    }
}

/// The compose project of a running app, as its containers' label says.
fn project_of(app: &App<'_>) -> String {
    let containers = app_containers(&app.id, false);
    let first = containers.first().expect("the app has a container");
    let label = "{{index .Config.Labels \"com.docker.compose.project\"}}";
    docker_ok(&["inspect", "-f", label, first])
        .trim()
        .to_string()
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_volume_that_binds_the_host_is_refused() {
    let g = docker_gantry(&require_docker!());
    let marker = tempfile::tempdir().unwrap();
    std::fs::write(marker.path().join("secret"), "HOST-SECRET").unwrap();
    let vol = unique("hostroot");
    let compose = format!(
        "services:\n{}volumes:\n  {vol}:\n    driver_opts: {{type: none, o: bind, device: {}}}\n",
        service("thief", "cat /v/secret; ").replace(
            "    stop_grace_period",
            &format!("    volumes: [\"{vol}:/v\"]\n    stop_grace_period")
        ),
        marker.path().display()
    );
    let name = unique("Thief");
    refused(
        &g,
        &app_zip(&name, "1", &compose),
        &[
            &format!("volume \"{vol}\""),
            "driver_opts",
            "apps.allow_volume_drivers",
        ],
    );
    // Nothing of it reached Docker or the store.
    assert!(!docker(&["volume", "inspect", &format!("{name}1_{vol}")])
        .status
        .success());
    g.get("/api/1/transfer/apps").expect_empty(204);
    // A driver other than local is refused the same way.
    let other = compose.replace(
        "driver_opts: {type: none, o: bind, device: ",
        "driver: vieux/sshfs\n    labels: {x: ",
    );
    refused(
        &g,
        &app_zip(&name, "1", &other),
        &["driver", "apps.allow_volume_drivers"],
    );
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn the_hosts_namespaces_are_refused() {
    let host = require_docker!();
    let g = docker_gantry(&host);
    let svc = service("web", "");
    let cases = [
        (
            svc.replace(
                "    stop_grace_period",
                "    network_mode: host\n    stop_grace_period",
            ),
            "network_mode: host",
        ),
        (
            svc.replace(
                "    stop_grace_period",
                "    pid: host\n    stop_grace_period",
            ),
            "pid: host",
        ),
        (
            svc.replace(
                "    stop_grace_period",
                "    ipc: host\n    stop_grace_period",
            ),
            "ipc: host",
        ),
        (
            format!(
                "{}networks:\n  h:\n    external: {{name: host}}\n",
                svc.replace(
                    "    stop_grace_period",
                    "    networks: [h]\n    stop_grace_period"
                )
            ),
            "the host's network",
        ),
    ];
    for (body, key) in cases {
        let compose = format!("services:\n{body}");
        refused(
            &g,
            &app_zip(&unique("Hosty"), "1", &compose),
            &[key, "apps.allow_host_namespaces"],
        );
    }
    let compose = format!(
        "services:\n{}",
        svc.replace(
            "    stop_grace_period",
            "    network_mode: \"container:gantry\"\n    stop_grace_period"
        )
    );
    refused(
        &g,
        &app_zip(&unique("Joiner"), "1", &compose),
        &[
            "service \"web\"",
            "container:gantry",
            "apps.allow_shared_resources",
        ],
    );
    // With the switch on, the operator's choice is honoured.
    let g = Gantry::builder()
        .docker_host(&host)
        .config("[apps]\nallow_host_namespaces = true")
        .start();
    let compose = format!(
        "services:\n{}",
        svc.replace(
            "    stop_grace_period",
            "    network_mode: host\n    stop_grace_period"
        )
    );
    let _app = imported(&g, &app_zip(&unique("Hosty"), "1", &compose));
}

/// App A keeps a secret in its volume; app B names that volume (external, or by `name`) or
/// joins A's network: refused at import, and B never runs.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn another_apps_volume_and_network_are_refused() {
    let g = docker_gantry(&require_docker!());
    let a_name = unique("Owner");
    let a_compose = format!(
        "services:\n{}volumes:\n  data: {{}}\nnetworks:\n  default: {{}}\n",
        service_with(
            "db",
            "echo A-SECRET > /data/secret; ",
            "    volumes: [\"data:/data\"]\n"
        )
    );
    let a = imported(&g, &app_zip(&a_name, "1", &a_compose));
    assert_eq!(a.start()["ExitCode"], 0);
    let project = project_of(&a);
    let a_volume = format!("{project}_data");
    let a_network = format!("{project}_default");
    assert!(
        docker(&["volume", "inspect", &a_volume]).status.success(),
        "A's volume {a_volume}"
    );
    let reader = service("reader", "cat /stolen/secret; ").replace(
        "    stop_grace_period",
        "    volumes: [\"stolen:/stolen\"]\n    stop_grace_period",
    );
    for decl in [
        format!("external: {{name: {a_volume}}}"),
        format!("name: {a_volume}"),
    ] {
        let compose = format!("services:\n{reader}volumes:\n  stolen: {{{decl}}}\n");
        refused(
            &g,
            &app_zip(&unique("Reader"), "1", &compose),
            &[
                "volume \"stolen\"",
                "another app",
                "apps.allow_shared_resources",
            ],
        );
    }
    let joiner = service("spy", "").replace(
        "    stop_grace_period",
        "    networks: [a]\n    stop_grace_period",
    );
    let compose =
        format!("services:\n{joiner}networks:\n  a: {{external: {{name: {a_network}}}}}\n");
    refused(
        &g,
        &app_zip(&unique("Spy"), "1", &compose),
        &[
            "network \"a\"",
            "another app",
            "apps.allow_shared_resources",
        ],
    );
    // A volume no app owns follows the same switch.
    let loose = unique("loose");
    docker_ok(&["volume", "create", &loose]);
    let compose =
        format!("services:\n{reader}volumes:\n  stolen: {{external: {{name: {loose}}}}}\n");
    refused(
        &g,
        &app_zip(&unique("Reader"), "1", &compose),
        &["belongs to no app", "apps.allow_shared_resources"],
    );
    let _ = docker(&["volume", "rm", &loose]);
    // Only A exists.
    let apps = g.get("/api/1/transfer/apps").expect_json(200);
    assert_eq!(apps.as_array().unwrap().len(), 1, "{apps}");
    a.stop();
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn ports_logging_and_gantrys_labels_are_refused() {
    let g = docker_gantry(&require_docker!());
    let port = g.addr.port();
    let with = |extra: &str| {
        format!(
            "services:\n{}",
            service("web", "").replace(
                "    stop_grace_period",
                &format!("{extra}    stop_grace_period")
            )
        )
    };
    refused(
        &g,
        &app_zip(
            &unique("Thief"),
            "1",
            &with(&format!("    ports: [\"{port}:80\"]\n")),
        ),
        &["service \"web\"", "ports", "gantry's own listener"],
    );
    refused(
        &g,
        &app_zip(&unique("Talker"), "1", &with("    logging: {driver: syslog, options: {syslog-address: \"udp://198.18.0.1:514\"}}\n")),
        &["service \"web\"", "logging.driver: syslog", "apps.allow_logging_drivers"],
    );
    refused(
        &g,
        &app_zip(
            &unique("Liar"),
            "1",
            &with("    labels: {io.gantry.app-id: \"Other:1\"}\n"),
        ),
        &["io.gantry.app-id", "gantry's own"],
    );
    // The listener's port for UDP, or another port, is fine.
    let _ok = imported(
        &g,
        &app_zip(
            &unique("Udp"),
            "1",
            &with(&format!("    ports: [\"{port}:80/udp\"]\n")),
        ),
    );
}

/// A `.env` whose variables each repeat the one before four times (4^40 bytes unbounded):
/// refused in well under a second, and gantry stays small and serving.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn an_interpolation_bomb_is_refused_at_once() {
    let g = docker_gantry(&require_docker!());
    let mut env = String::from("A0=0123456789abcdef\n");
    for i in 1..40 {
        let p = i - 1;
        env += &format!("A{i}=${{A{p}}}${{A{p}}}${{A{p}}}${{A{p}}}\n");
    }
    assert!(env.len() < 1500, "{}", env.len());
    let name = unique("Bomb");
    let compose = format!(
        "services:\n{}",
        service_with("web", "", "    environment: [\"X=${A39}\"]\n")
    );
    let zip = zip_of(&[
        (
            "config.yml",
            format!("Name: {name}\nVersion: 1\n").as_bytes(),
        ),
        ("compose.yaml", compose.as_bytes()),
        (".env", env.as_bytes()),
    ]);
    let started = Instant::now();
    let detail = refused(&g, &zip, &[".env", "variable \"A"]);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(900), "took {took:?}: {detail}");
    // Also from the compose file itself: many references to a large value.
    let big = "y".repeat(60 << 10);
    let refs: String = (0..100)
        .map(|i| format!("      - \"V{i}=${{BIG}}\"\n"))
        .collect();
    let compose = format!(
        "services:\n{}",
        service("web", "").replace(
            "    stop_grace_period",
            &format!("    environment:\n{refs}    stop_grace_period")
        )
    );
    let zip = zip_of(&[
        (
            "config.yml",
            format!("Name: {name}\nVersion: 2\n").as_bytes(),
        ),
        ("compose.yaml", compose.as_bytes()),
        (".env", format!("BIG={big}\n").as_bytes()),
    ]);
    refused(&g, &zip, &["service \"web\"", "environment", "bytes"]);
    let rss = vm_rss_kib(g.pid());
    assert!(
        rss < 200 * 1024,
        "gantry's RSS is {rss} KiB after the bombs"
    );
    assert_eq!(g.get("/healthz").status, 200);
}

fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// An app that writes a lot of log cannot make gantry hold it: without `lines`, its logs
/// are the last 1000 lines of each container, streamed as Docker sends them (chunked, no
/// length known in advance); `lines=-1` still asks for all.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn an_apps_logs_are_bounded_by_default_and_streamed() {
    let g = docker_gantry(&require_docker!());
    let chatty = service(
        "chatty",
        "i=1; while [ $$i -le 1500 ]; do echo line $$i; i=$$((i+1)); done; ",
    );
    let app = imported(
        &g,
        &app_zip(&unique("Chatty"), "1", &format!("services:\n{chatty}")),
    );
    assert_eq!(app.start()["ExitCode"], 0);
    let logs = format!("{}/logs", app.path());
    let all = wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        let v = g.get(&format!("{logs}?lines=-1")).expect_json(200);
        (v["Lines"].as_array()?.len() == 1500).then_some(v)
    });
    assert!(all.is_some(), "the 1500 lines never showed");
    let r = g.get(&logs);
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("content-length"), None, "not streamed");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let v = r.json();
    let lines = v["Lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1000);
    let line = |i: usize| lines[i]["Line"].as_str().unwrap();
    assert!(line(0).ends_with(" | line 501"), "{}", line(0));
    assert!(line(999).ends_with(" | line 1500"), "{}", line(999));
    assert_eq!(v["RawOutput"].as_str().unwrap().lines().count(), 1000);
    app.stop();
}

/// An app whose `planter` service bind-mounts its data directory and, once running, replaces
/// `data/link` and `data/env` with symlinks to a host directory and a host file. On the next
/// start, `binder`'s bind mount of `data/link` or `reader`'s `env_file: data/env` would
/// follow them: the start is refused instead, and the host's marker is never read (not by
/// a container, not by the Files API, not into an export: its access time stays old).
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_planted_symlink_is_not_followed_on_the_next_start() {
    let g = docker_gantry(&require_docker!());
    let binder = service("binder", "cat /mnt/marker; ").replace(
        "    stop_grace_period",
        "    volumes: [\"./data/link:/mnt:ro\"]\n    stop_grace_period",
    );
    plant_and_restart(
        &g,
        "binder",
        &binder,
        &["bind mount source", "symbolic link"],
    );
    let reader = service("reader", "env; ").replace(
        "    stop_grace_period",
        "    env_file: data/env\n    stop_grace_period",
    );
    plant_and_restart(&g, "reader", &reader, &["env file", "symbolic link"]);
}

/// Imports and starts `victim` (a service named `name`) with the planter, then starts the
/// app again and expects a refusal naming `words`.
fn plant_and_restart(g: &Gantry, name: &str, victim: &str, words: &[&str]) {
    let outside = tempfile::tempdir().unwrap();
    let marker = "MARKER-never-to-be-read";
    let marker_file = outside.path().join("marker");
    std::fs::write(&marker_file, format!("{marker}\n")).unwrap();
    std::fs::write(outside.path().join("env"), format!("STOLEN={marker}\n")).unwrap();
    // An access time older than the change time: relatime updates it on the next read.
    for file in [&marker_file, &outside.path().join("env")] {
        common::run_ok("touch", &["-a", "-d", "@946684800", file.to_str().unwrap()]);
    }
    let o = outside.path().display();
    let plant = format!("sleep 1; rm -rf /data/link /data/env; ln -s {o} /data/link; ln -s {o}/env /data/env; touch /data/planted; ");
    let planter = service("planter", &plant).replace(
        "    stop_grace_period",
        &format!(
            "    volumes: [\"./data:/data\"]\n    depends_on: [{name}]\n    stop_grace_period"
        ),
    );
    let app_name = unique("Planter");
    let zip = zip_of(&[
        (
            "config.yml",
            format!("Name: {app_name}\nVersion: 1\n").as_bytes(),
        ),
        (
            "compose.yaml",
            format!("services:\n{victim}{planter}").as_bytes(),
        ),
        ("data/", b""),
        ("data/link/", b""),
        ("data/link/harmless", b"nothing here"),
        ("data/env", b"FINE=1\n"),
    ]);
    let app = imported(g, &zip);
    let up = app.start();
    assert_eq!(up["ExitCode"], 0, "{up}");
    let data = format!("/api/1/files/{}", enc_uri(&format!("{}//data", app.id)));
    let planted = wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        g.get(&data).text().contains("planted").then_some(())
    });
    assert!(planted.is_some(), "the planter never ran");
    // The listing leaves the symlinks out.
    let listing = g.get(&data).text();
    assert!(
        !listing.contains("\"env\"") && !listing.contains("marker"),
        "{listing}"
    );
    app.stop();

    let path = format!("{}/start", app.path());
    let detail = g.put(&path).expect_problem(400, &path);
    for w in words.iter().chain(&[&format!("service \"{name}\"")[..]]) {
        assert!(detail.contains(w), "{w:?} is not in: {detail}");
    }
    assert!(
        app_containers(&app.id, true).is_empty(),
        "a container was created"
    );
    // The Files API and the export do not follow them either.
    let env = format!("/api/1/files/{}", enc_uri(&format!("{}//data/env", app.id)));
    let r = g.get(&env);
    assert_eq!(r.status, 400, "{r}");
    let export = g.get(&format!("/api/1/transfer/export/{}", enc(&app.id)));
    assert_eq!(export.status, 200, "{export}");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(export.body.clone())).unwrap();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut entry, &mut text);
        assert!(
            !text.contains(marker),
            "{:?} carries the host's file",
            entry.name()
        );
    }
    use std::os::unix::fs::MetadataExt;
    for file in [&marker_file, &outside.path().join("env")] {
        let atime = std::fs::metadata(file).unwrap().atime();
        assert_eq!(atime, 946_684_800, "the host's {} was read", file.display());
    }
}
