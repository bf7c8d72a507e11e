//! How the fault tests drive each long operation over the API: what a run needs before it
//! (`setup`), the request that starts it (`trigger`, on a thread of its own, since gantry may
//! die under it), and the next operations that must work after the recovery (`next`).
//!
//! A new operation gets its crash points covered by naming them in
//! `src/core/recovery/points.rs` with its name as `op` and adding its arm here.

use std::thread::JoinHandle;

use serde_json::{json, Value};

use super::daemon::{Daemon, Sio};
use super::world::{World, IMAGE_ALIAS};
use crate::common::bundle::multipart;
use crate::common::enc;

/// What one run made: the apps and Intervirt containers it named.
#[derive(Debug, Default, Clone)]
pub struct Made {
    pub apps: Vec<String>,
    pub containers: Vec<String>,
    /// Images an image load may have brought (its reference).
    pub loads: Vec<String>,
    /// Those of `loads` whose load was committed (its intent gone) before the fault: they
    /// stay, as the client was (or could have been) told.
    pub loaded: Vec<String>,
    /// Images the setup made beside the apps' (by reference): they may stay, and go with
    /// the clean-up.
    pub extra: Vec<String>,
    /// Duxcore services a create may have made.
    pub services: Vec<String>,
    /// An image import was committed (its intent gone) before the fault: its image (with
    /// the import label) may stay, and goes with the clean-up.
    pub import_committed: bool,
    /// Flow Manager containers (by name) the run may have made.
    pub flow: Vec<String>,
    /// The id of the Flow Manager container an update works on, before it.
    pub flow_old: Option<String>,
    /// Templates (by id) the run may have made.
    pub templates: Vec<String>,
    /// Apps (by id) the run may have installed into the App Pool.
    pub pool: Vec<String>,
}

/// The label of the Flow Manager's containers, naming the dialect.
pub const LABEL_DIALECT: &str = "io.gantry.dialect";

/// The label a duxcore image import gives its image.
pub const LABEL_IMPORT: &str = "io.gantry.duxcore.import";
/// The label of a duxcore service's container.
pub const LABEL_SERVICE: &str = "io.gantry.duxcore.service";

/// A run's unique names.
pub struct Names {
    pub tag: String,
    n: usize,
}

impl Names {
    pub fn new(tag: &str) -> Names {
        Names {
            tag: tag.to_string(),
            n: 0,
        }
    }

    fn next(&mut self, what: &str) -> String {
        self.n += 1;
        format!("{what}-{}-{}", self.tag, self.n)
    }
}

/// A service that ends at once on SIGTERM (busybox `sleep` as PID 1 ignores it).
const IDLE: &str = r#"["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]"#;

/// A chain of three services (`c` needs `b` needs `a`), `a` with a named volume; `c` runs a
/// second image.
pub fn chain_compose(image: &str, image2: &str) -> String {
    format!(
        "services:\n  a:\n    image: {image}\n    command: {IDLE}\n    stop_grace_period: 1s\n    volumes: [\"data:/data\"]\n  \
         b:\n    image: {image}\n    command: {IDLE}\n    stop_grace_period: 1s\n    depends_on: [a]\n  \
         c:\n    image: {image2}\n    command: {IDLE}\n    stop_grace_period: 1s\n    depends_on: [b]\n\
         volumes:\n  data: {{}}\n"
    )
}

/// A bundle of the chain app `name` with the world's two app images (config.yml first, as zip
/// tools write it, so images stream while the upload arrives).
pub fn chain_bundle(world: &World, name: &str) -> Vec<u8> {
    let [(i1, t1), (i2, t2)] = world.app_images();
    bundle_of(name, &chain_compose(i1, i2), &[t1, t2])
}

