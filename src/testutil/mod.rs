//! Helpers for the crate's own tests: for those that need the real test dockerd, and the
//! fixtures of the unit tests and their in-memory Docker ([`FakeEngine`]).
//!
//! The tests that need the real test dockerd are `#[ignore]`d, so a plain `cargo test` lists
//! them as ignored. `scripts/test.sh` starts a private dockerd, sets `GANTRY_TEST_DOCKER_HOST`
//! and `GANTRY_TEST_IMAGE` and runs them with `--include-ignored`. Run without the dockerd, such
//! a test skips loudly, except under CI ([`in_ci`]), where a missing dockerd is a failure.

mod fake_engine;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use fake_engine::{FakeContainer, FakeEngine};

pub const DEFAULT_IMAGE: &str = "gantry-test/busybox:latest";

/// CI is set: `CI` is true, 1 or yes (any case), the same rule as `scripts/test.sh`.
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str(),
        "true" | "1" | "yes"
    )
}

/// The test dockerd, or None after a loud skip notice (a panic under CI).
pub fn docker_host(test: &str) -> Option<String> {
    match std::env::var("GANTRY_TEST_DOCKER_HOST") {
        Ok(h) if !h.trim().is_empty() => Some(h),
        _ if in_ci() => panic!(
            "{test}: GANTRY_TEST_DOCKER_HOST is not set but CI=true: Docker-backed tests must \
             not be skipped in CI (run them with `bash scripts/test.sh` as root)"
        ),
        _ => {
            // Straight to the process's stderr: the test harness captures eprintln! of a
            // passing test.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!!!! SKIPPED {test}: GANTRY_TEST_DOCKER_HOST is not set; run \
                 `bash scripts/test.sh` as root !!!!!!!!!!\n"
            );
            None
        }
    }
}

pub fn image() -> String {
    std::env::var("GANTRY_TEST_IMAGE")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string())
}

/// A name no other test (or test process) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs the docker CLI against the test daemon; returns (success, stdout, stderr).
pub fn docker(host: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker")
        .arg("-H")
        .arg(host)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`docker`], panicking on failure; returns trimmed stdout.
pub fn docker_ok(host: &str, args: &[&str]) -> String {
    let (ok, out, err) = docker(host, args);
    assert!(ok, "docker {args:?} failed: {err}");
    out.trim().to_string()
}

/// The real engine for the test daemon.
pub fn engine(host: &str) -> crate::core::docker::DockerEngine {
    crate::core::docker::DockerEngine::new(host, Duration::from_secs(60), Duration::from_secs(600))
}

/// Stores the app `web:1` with `compose` as its compose.yaml, in the app store of the state
/// directory `state` (where `Apps::open` finds it).
pub fn store_web_app(state: &std::path::Path, compose: &str) {
    let store = crate::core::apps::store::AppStore::open(&state.join("apps")).unwrap();
    let staged = store
        .stage(crate::core::apps::AppConfig {
            name: "web".into(),
            version: "1".into(),
            ..Default::default()
        })
        .unwrap();
    std::fs::write(staged.dir().join("compose.yaml"), compose).unwrap();
    store.insert(staged, false).unwrap();
}

/// The container `web1_main_1` (id `c1`) of the service `main` of the app `web:1` (compose
/// project `web1`), running or exited, with the labels compose gives it.
pub fn web_app_container(running: bool) -> FakeContainer {
    use crate::core::compose::plan::labels::{
        LABEL_APP_ID, LABEL_CONTAINER_NUMBER, LABEL_ONEOFF, LABEL_PROJECT, LABEL_SERVICE,
    };
    FakeContainer::new("web1_main_1", "busybox")
        .with_id("c1")
        .with_labels(&[
            (LABEL_PROJECT, "web1"),
            (LABEL_SERVICE, "main"),
            (LABEL_ONEOFF, "False"),
            (LABEL_CONTAINER_NUMBER, "1"),
            (LABEL_APP_ID, "web:1"),
        ])
        .running(running)
}
