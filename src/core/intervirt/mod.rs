//! The Intervirt guest agent: Docker containers as the hosts of a simulated network.
//!
//! An Intervirt container is a Docker container created with `network_mode: none` and the
//! label [`LABEL`]; gantry's dataplane ([`crate::core::network`]) gives it its network and
//! enforces the client's topology. [`IntervirtAgent`] owns the dataplane, the engine and the
//! power backend, and implements every request of the Intervirt protocol in wire-neutral
//! terms; `src/api/intervirt` only translates. docs/INTERVIRT.md has the decisions.
//!
//! Concurrency: requests on one container are serialised by a per-name lock (Connect and
//! Disconnect take both names, in order); wipe, update and the power commands take the agent
//! exclusively. The Docker event watcher ([`watch`]) reconciles under the same locks.

pub(crate) mod locks;
mod upgrade;
mod watch;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, RestartPolicy, RestartPolicyNameEnum,
};
use tokio::sync::{mpsc, RwLock};
use tokio_util::sync::CancellationToken;

use super::engine::{ContainerEngine, EngineError, Filter};
use super::network::{
    ContainerSpec, Dataplane, DataplaneConfig, DataplaneHandle, MacAddr, NetworkError, PortForward,
    Protocol,
};
use super::power::{Power, PowerAction, PowerError};
use super::view::{fetch, LiveView};
use super::ErrorKind;
use locks::KeyedLocks;
pub use upgrade::UpgradeCommand;

/// Every Intervirt container carries this label (value "1").
pub const LABEL: &str = "io.gantry.intervirt";

/// Why a request failed. Errors of the dataplane, Docker and power control keep their
/// source; the dialect maps [`AgentError::kind`] (and a failed command) to its error codes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// Unusable arguments (bad address, MAC, name, port, ...).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The thing exists already, or the state asked for is already the state.
    #[error("{0}")]
    AlreadyDone(String),
    /// Docker, the kernel, storage or power control failed.
    #[error("{0}")]
    Guest(String),
    /// A command run on the guest (the system upgrade) failed.
    #[error("{0}")]
    Command(String),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Power(#[from] PowerError),
}

impl AgentError {
    /// The kind, as every core error has one: "already done" is a conflict with the current
    /// state, as a Docker conflict is; a failed command is a failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::Invalid(_) => ErrorKind::Invalid,
            AgentError::NotFound(_) => ErrorKind::NotFound,
            AgentError::AlreadyDone(_) => ErrorKind::Conflict,
            AgentError::Guest(_) | AgentError::Command(_) | AgentError::Power(_) => {
                ErrorKind::Failed
            }
            AgentError::Network(e) => e.kind(),
            AgentError::Engine(e) => e.kind(),
        }
    }
}

pub type AgentResult<T> = Result<T, AgentError>;

/// One step of a long request, for the client's progress display.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// 0.0 ..= 1.0
    pub fraction: f64,
    pub text: String,
}

/// Where a long operation reports its steps; reporting waits while the reader is behind.
#[derive(Clone, Default)]
pub struct ProgressSink(Option<mpsc::Sender<Progress>>);

impl ProgressSink {
    pub fn new(tx: mpsc::Sender<Progress>) -> Self {
        Self(Some(tx))
    }

    pub async fn report(&self, fraction: f64, text: impl Into<String>) {
        if let Some(tx) = &self.0 {
            let fraction = if fraction.is_finite() {
                fraction.clamp(0.0, 1.0)
            } else {
                0.0
            };
            // A reader that went away (client disconnected) does not stop the operation.
            let _ = tx
                .send(Progress {
                    fraction,
                    text: text.into(),
                })
                .await;
        }
    }
}

/// AddContainer, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewContainer {
    pub name: String,
    pub image: String,
    pub mac: MacAddr,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub internet: bool,
}

