//! The Flow Manager: containers a client creates, starts, stops, updates and deletes, each
//! with a unix socket between it and gantry ([`sockets`]), watched through Docker's event
//! stream ([`monitor`]). Its containers carry the label `io.gantry.dialect=flowmanager`, so
//! `docker ps` and the other dialects see them and this one lists only its own.
//!
//! Creating, updating and deleting are long operations of the core ([`crate::core::ops`]);
//! everything else is a direct call. What happens is published as [`FlowEvent`]s for the
//! dialect to broadcast.
//!
//! Listings and the state part of a status (state, health, uptime) are read from the core's
//! live view, with no Docker call; only the resource usage comes from Docker's stats. Every
//! operation reads what it changed back into the view before it answers.

mod code;
pub mod error;
mod fdstore;
mod monitor;
pub mod ops;
mod recover;
mod sockets;
pub mod spec;
pub mod status;
mod tails;
mod update;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bollard::models::ContainerInspectResponse;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use error::{FlowError, SocketFailure};
pub use spec::{ContainerSpec, HealthCheck};
pub use status::{ContainerStatus, ResourceUsage};

use crate::config::FlowConfig;
use crate::core::engine::{ContainerEngine, EngineError, Filter};
use crate::core::view::model::Container;
use crate::core::view::{fetch, LiveView, Snapshot};
use crate::core::{CoreError, CoreResult};

/// The label every Flow Manager container carries, naming the dialect.
pub const LABEL_DIALECT: &str = "io.gantry.dialect";
pub const DIALECT: &str = "flowmanager";
/// The host path of the container's socket (where it was mounted from).
pub const LABEL_SOCKET: &str = "io.gantry.flowmanager.socket";
/// Where the socket appears inside the container.
pub const SOCKET_TARGET: &str = "/var/run/kawaflow.sock";
/// Where the code directory appears inside the container (after an update).
pub const CODE_TARGET: &str = "/app";

/// Events the broadcast channel keeps for a slow receiver (each slot holds a pointer: the
/// channel allocates every slot up front).
const EVENT_QUEUE: usize = 1024;

/// What happened to the Flow Manager's containers, for every client.
#[derive(Debug, Clone)]
pub enum FlowEvent {
    StatusChanged {
        id: String,
        name: String,
        old: String,
        new: String,
    },
    HealthWarning {
        id: String,
        name: String,
        health: String,
    },
    /// The container's process exited with a non-zero code on its own (not stopped).
    Crashed {
        id: String,
        name: String,
        exit_code: i64,
        oom_killed: bool,
        /// Its last log lines.
        logs: Vec<String>,
    },
    StatusUpdate(Box<ContainerStatus>),
    MessageReceived {
        id: String,
        name: String,
        message: Value,
        at: SystemTime,
    },
    /// The container sent something its socket refused; the connection was reset.
    SocketFailed {
        id: String,
        name: String,
        error: FlowError,
    },
}

/// A Flow Manager container, as listings show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    /// Docker's state: created, running, exited, ...
    pub state: String,
    /// Docker's creation time (RFC 3339).
    pub created: String,
    pub socket_path: PathBuf,
    /// Container port (without `/tcp`) to host port.
    pub ports: Vec<(String, u16)>,
}

pub struct FlowManager {
    engine: Arc<dyn ContainerEngine>,
    /// What listings and statuses are read from, and operations read their effect into.
    view: Arc<LiveView>,
    settings: FlowConfig,
    sockets: Arc<sockets::Hub>,
    events: broadcast::Sender<Arc<FlowEvent>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    monitor: monitor::Tracker,
    /// The intents of creates, updates and deletes in flight, resolved after a crash.
    intents: recover::FlowIntents,
}