/// MiB of random data in each big image (`GANTRY_FAULTS_BIG_MIB`, default 64).
pub fn big_mib() -> usize {
    let mib = std::env::var("GANTRY_FAULTS_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok());
    mib.unwrap_or(64)
}

/// The chain app with two big images (each [`big_mib`] MiB of random data).
pub fn big_bundle(world: &World, name: &str) -> Vec<u8> {
    // The world's big images, whatever size its first user made them.
    let [(i1, t1), (i2, t2)] = world.big_images(big_mib());
    bundle_of(name, &chain_compose(i1, i2), &[t1, t2])
}

/// A bundle of the app `name` (version 1) with `compose` and image archives.
pub fn bundle_of(name: &str, compose: &str, images: &[&[u8]]) -> Vec<u8> {
    let config = format!("Name: {name}\nVersion: 1\n");
    let names: Vec<String> = (0..images.len())
        .map(|i| format!("docker/image{i}.tar"))
        .collect();
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("config.yml", config.as_bytes()),
        ("compose.yaml", compose.as_bytes()),
    ];
    entries.extend(names.iter().map(String::as_str).zip(images.iter().copied()));
    stored_zip(&entries)
}

/// A ZIP of `entries`, stored (not deflated: quick to build, and streamed as it arrives).
pub fn stored_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// `POST /transfer/import` of `zip`; (status, body).
pub fn import(d: &Daemon, zip: &[u8]) -> (u16, Value) {
    let (ct, body) = multipart("app", zip);
    d.request("POST", "/api/1/transfer/import", Some((&ct, body)))
}

pub fn app_path(id: &str) -> String {
    format!("/api/1/transfer/apps/{}", enc(id))
}

/// An AddContainer request for the `n`-th container of a run.
pub fn add_request(name: &str, n: usize) -> Value {
    json!({"type": "AddContainer", "id": name, "ipv4": format!("198.18.1.{}", 10 + n),
           "ipv6": format!("2001:db8::{:x}", 10 + n), "mac": format!("02:00:00:00:01:{:02x}", n),
           "internet": false, "image": IMAGE_ALIAS})
}

/// Imports the chain app `name` and asserts it worked.
fn import_app(world: &World, d: &Daemon, name: &str, made: &mut Made) {
    let (status, body) = import(d, &chain_bundle(world, name));
    assert_eq!(status, 200, "setup import: {body}");
    made.apps.push(format!("{name}:1"));
}

fn start_app(d: &Daemon, id: &str) {
    let (status, body) = d.put(&format!("{}/start", app_path(id)));
    assert_eq!(status, 200, "setup start: {body}");
    assert_eq!(status_of(d, id), "Running", "setup start: {body}");
}

/// The app's Status as gantry shows it ("" when it cannot).
pub fn status_of(d: &Daemon, id: &str) -> String {
    let (_, app) = d.get(&app_path(id));
    app["Status"].as_str().unwrap_or_default().to_string()
}

/// One Distillery call that must succeed.
fn distillery_ok(d: &Daemon, call: &str, params: &[String]) {
    let result = super::daemon::distillery_call(d.distillery, call, params);
    let ok = result.as_ref().is_some_and(|r| r["success"] == true);
    assert!(ok, "setup {call}: {result:?}");
}

/// The chain app imported and started, then one of its image references moved to a new
/// image (as a pull of a newer image would), so that an update recreates the service `c`.
/// Both images keep a reference of the run's own (`extra`), so neither is left untagged
/// whichever way the update ends.
fn stale_app(world: &World, d: &Daemon, names: &mut Names, made: &mut Made) {
    import_app(world, d, &names.next("App"), made);
    start_app(d, &made.apps[0]);
    let [_, (two, _)] = world.app_images();
    let (old, new) = (
        format!("{}:1", names.next("old")),
        format!("{}:1", names.next("new")),
    );
    world.docker_ok(&["tag", two, &old]);
    let tar = world.fresh_image(&new, 0);
    let loaded = world.docker_input(&["load"], &tar);
    assert!(loaded.status.success(), "loading {new}");
    world.docker_ok(&["tag", &new, two]);
    made.extra.extend([old, new]);
}

/// A bundle file on the device for a provision, and the provision's parameter.
fn provision_param(world: &World, d: &Daemon, names: &mut Names, made: &mut Made) -> String {
    let name = names.next("App");
    made.apps.push(format!("{name}:1"));
    let file = d.dir.join(format!("{name}.zip"));
    std::fs::write(&file, chain_bundle(world, &name)).unwrap();
    json!({"Slug": format!("{name}:1"), "Bundle": file.display().to_string()}).to_string()
}

