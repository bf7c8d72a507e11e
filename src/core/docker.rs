//! [`ContainerEngine`] over Docker's HTTP API on the local socket, through bollard.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, EndpointSettings,
    ImageDeleteResponseItem, ImageInspect, ImageSummary, Network, NetworkConnectRequest,
    NetworkCreateRequest, Volume, VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, BuildImageOptionsBuilder, CreateContainerOptionsBuilder,
    CreateImageOptionsBuilder, ImportImageOptionsBuilder, ListContainersOptionsBuilder,
    ListImagesOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    LogsOptionsBuilder, PruneContainersOptionsBuilder, PruneImagesOptionsBuilder,
    PruneVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    RemoveVolumeOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
    TagImageOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::{StreamExt, TryStreamExt};

mod upload;

use super::engine::{
    Attached, BuildJob, ByteStream, ContainerEngine, CpuCounters, EngineError, EngineResult,
    EngineVersion, ExecSession, ExecState, Filter, LineStream, LoadedImages, ResourceSample,
    MAX_LOG_LINE_BYTES,
};
use super::loglines::{LineSplitter, LINE_PIECE_MAX};

pub struct DockerEngine {
    host: String,
    timeout: Duration,
    transfer_timeout: Duration,
    clients: Mutex<Option<Clients>>,
}

#[derive(Clone)]
struct Clients {
    /// For ordinary calls: the timeout bounds every call until the response headers.
    docker: Docker,
    /// For image load/export, which legitimately take long before headers arrive.
    transfer: Docker,
    /// For request bodies streamed into Docker (image import), as `transfer` otherwise.
    upload: Docker,
}

impl DockerEngine {
    /// Nothing is connected here. bollard refuses to build a unix-socket client while the
    /// socket file is missing, so the client is built on first use and retried until dockerd
    /// is there; after that bollard opens a connection per request, so a dockerd restart is
    /// simply reached on the next call.
    pub fn new(host: &str, timeout: Duration, transfer_timeout: Duration) -> Self {
        Self {
            host: host.to_string(),
            timeout,
            transfer_timeout,
            clients: Mutex::new(None),
        }
    }

    fn clients(&self) -> EngineResult<Clients> {
        let mut slot = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let secs = self.timeout.as_secs().max(1);
        let docker = if let Some(path) = self.host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, secs, API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(&self.host, secs, API_DEFAULT_VERSION)
        }
        .map_err(map_error)?;
        let transfer = docker.clone().with_timeout(self.transfer_timeout);
        let upload = match self.host.strip_prefix("unix://") {
            Some(path) => {
                upload::connect(path, self.transfer_timeout.as_secs().max(1)).map_err(map_error)?
            }
            None => transfer.clone(),
        };
        let c = Clients {
            transfer,
            upload,
            docker,
        };
        *slot = Some(c.clone());
        Ok(c)
    }

    fn docker(&self) -> EngineResult<Docker> {
        Ok(self.clients()?.docker)
    }

    /// Docker's data root (`DockerRootDir`), for disk-space checks.
    pub async fn root_dir(&self) -> EngineResult<Option<String>> {
        let info = self.docker()?.info().await.map_err(map_error)?;
        Ok(info.docker_root_dir)
    }

    /// A container's output lines from the last `tail` (all with None) on; with `follow`,
    /// then as they are written. A followed log's long lines come in the 16 KiB pieces
    /// Docker's log drivers store (what a follow keeps of its last lines stays small).
    fn log_lines(&self, id: &str, tail: Option<u64>, follow: bool) -> LineStream {
        let max_line = if follow {
            LINE_PIECE_MAX
        } else {
            MAX_LOG_LINE_BYTES
        };
        match self.docker() {
            Ok(d) => output_lines(d.logs(id, Some(logs_options(tail, follow))), max_line),
            Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
        }
    }
}

/// Maps bollard's errors onto what the core distinguishes.
pub fn map_error(e: BollardError) -> EngineError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => EngineError::NotFound(message),
            409 => EngineError::Conflict(message),
            400 => EngineError::Rejected(message),
            _ => EngineError::Failed(message),
        },
        BollardError::DockerStreamError { error } => EngineError::Rejected(error),
        BollardError::RequestTimeoutError => {
            EngineError::Unavailable("request timed out".to_string())
        }
        e @ (BollardError::HyperLegacyError { .. }
        | BollardError::IOError { .. }
        | BollardError::SocketNotFoundError(_)
        | BollardError::HyperResponseError { .. }
        | BollardError::HttpClientError { .. }) => EngineError::Unavailable(e.to_string()),
        other => EngineError::Failed(other.to_string()),
    }
}

