//! General interfaces of the transfer dialect (COMPAT-NOTES section 1): `GET /api/versions`,
//! version resolution, the configurable path prefix and the OpenAPI document. Runs the real
//! binary; only the last test needs the test dockerd.

#[macro_use]
mod common;

use std::fs;

use common::*;
use serde_json::Value;

fn expected_versions(prefix: &str) -> Value {
    serde_json::json!([{
        "Version": "1.0",
        "BasePath": format!("{prefix}/api/1.0"),
        "ApiDoc": format!("{prefix}/apidoc/1.0/openapi.json"),
    }])
}

#[test]
fn versions_are_listed_under_every_version_form() {
    let g = Gantry::start();
    for path in ["/api/versions", "/api/1/versions", "/api/1.0/versions"] {
        let v = g.get(path).expect_json(200);
        assert_eq!(v, expected_versions(""), "{path}");
    }
}

#[test]
fn every_version_form_reaches_the_same_route_and_unknown_versions_are_404() {
    let g = Gantry::start();
    for prefix in ["/api", "/api/1", "/api/1.0"] {
        // A route that needs no Docker: whether a refresh of all apps runs.
        let v = g
            .get(&format!("{prefix}/transfer/refresh/apps"))
            .expect_json(200);
        assert_eq!(v, Value::Bool(false), "{prefix}");
        // A route's own 404 (unknown task), not the version's.
        let path = format!("{prefix}/cancel/no-such-task");
        let detail = g.put(&path).expect_problem(404, &path);
        assert!(!detail.contains("not supported"), "{path}: {detail}");
    }
    for version in ["2", "1.1", "1.0.0", "0", "10"] {
        let path = format!("/api/{version}/transfer/refresh/apps");
        let detail = g.get(&path).expect_problem(404, &path);
        assert!(
            detail.contains(&format!("API version {version} is not supported")),
            "{path}: {detail}"
        );
        let path = format!("/api/{version}/versions");
        g.get(&path).expect_problem(404, &path);
    }
}

