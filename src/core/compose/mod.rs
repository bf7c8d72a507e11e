//! The native compose engine: an app's compose file, planned and applied over the
//! [`ContainerEngine`] seam the way docker-compose 1.29.2 would, so that `docker ps` and
//! `docker-compose -p <project> ps` see the same containers, networks and volumes.
//!
//! Pipeline: [`parse`] (YAML, the allowed-keys check of [`validate`], [`interpolate`]) ->
//! [`plan`] (create bodies, labels) -> [`apply`] (up / down / status).

mod apply;
pub mod interpolate;
mod parse;
pub mod plan;
pub mod validate;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::engine::{ContainerEngine, EngineError};
use super::ErrorKind;

pub(crate) use apply::port_mappings;
pub use apply::{ContainerStatus, DownOptions, DownResult, ServiceStatus, UpResult};

/// The compose files gantry looks for, in this order (first match wins).
pub const COMPOSE_FILE_NAMES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];

/// Compose files larger than this are refused.
pub const MAX_COMPOSE_FILE_BYTES: u64 = 1024 * 1024;

/// How long `up` waits for a dependency to become healthy or to complete, by default.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(180);

/// How many engine operations (create+start of a service, stop, remove, network and volume
/// creation, image checks) `up` and `down` run at once, by default. Independent work runs
/// concurrently up to this bound; dependency order is kept regardless.
pub const DEFAULT_PARALLEL_LIMIT: usize = 8;

/// How long `up` lets one image pull take (the engine's own timeout only covers the wait
/// for the response headers, not a stalled download).
pub const PULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What the gateway's configuration allows apps to ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComposePolicy {
    pub allow_privileged: bool,
    pub allow_devices: bool,
    /// Governs `cap_add`; `cap_drop` only takes rights away and is always allowed.
    pub allow_capabilities: bool,
    /// Host paths (besides the app's own directory) bind mounts may use.
    pub allowed_bind_paths: Vec<PathBuf>,
    /// Volume `driver` (other than `local`) and `driver_opts` (which can mount any host
    /// path: `type: none, o: bind, device: /`).
    pub allow_volume_drivers: bool,
    /// The host's namespaces: `network_mode: host`, `pid: host`, `ipc: host`, a network
    /// named `host` or with the `host` driver.
    pub allow_host_namespaces: bool,
    /// What other apps own or no app owns: external (or explicitly named) volumes and
    /// networks without this project's label, `network_mode: bridge` (Docker's default
    /// network, shared by every container on it) and `network_mode: container:` outside
    /// the app.
    pub allow_shared_resources: bool,
    /// Network drivers other than `bridge`, network `driver_opts` and `ipam`.
    pub allow_network_options: bool,
    /// `logging.driver` other than `local`, `json-file` and `journald`.
    pub allow_logging_drivers: bool,
    /// Host ports published ports may use (inclusive ranges); empty: any.
    pub allowed_host_ports: Vec<(u16, u16)>,
    /// Host addresses published ports may bind; empty: any.
    pub allowed_host_ips: Vec<std::net::IpAddr>,
    /// gantry's own listeners: a published TCP port that would collide with one is refused.
    pub reserved: Vec<std::net::SocketAddr>,
    /// Plan without reading env files or checking bind sources on disk.
    pub skip_host_files: bool,
}

