//! Compose against the real test dockerd (`GANTRY_TEST_DOCKER_HOST`, started by
//! `scripts/test.sh`, which also runs the tests inside dockerd's network namespace, so
//! 127.0.0.1 ports published by containers are reachable here). Without it these tests skip
//! loudly, except under `CI=true`, where that is a failure.
//!
//! Every test uses its own project names and removes what it created, also when it fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::TcpStream;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use serde_json::Value;

use super::plan::labels::LABEL_APP_ID;
use super::plan::{LABEL_CONFIG_HASH, LABEL_PROJECT, LABEL_SERVICE};
use super::{ComposeError, ComposePolicy, ComposeProject, DownOptions};
use crate::core::docker::DockerEngine;
use crate::core::engine::{ContainerEngine, Filter};
use crate::testutil::{docker_host, image, in_ci, unique};

fn engine(host: &str) -> DockerEngine {
    DockerEngine::new(host, Duration::from_secs(60), Duration::from_secs(300))
}

fn unique_project(label: &str) -> String {
    format!("{}{label}", unique("gtc"))
}

fn collect_lines() -> (
    std::sync::Arc<Mutex<Vec<String>>>,
    impl Fn(&str) + Send + Sync,
) {
    let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    (lines, move |s: &str| l2.lock().unwrap().push(s.to_string()))
}

/// Removes everything labelled with `project`, whatever state the test left behind.
async fn force_cleanup(engine: &dyn ContainerEngine, project: &str) {
    let f = [Filter::Label(format!("{LABEL_PROJECT}={project}"))];
    for c in engine
        .list_containers_filtered(&f)
        .await
        .unwrap_or_default()
    {
        let _ = engine
            .remove_container(c.id.as_deref().unwrap_or_default(), true, true)
            .await;
    }
    for n in engine.list_networks(&f).await.unwrap_or_default() {
        let _ = engine
            .remove_network(n.id.as_deref().unwrap_or_default())
            .await;
    }
    for v in engine.list_volumes_filtered(&f).await.unwrap_or_default() {
        let _ = engine.remove_volume(&v.name, true).await;
    }
}

/// Runs `body`, then cleans `projects` up whatever happened, then re-raises a panic.
async fn with_cleanup<F>(engine: &dyn ContainerEngine, projects: &[&str], body: F)
where
    F: std::future::Future<Output = ()>,
{
    let res = AssertUnwindSafe(body).catch_unwind().await;
    for p in projects {
        force_cleanup(engine, p).await;
    }
    if let Err(panic) = res {
        std::panic::resume_unwind(panic);
    }
}

async fn inspect(engine: &dyn ContainerEngine, name: &str) -> Value {
    serde_json::to_value(engine.inspect_container(name).await.unwrap()).unwrap()
}

async fn project_containers(
    engine: &dyn ContainerEngine,
    project: &str,
) -> BTreeMap<String, String> {
    engine
        .list_containers_filtered(&[Filter::Label(format!("{LABEL_PROJECT}={project}"))])
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            let svc = c.labels.unwrap_or_default()[LABEL_SERVICE].clone();
            (svc, c.id.unwrap_or_default())
        })
        .collect()
}

fn load(dir: &Path, project: &str, vars: &[(&str, &str)]) -> ComposeProject {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ComposeProject::load(
        dir,
        project,
        &format!("Test App {project}:1.0"),
        &env,
        &ComposePolicy::default(),
    )
    .unwrap()
}

const THREE_SERVICES: &str = r#"
services:
  db:
    image: ${IMAGE}
    command: ["sh", "-c", "echo ok > /data/ok && exec sleep 3600"]
    volumes: [data:/data]
    networks:
      back:
        aliases: [database]
    healthcheck:
      test: ["CMD", "cat", "/data/ok"]
      interval: 1s
      timeout: 2s
      retries: 30
    stop_grace_period: 1s
  init:
    image: ${IMAGE}
    command: ["sh", "-c", "exit 0"]
    networks: [back]
  web:
    image: ${IMAGE}
    command: ["httpd", "-f", "-p", "80", "-h", "/"]
    ports: ["127.0.0.1:${WEB_PORT}:80"]
    environment:
      GREETING: ${GREETING:-hello}
    depends_on:
      db: {condition: service_healthy}
      init: {condition: service_completed_successfully}
    networks: [back, default]
    stop_grace_period: 1s
