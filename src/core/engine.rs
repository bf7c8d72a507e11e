//! The narrow seam between gantry's core and a container engine.
//!
//! Production uses [`super::docker::DockerEngine`] (bollard over the local socket); tests can
//! substitute a fake. The models are Docker's own (bollard's generated types), because the
//! system module's contract is "Docker's data, lightly wrapped".

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStatsResponse, ContainerSummary,
    EndpointSettings, ImageDeleteResponseItem, ImageInspect, ImageSummary, Network,
    NetworkCreateRequest, Volume, VolumeCreateRequest,
};
use bytes::Bytes;
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use super::ErrorKind;

/// A stream of bytes flowing to or from the engine (image tarballs).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// What went wrong talking to the engine, in terms the core can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The engine rejected what we sent (bad tar, bad parameter).
    #[error("{0}")]
    Rejected(String),
    /// The engine could not be reached or did not answer in time.
    #[error("Docker is unreachable: {0}")]
    Unavailable(String),
    #[error("Docker failed: {0}")]
    Failed(String),
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::NotFound(_) => ErrorKind::NotFound,
            EngineError::Conflict(_) => ErrorKind::Conflict,
            EngineError::Rejected(_) => ErrorKind::Invalid,
            EngineError::Unavailable(_) => ErrorKind::Unavailable,
            EngineError::Failed(_) => ErrorKind::Failed,
        }
    }
}

pub type EngineResult<T> = Result<T, EngineError>;

/// Whether an operation changed anything (the API answers 304 when it did not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Changed,
    NoEffect,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineVersion {
    pub version: String,
    pub api_version: String,
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// False for stderr.
    pub stdout: bool,
    pub text: String,
}

/// Result of loading a `docker save` archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedImages {
    /// `name:tag` references the archive carried.
    pub references: Vec<String>,
    /// Image ids (`sha256:...`) for archives that carried untagged images.
    pub ids: Vec<String>,
}

/// Where a build's output lines go as they arrive.
pub type OnLine<'a> = &'a (dyn for<'l> Fn(&'l str) + Send + Sync);

/// What [`ContainerEngine::build_image`] builds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// `name:tag` of the result.
    pub tag: String,
    /// The Dockerfile's path inside the context (`Dockerfile` when empty).
    pub dockerfile: String,
    /// `--build-arg` pairs.
    pub args: Vec<(String, String)>,
}

/// One build: its context (a tar stream), what to build, where its output lines go.
pub struct BuildJob<'a> {
    pub context: ByteStream,
    pub options: BuildOptions,
    pub on_line: OnLine<'a>,
}

/// One filter of a list call, as Docker's `filters` query parameter spells it. Label filters
/// must all match; several filters of another kind match any of their values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `key=value` or just `key`.
    Label(String),
    /// Exact or partial name (Docker matches substrings of names).
    Name(String),
    /// Containers that mount this volume (name or mount point).
    Volume(String),
    /// Containers created from this image (or a descendant).
    Ancestor(String),
    /// The container with this id (Docker matches id prefixes; gantry passes full ids).
    Id(String),
}

impl Filter {
    pub fn key(&self) -> &'static str {
        match self {
            Filter::Label(_) => "label",
            Filter::Name(_) => "name",
            Filter::Volume(_) => "volume",
            Filter::Ancestor(_) => "ancestor",
            Filter::Id(_) => "id",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Filter::Label(v)
            | Filter::Name(v)
            | Filter::Volume(v)
            | Filter::Ancestor(v)
            | Filter::Id(v) => v,
        }
    }
}

fn unsupported<T>(what: &str) -> EngineResult<T> {
    Err(EngineError::Failed(format!(
        "{what} is not supported by this engine"
    )))
}