fn io_error(e: BollardError) -> std::io::Error {
    std::io::Error::other(map_error(e))
}

fn filters(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, Vec<&'static str>> {
    pairs.iter().map(|(k, v)| (*k, vec![*v])).collect()
}

/// Groups filters by key, as Docker's `filters` parameter wants them. Docker requires every
/// `label` value to match, and any one of the values of the other keys.
fn filter_map(filters: &[Filter]) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for f in filters {
        map.entry(f.key().to_string())
            .or_default()
            .push(f.value().to_string());
    }
    map
}

/// `name` -> `name:latest`: without a tag the pull API fetches every tag of the repository.
fn with_default_tag(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

#[async_trait]
impl ContainerEngine for DockerEngine {
    async fn version(&self) -> EngineResult<EngineVersion> {
        let v = self.docker()?.version().await.map_err(map_error)?;
        Ok(EngineVersion {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
        })
    }

    async fn list_images(&self) -> EngineResult<Vec<ImageSummary>> {
        let opts = ListImagesOptionsBuilder::default().build();
        self.docker()?
            .list_images(Some(opts))
            .await
            .map_err(map_error)
    }

    async fn inspect_image(&self, id: &str) -> EngineResult<ImageInspect> {
        self.docker()?.inspect_image(id).await.map_err(map_error)
    }

    async fn image_parents(&self) -> EngineResult<Vec<(String, String)>> {
        let opts = ListImagesOptionsBuilder::default().all(true).build();
        let images = self.docker()?.list_images(Some(opts)).await;
        let images = images.map_err(map_error)?;
        Ok(images.into_iter().map(|i| (i.id, i.parent_id)).collect())
    }

    async fn data_root(&self) -> EngineResult<Option<std::path::PathBuf>> {
        let info = self.docker()?.info().await.map_err(map_error)?;
        Ok(info.docker_root_dir.map(std::path::PathBuf::from))
    }

    async fn load_images(&self, tar: ByteStream) -> EngineResult<LoadedImages> {
        let opts = ImportImageOptionsBuilder::default().quiet(false).build();
        let mut progress = self
            .clients()?
            .transfer
            .import_image_stream(opts, tar, None);
        let mut loaded = LoadedImages::default();
        while let Some(item) = progress.next().await {
            let info = item.map_err(map_error)?;
            // dockerd reports "Loaded image: name:tag" or "Loaded image ID: sha256:..."
            if let Some(line) = info.stream.as_deref() {
                for line in line.lines() {
                    if let Some(id) = line.strip_prefix("Loaded image ID: ") {
                        loaded.ids.push(id.trim().to_string());
                    } else if let Some(r) = line.strip_prefix("Loaded image: ") {
                        loaded.references.push(r.trim().to_string());
                    }
                }
            }
        }
        if loaded.references.is_empty() && loaded.ids.is_empty() {
            return Err(EngineError::Rejected(
                "the archive contained no image".to_string(),
            ));
        }
        Ok(loaded)
    }

    fn export_image(&self, id: &str) -> ByteStream {
        match self.clients() {
            Ok(c) => Box::pin(c.transfer.export_image(id).map_err(io_error)),
            Err(e) => Box::pin(futures_util::stream::once(async move {
                Err(std::io::Error::other(e))
            })),
        }
    }

    async fn remove_image(
        &self,
        id: &str,
        force: bool,
    ) -> EngineResult<Vec<ImageDeleteResponseItem>> {
        let opts = RemoveImageOptionsBuilder::default().force(force).build();
        self.docker()?
            .remove_image(id, Some(opts), None)
            .await
            .map_err(map_error)
    }

    async fn prune_images(&self, all: bool) -> EngineResult<Vec<String>> {
        let f = filters(&[("dangling", if all { "false" } else { "true" })]);
        let opts = PruneImagesOptionsBuilder::default().filters(&f).build();
        let res = self
            .docker()?
            .prune_images(Some(opts))
            .await
            .map_err(map_error)?;
        Ok(res
            .images_deleted
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| d.deleted)
            .collect())
    }

    async fn list_containers(&self) -> EngineResult<Vec<ContainerSummary>> {
        let opts = ListContainersOptionsBuilder::default().all(true).build();
        self.docker()?
            .list_containers(Some(opts))
            .await
            .map_err(map_error)
    }

    async fn inspect_container(&self, id: &str) -> EngineResult<ContainerInspectResponse> {
        self.docker()?
            .inspect_container(id, None)
            .await
            .map_err(map_error)
    }

    async fn start_container(&self, id: &str) -> EngineResult<()> {
        self.docker()?
            .start_container(id, None)
            .await
            .map_err(map_error)
    }

    async fn stop_container(&self, id: &str) -> EngineResult<()> {
        self.docker()?
            .stop_container(id, None)
            .await
            .map_err(map_error)
    }

    async fn restart_container(&self, id: &str) -> EngineResult<()> {
        self.docker()?
            .restart_container(id, None)
            .await
            .map_err(map_error)
    }

    async fn remove_container(&self, id: &str, force: bool, volumes: bool) -> EngineResult<()> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(force)
            .v(volumes)
            .build();
        self.docker()?
            .remove_container(id, Some(opts))
            .await
            .map_err(map_error)
    }

    async fn prune_containers(&self) -> EngineResult<Vec<String>> {
        let opts = PruneContainersOptionsBuilder::default().build();
        let res = self
            .docker()?
            .prune_containers(Some(opts))
            .await
            .map_err(map_error)?;
        Ok(res.containers_deleted.unwrap_or_default())
    }

    async fn list_volumes(&self) -> EngineResult<Vec<Volume>> {
        let res = self
            .docker()?
            .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
            .await
            .map_err(map_error)?;
        Ok(res.volumes.unwrap_or_default())
    }

    async fn inspect_volume(&self, name: &str) -> EngineResult<Volume> {
        self.docker()?.inspect_volume(name).await.map_err(map_error)
    }

    async fn remove_volume(&self, name: &str, force: bool) -> EngineResult<()> {
        let opts = RemoveVolumeOptionsBuilder::default().force(force).build();
        self.docker()?
            .remove_volume(name, Some(opts))
            .await
            .map_err(map_error)
    }

    async fn prune_volumes(&self) -> EngineResult<Vec<String>> {
        // API >= 1.42 prunes only anonymous volumes unless `all=true`; older daemons reject
        // that filter but already prune named volumes too.
        let new_api = match self.version().await {
            Ok(v) => api_at_least(&v.api_version, 1, 42),
            Err(e) => return Err(e),
        };
        let f = filters(&[("all", "true")]);
        let opts = if new_api {
            PruneVolumesOptionsBuilder::default().filters(&f).build()
        } else {
            PruneVolumesOptionsBuilder::default().build()
        };
        let res = self
            .docker()?
            .prune_volumes(Some(opts))
            .await
            .map_err(map_error)?;
        Ok(res.volumes_deleted.unwrap_or_default())
    }

    async fn list_containers_filtered(
        &self,
        filters: &[Filter],
    ) -> EngineResult<Vec<ContainerSummary>> {
        let f = filter_map(filters);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&f)
            .build();
        self.docker()?
            .list_containers(Some(opts))
            .await
            .map_err(map_error)
    }

    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> EngineResult<String> {
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        let res = self
            .docker()?
            .create_container(Some(opts), body)
            .await
            .map_err(map_error)?;
        Ok(res.id)
    }

    async fn stop_container_with_timeout(&self, id: &str, timeout_secs: u32) -> EngineResult<()> {
        let t = i32::try_from(timeout_secs).unwrap_or(i32::MAX);
        let opts = StopContainerOptionsBuilder::default().t(t).build();
        // The request lasts as long as the container takes to stop: allow for that.
        let docker = self
            .docker()?
            .with_timeout(self.timeout + Duration::from_secs(u64::from(timeout_secs)));
        docker
            .stop_container(id, Some(opts))
            .await
            .map_err(map_error)
    }

    async fn list_networks(&self, filters: &[Filter]) -> EngineResult<Vec<Network>> {
        let f = filter_map(filters);
        let opts = ListNetworksOptionsBuilder::default().filters(&f).build();
        self.docker()?
            .list_networks(Some(opts))
            .await
            .map_err(map_error)
    }

    async fn create_network(&self, request: NetworkCreateRequest) -> EngineResult<String> {
        let res = self
            .docker()?
            .create_network(request)
            .await
            .map_err(map_error)?;
        Ok(res.id)
    }

    async fn remove_network(&self, id: &str) -> EngineResult<()> {
        self.docker()?.remove_network(id).await.map_err(map_error)
    }

    async fn connect_network(
        &self,
        network: &str,
        container: &str,
        endpoint: EndpointSettings,
    ) -> EngineResult<()> {
        let req = NetworkConnectRequest {
            container: container.to_string(),
            endpoint_config: Some(endpoint),
        };
        self.docker()?
            .connect_network(network, req)
            .await
            .map_err(map_error)
    }

    async fn list_volumes_filtered(&self, filters: &[Filter]) -> EngineResult<Vec<Volume>> {
        let f = filter_map(filters);
        let opts = ListVolumesOptionsBuilder::default().filters(&f).build();
        let res = self
            .docker()?
            .list_volumes(Some(opts))
            .await
            .map_err(map_error)?;
        Ok(res.volumes.unwrap_or_default())
    }

    async fn create_volume(&self, request: VolumeCreateRequest) -> EngineResult<Volume> {
        self.docker()?
            .create_volume(request)
            .await
            .map_err(map_error)
    }

    async fn pull_image(&self, reference: &str) -> EngineResult<()> {
        let reference = with_default_tag(reference);
        let opts = CreateImageOptionsBuilder::default()
            .from_image(&reference)
            .build();
        let mut progress = self
            .clients()?
            .transfer
            .create_image(Some(opts), None, None);
        while let Some(item) = progress.next().await {
            item.map_err(map_error)?;
        }
        Ok(())
    }

    async fn build_image(&self, job: BuildJob<'_>) -> EngineResult<String> {
        let BuildJob {
            context,
            options,
            on_line,
        } = job;
        let args: HashMap<String, String> = options.args.iter().cloned().collect();
        let dockerfile = match options.dockerfile.as_str() {
            "" => "Dockerfile",
            d => d,
        };
        // The classic builder (version 1, the API's default): intermediate containers go
        // also when a step fails.
        let opts = BuildImageOptionsBuilder::default()
            .t(&options.tag)
            .dockerfile(dockerfile)
            .buildargs(&args)
            .rm(true)
            .forcerm(true)
            .build();
        let body = bollard::body_try_stream(context);
        let docker = self.clients()?.transfer;
        let mut progress = docker.build_image(opts, None, Some(body));
        let mut id = None;
        while let Some(item) = progress.next().await {
            let info = item.map_err(map_error)?;
            for line in info.stream.as_deref().unwrap_or("").lines() {
                if let Some(short) = line.strip_prefix("Successfully built ") {
                    id.get_or_insert_with(|| short.trim().to_string());
                }
                on_line(line);
            }
            if let Some(full) = info.aux.and_then(|a| a.id) {
                id = Some(full);
            }
        }
        id.ok_or_else(|| EngineError::Failed("the build reported no image id".into()))
    }

    fn container_logs(&self, id: &str, tail: Option<u64>) -> LineStream {
        self.log_lines(id, tail, false)
    }

    async fn tag_image(&self, image: &str, reference: &str) -> EngineResult<()> {
        let reference = with_default_tag(reference);
        let (repo, tag) = match reference.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, t),
            _ => (reference.as_str(), "latest"),
        };
        let opts = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        self.docker()?
            .tag_image(image, Some(opts))
            .await
            .map_err(map_error)
    }

    fn follow_logs(&self, id: &str, tail: Option<u64>) -> LineStream {
        self.log_lines(id, tail, true)
    }

    async fn exec(&self, id: &str, cmd: &[String]) -> EngineResult<ExecSession> {
        let docker = self.docker()?;
        let config = CreateExecOptions {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            cmd: Some(cmd.to_vec()),
            ..Default::default()
        };
        let exec = docker.create_exec(id, config).await.map_err(map_error)?;
        match docker.start_exec(&exec.id, None).await.map_err(map_error)? {
            StartExecResults::Attached { output, input } => Ok(ExecSession {
                id: exec.id,
                output: output_lines(output, MAX_LOG_LINE_BYTES),
                input,
            }),
            StartExecResults::Detached => Err(EngineError::Failed(
                "Docker started the command detached".into(),
            )),
        }
    }

    async fn exec_state(&self, exec_id: &str) -> EngineResult<ExecState> {
        let info = self
            .docker()?
            .inspect_exec(exec_id)
            .await
            .map_err(map_error)?;
        Ok(match (info.running, info.exit_code) {
            (Some(false), Some(code)) => ExecState::Exited(code),
            _ => ExecState::Running {
                pid: info
                    .pid
                    .and_then(|p| i32::try_from(p).ok())
                    .filter(|p| *p > 0),
            },
        })
    }

    async fn kill_container(&self, id: &str) -> EngineResult<()> {
        self.docker()?
            .kill_container(id, None)
            .await
            .map_err(map_error)
    }

    fn container_stats(&self, id: &str, stream: bool) -> super::engine::StatsStream {
        let docker = match self.docker() {
            Ok(d) => d,
            Err(e) => return Box::pin(futures_util::stream::once(async move { Err(e) })),
        };
        let opts = StatsOptionsBuilder::default().stream(stream).build();
        Box::pin(docker.stats(id, Some(opts)).map_err(map_error))
    }

    async fn attach_container(&self, id: &str, logs: bool) -> EngineResult<Attached> {
        let opts = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(logs)
            .build();
        // The attach stays open as long as the client does: no timeout beyond the upgrade.
        let res = self
            .clients()?
            .transfer
            .attach_container(id, Some(opts))
            .await
            .map_err(map_error)?;
        let output = res.output.map(|item| match item {
            Ok(out) => Ok(out.into_bytes()),
            Err(e) => Err(io_error(e)),
        });
        Ok(Attached {
            output: Box::pin(output),
            input: res.input,
        })
    }

    async fn import_rootfs(&self, tar: ByteStream, changes: &[String]) -> EngineResult<String> {
        let opts = CreateImageOptionsBuilder::default()
            .from_src("-")
            .changes(changes.to_vec())
            .build();
        // The body goes as it arrives: hyper reads the request in chunks of up to 400 KiB and
        // the upload client hands them to writev as they are (no joining, no read-ahead task:
        // the sockets' buffers are the read-ahead).
        let (tar, _abandon) = failing_when_dropped(tar);
        let body = bollard::body_try_stream(tar);
        let mut progress = self
            .clients()?
            .upload
            .create_image(Some(opts), Some(body), None);
        let mut id = None;
        while let Some(item) = progress.next().await {
            let info = item.map_err(map_error)?;
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(EngineError::Rejected(e));
            }
            // The import's last message carries the new image's id as its status.
            if let Some(s) = info.status.filter(|s| s.starts_with("sha256:")) {
                id = Some(s.trim().to_string());
            }
        }
        id.ok_or_else(|| EngineError::Failed("Docker named no imported image".to_string()))
    }

    async fn resource_usage(&self, id: &str, one_shot: bool) -> EngineResult<ResourceSample> {
        let opts = bollard::query_parameters::StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(one_shot)
            .build();
        let mut stream = self.docker()?.stats(id, Some(opts));
        match stream.next().await {
            Some(Ok(s)) => Ok(resource_sample(&s)),
            Some(Err(e)) => Err(map_error(e)),
            None => Err(EngineError::Failed("Docker sent no stats".into())),
        }
    }

    async fn rename_container(&self, id: &str, name: &str) -> EngineResult<()> {
        let opts = bollard::query_parameters::RenameContainerOptionsBuilder::default()
            .name(name)
            .build();
        self.docker()?
            .rename_container(id, opts)
            .await
            .map_err(map_error)
    }

    fn container_events(&self, filters: &[Filter]) -> super::engine::EventStream {
        let docker = match self.docker() {
            Ok(d) => d,
            Err(e) => return Box::pin(futures_util::stream::once(async move { Err(e) })),
        };
        let mut f = filter_map(filters);
        f.insert("type".to_string(), vec!["container".to_string()]);
        let opts = bollard::query_parameters::EventsOptionsBuilder::default()
            .filters(&f)
            .build();
        // The client timeout covers the wait for the response headers only, which dockerd
        // sends at once; the event body then streams for as long as the daemon lives.
        let events = docker.events(Some(opts)).filter_map(|item| async move {
            let message = match item {
                Ok(m) => m,
                Err(e) => return Some(Err(map_error(e))),
            };
            let action = message.action?;
            let actor = message.actor?;
            let id = actor.id.unwrap_or_default();
            // Attributes are the container's labels plus `name`, `image` and, for `die`,
            // `exitCode`.
            let mut labels: std::collections::BTreeMap<String, String> =
                actor.attributes.unwrap_or_default().into_iter().collect();
            let name = labels.remove("name").unwrap_or_default();
            Some(Ok(super::engine::ContainerEvent {
                id,
                name: name.trim_start_matches('/').to_string(),
                action,
                labels,
            }))
        });
        Box::pin(events)
    }

    fn engine_events(&self, since: Option<i64>) -> super::engine::EngineEventStream {
        let docker = match self.docker() {
            Ok(d) => d,
            Err(e) => return Box::pin(futures_util::stream::once(async move { Err(e) })),
        };
        let types = ["container", "image", "volume", "network"];
        let f = HashMap::from([("type", types.to_vec())]);
        let mut opts = bollard::query_parameters::EventsOptionsBuilder::default().filters(&f);
        if let Some(ns) = since {
            opts = opts.since(&since_parameter(ns));
        }
        let events = docker
            .events(Some(opts.build()))
            .filter_map(|item| async move {
                match item {
                    Ok(m) => engine_event(m).map(Ok),
                    Err(e) => Some(Err(map_error(e))),
                }
            });
        Box::pin(events)
    }
}

