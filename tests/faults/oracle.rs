//! The one checker of every fault test: after a fault and a restart, gantry's view agrees with
//! Docker and the kernel, and nothing is left over.
//!
//! - apps: none busy, each Running or Stopped (never Partially Running or Unknown), its
//!   containers running exactly when the app is Running;
//! - Docker objects with gantry's labels: every app container, compose network and volume
//!   belongs to a listed app; every image is the test image or one a listed app brought;
//! - Intervirt: a container gantry knows exists in Docker and one it does not know does not,
//!   each running one has its `eth0`, the host side has one `gv-*` link per running container
//!   and gantry's nft table is there;
//! - nothing pending: no operation listed, no intent files, no staged or moved-away store
//!   directories, no uploads, no temp files of snapshots or backups, no more backups than
//!   kept.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::daemon::Daemon;
use super::drivers::Made;
use super::world::World;

/// Waits (bounded) until gantry has nothing pending, then checks everything; the problems.
pub fn check(world: &World, d: &Daemon, made: &Made) -> Vec<String> {
    let mut problems = settle(d);
    let apps = d.apps();
    problems.extend(check_apps(world, &apps));
    let mut kept: Vec<String> = made.loaded.iter().chain(&made.extra).cloned().collect();
    if made.import_committed {
        // A committed import's image, untagged: allowed by its id.
        let filter = format!("label={}", super::drivers::LABEL_IMPORT);
        kept.extend(world.docker_lines(&["images", "-q", "--no-trunc", "--filter", &filter]));
    }
    problems.extend(check_images(world, &apps, &kept));
    problems.extend(check_services(world, &d.state()));
    problems.extend(check_flow(world, &d.sockets()));
    problems.extend(check_intervirt(world, d, &made.containers));
    problems.extend(check_state_dir(&d.state()));
    problems
}

/// Recovery may still watch Docker for a while (an image load in flight): wait for it.
pub fn settle(d: &Daemon) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let busy: Vec<String> = d
            .apps()
            .iter()
            .filter(|a| a["Busy"] != false)
            .map(|a| format!("{} busy", a["Id"]))
            .collect();
        let tasks = d.get("/api/1/tasks");
        let intents = pending_intents(&d.state());
        let mut waiting = busy;
        if tasks.0 != 204 {
            waiting.push(format!("operations listed: {}", tasks.1));
        }
        waiting.extend(intents);
        if waiting.is_empty() {
            return Vec::new();
        }
        if Instant::now() > deadline {
            return waiting
                .into_iter()
                .map(|w| format!("not settled: {w}"))
                .collect();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pending_intents(state: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let dirs = [
        "intents",
        "intervirt/intents",
        "duxcore/intents",
        "flowmanager/intents",
    ];
    for dir in dirs.map(|d| state.join(d)) {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            out.push(format!("intent {}", e.path().display()));
        }
    }
    out
}

/// The compose project of an app id (lowercase, `[a-z0-9_-]` only, no leading `_`/`-`).
fn slug(id: &str) -> String {
    let s: String = id
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    s.trim_start_matches(['_', '-']).to_string()
}

fn check_apps(world: &World, apps: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let ids: BTreeSet<String> = apps
        .iter()
        .filter_map(|a| a["Id"].as_str())
        .map(String::from)
        .collect();
    let projects: BTreeSet<String> = ids.iter().map(|i| slug(i)).collect();
    for a in apps {
        let status = a["Status"].as_str().unwrap_or_default();
        if status != "Running" && status != "Stopped" {
            problems.push(format!("app {} is {status}", a["Id"]));
        }
    }
    let format = "{{.Label \"io.gantry.app-id\"}}\t{{.State}}\t{{.Names}}";
    for line in world.docker_lines(&[
        "ps",
        "-a",
        "--filter",
        "label=io.gantry.app-id",
        "--format",
        format,
    ]) {
        let parts: Vec<&str> = line.split('\t').collect();
        let (app, state, name) = (parts[0], parts[1], parts[2]);
        if world.is_stuck(name) {
            continue;
        }
        let listed = apps.iter().find(|a| a["Id"] == app);
        match listed.and_then(|a| a["Status"].as_str()) {
            None => problems.push(format!("container {name} of {app}, which is not listed")),
            Some("Stopped") if state == "running" => {
                problems.push(format!("container {name} runs, but {app} is Stopped"))
            }
            Some("Running") if state != "running" => {
                problems.push(format!("container {name} is {state}, but {app} is Running"))
            }
            _ => {}
        }
    }
    let project_label = "label=com.docker.compose.project";
    let fmt = "{{.Label \"com.docker.compose.project\"}} {{.Name}}";
    for line in world.docker_lines(&["network", "ls", "--filter", project_label, "--format", fmt]) {
        if !projects.contains(line.split(' ').next().unwrap_or_default()) {
            problems.push(format!("network {line} of no listed app"));
        }
    }
    for line in world.docker_lines(&["volume", "ls", "--filter", project_label, "--format", fmt]) {
        if !projects.contains(line.split(' ').next().unwrap_or_default()) {
            problems.push(format!("volume {line} of no listed app"));
        }
    }
    problems
}