#[async_trait]
pub trait ContainerEngine: Send + Sync + 'static {
    async fn version(&self) -> EngineResult<EngineVersion>;

    async fn list_images(&self) -> EngineResult<Vec<ImageSummary>>;
    async fn inspect_image(&self, id: &str) -> EngineResult<ImageInspect>;
    /// Loads a `docker save` tarball, streaming it to the engine.
    async fn load_images(&self, tar: ByteStream) -> EngineResult<LoadedImages>;
    /// Streams an image as a `docker save` tarball. The caller checks existence first.
    fn export_image(&self, id: &str) -> ByteStream;
    async fn remove_image(
        &self,
        id: &str,
        force: bool,
    ) -> EngineResult<Vec<ImageDeleteResponseItem>>;
    /// Removes dangling images, or every unused one with `all`; returns the deleted ids.
    async fn prune_images(&self, all: bool) -> EngineResult<Vec<String>>;

    async fn list_containers(&self) -> EngineResult<Vec<ContainerSummary>>;
    async fn inspect_container(&self, id: &str) -> EngineResult<ContainerInspectResponse>;
    async fn start_container(&self, id: &str) -> EngineResult<()>;
    async fn stop_container(&self, id: &str) -> EngineResult<()>;
    async fn restart_container(&self, id: &str) -> EngineResult<()>;
    async fn remove_container(&self, id: &str, force: bool, volumes: bool) -> EngineResult<()>;
    async fn prune_containers(&self) -> EngineResult<Vec<String>>;

    async fn list_volumes(&self) -> EngineResult<Vec<Volume>>;
    async fn inspect_volume(&self, name: &str) -> EngineResult<Volume>;
    async fn remove_volume(&self, name: &str, force: bool) -> EngineResult<()>;
    async fn prune_volumes(&self) -> EngineResult<Vec<String>>;

    // The calls below serve the compose engine (src/core/compose). They have default bodies
    // so that a test fake only implements what its test uses.

    /// Containers (running or not) matching the filters.
    async fn list_containers_filtered(
        &self,
        _filters: &[Filter],
    ) -> EngineResult<Vec<ContainerSummary>> {
        unsupported("listing containers by filter")
    }
    /// Creates a container named `name`; returns its id.
    async fn create_container(
        &self,
        _name: &str,
        _body: ContainerCreateBody,
    ) -> EngineResult<String> {
        unsupported("creating containers")
    }
    /// Stops a container, killing it after `timeout_secs`. A stopped container is no error.
    async fn stop_container_with_timeout(&self, _id: &str, _timeout_secs: u32) -> EngineResult<()> {
        unsupported("stopping with a timeout")
    }

    /// Networks matching the filters.
    async fn list_networks(&self, _filters: &[Filter]) -> EngineResult<Vec<Network>> {
        unsupported("listing networks")
    }
    /// Creates a network; returns its id.
    async fn create_network(&self, _request: NetworkCreateRequest) -> EngineResult<String> {
        unsupported("creating networks")
    }
    async fn remove_network(&self, _id: &str) -> EngineResult<()> {
        unsupported("removing networks")
    }
    /// Connects a (created, not yet started) container to a network.
    async fn connect_network(
        &self,
        _network: &str,
        _container: &str,
        _endpoint: EndpointSettings,
    ) -> EngineResult<()> {
        unsupported("connecting networks")
    }

    /// Volumes matching the filters.
    async fn list_volumes_filtered(&self, _filters: &[Filter]) -> EngineResult<Vec<Volume>> {
        unsupported("listing volumes by filter")
    }
    async fn create_volume(&self, _request: VolumeCreateRequest) -> EngineResult<Volume> {
        unsupported("creating volumes")
    }

    /// Pulls `reference` (`name[:tag]` or `name@digest`) from its registry.
    async fn pull_image(&self, _reference: &str) -> EngineResult<()> {
        unsupported("pulling images")
    }

    /// Builds an image from a build context (a tar stream) with the classic builder, tagging
    /// it `job.options.tag`; every output line goes to `job.on_line` as it arrives. Returns
    /// the new image's id. A failing step is `Rejected` (the context's fault), with Docker's
    /// message.
    async fn build_image(&self, _job: BuildJob<'_>) -> EngineResult<String> {
        unsupported("building images")
    }

    /// The last `tail` lines (all with None) a container wrote, in order, as they arrive.
    fn container_logs(&self, _id: &str, _tail: Option<u64>) -> LineStream {
        Box::pin(futures_util::stream::once(async {
            unsupported("reading logs")
        }))
    }

    // The duxcore services (src/core/services) use the calls below.

    /// Sends SIGKILL to a running container.
    async fn kill_container(&self, _id: &str) -> EngineResult<()> {
        unsupported("killing containers")
    }

    /// A container's resource usage: one sample, or (with `stream`) a sample about every
    /// second until the container is gone or the stream is dropped.
    fn container_stats(&self, _id: &str, _stream: bool) -> StatsStream {
        Box::pin(futures_util::stream::once(async {
            unsupported("reading container stats")
        }))
    }

    /// Connects to a container's stdin, stdout and stderr (its tty when it has one); with
    /// `logs`, what it wrote before comes first.
    async fn attach_container(&self, _id: &str, _logs: bool) -> EngineResult<Attached> {
        unsupported("attaching to containers")
    }

    /// Creates an image from a tarball of a root filesystem (`docker import`), streaming it
    /// to the engine, with Dockerfile `changes` (`LABEL k=v`, ...) applied; returns the new
    /// image's id.
    async fn import_rootfs(&self, _tar: ByteStream, _changes: &[String]) -> EngineResult<String> {
        unsupported("importing root filesystems")
    }

    /// Tags the image `image` (id or reference) as `reference` (`name:tag`).
    async fn tag_image(&self, _image: &str, _reference: &str) -> EngineResult<()> {
        unsupported("tagging images")
    }

    /// A container's output lines from the last `tail` (all with None) on, then as they are
    /// written, until the container stops or the stream is dropped.
    fn follow_logs(&self, _id: &str, _tail: Option<u64>) -> LineStream {
        Box::pin(futures_util::stream::once(async {
            unsupported("following logs")
        }))
    }

    /// Runs `cmd` in the running container `id`, attached: its output and its stdin.
    async fn exec(&self, _id: &str, _cmd: &[String]) -> EngineResult<ExecSession> {
        unsupported("running commands in containers")
    }

    /// The state of a command [`ContainerEngine::exec`] started.
    async fn exec_state(&self, _exec_id: &str) -> EngineResult<ExecState> {
        unsupported("running commands in containers")
    }

    // The Flow Manager (src/core/flow) uses these too.

    /// A container's resource counters: one sample (`one_shot`), or Docker's pair of samples
    /// a second apart (the previous one in [`ResourceSample::previous_cpu`]).
    async fn resource_usage(&self, _id: &str, _one_shot: bool) -> EngineResult<ResourceSample> {
        unsupported("reading container stats")
    }
    async fn rename_container(&self, _id: &str, _name: &str) -> EngineResult<()> {
        unsupported("renaming containers")
    }

    /// The engine's data directory (Docker's `DockerRootDir`), when it says. The recovery
    /// of an interrupted import looks for loads still in flight in its `tmp/`.
    async fn data_root(&self) -> EngineResult<Option<std::path::PathBuf>> {
        Ok(None)
    }

    /// Every image's id with its parent's (intermediate images of classic builds included);
    /// the recovery of an interrupted build finds what Docker built on after the crash.
    async fn image_parents(&self) -> EngineResult<Vec<(String, String)>> {
        let images = self.list_images().await?;
        Ok(images.into_iter().map(|i| (i.id, i.parent_id)).collect())
    }

    // The Intervirt agent (src/core/intervirt) watches its containers through this.

    /// Container lifecycle events (`start`, `die`, `destroy`, ...) of the containers matching
    /// the filters, from now on. The stream ends when the engine closes it; the caller
    /// resubscribes (and resynchronises, since events in between are lost).
    fn container_events(&self, _filters: &[Filter]) -> EventStream {
        Box::pin(futures_util::stream::once(async {
            unsupported("watching container events")
        }))
    }

    // The live view (src/core/view) follows everything it serves through this.

    /// Every container, image, volume and network event from `since` (Unix nanoseconds; the
    /// engine replays what it still holds from then on), or from now on with None. The
    /// stream ends when the engine closes it.
    fn engine_events(&self, _since: Option<i64>) -> EngineEventStream {
        Box::pin(futures_util::stream::once(async {
            unsupported("watching engine events")
        }))
    }
}