networks:
  back: {}
volumes:
  data: {}
"#;

/// The port Docker assigned to the container's `port` (`80/tcp`) on 127.0.0.1.
fn published_port(container: &Value, port: &str) -> u16 {
    let bound = &container["NetworkSettings"]["Ports"][port][0];
    assert_eq!(bound["HostIp"], "127.0.0.1", "{bound}");
    bound["HostPort"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{port} is not published: {bound}"))
}

/// web's port is published without a host port (`127.0.0.1::80`): Docker picks a free one,
/// read back from inspect, so no port chosen here can be taken by another test meanwhile.
#[tokio::test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
async fn up_is_idempotent_recreates_changes_and_down_cleans() {
    let Some(host) = docker_host("compose::up_is_idempotent_recreates_changes_and_down_cleans")
    else {
        return;
    };
    let engine = engine(&host);
    let engine: &dyn ContainerEngine = &engine;
    let project = unique_project("three");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("docker-compose.yml"), THREE_SERVICES).unwrap();
    std::fs::write(dir.path().join(".env"), format!("IMAGE={}\n", image())).unwrap();
    let project = project.as_str();

    with_cleanup(engine, &[project], async {
        let p = load(dir.path(), project, &[("WEB_PORT", "")]);
        let first = first_up_creates_everything(engine, &p).await;
        check_web(engine, project).await;
        check_db_and_init(engine, project).await;
        check_network_and_volume_labels(engine, project).await;
        second_up_changes_nothing(engine, &p, &first).await;
        // Change web's environment: only web is recreated.
        let p2 = load(
            dir.path(),
            project,
            &[("WEB_PORT", ""), ("GREETING", "changed")],
        );
        changed_environment_recreates_only_web(engine, &p2, &first).await;
        down_removes_everything(engine, &p2).await;
    })
    .await;
}

/// The first `up`: every network, volume and container created, web after db's health and
/// init's completion. Returns the container ids by service.
async fn first_up_creates_everything(
    engine: &dyn ContainerEngine,
    p: &ComposeProject,
) -> BTreeMap<String, String> {
    let project = p.name();
    let (lines, on_line) = collect_lines();
    let res = tokio::time::timeout(Duration::from_secs(120), p.up(engine, &on_line))
        .await
        .expect("up took too long")
        .unwrap_or_else(|e| panic!("up failed: {e}\n{:#?}", lines.lock().unwrap()));
    let text = res.lines.join("\n");
    assert_eq!(res.lines, *lines.lock().unwrap(), "callback saw every line");
    for want in [
        format!("Creating network \"{project}_back\" with the default driver"),
        format!("Creating network \"{project}_default\" with the default driver"),
        format!("Creating volume \"{project}_data\" with default driver"),
        format!("Creating {project}_db_1   ... done"),
        format!("Creating {project}_web_1  ... done"),
        format!("Creating {project}_init_1 ... done"),
    ] {
        assert!(text.contains(&want), "missing {want:?} in\n{text}");
    }
    // web waited for db's health and init's completion.
    let pos = |s: &str| res.lines.iter().position(|l| l.starts_with(s)).unwrap();
    assert!(
        pos(&format!("Creating {project}_db_1   ... done"))
            < pos(&format!("Creating {project}_web_1"))
    );
    assert!(
        pos(&format!("Creating {project}_init_1 ... done"))
            < pos(&format!("Creating {project}_web_1"))
    );
    assert!(res.pulled_images.is_empty());
    assert!(res.running_containers.contains(&format!("{project}_db_1")));
    assert!(res.running_containers.contains(&format!("{project}_web_1")));
    let first = project_containers(engine, project).await;
    assert_eq!(first.keys().collect::<Vec<_>>(), ["db", "init", "web"]);
    first
}

