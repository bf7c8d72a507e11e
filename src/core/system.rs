//! The container system module: administrative operations on images, containers and volumes.

use std::sync::Arc;

use bollard::models::{ContainerInspectResponse, ImageDeleteResponseItem, ImageInspect, Volume};
use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt};

use super::engine::{ByteStream, ContainerEngine, Effect};
use super::view::{fetch, now_ns, LiveView};
use super::{CoreError, CoreResult, ErrorKind};

/// A `docker save` archive after loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// Id of the (first) image the archive carried.
    pub id: String,
    pub references: Vec<String>,
}

/// Lists are read from the live view; every change is read back into the view before it
/// answers (so a read after it shows it).
pub struct SystemModule {
    engine: Arc<dyn ContainerEngine>,
    view: Arc<LiveView>,
}

/// What kind of object an id names, for validation messages.
#[derive(Clone, Copy)]
enum Kind {
    Image,
    Container,
    Volume,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Container => "container",
            Kind::Volume => "volume",
        }
    }
}

/// Ids end up in Docker API paths: accept only the characters Docker itself allows in image
/// references, container and volume names, so that nothing like `../` can reach another route.
fn check_id(kind: Kind, id: &str) -> CoreResult<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-:/@+".contains(c);
    let valid = !id.is_empty()
        && id.len() <= 512
        && id.chars().all(ok_char)
        && !id.starts_with(['/', '.', '-'])
        && !id
            .split('/')
            .any(|seg| seg == ".." || seg == "." || seg.is_empty())
        && (matches!(kind, Kind::Image) || !id.contains('/'));
    if valid {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!(
            "\"{id}\" is not a valid {} id or name",
            kind.name()
        )))
    }
}

fn not_found(kind: Kind, id: &str) -> impl FnOnce(CoreError) -> CoreError + '_ {
    move |e| match e.kind() {
        ErrorKind::NotFound => CoreError::NotFound(format!("no such {}: {id}", kind.name())),
        _ => e,
    }
}

const TAR_BLOCK: usize = 512;

/// Checks a tar header block: the checksum must match (the same test GNU tar and Go's
/// archive/tar apply), which rejects non-tar uploads before Docker sees a byte.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < TAR_BLOCK || block.iter().all(|&b| b == 0) {
        return false;
    }
    let field = &block[148..156];
    let digits: String = field
        .iter()
        .map(|&b| b as char)
        .take_while(|c| *c != '\0')
        .collect();
    let Ok(expected) = u32::from_str_radix(digits.trim(), 8) else {
        return false;
    };
    let sum: u32 = block[..TAR_BLOCK]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    sum == expected
}

impl SystemModule {
    pub fn new(engine: Arc<dyn ContainerEngine>, view: Arc<LiveView>) -> Self {
        Self { engine, view }
    }

    /// After a change of images: the view reads them again. A failure here is Docker
    /// going away, which the view's follower notices too.
    async fn images_changed(&self) {
        fetch::images_changed(&self.view, self.engine.as_ref()).await;
    }

    async fn volumes_changed(&self) {
        if let Err(e) = fetch::volumes(&self.view, self.engine.as_ref()).await {
            tracing::debug!(error = %e, "cannot read the volumes after a change");
        }
    }

    async fn container_changed(&self, id: &str) {
        if let Err(e) = fetch::container(&self.view, self.engine.as_ref(), id, false).await {
            tracing::debug!(container = %id, error = %e, "cannot read a container after a change");
        }
    }

    pub async fn image(&self, id: &str) -> CoreResult<ImageInspect> {
        check_id(Kind::Image, id)?;
        self.engine
            .inspect_image(id)
            .await
            .map_err(CoreError::from)
            .map_err(not_found(Kind::Image, id))
    }

    /// Loads a `docker save` archive. The first block is checked before anything reaches
    /// Docker; the rest streams through without being held in memory.
    pub async fn load_image(&self, mut tar: ByteStream) -> CoreResult<LoadedImage> {
        let mut head = BytesMut::new();
        while head.len() < TAR_BLOCK {
            match tar.next().await {
                Some(Ok(chunk)) => head.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(CoreError::Invalid(format!("upload failed: {e}"))),
                None => break,
            }
        }
        if head.is_empty() {
            return Err(CoreError::Invalid(
                "the request body is empty; expected a docker save tar archive".into(),
            ));
        }
        if !is_tar_header(&head) {
            return Err(CoreError::Invalid(
                "the request body is not a tar archive (as written by docker save)".into(),
            ));
        }
        let head: Bytes = head.freeze();
        let body: ByteStream = Box::pin(stream::once(async move { Ok(head) }).chain(tar));
        let loaded = self.engine.load_images(body).await;
        self.images_changed().await;
        let loaded = loaded?;
        let id = match (loaded.references.first(), loaded.ids.first()) {
            (Some(reference), _) => self
                .engine
                .inspect_image(reference)
                .await?
                .id
                .unwrap_or_else(|| reference.clone()),
            (None, Some(id)) => id.clone(),
            (None, None) => return Err(CoreError::Invalid("the archive held no image".into())),
        };
        Ok(LoadedImage {
            id,
            references: loaded.references,
        })
    }

    /// Streams an image as a tar archive; fails up front when the image does not exist.
    ///
    /// The caller's reference is passed on as given: `docker save` records repository tags
    /// only for the names it was asked for, so saving by the resolved id would lose them.
    pub async fn export_image(&self, reference: &str) -> CoreResult<ByteStream> {
        self.image(reference).await?;
        Ok(self.engine.export_image(reference))
    }

