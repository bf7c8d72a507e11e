//! The live view against the test dockerd: reads make no Docker call (the Transfer and
//! system lists, the Distillery's systems, the Flow Manager's list and statuses but for
//! their resource usage); a mutating call's
//! answer is visible to the next read; changes made behind gantry's back (stop, start, rm,
//! create, a crash, a health change, pause, rename) show as soon as their event arrives; an
//! event stream cut while things change is followed by a full rebuild, and no read shows the
//! state from before it; a seeded random run of gantry operations and outside changes ends
//! with the view equal to a fresh read from Docker. The dockerd restart is in
//! tests/liveview_restart.rs (its own private dockerd).

mod common;
// The Flow Manager's Socket.IO client (python-socketio) and daemon harness.
#[allow(dead_code)]
#[path = "flowmanager/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::bundle::{app_zip, import};
use common::proxy::DockerProxy;
use common::{
    agent, create_container, docker, docker_ok, docker_socket_path, enc, listening_address_of,
    run_ok, test_image, unique, wait_for, Cleanup, Gantry, STOPPABLE,
};
use serde_json::Value;

/// The tests compare whole lists with Docker's: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// What Docker's own API answers for `path` (through curl on the test dockerd's socket).
fn docker_api(path: &str) -> Value {
    let sock = docker_socket_path();
    let out = run_ok(
        "curl",
        &[
            "-sf",
            "--unix-socket",
            sock.to_str().unwrap(),
            &format!("http://d{path}"),
        ],
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{path}: {e}: {out}"))
}

/// gantry's list at `path` (204 is an empty list).
fn list(g: &Gantry, path: &str) -> Vec<Value> {
    let r = g.get(path);
    if r.status == 204 {
        return Vec::new();
    }
    r.expect_json(200).as_array().cloned().unwrap_or_default()
}

fn container_in(list: &[Value], name: &str) -> Option<Value> {
    let slash = format!("/{name}");
    list.iter()
        .find(|c| {
            c["Names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|x| x == &slash))
        })
        .cloned()
}

fn one_service_app(name: &str) -> Vec<u8> {
    let compose = format!(
        "services:\n  main:\n    image: {}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 600 & wait\"]\n    stop_grace_period: 1s\n",
        test_image()
    );
    app_zip(name, "1", &compose)
}

/// The Distillery listener's token in [`reads_make_no_docker_calls`].
const DIST_TOKEN: &str = "0123456789abcdef-reads";

/// The Distillery's JSON API at `addr`: `GET path` with the token, its status and body.
fn distillery_get(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let mut resp = agent()
        .get(format!("http://{addr}{path}"))
        .header("Authorization", &format!("Bearer {DIST_TOKEN}"))
        .call()
        .expect("request failed");
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    (
        resp.status().as_u16(),
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn reads_make_no_docker_calls() {
    require_docker!();
    let _serial = serial();
    let proxy = DockerProxy::start(&docker_socket_path());
    let tokens = tempfile::tempdir().unwrap();
    let token_file = tokens.path().join("tokens");
    std::fs::write(&token_file, format!("reads {DIST_TOKEN}\n")).unwrap();
    let g = Gantry::builder()
        .docker_host(&proxy.host())
        .probe_interval_secs(3600)
        .extra_listener(&format!(
            "dialect = \"distillery\"\naddress = \"127.0.0.1:0\"\ntoken_file = {:?}",
            token_file.display().to_string()
        ))
        .start();
    let dist = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        listening_address_of(&g.stderr(), "distillery")
    })
    .expect("the distillery listener never reported its address");
    let mut cleanup = Cleanup::new();
    let name = unique("calls");
    import(&g, &one_service_app(&name)).expect_json(200);
    let id = enc(&format!("{name}:1"));
    g.put(&format!("/api/1/transfer/apps/{id}/start"))
        .expect_json(200);
    create_container(&mut cleanup, "calls", &[], STOPPABLE);
    let reads = [
        "/api/1/transfer/apps".to_string(),
        format!("/api/1/transfer/apps/{id}"),
        "/api/1/transfer/recognize/apps".to_string(),
        "/api/transfer/recognize".to_string(),
        "/api/1/system/containers".to_string(),
        "/api/1/system/images".to_string(),
        "/api/1/system/volumes".to_string(),
    ];
    let systems = ["/api/v1/systems", "/api/v1/http/systems"];
    let read_all = || {
        for path in &reads {
            assert!(g.get(path).status < 300, "{path}");
        }
        for path in systems {
            let (status, body) = distillery_get(dist, path);
            assert_eq!(status, 200, "{path}: {body}");
            let me = body
                .as_array()
                .and_then(|a| a.iter().find(|s| s["Name"] == name.as_str()));
            let me = me.unwrap_or_else(|| panic!("{path} misses {name}: {body}"));
            assert_eq!(me["Status"], "Running", "{me}");
        }
    };
    read_all();
    // Let the events of the start settle (their follow-up reads are Docker calls).
    std::thread::sleep(Duration::from_secs(2));
    proxy.clear();
    for _ in 0..50 {
        read_all();
    }
    assert_eq!(proxy.requests(), Vec::<String>::new(), "reads asked Docker");
    g.put(&format!("/api/1/transfer/apps/{id}/stop"))
        .expect_json(200);
    g.delete(&format!("/api/1/transfer/apps/{id}?force=true"));
}

/// The Flow Manager's listing and the state part of its statuses are read from the live
/// view: while a client lists and asks for a created container's status, and the periodic
/// status of a running one goes out, the only Docker calls are that container's stats.
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn flow_manager_reads_ask_docker_for_stats_only() {
    require_docker!();
    let py = require_python!();
    let _serial = serial();
    let proxy = DockerProxy::start(&docker_socket_path());
    let mut fm = harness::Fm::prepare(&proxy.host(), "status_interval_secs = 1");
    // No health probe asking Docker for its version meanwhile.
    let config = std::fs::read_to_string(&fm.config).unwrap();
    let config = format!("docker_probe_interval_secs = 3600\n{config}");
    std::fs::write(&fm.config, config).unwrap();
    fm.spawn(fm.command());
    let mut c = fm.client(&py, None);
    let mut cleanup = Cleanup::new();
    let (up, idle) = (unique("fm-calls-up"), unique("fm-calls-idle"));
    for name in [&up, &idle] {
        cleanup.container(name);
        let spec = serde_json::json!({"image": test_image(), "name": name, "command": STOPPABLE});
        c.request("create_container", spec, "container_created");
    }
    let up_id = serde_json::json!({"container_id": up});
    c.request("start_container", up_id.clone(), "container_started");
    // The start's events settle (their follow-up reads are Docker calls).
    std::thread::sleep(Duration::from_secs(2));
    proxy.clear();
    let idle_id = serde_json::json!({"container_id": idle});
    for _ in 0..20 {
        let list = c.request("list_containers", serde_json::json!({}), "container_list");
        let all = list["containers"].as_array().unwrap();
        let state = |name: &str| {
            all.iter()
                .find(|x| x["name"] == name)
                .map(|x| x["status"].clone())
        };
        assert_eq!(state(&up), Some(Value::from("running")), "{list}");
        assert_eq!(state(&idle), Some(Value::from("created")), "{list}");
        let s = c.request("get_container_status", idle_id.clone(), "container_status");
        assert_eq!(s["state"], "created", "{s}");
        assert_eq!(s["uptime"], Value::Null, "{s}");
    }
    let u = c.expect_where("container_status_update", Duration::from_secs(10), |x| {
        x["status"]["state"] == "running"
    });
    assert!(u["status"]["uptime"].is_string(), "{u}");
    let s = c.request("get_container_status", up_id, "container_status");
    assert_eq!(s["state"], "running", "{s}");
    assert!(s["resource_usage"]["memory_usage"].is_u64(), "{s}");
    let asked = proxy.requests();
    let others: Vec<&String> = asked.iter().filter(|r| !r.contains("/stats")).collect();
    assert!(!asked.is_empty() && others.is_empty(), "{asked:?}");
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_mutating_calls_answer_is_visible_to_the_next_read() {
    require_docker!();
    let _serial = serial();
    let g = Gantry::start();
    let mut cleanup = Cleanup::new();
    app_changes_are_visible(&g);
    container_changes_are_visible(&g, &mut cleanup);
    list_changes_are_visible(&g, &mut cleanup);
}

/// An app started and stopped: the next read of it and of the container list shows it.
fn app_changes_are_visible(g: &Gantry) {
    let name = unique("visible");
    import(g, &one_service_app(&name)).expect_json(200);
    let app = format!("/api/1/transfer/apps/{}", enc(&format!("{name}:1")));
    for _ in 0..3 {
        g.put(&format!("{app}/start")).expect_json(200);
        let v = g.get(&app).expect_json(200);
        assert_eq!(v["Status"], "Running", "{v}");
        assert_eq!(v["Containers"][0]["Running"], true, "{v}");
        let c = v["Containers"][0]["Name"].as_str().unwrap().to_string();
        let listed = container_in(&list(g, "/api/1/system/containers"), &c).expect("listed");
        assert_eq!(listed["State"], "running", "{listed}");
        g.put(&format!("{app}/stop")).expect_json(200);
        let v = g.get(&app).expect_json(200);
        assert_eq!(v["Status"], "Stopped", "{v}");
        assert_eq!(v["Containers"], serde_json::json!([]), "{v}");
        assert!(container_in(&list(g, "/api/1/system/containers"), &c).is_none());
    }
    g.delete(&app);
}

/// The system module's start, stop and removal of a container.
fn container_changes_are_visible(g: &Gantry, cleanup: &mut Cleanup) {
    let c = create_container(cleanup, "visible", &[], STOPPABLE);
    wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        container_in(&list(g, "/api/1/system/containers"), &c)
    })
    .expect("the created container never showed");
    let state =
        || container_in(&list(g, "/api/1/system/containers"), &c).map(|v| v["State"].clone());
    g.put(&format!("/api/1/system/containers/{c}/start"))
        .expect_json(200);
    assert_eq!(state(), Some(Value::from("running")));
    g.put(&format!("/api/1/system/containers/{c}/stop"))
        .expect_json(200);
    assert_eq!(state(), Some(Value::from("exited")));
    g.delete(&format!("/api/1/system/containers/{c}"))
        .expect_empty(200);
    assert_eq!(state(), None);
}

/// `present` becomes true (an outside change reaching the view), then the gantry call
/// `remove` makes it false for the very next read.
fn removal_is_visible(g: &Gantry, present: impl Fn(&Gantry) -> bool, remove: &str, what: &str) {
    wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        present(g).then_some(())
    })
    .unwrap_or_else(|| panic!("{what} never showed"));
    let r = g.delete(remove);
    assert!(r.status == 200, "{remove}: {}", r.status);
    assert!(!present(g), "{what} is still listed after {remove}");
}