/// How the agent is set up (`[intervirt]` in the configuration).
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// `<state_dir>/intervirt`: the topology (`network.json`) and the resume list.
    pub state_dir: PathBuf,
    /// A namespace for the dataplane instead of gantry's own.
    pub netns: Option<PathBuf>,
    pub upgrade_command: UpgradeCommand,
    pub upgrade_timeout: Duration,
    pub pull_on_update: bool,
    /// Seconds Docker waits for a container to stop before killing it.
    pub stop_timeout_secs: u32,
    /// Wire option carried along for the dialect: drop the document's `status` key.
    pub strict_client: bool,
}

/// The agent: one per gantry process with an Intervirt listener.
pub struct IntervirtAgent {
    settings: AgentSettings,
    engine: Arc<dyn ContainerEngine>,
    net: DataplaneHandle,
    power: Arc<dyn Power>,
    /// Held shared by ordinary requests, exclusively by wipe, update and power commands.
    global: RwLock<()>,
    names: KeyedLocks,
    /// The core's live view, told of every change a request made before it answers (so
    /// reads of every dialect see it) and asked for the list of Intervirt containers.
    view: std::sync::OnceLock<Arc<LiveView>>,
}

/// A power action that is ready to run once the client has its answer.
pub struct PowerOrder {
    power: Arc<dyn Power>,
    action: PowerAction,
}

impl PowerOrder {
    pub async fn execute(self) {
        tracing::warn!(
            action = self.action.name(),
            backend = self.power.name(),
            "Intervirt client requested a power action"
        );
        if let Err(e) = self.power.execute(self.action).await {
            tracing::error!(error = %e, action = self.action.name(), "power action failed");
        }
    }
}

const RESUME_FILE: &str = "resume.json";

impl IntervirtAgent {
    /// Starts the dataplane (in `settings.netns` when given) and loads the topology.
    /// Nothing is applied until [`IntervirtAgent::start_up`].
    pub fn open(
        settings: AgentSettings,
        engine: Arc<dyn ContainerEngine>,
        power: Arc<dyn Power>,
    ) -> AgentResult<Arc<Self>> {
        std::fs::create_dir_all(&settings.state_dir).map_err(|e| {
            AgentError::Guest(format!(
                "cannot create {}: {e}",
                settings.state_dir.display()
            ))
        })?;
        let net = DataplaneHandle::start(DataplaneConfig {
            state_dir: settings.state_dir.clone(),
            netns: settings.netns.clone(),
        })?;
        Ok(Self::with_dataplane(settings, engine, power, net))
    }

    /// An agent over a dataplane that is already running (tests give it fakes).
    pub fn with_dataplane(
        settings: AgentSettings,
        engine: Arc<dyn ContainerEngine>,
        power: Arc<dyn Power>,
        net: DataplaneHandle,
    ) -> Arc<Self> {
        Arc::new(Self {
            settings,
            engine,
            net,
            power,
            global: RwLock::new(()),
            names: KeyedLocks::default(),
            view: std::sync::OnceLock::new(),
        })
    }

    /// Keeps `view` in step with what requests change (once, when the core is built).
    pub fn follow_view(&self, view: Arc<LiveView>) {
        let _ = self.view.set(view);
    }

