//! The Files API, the Transfer App v2.2.2 / v3.1 routes and the settings, end to end against
//! the real binary (and the test dockerd where apps are involved).

mod common;

use std::time::Duration;

use common::bundle::{app_zip, db_then_web_compose, import, saved_image, upload_bundle, zip_of};
use common::{
    app_containers, docker, docker_ok, enc, enc_uri, test_image, unique, wait_for, Gantry, Resp,
};
use serde_json::{json, Value};

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|n| n["Name"].as_str().unwrap())
        .collect()
}

fn entry<'a>(v: &'a Value, name: &str) -> &'a Value {
    v.as_array()
        .unwrap()
        .iter()
        .find(|n| n["Name"] == name)
        .unwrap_or_else(|| panic!("no entry {name} in {v}"))
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn files_api_browses_and_downloads_an_imported_bundle() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    g.get("/api/1/files").expect_problem(400, "/api/1/files");
    g.get("/api/1/files?category=recipes")
        .expect_problem(400, "/api/1/files");
    g.get("/api/1/files?category=instances").expect_empty(204);
    g.get("/api/1/files?category=templates").expect_empty(204);

    let (reference, tar) = saved_image("files-img");
    let name = unique("Files App");
    let config = format!("Name: {name}\nVersion: 1.0\nDescription: files\n");
    let compose = format!("services:\n  web:\n    image: {reference}\n");
    // Bytes that no text transcoding would leave alone.
    let pdf: Vec<u8> = b"%PDF-1.4\n"
        .iter()
        .copied()
        .chain((0..=255u8).cycle().take(70_000))
        .collect();
    let mp4: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let zip = zip_of(&[
        ("config.yml", config.as_bytes()),
        ("docker-compose.yml", compose.as_bytes()),
        ("Manual.pdf", &pdf),
        ("Resources/", b""),
        ("Resources/tutorial.mp4", &mp4),
        ("Resources/deep/notes.txt", b"deep notes"),
        ("docker/web.tar", &tar),
    ]);
    import(&g, &zip).expect_json(200);
    let id = format!("{name}:1.0");
    let _cleanup = AppCleanup(&g, id.clone());

    // Instances: one directory node per app, without entries.
    let roots = g.get("/api/1/files?category=instances").expect_json(200);
    assert_eq!(
        roots,
        json!([{
            "Name": id, "Id": enc_uri(&id), "Deletable": false, "Extendable": false,
            "Accept": null
        }])
    );
    g.get("/api/1/files?category=templates").expect_empty(204);

    // The bundle's tree as stored: no image tarballs (loaded into Docker, not kept), no
    // gantry-app.json (gantry's own record).
    let root_path = format!("/api/1/files/{}", enc_uri(&id));
    let tree = g.get(&root_path).expect_json(200);
    assert_eq!(
        names(&tree),
        [
            "Manual.pdf",
            "Resources",
            "config.yml",
            "docker-compose.yml"
        ],
        "{tree}"
    );
    assert_eq!(
        entry(&tree, "docker-compose.yml"),
        &json!({
            "Name": "docker-compose.yml",
            "Id": enc_uri(&format!("{id}//docker-compose.yml")),
            "Deletable": false, "Editable": false, "MIMEType": "text/plain"
        })
    );
    let resources = entry(&tree, "Resources");
    assert_eq!(resources["Id"], enc_uri(&format!("{id}//Resources")));
    assert_eq!(resources["Deletable"], false);
    assert_eq!(resources["Extendable"], false);
    assert_eq!(resources["Accept"], Value::Null);
    assert_eq!(names(&resources["Entries"]), ["deep", "tutorial.mp4"]);
    let mp4_node = entry(&resources["Entries"], "tutorial.mp4");
    assert_eq!(
        mp4_node["Id"],
        enc_uri(&format!("{id}//Resources/tutorial.mp4"))
    );
    assert_eq!(mp4_node["MIMEType"], "video/mp4");
    // The same tree version-less.
    assert_eq!(
        g.get(&format!("/api/files/{}", enc_uri(&id)))
            .expect_json(200),
        tree
    );

    // A nested directory by its id lists its entries.
    let deep = entry(&resources["Entries"], "deep");
    let deep_list = g
        .get(&format!("/api/1/files/{}", deep["Id"].as_str().unwrap()))
        .expect_json(200);
    assert_eq!(
        deep_list,
        json!([{
            "Name": "notes.txt",
            "Id": enc_uri(&format!("{id}//Resources/deep/notes.txt")),
            "Deletable": false, "Editable": false, "MIMEType": "text/plain"
        }])
    );
    assert_eq!(
        g.get(&format!(
            "/api/1/files/{}",
            resources["Id"].as_str().unwrap()
        ))
        .expect_json(200),
        resources["Entries"]
    );

    // Downloads: exact bytes, MIME type by extension, by the ids the listing gave.
    let r = g.get(&format!(
        "/api/1/files/{}",
        mp4_node["Id"].as_str().unwrap()
    ));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.content_type(), "video/mp4");
    assert_eq!(r.header("content-length"), Some("200000"));
    assert!(r.body == mp4, "tutorial.mp4 differs");
    let pdf_id = entry(&tree, "Manual.pdf")["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = g.get(&format!("/api/1/files/{pdf_id}"));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.content_type(), "application/pdf");
    assert!(r.body == pdf, "Manual.pdf differs");
    // Every byte encoded (also `.` and `-`) is the same id.
    let r = g.get(&format!(
        "/api/1/files/{}",
        enc(&format!("{id}//docker-compose.yml"))
    ));
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.text(), compose);

    paths_outside_the_bundle_are_refused(&g, &id);
}