/// Every image is the test image (and its alias), one a listed app brought or one a
/// committed image load brought (`loaded`, by reference).
fn check_images(world: &World, apps: &[Value], loaded: &[String]) -> Vec<String> {
    let mut allowed: BTreeSet<String> = BTreeSet::new();
    allowed.insert(world.base_id().to_string());
    for a in apps {
        for i in a["Images"].as_array().into_iter().flatten() {
            allowed.extend(i["Id"].as_str().map(String::from));
        }
    }
    let fmt = "{{.ID}} {{.Repository}}:{{.Tag}}";
    let lines = world.docker_lines(&["images", "-a", "--no-trunc", "--format", fmt]);
    with_ancestors(world, &lines, &mut allowed);
    lines
        .into_iter()
        .filter(|l| !allowed.contains(l.split(' ').next().unwrap_or_default()))
        .filter(|l| {
            !loaded
                .iter()
                .any(|r| l.ends_with(&format!(" {r}")) || l.starts_with(&format!("{r} ")))
        })
        .map(|l| format!("image {l} that no listed app brought"))
        .collect()
}

/// Adds to `allowed` the images an allowed one is built on (a built image's earlier steps,
/// which `docker images -a` lists untagged).
fn with_ancestors(world: &World, lines: &[String], allowed: &mut BTreeSet<String>) {
    let ids: Vec<&str> = lines.iter().filter_map(|l| l.split(' ').next()).collect();
    if ids.is_empty() {
        return;
    }
    let mut args = vec!["image", "inspect", "-f", "{{.Id}} {{.Parent}}"];
    args.extend(&ids);
    // Not `docker_lines`: an image may go between the listing and this.
    let out = world.docker(&args);
    let parents: std::collections::BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (id, parent) = l.split_once(' ')?;
            Some((id.to_string(), parent.trim().to_string()))
        })
        .filter(|(_, parent)| !parent.is_empty())
        .collect();
    let mut todo: Vec<String> = allowed.iter().cloned().collect();
    while let Some(id) = todo.pop() {
        if let Some(parent) = parents.get(&id) {
            if allowed.insert(parent.clone()) {
                todo.push(parent.clone());
            }
        }
    }
}

fn check_intervirt(world: &World, d: &Daemon, names: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let fmt = "{{.Names}} {{.State}}";
    let labelled = world.docker_lines(&[
        "ps",
        "-a",
        "--filter",
        "label=io.gantry.intervirt=1",
        "--format",
        fmt,
    ]);
    let labelled: Vec<String> = labelled
        .into_iter()
        .filter(|l| !world.is_stuck(l.split(' ').next().unwrap_or_default()))
        .collect();
    let state_of = |n: &str| {
        labelled
            .iter()
            .find(|l| l.split(' ').next() == Some(n))
            .map(|l| l.split(' ').nth(1).unwrap_or("").to_string())
    };
    let mut all: BTreeSet<String> = names.iter().cloned().collect();
    all.extend(
        labelled
            .iter()
            .filter_map(|l| l.split(' ').next())
            .map(String::from),
    );
    let mut iv = d.intervirt();
    let mut running = 0;
    for name in &all {
        // A setter to the value it has (internet off): 0 when gantry knows the container.
        let code = iv.code(json!({"type": "SetInternetAccess", "id": name, "enabled": false}));
        let docker = state_of(name);
        match (code, docker.as_deref()) {
            (0, None) => {
                problems.push(format!("gantry knows {name}, Docker has no such container"))
            }
            (6, Some(_)) => problems.push(format!("Docker has {name}, which gantry does not know")),
            (0, Some("running")) => {
                running += 1;
                if !world
                    .docker(&["exec", name, "ip", "link", "show", "eth0"])
                    .status
                    .success()
                {
                    problems.push(format!("{name} runs without its network"));
                }
            }
            (0 | 6, _) => {}
            (code, _) => problems.push(format!("probing {name}: code {code}")),
        }
    }
    let links = world.ip(&["-o", "link", "show"]);
    let links = links
        .lines()
        .filter(|l| l.split(": ").nth(1).is_some_and(|n| n.starts_with("gv-")))
        .count();
    if links != running {
        problems.push(format!(
            "{links} gv-* links for {running} running containers"
        ));
    }
    if running > 0
        && !world
            .in_netns("nft", &["list", "table", "inet", "gantry"])
            .status
            .success()
    {
        problems.push("gantry's nft table is missing".into());
    }
    problems
}