    /// After a request: the containers it touched (None: possibly all of them), as Docker
    /// has them now, into the view.
    async fn view_changed(&self, name: Option<&str>) {
        let Some(view) = self.view.get() else { return };
        let engine = self.engine.as_ref();
        let result = match name {
            Some(n) => fetch::container(view, engine, n, true).await,
            None => fetch::all(view, engine).await,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "cannot read Docker's state after a request");
        }
    }

    /// Brings the guest back to the stored topology: starts the containers a power command
    /// stopped, attaches every running container, re-applies the whole dataplane, then
    /// watches Docker's events until `stop`. Docker being down is logged, not fatal: the
    /// watcher attaches the containers once Docker answers.
    pub async fn start_up(self: &Arc<Self>, stop: CancellationToken) {
        self.resume().await;
        if let Err(e) = self.resync().await {
            tracing::warn!(error = %e, "cannot list Intervirt containers at start");
        }
        if let Err(e) = self.net(|d| d.reapply()).await {
            tracing::warn!(error = %e, "re-applying the Intervirt network reported errors");
        }
        let agent = self.clone();
        tokio::spawn(async move { watch::run(agent, stop).await });
    }

    pub fn strict_client(&self) -> bool {
        self.settings.strict_client
    }

    pub fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// Runs a dataplane operation on its thread.
    async fn net<R, F>(&self, f: F) -> AgentResult<R>
    where
        F: FnOnce(&mut Dataplane) -> Result<R, NetworkError> + Send + 'static,
        R: Send + 'static,
    {
        Ok(self.net.run(f).await??)
    }

    async fn known(&self, name: &str) -> AgentResult<bool> {
        let n = name.to_string();
        Ok(self
            .net
            .run(move |d| d.state().containers.contains_key(&n))
            .await?)
    }

    async fn require_known(&self, name: &str) -> AgentResult<()> {
        if self.known(name).await? {
            Ok(())
        } else {
            Err(not_found(name))
        }
    }

    /// The Docker container of an Intervirt container, None when Docker has none by that
    /// name (or only a container that is not an Intervirt one).
    async fn inspect(&self, name: &str) -> AgentResult<Option<ContainerInspectResponse>> {
        match self.engine.inspect_container(name).await {
            Ok(c) if is_intervirt(&c) => Ok(Some(c)),
            Ok(_) => Ok(None),
            Err(EngineError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The names of the Intervirt containers, from the view when it is current.
    async fn list(&self) -> AgentResult<Vec<String>> {
        if let Some(view) = self.view.get().filter(|v| v.is_current()) {
            let snap = view.snapshot();
            let mut names: Vec<String> = snap
                .containers
                .values()
                .filter(|c| c.label(LABEL) == Some("1"))
                .map(|c| c.name.clone())
                .collect();
            names.sort();
            return Ok(names);
        }
        let all = self
            .engine
            .list_containers_filtered(&[Filter::Label(format!("{LABEL}=1"))])
            .await?;
        let mut names: Vec<String> = all
            .into_iter()
            .filter_map(|c| c.names?.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    // --- requests ----------------------------------------------------------------------------

    pub async fn add_container(&self, spec: NewContainer) -> AgentResult<()> {
        let name = spec.name.clone();
        let result = self.add_container_in(spec).await;
        self.view_changed(Some(&name)).await;
        result
    }

    async fn add_container_in(&self, spec: NewContainer) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _name = self.names.lock(&spec.name).await;
        let name = spec.name.clone();
        if self.known(&name).await? {
            return Err(AgentError::AlreadyDone(format!(
                "Container {name} already exists"
            )));
        }
        match self.engine.inspect_container(&name).await {
            Ok(_) => {
                return Err(AgentError::AlreadyDone(format!(
                    "Container {name} already exists (a Docker container has that name)"
                )))
            }
            Err(EngineError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let net_spec = ContainerSpec {
            name: name.clone(),
            mac: spec.mac,
            ipv4: spec.ipv4,
            ipv6: spec.ipv6,
            internet: spec.internet,
        };
        let began = Instant::now();
        self.net(move |d| d.add_container(net_spec)).await?;
        let recorded = began.elapsed();
        let result = self.create_and_start(&name, &spec.image).await;
        if let Ok(attached) = result {
            // The network's share, apart from Docker's: what the dataplane costs per add.
            tracing::info!(
                container = %name,
                network_us = (recorded + attached).as_micros() as u64,
                total_ms = began.elapsed().as_millis() as u64,
                "container added"
            );
        }
        if let Err(e) = result {
            if let Err(undo) = self.engine.remove_container(&name, true, true).await {
                if !matches!(undo, EngineError::NotFound(_)) {
                    tracing::warn!(container = %name, error = %undo, "cannot remove a half-created container");
                }
            }
            let n = name.clone();
            if let Err(undo) = self.net(move |d| d.remove_container(&n)).await {
                tracing::warn!(container = %name, error = %undo, "cannot forget a half-created container");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Returns how long attaching took.
    async fn create_and_start(&self, name: &str, image: &str) -> AgentResult<Duration> {
        self.ensure_image(image).await?;
        self.engine
            .create_container(name, container_body(name, image))
            .await
            .map_err(|e| match e {
                EngineError::Conflict(m) => {
                    AgentError::AlreadyDone(format!("Container {name} already exists: {m}"))
                }
                e => AgentError::Guest(format!("cannot create container {name}: {e}")),
            })?;
        self.engine
            .start_container(name)
            .await
            .map_err(|e| AgentError::Guest(format!("cannot start container {name}: {e}")))?;
        let pid = self.running_pid_of(name).await?;
        let began = Instant::now();
        let n = name.to_string();
        self.net(move |d| d.attach(&n, pid)).await?;
        Ok(began.elapsed())
    }

    /// The image is there, or is pulled; else NotFound with Docker's reason.
    async fn ensure_image(&self, image: &str) -> AgentResult<()> {
        match self.engine.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(EngineError::NotFound(_)) => {
                self.engine.pull_image(image).await.map_err(|e| {
                    AgentError::NotFound(format!(
                        "Image {image} is not on the guest and cannot be pulled: {e}"
                    ))
                })?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Attaches a container Docker reports running (the pid of this run).
    async fn attach_running(&self, name: &str) -> AgentResult<()> {
        let pid = self.running_pid_of(name).await?;
        let n = name.to_string();
        self.net(move |d| d.attach(&n, pid)).await
    }

    async fn running_pid_of(&self, name: &str) -> AgentResult<u32> {
        let c = self.engine.inspect_container(name).await?;
        running_pid(&c).ok_or_else(|| {
            AgentError::Guest(format!(
                "container {name} is not running (it exited at once?)"
            ))
        })
    }

    pub async fn remove_container(&self, name: &str, progress: ProgressSink) -> AgentResult<()> {
        let result = self.remove_container_in(name, progress).await;
        self.view_changed(Some(name)).await;
        result
    }

    async fn remove_container_in(&self, name: &str, progress: ProgressSink) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _name = self.names.lock(name).await;
        let known = self.known(name).await?;
        let docker = self.inspect(name).await?;
        if !known && docker.is_none() {
            return Err(not_found(name));
        }
        if let Some(c) = &docker {
            if running_pid(c).is_some() {
                progress
                    .report(0.3, format!("Shutting down container {name}..."))
                    .await;
                self.stop_docker(name).await?;
            }
            progress
                .report(0.6, format!("Removing container {name}..."))
                .await;
            match self.engine.remove_container(name, true, true).await {
                Ok(()) | Err(EngineError::NotFound(_)) => {}
                Err(e) => {
                    return Err(AgentError::Guest(format!(
                        "cannot remove container {name}: {e}"
                    )))
                }
            }
        }
        if known {
            progress
                .report(0.9, format!("Removing the network of {name}..."))
                .await;
            let n = name.to_string();
            self.net(move |d| d.remove_container(&n)).await?;
        }
        Ok(())
    }

    async fn stop_docker(&self, name: &str) -> AgentResult<()> {
        match self
            .engine
            .stop_container_with_timeout(name, self.settings.stop_timeout_secs)
            .await
        {
            Ok(()) | Err(EngineError::NotFound(_)) => Ok(()),
            Err(e) => Err(AgentError::Guest(format!(
                "cannot stop container {name}: {e}"
            ))),
        }
    }

    pub async fn start_container(&self, name: &str) -> AgentResult<()> {
        let result = self.start_container_in(name).await;
        self.view_changed(Some(name)).await;
        result
    }

    async fn start_container_in(&self, name: &str) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _name = self.names.lock(name).await;
        self.require_known(name).await?;
        let c = self.inspect(name).await?.ok_or_else(|| gone(name))?;
        if running_pid(&c).is_some() {
            return Err(AgentError::AlreadyDone(format!(
                "Container {name} is already running"
            )));
        }
        self.engine
            .start_container(name)
            .await
            .map_err(|e| AgentError::Guest(format!("cannot start container {name}: {e}")))?;
        self.attach_running(name).await
    }

    pub async fn stop_container(&self, name: &str) -> AgentResult<()> {
        let result = self.stop_container_in(name).await;
        self.view_changed(Some(name)).await;
        result
    }

    async fn stop_container_in(&self, name: &str) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _name = self.names.lock(name).await;
        self.require_known(name).await?;
        let c = self.inspect(name).await?.ok_or_else(|| gone(name))?;
        if running_pid(&c).is_none() {
            return Err(AgentError::AlreadyDone(format!(
                "Container {name} is not running"
            )));
        }
        self.stop_docker(name).await?;
        let n = name.to_string();
        self.net(move |d| d.detach(&n)).await
    }

    pub async fn set_ipv4(&self, name: &str, addr: Ipv4Addr) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _name = self.names.lock(name).await;
        let n = name.to_string();
        self.net(move |d| d.set_ipv4(&n, addr)).await
    }

    pub async fn set_ipv6(&self, name: &str, addr: Ipv6Addr) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _name = self.names.lock(name).await;
        let n = name.to_string();
        self.net(move |d| d.set_ipv6(&n, addr)).await
    }

    pub async fn connect(&self, a: &str, b: &str) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _names = self.names.lock_pair(a, b).await;
        let (a, b) = (a.to_string(), b.to_string());
        self.net(move |d| d.connect(&a, &b)).await
    }

    /// Disconnecting a pair that is not connected is "already done".
    pub async fn disconnect(&self, a: &str, b: &str) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _names = self.names.lock_pair(a, b).await;
        let (a, b) = (a.to_string(), b.to_string());
        self.net
            .run(move |d| {
                let s = d.state();
                if a != b
                    && s.containers.contains_key(&a)
                    && s.containers.contains_key(&b)
                    && !s.is_connected(&a, &b)
                {
                    return Err(AgentError::AlreadyDone(format!(
                        "Containers {a} and {b} are not connected"
                    )));
                }
                d.disconnect(&a, &b).map_err(AgentError::from)
            })
            .await?
    }

    pub async fn set_internet(&self, name: &str, enabled: bool) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _name = self.names.lock(name).await;
        let n = name.to_string();
        self.net(move |d| d.set_internet(&n, enabled)).await
    }

    pub async fn add_forward(&self, forward: PortForward) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _name = self.names.lock(&forward.container).await;
        self.net(move |d| d.add_forward(forward)).await
    }

    pub async fn remove_forward(&self, external_port: u16, protocol: Protocol) -> AgentResult<()> {
        let _all = self.global.read().await;
        self.net(move |d| d.remove_forward(external_port, protocol))
            .await
    }

    /// Removes every Intervirt container and all of the dataplane's state, one progress
    /// message per step. Goes on after a failed step and reports every failure at the end.
    pub async fn wipe(&self, progress: ProgressSink) -> AgentResult<()> {
        let result = self.wipe_in(progress).await;
        self.view_changed(None).await;
        result
    }

    async fn wipe_in(&self, progress: ProgressSink) -> AgentResult<()> {
        let _all = self.global.write().await;
        let mut errors = Vec::new();
        let names = match self.list().await {
            Ok(n) => n,
            Err(e) => {
                errors.push(format!("cannot list containers: {e}"));
                Vec::new()
            }
        };
        let steps = names.len() as f64 + 1.0;
        for (i, name) in names.iter().enumerate() {
            progress
                .report(i as f64 / steps, format!("Removing container {name}"))
                .await;
            match self.engine.remove_container(name, true, true).await {
                Ok(()) | Err(EngineError::NotFound(_)) => {}
                Err(e) => errors.push(format!("container {name}: {e}")),
            }
        }
        progress
            .report(
                names.len() as f64 / steps,
                "Removing the network configuration",
            )
            .await;
        if let Err(e) = self.net(|d| d.wipe()).await {
            errors.push(e.to_string());
        }
        if let Err(e) = remove_if_exists(&self.settings.state_dir.join(RESUME_FILE)) {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(AgentError::Guest(errors.join("; ")))
        }
    }

    /// The system upgrade (its output streamed), then every container: its image pulled
    /// again when a registry answers, the container recreated when the image changed, else
    /// restarted when it was running; each keeps its network.
    pub async fn update(&self, progress: ProgressSink) -> AgentResult<()> {
        let result = self.update_in(progress).await;
        self.view_changed(None).await;
        result
    }

    async fn update_in(&self, progress: ProgressSink) -> AgentResult<()> {
        let _all = self.global.write().await;
        match self.settings.upgrade_command.resolve() {
            Some(argv) => {
                progress
                    .report(0.0, format!("Running {}", argv.join(" ")))
                    .await;
                upgrade::run(&argv, self.settings.upgrade_timeout, &progress, 0.0, 0.5).await?;
            }
            None => {
                progress
                    .report(0.0, "No system upgrade command is configured or found")
                    .await;
            }
        }
        let names = self.list().await?;
        let mut errors = Vec::new();
        let n = names.len().max(1) as f64;
        for (i, name) in names.iter().enumerate() {
            let base = 0.5 + 0.5 * i as f64 / n;
            if let Err(e) = self.update_container(name, &progress, base).await {
                progress
                    .report(base, format!("Updating {name} failed: {e}"))
                    .await;
                errors.push(format!("{name}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(AgentError::Guest(errors.join("; ")))
        }
    }

    async fn update_container(
        &self,
        name: &str,
        progress: &ProgressSink,
        base: f64,
    ) -> AgentResult<()> {
        let c = self.engine.inspect_container(name).await?;
        let image = c
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .ok_or_else(|| AgentError::Guest(format!("container {name} has no image")))?;
        let running = running_pid(&c).is_some();
        let mut changed = false;
        if self.settings.pull_on_update {
            progress
                .report(base, format!("Pulling image {image} for {name}"))
                .await;
            match self.engine.pull_image(&image).await {
                Ok(()) => {
                    let now = self.engine.inspect_image(&image).await?.id;
                    changed = now.is_some() && now != c.image;
                }
                Err(e) => {
                    progress
                        .report(
                            base,
                            format!("Keeping the current image {image} (cannot pull: {e})"),
                        )
                        .await;
                }
            }
        }
        if changed {
            progress
                .report(
                    base,
                    format!("Recreating container {name} from the new {image}"),
                )
                .await;
            if running {
                self.stop_docker(name).await?;
            }
            let n = name.to_string();
            let _ = self.net(move |d| d.detach(&n)).await;
            self.engine.remove_container(name, true, false).await?;
            self.engine
                .create_container(name, container_body(name, &image))
                .await?;
            if running {
                self.engine.start_container(name).await?;
            }
        } else if running {
            progress
                .report(base, format!("Restarting container {name}"))
                .await;
            self.engine.restart_container(name).await?;
        }
        if running && self.known(name).await? {
            self.attach_running(name).await?;
        }
        Ok(())
    }

    /// Stops every Intervirt container (remembering the running ones, which the next start
    /// of the agent starts again) and returns the power action, which the caller runs after
    /// the client has its answer.
    pub async fn prepare_power(&self, action: PowerAction) -> AgentResult<PowerOrder> {
        self.power.available()?;
        let _all = self.global.write().await;
        // Docker being down must not keep the guest from going down.
        let names = self.list().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list containers before {}", action.name());
            Vec::new()
        });
        let mut running = Vec::new();
        for name in &names {
            if let Ok(c) = self.engine.inspect_container(name).await {
                if running_pid(&c).is_some() {
                    running.push(name.clone());
                }
            }
        }
        self.write_resume(&running)?;
        for name in &running {
            if let Err(e) = self.stop_docker(name).await {
                tracing::warn!(container = %name, error = %e, "cannot stop before {}", action.name());
            }
            let n = name.clone();
            let _ = self.net(move |d| d.detach(&n)).await;
            self.view_changed(Some(name)).await;
        }
        Ok(PowerOrder {
            power: self.power.clone(),
            action,
        })
    }

    fn write_resume(&self, names: &[String]) -> AgentResult<()> {
        let path = self.settings.state_dir.join(RESUME_FILE);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec(names).map_err(|e| AgentError::Guest(e.to_string()))?;
        let fail = |e: std::io::Error| AgentError::Guest(format!("{}: {e}", path.display()));
        std::fs::write(&tmp, text).map_err(fail)?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok(())
    }

    /// Starts the containers a power command stopped.
    async fn resume(&self) {
        let path = self.settings.state_dir.join(RESUME_FILE);
        let names: Vec<String> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable resume list");
                Vec::new()
            }),
            Err(_) => return,
        };
        for name in &names {
            match self.engine.start_container(name).await {
                Ok(()) => tracing::info!(container = %name, "started again after a power command"),
                Err(e) => tracing::warn!(container = %name, error = %e, "cannot start again"),
            }
        }
        if let Err(e) = remove_if_exists(&path) {
            tracing::warn!(error = %e, "cannot remove the resume list");
        }
    }

    // --- keeping the network in step with Docker ---------------------------------------------

    /// Attaches or detaches every Intervirt container the dataplane knows, as Docker has it.
    async fn resync(&self) -> AgentResult<()> {
        let known: Vec<String> = self
            .net
            .run(|d| d.state().containers.keys().cloned().collect())
            .await?;
        for name in known {
            if let Err(e) = self.reconcile(&name).await {
                tracing::warn!(container = %name, error = %e, "cannot bring the network in step");
            }
        }
        Ok(())
    }

    /// Makes the dataplane match Docker for one container: attached with the pid of its
    /// current run while it runs, detached otherwise. Order-insensitive, so a late or
    /// repeated event does no harm.
    async fn reconcile(&self, name: &str) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _name = self.names.lock(name).await;
        if !self.known(name).await? {
            return Ok(());
        }
        let pid = match self.engine.inspect_container(name).await {
            Ok(c) if is_intervirt(&c) => running_pid(&c),
            Ok(_) | Err(EngineError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let n = name.to_string();
        self.net(move |d| match pid {
            Some(pid) if d.pid(&n) == Some(pid) => Ok(()),
            Some(pid) => d.attach(&n, pid),
            None if d.pid(&n).is_some() => d.detach(&n),
            None => Ok(()),
        })
        .await
    }
}