/// A volume and an image tag removed through the system module.
fn list_changes_are_visible(g: &Gantry, cleanup: &mut Cleanup) {
    let vol = unique("visible");
    cleanup.volume(&vol);
    docker_ok(&["volume", "create", &vol]);
    let has_volume = |g: &Gantry| {
        list(g, "/api/1/system/volumes")
            .iter()
            .any(|v| v["Name"] == vol)
    };
    removal_is_visible(
        g,
        has_volume,
        &format!("/api/1/system/volumes/{vol}"),
        "the volume",
    );
    let tag = format!("{}:1", unique("visible"));
    cleanup.image(&tag);
    docker_ok(&["tag", &test_image(), &tag]);
    let has_tag = |g: &Gantry| {
        list(g, "/api/1/system/images").iter().any(|i| {
            i["RepoTags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == &tag))
        })
    };
    let path = format!("/api/1/system/images/{}", enc(&tag));
    removal_is_visible(g, has_tag, &path, "the tag");
}

/// Waits (up to 10 s) until gantry lists `name` as Docker does (State and Status, Status
/// compared without its time); returns how long that took.
fn seen_as_docker(g: &Gantry, name: &str) -> Duration {
    let t0 = Instant::now();
    let mut last = ((Value::Null, Value::Null), (Value::Null, Value::Null));
    let ok = wait_for(Duration::from_secs(10), Duration::from_millis(5), || {
        let docker = container_in(docker_api("/containers/json?all=1").as_array()?, name);
        let ours = container_in(&list(g, "/api/1/system/containers"), name);
        let key = |v: &Option<Value>| {
            v.as_ref()
                .map(|v| (v["State"].clone(), Value::from(without_time(&v["Status"]))))
                .unwrap_or((Value::Null, Value::Null))
        };
        last = (key(&ours), key(&docker));
        (last.0 == last.1).then_some(())
    });
    assert!(
        ok.is_some(),
        "{name}: gantry {:?} vs Docker {:?}",
        last.0,
        last.1
    );
    t0.elapsed()
}

/// "Up 3 seconds (healthy)" -> "Up (healthy)": the time part changes while one reads.
fn without_time(status: &Value) -> String {
    let s = status.as_str().unwrap_or_default();
    let words: Vec<&str> = s.split(' ').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        let unit = |w: &str| {
            ["second", "minute", "hour", "day", "week", "month", "year"]
                .iter()
                .any(|u| w.trim_end_matches('s') == *u)
        };
        if matches!(w, "Less" | "About")
            || w.parse::<u64>().is_ok() && words.get(i + 1).is_some_and(|n| unit(n))
        {
            while i < words.len() && !unit(words[i]) {
                i += 1;
            }
            i += 1;
            continue;
        }
        out.push(w);
        i += 1;
    }
    out.join(" ")
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn changes_behind_gantrys_back_show_from_their_events() {
    require_docker!();
    let _serial = serial();
    let g = Gantry::start();
    let mut cleanup = Cleanup::new();
    let mut took = Vec::new();
    // create, start, stop, kill, pause/unpause, rename, rm
    let c = create_container(&mut cleanup, "back", &[], STOPPABLE);
    took.push(("create", seen_as_docker(&g, &c)));
    for (what, args) in [
        ("start", vec!["start", c.as_str()]),
        ("stop", vec!["stop", c.as_str()]),
        ("start again", vec!["start", c.as_str()]),
        ("pause", vec!["pause", c.as_str()]),
        ("unpause", vec!["unpause", c.as_str()]),
        ("kill", vec!["kill", c.as_str()]),
    ] {
        docker_ok(&args);
        took.push((what, seen_as_docker(&g, &c)));
    }
    let renamed = unique("renamed");
    cleanup.container(&renamed);
    docker_ok(&["rename", &c, &renamed]);
    took.push(("rename", seen_as_docker(&g, &renamed)));
    docker_ok(&["rm", "-f", &renamed]);
    took.push(("rm", seen_as_docker(&g, &renamed)));

    crash_and_health(&g, &mut cleanup, &mut took);
    eprintln!("seen after: {took:?}");
}

/// A crash (exit 3 on its own) and a health check that turns unhealthy, then healthy.
fn crash_and_health(g: &Gantry, cleanup: &mut Cleanup, took: &mut Vec<(&str, Duration)>) {
    let crash = unique("crash");
    cleanup.container(&crash);
    let image = test_image();
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &crash,
        "--network",
        "none",
        &image,
        "sh",
        "-c",
        "sleep 1; exit 3",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    took.push(("crash", seen_as_docker(g, &crash)));
    let v = container_in(&list(g, "/api/1/system/containers"), &crash).unwrap();
    assert!(
        v["Status"].as_str().unwrap().starts_with("Exited (3)"),
        "{v}"
    );
    let sick = unique("health");
    cleanup.container(&sick);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &sick,
        "--network",
        "none",
        "--health-cmd",
        "test -e /tmp/ok",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        &image,
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 300 & wait",
    ]);
    took.push(("health starting", seen_as_docker(g, &sick)));
    let unhealthy = |g: &Gantry| {
        container_in(&list(g, "/api/1/system/containers"), &sick)
            .is_some_and(|v| {
                v["Status"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("(unhealthy)")
            })
            .then_some(())
    };
    wait_for(Duration::from_secs(15), Duration::from_millis(20), || {
        unhealthy(g)
    })
    .expect("never unhealthy");
    docker_ok(&["exec", &sick, "touch", "/tmp/ok"]);
    wait_for(Duration::from_secs(15), Duration::from_millis(20), || {
        let v = container_in(&list(g, "/api/1/system/containers"), &sick)?;
        v["Status"].as_str()?.ends_with("(healthy)").then_some(())
    })
    .expect("never healthy again");
    took.push(("health", seen_as_docker(g, &sick)));
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_cut_event_stream_is_followed_by_a_rebuild_and_no_older_read() {
    require_docker!();
    let _serial = serial();
    let proxy = DockerProxy::start(&docker_socket_path());
    let g = Gantry::builder().docker_host(&proxy.host()).start();
    let mut cleanup = Cleanup::new();
    let a = create_container(&mut cleanup, "cut-a", &[], STOPPABLE);
    let b = create_container(&mut cleanup, "cut-b", &[], STOPPABLE);
    docker_ok(&["start", &a, &b]);
    wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
        let l = list(&g, "/api/1/system/containers");
        (container_in(&l, &a)?["State"] == "running" && container_in(&l, &b)?["State"] == "running")
            .then_some(())
    })
    .expect("never saw both running");

    proxy.cut();
    wait_for(Duration::from_secs(10), Duration::from_millis(5), || {
        (g.get("/api/1/system/containers").status == 503).then_some(())
    })
    .expect("reads went on after the stream was cut");
    // Changed while gantry cannot see it.
    docker_ok(&["stop", &a]);
    docker_ok(&["rm", "-f", &b]);
    let c = create_container(&mut cleanup, "cut-c", &[], STOPPABLE);
    let mut answers = BTreeMap::new();
    for _ in 0..20 {
        *answers
            .entry(g.get("/api/1/system/containers").status)
            .or_insert(0) += 1;
    }
    assert_eq!(
        answers.keys().collect::<Vec<_>>(),
        [&503],
        "while cut: {answers:?}"
    );
    proxy.restore();

    every_answer_shows(&g, &a, &b, &c);
}

