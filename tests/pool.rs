//! The App Pool end to end: the local registry (Debian's docker-registry) as the store, a
//! pool gantry, and a fleet of server gantrys, each with its own dockerd in its own network
//! namespace.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::bundle::{fresh_big_image, import, saved_image, zip_of};
use common::fleet::{Fleet, Guard, Proxy, Registry};
use common::pki::Pki;
use common::{enc, read_raw_response, run_ok, unique, wait_for, write_all, Gantry, GantryBuilder};
use serde_json::{json, Value};

/// A pool gantry whose store is `registry_url`, probing its servers every second; the
/// servers' token files are in `token_dir`.
fn pool_builder(
    host: &str,
    registry_url: &str,
    namespace: &str,
    token_dir: &Path,
) -> GantryBuilder {
    Gantry::builder()
        .docker_host(host)
        .config(&format!(
            "[pool]\nregistry = {registry_url:?}\nnamespace = {namespace:?}\ntoken_dir = {:?}\nprobe_interval_secs = 1\nidle_timeout_secs = 20\nrequest_timeout_secs = 20\ndownload_retry_secs = 60",
            token_dir.display().to_string()
        ))
}

/// An app bundle of one web service on the busybox image `reference` (its `docker save`
/// `tar`), carrying `filler_mib` MiB of another image to make the bundle large.
fn web_app(name: &str, reference: &str, tar: &[u8], filler_mib: usize) -> Vec<u8> {
    let compose = format!(
        "services:\n  web:\n    image: {reference}\n    command: [\"sh\", \"-c\", \"mkdir -p /www; echo pooled > /www/index.html; exec httpd -f -p 8080 -h /www\"]\n    stop_grace_period: 1s\n"
    );
    let config = format!("Name: {name}\nVersion: 1.0\n");
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("config.yml", config.as_bytes()),
        ("compose.yaml", compose.as_bytes()),
        ("docker/web.tar", tar),
    ];
    let filler = (filler_mib > 0).then(|| fresh_big_image("filler", filler_mib).1);
    if let Some(f) = &filler {
        entries.push(("docker/filler.tar", f));
    }
    zip_of(&entries)
}

fn pool_app(g: &Gantry, id: &str) -> Option<Value> {
    let r = g.get("/api/1/pool/apps");
    if r.status == 204 {
        return None;
    }
    r.expect_json(200)
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["Id"] == id)
        .cloned()
}

