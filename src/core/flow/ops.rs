//! The Flow Manager's long operations: create (with an image pull when the image is
//! missing), update and delete, each started by one core call returning an [`Operation`].
//! A client that goes away does not stop them (see [`TaskKind::on_client_gone`]); a cancel
//! (`PUT /api/cancel/{id}` on a Transfer listener) stops a create while it pulls.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::status::inspect_info;
use super::update::Updated;
use super::{
    code, id_of, name_of, random_hex, ContainerInfo, ContainerSpec, FlowError, FlowManager,
};
use crate::core::engine::EngineError;
use crate::core::ops::{Operation, Reporter, Start, Summary};
use crate::core::tasks::TaskKind;
use crate::core::view::fetch;
use crate::core::{Core, CoreError, CoreResult};

/// What a Flow Manager operation is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowStep {
    PullingImage(String),
    Creating,
    Updating,
    Removing,
}

impl Summary for FlowStep {
    fn step(&self) -> String {
        match self {
            FlowStep::PullingImage(i) => format!("pulling {i}"),
            FlowStep::Creating => "creating the container".into(),
            FlowStep::Updating => "updating the code".into(),
            FlowStep::Removing => "removing the container".into(),
        }
    }
}

/// The longest socket path the kernel takes (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

impl FlowManager {
    /// The image is here, or pulled now (when allowed); else `ImageNotFound`.
    async fn ensure_image(
        &self,
        image: &str,
        r: &Reporter<FlowStep>,
        cancel: &CancellationToken,
    ) -> CoreResult<()> {
        match self.engine.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(EngineError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        if !self.settings.pull_missing_images {
            return Err(FlowError::ImageNotFound(format!("image {image} not found")).into());
        }
        r.report(FlowStep::PullingImage(image.to_string()));
        let pulled = tokio::select! {
            p = self.engine.pull_image(image) => Some(p),
            _ = cancel.cancelled() => None,
        };
        // Also a pull broken off may have brought the image.
        fetch::images_changed(&self.view, self.engine.as_ref()).await;
        let Some(pulled) = pulled else {
            return Err(CoreError::Cancelled("the create was cancelled".into()));
        };
        pulled.map_err(|e| {
            FlowError::ImageNotFound(format!(
                "image {image} not found locally, and pulling it failed: {e}"
            ))
            .into()
        })
    }

    async fn create(
        &self,
        spec: ContainerSpec,
        r: Reporter<FlowStep>,
        cancel: CancellationToken,
    ) -> CoreResult<ContainerInfo> {
        spec.check()?;
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("flow-{}", random_hex(6)));
        let path = self.sockets.path_of(&name);
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(CoreError::Invalid(format!(
                "the socket path {} is longer than {MAX_SOCKET_PATH} bytes: choose a shorter name or flowmanager.socket_dir",
                path.display()
            )));
        }
        let image = spec.image.trim().to_string();
        self.ensure_image(&image, &r, &cancel).await?;
        r.report(FlowStep::Creating);
        let lock = self.lock_of(&name);
        let _held = lock.lock().await;
        // Docker judges the name first; the socket path is only touched once the name is ours.
        let id = self
            .engine
            .create_container(&name, spec.create_body(&path))
            .await?;
        if let Err(e) = self.sockets.open(&name, &id, &path) {
            let _ = self.engine.remove_container(&id, true, true).await;
            self.changed(&[&id]).await;
            return Err(e.into());
        }
        self.changed(&[&id]).await;
        let c = self.engine.inspect_container(&id).await?;
        Ok(inspect_info(&c, path))
    }

    async fn delete(&self, id: &str) -> CoreResult<(String, String)> {
        let c = self.resolve(id).await?;
        let name = name_of(&c);
        let lock = self.lock_of(&name);
        let _held = lock.lock().await;
        let removed = self.engine.remove_container(&id_of(&c), true, true).await;
        self.changed(&[&id_of(&c)]).await;
        removed?;
        self.sockets.close(&name);
        let dir = self.settings.socket_dir.clone();
        let n = name.clone();
        let removed = tokio::task::spawn_blocking(move || code::remove(&dir, &n)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(container = %name, error = %e, "cannot remove the code directory");
        }
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        Ok((id_of(&c), name))
    }
}

pub type CreateOperation = Operation<FlowStep, ContainerInfo>;
pub type UpdateOperation = Operation<FlowStep, Updated>;
/// The deleted container's id and name.
pub type DeleteOperation = Operation<FlowStep, (String, String)>;

impl Core {
    fn flow(&self) -> CoreResult<Arc<FlowManager>> {
        self.flow
            .clone()
            .ok_or_else(|| CoreError::Failed("the Flow Manager is not running".into()))
    }

    pub fn flow_create(
        self: &Arc<Self>,
        spec: ContainerSpec,
        start: &Start,
    ) -> CoreResult<CreateOperation> {
        let flow = self.flow()?;
        let app = spec.name.clone();
        self.operation(
            TaskKind::FlowCreate,
            app.as_deref(),
            start,
            move |_, r, cancel| async move { flow.create(spec, r, cancel).await },
        )
    }

    /// Runs `run` as the operation `kind` on container `id`, reporting `step` first.
    fn flow_op<T, F, Fut>(
        self: &Arc<Self>,
        kind: TaskKind,
        id: &str,
        step: FlowStep,
        start: &Start,
        run: F,
    ) -> CoreResult<Operation<FlowStep, T>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<FlowManager>, String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = CoreResult<T>> + Send + 'static,
    {
        let flow = self.flow()?;
        let id = id.to_string();
        self.operation(kind, Some(&id.clone()), start, move |_, r, _| {
            r.report(step);
            run(flow, id)
        })
    }

    pub fn flow_update(
        self: &Arc<Self>,
        id: &str,
        code_path: PathBuf,
        start: &Start,
    ) -> CoreResult<UpdateOperation> {
        self.flow_op(
            TaskKind::FlowUpdate,
            id,
            FlowStep::Updating,
            start,
            |flow, id| async move { flow.update_code(&id, &code_path).await },
        )
    }

    pub fn flow_delete(self: &Arc<Self>, id: &str, start: &Start) -> CoreResult<DeleteOperation> {
        self.flow_op(
            TaskKind::FlowDelete,
            id,
            FlowStep::Removing,
            start,
            |flow, id| async move { flow.delete(&id).await },
        )
    }
}
