//! The Transfer dialect's Container System Module against the real test dockerd: images,
//! containers, volumes and prunes, through `/api/1/...`, `/api/...` and `/api/1.0/...`.
//!
//! Tests run in parallel against one dockerd. Prunes remove what other tests are using, and
//! the 204 checks need an empty daemon, so those tests take `exclusive()`; all others take
//! `shared()`. Each test removes what it created (`Cleanup`, dropped before the lock).

#[macro_use]
mod common;

use std::fs;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::Value;

use common::*;

static DOCKER_STATE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    DOCKER_STATE.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    DOCKER_STATE.write().unwrap_or_else(|e| e.into_inner())
}

fn array(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a JSON array: {v}"))
}

fn has_str(v: &Value, s: &str) -> bool {
    v.as_array()
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(s)))
}

/// Every delete response item's `key` values (`Untagged`, `Deleted`).
fn items(v: &Value, key: &str) -> Vec<String> {
    array(v)
        .iter()
        .filter_map(|i| i[key].as_str().map(str::to_string))
        .collect()
}

/// DELETEs the prune route `path`: asserts a 200 whose list names `pruned`, a `kind` that
/// Docker no longer has. Returns the list.
fn prune(g: &Gantry, path: &str, kind: &str, pruned: &str) -> Value {
    let r = g.delete(path);
    let v = r.expect_json(200);
    assert!(has_str(&v, pruned), "{path} should name {pruned}: {r}");
    assert!(
        !docker_exists(kind, pruned),
        "{kind} {pruned} is still there"
    );
    v
}