/// Imports `zip` into `g` and publishes it; the published artifact.
fn import_and_publish(g: &Gantry, zip: &[u8], id: &str) -> Value {
    import(g, zip).expect_json(200);
    let published = g
        .put(&format!("/api/1/pool/publish/{}", enc(id)))
        .expect_json(200);
    assert_eq!(published["Id"], id, "{published}");
    // The app itself goes; the pool gets it back from the store.
    g.delete(&format!("/api/1/transfer/apps/{}", enc(id)))
        .expect_empty(200);
    published
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn the_pool_installs_from_the_store_resumes_and_refuses_a_bad_digest() {
    let host = require_docker!();
    let mut registry = Registry::start();
    let proxy = Proxy::start(registry.addr);
    let ns = unique("store");
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap();
    let start = || {
        pool_builder(&host, &format!("http://{}", proxy.addr), &ns, state.path())
            .env("GANTRY_STATE_DIR", state_dir)
            .start()
    };
    let g = start();
    let config = g.get("/api/1/configure").expect_json(200);
    assert_eq!(config["Store"]["Namespace"], ns.as_str(), "{config}");
    assert_eq!(config["StoreSource"], "file");
    assert_eq!(config["TokenDir"], state_dir, "{config}");
    let store = json!({"Store": {"Registry": format!("http://{}", proxy.addr), "Namespace": ns}});
    let config = g
        .send_json("PUT", "/api/1/configure", &store)
        .expect_json(200);
    assert_eq!(config["StoreSource"], "api", "{config}");

    let name = unique("Pooled");
    let id = format!("{name}:1.0");
    let (reference, tar) = saved_image("pooled");
    let published = import_and_publish(&g, &web_app(&name, &reference, &tar, 24), &id);
    let size = published["Size"].as_u64().unwrap();
    assert!(size > 24 << 20, "{published}");
    let listed = g.put("/api/1/pool/refresh").expect_json(200);
    assert!(listed.to_string().contains(&id), "{listed}");
    let app = pool_app(&g, &id).unwrap();
    assert_eq!(
        (app["Installed"].clone(), app["Available"].clone()),
        (json!(false), json!(true))
    );

    // The store goes away mid-download and comes back: the download resumes where it was.
    let before = proxy.delivered.load(Ordering::SeqCst);
    proxy.set_rate(4 << 20);
    let path = format!("/api/1/pool/apps/{}", enc(&id));
    let installing = put_in_background(&g, &path);
    wait_delivered(&proxy, before + (6 << 20));
    registry.stop();
    proxy.cut();
    std::thread::sleep(Duration::from_secs(2));
    registry.restart();
    proxy.set_upstream(registry.addr);
    proxy.set_rate(0);
    let status = installing
        .join()
        .unwrap()
        .expect("the install request failed");
    assert_eq!(status, 200, "{}", g.stderr());
    assert!(
        proxy.range_requests() >= 1,
        "the download was not resumed with a range request"
    );
    assert_resumed(&proxy, before, size);
    assert_eq!(pool_app(&g, &id).unwrap()["Installed"], true);

    // A blob whose bytes do not match its digest is refused, and nothing of it stays.
    let bad = unique("Tampered");
    let bad_id = format!("{bad}:1.0");
    let (bad_ref, bad_tar) = saved_image("tampered");
    let published = import_and_publish(&g, &web_app(&bad, &bad_ref, &bad_tar, 0), &bad_id);
    let blob = registry.blob_file(published["Digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let bad_path = format!("/api/1/pool/apps/{}", enc(&bad_id));
    let detail = g.put(&bad_path).expect_problem(500, &bad_path);
    assert!(detail.contains("does not match its digest"), "{detail}");
    assert_eq!(pool_app(&g, &bad_id).unwrap()["Installed"], false);

    g.delete(&path).expect_empty(200);
    assert_eq!(pool_app(&g, &id).unwrap()["Installed"], false);
    let g = killed_mid_download(g, &proxy, &id, size, start);
    g.put(&path).expect_json(200);
    over_the_bundle_limit(&host, &format!("http://{}", registry.addr), &ns, &id);
    g.put("/api/1/pool/clear").expect_empty(200);
    g.get("/api/1/pool/apps").expect_empty(204);
}

/// A pool whose bundle limit (`apps.max_bundle_bytes`) the app `id` exceeds refuses to
/// download it, and keeps nothing of it.
fn over_the_bundle_limit(host: &str, registry_url: &str, ns: &str, id: &str) {
    let state = tempfile::tempdir().unwrap();
    let small = pool_builder(host, registry_url, ns, state.path())
        .config("[apps]\nmax_bundle_bytes = 1048576")
        .env("GANTRY_STATE_DIR", state.path().to_str().unwrap())
        .start();
    small.put("/api/1/pool/refresh").expect_json(200);
    let path = format!("/api/1/pool/apps/{}", enc(id));
    let detail = small.put(&path).expect_problem(400, &path);
    assert!(detail.contains("apps.max_bundle_bytes"), "{detail}");
    let downloads = state.path().join("pool/downloads");
    let left = std::fs::read_dir(&downloads).map_or(0, |d| d.count());
    assert_eq!(left, 0, "{} holds files", downloads.display());
}

/// `PUT path` on a thread of its own; its status, or the error when the request broke off.
fn put_in_background(g: &Gantry, path: &str) -> std::thread::JoinHandle<Result<u16, ureq::Error>> {
    let url = g.url(path);
    std::thread::spawn(move || {
        common::agent()
            .put(&url)
            .send_empty()
            .map(|r| r.status().as_u16())
    })
}

/// Waits until the proxy delivered more than `bytes` in all.
fn wait_delivered(proxy: &Proxy, bytes: u64) {
    wait_for(Duration::from_secs(30), Duration::from_millis(20), || {
        (proxy.delivered.load(Ordering::SeqCst) > bytes).then_some(())
    })
    .expect("the download did not start");
}

/// A download that went on from where it was moves the blob about once: one that started
/// over moves what it had before the break (at least 6 MiB) twice.
fn assert_resumed(proxy: &Proxy, before: u64, size: u64) {
    let moved = proxy.delivered.load(Ordering::SeqCst) - before;
    assert!(
        moved < size + (3 << 20),
        "the download started over: {moved} bytes moved for a blob of {size}"
    );
}

/// The pool gantry killed while it downloads `id` (not installed yet); `start` starts it
/// again on the same state, where the download resumes by itself from where it was.
fn killed_mid_download(
    g: Gantry,
    proxy: &Proxy,
    id: &str,
    size: u64,
    start: impl Fn() -> Gantry,
) -> Gantry {
    let (before, ranges) = (
        proxy.delivered.load(Ordering::SeqCst),
        proxy.range_requests(),
    );
    proxy.set_rate(4 << 20);
    let installing = put_in_background(&g, &format!("/api/1/pool/apps/{}", enc(id)));
    wait_delivered(proxy, before + (8 << 20));
    g.signal(common::Signal::SIGKILL);
    let mut g = g;
    g.wait_exit(Duration::from_secs(10))
        .expect("gantry did not die");
    let answer = installing.join().unwrap();
    assert!(
        answer.is_err(),
        "the install ended before the kill: {answer:?}"
    );
    drop(g);
    proxy.set_rate(0);
    let g = start();
    let installed = wait_for(Duration::from_secs(60), Duration::from_millis(250), || {
        let app = pool_app(&g, id)?;
        (app["Installed"] == true).then_some(())
    });
    assert!(
        installed.is_some(),
        "not resumed after a restart: {}",
        g.stderr()
    );
    assert!(
        proxy.range_requests() > ranges,
        "the download was not resumed with a range request after the restart"
    );
    assert_resumed(proxy, before, size);
    g
}

/// Waits until every deployment in `ids` shows `status`.
fn wait_status(pool: &Gantry, ids: &[String], status: &str, limit: Duration) {
    let done = wait_for(limit, Duration::from_millis(250), || {
        let r = pool.get("/api/1/deployments");
        let list = if r.status == 200 { r.json() } else { json!([]) };
        let all = ids.iter().all(|id| {
            list.as_array()
                .unwrap()
                .iter()
                .any(|d| d["Id"] == id.as_str() && d["Status"] == status)
        });
        all.then_some(())
    });
    assert!(
        done.is_some(),
        "deployments {ids:?} never became {status}: {}",
        pool.get("/api/1/deployments").text()
    );
}

fn deploy(pool: &Gantry, server: &str, app: &str) -> String {
    let d = pool
        .send_json(
            "POST",
            "/api/1/deployments",
            &json!({"Server": server, "App": app}),
        )
        .expect_json(202);
    assert_eq!(d["State"], "Pending", "{d}");
    d["Id"].as_str().unwrap().to_string()
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_fleet_of_servers_gets_its_apps_from_the_pool() {
    let host = require_docker!();
    let registry = Registry::start();
    let mut fleet = Fleet::start(3);
    let registry_url = format!("http://{}", registry.addr);
    let pool = pool_builder(&host, &registry_url, &unique("fleet"), fleet.token_dir()).start();
    let name = unique("FleetWeb");
    let id = format!("{name}:1.0");
    let (reference, tar) = saved_image("fleetweb");
    import_and_publish(&pool, &web_app(&name, &reference, &tar, 24), &id);
    pool.put(&format!("/api/1/pool/apps/{}", enc(&id)))
        .expect_json(200);

    // A wrong token is reported as unauthorized; the right one registers the server.
    let wrong = fleet.servers[0].token_file.with_extension("wrong");
    std::fs::write(&wrong, "not-the-token-of-this-server").unwrap();
    let r = pool.send_json(
        "POST",
        "/api/1/servers",
        &json!({"Server": fleet.servers[0].url(), "TokenFile": wrong}),
    );
    assert_eq!(r.status, 400, "{r}");
    assert!(r.text().contains("unauthorized"), "{r}");
    // A token file outside the pool's token_dir is refused, even with the right token.
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), &fleet.servers[0].token).unwrap();
    let server = json!({"Server": fleet.servers[0].url(), "TokenFile": outside.path()});
    let detail = pool
        .send_json("POST", "/api/1/servers", &server)
        .expect_problem(400, "/api/1/servers");
    assert!(detail.contains("pool.token_dir"), "{detail}");
    let mut server_ids = Vec::new();
    for (i, s) in fleet.servers.iter().enumerate() {
        // A name relative to the token_dir does as well as a full path.
        let token_file = match i {
            2 => Path::new(s.token_file.file_name().unwrap()),
            _ => s.token_file.as_path(),
        };
        let v = pool
            .send_json(
                "POST",
                "/api/1/servers",
                &json!({"Server": s.url(), "TokenFile": token_file}),
            )
            .expect_json(201);
        assert_eq!(v["Status"], "Online", "{v}");
        server_ids.push(v["Id"].as_str().unwrap().to_string());
    }
    // A web page cannot drive the pool: a foreign Origin or Host is refused before a pool
    // route runs, and nothing is deployed.
    let body = json!({"Server": server_ids[0], "App": id}).to_string();
    for foreign in [
        ("Origin", "http://evil.example"),
        ("Host", "pool.evil.example"),
    ] {
        let headers = [foreign, ("Content-Type", "application/json")];
        let r = pool.request(
            "POST",
            "/api/1/deployments",
            &headers,
            Some(body.clone().into()),
        );
        assert_eq!(r.status, 403, "{foreign:?}: {r}");
    }
    pool.get("/api/1/deployments").expect_empty(204);
    let deployments: Vec<String> = server_ids.iter().map(|s| deploy(&pool, s, &id)).collect();
    wait_status(&pool, &deployments, "Stopped", Duration::from_secs(120));
    for d in &deployments {
        let up = pool
            .put(&format!("/api/1/deployments/{d}/start"))
            .expect_json(200);
        assert_eq!(up["ExitCode"], 0, "{up}");
    }
    wait_status(&pool, &deployments, "Running", Duration::from_secs(30));
    for s in &fleet.servers {
        assert!(!s
            .docker(&["ps", "-q", "--filter", &format!("ancestor={reference}")])
            .is_empty());
    }
    // Server 2's stays running: deleting it stops it first.
    for d in &deployments[..2] {
        pool.put(&format!("/api/1/deployments/{d}/stop"))
            .expect_json(200);
    }
    wait_status(&pool, &deployments[..2], "Stopped", Duration::from_secs(30));

    // A rotated token makes its server unauthorized until the right one is back.
    let s0 = &fleet.servers[0];
    std::fs::write(&s0.token_file, "a-wrong-token-for-this-server").unwrap();
    wait_server(&pool, &server_ids[0], "Unauthorized");
    std::fs::write(&s0.token_file, &s0.token).unwrap();
    wait_server(&pool, &server_ids[0], "Online");

    for d in &deployments {
        pool.delete(&format!("/api/1/deployments/{d}"))
            .expect_empty(200);
    }
    pool.get("/api/1/deployments").expect_empty(204);
    for s in &fleet.servers {
        s.gantry().get("/api/1/transfer/apps").expect_empty(204);
        assert_eq!(s.docker(&["ps", "-aq"]), "", "containers left on {}", s.ip);
    }
    server_away_mid_deploy(&pool, &mut fleet, &server_ids, &id);
}

fn wait_server(pool: &Gantry, id: &str, status: &str) {
    let seen = wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        let list = pool.get("/api/1/servers").expect_json(200);
        list.as_array()
            .unwrap()
            .iter()
            .any(|s| s["Id"] == id && s["Status"] == status)
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "server {id} never became {status}: {}",
        pool.get("/api/1/servers").text()
    );
}

/// A server killed mid-transfer gets the app when it is back; a deployment deleted while
/// its server is away is removed from it when it returns, and does not come back.
fn server_away_mid_deploy(pool: &Gantry, fleet: &mut Fleet, server_ids: &[String], id: &str) {
    // The pool reaches server 1 through a slow proxy, so the transfer takes a while.
    let s1 = &fleet.servers[1];
    let proxy = Proxy::start(s1.gantry().addr);
    proxy.set_rate(1 << 20);
    pool.delete(&format!("/api/1/servers/{}", server_ids[1]))
        .expect_empty(200);
    let via = pool
        .send_json(
            "POST",
            "/api/1/servers",
            &json!({"Server": format!("http://{}", proxy.addr), "TokenFile": s1.token_file}),
        )
        .expect_json(201);
    let via_id = via["Id"].as_str().unwrap().to_string();
    let d = deploy(pool, &via_id, id);
    let uploaded = |bytes: u64| {
        wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            (proxy.uploaded.load(Ordering::SeqCst) > bytes).then_some(())
        })
        .expect("the transfer did not start")
    };
    uploaded(1 << 20);
    // The slow server holds up no one: server 0 gets the app meanwhile.
    let other = deploy(pool, &server_ids[0], id);
    wait_status(
        pool,
        std::slice::from_ref(&other),
        "Stopped",
        Duration::from_secs(60),
    );
    let slow = pool
        .get(&format!("/api/1/deployments/{d}"))
        .expect_json(200);
    assert_eq!(slow["State"], "Deploying", "{slow}");
    pool.delete(&format!("/api/1/deployments/{other}"))
        .expect_empty(200);
    uploaded(4 << 20);
    let server = fleet.servers[1].gantry.as_mut().unwrap();
    server.signal(common::Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    wait_server(pool, &via_id, "Offline");
    assert_ne!(
        pool.get(&format!("/api/1/deployments/{d}"))
            .expect_json(200)["State"],
        "Deployed"
    );
    proxy.set_rate(0);
    fleet.servers[1]
        .gantry
        .as_mut()
        .unwrap()
        .restart_same_address();
    wait_status(
        pool,
        std::slice::from_ref(&d),
        "Stopped",
        Duration::from_secs(120),
    );
    let on_server = fleet.servers[1]
        .gantry()
        .get("/api/1/transfer/apps")
        .expect_json(200);
    assert_eq!(on_server[0]["Id"], id, "{on_server}");

    // Deleted while the server is away: removed there once it is back.
    let server = fleet.servers[1].gantry.as_mut().unwrap();
    server.signal(common::Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    wait_server(pool, &via_id, "Offline");
    let r = pool.delete(&format!("/api/1/deployments/{d}"));
    assert_eq!(r.status, 202, "{r}");
    fleet.servers[1]
        .gantry
        .as_mut()
        .unwrap()
        .restart_same_address();
    let gone = wait_for(Duration::from_secs(60), Duration::from_millis(250), || {
        (pool.get("/api/1/deployments").status == 204).then_some(())
    });
    assert!(gone.is_some(), "{}", pool.get("/api/1/deployments").text());
    fleet.servers[1]
        .gantry()
        .get("/api/1/transfer/apps")
        .expect_empty(204);
}

/// The pool's JSON bodies are read as every request body is: one that stalls fails after
/// `http.body_read_timeout_secs` instead of holding its connection.
#[test]
fn a_stalled_pool_body_times_out() {
    let g = Gantry::builder().http("body_read_timeout_secs = 1").start();
    let mut s = g.connect();
    let head = format!(
        "POST /api/1/servers HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"Server\": ",
        g.addr
    );
    write_all(&mut s, head.as_bytes()).unwrap();
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (status, text) = read_raw_response(&mut s);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("body_read_timeout_secs"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stalled body held on for {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// A private store: TLS with a certificate of a private CA, and credentials

/// The password the private store's htpasswd file holds (bcrypt) for the user `gantry`.
const STORE_PASSWORD: &str = "pool-store-password-1";

/// A registry on 127.0.0.1 behind TLS (its certificate signed by the test CA `ca` of `pki`)
/// that wants the user `gantry` and [`STORE_PASSWORD`].
fn private_store(pki: &Pki, dir: &Path) -> Registry {
    pki.leaf("registry", "127.0.0.1", "ca", "server_ext", false);
    let entry = run_ok("htpasswd", &["-Bbn", "gantry", STORE_PASSWORD]);
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("{entry}\n")).unwrap();
    Registry::start_guarded(Guard {
        tls: Some((pki.path("registry.pem"), pki.path("registry.key"))),
        htpasswd: Some(htpasswd),
    })
}

/// `[pool]` lines: `username` and `password_file` (a file in `dir` holding `password`)
/// when a password is given, and `ca_file` when given.
fn store_access(dir: &Path, password: Option<&str>, ca_file: Option<&Path>) -> String {
    let mut lines = String::new();
    if let Some(p) = password {
        let file = dir.join(format!("password-{}", unique("p")));
        std::fs::write(&file, format!("{p}\n")).unwrap();
        lines += &format!("username = \"gantry\"\npassword_file = {:?}\n", file);
    }
    if let Some(ca) = ca_file {
        lines += &format!("ca_file = {:?}\n", ca);
    }
    lines
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_private_store_needs_its_ca_and_the_right_credentials() {
    let host = require_docker!();
    let pki = Pki::new();
    let secrets = tempfile::tempdir().unwrap();
    let registry = private_store(&pki, secrets.path());
    let ns = unique("private");
    let state = tempfile::tempdir().unwrap();
    let ca = pki.path("ca.pem");
    let pool = |access: String| {
        pool_builder(&host, &registry.url(), &ns, secrets.path())
            .config(&access)
            .state_dir(state.path())
            .start()
    };

    // The CA and the right credentials: publish and install work over https.
    let g = pool(store_access(
        secrets.path(),
        Some(STORE_PASSWORD),
        Some(&ca),
    ));
    let config = g.get("/api/1/configure").expect_json(200);
    assert_eq!(config["Store"]["Registry"], registry.url(), "{config}");
    assert_eq!(config["Store"]["Authenticated"], true, "{config}");
    let name = unique("Private");
    let id = format!("{name}:1.0");
    let (reference, tar) = saved_image("private");
    import_and_publish(&g, &web_app(&name, &reference, &tar, 0), &id);
    let listed = g.put("/api/1/pool/refresh").expect_json(200);
    assert!(listed.to_string().contains(&id), "{listed}");
    let path = format!("/api/1/pool/apps/{}", enc(&id));
    g.put(&path).expect_json(200);
    assert_eq!(pool_app(&g, &id).unwrap()["Installed"], true);
    g.delete(&path).expect_empty(200);
    drop(g);
    let stored = registry.repositories(&ns);
    assert_eq!(stored.len(), 1, "{stored:?}");

    // Each refused access fails at once, names the store and why, and stores nothing.
    let cases = [
        (
            store_access(secrets.path(), Some("a-wrong-password"), Some(&ca)),
            "refused the pool's credentials (user \"gantry\"",
        ),
        (
            store_access(secrets.path(), None, Some(&ca)),
            "needs credentials and the pool has none",
        ),
        (
            store_access(secrets.path(), Some(STORE_PASSWORD), None),
            "presented a certificate the pool does not trust",
        ),
    ];
    for (access, why) in cases {
        let g = pool(access);
        refused_everywhere(
            &g,
            &registry,
            &state.path().join("pool/downloads"),
            &id,
            why,
        );
        assert_eq!(registry.repositories(&ns), stored);
    }
}

/// With the pool `g`, an install of `id` (in its index from before), a refresh and a
/// publication all fail at once with a 500 that names the store and says `why`, and
/// nothing is stored on either side (the pool's `downloads` stays empty).
fn refused_everywhere(g: &Gantry, registry: &Registry, downloads: &Path, id: &str, why: &str) {
    let refused = |r: common::Resp, path: &str| {
        let detail = r.expect_problem(500, path);
        assert!(
            detail.contains(&registry.url()) && detail.contains(why),
            "{path}: {detail}"
        );
        if !why.contains("certificate") {
            assert!(detail.contains("unauthorized"), "{path}: {detail}");
        }
    };
    let path = format!("/api/1/pool/apps/{}", enc(id));
    let started = Instant::now();
    refused(g.put(&path), &path);
    // The pool retries an unreachable store for download_retry_secs (60 s here).
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the refused install took {:?}",
        started.elapsed()
    );
    assert_eq!(pool_app(g, id).unwrap()["Installed"], false);
    let left = std::fs::read_dir(downloads).map_or(0, |d| d.count());
    assert_eq!(left, 0, "{} holds files", downloads.display());
    refused(g.put("/api/1/pool/refresh"), "/api/1/pool/refresh");

    let name = unique("Refused");
    let other = format!("{name}:1.0");
    let (reference, tar) = saved_image("refused");
    import(g, &web_app(&name, &reference, &tar, 0)).expect_json(200);
    let publish = format!("/api/1/pool/publish/{}", enc(&other));
    refused(g.put(&publish), &publish);
    g.delete(&format!("/api/1/transfer/apps/{}", enc(&other)))
        .expect_empty(200);
}

/// A `pool.ca_file` that is missing or holds no usable certificate stops the start with a
/// configuration error that names the key.
#[test]
fn a_bad_ca_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    for ca in [dir.path().join("missing.pem"), not_pem] {
        let config = dir.path().join("gantry.toml");
        std::fs::write(
            &config,
            format!("[pool]\nregistry = \"https://127.0.0.1:5000\"\nca_file = {ca:?}\n"),
        )
        .unwrap();
        let out = common::run_gantry(&["serve", "--config", config.to_str().unwrap()], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(
            stderr.contains("pool.ca_file") && stderr.contains(ca.to_str().unwrap()),
            "{stderr}"
        );
    }
}