    pub async fn remove_image(
        &self,
        id: &str,
        force: bool,
    ) -> CoreResult<Vec<ImageDeleteResponseItem>> {
        check_id(Kind::Image, id)?;
        let removed = self.engine.remove_image(id, force).await;
        self.images_changed().await;
        removed
            .map_err(CoreError::from)
            .map_err(not_found(Kind::Image, id))
    }

    pub async fn prune_images(&self, all: bool) -> CoreResult<Vec<String>> {
        let pruned = self.engine.prune_images(all).await;
        self.images_changed().await;
        Ok(pruned?)
    }

    pub async fn container(&self, id: &str) -> CoreResult<ContainerInspectResponse> {
        check_id(Kind::Container, id)?;
        self.engine
            .inspect_container(id)
            .await
            .map_err(CoreError::from)
            .map_err(not_found(Kind::Container, id))
    }

    fn is_running(c: &ContainerInspectResponse) -> bool {
        c.state.as_ref().and_then(|s| s.running).unwrap_or(false)
    }

    /// Starts a container; `NoEffect` when it already runs.
    pub async fn start_container(
        &self,
        id: &str,
    ) -> CoreResult<(Effect, ContainerInspectResponse)> {
        let before = self.container(id).await?;
        if Self::is_running(&before) {
            return Ok((Effect::NoEffect, before));
        }
        let started = self.engine.start_container(id).await;
        self.container_changed(id).await;
        started
            .map_err(CoreError::from)
            .map_err(not_found(Kind::Container, id))?;
        Ok((Effect::Changed, self.container(id).await?))
    }

    /// Stops a container; `NoEffect` when it was not running.
    pub async fn stop_container(&self, id: &str) -> CoreResult<(Effect, ContainerInspectResponse)> {
        let before = self.container(id).await?;
        if !Self::is_running(&before) {
            return Ok((Effect::NoEffect, before));
        }
        let stopped = self.engine.stop_container(id).await;
        self.container_changed(id).await;
        stopped
            .map_err(CoreError::from)
            .map_err(not_found(Kind::Container, id))?;
        Ok((Effect::Changed, self.container(id).await?))
    }

    pub async fn restart_container(&self, id: &str) -> CoreResult<ContainerInspectResponse> {
        self.container(id).await?;
        let restarted = self.engine.restart_container(id).await;
        self.container_changed(id).await;
        restarted
            .map_err(CoreError::from)
            .map_err(not_found(Kind::Container, id))?;
        self.container(id).await
    }

    pub async fn remove_container(&self, id: &str, force: bool, volumes: bool) -> CoreResult<()> {
        check_id(Kind::Container, id)?;
        let key = self.view.snapshot().container(id).map(|c| c.id.clone());
        let removed = self.engine.remove_container(id, force, volumes).await;
        self.container_changed(key.as_deref().unwrap_or(id)).await;
        if volumes {
            self.volumes_changed().await;
        }
        removed
            .map_err(CoreError::from)
            .map_err(not_found(Kind::Container, id))
    }

    pub async fn prune_containers(&self) -> CoreResult<Vec<String>> {
        let pruned = self.engine.prune_containers().await?;
        let at = now_ns();
        self.view.update(|s| {
            for id in &pruned {
                s.apply_fetched(id, None, at);
            }
        });
        Ok(pruned)
    }

    pub async fn volume(&self, name: &str) -> CoreResult<Volume> {
        check_id(Kind::Volume, name)?;
        self.engine
            .inspect_volume(name)
            .await
            .map_err(CoreError::from)
            .map_err(not_found(Kind::Volume, name))
    }

    pub async fn remove_volume(&self, name: &str, force: bool) -> CoreResult<()> {
        check_id(Kind::Volume, name)?;
        let removed = self.engine.remove_volume(name, force).await;
        self.volumes_changed().await;
        removed
            .map_err(CoreError::from)
            .map_err(not_found(Kind::Volume, name))
    }

    pub async fn prune_volumes(&self) -> CoreResult<Vec<String>> {
        let pruned = self.engine.prune_volumes().await;
        self.volumes_changed().await;
        Ok(pruned?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str) -> Vec<u8> {
        let mut b = vec![0u8; TAR_BLOCK];
        b[..name.len()].copy_from_slice(name.as_bytes());
        b[100..107].copy_from_slice(b"0000644");
        b[257..263].copy_from_slice(b"ustar\0");
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&x| x as u32).sum();
        let field = format!("{sum:06o}\0 ");
        b[148..156].copy_from_slice(field.as_bytes());
        b
    }

    #[test]
    fn tar_header_checksum() {
        assert!(is_tar_header(&header("manifest.json")));
        let mut broken = header("manifest.json");
        broken[0] = b'X';
        assert!(!is_tar_header(&broken));
        assert!(!is_tar_header(&[0u8; TAR_BLOCK]));
        assert!(!is_tar_header(b"PK\x03\x04 not a tar"));
        assert!(!is_tar_header(&vec![b'a'; TAR_BLOCK]));
    }

    #[test]
    fn ids_cannot_escape_their_route() {
        for ok in [
            "sha256:0123abcd",
            "gantry-test/busybox:latest",
            "registry.local:5000/a/b@sha256:00",
            "abc_def.1",
        ] {
            assert!(check_id(Kind::Image, ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../containers/x",
            "a/../b",
            "/abs",
            "a?b",
            "a b",
            "a//b",
            "-rf",
        ] {
            assert!(check_id(Kind::Image, bad).is_err(), "{bad}");
        }
        assert!(check_id(Kind::Container, "a/b").is_err());
        assert!(check_id(Kind::Volume, "my_volume-1").is_ok());
    }
}