/// What kind of object an [`EngineEvent`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventObject {
    Container,
    Image,
    Volume,
    Network,
    Other,
}

/// One engine event, as Docker's event stream has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineEvent {
    pub object: EventObject,
    /// Docker's action: `create`, `start`, `die`, `health_status: healthy`, `tag`, ...
    pub action: String,
    /// The actor: a container or image id, a volume name, a network id.
    pub id: String,
    /// The actor's attributes: a container's labels, `name`, `image`, `exitCode`; a network
    /// event's `container`; ...
    pub attributes: std::collections::BTreeMap<String, String>,
    /// When the engine recorded it, Unix nanoseconds (the host's clock).
    pub time_nano: i64,
}

pub type EngineEventStream = Pin<Box<dyn Stream<Item = EngineResult<EngineEvent>> + Send>>;

/// Output lines as they come (logs, followed or not, a command's output); a line longer than
/// [`MAX_LOG_LINE_BYTES`] comes in parts.
pub type LineStream = Pin<Box<dyn Stream<Item = EngineResult<LogLine>> + Send>>;

/// A command running in a container ([`ContainerEngine::exec`]).
pub struct ExecSession {
    /// The exec's id, for [`ContainerEngine::exec_state`].
    pub id: String,
    /// Its stdout and stderr, line by line; ends when the command exits.
    pub output: LineStream,
    /// Its stdin.
    pub input: Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

/// A command's state: running (with its host pid), or ended with its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecState {
    Running { pid: Option<i32> },
    Exited(i64),
}