impl ComposePolicy {
    /// What stopping, removing or reading the state of an app needs: its plan whatever the
    /// policy says now (it may have changed since the import) and whatever its containers
    /// did to its directory. Nothing is created with it.
    pub fn teardown() -> ComposePolicy {
        ComposePolicy {
            allow_privileged: true,
            allow_devices: true,
            allow_capabilities: true,
            allowed_bind_paths: vec![PathBuf::from("/")],
            allow_volume_drivers: true,
            allow_host_namespaces: true,
            allow_shared_resources: true,
            allow_network_options: true,
            allow_logging_drivers: true,
            skip_host_files: true,
            ..ComposePolicy::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("no compose file found in {dir} (looked for {})", COMPOSE_FILE_NAMES.join(", "))]
    NoComposeFile { dir: PathBuf },
    #[error("invalid YAML: {message}")]
    Yaml { message: String },
    /// A key gantry does not implement; `scope` is e.g. `service "web"` or `top level`.
    #[error("{scope}: unsupported key \"{key}\"{hint}")]
    UnsupportedKey {
        scope: String,
        key: String,
        hint: String,
    },
    #[error("{scope}: \"{key}\": {message}")]
    Interpolation {
        scope: String,
        key: String,
        message: String,
    },
    #[error("{scope}: {message}")]
    Invalid { scope: String, message: String },
    /// Refused by the gateway's [`ComposePolicy`].
    #[error("{scope}: {message}")]
    Policy { scope: String, message: String },
    #[error("image \"{image}\" is not present and could not be pulled: {message}")]
    Image { image: String, message: String },
    #[error("service \"{service}\": dependency \"{dependency}\" {message}")]
    Dependency {
        service: String,
        dependency: String,
        message: String,
    },
    #[error("{action}: {source}")]
    Engine {
        action: String,
        #[source]
        source: EngineError,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<ComposeError>),
}

impl ComposeError {
    fn engine(action: impl Into<String>) -> impl FnOnce(EngineError) -> ComposeError {
        let action = action.into();
        move |source| ComposeError::Engine { action, source }
    }
}

impl ComposeError {
    /// What kind of failure this is for the dialects: invalid compose is the caller's (400),
    /// Docker's own answers keep their kind, and only an unreachable Docker is Unavailable.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ComposeError::Engine { source, .. } => match source.kind() {
                // Docker rejected a body the engine built: a failure, not the caller's input.
                ErrorKind::Invalid => ErrorKind::Failed,
                k => k,
            },
            ComposeError::Read { .. }
            | ComposeError::Image { .. }
            | ComposeError::Dependency { .. } => ErrorKind::Failed,
            ComposeError::Several(errors) => {
                if errors.iter().any(|e| e.kind() == ErrorKind::Unavailable) {
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::Failed
                }
            }
            ComposeError::NoComposeFile { .. }
            | ComposeError::Yaml { .. }
            | ComposeError::UnsupportedKey { .. }
            | ComposeError::Interpolation { .. }
            | ComposeError::Invalid { .. }
            | ComposeError::Policy { .. } => ErrorKind::Invalid,
        }
    }
}

/// The compose project name of an app id: the id lowercased, every character outside
/// `[a-z0-9_-]` dropped (as docker-compose 1.29 normalises `-p`), then leading `_` and `-`
/// dropped too, because a project name (and so a container name, `<project>_<service>_1`)
/// must start with a letter or a digit. Empty when nothing is left (such an app is refused
/// at import).
///
/// The one place this rule lives ([`crate::core::apps::AppId::slug`] calls it). Existing
/// containers, networks and volumes carry the name it gave in `com.docker.compose.project`
/// (the id itself is in `io.gantry.app-id`): a different rule would orphan them.
pub fn project_slug(app_id: &str) -> String {
    let slug: String = app_id
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    slug.trim_start_matches(['_', '-']).to_string()
}

/// What [`project_slug`] gives for a non-empty result: `[a-z0-9_-]`, starting with a
/// letter or a digit.
fn valid_project_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// An app's compose file, checked and planned, ready to apply.
#[derive(Debug, Clone)]
pub struct ComposeProject {
    name: String,
    compose_file: PathBuf,
    plan: plan::Plan,
    warnings: Vec<String>,
    wait_timeout: Duration,
    parallel_limit: usize,
    /// `apps.allow_shared_resources`: volumes and networks of other apps (or of none).
    allow_shared: bool,
}