fn not_found(name: &str) -> AgentError {
    AgentError::NotFound(format!("Container {name} doesn't exist."))
}

fn gone(name: &str) -> AgentError {
    AgentError::NotFound(format!(
        "Container {name} doesn't exist in Docker any more (remove it and add it again)"
    ))
}

fn is_intervirt(c: &ContainerInspectResponse) -> bool {
    c.config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .is_some_and(|l| l.get(LABEL).map(String::as_str) == Some("1"))
}

fn running_pid(c: &ContainerInspectResponse) -> Option<u32> {
    let state = c.state.as_ref()?;
    if state.running != Some(true) {
        return None;
    }
    state
        .pid
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
}

/// How every Intervirt container is created: no Docker networking, a terminal and open stdin
/// so that an image whose command is a shell keeps running (like `docker run -dit`), and
/// restarted by Docker unless stopped on purpose.
fn container_body(name: &str, image: &str) -> ContainerCreateBody {
    let hostname_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-');
    ContainerCreateBody {
        image: Some(image.to_string()),
        hostname: hostname_ok.then(|| name.to_string()),
        tty: Some(true),
        open_stdin: Some(true),
        labels: Some(HashMap::from([(LABEL.to_string(), "1".to_string())])),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    }
}

fn remove_if_exists(path: &Path) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests;