/// Docker's `since` parameter: `seconds.nanoseconds`.
fn since_parameter(ns: i64) -> String {
    format!(
        "{}.{:09}",
        ns.div_euclid(1_000_000_000),
        ns.rem_euclid(1_000_000_000)
    )
}

fn engine_event(m: bollard::models::EventMessage) -> Option<super::engine::EngineEvent> {
    use super::engine::EventObject;
    use bollard::models::EventMessageTypeEnum as T;
    let object = match m.typ? {
        T::CONTAINER => EventObject::Container,
        T::IMAGE => EventObject::Image,
        T::VOLUME => EventObject::Volume,
        T::NETWORK => EventObject::Network,
        _ => EventObject::Other,
    };
    let actor = m.actor?;
    Some(super::engine::EngineEvent {
        object,
        action: m.action?,
        id: actor.id.unwrap_or_default(),
        attributes: actor.attributes.unwrap_or_default().into_iter().collect(),
        time_nano: m
            .time_nano
            .or_else(|| m.time.map(|s| s * 1_000_000_000))
            .unwrap_or_default(),
    })
}

/// `stream`, failing once the guard is dropped: an import given up (its future dropped)
/// must not go on streaming into Docker and end as a complete image; the failed body
/// aborts the request instead, and Docker discards what it got.
fn failing_when_dropped(mut stream: ByteStream) -> (ByteStream, tokio_util::sync::DropGuard) {
    let token = tokio_util::sync::CancellationToken::new();
    let mut dropped = Some(Box::pin(token.clone().cancelled_owned()));
    let failing = futures_util::stream::poll_fn(move |cx| {
        let Some(wait) = dropped.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        if std::future::Future::poll(wait.as_mut(), cx).is_ready() {
            dropped = None;
            let e = std::io::Error::other("the import was abandoned");
            return std::task::Poll::Ready(Some(Err(e)));
        }
        stream.poll_next_unpin(cx)
    });
    (Box::pin(failing), token.drop_guard())
}

