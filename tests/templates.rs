//! App templates end to end: a template with two services built from Dockerfiles on the
//! local test image is imported, built over SSE, instantiated into an app that starts and
//! answers; a template whose build fails reports it on the failure channel and leaves
//! nothing behind.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::bundle::{template_images, upload_bundle, zip_of};
use common::{docker_exists, docker_ok, enc, test_image, unique, wait_for, Gantry};
use serde_json::Value;

const TEMPLATES: &str = "/api/1/transfer/templates";

/// The events of a finished SSE body: (channel, data).
fn sse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let channel = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((channel.to_string(), serde_json::from_str(data).ok()?))
        })
        .collect()
}

fn template_zip(name: &str, build_file: &str, files: &[(&str, String)]) -> Vec<u8> {
    let config = format!("Name: {name}\nVersion: 1.0-tpl\nDescription: a template\n");
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("config.yml", config.as_bytes()),
        ("docker-compose-build.yml", build_file.as_bytes()),
        ("README.md", b"# built on the device"),
    ];
    entries.extend(files.iter().map(|(n, c)| (*n, c.as_bytes())));
    zip_of(&entries)
}

/// Runs the build of `id` over SSE to its end; its events.
fn build(g: &Gantry, id: &str) -> Vec<(String, Value)> {
    let r = g.request(
        "GET",
        &format!("{TEMPLATES}/{}/build", enc(id)),
        &[("Accept", "text/event-stream")],
        None,
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.content_type(), "text/event-stream");
    sse_events(&r.text())
}

fn http_body(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.contains(" 200 ").then_some(text)
}

fn two_service_template(name: &str, marker: &str) -> Vec<u8> {
    let img = test_image();
    let build_file = "services:\n  web:\n    build: ./web\n    ports:\n      - \"127.0.0.1::8080\"\n    stop_grace_period: 1s\n  greeter:\n    build:\n      context: greeter\n      args:\n        GREETING: hello-from-greeter\n    stop_grace_period: 1s\n";
    template_zip(
        name,
        build_file,
        &[
            (
                "web/Dockerfile",
                format!("FROM {img}\nCOPY index.html /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"),
            ),
            ("web/index.html", format!("template web {marker}\n")),
            (
                "greeter/Dockerfile",
                format!("FROM {img}\nARG GREETING\nRUN echo \"$GREETING\" > /greeting\nCMD [\"sh\", \"-c\", \"trap 'exit 0' TERM; cat /greeting; sleep 600 & wait\"]\n"),
            ),
        ],
    )
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_template_is_built_over_sse_instantiated_started_and_reached() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("tplweb");
    let marker = unique("marker");
    let id = format!("{name}:1.0-tpl");
    let tpl = upload_bundle(&g, TEMPLATES, &two_service_template(&name, &marker)).expect_json(200);
    assert_eq!(tpl["Id"], id.as_str());
    assert_eq!(tpl["Built"], false);
    let images = template_images(&tpl);
    assert_eq!(images.len(), 2, "{tpl}");
    assert_eq!(g.get(TEMPLATES).expect_json(200)[0]["Id"], id.as_str());
    let roots = g.get("/api/1/files?category=templates").expect_json(200);
    assert_eq!(roots[0]["Name"], id.as_str());
    let files = g
        .get(&format!("/api/1/files/{}?category=templates", enc(&id)))
        .expect_json(200);
    assert!(files.to_string().contains("index.html"), "{files}");

    let events = build(&g, &id);
    assert_eq!(events[0].1["Status"], "Started", "{events:?}");
    assert!(events.iter().any(|(c, d)| c == "progress"
        && d["Service"] == "greeter"
        && d["Line"].as_str().unwrap_or("").contains("RUN echo")));
    let (last_channel, last) = events.last().unwrap();
    assert_eq!(last_channel, "status", "{events:?}");
    assert_eq!(last["Status"], "Succeeded");
    for image in &images {
        assert!(docker_exists("image", image), "{image} was not built");
    }
    // Reads come from the live view, which has the new images as the build answers.
    assert_images_listed(&g, &images, true);
    assert_eq!(
        g.get(&format!("{TEMPLATES}/{}", enc(&id))).expect_json(200)["Built"],
        true
    );

    let app_id = format!("{name}:1.0");
    let app = g
        .request(
            "POST",
            &format!("{TEMPLATES}/{}/instantiate", enc(&id)),
            &[],
            None,
        )
        .expect_json(200);
    assert_eq!(app["Id"], app_id.as_str());
    let listed = g.get("/api/1/transfer/apps").expect_json(200);
    assert_eq!(listed[0]["Id"], app_id.as_str(), "{listed}");
    let app_path = format!("/api/1/transfer/apps/{}", enc(&app_id));
    let up = g.put(&format!("{app_path}/start")).expect_json(200);
    assert_eq!(up["ExitCode"], 0, "{up}");
    let running = common::app_containers(&app_id, false);
    assert_eq!(running.len(), 2, "{running:?}");
    let web = running.iter().find(|c| !c.contains("greeter")).unwrap();
    let published = docker_ok(&["port", web, "8080/tcp"]);
    let port: u16 = published
        .lines()
        .find_map(|l| l.strip_prefix("127.0.0.1:")?.parse().ok())
        .unwrap_or_else(|| panic!("no port in {published}"));
    let page = wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        http_body(port)
    })
    .unwrap_or_else(|| {
        panic!(
            "the instance's web service never answered: {running:?} {published} {:?}",
            common::docker(&["logs", web])
        )
    });
    assert!(page.contains(&marker), "{page}");
    let greeter = running.iter().find(|c| c.contains("greeter")).unwrap();
    let logs = wait_for(Duration::from_secs(10), Duration::from_millis(200), || {
        let l = docker_ok(&["logs", greeter]);
        l.contains("hello-from-greeter").then_some(l)
    });
    assert!(
        logs.is_some(),
        "the build argument did not reach the image: {:?}",
        common::docker(&["logs", greeter])
    );

    g.put(&format!("{app_path}/stop")).expect_json(200);
    // The template's images belong to the instance now: removing the template keeps them.
    g.delete(&format!("{TEMPLATES}/{}", enc(&id)))
        .expect_empty(200);
    assert!(docker_exists("image", &images[0]));
    g.delete(&app_path).expect_empty(200);
    for image in &images {
        assert!(!docker_exists("image", image), "{image} outlived its app");
    }
}

