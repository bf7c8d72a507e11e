//! Updating a container's code: the code directory is swapped ([`super::code`]) and the
//! container recreated with the same image, environment, ports, mounts and socket, plus the
//! code at `/app`, and started again if it was running. The old container is parked under
//! another name until the new one runs (and kept running for `update_settle`); on any
//! failure the new container goes, the old one gets its name back (and runs again if it ran)
//! and the old code returns.

use std::path::Path;
use std::sync::Arc;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse};

use super::status::is_running;
use super::{code, id_of, log_tail, name_of, FlowManager, CODE_TARGET};
use crate::core::{CoreError, CoreResult};

/// The outcome of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// The new container.
    pub id: String,
    pub previous_id: String,
    pub name: String,
}

/// The old container's settings for its successor, with `code` mounted at `/app`.
fn successor(c: &ContainerInspectResponse, image: String, code: &Path) -> ContainerCreateBody {
    let cfg = c.config.clone().unwrap_or_default();
    let mut host = c.host_config.clone().unwrap_or_default();
    let suffix = format!(":{CODE_TARGET}");
    let mut binds: Vec<String> = host
        .binds
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|b| !b.ends_with(&suffix) && !b.contains(&format!("{suffix}:")))
        .collect();
    binds.push(format!("{}:{CODE_TARGET}", code.display()));
    host.binds = Some(binds);
    ContainerCreateBody {
        user: cfg.user,
        exposed_ports: cfg.exposed_ports,
        tty: cfg.tty,
        open_stdin: cfg.open_stdin,
        env: cfg.env,
        cmd: cfg.cmd,
        healthcheck: cfg.healthcheck,
        image: Some(image),
        volumes: cfg.volumes,
        working_dir: cfg.working_dir,
        entrypoint: cfg.entrypoint,
        labels: cfg.labels,
        stop_signal: cfg.stop_signal,
        stop_timeout: cfg.stop_timeout,
        host_config: Some(host),
        ..Default::default()
    }
}

impl FlowManager {
    /// The image the old container runs: its name while that still means the same image,
    /// else the image's id.
    async fn same_image(&self, c: &ContainerInspectResponse) -> String {
        let id = c.image.clone().unwrap_or_default();
        let name = c.config.as_ref().and_then(|c| c.image.clone());
        if let Some(name) = name {
            if self
                .engine
                .inspect_image(&name)
                .await
                .ok()
                .and_then(|i| i.id)
                .as_ref()
                == Some(&id)
            {
                return name;
            }
        }
        id
    }

    /// Replaces container `c`'s code with the directory `src` and recreates it.
    pub(super) async fn update_code(self: &Arc<Self>, id: &str, src: &Path) -> CoreResult<Updated> {
        if !src.is_absolute() || !src.is_dir() {
            return Err(CoreError::Invalid(format!(
                "code_path {} is not an absolute path of a directory on the host",
                src.display()
            )));
        }
        let c = self.resolve(id).await?;
        let name = name_of(&c);
        let lock = self.lock_of(&name);
        let _held = lock.lock().await;
        let c = self.resolve(&id_of(&c)).await?;
        let (dir, n, s) = (
            self.settings.socket_dir.clone(),
            name.clone(),
            src.to_path_buf(),
        );
        let swap = tokio::task::spawn_blocking(move || code::swap_in(&dir, &n, &s))
            .await
            .map_err(|e| CoreError::Failed(format!("the code copy failed: {e}")))?
            .map_err(|e| {
                CoreError::io(format!("cannot copy the code from {}", src.display()), e)
            })?;
        let recreated = self.recreate(&c, swap.live()).await;
        // The old container (renamed, removed, or back under its name) and the new one.
        match &recreated {
            Ok(new_id) => self.changed(&[&id_of(&c), new_id]).await,
            Err(_) => self.changed(&[&id_of(&c)]).await,
        }
        match recreated {
            Ok(new_id) => {
                if let Err(e) = swap.commit() {
                    tracing::warn!(container = %name, error = %e, "cannot remove the old code");
                }
                Ok(Updated {
                    id: new_id,
                    previous_id: id_of(&c),
                    name,
                })
            }
            Err(e) => {
                // The old code first: the old container mounts the directory when it starts.
                if let Err(u) = swap.undo() {
                    tracing::error!(container = %name, error = %u, "cannot put the old code back");
                }
                if is_running(&c) {
                    if let Err(e) = self.engine.start_container(&id_of(&c)).await {
                        tracing::error!(container = %name, error = %e, "rollback: cannot start the old container");
                    }
                    self.changed(&[&id_of(&c)]).await;
                }
                Err(e.context(format!("updating {name} failed and was rolled back")))
            }
        }
    }

    /// The successor of `c` runs under its name; the old container is removed. On failure
    /// the old container is back under its name, stopped (the caller restarts it once the
    /// old code is back).
    async fn recreate(&self, c: &ContainerInspectResponse, code: &Path) -> CoreResult<String> {
        let (old, name, running) = (id_of(c), name_of(c), is_running(c));
        let parked = format!("{name}-gantry-old-{}", &old[..old.len().min(12)]);
        let body = successor(c, self.same_image(c).await, code);
        if running {
            self.engine
                .stop_container_with_timeout(&old, self.settings.stop_timeout_secs)
                .await?;
        }
        if let Err(e) = self.engine.rename_container(&old, &parked).await {
            return Err(e.into());
        }
        match self.start_successor(&name, body, running).await {
            Ok(new) => {
                if let Some(ep) = self.sockets.get(&name) {
                    ep.set_container(&new);
                }
                if let Err(e) = self.engine.remove_container(&old, true, false).await {
                    tracing::warn!(container = %parked, error = %e, "cannot remove the old container");
                }
                Ok(new)
            }
            Err(e) => {
                self.restore(&old, &name).await;
                Err(e)
            }
        }
    }

    /// Creates (and starts, when `start`) the successor; it must still run after
    /// `update_settle`. A successor that fails is removed.
    async fn start_successor(
        &self,
        name: &str,
        body: ContainerCreateBody,
        start: bool,
    ) -> CoreResult<String> {
        let new = self.engine.create_container(name, body).await?;
        let result = async {
            if !start {
                return Ok(());
            }
            self.engine.start_container(&new).await?;
            tokio::time::sleep(self.settings.update_settle).await;
            let c = self.engine.inspect_container(&new).await?;
            if is_running(&c) {
                return Ok(());
            }
            let code = c.state.as_ref().and_then(|s| s.exit_code).unwrap_or(0);
            let tail = log_tail(self.engine.as_ref(), &new, 5)
                .await
                .unwrap_or_default();
            let why = format!(
                "the updated container exited with code {code} right after its start: {}",
                tail.join(" | ")
            );
            Err(crate::core::engine::EngineError::Failed(why).into())
        }
        .await;
        if result.is_err() {
            let _ = self.engine.remove_container(&new, true, false).await;
            self.changed(&[&new]).await;
        }
        result.map(|()| new)
    }

    /// The old container gets its name back.
    async fn restore(&self, old: &str, name: &str) {
        if let Err(e) = self.engine.rename_container(old, name).await {
            tracing::error!(container = %name, error = %e, "rollback: cannot give the old container its name back");
        }
        if let Some(ep) = self.sockets.get(name) {
            ep.set_container(old);
        }
    }
}