/// After the restore: every answer (503s aside) shows `a` exited, `b` gone and `c` there,
/// from the first one on; reads go on for half a second after the first.
fn every_answer_shows(g: &Gantry, a: &str, b: &str, c: &str) {
    let t0 = Instant::now();
    let mut first_ok = None;
    while t0.elapsed() < Duration::from_secs(20) {
        let r = g.get("/api/1/system/containers");
        if r.status == 503 {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let l = r.expect_json(200).as_array().cloned().unwrap();
        assert_eq!(
            container_in(&l, a).map(|v| v["State"].clone()),
            Some("exited".into())
        );
        assert!(container_in(&l, b).is_none(), "a removed container is back");
        assert!(
            container_in(&l, c).is_some(),
            "the new container is missing"
        );
        first_ok.get_or_insert(t0.elapsed());
        if t0.elapsed() > first_ok.unwrap() + Duration::from_millis(500) {
            break;
        }
    }
    assert!(
        first_ok.is_some(),
        "never answered after the restore:\n{}",
        g.stderr()
    );
    eprintln!("first answer {:?} after the restore", first_ok.unwrap());
}

/// A small seeded generator (the tests need no rand crate): the same seed, the same run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// The fields of a container both lists must agree on, Status without its time, ports and
/// networks in a fixed order.
fn container_key(c: &Value) -> Value {
    let mut ports: Vec<String> = c["Ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let ip = p["IP"].as_str().unwrap_or_default();
            format!(
                "{ip}:{}->{}/{}",
                p["PublicPort"], p["PrivatePort"], p["Type"]
            )
        })
        .collect();
    ports.sort();
    let networks: BTreeMap<String, Value> = c["NetworkSettings"]["Networks"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, n)| {
            (
                k.clone(),
                serde_json::json!([n["IPAddress"], n["EndpointID"], n["MacAddress"]]),
            )
        })
        .collect();
    serde_json::json!({
        "Names": c["Names"], "Image": c["Image"], "ImageID": c["ImageID"],
        "Command": c["Command"], "Created": c["Created"], "Labels": c["Labels"],
        "State": c["State"], "Status": without_time(&c["Status"]), "Ports": ports,
        "Networks": networks, "Mounts": c["Mounts"], "HostConfig": c["HostConfig"],
    })
}