// ---------------------------------------------------------------------------------------------
// Images

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn lists_images_under_every_api_prefix() {
    require_docker!();
    let _l = shared();
    let g = Gantry::start();
    let image = test_image();
    let id = docker_id("image", &image);
    for prefix in ["/api/1", "/api", "/api/1.0"] {
        let path = format!("{prefix}/system/images");
        let r = g.get(&path);
        let v = r.expect_json(200);
        let entry = array(&v)
            .iter()
            .find(|i| i["Id"] == id.as_str())
            .unwrap_or_else(|| panic!("{path}: test image {id} not listed: {r}"));
        assert!(has_str(&entry["RepoTags"], &image), "{path}: {entry}");
        assert!(entry["Size"].as_i64().is_some_and(|s| s > 0), "{entry}");
    }
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn gets_an_image_by_name_and_by_id() {
    require_docker!();
    let _l = shared();
    let g = Gantry::start();
    let image = test_image();
    let id = docker_id("image", &image);

    for path in [
        format!("/api/1/system/images/{}", enc(&image)),
        format!("/api/system/images/{}", enc(&id)),
        format!("/api/1.0/system/images/{id}"),
    ] {
        let r = g.get(&path);
        let v = r.expect_json(200);
        assert_eq!(v["Id"], id.as_str(), "{path}: {r}");
        assert!(has_str(&v["RepoTags"], &image), "{path}: {r}");
        assert_eq!(v["Config"]["Cmd"][0], "/bin/sh", "{path}: {r}");
    }

    for path in [
        "/api/1/system/images/gantry-test%2Fno-such-image%3Alatest".to_string(),
        format!("/api/1/system/images/sha256%3A{}", "0".repeat(64)),
    ] {
        g.get(&path).expect_problem(404, &path);
    }
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn exports_an_image_as_a_docker_save_tar() {
    require_docker!();
    let _l = shared();
    let mut cleanup = Cleanup::new();
    let g = Gantry::start();
    let tag = format!("gantry-test/{}:v1", unique("export"));
    docker_ok(&["tag", &test_image(), &tag]);
    cleanup.image(&tag);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.tar");
    let path = format!("/api/1.0/system/images/{}/export", enc(&tag));
    let r = g.download(&path, &file);
    assert_eq!(r.status, 200, "{r}");
    assert!(r.content_type().starts_with("application/x-tar"), "{r}");
    let bytes = fs::read(&file).unwrap();
    assert!(
        bytes.len() > 1_000_000,
        "the export is only {} bytes; busybox alone is ~2 MB",
        bytes.len()
    );
    assert!(is_tar(&bytes), "no ustar magic at offset 257");
    let entries = tar_entries(&bytes);
    let manifest = entries
        .iter()
        .find(|(n, _)| n == "manifest.json")
        .unwrap_or_else(|| {
            panic!(
                "no manifest.json in the export: {:?}",
                entries.iter().map(|e| &e.0).collect::<Vec<_>>()
            )
        });
    let m: Value = serde_json::from_slice(&manifest.1).unwrap();
    assert!(has_str(&m[0]["RepoTags"], &tag), "manifest: {m}");

    let missing = "/api/1/system/images/gantry-test%2Fno-such-image%3Alatest/export";
    let r = g.get(missing);
    r.expect_problem(404, missing);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn image_round_trip_export_delete_load_run() {
    require_docker!();
    let _l = shared();
    let mut cleanup = Cleanup::new();
    let g = Gantry::start();
    let marker = unique("marker");
    let tag = format!("gantry-test/{}:v1", unique("roundtrip"));
    let id = unique_image(&mut cleanup, &tag, &marker);
    let image_path = format!("/api/1/system/images/{}", enc(&tag));

    // Export through gantry.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rt.tar");
    let r = g.download(&format!("{image_path}/export"), &file);
    assert_eq!(r.status, 200, "{r}");
    let tar = fs::read(&file).unwrap();
    assert!(is_tar(&tar), "export is not a tar");

    // Delete: the image is gone from Docker, not just untagged.
    let r = g.delete(&image_path);
    let v = r.expect_json(200);
    assert!(items(&v, "Untagged").iter().any(|t| t == &tag), "{r}");
    assert!(items(&v, "Deleted").contains(&id), "{r}");
    g.get(&image_path).expect_problem(404, &image_path);
    assert!(!docker_exists("image", &id), "image {id} still in Docker");

    // Load it back.
    let r = g.post("/api/1/system/images", "application/x-tar", tar);
    let v = r.expect_json(201);
    assert_eq!(v["Id"], id.as_str(), "{r}");
    assert!(has_str(&v["Loaded"], &tag), "{r}");
    let location = r
        .header("location")
        .unwrap_or_else(|| panic!("no Location: {r}"))
        .to_string();
    assert_eq!(location, format!("/api/1/system/images/{}", enc(&id)));
    let v = g.get(&location).expect_json(200);
    assert_eq!(v["Id"], id.as_str());
    assert!(has_str(&v["RepoTags"], &tag), "{v}");

    // And it runs, with its own content.
    let out = docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &tag,
        "sh",
        "-c",
        "echo roundtrip; cat /marker",
    ]);
    assert_eq!(out, format!("roundtrip\n{marker}"));
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn load_accepts_octet_stream_and_no_content_type() {
    require_docker!();
    let _l = shared();
    let g = Gantry::start();
    let image = test_image();
    let id = docker_id("image", &image);
    let tar = saved_test_image();

    let r = g.post(
        "/api/system/images",
        "application/octet-stream",
        tar.clone(),
    );
    let v = r.expect_json(201);
    assert_eq!(v["Id"], id.as_str(), "{r}");
    assert!(has_str(&v["Loaded"], &image), "{r}");

    let r = g.request("POST", "/api/1.0/system/images", &[], Some(tar));
    let v = r.expect_json(201);
    assert_eq!(v["Id"], id.as_str(), "{r}");
    assert!(r.header("location").is_some(), "{r}");
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn load_rejects_garbage_and_empty_bodies() {
    require_docker!();
    let _l = shared();
    let g = Gantry::start();
    let path = "/api/1/system/images";
    let garbage: Vec<u8> = (0..20_000u32)
        .map(|i| b"this is not a tar archive at all\n"[(i % 33) as usize])
        .collect();
    for ct in ["application/x-tar", "application/octet-stream"] {
        let r = g.post(path, ct, garbage.clone());
        r.expect_problem(400, path);
    }
    let r = g.post(path, "application/x-tar", Vec::new());
    r.expect_problem(400, path);
    let r = g.request("POST", path, &[], None);
    r.expect_problem(400, path);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_streamed_upload_over_the_limit_is_a_413_problem() {
    require_docker!();
    let _l = shared();
    let g = Gantry::builder().http("max_upload_bytes = 65536").start();
    // A real image's first 192 KiB, chunked, so no Content-Length gives the size away.
    let tar = saved_test_image();
    let body = &tar[..(192 * 1024).min(tar.len())];
    let mut s = g.connect();
    let head = format!(
        "POST /api/1/system/images HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-tar\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        g.addr
    );
    write_all(&mut s, head.as_bytes()).unwrap();
    for chunk in body.chunks(16 * 1024) {
        let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
        c.extend_from_slice(chunk);
        c.extend_from_slice(b"\r\n");
        if write_all(&mut s, &c).is_err() {
            break; // gantry stopped reading: fine, its answer is what counts
        }
    }
    let _ = write_all(&mut s, b"0\r\n\r\n");
    let (status, text) = read_raw_response(&mut s);
    assert_eq!(status, 413, "{text}\n{}", g.stderr());
    assert!(
        text.to_ascii_lowercase()
            .contains("application/problem+json"),
        "{text}"
    );
    assert!(text.contains("\"status\":413"), "{text}");
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn deleting_an_image_in_use_needs_force() {
    require_docker!();
    let _l = shared();
    let mut cleanup = Cleanup::new();
    let g = Gantry::start();
    let tag = format!("gantry-test/{}:v1", unique("inuse"));
    let id = unique_image(&mut cleanup, &tag, "in-use");
    let user = unique("user");
    cleanup.container(&user);
    docker_ok(&["create", "--name", &user, "--network", "none", &tag, "true"]);

    let path = format!("/api/1/system/images/{}", enc(&tag));
    let r = g.delete(&path);
    let detail = r.expect_problem(400, &path);
    assert!(!detail.is_empty());
    assert!(
        docker_exists("image", &id),
        "the image must survive a refused delete"
    );

    let r = g.delete(&format!("{path}?force=maybe"));
    let detail = r.expect_problem(400, &path);
    assert!(
        detail.contains("force"),
        "the detail should name the parameter: {detail}"
    );
    assert!(docker_exists("image", &id));

    let r = g.delete(&format!("{path}?force=true"));
    let v = r.expect_json(200);
    assert!(items(&v, "Untagged").iter().any(|t| t == &tag), "{r}");
    assert!(!docker_exists("image", &tag), "{tag} still there");

    let missing = "/api/1/system/images/gantry-test%2Fno-such-image%3Alatest";
    g.delete(missing).expect_problem(404, missing);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn prunes_dangling_images_then_answers_304() {
    require_docker!();
    let _l = exclusive();
    let mut cleanup = Cleanup::new();
    let g = Gantry::start();
    let image = test_image();

    let path = "/api/1/system/prune/images?all=maybe";
    let detail = g.delete(path).expect_problem(400, path);
    assert!(
        detail.contains("all"),
        "the detail should name the parameter: {detail}"
    );

    let dangling = dangling_image(&mut cleanup);
    prune(&g, "/api/1/system/prune/images", "image", &dangling);
    assert!(
        docker_exists("image", &image),
        "prune removed the tagged test image"
    );

    g.delete("/api/system/prune/images").expect_empty(304);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn prunes_all_unused_images_with_all_true() {
    require_docker!();
    let _l = exclusive();
    let mut cleanup = Cleanup::new();
    let g = Gantry::start();
    let image = test_image();
    // The test image is in use by a container, so all=true leaves it alone.
    create_container(&mut cleanup, "keeper", &[], &["true"]);
    let tag = format!("gantry-test/{}:v1", unique("unused"));
    let id = unique_image(&mut cleanup, &tag, "unused");

    prune(&g, "/api/1.0/system/prune/images?all=true", "image", &id);
    assert!(!docker_exists("image", &tag));
    assert!(
        docker_exists("image", &image),
        "the test image is in use and must stay"
    );
}

// ---------------------------------------------------------------------------------------------
// Containers

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn container_lifecycle_start_stop_restart_delete() {
    require_docker!();
    let _l = shared();
    let mut cleanup = Cleanup::new();
    let g = Gantry::start();
    let name = create_container(&mut cleanup, "life", &[], STOPPABLE);
    let id = docker_id("container", &name);
    let base = format!("/api/1/system/containers/{name}");

    // Listed (stopped containers too) and found.
    let v = g.get("/api/1/system/containers").expect_json(200);
    let entry = array(&v)
        .iter()
        .find(|c| c["Id"] == id.as_str())
        .unwrap_or_else(|| panic!("{name} not listed: {v}"));
    assert!(has_str(&entry["Names"], &format!("/{name}")), "{entry}");
    let v = g.get(&base).expect_json(200);
    assert_eq!(v["Id"], id.as_str());
    assert_eq!(v["Name"], format!("/{name}"));
    assert_eq!(v["State"]["Running"], false, "{v}");
    let v = g
        .get(&format!("/api/system/containers/{id}"))
        .expect_json(200);
    assert_eq!(v["Name"], format!("/{name}"));

    // start, start again
    let r = g.put(&format!("{base}/start"));
    let v = r.expect_json(200);
    assert_eq!(v["Id"], id.as_str(), "{r}");
    assert_eq!(v["State"]["Running"], true, "{r}");
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.State.Running}}", &name]),
        "true"
    );
    g.put(&format!("{base}/start")).expect_empty(304);

    // delete while running, not forced
    let r = g.delete(&base);
    r.expect_problem(400, &base);
    assert!(docker_exists("container", &name));

    // stop, stop again
    let r = g.put(&format!("/api/1.0/system/containers/{}/stop", enc(&name)));
    let v = r.expect_json(200);
    assert_eq!(v["State"]["Running"], false, "{r}");
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.State.Running}}", &name]),
        "false"
    );
    g.put(&format!("{base}/stop")).expect_empty(304);

    // restart (from stopped, then from running)
    for _ in 0..2 {
        let r = g.put(&format!("{base}/restart"));
        let v = r.expect_json(200);
        assert_eq!(v["State"]["Running"], true, "{r}");
    }

    // forced delete of the running container
    let r = g.delete(&format!("{base}?force=true"));
    assert_eq!(r.status, 200, "{r}");
    assert!(!docker_exists("container", &name));
    g.get(&base).expect_problem(404, &base);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn unknown_containers_are_404() {
    require_docker!();
    let _l = shared();
    let g = Gantry::start();
    let base = format!("/api/1/system/containers/{}", unique("missing"));
    g.get(&base).expect_problem(404, &base);
    for action in ["start", "stop", "restart"] {
        let p = format!("{base}/{action}");
        g.put(&p).expect_problem(404, &p);
    }
    g.delete(&base).expect_problem(404, &base);
    g.delete(&format!("{base}?force=true"))
        .expect_problem(404, &base);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn deleting_a_container_with_volumes_true_removes_its_anonymous_volumes() {
    require_docker!();
    let _l = shared();
    let mut cleanup = Cleanup::new();
    let g = Gantry::start();
    let anon_volume =
        |name: &str| docker_ok(&["inspect", "--format", "{{(index .Mounts 0).Name}}", name]);

    let keep = create_container(&mut cleanup, "keepvol", &["-v", "/data"], &["true"]);
    let kept = anon_volume(&keep);
    cleanup.volume(&kept);
    let p = format!("/api/1/system/containers/{keep}");
    assert_eq!(g.delete(&p).status, 200);
    assert!(
        docker_exists("volume", &kept),
        "volumes=false must keep {kept}"
    );

    let drop = create_container(&mut cleanup, "dropvol", &["-v", "/data"], &["true"]);
    let dropped = anon_volume(&drop);
    cleanup.volume(&dropped);
    let p = format!("/api/1/system/containers/{drop}?volumes=true");
    let r = g.delete(&p);
    assert_eq!(r.status, 200, "{r}");
    assert!(!docker_exists("container", &drop));
    assert!(
        !docker_exists("volume", &dropped),
        "volumes=true must remove {dropped}"
    );
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn bad_query_values_are_400_naming_the_parameter() {
    require_docker!();
    let _l = shared();
    let mut cleanup = Cleanup::new();
    let g = Gantry::start();
    let name = create_container(&mut cleanup, "badq", &[], &["true"]);
    let base = format!("/api/1/system/containers/{name}");
    for (query, param) in [("force=maybe", "force"), ("volumes=2", "volumes")] {
        let r = g.delete(&format!("{base}?{query}"));
        let detail = r.expect_problem(400, &base);
        assert!(
            detail.contains(param),
            "the detail should name {param}: {detail}"
        );
        assert!(
            docker_exists("container", &name),
            "deleted despite ?{query}"
        );
    }
    let vol = unique("badqvol");
    cleanup.volume(&vol);
    docker_ok(&["volume", "create", &vol]);
    let vpath = format!("/api/1/system/volumes/{vol}");
    let detail = g
        .delete(&format!("{vpath}?force=yesplease"))
        .expect_problem(400, &vpath);
    assert!(detail.contains("force"), "{detail}");
    assert!(docker_exists("volume", &vol));
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn prunes_stopped_containers_then_answers_304() {
    require_docker!();
    let _l = exclusive();
    let mut cleanup = Cleanup::new();
    let g = Gantry::start();
    let image = test_image();

    let exited = unique("exited");
    cleanup.container(&exited);
    docker_ok(&[
        "run",
        "--name",
        &exited,
        "--network",
        "none",
        &image,
        "true",
    ]);
    let exited_id = docker_id("container", &exited);
    let running = unique("running");
    cleanup.container(&running);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &running,
        "--network",
        "none",
        &image,
        STOPPABLE[0],
        STOPPABLE[1],
        STOPPABLE[2],
    ]);

    let path = "/api/1/system/prune/containers?force=maybe";
    g.delete(path).expect_problem(400, path);
    assert!(docker_exists("container", &exited));

    prune(
        &g,
        "/api/1/system/prune/containers",
        "container",
        &exited_id,
    );
    assert!(!docker_exists("container", &exited));
    assert!(
        docker_exists("container", &running),
        "a running container was pruned"
    );

    g.delete("/api/1.0/system/prune/containers?force=true")
        .expect_empty(304);
}

// ---------------------------------------------------------------------------------------------
// Volumes

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn volume_list_get_and_delete() {
    require_docker!();
    let _l = shared();
    let mut cleanup = Cleanup::new();
    let g = Gantry::start();
    let vol = unique("vol");
    cleanup.volume(&vol);
    docker_ok(&["volume", "create", &vol]);

    let v = g.get("/api/1/system/volumes").expect_json(200);
    let entry = array(&v)
        .iter()
        .find(|x| x["Name"] == vol.as_str())
        .unwrap_or_else(|| panic!("{vol} not listed: {v}"));
    assert_eq!(entry["Driver"], "local", "{entry}");

    let path = format!("/api/1/system/volumes/{vol}");
    let v = g.get(&path).expect_json(200);
    assert_eq!(v["Name"], vol.as_str());
    assert_eq!(v["Driver"], "local");
    assert!(
        v["Mountpoint"].as_str().is_some_and(|m| m.contains(&vol)),
        "{v}"
    );
    let v = g
        .get(&format!("/api/1.0/system/volumes/{}", enc(&vol)))
        .expect_json(200);
    assert_eq!(v["Name"], vol.as_str());

    // In use by a container: refused.
    let user = create_container(
        &mut cleanup,
        "voluser",
        &["-v", &format!("{vol}:/data")],
        &["true"],
    );
    let r = g.delete(&path);
    r.expect_problem(400, &path);
    assert!(docker_exists("volume", &vol));

    docker_ok(&["rm", "-f", &user]);
    let r = g.delete(&path);
    assert_eq!(r.status, 200, "{r}");
    assert!(!docker_exists("volume", &vol));
    g.get(&path).expect_problem(404, &path);
    g.delete(&path).expect_problem(404, &path);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn prunes_unused_volumes_then_answers_304() {
    require_docker!();
    let _l = exclusive();
    let mut cleanup = Cleanup::new();
    let g = Gantry::start();
    let unused = unique("unused");
    let used = unique("used");
    cleanup.volume(&unused).volume(&used);
    docker_ok(&["volume", "create", &unused]);
    docker_ok(&["volume", "create", &used]);
    create_container(
        &mut cleanup,
        "pruneuser",
        &["-v", &format!("{used}:/data")],
        &["true"],
    );

    let v = prune(&g, "/api/1/system/prune/volumes", "volume", &unused);
    assert!(!has_str(&v, &used), "{used} is in use: {v}");
    assert!(docker_exists("volume", &used));

    g.delete("/api/system/prune/volumes").expect_empty(304);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn empty_lists_answer_204() {
    require_docker!();
    let _l = exclusive();
    let g = Gantry::start();

    // Stopped leftovers (say, of a failed test in another binary) go first; no test leaves a
    // running container behind, and none runs now.
    let r = g.delete("/api/1/system/prune/containers");
    assert!(r.status == 200 || r.status == 304, "{r}");
    let left = docker_ok(&["ps", "-aq"]);
    assert!(
        left.is_empty(),
        "running containers left behind by some test: {left}"
    );
    let r = g.get("/api/1/system/containers");
    r.expect_empty(204);
    g.get("/api/system/containers").expect_empty(204);

    // Unused volumes (say, from an interrupted run) go first; then there are none.
    let r = g.delete("/api/1/system/prune/volumes");
    assert!(r.status == 200 || r.status == 304, "{r}");
    let r = g.get("/api/1/system/volumes");
    r.expect_empty(204);
    g.get("/api/1.0/system/volumes").expect_empty(204);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn image_and_container_ids_may_be_raw_or_encoded() {
    require_docker!();
    let _l = shared();
    let mut cleanup = Cleanup::new();
    let g = Gantry::start();
    let name = create_container(&mut cleanup, "ids", &[], &["true"]);
    let id = docker_id("container", &name);
    for p in [
        format!("/api/1/system/containers/{}", &id[..12]),
        format!("/api/1/system/containers/{}", enc(&name)),
    ] {
        let v = g.get(&p).expect_json(200);
        assert_eq!(v["Id"], id.as_str(), "{p}");
    }
    // An encoded slash stays inside its segment instead of splitting the path: the route
    // matches and the decoded id "a/b" reaches the handler (no container can have that name,
    // so a 404 from Docker or a 400 for an invalid name, but never "no route").
    let p = "/api/1/system/containers/a%2Fb";
    let r = g.get(p);
    assert!(r.status == 400 || r.status == 404, "{r}");
    let detail = r.expect_problem(r.status, p);
    assert!(!detail.contains("no route"), "the route did not match: {r}");
    if r.status == 400 {
        assert!(
            detail.contains("a/b"),
            "the decoded id should be named: {r}"
        );
    }
}
