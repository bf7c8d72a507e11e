//! [`ContainerEngine`] over Docker's HTTP API on the local socket, through bollard.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerInspectResponse, ContainerSummary, ImageDeleteResponseItem, ImageInspect,
    ImageSummary, Volume,
};
use bollard::query_parameters::{
    ImportImageOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    PruneContainersOptionsBuilder, PruneImagesOptionsBuilder, PruneVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::{StreamExt, TryStreamExt};

use super::engine::{
    ByteStream, ContainerEngine, EngineError, EngineResult, EngineVersion, LoadedImages,
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