fn by_key(items: &[Value], key: &str, f: impl Fn(&Value) -> Value) -> BTreeMap<String, Value> {
    items
        .iter()
        .map(|i| (i[key].as_str().unwrap_or_default().to_string(), f(i)))
        .collect()
}

/// `v` without null, empty-object and empty-array members.
fn without_empty(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(_, x)| {
                    !(x.is_null()
                        || x.as_object().is_some_and(|o| o.is_empty())
                        || x.as_array().is_some_and(|a| a.is_empty()))
                })
                .map(|(k, x)| (k.clone(), without_empty(x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// gantry's lists and Docker's, in comparable form.
fn both_lists(g: &Gantry) -> [(BTreeMap<String, Value>, BTreeMap<String, Value>); 3] {
    let docker_containers = docker_api("/containers/json?all=1");
    let docker_images = docker_api("/images/json");
    let docker_volumes = docker_api("/volumes");
    // Docker's models as gantry carries them (bollard's): empty and null are the same, and
    // fields the model does not have (VirtualSize) are not carried.
    let image = |i: &Value| {
        let mut i = without_empty(i);
        i.as_object_mut().map(|o| o.remove("VirtualSize"));
        i
    };
    let volume = |v: &Value| without_empty(v);
    [
        (
            by_key(&list(g, "/api/1/system/containers"), "Id", container_key),
            by_key(docker_containers.as_array().unwrap(), "Id", container_key),
        ),
        (
            by_key(&list(g, "/api/1/system/images"), "Id", image),
            by_key(docker_images.as_array().unwrap(), "Id", image),
        ),
        (
            by_key(&list(g, "/api/1/system/volumes"), "Name", volume),
            by_key(
                docker_volumes["Volumes"].as_array().unwrap_or(&Vec::new()),
                "Name",
                volume,
            ),
        ),
    ]
}

/// One random step: a gantry operation or a change made with the Docker CLI.
fn random_step(
    g: &Gantry,
    rng: &mut Lcg,
    app: &str,
    names: &[String],
    vols: &[String],
    tag: &str,
) -> String {
    let c = &names[rng.below(names.len() as u64) as usize];
    let v = &vols[rng.below(vols.len() as u64) as usize];
    let image = test_image();
    let (what, ok) = match rng.below(14) {
        0 => ("gantry start app", g.put(&format!("{app}/start")).status),
        1 => ("gantry stop app", g.put(&format!("{app}/stop")).status),
        2 => (
            "gantry start",
            g.put(&format!("/api/1/system/containers/{c}/start")).status,
        ),
        3 => (
            "gantry stop",
            g.put(&format!("/api/1/system/containers/{c}/stop")).status,
        ),
        4 => (
            "gantry rm",
            g.delete(&format!("/api/1/system/containers/{c}?force=true"))
                .status,
        ),
        5 => (
            "docker run",
            code(&[
                "run",
                "-d",
                "--name",
                c,
                "--network",
                "none",
                &image,
                "sh",
                "-c",
                "trap 'exit 0' TERM; sleep 300 & wait",
            ]),
        ),
        6 => (
            "docker create",
            code(&[
                "create",
                "--name",
                c,
                "-p",
                "127.0.0.1::80",
                &image,
                "sleep",
                "300",
            ]),
        ),
        7 => ("docker stop", code(&["stop", "-t", "1", c])),
        8 => ("docker start", code(&["start", c])),
        9 => ("docker kill", code(&["kill", c])),
        10 => ("docker rm", code(&["rm", "-f", c])),
        11 => ("docker pause", code(&["pause", c])),
        12 => ("docker volume create", code(&["volume", "create", v])),
        _ => match rng.below(3) {
            0 => ("docker volume rm", code(&["volume", "rm", v])),
            1 => ("docker tag", code(&["tag", &image, tag])),
            _ => ("docker rmi", code(&["rmi", tag])),
        },
    };
    format!("{what} {c} {v}: {ok}")
}

fn code(args: &[&str]) -> u16 {
    docker(args).status.code().unwrap_or(-1) as u16
}

/// Waits (up to 15 s: events may still be in flight) until gantry's lists equal Docker's;
/// panics with both and the steps otherwise.
fn assert_view_equals_docker(g: &Gantry, seed: u64, steps: &[String]) {
    let mut last = None;
    let equal = wait_for(Duration::from_secs(15), Duration::from_millis(100), || {
        let lists = both_lists(g);
        let same = lists.iter().all(|(ours, docker)| ours == docker);
        last = Some(lists);
        same.then_some(())
    });
    if equal.is_some() {
        return;
    }
    for (ours, docker) in last.iter().flatten() {
        if ours != docker {
            let pretty = |v| serde_json::to_string_pretty(v).unwrap();
            eprintln!("gantry: {}\nDocker: {}", pretty(ours), pretty(docker));
        }
    }
    panic!("seed {seed}: the view differs from Docker after {steps:#?}");
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn after_random_operations_the_view_equals_docker() {
    require_docker!();
    let _serial = serial();
    let first = std::env::var("GANTRY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    let g = Gantry::start();
    let mut cleanup = Cleanup::new();
    let name = unique("prop");
    import(&g, &one_service_app(&name)).expect_json(200);
    let app = format!("/api/1/transfer/apps/{}", enc(&format!("{name}:1")));
    let names: Vec<String> = (0..3).map(|i| unique(&format!("prop{i}"))).collect();
    let vols: Vec<String> = (0..2).map(|i| unique(&format!("propv{i}"))).collect();
    let tag = format!("{}:1", unique("propimg"));
    for n in &names {
        cleanup.container(n);
    }
    for v in &vols {
        cleanup.volume(v);
    }
    cleanup.image(&tag);
    let project = format!("label=com.docker.compose.project={name}1");
    for seed in first..first + 4 {
        let mut rng = Lcg(seed);
        let steps: Vec<String> = (0..30)
            .map(|_| random_step(&g, &mut rng, &app, &names, &vols, &tag))
            .collect();
        assert_view_equals_docker(&g, seed, &steps);
        // The app's status agrees with its container.
        let v = g.get(&app).expect_json(200);
        let running = docker_ok(&["ps", "-q", "--filter", &project]);
        let want = if running.is_empty() {
            "Stopped"
        } else {
            "Running"
        };
        assert_eq!(v["Status"], want, "seed {seed}: {v}\n{steps:#?}");
    }
    g.delete(&format!("{app}?force=true"));
}