/// Whether `GET /system/images` lists each of `images` (`name:tag`) as `listed` says.
fn assert_images_listed(g: &Gantry, images: &[String], listed: bool) {
    let all = g.get("/api/1/system/images").expect_json(200);
    let tags: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["RepoTags"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    for image in images {
        assert_eq!(
            tags.contains(&image.as_str()),
            listed,
            "{image} in {tags:?}"
        );
    }
}

/// Image ids a failing build printed as created (` ---> <id>` after a step that ran), and
/// the ids of the containers it ran steps in.
fn build_output_ids(events: &[(String, Value)]) -> (Vec<String>, Vec<String>) {
    let (mut images, mut containers) = (Vec::new(), Vec::new());
    let mut cached = false;
    for (_, d) in events.iter().filter(|(c, _)| c == "progress") {
        let line = d["Line"].as_str().unwrap_or("").trim();
        if line.starts_with("Step ") {
            cached = line.contains(" : FROM ");
        } else if let Some(rest) = line.strip_prefix("---> ") {
            if rest == "Using cache" {
                cached = true;
            } else if let Some(c) = rest.strip_prefix("Running in ") {
                containers.push(c.to_string());
            } else if !cached {
                images.push(rest.to_string());
            }
        }
    }
    (images, containers)
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_failing_build_reports_on_the_failure_channel_and_leaves_nothing() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("tplbad");
    let id = format!("{name}:1.0-tpl");
    let img = test_image();
    let marker = unique("layer");
    let build_file = "services:\n  good:\n    build: good\n  bad:\n    build: bad\n";
    let zip = template_zip(
        &name,
        build_file,
        &[
            (
                "good/Dockerfile",
                format!("FROM {img}\nRUN echo {marker} > /good\n"),
            ),
            (
                "bad/Dockerfile",
                format!("FROM {img}\nRUN echo {marker} > /one\nRUN exit 3\n"),
            ),
        ],
    );
    let tpl = upload_bundle(&g, TEMPLATES, &zip).expect_json(200);
    let images = template_images(&tpl);

    let events = build(&g, &id);
    let (channel, last) = events.last().unwrap();
    assert_eq!(channel, "failure", "{events:?}");
    assert!(last["Message"].as_str().unwrap().contains("bad"), "{last}");
    let (created, containers) = build_output_ids(&events);
    assert!(
        created.len() >= 2,
        "the build created no layers? {events:?}"
    );
    for id in created {
        assert!(!docker_exists("image", &id), "layer {id} was left behind");
    }
    for c in containers {
        assert!(
            !docker_exists("container", &c),
            "container {c} was left behind"
        );
    }
    for image in &images {
        assert!(!docker_exists("image", image), "{image} was left behind");
    }

    // Instantiating builds again, fails again, and stores no app.
    let r = g.request(
        "POST",
        &format!("{TEMPLATES}/{}/instantiate", enc(&id)),
        &[],
        None,
    );
    assert_eq!(r.status, 400, "{r}");
    g.get(&format!(
        "/api/1/transfer/apps/{}",
        enc(&format!("{name}:1.0"))
    ))
    .expect_problem(
        404,
        &format!("/api/1/transfer/apps/{}", enc(&format!("{name}:1.0"))),
    );
    for image in &images {
        assert!(!docker_exists("image", image), "{image} was left behind");
    }
    g.delete(&format!("{TEMPLATES}/{}", enc(&id)))
        .expect_empty(200);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_template_without_a_build_file_or_escaping_its_bundle_is_refused() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let name = unique("tplno");
    let no_build = zip_of(&[
        (
            "config.yml",
            format!("Name: {name}\nVersion: 1\n").as_bytes(),
        ),
        ("compose.yaml", b"services: {a: {image: x}}"),
    ]);
    let detail = upload_bundle(&g, TEMPLATES, &no_build).expect_problem(400, TEMPLATES);
    assert!(detail.contains("docker-compose-build.yml"), "{detail}");
    let escaping = template_zip(&name, "services: {a: {build: ../x}}", &[]);
    let detail = upload_bundle(&g, TEMPLATES, &escaping).expect_problem(400, TEMPLATES);
    assert!(detail.contains(".."), "{detail}");
    let missing = template_zip(&name, "services: {a: {build: a}}", &[]);
    let detail = upload_bundle(&g, TEMPLATES, &missing).expect_problem(400, TEMPLATES);
    assert!(detail.contains("a/Dockerfile"), "{detail}");
    g.get(TEMPLATES).expect_empty(204);
    // An unknown template is an answer of its own, not a stream that fails.
    let unknown = format!("{TEMPLATES}/{}", enc(&format!("{name}:1")));
    let build = format!("{unknown}/build");
    g.get(&build).expect_problem(404, &build);
    let instantiate = format!("{unknown}/instantiate");
    g.post(&instantiate, "application/json", Vec::new())
        .expect_problem(404, &instantiate);
}

/// The isolation policy holds for templates: an instance an import would refuse is refused
/// at the template's import, and at its instantiation when Docker changed meanwhile (a
/// volume it names exists now and belongs to no app).
#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn an_instance_passes_the_checks_an_import_of_it_would() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let dockerfile = format!("FROM {}\nCMD [\"sleep\", \"600\"]\n", test_image());
    let privileged = "services:\n  a:\n    build: a\n    privileged: true\n";
    let zip = template_zip(
        &unique("tplpriv"),
        privileged,
        &[("a/Dockerfile", dockerfile.clone())],
    );
    let detail = upload_bundle(&g, TEMPLATES, &zip).expect_problem(400, TEMPLATES);
    assert!(detail.contains("allow_privileged"), "{detail}");
    g.get(TEMPLATES).expect_empty(204);

    let name = unique("tplvol");
    let volume = unique("tplshared");
    let id = format!("{name}:1.0-tpl");
    let build_file = format!(
        "services:\n  a:\n    build: a\n    volumes: [\"data:/data\"]\nvolumes:\n  data: {{name: {volume}}}\n"
    );
    let zip = template_zip(&name, &build_file, &[("a/Dockerfile", dockerfile)]);
    let images = template_images(&upload_bundle(&g, TEMPLATES, &zip).expect_json(200));
    docker_ok(&["volume", "create", &volume]);
    let path = format!("{TEMPLATES}/{}/instantiate", enc(&id));
    let detail = g
        .post(&path, "application/json", Vec::new())
        .expect_problem(400, &path);
    assert!(detail.contains("allow_shared_resources"), "{detail}");
    g.get("/api/1/transfer/apps").expect_empty(204);
    let _ = common::docker(&["volume", "rm", &volume]);
    // The build before the check stays (the template's); removing the template with its
    // images takes it out of Docker and of the view before the answer.
    assert_images_listed(&g, &images, true);
    g.delete(&format!("{TEMPLATES}/{}?remove_images=true", enc(&id)))
        .expect_empty(200);
    assert_images_listed(&g, &images, false);
}