/// `..` plain and encoded, absolute paths, `.` parts -> 400; unknown app, unknown path,
/// gantry's record, the tarball that was not kept -> 404.
fn paths_outside_the_bundle_are_refused(g: &Gantry, id: &str) {
    let app = enc_uri(id);
    for bad in [
        format!("{app}%2F%2F..%2Fx"),
        format!("{app}%2F%2F%2e%2e%2F%2e%2e%2Fetc%2Fpasswd"),
        format!("{app}%2F%2F%2E%2E"),
        format!("{app}%2F%2FResources%2F..%2F..%2F..%2Fgantry-it"),
        format!("{app}%2F%2F%2Fetc%2Fpasswd"),
        format!("{app}%2F%2F.%2Fconfig.yml"),
        format!("{app}%2F%2FResources%2F%2Ftutorial.mp4"),
    ] {
        let path = format!("/api/1/files/{bad}");
        let detail = g.get(&path).expect_problem(400, &path);
        assert!(detail.contains("invalid file path"), "{path}: {detail}");
    }
    // Unknown app, unknown path, gantry's record, the tarball that was not kept -> 404.
    for missing in [
        enc_uri("No Such App:1"),
        enc_uri("No Such App:1//config.yml"),
        enc_uri(&format!("{id}//nope.txt")),
        enc_uri(&format!("{id}//Resources/nope")),
        enc_uri(&format!("{id}//Manual.pdf/inside")),
        enc_uri(&format!("{id}//gantry-app.json")),
        enc_uri(&format!("{id}//docker/web.tar")),
    ] {
        let path = format!("/api/1/files/{missing}");
        g.get(&path).expect_problem(404, &path);
    }
}

/// Removes the app (stopping it) when the test ends, pass or fail.
struct AppCleanup<'a>(&'a Gantry, String);