/// A template of two services (`web`, `greeter`) built from the test image, each with a file
/// of the run's own (so that no step comes from Docker's cache: every step creates an image).
pub fn template_zip(name: &str) -> Vec<u8> {
    let config = format!("Name: {name}\nVersion: 1.0-tpl\n");
    let build = "services:\n  web:\n    build: ./web\n    stop_grace_period: 1s\n  \
                 greeter:\n    build: ./greeter\n    stop_grace_period: 1s\n";
    let dockerfile = format!("FROM {IMAGE_ALIAS}\nCOPY marker /marker\nCMD {IDLE}\n");
    let marker = |service: &str| format!("{name} {service}\n");
    let (web, greeter) = (marker("web"), marker("greeter"));
    stored_zip(&[
        ("config.yml", config.as_bytes()),
        ("docker-compose-build.yml", build.as_bytes()),
        ("web/Dockerfile", dockerfile.as_bytes()),
        ("web/marker", web.as_bytes()),
        ("greeter/Dockerfile", dockerfile.as_bytes()),
        ("greeter/marker", greeter.as_bytes()),
    ])
}

pub const TEMPLATES: &str = "/api/1/transfer/templates";

/// A new template of the run, imported; its id.
fn import_template(d: &Daemon, names: &mut Names, made: &mut Made) -> String {
    let name = names.next("tpl");
    let (ct, body) = multipart("app", &template_zip(&name));
    let (status, body) = d.request("POST", TEMPLATES, Some((&ct, body)));
    assert_eq!(status, 200, "setup template import: {body}");
    made.templates.push(format!("{name}:1.0-tpl"));
    format!("{name}:1.0-tpl")
}

/// The chain app published to a store of the run's own (a namespace of the world's
/// registry) and removed again: the pool can install it from there.
fn published_app(world: &World, d: &Daemon, names: &mut Names, made: &mut Made) {
    let store =
        json!({"Store": {"Registry": world.registry_url(), "Namespace": names.next("store")}});
    let body = Some(("application/json", store.to_string().into_bytes()));
    let (status, answer) = d.request("PUT", "/api/1/configure", body);
    assert_eq!(status, 200, "setup store: {answer}");
    let name = names.next("App");
    let id = format!("{name}:1");
    let (status, body) = import(d, &chain_bundle(world, &name));
    assert_eq!(status, 200, "setup import: {body}");
    let (status, body) = d.put(&format!("/api/1/pool/publish/{}", enc(&id)));
    assert_eq!(status, 200, "setup publish: {body}");
    let (status, body) = d.request("DELETE", &app_path(&id), None);
    assert_eq!(status, 200, "setup delete: {body}");
    let (status, body) = d.put("/api/1/pool/refresh");
    assert_eq!(status, 200, "setup refresh: {body}");
    made.pool.push(id);
}

/// Whether the App Pool lists `id` as installed.
pub fn pool_installed(d: &Daemon, id: &str) -> bool {
    match d.get("/api/1/pool/apps") {
        (200, Value::Array(apps)) => apps.iter().any(|a| a["Id"] == id && a["Installed"] == true),
        _ => false,
    }
}

/// A Flow Manager container of the test image that runs until stopped.
fn flow_spec(name: &str) -> Value {
    json!({"name": name, "image": IMAGE_ALIAS,
           "command": "trap 'exit 0' TERM; sleep 600 & wait"})
}