fn logs_options(tail: Option<u64>, follow: bool) -> bollard::query_parameters::LogsOptions {
    let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
    LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .follow(follow)
        .tail(&tail)
        .build()
}

/// Docker's output frames being split into lines.
struct Split<S> {
    frames: std::pin::Pin<Box<S>>,
    lines: LineSplitter,
    done: bool,
}

/// Docker's output frames as lines, per stream; an unterminated last line comes at the end.
/// A line longer than `max_line` bytes comes in pieces.
fn output_lines<S>(frames: S, max_line: usize) -> LineStream
where
    S: futures_util::Stream<Item = Result<LogOutput, BollardError>> + Send + 'static,
{
    let split = Split {
        frames: Box::pin(frames),
        lines: LineSplitter::new(max_line),
        done: false,
    };
    Box::pin(futures_util::stream::unfold(split, |mut st| async move {
        loop {
            if let Some(line) = st.lines.next_line() {
                return Some((Ok(line), st));
            }
            if st.done {
                return None;
            }
            match st.frames.next().await {
                Some(Ok(LogOutput::StdErr { message })) => st.lines.push(false, &message),
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    st.lines.push(true, &message)
                }
                Some(Ok(LogOutput::StdIn { .. })) => {}
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(map_error(e)), st));
                }
                None => {
                    st.done = true;
                    st.lines.flush();
                }
            }
        }
    }))
}