impl ComposeProject {
    /// Loads the compose file of the app in `dir` (the first of [`COMPOSE_FILE_NAMES`]).
    /// Interpolation variables come from `dir/.env` (if present), overridden by `env`;
    /// gantry's own process environment is deliberately not used.
    pub fn load(
        dir: &Path,
        project_name: &str,
        app_id: &str,
        env: &HashMap<String, String>,
        policy: &ComposePolicy,
    ) -> Result<ComposeProject, ComposeError> {
        let (file, text) = read_compose_file(dir)?;
        let mut vars: HashMap<String, String> = HashMap::new();
        if let Some(env_text) = read_app_file(dir, ".env")? {
            let parsed = interpolate::parse_env_file(&env_text, env, true).map_err(|e| {
                ComposeError::Invalid {
                    scope: ".env".into(),
                    message: e.to_string(),
                }
            })?;
            vars.extend(parsed);
        }
        vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        Self::from_text(dir, &file, &text, project_name, app_id, &vars, policy)
    }

    /// Plans `text` as if it were `compose_file` inside `dir`, with exactly `vars`.
    pub fn from_text(
        dir: &Path,
        compose_file: &Path,
        text: &str,
        project_name: &str,
        app_id: &str,
        vars: &HashMap<String, String>,
        policy: &ComposePolicy,
    ) -> Result<ComposeProject, ComposeError> {
        if !valid_project_name(project_name) {
            return Err(ComposeError::Invalid {
                scope: format!("project \"{project_name}\""),
                message:
                    "a project name must use only [a-z0-9_-] and start with a letter or a digit"
                        .into(),
            });
        }
        let dir = absolute(dir)?;
        let compose_file = absolute(compose_file)?;
        let model = parse::parse(text, vars)?;
        let warnings = model
            .missing_vars
            .iter()
            .map(|v| format!("WARNING: The {v} variable is not set. Defaulting to a blank string."))
            .collect();
        let ctx = plan::PlanContext {
            project: project_name,
            app_id,
            dir: &dir,
            compose_file: &compose_file,
            vars,
            policy,
        };
        let plan = plan::plan(&model, &ctx)?;
        Ok(ComposeProject {
            name: project_name.to_string(),
            compose_file,
            plan,
            warnings,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            parallel_limit: DEFAULT_PARALLEL_LIMIT,
            allow_shared: policy.allow_shared_resources,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn compose_file(&self) -> &Path {
        &self.compose_file
    }

    /// Service names in file order.
    pub fn services(&self) -> Vec<&str> {
        self.plan.services.iter().map(|s| s.name.as_str()).collect()
    }

    /// Distinct image references, in file order.
    pub fn images(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.plan.services {
            if !out.contains(&s.image) {
                out.push(s.image.clone());
            }
        }
        out
    }

    /// Warnings found while loading (unset variables), also sent as the first lines of
    /// every `up` and `down`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Bounds each wait for a dependency's health or completion (default
    /// [`DEFAULT_WAIT_TIMEOUT`]).
    #[cfg(test)]
    pub fn set_wait_timeout(&mut self, timeout: Duration) {
        self.wait_timeout = timeout;
    }

    /// Bounds how many engine operations run at once (default [`DEFAULT_PARALLEL_LIMIT`],
    /// at least 1).
    #[cfg(test)]
    pub fn set_parallel_limit(&mut self, limit: usize) {
        self.parallel_limit = limit.max(1);
    }

    pub(crate) fn plan(&self) -> &plan::Plan {
        &self.plan
    }

    /// Creates what is missing, recreates what changed, starts everything, pulling images
    /// that are not present. Each output line goes to `on_line` as it happens; on failure
    /// the last line is `ERROR: ...`.
    pub async fn up(
        &self,
        engine: &dyn ContainerEngine,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<UpResult, ComposeError> {
        apply::up(self, engine, on_line).await
    }

    /// Stops and removes the project's containers and networks; volumes and images only
    /// when asked and not used by any other container.
    pub async fn down(
        &self,
        engine: &dyn ContainerEngine,
        options: &DownOptions,
        on_line: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<DownResult, ComposeError> {
        apply::down(self, engine, options, on_line).await
    }

    /// Refuses the volumes and networks that exist in Docker and belong to another app or to
    /// none, unless the policy allows sharing (the import's check; `up` checks again).
    pub async fn check_owners(&self, engine: &dyn ContainerEngine) -> Result<(), ComposeError> {
        apply::check_owners(self, engine).await
    }

    /// The state of each service's containers (services without one have none).
    pub async fn status(
        &self,
        engine: &dyn ContainerEngine,
    ) -> Result<Vec<ServiceStatus>, ComposeError> {
        apply::status(self, engine).await
    }
}

/// The first compose file of [`COMPOSE_FILE_NAMES`] in `dir`: its path and text.
fn read_compose_file(dir: &Path) -> Result<(PathBuf, String), ComposeError> {
    for name in COMPOSE_FILE_NAMES {
        if let Some(text) = read_app_file(dir, name)? {
            return Ok((dir.join(name), text));
        }
    }
    Err(ComposeError::NoComposeFile {
        dir: dir.to_path_buf(),
    })
}

/// The file `name` of the app directory `dir` (None when absent), read without following a
/// symlink and at most [`MAX_COMPOSE_FILE_BYTES`]: a service that bind-mounts the app
/// directory could otherwise point it anywhere between two starts.
fn read_app_file(dir: &Path, name: &str) -> Result<Option<String>, ComposeError> {
    match crate::core::safe_fs::read_text(dir, Path::new(name), MAX_COMPOSE_FILE_BYTES) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(ComposeError::Read {
            path: dir.join(name),
            message: e.to_string(),
        }),
    }
}

fn absolute(p: &Path) -> Result<PathBuf, ComposeError> {
    std::path::absolute(p).map_err(|e| ComposeError::Read {
        path: p.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn slugs() {
        for (id, slug) in [
            ("Simple Webserver:1.0.0", "simplewebserver100"),
            ("ScaleIT node-red:2.2.2", "scaleitnode-red222"),
            ("My_App:1-rc.2", "my_app1-rc2"),
            ("Ünïcode:1", "ncode1"),
            // A project name starts with a letter or a digit.
            ("--_Über:1", "ber1"),
            ("_x-:1", "x-1"),
            ("0_-:-", "0_--"),
            (":.+ ", ""),
            ("-_", ""),
        ] {
            assert_eq!(project_slug(id), slug, "{id}");
            assert_eq!(valid_project_name(slug), !slug.is_empty(), "{id}");
        }
        for bad in ["_x", "-x", "X", "a.b", "a b", "ä"] {
            assert!(!valid_project_name(bad), "{bad}");
        }
    }

    #[test]
    fn load_finds_the_file_and_reads_dot_env() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("docker-compose.yml"),
            "services: {web: {image: \"busybox:${TAG}\", environment: [\"X=${X:-dx}\", \"Y=$Y\"]}}",
        )
        .unwrap();
        std::fs::write(dir.path().join(".env"), "TAG=1.36\nX=fromfile\n").unwrap();
        let env = HashMap::from([("X".to_string(), "override".to_string())]);
        let load = || {
            ComposeProject::load(
                dir.path(),
                "demo",
                "Demo:1",
                &env,
                &ComposePolicy::default(),
            )
            .unwrap()
        };
        let p = load();
        assert_eq!(p.images(), vec!["busybox:1.36"]);
        let body = &p.plan().service("web").unwrap().body;
        assert_eq!(body.env.clone().unwrap(), vec!["X=override", "Y="]);
        assert_eq!(
            p.warnings(),
            ["WARNING: The Y variable is not set. Defaulting to a blank string."]
        );
        // compose.yaml wins over docker-compose.yml.
        std::fs::write(
            dir.path().join("compose.yaml"),
            "services: {other: {image: a}}",
        )
        .unwrap();
        let p = load();
        assert_eq!(p.services(), vec!["other"]);
        assert!(p.compose_file().ends_with("compose.yaml"));
    }

    /// A service that bind-mounts its app directory may replace `.env` or the compose file
    /// with a symlink to a host file between two starts: the next load refuses it, unread.
    #[test]
    fn load_follows_no_symlink() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let host_file = outside.path().join("secret");
        std::fs::write(&host_file, "SECRET=1\n").unwrap();
        let (pol, env) = (ComposePolicy::default(), HashMap::new());
        let load = || ComposeProject::load(dir.path(), "demo", "d", &env, &pol);
        std::fs::write(
            dir.path().join("compose.yaml"),
            "services: {web: {image: a}}",
        )
        .unwrap();
        load().unwrap();
        symlink(&host_file, dir.path().join(".env")).unwrap();
        let e = load().unwrap_err();
        assert!(matches!(e, ComposeError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::remove_file(dir.path().join(".env")).unwrap();
        std::fs::rename(
            dir.path().join("compose.yaml"),
            outside.path().join("c.yaml"),
        )
        .unwrap();
        symlink(
            outside.path().join("c.yaml"),
            dir.path().join("compose.yaml"),
        )
        .unwrap();
        assert!(load().unwrap_err().to_string().contains("symbolic link"));
    }

    #[test]
    fn load_errors() {
        let dir = tempfile::tempdir().unwrap();
        let pol = ComposePolicy::default();
        let env = HashMap::new();
        assert!(matches!(
            ComposeProject::load(dir.path(), "demo", "d", &env, &pol),
            Err(ComposeError::NoComposeFile { .. })
        ));
        std::fs::write(dir.path().join("compose.yaml"), "services: [oops").unwrap();
        assert!(matches!(
            ComposeProject::load(dir.path(), "demo", "d", &env, &pol),
            Err(ComposeError::Yaml { .. })
        ));
        std::fs::write(
            dir.path().join("compose.yaml"),
            "services: {web: {image: \"${IMG:?set IMG please}\"}}",
        )
        .unwrap();
        match ComposeProject::load(dir.path(), "demo", "d", &env, &pol) {
            Err(ComposeError::Interpolation {
                scope,
                key,
                message,
            }) => {
                assert_eq!(scope, "service \"web\"");
                assert_eq!(key, "image");
                assert!(message.contains("set IMG please"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(
            dir.path().join("compose.yaml"),
            "services: {web: {image: a}}",
        )
        .unwrap();
        assert!(ComposeProject::load(dir.path(), "Bad Name", "d", &env, &pol).is_err());
        let e = ComposeError::UnsupportedKey {
            scope: "service \"web\"".into(),
            key: "build".into(),
            hint: String::new(),
        };
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }

    #[test]
    fn merges_anchors_and_extensions() {
        let yaml = r#"
x-base: &base
  image: busybox
  restart: always
  x-private: 1
services:
  a:
    <<: *base
    command: ["true"]
  b:
    <<: *base
    restart: "no"
"#;
        let p = ComposeProject::from_text(
            Path::new("/tmp/app"),
            Path::new("/tmp/app/compose.yaml"),
            yaml,
            "demo",
            "d",
            &HashMap::new(),
            &ComposePolicy::default(),
        )
        .unwrap();
        let a = p.plan().service("a").unwrap();
        let b = p.plan().service("b").unwrap();
        assert_eq!(a.image, "busybox");
        let name = |s: &plan::ServicePlan| {
            s.body
                .host_config
                .as_ref()
                .unwrap()
                .restart_policy
                .as_ref()
                .unwrap()
                .name
        };
        assert_eq!(
            name(a),
            Some(bollard::models::RestartPolicyNameEnum::ALWAYS)
        );
        assert_eq!(name(b), Some(bollard::models::RestartPolicyNameEnum::NO));
    }
}