impl FlowManager {
    /// The service, its intents in `state_dir/intents`; nothing runs until
    /// [`FlowManager::start_up`].
    pub fn new(
        engine: Arc<dyn ContainerEngine>,
        view: Arc<LiveView>,
        settings: FlowConfig,
        state_dir: &std::path::Path,
        stop: CancellationToken,
    ) -> CoreResult<Arc<Self>> {
        let dir = state_dir.join("intents");
        let intents = recover::FlowIntents::open(&dir)
            .map_err(|e| CoreError::io(format!("cannot open {}", dir.display()), e))?;
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let sockets = Arc::new(sockets::Hub::new(
            settings.socket_dir.clone(),
            settings.max_frame_bytes,
            settings.socket_timeout,
            events.clone(),
            stop,
        ));
        Ok(Arc::new(Self {
            engine,
            view,
            settings,
            sockets,
            events,
            locks: Mutex::default(),
            monitor: monitor::Tracker::default(),
            intents,
        }))
    }

    /// The intents of the operations in flight (and of interrupted ones).
    pub fn intents(&self) -> &recover::FlowIntents {
        &self.intents
    }

    pub fn settings(&self) -> &FlowConfig {
        &self.settings
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FlowEvent>> {
        self.events.subscribe()
    }

    fn publish(&self, event: FlowEvent) {
        let _ = self.events.send(Arc::new(event));
    }

    /// Creates the socket directory, resolves the operations a crash interrupted, serves the
    /// sockets of the containers that exist, and starts watching Docker.
    pub async fn start_up(self: &Arc<Self>, stop: CancellationToken) {
        if let Err(e) = create_private_dir(&self.settings.socket_dir) {
            tracing::error!(dir = %self.settings.socket_dir.display(), error = %e, "cannot create the Flow Manager socket directory");
        }
        if let Err(e) = self.recover().await {
            tracing::warn!(error = %e, "cannot recover interrupted Flow Manager operations");
        }
        if std::env::var_os("INVOCATION_ID").is_some()
            && self.settings.socket_dir.starts_with("/tmp")
        {
            tracing::warn!("flowmanager.socket_dir is under /tmp: with the unit's PrivateTmp= dockerd does not see it; set it outside /tmp");
        }
        if let Err(e) = self.reopen_sockets().await {
            tracing::warn!(error = %e, "cannot list the Flow Manager containers yet");
        }
        tokio::spawn(monitor::watch(self.clone(), stop.clone()));
        tokio::spawn(monitor::periodic(self.clone(), stop));
    }

    /// Serves the socket of every container this dialect created whose socket lives in the
    /// socket directory, at the path it was mounted from. (Sockets elsewhere belong to
    /// another socket directory, or another gantry on the same Docker: never taken over.)
    async fn reopen_sockets(&self) -> CoreResult<()> {
        for c in self.list_raw().await? {
            let (Some(id), Some(name)) = (c.id, c.names.and_then(|n| n.into_iter().next())) else {
                continue;
            };
            let name = name.trim_start_matches('/').to_string();
            let path = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SOCKET))
                .map_or_else(|| self.sockets.path_of(&name), PathBuf::from);
            if path.parent() != Some(self.settings.socket_dir.as_path()) {
                tracing::debug!(container = %name, socket = %path.display(), "socket outside flowmanager.socket_dir: not served");
                continue;
            }
            if let Err(e) = self.sockets.open(&name, &id, &path) {
                tracing::warn!(container = %name, error = %e, "cannot serve a container socket");
            }
        }
        self.sockets.forget_unclaimed();
        Ok(())
    }

    async fn list_raw(&self) -> CoreResult<Vec<bollard::models::ContainerSummary>> {
        let label = Filter::Label(format!("{LABEL_DIALECT}={DIALECT}"));
        Ok(self.engine.list_containers_filtered(&[label]).await?)
    }

    /// The lock that orders the operations on container `name`.
    fn lock_of(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    /// The Flow Manager container `id` (an id, id prefix or name), or `ContainerNotFound`.
    pub async fn resolve(&self, id: &str) -> CoreResult<ContainerInspectResponse> {
        let not_found = || FlowError::ContainerNotFound(format!("container {id} not found"));
        if id.is_empty() {
            return Err(not_found().into());
        }
        let c = match self.engine.inspect_container(id).await {
            Ok(c) => c,
            Err(EngineError::NotFound(_)) => return Err(not_found().into()),
            Err(e) => return Err(e.into()),
        };
        let ours = c
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_DIALECT))
            .is_some_and(|d| d == DIALECT);
        if !ours {
            return Err(not_found().into());
        }
        Ok(c)
    }

    /// The containers in `snap` this dialect created.
    fn ours(snap: &Snapshot) -> impl Iterator<Item = &Arc<Container>> {
        snap.containers
            .values()
            .filter(|c| c.label(LABEL_DIALECT) == Some(DIALECT))
    }

    /// Every Flow Manager container, from the live view.
    pub async fn list(&self) -> CoreResult<Vec<ContainerInfo>> {
        let snap = self.view.current().await?;
        let now = crate::core::view::now_ns();
        let mut out: Vec<ContainerInfo> = Self::ours(&snap)
            .map(|c| status::summary_info(c.render(now), &self.sockets))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// After an operation: the containers `keys` as Docker has them now, into the view.
    async fn changed(&self, keys: &[&str]) {
        fetch::changed(&self.view, self.engine.as_ref(), keys).await;
    }

    /// Starts a container (a running one stays running).
    pub async fn start(&self, id: &str) -> CoreResult<ContainerInspectResponse> {
        let c = self.resolve(id).await?;
        let lock = self.lock_of(&name_of(&c));
        let _held = lock.lock().await;
        if !status::is_running(&c) {
            let started = self.engine.start_container(&id_of(&c)).await;
            self.changed(&[&id_of(&c)]).await;
            started?;
        }
        Ok(c)
    }

    /// Stops a container (a stopped one stays stopped).
    pub async fn stop(&self, id: &str) -> CoreResult<ContainerInspectResponse> {
        let c = self.resolve(id).await?;
        let lock = self.lock_of(&name_of(&c));
        let _held = lock.lock().await;
        let timeout = self.settings.stop_timeout_secs;
        let stopped = self
            .engine
            .stop_container_with_timeout(&id_of(&c), timeout)
            .await;
        self.changed(&[&id_of(&c)]).await;
        stopped?;
        Ok(c)
    }

    pub async fn restart(&self, id: &str) -> CoreResult<ContainerInspectResponse> {
        let c = self.resolve(id).await?;
        let lock = self.lock_of(&name_of(&c));
        let _held = lock.lock().await;
        let restarted = self.engine.restart_container(&id_of(&c)).await;
        self.changed(&[&id_of(&c)]).await;
        restarted?;
        Ok(c)
    }

    /// Writes `message` to container `id` as one frame.
    pub async fn send_message(
        &self,
        id: &str,
        message: &Value,
    ) -> CoreResult<ContainerInspectResponse> {
        let c = self.resolve(id).await?;
        let name = name_of(&c);
        let body = serde_json::to_vec(message)
            .map_err(|e| CoreError::Invalid(format!("the message cannot be encoded: {e}")))?;
        if body.len() > self.settings.max_frame_bytes as usize {
            return Err(CoreError::Invalid(format!(
                "the message is {} bytes, over the limit of {} (flowmanager.max_frame_bytes)",
                body.len(),
                self.settings.max_frame_bytes
            )));
        }
        let Some(ep) = self.sockets.get(&name) else {
            let m = format!("container {name} has no socket");
            return Err(FlowError::socket(SocketFailure::Setup, m).into());
        };
        ep.send(sockets::frame(&body), self.settings.socket_timeout)
            .await?;
        Ok(c)
    }
}

/// The container's id.
pub fn id_of(c: &ContainerInspectResponse) -> String {
    c.id.clone().unwrap_or_default()
}

/// The texts of the last `lines` lines the container wrote (long lines come in parts).
async fn log_tail(
    engine: &dyn ContainerEngine,
    id: &str,
    lines: u64,
) -> crate::core::engine::EngineResult<Vec<String>> {
    use futures_util::TryStreamExt;
    engine
        .container_logs(id, Some(lines))
        .map_ok(|l| l.text)
        .try_collect()
        .await
}

/// The container's name, without Docker's leading `/`.
pub fn name_of(c: &ContainerInspectResponse) -> String {
    c.name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string()
}

/// The socket directory: created when missing, only root may look into it on the host (the
/// containers reach their sockets through their mounts).
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A random suffix for generated names.
fn random_hex(bytes: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        buf = t.to_le_bytes()[..bytes.min(16)].to_vec();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