fn cpu_counters(c: Option<&bollard::models::ContainerCpuStats>) -> Option<CpuCounters> {
    let c = c?;
    Some(CpuCounters {
        container: c.cpu_usage.as_ref()?.total_usage?,
        system: c.system_cpu_usage?,
    })
}

/// Docker's stats, summed as `docker stats` does (memory without the inactive page cache).
fn resource_sample(s: &bollard::models::ContainerStatsResponse) -> ResourceSample {
    let mem = s.memory_stats.as_ref();
    let usage = mem.and_then(|m| m.usage).unwrap_or(0);
    let inactive = mem
        .and_then(|m| m.stats.as_ref())
        .and_then(|st| {
            st.get("inactive_file")
                .or_else(|| st.get("total_inactive_file"))
        })
        .copied()
        .unwrap_or(0);
    let nets = s.networks.iter().flat_map(|n| n.values());
    let (net_rx, net_tx) = nets.fold((0, 0), |(r, t), n| {
        (r + n.rx_bytes.unwrap_or(0), t + n.tx_bytes.unwrap_or(0))
    });
    let blk = s
        .blkio_stats
        .as_ref()
        .and_then(|b| b.io_service_bytes_recursive.as_ref());
    let disk = |op: &str| -> u64 {
        blk.iter()
            .flat_map(|v| v.iter())
            .filter(|e| e.op.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(op)))
            .map(|e| e.value.unwrap_or(0))
            .sum()
    };
    let cpu = s.cpu_stats.as_ref();
    ResourceSample {
        cpu: cpu_counters(cpu).unwrap_or_default(),
        previous_cpu: cpu_counters(s.precpu_stats.as_ref()).filter(|c| c.system > 0),
        online_cpus: cpu.and_then(|c| c.online_cpus).unwrap_or(1).max(1),
        memory_usage: usage.saturating_sub(inactive),
        memory_limit: mem.and_then(|m| m.limit).unwrap_or(0),
        net_rx,
        net_tx,
        disk_read: disk("read"),
        disk_write: disk("write"),
    }
}

