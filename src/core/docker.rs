//! [`ContainerEngine`] over Docker's HTTP API on the local socket, through bollard.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, EndpointSettings,
    ImageDeleteResponseItem, ImageInspect, ImageSummary, Network, NetworkConnectRequest,
    NetworkCreateRequest, Volume, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ImportImageOptionsBuilder,
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, LogsOptionsBuilder, PruneContainersOptionsBuilder,
    PruneImagesOptionsBuilder, PruneVolumesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, RemoveVolumeOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::{StreamExt, TryStreamExt};

use super::engine::{
    ByteStream, ContainerEngine, EngineError, EngineResult, EngineVersion, Filter, LoadedImages,
    LogLine,
};

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
        let c = Clients {
            transfer: docker.clone().with_timeout(self.transfer_timeout),
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

    async fn container_logs(&self, id: &str, tail: Option<u64>) -> EngineResult<Vec<LogLine>> {
        let mut stream = self.docker()?.logs(id, Some(logs_options(tail, false)));
        let mut lines = LogLines::default();
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            out.extend(lines.push(item.map_err(map_error)?));
        }
        out.extend(lines.rest());
        Ok(out)
    }

    fn follow_container_logs(&self, id: &str, tail: Option<u64>) -> super::engine::LogStream {
        let docker = match self.docker() {
            Ok(d) => d,
            Err(e) => return Box::pin(futures_util::stream::once(async move { Err(e) })),
        };
        let mut lines = LogLines::default();
        let frames = docker.logs(id, Some(logs_options(tail, true)));
        Box::pin(frames.flat_map(move |item| {
            let out: Vec<EngineResult<LogLine>> = match item {
                Ok(frame) => lines.push(frame).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(map_error(e))],
            };
            futures_util::stream::iter(out)
        }))
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
            let time = message
                .time_nano
                .and_then(|n| u64::try_from(n).ok())
                .map(|n| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(n));
            Some(Ok(super::engine::ContainerEvent {
                id,
                name: name.trim_start_matches('/').to_string(),
                action,
                labels,
                time,
            }))
        });
        Box::pin(events)
    }
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

/// Splits Docker's log frames into lines: a frame need not end at a line end, so the rest
/// of each stream (stderr, stdout) waits for the next frame.
#[derive(Default)]
struct LogLines {
    partial: [String; 2],
}

impl LogLines {
    /// The lines `frame` completes (none for stdin).
    fn push(&mut self, frame: LogOutput) -> Vec<LogLine> {
        let (stdout, message) = match frame {
            LogOutput::StdErr { message } => (false, message),
            LogOutput::StdOut { message } | LogOutput::Console { message } => (true, message),
            LogOutput::StdIn { .. } => return Vec::new(),
        };
        let buf = &mut self.partial[usize::from(stdout)];
        buf.push_str(&String::from_utf8_lossy(&message));
        let mut out = Vec::new();
        while let Some(pos) = buf.find('\n') {
            let line: String = buf.drain(..=pos).collect();
            out.push(LogLine {
                stdout,
                text: line.trim_end_matches(['\n', '\r']).to_string(),
            });
        }
        out
    }

    /// What is left when the stream ended: unterminated last lines.
    fn rest(self) -> Vec<LogLine> {
        self.partial
            .into_iter()
            .enumerate()
            .filter(|(_, rest)| !rest.is_empty())
            .map(|(i, text)| LogLine {
                stdout: i == 1,
                text,
            })
            .collect()
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
}
