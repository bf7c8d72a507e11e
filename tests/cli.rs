//! The operator's CLI (`gantry app|image|task|check|completions|manpage`) run as a separate
//! process against a real daemon: tables and `--json`, the documented exit codes, progress
//! and Ctrl-C cancelling an operation, logs followed as they come, and `gantry check`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::bundle::{app_zip, saved_image, slow_app};
use common::pki::Pki;
use common::{
    app_containers, docker_ok, gantry_command, run_gantry, test_image, unique, wait_for, Gantry,
};
use serde_json::Value;

const TOKEN: &str = "cli-test-token-0123456789abcdef";

fn url(g: &Gantry) -> String {
    format!("http://{}", g.addr)
}

/// `gantry <args> --url <the daemon>`, run to completion.
fn cli(g: &Gantry, args: &[&str]) -> Output {
    let url = url(g);
    run_gantry(&[args, &["--url", url.as_str()]].concat(), &[])
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts `o` exited with `want`, showing its output otherwise.
fn expect(o: &Output, want: i32) -> String {
    assert_eq!(
        code(o),
        want,
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// An app whose one container says hello, then ticks every 200 ms.
fn ticking_app(name: &str) -> Vec<u8> {
    app_zip(
        name,
        "1",
        &format!(
            "services:\n  main:\n    image: {}\n    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; echo hello-from-{name}; while true; do echo tick; sleep 0.2; done\"]\n    stop_grace_period: 1s\n",
            test_image()
        ),
    )
}

/// A daemon on the test dockerd, and a fresh app name with its id (`name:1`).
fn daemon_and_app(host: &str, label: &str) -> (Gantry, String, String) {
    let name = unique(label);
    let id = format!("{name}:1");
    (Gantry::builder().docker_host(host).start(), name, id)
}

/// A daemon on the test dockerd with the app `bundle(name)` imported; the app's id.
fn daemon_with(host: &str, label: &str, bundle: fn(&str) -> Vec<u8>) -> (Gantry, String) {
    let (g, name, id) = daemon_and_app(host, label);
    common::bundle::import(&g, &bundle(&name)).expect_json(200);
    (g, id)
}

/// A daemon on the test dockerd and the bundle `bundle(name)` of a fresh app, not imported:
/// the app's id, and the bundle's path in a temp dir.
fn daemon_and_bundle(
    host: &str,
    label: &str,
    bundle: fn(&str) -> Vec<u8>,
) -> (Gantry, String, tempfile::TempDir, String) {
    let (g, name, id) = daemon_and_app(host, label);
    let dir = tempfile::tempdir().unwrap();
    let zip = write(dir.path(), "app.zip", &bundle(&name));
    (g, id, dir, zip)
}

/// `gantry <args> --url <the daemon>`, running, its output piped.
fn spawn_cli(g: &Gantry, args: &[&str]) -> std::process::Child {
    gantry_command()
        .args(args)
        .args(["--url", &url(g)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn an_app_goes_through_its_life_from_the_command_line() {
    let host = require_docker!();
    let (g, id, dir, zip) = daemon_and_bundle(&host, "cli", ticking_app);
    let name = id.strip_suffix(":1").unwrap();

    let out = expect(&cli(&g, &["app", "import", &zip]), 0);
    assert_eq!(out, format!("imported {id} (Stopped)\n"));
    let table = expect(&cli(&g, &["app", "ls"]), 0);
    assert!(table.starts_with("ID "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("Stopped")),
        "{table}"
    );

    expect(&cli(&g, &["app", "start", &id]), 0);
    let shown = json_of(&cli(&g, &["app", "show", &id, "--json"]));
    assert_eq!(shown["Status"], "Running", "{shown}");
    let listed = json_of(&cli(&g, &["app", "ls", "--json"]));
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["Id"] == id.as_str()),
        "{listed}"
    );
    let human = expect(&cli(&g, &["app", "show", &id]), 0);
    assert!(
        human.contains(&format!("Id:          {id}\n")) && human.contains("Containers:"),
        "{human}"
    );

    let hello = wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        let logs = stdout(&cli(&g, &["app", "logs", &id, "-n", "-1"]));
        logs.contains(&format!("hello-from-{name}")).then_some(logs)
    });
    assert!(
        hello.is_some_and(|l| l.contains("main_1 | ")),
        "no hello in the logs"
    );

    let export = dir.path().join("export.zip");
    let e = export.to_str().unwrap();
    let said = expect(&cli(&g, &["app", "export", &id, e]), 0);
    assert!(
        said.starts_with(&format!("exported {id} to {e} (")),
        "{said}"
    );
    assert_eq!(&std::fs::read(&export).unwrap()[..2], b"PK");
    assert!(!Path::new(&format!("{e}.part")).exists());

    let stop = json_of(&cli(&g, &["app", "stop", &id, "--json"]));
    assert_eq!(stop["ExitCode"], 0, "{stop}");
    assert!(app_containers(&id, true).is_empty());
    expect(&cli(&g, &["app", "rm", &id]), 0);
    let gone = cli(&g, &["app", "show", &id]);
    expect(&gone, 3);
    assert!(stderr(&gone).contains("no such app"), "{}", stderr(&gone));
    expect(
        &cli(
            &g,
            &["task", "cancel", "0f8fad5b-d9cb-469f-a165-70867728950e"],
        ),
        3,
    );
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn images_are_loaded_and_listed() {
    let host = require_docker!();
    let g = Gantry::builder().docker_host(&host).start();
    let dir = tempfile::tempdir().unwrap();
    let (reference, tar) = saved_image("cliload");
    let file = write(dir.path(), "image.tar", &tar);

    let out = expect(&cli(&g, &["image", "load", &file]), 0);
    assert!(out.starts_with(&format!("loaded {reference} (")), "{out}");
    let images = json_of(&cli(&g, &["image", "ls", "--json"]));
    let tagged = images.as_array().unwrap().iter().any(|i| {
        i["RepoTags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == reference.as_str()))
    });
    assert!(tagged, "{reference} not in {images}");
    let table = expect(&cli(&g, &["image", "ls"]), 0);
    assert!(table.lines().any(|l| l.starts_with(&reference)), "{table}");
    docker_ok(&["rmi", &reference]);
}

/// `gantry <args> --url <the daemon>` on a pseudo-terminal (util-linux `script`), 200
/// columns wide: its exit code and what the terminal showed.
fn on_terminal(g: &Gantry, args: &[&str]) -> (i32, String) {
    let url = url(g);
    let words: Vec<String> = [common::gantry_bin()]
        .iter()
        .chain(args)
        .chain(&["--url", url.as_str()])
        .map(|a| format!("'{a}'"))
        .collect();
    let line = format!("COLUMNS=200 {}", words.join(" "));
    let out = common::run("script", &["-qefc", &line, "/dev/null"]);
    (code(&out), stdout(&out))
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn progress_is_drawn_on_a_terminal() {
    let host = require_docker!();
    let (g, id, dir, zip) = daemon_and_bundle(&host, "clipty", slow_app);
    // One line, redrawn in place: the bar, the bytes sent of the total, then the result.
    let (status, screen) = on_terminal(&g, &["app", "import", &zip]);
    assert_eq!(status, 0, "{screen:?}");
    let full = "[####################] 100% ";
    assert!(screen.contains(&format!("\rimport {full}")), "{screen:?}");
    assert!(screen.contains("\x1b[K"), "{screen:?}");
    assert!(
        screen.ends_with(&format!("\r\nimported {id} (Stopped)\r\n")),
        "{screen:?}"
    );

    let (reference, tar) = saved_image("clipty");
    let file = write(dir.path(), "image.tar", &tar);
    let (status, screen) = on_terminal(&g, &["image", "load", &file]);
    assert_eq!(status, 0, "{screen:?}");
    assert!(screen.contains(&format!("\rload {full}")), "{screen:?}");
    assert!(screen.contains(" MiB/"), "{screen:?}");
    docker_ok(&["rmi", &reference]);

    // A start lasts a few seconds (its web service waits for db to be healthy): the daemon's
    // steps show as they come, and compose's output is printed when it ends.
    let (status, screen) = on_terminal(&g, &["app", "start", &id]);
    assert_eq!(status, 0, "{screen:?}");
    assert!(screen.contains("\rstart | Creating "), "{screen:?}");
    assert!(screen.contains("_web_1 ... done\r\n"), "{screen:?}");
    // Leave no running container behind (a later test checks the engine is empty).
    expect(&cli(&g, &["app", "stop", &id]), 0);
    expect(&cli(&g, &["app", "rm", &id]), 0);
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn ctrl_c_cancels_a_start_which_rolls_back() {
    let host = require_docker!();
    let (g, id) = daemon_with(&host, "clicancel", slow_app);

    let mut child = spawn_cli(&g, &["app", "start", &id]);
    // The start is listed (its services wait ~3 s for the first to be healthy): interrupt.
    let listed = wait_for(Duration::from_secs(20), Duration::from_millis(20), || {
        let r = g.get("/api/1/tasks");
        (r.status == 200 && r.json()[0]["Kind"] == "start").then_some(())
    });
    assert!(listed.is_some(), "the start was never listed");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = wait_for(Duration::from_secs(60), Duration::from_millis(50), || {
        child.try_wait().unwrap()
    })
    .expect("the CLI did not end after Ctrl-C");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let app = g
        .get(&format!("/api/1/transfer/apps/{}", common::enc(&id)))
        .expect_json(200);
    assert_eq!(app["Status"], "Stopped", "{app}");
    assert!(app_containers(&id, true).is_empty());
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn logs_follow_new_lines_until_the_app_stops() {
    let host = require_docker!();
    let (g, id) = daemon_with(&host, "clifollow", ticking_app);
    g.put(&format!("/api/1/transfer/apps/{}/start", common::enc(&id)))
        .expect_json(200);

    let mut child = spawn_cli(&g, &["app", "logs", &id, "-f", "-n", "1"]);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // More lines than the one asked for from the past: these came while following.
    for _ in 0..4 {
        let line = lines.next().expect("the log stream ended early").unwrap();
        assert!(line.contains("main_1 | "), "{line}");
    }
    g.put(&format!("/api/1/transfer/apps/{}/stop", common::enc(&id)))
        .expect_json(200);
    let status = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
        child.try_wait().unwrap()
    });
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "follow did not end with the app"
    );
    let unknown = cli(&g, &["app", "logs", "nope:1", "-f"]);
    expect(&unknown, 3);
}

#[test]
fn exit_codes_say_what_went_wrong() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1 (it needs root to bind, and nothing here does).
    let down = run_gantry(&["app", "ls", "--url", "http://127.0.0.1:1"], &[]);
    expect(&down, 69);
    assert!(
        stderr(&down).contains("cannot reach the daemon"),
        "{}",
        stderr(&down)
    );
    let bad = write(dir.path(), "bad.toml", b"bogus = 1\n");
    expect(&run_gantry(&["app", "ls", "--config", &bad], &[]), 78);
    expect(&run_gantry(&["app", "frobnicate"], &[]), 2);

    let token = write(dir.path(), "token", TOKEN.as_bytes());
    let g = Gantry::builder()
        .docker_host("unix:///nonexistent/gantry-test/docker.sock")
        .listener("auth = \"token\"")
        .listener(&format!("token_file = \"{token}\""))
        .start();
    expect(&cli(&g, &["task", "ls"]), 77);
    let out = expect(&cli(&g, &["task", "ls", "--token-file", &token]), 0);
    assert_eq!(out, "ID  KIND  APP  STARTED  PROGRESS  STEP\n");
    // Docker is down in this test: 503 is "unavailable".
    expect(&cli(&g, &["image", "ls", "--token-file", &token]), 69);

    // Through a configuration naming the daemon's listener and its token file.
    let client = |token_file: &str| {
        format!(
            "[[listeners]]\ndialect = \"transfer\"\naddress = \"{}\"\nauth = \"token\"\ntoken_file = \"{token_file}\"\n",
            g.addr
        )
    };
    let cfg = write(dir.path(), "client.toml", client(&token).as_bytes());
    let tasks = json_of(&run_gantry(
        &["task", "ls", "--json", "--config", &cfg],
        &[],
    ));
    assert_eq!(tasks, serde_json::json!([]));
    let missing = dir.path().join("missing-token").display().to_string();
    let cfg = write(dir.path(), "client2.toml", client(&missing).as_bytes());
    let refused = run_gantry(&["task", "ls", "--config", &cfg], &[]);
    expect(&refused, 77);
    assert!(stderr(&refused).contains(&missing), "{}", stderr(&refused));
}

#[test]
fn completions_and_manual_pages_come_from_the_command_definitions() {
    let bash = expect(&run_gantry(&["completions", "bash"], &[]), 0);
    assert!(
        bash.contains("_gantry()") && bash.contains("import"),
        "{bash}"
    );
    let zsh = expect(&run_gantry(&["completions", "zsh"], &[]), 0);
    assert!(zsh.starts_with("#compdef gantry"), "{zsh}");
    let man = expect(&run_gantry(&["manpage"], &[]), 0);
    assert!(
        man.starts_with(".ie \\n(.g .ds Aq") || man.contains(".TH gantry"),
        "{man}"
    );
    assert!(man.contains("Exit status"), "{man}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    expect(&run_gantry(&["manpage", "--dir", d], &[]), 0);
    for page in [
        "gantry.1",
        "gantry-app.1",
        "gantry-app-import.1",
        "gantry-check.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn check_passes_beside_a_running_daemon_and_fails_without_one() {
    let host = require_docker!();
    let mut g = Gantry::builder().docker_host(&host).start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "state_dir = \"{}\"\ndocker_host = \"{host}\"\n[[listeners]]\ndialect = \"transfer\"\naddress = \"{}\"\n",
        dir.path().join("state").display(),
        g.addr
    );
    let cfg = write(dir.path(), "check.toml", cfg.as_bytes());
    let out = run_gantry(&["check", "--json", "--config", &cfg], &[]);
    let report = json_of(&out);
    let find = |r: &Value, name: &str| -> Value {
        r.as_array()
            .unwrap()
            .iter()
            .find(|f| f["Check"].as_str().is_some_and(|c| c.starts_with(name)))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} check in {r}"))
    };
    for name in [
        "configuration",
        "listener transfer",
        "docker",
        "disk: state",
        "disk: Docker",
        "clock",
    ] {
        assert_eq!(find(&report, name)["Status"], "ok", "{report}");
    }
    // /healthz says only ok; the version comes from /gantry/status (a loopback listener).
    let said = find(&report, "listener transfer")["Message"].clone();
    let ours = format!("gantry {}", env!("CARGO_PKG_VERSION"));
    assert!(said.as_str().is_some_and(|m| m.contains(&ours)), "{said}");
    assert_eq!(code(&out), 0, "{report}");

    g.signal(nix::sys::signal::Signal::SIGTERM);
    g.wait_exit(Duration::from_secs(10))
        .expect("gantry did not stop");
    let out = run_gantry(&["check", "--config", &cfg], &[]);
    let text = expect(&out, 1);
    assert!(text.contains("ERROR    listener transfer"), "{text}");
    assert!(text.contains("hint: start gantry"), "{text}");
}

/// `gantry <args>` run to completion.
fn gantry(args: &[&str]) -> Output {
    run_gantry(args, &[])
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn the_cli_speaks_tls_to_a_tls_only_listener() {
    let host = require_docker!();
    let pki = Pki::new();
    pki.leaf("server", "gantry tls", "ca", "server_ext", false);
    let (cert, key) = (
        pki.path("server.pem").display().to_string(),
        pki.path("server.key").display().to_string(),
    );
    let g = Gantry::builder()
        .docker_host(&host)
        .listener(&format!("tls_cert_file = {cert:?}"))
        .listener(&format!("tls_key_file = {key:?}"))
        .start_unprobed();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "docker_host = \"{host}\"\n[[listeners]]\ndialect = \"transfer\"\naddress = \"{}\"\n\
         tls_cert_file = {cert:?}\ntls_key_file = {key:?}\n",
        g.addr
    );
    let cfg = write(dir.path(), "tls.toml", cfg.as_bytes());
    let name = unique("tls");
    let id = format!("{name}:1");
    let zip = write(dir.path(), "app.zip", &ticking_app(&name));
    let listed = |o: &Output| {
        expect(o, 0);
        let all = json_of(o);
        all.as_array()
            .unwrap()
            .iter()
            .any(|a| a["Id"] == id.as_str())
    };

    // The configured listener, trusting its own certificate (tls_cert_file): a streamed
    // upload and a listing.
    let out = expect(&gantry(&["app", "import", &zip, "--config", &cfg]), 0);
    assert_eq!(out, format!("imported {id} (Stopped)\n"));
    assert!(listed(&gantry(&["app", "ls", "--json", "--config", &cfg])));

    // The CA that signed it, for the listener's address; another CA is refused.
    let ca = pki.path("ca.pem").display().to_string();
    let with_ca = gantry(&["app", "ls", "--json", "--config", &cfg, "--ca-file", &ca]);
    assert!(listed(&with_ca));
    let other = pki.path("other-ca.pem").display().to_string();
    let refused = gantry(&["app", "ls", "--config", &cfg, "--ca-file", &other]);
    expect(&refused, 69);
    assert!(stderr(&refused).contains("TLS"), "{}", stderr(&refused));

    // An https --url needs the CA; plain HTTP gets no answer from a TLS listener.
    let https = format!("https://{}", g.addr);
    assert!(listed(&gantry(&[
        "app",
        "ls",
        "--json",
        "--url",
        &https,
        "--ca-file",
        &ca
    ])));
    expect(&gantry(&["app", "ls", "--url", &https]), 78);
    let plain = gantry(&["app", "ls", "--url", &url(&g)]);
    assert_ne!(code(&plain), 0, "{}", stdout(&plain));

    expect(&gantry(&["app", "rm", &id, "--config", &cfg]), 0);
    let gone = gantry(&["app", "ls", "--json", "--config", &cfg]);
    expect(&gone, 0);
    assert!(!stdout(&gone).contains(id.as_str()), "{}", stdout(&gone));
}

/// The findings of a `gantry check --json` report whose check starts with `name`.
fn findings<'a>(report: &'a Value, name: &str) -> Vec<&'a Value> {
    let all = report.as_array().expect("a JSON array");
    all.iter()
        .filter(|f| f["Check"].as_str().is_some_and(|c| c.starts_with(name)))
        .collect()
}

/// Asserts the report has one finding `name`, at `status`, saying `said`; its hint.
fn the_finding(report: &Value, name: &str, status: &str, said: &str) -> String {
    let found = findings(report, name);
    assert_eq!(found.len(), 1, "{name}: {report}");
    assert_eq!(found[0]["Status"], status, "{name}: {report}");
    let message = found[0]["Message"].as_str().unwrap_or_default();
    assert!(message.contains(said), "{name}: {report}");
    found[0]["Hint"].as_str().unwrap_or_default().to_string()
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn check_judges_the_files_and_directories_the_dialects_need() {
    let dir = tempfile::tempdir().unwrap();
    let (key, tokens, sockets) = (
        dir.path().join("corekey.bin"),
        dir.path().join("tokens"),
        dir.path().join("sockets"),
    );
    std::fs::write(&tokens, "admin 0123456789abcdef-admin\n").unwrap();
    chmod(&tokens, 0o644);
    std::fs::create_dir(&sockets).unwrap();
    chmod(&sockets, 0o755);
    let listener =
        |d: &str| format!("[[listeners]]\ndialect = \"{d}\"\naddress = \"127.0.0.1:0\"\n");
    let cfg = format!(
        "state_dir = \"{}\"\ndocker_host = \"unix:///nonexistent/docker.sock\"\n\
         [duxcore]\ncorekey_file = \"{}\"\n[flowmanager]\nsocket_dir = \"{}\"\n{}{}\
         token_file = \"{}\"\n{}",
        dir.path().join("state").display(),
        key.display(),
        sockets.display(),
        listener("duxcore"),
        listener("distillery"),
        tokens.display(),
        listener("flowmanager"),
    );
    let cfg = write(dir.path(), "check.toml", cfg.as_bytes());
    let check = || {
        let out = run_gantry(&["check", "--json", "--config", &cfg], &[]);
        // Docker is not there: an error either way.
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        json_of(&out)
    };

    let report = check();
    the_finding(&report, "configuration", "ok", "valid");
    let hint = the_finding(&report, "duxcore core key file", "error", "missing");
    assert!(hint.contains("/dev/urandom"), "{hint}");
    the_finding(
        &report,
        "distillery tokens file",
        "warning",
        "readable by every user",
    );
    let dir_checks = findings(&report, "flowmanager socket_dir");
    let chmod_hint = format!("`chmod 700 {}`", sockets.display());
    assert!(
        dir_checks
            .iter()
            .any(|f| f["Status"] == "warning" && f["Hint"] == chmod_hint.as_str()),
        "{report}"
    );

    std::fs::write(&key, [9u8; 64]).unwrap();
    chmod(&key, 0o600);
    chmod(&tokens, 0o600);
    chmod(&sockets, 0o700);
    let report = check();
    the_finding(&report, "duxcore core key file", "ok", "a key of 64 bytes");
    the_finding(&report, "distillery tokens file", "ok", "1 token(s): admin");
    // Where the test's temp dir lives (under /tmp, a long path) may still warn; nothing fails.
    let dir_checks = findings(&report, "flowmanager socket_dir");
    assert!(!dir_checks.is_empty(), "{report}");
    assert!(
        dir_checks
            .iter()
            .all(|f| f["Status"] != "error" && f["Hint"] != chmod_hint.as_str()),
        "{report}"
    );
}