impl Drop for AppCleanup<'_> {
    fn drop(&mut self) {
        let path = format!(
            "/api/1/transfer/apps/{}?force=true&remove_images=true",
            enc(&self.1)
        );
        let _ = self.0.try_request("DELETE", &path, &[], None);
    }
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn legacy_v222_and_v31_routes() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    g.get("/api/transfer/apps").expect_empty(204);

    let name = unique("Simple Webserver");
    let version = "1.0.0";
    let id = format!("{name}:{version}");
    let cmd = "[\"sh\", \"-c\", \"trap 'exit 0' TERM; sleep 300 & wait\"]";
    let compose = format!(
        "services:\n  frontend:\n    image: {img}\n    command: {cmd}\n  middlelayer:\n    image: {img}\n    command: {cmd}\n",
        img = test_image()
    );
    let config = format!(
        "Name: {name}\nVersion: {version}\nDescription: Prints messages from a JSON file to the console\n"
    );
    let zip = zip_of(&[
        ("config.yml", config.as_bytes()),
        ("docker-compose.yml", compose.as_bytes()),
    ]);

    // v2.2.2 import: the version-less route, multipart field "app".
    let imported = upload_bundle(&g, "/api/transfer/import", &zip).expect_json(200);
    let _cleanup = AppCleanup(&g, id.clone());
    assert_eq!(imported["App"]["Name"], name.as_str());

    // v2.2.2 app list: AppInstance with App{Name, Version, Description, Imported}, Status,
    // Images, Containers (the v1 fields come along: a superset).
    let list = g.get("/api/transfer/apps").expect_json(200);
    let app = &list[0];
    assert_eq!(app["App"]["Name"], name.as_str(), "{list}");
    assert_eq!(app["App"]["Version"], version);
    assert_eq!(
        app["App"]["Description"],
        "Prints messages from a JSON file to the console"
    );
    let imported_at = app["App"]["Imported"].as_str().unwrap_or("");
    assert!(
        imported_at.len() == 20 && imported_at.ends_with('Z') && imported_at.contains('T'),
        "Imported is not an RFC 3339 UTC time: {list}"
    );
    assert_eq!(app["Status"], "Stopped");
    assert!(
        app["Images"].is_array() && app["Containers"].is_array(),
        "{list}"
    );
    assert_eq!(app["Containers"].as_array().unwrap().len(), 0);

    // compose/start: bad and unknown names.
    let q = |n: &str, v: &str| format!("?name={}&version={}", enc(n), enc(v));
    for bad in [
        String::new(),
        format!("?name={}", enc(&name)),
        format!("?version={version}"),
        format!("?name=&version={version}"),
    ] {
        for verb in ["start", "stop"] {
            let path = format!("/api/compose/{verb}{bad}");
            let detail = g.put(&path).expect_problem(400, &path);
            assert!(detail.contains("not given"), "{detail}");
        }
    }
    for verb in ["start", "stop"] {
        let path = format!("/api/compose/{verb}{}", q(&name, "9.9.9"));
        g.put(&path).expect_problem(404, &path);
    }

    // compose/start really starts the app (form encoding: `+` is a space).
    let up = g
        .put(&format!(
            "/api/compose/start?name={}&version={version}",
            name.replace(' ', "+")
        ))
        .expect_json(200);
    assert_eq!(up["ExitCode"], 0, "{up}");
    assert_eq!(up["SuccessEstimate"], true, "{up}");
    assert_eq!(up["RunningContainers"].as_array().unwrap().len(), 2, "{up}");
    assert!(
        up["PulledImages"].is_array() && up["Lines"].is_array(),
        "{up}"
    );
    assert!(up["Command"].as_str().unwrap().contains("up"), "{up}");
    let mut running = app_containers(&id, false);
    running.sort();
    assert_eq!(running.len(), 2, "{running:?}");
    let list = g.get("/api/transfer/apps").expect_json(200);
    assert_eq!(list[0]["Status"], "Running", "{list}");

    // v3.1 recognize: this app as a DockerApp, parts by service name.
    let rec = g.get("/api/1/transfer/recognize").expect_json(200);
    let mine = rec
        .as_array()
        .unwrap()
        .iter()
        .find(|a| {
            a["Frontend"]["Names"][0]
                .as_str()
                .is_some_and(|n| running.iter().any(|r| r == n))
        })
        .unwrap_or_else(|| panic!("the app was not recognised: {rec}"));
    let front = &mine["Frontend"];
    let middle = &mine["Middlelayer"];
    assert!(
        front["Names"][0].as_str().unwrap().contains("frontend"),
        "{mine}"
    );
    assert!(
        middle["Names"][0].as_str().unwrap().contains("middlelayer"),
        "{mine}"
    );
    let front_id = docker_ok(&[
        "inspect",
        "-f",
        "{{.Id}}",
        front["Names"][0].as_str().unwrap(),
    ]);
    assert_eq!(front["ContainerId"], front_id.trim());
    assert_eq!(front["Image"], test_image().as_str());
    assert!(
        front["Status"].as_str().unwrap().starts_with("Up"),
        "{mine}"
    );
    assert_eq!(front["Ports"], json!([]));
    // The v1 route still answers Docker's container list.
    let v1 = g.get("/api/1/transfer/recognize/apps").expect_json(200);
    assert!(v1[0]["Id"].is_string(), "{v1}");

    // compose/stop really stops it: ProcessResult.
    let down = g
        .put(&format!("/api/compose/stop{}", q(&name, version)))
        .expect_json(200);
    assert_eq!(down["ExitCode"], 0, "{down}");
    assert!(
        down["Lines"].is_array() && down["RawOutput"].is_string(),
        "{down}"
    );
    assert!(down.get("RunningContainers").is_none(), "{down}");
    assert!(app_containers(&id, false).is_empty());
    let gone = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        (!docker(&["inspect", &running[0]]).status.success()).then_some(())
    });
    assert!(
        gone.is_some(),
        "the stopped app's containers were not removed"
    );
    assert_eq!(
        g.get("/api/transfer/apps").expect_json(200)[0]["Status"],
        "Stopped"
    );
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn put_json(g: &Gantry, path: &str, body: &str) -> Resp {
    g.request(
        "PUT",
        path,
        &[("Content-Type", "application/json")],
        Some(body.as_bytes().to_vec()),
    )
}