/// One sample of a container's resource counters (Docker's stats, summed over devices).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceSample {
    /// CPU time the container used, and the host's, in nanoseconds.
    pub cpu: CpuCounters,
    /// Docker's sample a second before, when it took one.
    pub previous_cpu: Option<CpuCounters>,
    pub online_cpus: u32,
    /// Memory in use (without the inactive page cache, as `docker stats` shows it).
    pub memory_usage: u64,
    pub memory_limit: u64,
    pub net_rx: u64,
    pub net_tx: u64,
    pub disk_read: u64,
    pub disk_write: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuCounters {
    pub container: u64,
    pub system: u64,
}

/// One container lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    /// The container's name, without Docker's leading `/`.
    pub name: String,
    /// Docker's action: `create`, `start`, `die`, `stop`, `destroy`, ...
    pub action: String,
    /// The container's labels (Docker sends them with every container event).
    pub labels: std::collections::BTreeMap<String, String>,
}

pub type StatsStream = Pin<Box<dyn Stream<Item = EngineResult<ContainerStatsResponse>> + Send>>;

/// A connection to a container's standard streams.
pub struct Attached {
    /// What the container writes (stdout and stderr; its tty's bytes when it has one).
    pub output: ByteStream,
    /// The container's stdin.
    pub input: Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

pub type EventStream = Pin<Box<dyn Stream<Item = EngineResult<ContainerEvent>> + Send>>;

/// Log lines longer than this are cut into parts (a container writing without newlines
/// must not make gantry hold its whole output).
pub const MAX_LOG_LINE_BYTES: usize = 64 << 10;

/// The pause of a watcher of [`ContainerEngine::container_events`] before it subscribes
/// again: short after a stream that worked, doubled after each round that did not (a
/// failing Docker), up to 30 s.
pub struct Resubscribe {
    pause: Duration,
}

impl Resubscribe {
    const MIN: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    /// Waits before the next subscription (`worked`: the last one delivered events and its
    /// resync succeeded); false when `stop` came first.
    pub async fn wait(&mut self, worked: bool, stop: &CancellationToken) -> bool {
        self.pause = if worked {
            Self::MIN
        } else {
            (self.pause * 2).min(Self::MAX)
        };
        tokio::select! {
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(self.pause) => true,
        }
    }
}

impl Default for Resubscribe {
    fn default() -> Self {
        Self { pause: Self::MIN }
    }
}