/// web: compose's labels, its port published on 127.0.0.1 (and answering), its
/// environment and both its networks.
async fn check_web(engine: &dyn ContainerEngine, project: &str) {
    let web = inspect(engine, &format!("{project}_web_1")).await;
    let labels = &web["Config"]["Labels"];
    for (k, v) in [
        ("com.docker.compose.project", project),
        ("com.docker.compose.service", "web"),
        ("com.docker.compose.oneoff", "False"),
        ("com.docker.compose.container-number", "1"),
        ("com.docker.compose.version", "1.29.2"),
    ] {
        assert_eq!(labels[k], v, "{k}");
    }
    assert_eq!(labels[LABEL_APP_ID], format!("Test App {project}:1.0"));
    assert!(labels[LABEL_CONFIG_HASH]
        .as_str()
        .is_some_and(|h| h.len() == 16));
    assert_eq!(
        web["HostConfig"]["PortBindings"]["80/tcp"],
        serde_json::json!([{"HostIp": "127.0.0.1", "HostPort": ""}])
    );
    assert!(web["Config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&Value::from("GREETING=hello")));
    let nets = web["NetworkSettings"]["Networks"].as_object().unwrap();
    let mut names: Vec<&String> = nets.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [&format!("{project}_back"), &format!("{project}_default")]
    );
    // The published port answers (busybox httpd; 404 for / is fine).
    let port = published_port(&web, "80/tcp");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "127.0.0.1:{port} never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// db: healthy, with its alias and its volume; init: completed.
async fn check_db_and_init(engine: &dyn ContainerEngine, project: &str) {
    let db = inspect(engine, &format!("{project}_db_1")).await;
    assert_eq!(db["State"]["Health"]["Status"], "healthy");
    let aliases = db["NetworkSettings"]["Networks"][format!("{project}_back")]["Aliases"]
        .as_array()
        .unwrap()
        .clone();
    assert!(aliases.contains(&Value::from("db")) && aliases.contains(&Value::from("database")));
    assert_eq!(db["Mounts"][0]["Name"], format!("{project}_data"));
    let init = inspect(engine, &format!("{project}_init_1")).await;
    assert_eq!(init["State"]["Status"], "exited");
    assert_eq!(init["State"]["ExitCode"], 0);
}

/// Networks and volume carry the compose labels.
async fn check_network_and_volume_labels(engine: &dyn ContainerEngine, project: &str) {
    let nets = engine
        .list_networks(&[Filter::Label(format!("{LABEL_PROJECT}={project}"))])
        .await
        .unwrap();
    assert_eq!(nets.len(), 2);
    for n in &nets {
        let l = n.labels.clone().unwrap();
        assert!(l.contains_key("com.docker.compose.network"));
        assert_eq!(l["com.docker.compose.version"], "1.29.2");
    }
    let vols = engine
        .list_volumes_filtered(&[Filter::Label(format!("{LABEL_PROJECT}={project}"))])
        .await
        .unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!(vols[0].labels["com.docker.compose.volume"], "data");
}

/// Again: nothing is recreated.
async fn second_up_changes_nothing(
    engine: &dyn ContainerEngine,
    p: &ComposeProject,
    first: &BTreeMap<String, String>,
) {
    let project = p.name();
    let (_, on_line) = collect_lines();
    let res = p.up(engine, &on_line).await.unwrap();
    assert_eq!(
        project_containers(engine, project).await,
        *first,
        "{:#?}",
        res.lines
    );
    assert!(
        res.lines
            .iter()
            .any(|l| l == &format!("{project}_web_1 is up-to-date")),
        "{:#?}",
        res.lines
    );
    assert!(!res
        .lines
        .iter()
        .any(|l| l.starts_with("Creating") || l.starts_with("Recreating")));
}

async fn changed_environment_recreates_only_web(
    engine: &dyn ContainerEngine,
    p2: &ComposeProject,
    first: &BTreeMap<String, String>,
) {
    let project = p2.name();
    let (_, on_line) = collect_lines();
    let res = p2.up(engine, &on_line).await.unwrap();
    let second = project_containers(engine, project).await;
    assert_eq!(second["db"], first["db"]);
    assert_eq!(second["init"], first["init"]);
    assert_ne!(second["web"], first["web"]);
    assert!(
        res.lines
            .iter()
            .any(|l| l == &format!("Recreating {project}_web_1  ... done")),
        "{:#?}",
        res.lines
    );
    let web = inspect(engine, &format!("{project}_web_1")).await;
    assert!(web["Config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&Value::from("GREETING=changed")));
    let status = p2.status(engine).await.unwrap();
    assert_eq!(status.len(), 3);
    let web = status.iter().find(|s| s.service == "web").unwrap();
    assert!(web.containers[0].running);
}

/// down removes containers (web, the dependent, stopped before db), networks and (asked
/// to) volumes.
async fn down_removes_everything(engine: &dyn ContainerEngine, p: &ComposeProject) {
    let project = p.name();
    let (_, on_line) = collect_lines();
    let opts = DownOptions {
        remove_volumes: true,
        ..Default::default()
    };
    let res = tokio::time::timeout(Duration::from_secs(60), p.down(engine, &opts, &on_line))
        .await
        .expect("down took too long")
        .unwrap();
    let text = res.lines.join("\n");
    for want in [
        format!("Stopping {project}_web_1  ... done"),
        format!("Stopping {project}_db_1   ... done"),
        format!("Removing {project}_init_1 ... done"),
        format!("Removing network {project}_back"),
        format!("Removing volume {project}_data"),
    ] {
        assert!(text.contains(&want), "missing {want:?} in\n{text}");
    }
    let pos = |s: &str| res.lines.iter().position(|l| l.starts_with(s)).unwrap();
    assert!(
        pos(&format!("Stopping {project}_web_1  ... done"))
            < pos(&format!("Stopping {project}_db_1"))
    );
    let f = [Filter::Label(format!("{LABEL_PROJECT}={project}"))];
    assert!(engine
        .list_containers_filtered(&f)
        .await
        .unwrap()
        .is_empty());
    assert!(engine.list_networks(&f).await.unwrap().is_empty());
    assert!(engine.list_volumes_filtered(&f).await.unwrap().is_empty());
}

/// `yaml` as the compose file of project `project` in `dir`, with no variables.
fn from_yaml(dir: &Path, yaml: &str, project: &str) -> ComposeProject {
    ComposeProject::from_text(
        dir,
        &dir.join("compose.yaml"),
        yaml,
        project,
        project,
        &HashMap::new(),
        &ComposePolicy::default(),
    )
    .unwrap()
}

#[tokio::test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
async fn failures_are_clear_and_bounded() {
    let Some(host) = docker_host("compose::failures_are_clear_and_bounded") else {
        return;
    };
    let engine = engine(&host);
    let engine: &dyn ContainerEngine = &engine;
    let dir = tempfile::tempdir().unwrap();
    let missing = unique_project("missing");
    let failing = unique_project("failing");
    let unhealthy = unique_project("unhealthy");

    with_cleanup(engine, &[&missing, &failing, &unhealthy], async {
        a_missing_image_is_named(engine, dir.path(), &missing).await;
        a_failed_dependency_keeps_its_dependent_uncreated(engine, dir.path(), &failing).await;
        the_wait_for_health_is_bounded(engine, dir.path(), &unhealthy).await;
    })
    .await;
}

/// A missing image that cannot be pulled: the error names it, nothing is created.
async fn a_missing_image_is_named(engine: &dyn ContainerEngine, dir: &Path, project: &str) {
    let p = from_yaml(
        dir,
        "services: {a: {image: gantry-test/does-not-exist:0}}",
        project,
    );
    let (lines, on_line) = collect_lines();
    let e = tokio::time::timeout(Duration::from_secs(120), p.up(engine, &on_line))
        .await
        .expect("pull attempt took too long")
        .unwrap_err();
    match &e {
        ComposeError::Image { image, .. } => assert_eq!(image, "gantry-test/does-not-exist:0"),
        other => panic!("{other:?}"),
    }
    let lines = lines.lock().unwrap().clone();
    assert_eq!(
        lines.first().unwrap(),
        "Pulling a (gantry-test/does-not-exist:0)..."
    );
    assert!(lines
        .last()
        .unwrap()
        .starts_with("ERROR: image \"gantry-test/does-not-exist:0\""));
    let f = [Filter::Label(format!("{LABEL_PROJECT}={project}"))];
    assert!(engine.list_networks(&f).await.unwrap().is_empty());
}

/// A dependency that fails: the dependent is never created.
async fn a_failed_dependency_keeps_its_dependent_uncreated(
    engine: &dyn ContainerEngine,
    dir: &Path,
    project: &str,
) {
    let img = image();
    let yaml = format!(
        "services:\n  job: {{image: {img}, command: [sh, -c, 'exit 3']}}\n  app: {{image: {img}, command: [sleep, '60'], depends_on: {{job: {{condition: service_completed_successfully}}}}}}\n"
    );
    let p = from_yaml(dir, &yaml, project);
    let (_, on_line) = collect_lines();
    let e = p.up(engine, &on_line).await.unwrap_err();
    match &e {
        ComposeError::Dependency {
            service,
            dependency,
            message,
        } => {
            assert_eq!((service.as_str(), dependency.as_str()), ("app", "job"));
            assert!(message.contains("exit code 3"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let left = project_containers(engine, project).await;
    assert_eq!(left.keys().collect::<Vec<_>>(), ["job"]);
}

/// A dependency that never becomes healthy: the wait is bounded.
async fn the_wait_for_health_is_bounded(engine: &dyn ContainerEngine, dir: &Path, project: &str) {
    let img = image();
    let yaml = format!(
        "services:\n  db: {{image: {img}, command: [sleep, '60'], stop_grace_period: 1s, healthcheck: {{test: [CMD, 'false'], interval: 1s, retries: 1000}}}}\n  app: {{image: {img}, command: [sleep, '60'], depends_on: {{db: {{condition: service_healthy}}}}}}\n  plain: {{image: {img}, command: [sleep, '60'], depends_on: {{app: {{condition: service_healthy}}}}}}\n"
    );
    let mut p = from_yaml(dir, &yaml, project);
    p.set_wait_timeout(Duration::from_secs(3));
    let started = Instant::now();
    let (_, on_line) = collect_lines();
    let e = p.up(engine, &on_line).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(60));
    let e = e.to_string();
    assert!(e.contains("did not become healthy within 3s"), "{e}");
}

/// Runs docker-compose 1.29.2 against the test daemon; its output when it fails.
fn try_docker_compose(
    dir: &Path,
    host: &str,
    project: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(), String> {
    let mut cmd = Command::new("timeout");
    cmd.arg("180")
        .arg("docker-compose")
        .args(["-H", host, "-p", project])
        .args(args)
        .current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("cannot run docker-compose");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "docker-compose {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn docker_compose(dir: &Path, host: &str, project: &str, args: &[&str], env: &[(&str, &str)]) {
    try_docker_compose(dir, host, project, args, env).unwrap_or_else(|e| panic!("{e}"));
}

/// A host port to publish on 127.0.0.1: below the ephemeral range (where neither the kernel
/// nor Docker picks ports by itself), spread by process and call. Another test may still
/// hold it: see [`up_on_a_free_port`].
fn port_candidate() -> u16 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let spread = (std::process::id() ^ nanos).wrapping_add(call.wrapping_mul(7919));
    20000 + (spread % 10000) as u16
}

/// Runs `up(port)` with candidate ports until Docker does not answer that the port is in
/// use (at most five); returns the port that worked. `up` is idempotent: a retry recreates
/// only what publishes the port.
async fn up_on_a_free_port<F, Fut>(mut up: F) -> String
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut last = String::new();
    for _ in 0..5 {
        let port = port_candidate().to_string();
        match up(port.clone()).await {
            Ok(()) => return port,
            Err(e)
                if e.contains("port is already allocated")
                    || e.contains("address already in use") =>
            {
                last = e
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("five ports in a row were in use; the last: {last}");
}

fn docker_compose_available() -> bool {
    Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

const DIFFERENTIAL: &str = r#"
services:
  db:
    image: ${IMAGE}
    command: sh -c 'echo ok > /data/ok && exec sleep 3600'
    volumes:
      - data:/data
      - ./conf:/conf:ro
      - type: volume
        source: cache
        target: /cache
    networks:
      back:
        aliases: [database, store]
    healthcheck:
      test: ["CMD", "cat", "/data/ok"]
      interval: 1s
      timeout: 2s
      retries: 30
      start_period: 1s
    restart: unless-stopped
    environment:
      - A=1
      - B=${B_VALUE:-bee}
      - FROM_DOT_ENV
    env_file: db.env
    labels:
      org.example.role: database
    stop_grace_period: 2s
    stop_signal: SIGTERM
  web:
    image: ${IMAGE}
    entrypoint: ["/bin/sh", "-c"]
    command: ["exec httpd -f -p 80 -h /"]
    ports:
      - "127.0.0.1:${WEB_PORT}:80"
      - "127.0.0.1::81"
      - "127.0.0.1::5353/udp"
    depends_on:
      db:
        condition: service_healthy
    environment:
      GREETING: hello
      NUMBER: 42
    networks:
      - back
      - default
    restart: always
    tmpfs: ["/run:size=1m"]
    ulimits:
      nofile: {soft: 1024, hard: 2048}
    extra_hosts: ["gateway.local:198.18.0.1"]
    user: "0"
    working_dir: /tmp
    hostname: webhost
    init: true
    read_only: true
    shm_size: 16m
    mem_limit: 64m
    cpus: 0.5
    cap_drop: [NET_RAW]
    sysctls:
      net.core.somaxconn: 256
    logging:
      driver: json-file
      options: {max-size: 1m, max-file: "2"}
    labels: [org.example.role=frontend]
networks:
  back: {}
volumes:
  data: {}
  cache: {}
"#;

/// Replaces both project names by `PROJECT` in every string of a JSON tree.
fn normalize(v: &Value, names: &[&str]) -> Value {
    match v {
        Value::String(s) => {
            let mut s = s.clone();
            for n in names {
                s = s.replace(n, "PROJECT");
            }
            Value::String(s)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| normalize(x, names)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let mut k = k.clone();
                    for n in names {
                        k = k.replace(n, "PROJECT");
                    }
                    (k, normalize(x, names))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn sorted_strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn as_json(m: BTreeMap<&'static str, Value>) -> Value {
    Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// The aspects compared between docker-compose's and gantry's container for one service.
fn aspects(c: &Value, short_id: &str) -> BTreeMap<&'static str, Value> {
    let mut m = label_aspects(&c["Config"]["Labels"]);
    m.append(&mut config_aspects(&c["Config"], short_id));
    m.append(&mut host_aspects(&c["HostConfig"]));
    m.insert("running", c["State"]["Running"].clone());
    m.insert("mounts", mounts(c));
    m.insert("networks and aliases", networks_and_aliases(c, short_id));
    m
}

/// The label keys and values (but gantry's own labels, the hash, which is each tool's own,
/// and config_files, relative in compose, absolute here).
fn label_aspects(labels: &Value) -> BTreeMap<&'static str, Value> {
    let labels = labels.as_object().cloned().unwrap_or_default();
    let mut keys: Vec<&String> = labels
        .keys()
        .filter(|k| !k.starts_with("io.gantry."))
        .collect();
    keys.sort();
    let values: serde_json::Map<String, Value> = labels
        .iter()
        .filter(|(k, _)| {
            *k != "com.docker.compose.config-hash"
                && *k != "com.docker.compose.project.config_files"
                && !k.starts_with("io.gantry.")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    BTreeMap::from([
        ("label keys", serde_json::json!(keys)),
        ("label values", Value::Object(values)),
    ])
}

fn config_aspects(cfg: &Value, short_id: &str) -> BTreeMap<&'static str, Value> {
    let mut m = BTreeMap::new();
    m.insert("env", serde_json::json!(sorted_strings(&cfg["Env"])));
    for (k, key) in [
        ("cmd", "Cmd"),
        ("entrypoint", "Entrypoint"),
        ("healthcheck", "Healthcheck"),
        ("exposed ports", "ExposedPorts"),
        ("user", "User"),
        ("working dir", "WorkingDir"),
        ("stop signal", "StopSignal"),
        ("stop timeout", "StopTimeout"),
        ("volumes", "Volumes"),
    ] {
        m.insert(k, cfg[key].clone());
    }
    let hostname = if cfg["Hostname"].as_str() == Some(short_id) {
        Value::from("<id>")
    } else {
        cfg["Hostname"].clone()
    };
    m.insert("hostname", hostname);
    m
}

fn host_aspects(hc: &Value) -> BTreeMap<&'static str, Value> {
    let mut m = BTreeMap::new();
    let mut bindings = hc["PortBindings"].clone();
    if let Some(b) = bindings.as_object_mut() {
        for (_, list) in b.iter_mut() {
            if let Some(l) = list.as_array_mut() {
                l.sort_by_key(|x| x.to_string());
            }
        }
    }
    m.insert("port bindings", bindings);
    let mut binds = sorted_strings(&hc["Binds"]);
    binds.dedup();
    m.insert("binds", serde_json::json!(binds));
    for (k, key) in [
        ("restart policy", "RestartPolicy"),
        ("network mode", "NetworkMode"),
        ("tmpfs", "Tmpfs"),
        ("ulimits", "Ulimits"),
        ("extra hosts", "ExtraHosts"),
        ("init", "Init"),
        ("read-only rootfs", "ReadonlyRootfs"),
        ("shm size", "ShmSize"),
        ("memory", "Memory"),
        ("nano cpus", "NanoCpus"),
        ("cap drop", "CapDrop"),
        ("sysctls", "Sysctls"),
        ("log config", "LogConfig"),
        ("privileged", "Privileged"),
    ] {
        m.insert(k, hc[key].clone());
    }
    m
}

/// The mounts, sorted (a bind's source compared, a volume's not: it is Docker's path).
fn mounts(c: &Value) -> Value {
    let mut mounts: Vec<Value> = c["Mounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|x| {
            serde_json::json!({
                "Type": x["Type"], "Name": x["Name"], "Destination": x["Destination"],
                "RW": x["RW"],
                "Source": if x["Type"] == "bind" { x["Source"].clone() } else { Value::Null },
            })
        })
        .collect();
    mounts.sort_by_key(|x| x.to_string());
    Value::Array(mounts)
}

/// Each network with its aliases (but the container's short id, which differs).
fn networks_and_aliases(c: &Value, short_id: &str) -> Value {
    let mut nets = BTreeMap::new();
    if let Some(n) = c["NetworkSettings"]["Networks"].as_object() {
        for (name, ep) in n {
            let aliases: BTreeSet<String> = ep["Aliases"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|a| a.as_str())
                .filter(|a| *a != short_id)
                .map(str::to_string)
                .collect();
            nets.insert(name.clone(), aliases);
        }
    }
    serde_json::json!(nets)
}

/// The app directory of [`DIFFERENTIAL`]: the file, its `.env`, `db.env` and `conf/`.
fn differential_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    std::fs::write(dir.path().join("docker-compose.yml"), DIFFERENTIAL).unwrap();
    std::fs::write(
        dir.path().join(".env"),
        format!("IMAGE={}\nFROM_DOT_ENV=dotenv-value\n", image()),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("db.env"),
        "# db settings\nDB_USER=admin\nDB_MODE='quoted value'\n",
    )
    .unwrap();
    dir
}

/// docker-compose 1.29.2 and gantry bring up the same file as two projects; their
/// containers, networks and volumes must match. web publishes a fixed port (chosen anew when
/// Docker says it is taken), besides two that Docker picks.
#[tokio::test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
async fn matches_docker_compose_1_29() {
    let Some(host) = docker_host("compose::matches_docker_compose_1_29") else {
        return;
    };
    if !docker_compose_available() {
        assert!(!in_ci(), "docker-compose is not installed but CI=true");
        eprintln!("\n!!!!!!!!!! SKIPPED compose::matches_docker_compose_1_29: no docker-compose !!!!!!!!!!\n");
        return;
    }
    let engine = engine(&host);
    let engine: &dyn ContainerEngine = &engine;
    let (dc, gt) = (unique_project("dc"), unique_project("gt"));
    let (dc, gt) = (dc.as_str(), gt.as_str());
    let dir = differential_dir();
    let (dir, host) = (dir.path(), host.as_str());

    with_cleanup(engine, &[dc, gt], async {
        let dc_port = up_on_a_free_port(|port| async move {
            try_docker_compose(dir, host, dc, &["up", "-d"], &[("WEB_PORT", &port)])
        })
        .await;
        let gt_port = up_on_a_free_port(|port| async move {
            let p = load(dir, gt, &[("WEB_PORT", &port)]);
            let (_, on_line) = collect_lines();
            let up = tokio::time::timeout(Duration::from_secs(120), p.up(engine, &on_line));
            let res = up.await.expect("up took too long");
            res.map(|_| ()).map_err(|e| e.to_string())
        })
        .await;

        let mut differences = container_differences(engine, (dc, &dc_port), (gt, &gt_port)).await;
        differences.extend(network_and_volume_differences(engine, dc, gt).await);
        assert!(
            differences.is_empty(),
            "gantry differs from docker-compose 1.29.2:\n{}",
            differences.join("\n")
        );
        docker_compose_lists_gantrys_containers(dir, host, gt, &gt_port);

        let dc_env = [("WEB_PORT", dc_port.as_str())];
        docker_compose(dir, host, dc, &["down", "-v", "-t", "1"], &dc_env);
        let p = load(dir, gt, &[("WEB_PORT", &gt_port)]);
        let (_, on_line) = collect_lines();
        let opts = DownOptions {
            remove_volumes: true,
            timeout: Some(1),
            ..Default::default()
        };
        p.down(engine, &opts, &on_line).await.unwrap();
    })
    .await;
}

/// The differences between the containers of docker-compose's project `dc` and gantry's
/// `gt`, each with the fixed port it published.
async fn container_differences(
    engine: &dyn ContainerEngine,
    (dc, dc_port): (&str, &str),
    (gt, gt_port): (&str, &str),
) -> Vec<String> {
    let mut differences = Vec::new();
    for svc in ["db", "web"] {
        let a = inspect(engine, &format!("{dc}_{svc}_1")).await;
        let b = inspect(engine, &format!("{gt}_{svc}_1")).await;
        let a_id = &a["Id"].as_str().unwrap()[..12];
        let b_id = &b["Id"].as_str().unwrap()[..12];
        let a = normalize(&as_json(aspects(&a, a_id)), &[dc]);
        let b = normalize(&as_json(aspects(&b, b_id)), &[gt]);
        if std::env::var_os("GANTRY_TEST_VERBOSE").is_some() {
            let shown = serde_json::to_string_pretty(&b).unwrap_or_default();
            eprintln!("{svc}: {shown}");
        }
        let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
        for (k, va) in a {
            let mut vb = b[k].clone();
            let mut va = va.clone();
            if k == "port bindings" {
                // The fixed published port differs on purpose (both bind 127.0.0.1).
                va = serde_json::from_str(&va.to_string().replace(dc_port, "PORT")).unwrap();
                vb = serde_json::from_str(&vb.to_string().replace(gt_port, "PORT")).unwrap();
            }
            if va != vb {
                differences.push(format!(
                    "{svc}: {k}:\n  docker-compose: {va}\n  gantry:         {vb}"
                ));
            }
        }
    }
    differences
}

/// Networks and volumes: the same names and labels (but gantry's own), the project's name
/// replaced.
async fn network_and_volume_differences(
    engine: &dyn ContainerEngine,
    dc: &str,
    gt: &str,
) -> Vec<String> {
    let mut differences = Vec::new();
    for what in ["network", "volume"] {
        let (a, b) = (
            labelled(engine, what, dc).await,
            labelled(engine, what, gt).await,
        );
        if a != b {
            differences.push(format!(
                "{what}s:\n  docker-compose: {a:?}\n  gantry:         {b:?}"
            ));
        }
    }
    differences
}

/// The project's networks or volumes (`what`) with their labels, the project's name replaced
/// by `PROJECT`.
async fn labelled(
    engine: &dyn ContainerEngine,
    what: &str,
    project: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let filter = [Filter::Label(format!("{LABEL_PROJECT}={project}"))];
    let list: Vec<(String, HashMap<String, String>)> = if what == "network" {
        let nets = engine.list_networks(&filter).await.unwrap();
        nets.into_iter()
            .map(|n| (n.name.unwrap_or_default(), n.labels.unwrap_or_default()))
            .collect()
    } else {
        let vols = engine.list_volumes_filtered(&filter).await.unwrap();
        vols.into_iter().map(|v| (v.name, v.labels)).collect()
    };
    list.into_iter()
        .map(|(n, l)| {
            let labels = l
                .into_iter()
                .filter(|(k, _)| !k.starts_with("io.gantry."))
                .map(|(k, v)| (k, v.replace(project, "PROJECT")))
                .collect();
            (n.replace(project, "PROJECT"), labels)
        })
        .collect()
}

/// docker-compose lists gantry's containers as its own. (Would it see them as up to date?
/// It has its own hash: it would recreate. Not asserted; gantry owns its projects.)
fn docker_compose_lists_gantrys_containers(dir: &Path, host: &str, gt: &str, gt_port: &str) {
    let out = Command::new("timeout")
        .args(["60", "docker-compose", "-H", host, "-p", gt, "ps"])
        .current_dir(dir)
        .env("WEB_PORT", gt_port)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{listing}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for svc in ["db", "web"] {
        assert!(listing.contains(&format!("{gt}_{svc}_1")), "{listing}");
    }
}