/// A code directory `version` for a Flow Manager update (its `version` file says which).
fn code_dir(d: &Daemon, version: &str) -> String {
    let dir = d.dir.join(format!("code-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("version"), version).unwrap();
    dir.display().to_string()
}

/// One Flow Manager event that must be answered with `reply`; the reply's data.
fn flow_ok(d: &Daemon, event: &str, data: Value, reply: &str) -> Value {
    let answer = Sio::connect(d.flow).and_then(|mut s| s.call(event, data, reply));
    match answer {
        Some((name, data)) if name == reply => data,
        other => panic!("setup {event}: {other:?}"),
    }
}

/// A Flow Manager container, running, with the code `v1` (an update's first).
fn flow_container(d: &Daemon, names: &mut Names, made: &mut Made) {
    let name = names.next("flow");
    flow_ok(d, "create_container", flow_spec(&name), "container_created");
    made.flow.push(name.clone());
    flow_ok(
        d,
        "start_container",
        json!({"container_id": name}),
        "container_started",
    );
    let data = json!({"container_id": name, "code_path": code_dir(d, "v1")});
    let updated = flow_ok(d, "update_container", data, "container_updated");
    made.flow_old = updated["container_id"].as_str().map(String::from);
}

fn add_container(d: &Daemon, made: &mut Made, names: &mut Names) {
    let name = names.next("iv");
    let code = d
        .intervirt()
        .code(add_request(&name, made.containers.len()));
    assert_eq!(code, 0, "setup AddContainer {name}");
    made.containers.push(name);
}

/// What `op` needs before it runs.
pub fn setup(op: &str, world: &World, d: &Daemon, names: &mut Names) -> Made {
    let mut made = Made::default();
    match op {
        "import" | "load-image" | "intervirt-add" => {}
        "start" | "refresh" | "snapshot" => import_app(world, d, &names.next("App"), &mut made),
        "stop" | "delete" | "rebuild" | "purge" => {
            import_app(world, d, &names.next("App"), &mut made);
            start_app(d, &made.apps[0]);
        }
        "update" => stale_app(world, d, names, &mut made),
        "backup" => {
            // A backup before: one interrupted while it prunes leaves one too many.
            import_app(world, d, &names.next("App"), &mut made);
            distillery_ok(d, "backup", &[]);
        }
        "provision" | "service-create" | "import-image" | "flow-create" | "template-import" => {}
        "build" => {
            import_template(d, names, &mut made);
        }
        "pool-install" => published_app(world, d, names, &mut made),
        "instantiate" => {
            let id = import_template(d, names, &mut made);
            made.apps.push(id.replace(":1.0-tpl", ":1.0"));
        }
        "flow-update" | "flow-delete" => flow_container(d, names, &mut made),
        "intervirt-remove" | "intervirt-update" | "intervirt-wipe" => {
            add_container(d, &mut made, names)
        }
        other => panic!(
            "no fault-test driver for the operation {other}: add one in tests/faults/drivers.rs"
        ),
    }
    made
}

/// Starts `op` on a thread; the request's (status or code, body), None when gantry died
/// under it. Records in `made` what the operation may create.
pub fn trigger(
    op: &str,
    world: &World,
    d: &Daemon,
    names: &mut Names,
    made: &mut Made,
    big: bool,
) -> JoinHandle<Option<Value>> {
    let (transfer, intervirt, distillery) = (d.transfer, d.intervirt, d.distillery);
    let (duxcore, flow) = (d.duxcore, d.flow);
    let request = match op {
        "import" => {
            let name = names.next("App");
            made.apps.push(format!("{name}:1"));
            let bundle = match big {
                true => big_bundle(world, &name),
                false => chain_bundle(world, &name),
            };
            let (ct, body) = multipart("app", &bundle);
            Request::Http("POST", "/api/1/transfer/import".into(), Some((ct, body)))
        }
        "load-image" => {
            let mib = if big { big_mib() } else { 0 };
            let reference = format!("{}:1", names.next("load"));
            let tar = world.fresh_image(&reference, mib);
            made.loads.push(reference);
            Request::Http(
                "POST",
                "/api/1/system/images".into(),
                Some(("application/x-tar".into(), tar)),
            )
        }
        "start" => Request::Http("PUT", format!("{}/start", app_path(&made.apps[0])), None),
        "stop" => Request::Http("PUT", format!("{}/stop", app_path(&made.apps[0])), None),
        "delete" => {
            let q = "?force=true&remove_images=true&remove_volumes=true";
            Request::Http("DELETE", format!("{}{q}", app_path(&made.apps[0])), None)
        }
        "refresh" => Request::Http("PUT", "/api/1/transfer/refresh/apps".into(), None),
        "intervirt-add" => {
            let name = names.next("iv");
            let r = add_request(&name, made.containers.len());
            made.containers.push(name);
            Request::Intervirt(r)
        }
        "intervirt-remove" => {
            Request::Intervirt(json!({"type": "RemoveContainer", "id": made.containers[0]}))
        }
        "rebuild" | "update" | "purge" | "snapshot" => {
            Request::Distillery(op.to_string(), vec![made.apps[0].clone()])
        }
        "backup" => Request::Distillery("backup".into(), Vec::new()),
        "service-create" => {
            let id = names.next("svc");
            made.services.push(id.clone());
            let params = json!({"id": id, "image": IMAGE_ALIAS, "bind_dir": "data",
                                "bind_contents": world.contents_url()});
            let body = json!({"type": "raw", "params": params}).to_string();
            let body = Some(("application/json".into(), body.into_bytes()));
            Request::Duxcore("POST", "/v1/service".into(), body)
        }
        "import-image" => {
            let body = Some((
                "application/x-tar".into(),
                world.rootfs(ROOTFS_MIB).to_vec(),
            ));
            Request::Duxcore("POST", "/v1/docker/image".into(), body)
        }
        "flow-create" => {
            let name = names.next("flow");
            made.flow.push(name.clone());
            Request::Flow("create_container", flow_spec(&name), "container_created")
        }
        "flow-update" => {
            let code = code_dir(d, "v2");
            let data = json!({"container_id": made.flow[0], "code_path": code});
            Request::Flow("update_container", data, "container_updated")
        }
        "flow-delete" => {
            let data = json!({"container_id": made.flow[0]});
            Request::Flow("delete_container", data, "container_deleted")
        }
        "provision" => {
            let param = provision_param(world, d, names, made);
            Request::Distillery("provision".into(), vec![param])
        }
        "template-import" => {
            let name = names.next("tpl");
            made.templates.push(format!("{name}:1.0-tpl"));
            let (ct, body) = multipart("app", &template_zip(&name));
            Request::Http("POST", TEMPLATES.into(), Some((ct, body)))
        }
        "build" => {
            let path = format!("{TEMPLATES}/{}/build", enc(&made.templates[0]));
            Request::Http("GET", path, None)
        }
        "instantiate" => {
            let path = format!("{TEMPLATES}/{}/instantiate", enc(&made.templates[0]));
            Request::Http("POST", path, None)
        }
        "pool-install" => {
            let path = format!("/api/1/pool/apps/{}", enc(&made.pool[0]));
            Request::Http("PUT", path, None)
        }
        "intervirt-update" => Request::Intervirt(json!({"type": "Command", "command": "update"})),
        "intervirt-wipe" => Request::Intervirt(json!({"type": "Command", "command": "wipe"})),
        other => panic!("no fault-test driver for the operation {other}"),
    };
    let client = Client {
        transfer,
        intervirt,
        distillery,
        duxcore,
        flow,
    };
    std::thread::spawn(move || client.send(request))
}

enum Request {
    Http(&'static str, String, Option<(String, Vec<u8>)>),
    Intervirt(Value),
    /// A Distillery call and its parameters.
    Distillery(String, Vec<String>),
    Duxcore(&'static str, String, Option<(String, Vec<u8>)>),
    /// A Flow Manager event, its data and the name of its reply.
    Flow(&'static str, Value, &'static str),
}

/// MiB of random data in the root filesystem an image import sends (Docker takes a moment
/// to register it, so that the import can be killed while it does).
const ROOTFS_MIB: usize = 32;

/// Where a trigger thread sends its request (a copy of the daemon's addresses).
struct Client {
    transfer: std::net::SocketAddr,
    intervirt: std::net::SocketAddr,
    distillery: std::net::SocketAddr,
    duxcore: std::net::SocketAddr,
    flow: std::net::SocketAddr,
}

impl Client {
    fn send(self, r: Request) -> Option<Value> {
        match r {
            Request::Http(method, path, body) => {
                let url = format!("http://{}{path}", self.transfer);
                let b = ureq::http::Request::builder().method(method).uri(url);
                let (b, bytes) = match body {
                    Some((ct, bytes)) => (b.header("Content-Type", ct), bytes),
                    None => (b, Vec::new()),
                };
                let mut resp = crate::common::agent().run(b.body(bytes).unwrap()).ok()?;
                let status = resp.status().as_u16();
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                Some(json!({"status": status, "body": text}))
            }
            Request::Intervirt(v) => {
                let stream = std::net::TcpStream::connect(self.intervirt).ok()?;
                let url = format!("ws://{}/containerManagement", self.intervirt);
                let (ws, _) = tokio_tungstenite::tungstenite::client::client(url, stream).ok()?;
                super::daemon::Intervirt::from_socket(ws).request(v)
            }
            Request::Distillery(call, params) => {
                super::daemon::distillery_call(self.distillery, &call, &params)
            }
            Request::Duxcore(method, path, body) => {
                let agent = crate::common::agent();
                let body = body.as_ref().map(|(ct, b)| (ct.as_str(), b.clone()));
                let (status, body) =
                    super::daemon::duxcore_request(&agent, self.duxcore, method, &path, body)?;
                Some(json!({"status": status, "body": body}))
            }
            Request::Flow(event, data, reply) => {
                let (name, data) = Sio::connect(self.flow)?.call(event, data, reply)?;
                Some(json!({"event": name, "data": data}))
            }
        }
    }
}

/// The next operations on what the run made must work: each app is started (when stopped)
/// or stopped (when running), then removed with its images and volumes; each Intervirt
/// container gantry knows is removed, and a new one can be added and removed. Returns the
/// failures.
pub fn next_and_clean(
    world: &World,
    d: &Daemon,
    made: &Made,
    names: &mut Names,
    op: &str,
) -> Vec<String> {
    let mut problems = clean_services(world, d, made);
    problems.extend(clean_flow(d, made));
    for app in d.apps() {
        let id = app["Id"].as_str().unwrap_or_default().to_string();
        let path = app_path(&id);
        let (toggle, then) = match app["Status"] == "Running" {
            true => ("stop", "Stopped"),
            false => ("start", "Running"),
        };
        let (status, body) = d.put(&format!("{path}/{toggle}"));
        if status != 200 || status_of(d, &id) != then {
            problems.push(format!(
                "{toggle} of {id} after the recovery: {status} {body}"
            ));
        }
        let q = "?force=true&remove_images=true&remove_volumes=true";
        let (status, body) = d.request("DELETE", &format!("{path}{q}"), None);
        if status != 200 && status != 204 {
            problems.push(format!(
                "delete of {id} after the recovery: {status} {body}"
            ));
        }
    }
    for template in d.templates() {
        let id = template["Id"].as_str().unwrap_or_default();
        let path = format!("{TEMPLATES}/{}?remove_images=true", enc(id));
        let (status, body) = d.request("DELETE", &path, None);
        if status != 200 && status != 204 {
            problems.push(format!(
                "removing the template {id} after the recovery: {status} {body}"
            ));
        }
    }
    if !made.pool.is_empty() {
        let (status, body) = d.put("/api/1/pool/clear");
        if status != 200 {
            problems.push(format!(
                "clearing the pool after the recovery: {status} {body}"
            ));
        }
    }
    for image in made.loaded.iter().chain(&made.extra) {
        let (status, body) = d.request(
            "DELETE",
            &format!("/api/1/system/images/{}", enc(image)),
            None,
        );
        // 404: the load never began (killed before its intent), so nothing was loaded.
        if status != 200 && status != 404 {
            problems.push(format!("removing the loaded {image}: {status} {body}"));
        }
    }
    let mut iv = d.intervirt();
    for name in &made.containers {
        match iv.code(json!({"type": "RemoveContainer", "id": name})) {
            0 | 6 => {}
            code => problems.push(format!(
                "RemoveContainer {name} after the recovery: code {code}"
            )),
        }
    }
    if !op.starts_with("intervirt") {
        return problems;
    }
    let fresh = names.next("iv");
    let added = iv.code(add_request(&fresh, 200));
    let removed = iv.code(json!({"type": "RemoveContainer", "id": fresh}));
    if (added, removed) != (0, 0) {
        problems.push(format!(
            "a new container after the recovery: add {added}, remove {removed}"
        ));
    }
    problems
}

/// Each Flow Manager container the run may have made is started, then deleted (or there is
/// none). The failures.
fn clean_flow(d: &Daemon, made: &Made) -> Vec<String> {
    let mut problems = Vec::new();
    for name in &made.flow {
        let Some(mut sio) = Sio::connect(d.flow) else {
            problems.push("the Flow Manager does not answer".into());
            continue;
        };
        let data = json!({"container_id": name});
        let started = sio.call("start_container", data.clone(), "container_started");
        let deleted = sio.call("delete_container", data, "container_deleted");
        let gone = |r: &Option<(String, Value)>| {
            r.as_ref()
                .is_some_and(|(_, v)| v.to_string().contains("not found"))
        };
        let ok = |r: &Option<(String, Value)>, want: &str| {
            r.as_ref().is_some_and(|(n, _)| n == want) || gone(r)
        };
        if !ok(&started, "container_started") || !ok(&deleted, "container_deleted") {
            problems.push(format!(
                "start and delete of {name} after the recovery: {started:?} {deleted:?}"
            ));
        }
    }
    problems
}

/// Each service the run may have made is deleted (or there is none); a committed image
/// import's image goes. The failures.
fn clean_services(world: &World, d: &Daemon, made: &Made) -> Vec<String> {
    let mut problems = Vec::new();
    for id in &made.services {
        let (status, body) = d.duxcore("DELETE", &format!("/v1/service/{id}"), None);
        // The duxcore dialect answers a missing service with 400 "no service ...".
        let none = body.to_string().contains("no service");
        if status != 200 && !none {
            problems.push(format!("deleting the service {id}: {status} {body}"));
        }
    }
    if made.import_committed {
        let filter = format!("label={LABEL_IMPORT}");
        for image in world.docker_lines(&["images", "-q", "--no-trunc", "--filter", &filter]) {
            let _ = world.docker(&["rmi", &image]);
        }
    }
    problems
}

/// What the rule of `op` must have made of the run after a crash at `point` and the
/// restart, beyond what the oracle checks for every run (a consistent state): the problems.
pub fn expected(op: &str, point: &str, world: &World, d: &Daemon, made: &Made) -> Vec<String> {
    if op == "service-create" || op == "import-image" {
        return rolled_back_service(op, world, d, made);
    }
    if op.starts_with("flow-") {
        return flow_expected(op, point, world, d, made);
    }
    if op == "pool-install" {
        // Resumed at start whatever the point: installed, no download left.
        let id = &made.pool[0];
        let left = std::fs::read_dir(d.state().join("pool/downloads"));
        let left: Vec<_> = left
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        let mut problems = Vec::new();
        if !pool_installed(d, id) {
            problems.push(format!("{id} is not installed after the restart ({point})"));
        }
        if !left.is_empty() {
            problems.push(format!("downloads left after the restart: {left:?}"));
        }
        return problems;
    }
    if ["template-import", "build", "instantiate"].contains(&op) {
        return template_expected(op, point, d, made);
    }
    let Some(app) = made.apps.first() else {
        return Vec::new();
    };
    let listed = d.apps().iter().any(|a| a["Id"] == app.as_str());
    let status = status_of(d, app);
    let mut problems = Vec::new();
    match op {
        // Finished.
        "start" | "rebuild" if status != "Running" => problems.push(format!(
            "{app} is {status:?} after an interrupted {op}, not Running"
        )),
        "stop" if status != "Stopped" => problems.push(format!(
            "{app} is {status:?} after an interrupted stop, not Stopped"
        )),
        // Finished (delete, purge) or rolled back (provision): the app is gone.
        "delete" | "purge" | "provision" if listed => {
            problems.push(format!("{app} is still listed after an interrupted {op}"))
        }
        "update" => {
            let [_, (two, _)] = world.app_images();
            let (old, new) = (&made.extra[0], &made.extra[1]);
            // Before it noted anything nothing changed; once committed it is kept; in
            // between the references get the images the containers ran.
            let kept = ["update.intent-written", "update.committed"].contains(&point);
            let want = if kept { new } else { old };
            let id_of = |r: &str| world.docker_ok(&["image", "inspect", "-f", "{{.Id}}", r]);
            if id_of(two) != id_of(want) {
                problems.push(format!("{two} is not the image of {want} after the update"));
            }
            if status != "Running" {
                problems.push(format!("{app} is {status:?} after an interrupted update"));
            }
        }
        _ => {}
    }
    problems
}

/// A create or an image import killed midway is rolled back: no container of the service,
/// no image of the import.
fn rolled_back_service(op: &str, world: &World, d: &Daemon, made: &Made) -> Vec<String> {
    let (what, filter) = match op {
        "service-create" => ("container", format!("label={LABEL_SERVICE}")),
        _ => ("image", format!("label={LABEL_IMPORT}")),
    };
    let list = match what {
        "container" => world.docker_lines(&["ps", "-aq", "--filter", &filter]),
        _ => world.docker_lines(&["images", "-q", "--filter", &filter]),
    };
    let mut problems = Vec::new();
    if !list.is_empty() {
        problems.push(format!("{what}s of an interrupted {op} left: {list:?}"));
    }
    if let Some(id) = made.services.first() {
        let dir = d.state().join("duxcore/services").join(id);
        if dir.exists() {
            problems.push(format!("{} left by an interrupted create", dir.display()));
        }
    }
    problems
}

/// A Flow Manager create is finished once its request reached Docker, an update rolled back
/// until its old container was removed (finished after), a delete finished.
fn flow_expected(op: &str, point: &str, world: &World, d: &Daemon, made: &Made) -> Vec<String> {
    let name = &made.flow[0];
    let inspect = world.docker(&["inspect", "-f", "{{.Id}} {{.State.Running}}", name]);
    let found = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
    let exists = inspect.status.success();
    let code = std::fs::read_to_string(d.sockets().join(format!("{name}_code/version")));
    let mut problems = Vec::new();
    match op {
        "flow-create" if point != "flow-create.intent-written" && !exists => problems.push(
            format!("{name} was not created after an interrupted create"),
        ),
        "flow-delete" if exists || code.is_ok() => problems.push(format!(
            "{name} or its code left after an interrupted delete"
        )),
        "flow-update" => {
            let kept = point == "flow-update.old-removed";
            let old = made.flow_old.as_deref().unwrap_or_default();
            let want = if kept { "v2" } else { "v1" };
            if found.starts_with(old) == kept {
                problems.push(format!("{name} is {found:?} after the update (old {old})"));
            }
            if !found.ends_with("true") {
                problems.push(format!("{name} does not run after the update: {found:?}"));
            }
            if code.as_deref().ok() != Some(want) {
                problems.push(format!("{name}'s code is {code:?}, not {want}"));
            }
        }
        _ => {}
    }
    problems
}

/// A template import is kept once stored (rolled back before); a build is undone (the
/// template not built); an instantiation is kept once its app is stored, undone before.
fn template_expected(op: &str, point: &str, d: &Daemon, made: &Made) -> Vec<String> {
    let id = &made.templates[0];
    let template = d.templates().into_iter().find(|t| t["Id"] == id.as_str());
    let built = template.as_ref().is_some_and(|t| t["Built"] == true);
    let instance = made.apps.first();
    let listed = instance.is_some_and(|a| d.apps().iter().any(|x| x["Id"] == a.as_str()));
    let mut problems = Vec::new();
    let stored = point == "import.stored";
    if op == "template-import" && template.is_some() != stored {
        problems.push(format!(
            "{id} listed: {}, after {point}",
            template.is_some()
        ));
    }
    if op == "build" && built {
        problems.push(format!(
            "{id} is built after an interrupted build ({point})"
        ));
    }
    if op == "instantiate" {
        let kept = point == "instantiate.stored";
        if listed != kept {
            problems.push(format!("{instance:?} listed: {listed}, after {point}"));
        }
        if built != kept {
            problems.push(format!("{id} built: {built}, after {point}"));
        }
    }
    problems
}