fn api_at_least(v: &str, major: u32, minor: u32) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::engine::LogLine;

    #[tokio::test]
    async fn output_frames_become_lines_per_stream() {
        let frame = |stdout: bool, text: &str| {
            let message = bytes::Bytes::from(text.to_string());
            Ok(if stdout {
                LogOutput::StdOut { message }
            } else {
                LogOutput::StdErr { message }
            })
        };
        let frames = futures_util::stream::iter(vec![
            frame(true, "one\ntw"),
            frame(false, "err"),
            frame(true, "o\r\nthree\n"),
            frame(false, "or\n"),
            frame(true, "last"),
        ]);
        let lines: Vec<LogLine> = output_lines(frames, usize::MAX)
            .try_collect()
            .await
            .unwrap();
        let text: Vec<(bool, &str)> = lines.iter().map(|l| (l.stdout, l.text.as_str())).collect();
        assert_eq!(
            text,
            [
                (true, "one"),
                (true, "two"),
                (true, "three"),
                (false, "error"),
                (true, "last")
            ]
        );
    }

    #[test]
    fn pull_reference_gets_a_tag() {
        assert_eq!(with_default_tag("busybox"), "busybox:latest");
        assert_eq!(with_default_tag("busybox:1.36"), "busybox:1.36");
        assert_eq!(
            with_default_tag("registry.local:5000/app"),
            "registry.local:5000/app:latest"
        );
        assert_eq!(with_default_tag("a/b@sha256:00"), "a/b@sha256:00");
    }

    #[test]
    fn filters_group_by_key() {
        let m = filter_map(&[
            Filter::Label("a=b".into()),
            Filter::Label("c".into()),
            Filter::Name("x".into()),
        ]);
        assert_eq!(m["label"], vec!["a=b", "c"]);
        assert_eq!(m["name"], vec!["x"]);
    }

    #[tokio::test]
    async fn an_upload_fails_once_given_up() {
        let parts: Vec<Result<bytes::Bytes, std::io::Error>> = vec![Ok("ab".into())];
        let (stream, guard) = failing_when_dropped(Box::pin(futures_util::stream::iter(parts)));
        let out: Vec<_> = stream.collect().await;
        assert_eq!(out.len(), 1, "a whole stream ends as it is");
        assert_eq!(out[0].as_ref().unwrap().as_ref(), b"ab");
        drop(guard);

        // "cd", then a body that waits for more.
        let waiting = futures_util::stream::iter([Ok(bytes::Bytes::from("cd"))])
            .chain(futures_util::stream::pending());
        let (mut stream, guard) = failing_when_dropped(Box::pin(waiting));
        assert!(stream.next().await.unwrap().is_ok());
        drop(guard);
        assert!(
            stream.next().await.unwrap().is_err(),
            "given up: an error, not an end"
        );
        assert!(stream.next().await.is_none());
    }

    #[test]
    fn since_is_seconds_dot_nanoseconds() {
        assert_eq!(
            since_parameter(1_700_000_000_000_000_123),
            "1700000000.000000123"
        );
        assert_eq!(since_parameter(5), "0.000000005");
    }

    #[test]
    fn api_version_compare() {
        assert!(api_at_least("1.42", 1, 42));
        assert!(api_at_least("1.53", 1, 42));
        assert!(!api_at_least("1.41", 1, 42));
        assert!(!api_at_least("", 1, 42));
    }

    #[test]
    fn status_codes_map_to_kinds() {
        let e = |status_code| BollardError::DockerResponseServerError {
            status_code,
            message: "m".into(),
        };
        assert!(matches!(map_error(e(404)), EngineError::NotFound(_)));
        assert!(matches!(map_error(e(409)), EngineError::Conflict(_)));
        assert!(matches!(map_error(e(400)), EngineError::Rejected(_)));
        assert!(matches!(map_error(e(500)), EngineError::Failed(_)));
        assert!(matches!(
            map_error(BollardError::RequestTimeoutError),
            EngineError::Unavailable(_)
        ));
    }

    #[test]
    fn log_frames_become_lines_and_long_lines_are_cut() {
        let mut split = LineSplitter::new(MAX_LOG_LINE_BYTES);
        let mut push = |stdout: bool, s: &str| {
            split.push(stdout, s.as_bytes());
            std::iter::from_fn(|| split.next_line()).collect::<Vec<LogLine>>()
        };
        assert!(push(true, "one ").is_empty());
        assert!(push(false, "e1\ne").iter().all(|l| !l.stdout));
        let lines = push(true, "line\r\ntwo\n");
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one line", "two"]);
        // A container that writes without newlines: cut at the cap, never held whole.
        let mut cut = Vec::new();
        for _ in 0..5 {
            cut.extend(push(true, &"é".repeat(16 << 10)));
        }
        assert_eq!(cut.len(), 2, "160 KiB in 64 KiB parts");
        assert!(cut
            .iter()
            .all(|l| l.text.len() <= MAX_LOG_LINE_BYTES && l.stdout));
        // A terminated line over the cap is cut too.
        let long = push(false, &format!("{}\n", "x".repeat(MAX_LOG_LINE_BYTES + 10)));
        let sizes: Vec<usize> = long.iter().map(|l| l.text.len()).collect();
        assert_eq!(
            sizes,
            [MAX_LOG_LINE_BYTES, 11],
            "the pending \"e\", then 11 more"
        );
        split.flush();
        let rest: Vec<(bool, usize)> = std::iter::from_fn(|| split.next_line())
            .map(|l| (l.stdout, l.text.len()))
            .collect();
        assert_eq!(rest, [(true, (160 << 10) - cut[0].text.len() * 2)]);
    }
}