fn check_document(doc: &Value, server: &str) {
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi key: {}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["version"], "1.0");
    assert_eq!(doc["servers"][0]["url"], server);
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/versions", "get"),
        ("/transfer/import", "post"),
        ("/transfer/apps/{id}", "delete"),
        ("/system/images", "post"),
        ("/system/prune/volumes", "delete"),
        ("/cancel/{id}", "put"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    for schema in [
        "AppInstance",
        "AppConfig",
        "Container",
        "ContainerImage",
        "ProcessResult",
        "DockerComposeUpResult",
        "ProblemDetails",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
}

#[test]
fn openapi_document_is_served_for_each_version_form() {
    let g = Gantry::start();
    for path in ["/apidoc/1.0/openapi.json", "/apidoc/1/openapi.json"] {
        let doc = g.get(path).expect_json(200);
        check_document(&doc, "/api/1.0");
    }
    for path in [
        "/apidoc/2/openapi.json",
        "/apidoc/1.1/openapi.json",
        "/apidoc/latest/openapi.json",
        "/apidoc/1.0/swagger.json",
        "/apidoc/1.0",
        "/apidoc/",
    ] {
        g.get(path).expect_problem(404, path);
    }
    let r = g.request("POST", "/apidoc/1.0/openapi.json", &[], Some(Vec::new()));
    r.expect_problem(405, "/apidoc/1.0/openapi.json");
    assert_eq!(r.header("allow"), Some("GET"));
}

#[test]
fn a_prefix_moves_api_events_and_apidoc_and_the_bare_paths_are_404() {
    let g = Gantry::builder().listener("prefix = \"/scaleit\"").start();
    for path in ["/scaleit/api/versions", "/scaleit/api/1/versions"] {
        assert_eq!(g.get(path).expect_json(200), expected_versions("/scaleit"));
    }
    let doc = g.get("/scaleit/apidoc/1/openapi.json").expect_json(200);
    check_document(&doc, "/scaleit/api/1.0");
    let v = g
        .get("/scaleit/api/1.0/transfer/refresh/apps")
        .expect_json(200);
    assert_eq!(v, Value::Bool(false));
    // The websocket routes moved too: a plain GET reaches them and is told to upgrade.
    let r = g.get("/scaleit/events/transfer/import");
    r.expect_problem(426, "/scaleit/events/transfer/import");

    for path in [
        "/api/versions",
        "/api/1.0/transfer/refresh/apps",
        "/apidoc/1.0/openapi.json",
        "/events/transfer/import",
        "/events",
        "/scaleitx/api/versions",
        "/scaleit",
        "/scaleit/",
        "/x/scaleit/api/versions",
    ] {
        g.get(path).expect_problem(404, path);
    }
    // /healthz is the daemon's, not the dialect's: no prefix.
    assert_eq!(g.get("/healthz").status, 200);
}

#[test]
fn the_prefix_can_come_from_the_environment() {
    let g = Gantry::builder()
        .env("GANTRY_TRANSFER_PREFIX", "/gw/apps")
        .start();
    assert_eq!(
        g.get("/gw/apps/api/versions").expect_json(200),
        expected_versions("/gw/apps")
    );
    g.get("/api/versions").expect_problem(404, "/api/versions");
}

fn check_config(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    fs::write(&path, text).unwrap();
    run_gantry(&["check-config", "--config", path.to_str().unwrap()], &[])
}

fn listener_with_prefix(prefix: &str) -> String {
    format!("[[listeners]]\ndialect = \"transfer\"\naddress = \"127.0.0.1:54169\"\nprefix = {prefix:?}\n")
}

#[test]
fn check_config_accepts_good_prefixes_and_rejects_bad_ones_with_78() {
    let o = check_config(&listener_with_prefix("/scaleit"));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert!(out.contains("path prefix /scaleit"), "{out}");

    for bad in [
        "scaleit",
        "/",
        "/scaleit/",
        "//scaleit",
        "/a//b",
        "/a/../b",
        "/..",
        "/./a",
        "/a b",
        "/a?b",
        "/a#b",
        "/a%2e%2e",
        "/a\\b",
    ] {
        let o = check_config(&listener_with_prefix(bad));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(78), "prefix {bad:?}: {o:?}");
        assert!(
            err.contains("prefix") && err.contains(bad),
            "prefix {bad:?}: {err}"
        );
    }
    // A prefix on a listener of another dialect is a mistake, not ignored.
    let o = check_config(
        "[[listeners]]\ndialect = \"intervirt\"\naddress = \"127.0.0.1:55436\"\nprefix = \"/x\"\n",
    );
    assert_eq!(o.status.code(), Some(78), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("only transfer"));
    // And `serve` refuses it the same way.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    fs::write(&path, listener_with_prefix("/bad/")).unwrap();
    let o = run_gantry(&["serve", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(78), "{o:?}");
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn an_uploaded_image_is_located_under_the_prefix() {
    let _host = require_docker!();
    let g = Gantry::builder().listener("prefix = \"/scaleit\"").start();
    let image = test_image();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("image.tar");
    let r = g.download(
        &format!("/scaleit/api/1/system/images/{}/export", enc(&image)),
        &tar,
    );
    assert_eq!(r.status, 200, "export: {r}");
    let r = g.post(
        "/scaleit/api/1/system/images",
        "application/x-tar",
        fs::read(&tar).unwrap(),
    );
    let v = r.expect_json(201);
    let id = v["Id"].as_str().expect("Id").to_string();
    let location = r.header("location").expect("Location header").to_string();
    assert!(
        location.starts_with("/scaleit/api/1/system/images/"),
        "{location}"
    );
    let got = g.get(&location).expect_json(200);
    assert_eq!(got["Id"], Value::String(id));
}