/// Every duxcore service container has its directory with its record, and every service
/// directory has its record (a create leaves none half made).
fn check_services(world: &World, state: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let dirs = state.join("duxcore/services");
    let filter = format!("label={}", super::drivers::LABEL_SERVICE);
    for name in world.docker_lines(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]) {
        if !dirs.join(&name).join("service.json").exists() {
            problems.push(format!("service container {name} without its record"));
        }
    }
    for e in std::fs::read_dir(&dirs).into_iter().flatten().flatten() {
        if !e.path().join("service.json").exists() {
            problems.push(format!(
                "service directory {} without a record",
                e.path().display()
            ));
        }
    }
    problems
}

/// No Flow Manager container parked by an update, each with its socket, no code copy being
/// swapped in, no code directory without its container.
fn check_flow(world: &World, sockets: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let filter = format!("label={}=flowmanager", super::drivers::LABEL_DIALECT);
    let names = world.docker_lines(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]);
    for name in &names {
        if name.contains("-gantry-old-") {
            problems.push(format!("parked Flow Manager container {name}"));
        } else if !sockets.join(format!("{name}.sock")).exists() {
            problems.push(format!("Flow Manager container {name} without its socket"));
        }
    }
    for e in std::fs::read_dir(sockets).into_iter().flatten().flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let owner = file.strip_suffix("_code");
        if file.starts_with('.') {
            problems.push(format!("code copy left: {file}"));
        } else if owner.is_some_and(|o| !names.iter().any(|n| n == o)) {
            problems.push(format!("code directory {file} of no container"));
        }
    }
    problems
}

/// No staged or moved-away app, no upload, no unreadable intent left in the state directory.
fn check_state_dir(state: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for store in ["apps", "templates", "pool/apps"] {
        for e in std::fs::read_dir(state.join(store))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                problems.push(format!("{store} store leftover {name}"));
            }
        }
    }
    for e in std::fs::read_dir(state.join("uploads"))
        .into_iter()
        .flatten()
        .flatten()
    {
        problems.push(format!("upload leftover {}", e.path().display()));
    }
    let snapshots = state.join("snapshots");
    let backups = snapshots.join("backups");
    for dir in [&snapshots, &backups] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                problems.push(format!("snapshot leftover {}", e.path().display()));
            }
        }
    }
    // The fault tests keep one backup (`keep_backups = 1`).
    let kept = std::fs::read_dir(&backups).into_iter().flatten().count();
    if kept > 1 {
        problems.push(format!("{kept} backups kept, not 1"));
    }
    problems
}

/// After the run's clean-up nothing of it may be left: no labelled object, no image but the
/// test image. Removes what is left (so the next run starts clean) and names it.
pub fn left_over(world: &World) -> Vec<String> {
    let mut found = Vec::new();
    let fmt = "{{.Names}} {{.Label \"io.gantry.app-id\"}}{{.Label \"io.gantry.intervirt\"}}\
               {{.Label \"io.gantry.duxcore.service\"}}{{.Label \"io.gantry.dialect\"}}";
    for line in world.docker_lines(&["ps", "-a", "--format", fmt]) {
        let (name, labels) = line.split_once(' ').unwrap_or((&line, ""));
        if labels.trim().is_empty() || world.is_stuck(name) {
            continue;
        }
        let rm = world.docker(&["rm", "-f", "-v", name]);
        if rm.status.success() {
            found.push(format!("container {name} ({labels})"));
        } else {
            let e = String::from_utf8_lossy(&rm.stderr);
            found.push(format!(
                "container {name} ({labels}), Docker cannot remove it: {e}"
            ));
            world.mark_stuck(name);
        }
    }
    let project = "label=com.docker.compose.project";
    for n in world.docker_lines(&["network", "ls", "-q", "--filter", project]) {
        found.push(format!("network {n}"));
        let _ = world.docker(&["network", "rm", &n]);
    }
    for v in world.docker_lines(&["volume", "ls", "-q", "--filter", project]) {
        found.push(format!("volume {v}"));
        let _ = world.docker(&["volume", "rm", "-f", &v]);
    }
    let images = check_images(world, &[], &[]);
    for image in &images {
        let id = image.split(' ').nth(1).unwrap_or_default();
        let _ = world.docker(&["rmi", "-f", id]);
    }
    found.extend(images);
    found
}