#[test]
fn devicename_and_settings_persist_across_a_restart() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_string();
    let start = || {
        Gantry::builder()
            .env("GANTRY_STATE_DIR", &state_dir)
            .http("max_body_bytes = 65536")
            .start()
    };
    let mut g = start();

    // Device name: the host name until one is set.
    assert_eq!(
        g.get("/api/1/devicename").expect_json(200),
        Value::from(hostname())
    );
    let long = "x".repeat(129);
    for bad in [
        String::new(),
        "?name=".to_string(),
        "?name=%20%20".to_string(),
        "?name=two%0Alines".to_string(),
        "?name=tab%09".to_string(),
        format!("?name={long}"),
    ] {
        let path = format!("/api/1/devicename{bad}");
        g.put(&path).expect_problem(400, &path);
    }
    let name = "IoT Gateway Server 10:5-dev";
    assert_eq!(
        g.put("/api/1/devicename?name=IoT%20Gateway%20Server%2010%3A5-dev")
            .expect_json(200),
        Value::from(name)
    );
    assert_eq!(g.get("/api/devicename").expect_json(200), Value::from(name));

    // Settings: an object; PUT merges, null removes.
    assert_eq!(g.get("/api/settings").expect_json(200), json!({}));
    let s = put_json(
        &g,
        "/api/settings",
        r#"{"PoolStore": "http://198.18.0.1:54170", "Servers": ["a", "b"], "Drop": 1}"#,
    )
    .expect_json(200);
    assert_eq!(
        s,
        json!({"PoolStore": "http://198.18.0.1:54170", "Servers": ["a", "b"], "Drop": 1})
    );
    let s = put_json(
        &g,
        "/api/1/settings",
        r#"{"Drop": null, "Limit": {"n": 3}}"#,
    )
    .expect_json(200);
    let want =
        json!({"PoolStore": "http://198.18.0.1:54170", "Servers": ["a", "b"], "Limit": {"n": 3}});
    assert_eq!(s, want);
    for bad in [
        "",
        "not json",
        "[1, 2]",
        "\"text\"",
        "{\"\": 1}",
        "{\"a\\u0001\": 1}",
        "{\"a\": 1",
    ] {
        let detail = put_json(&g, "/api/settings", bad).expect_problem(400, "/api/settings");
        assert!(!detail.is_empty());
    }
    // The body limit is the configured http.max_body_bytes.
    let big = format!("{{\"big\": \"{}\"}}", "v".repeat(70 * 1024));
    let detail = put_json(&g, "/api/settings", &big).expect_problem(413, "/api/settings");
    assert!(detail.contains("65536"), "{detail}");
    // Nothing of the refused requests was kept.
    assert_eq!(g.get("/api/settings").expect_json(200), want);
    // A body just under the limit is accepted.
    let near = format!("{{\"near\": \"{}\"}}", "v".repeat(60 * 1024));
    let s = put_json(&g, "/api/settings", &near).expect_json(200);
    assert_eq!(s["near"].as_str().map(str::len), Some(60 * 1024));
    let s = put_json(&g, "/api/settings", r#"{"near": null}"#).expect_json(200);
    assert_eq!(s, want);

    // Killed (no orderly shutdown) and started again on the same state.
    g.signal(common::Signal::SIGKILL);
    g.wait_exit(Duration::from_secs(10))
        .expect("gantry did not die");
    drop(g);
    let g = start();
    assert_eq!(
        g.get("/api/1/devicename").expect_json(200),
        Value::from(name)
    );
    assert_eq!(g.get("/api/1/settings").expect_json(200), want);
    let prefs = state.path().join("prefs");
    assert_eq!(
        std::fs::read_to_string(prefs.join("devicename")).unwrap(),
        name
    );
    let mut files: Vec<String> = std::fs::read_dir(&prefs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["devicename", "settings.json"],
        "temp files left over"
    );
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn compose_routes_answer_busy_while_an_app_starts() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("Busy App");
    let id = format!("{name}:1");
    // `web` waits for `db` to be healthy, which it becomes only once the test says so.
    let zip = app_zip(&name, "1", &db_then_web_compose("", 600));
    upload_bundle(&g, "/api/transfer/import", &zip).expect_json(200);
    let _cleanup = AppCleanup(&g, id.clone());

    let query = format!("?name={}&version=1", enc(&name));
    let url = g.url(&format!("/api/compose/start{query}"));
    let starter = std::thread::spawn(move || {
        let mut r = common::agent().put(&url).send_empty().unwrap();
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().unwrap())
    });
    // The db container exists: the start is waiting for its health.
    let db = wait_for(Duration::from_secs(60), Duration::from_millis(50), || {
        let names = docker_ok(&[
            "ps",
            "--filter",
            &format!("label=io.gantry.app-id={id}"),
            "--filter",
            "label=com.docker.compose.service=db",
            "--format",
            "{{.Names}}",
        ]);
        let name = names.trim().to_string();
        (!name.is_empty()).then_some(name)
    })
    .expect("the db container never started");
    let list = g.get("/api/transfer/apps").expect_json(200);
    assert_eq!(list[0]["Busy"], true, "{list}");
    for verb in ["start", "stop"] {
        let path = format!("/api/compose/{verb}{query}");
        let detail = g.put(&path).expect_problem(400, &path);
        assert!(detail.contains("busy"), "{detail}");
    }
    docker_ok(&["exec", &db, "touch", "/ready"]);
    let (status, body) = starter.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let up: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(up["RunningContainers"].as_array().unwrap().len(), 2, "{up}");
    g.put(&format!("/api/compose/stop{query}")).expect_json(200);
    assert!(app_containers(&id, false).is_empty());
}
