//! Helpers for the crate's own tests: for those that need the real test dockerd, and the
//! fixtures and fakes of the unit tests.
//!
//! The tests that need the real test dockerd are `#[ignore]`d, so a plain `cargo test` lists
//! them as ignored. `scripts/test.sh` starts a private dockerd, sets `GANTRY_TEST_DOCKER_HOST`
//! and `GANTRY_TEST_IMAGE` and runs them with `--include-ignored`. Run without the dockerd, such
//! a test skips loudly, except under CI ([`in_ci`]), where a missing dockerd is a failure.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};

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

/// The container `web1_main_1` (id `c1`) of the service `main` of the app `web:1`, running or
/// exited, as Docker lists it; `labels` are added to the service and app labels.
pub fn web_app_container(running: bool, labels: &[(&str, &str)]) -> ContainerSummary {
    let mut all = HashMap::from([
        ("com.docker.compose.service".to_string(), "main".to_string()),
        (
            crate::core::compose::plan::LABEL_APP_ID.to_string(),
            "web:1".to_string(),
        ),
    ]);
    all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ContainerSummary {
        id: Some("c1".into()),
        names: Some(vec!["/web1_main_1".into()]),
        state: Some(if running {
            ContainerSummaryStateEnum::RUNNING
        } else {
            ContainerSummaryStateEnum::EXITED
        }),
        labels: Some(all),
        ..Default::default()
    }
}

/// Implements [`ContainerEngine`](crate::core::engine::ContainerEngine) for a unit-test fake:
/// the methods written after the `not_faked:` line as they are, and each required method
/// named on that line failing with `EngineError::Failed("not in this fake")` (`export_image`
/// gives an empty stream). The trait's methods with a default body keep it unless written.
///
/// ```ignore
/// crate::testutil::fake_engine! {
///     impl ContainerEngine for Fake;
///     not_faked: version, list_images, export_image;
///     async fn inspect_image(&self, id: &str) -> EngineResult<ImageInspect> { ... }
/// }
/// ```
macro_rules! fake_engine {
    (impl ContainerEngine for $fake:ident; not_faked: $($name:ident),+ $(,)?; $($faked:tt)*) => {
        $crate::testutil::fake_engine!(@stubs $fake [$($faked)*] $($name)+);
    };
    // Every stub is written out: the impl, for async_trait to expand (it sees no macro calls).
    (@stubs $fake:ident [$($items:tt)*]) => {
        #[::async_trait::async_trait]
        impl $crate::core::engine::ContainerEngine for $fake {
            $($items)*
        }
    };
    (@stubs $fake:ident [$($items:tt)*] export_image $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stubs $fake [$($items)*
            fn export_image(&self, _: &str) -> $crate::core::engine::ByteStream {
                Box::pin(::futures_util::stream::empty())
            }
        ] $($rest)*);
    };
    // The required methods' signatures: arguments, then what the `EngineResult` carries.
    (@stubs $fake:ident [$($items:tt)*] version $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            version() -> $crate::core::engine::EngineVersion; $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] list_images $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            list_images() -> Vec<::bollard::models::ImageSummary>; $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] inspect_image $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            inspect_image(&str) -> ::bollard::models::ImageInspect; $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] load_images $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            load_images($crate::core::engine::ByteStream) -> $crate::core::engine::LoadedImages;
            $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] remove_image $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            remove_image(&str, bool) -> Vec<::bollard::models::ImageDeleteResponseItem>;
            $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] prune_images $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            prune_images(bool) -> Vec<String>; $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] list_containers $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            list_containers() -> Vec<::bollard::models::ContainerSummary>; $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] inspect_container $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            inspect_container(&str) -> ::bollard::models::ContainerInspectResponse; $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] start_container $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            start_container(&str) -> (); $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] stop_container $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            stop_container(&str) -> (); $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] restart_container $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            restart_container(&str) -> (); $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] remove_container $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            remove_container(&str, bool, bool) -> (); $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] prune_containers $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            prune_containers() -> Vec<String>; $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] list_volumes $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            list_volumes() -> Vec<::bollard::models::Volume>; $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] inspect_volume $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            inspect_volume(&str) -> ::bollard::models::Volume; $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] remove_volume $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            remove_volume(&str, bool) -> (); $($rest)*);
    };
    (@stubs $fake:ident [$($items:tt)*] prune_volumes $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stub $fake [$($items)*]
            prune_volumes() -> Vec<String>; $($rest)*);
    };
    (@stub $fake:ident [$($items:tt)*] $name:ident($($arg:ty),*) -> $ok:ty; $($rest:ident)*) => {
        $crate::testutil::fake_engine!(@stubs $fake [$($items)*
            async fn $name(&self, $(_: $arg),*) -> $crate::core::engine::EngineResult<$ok> {
                Err($crate::core::engine::EngineError::Failed("not in this fake".into()))
            }
        ] $($rest)*);
    };
}
pub(crate) use fake_engine;
