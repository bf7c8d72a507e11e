//! Services: single containers a remote core manages by id (the duxcore dialect's model).
//!
//! A service is a container named by its id and labelled with the dialect, plus its directory
//! under `<state>/duxcore/services/` (see [`store`]). Every call finds the service from those
//! two, so services survive restarts of gantry. Calls on one service run one at a time.
//!
//! Docker's inspect and stats JSON are what `GET /service/{id}` and `.../stats` answer, so
//! they are asked of Docker; whether the service exists before its stats are read comes
//! from the live view. Every call that changes a container or an image reads the change back
//! into the view before it answers.

pub mod corekey;
mod fetch;
pub mod recover;
pub mod spec;
mod store;
mod unpack;

use std::path::PathBuf;
use std::sync::Arc;

use bollard::models::{ContainerInspectResponse, ContainerStatsResponse};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::engine::{Attached, ContainerEngine, EngineError, StatsStream};
use super::intervirt::locks::KeyedLocks;
use super::recovery::{crash_point, crash_when_sent, settle, Intent};
use super::view::{fetch as view_fetch, LiveView};
use super::{CoreError, CoreResult};
pub use corekey::CoreKey;
pub use fetch::FetchLimits;
use recover::{Before, ServiceIntents, ServiceOp, LABEL_IMPORT};
use spec::{check_env, check_id, ServiceSpec, StoredService, LABEL_SERVICE};
pub use store::Env;
use store::ServiceDir;
pub use unpack::UnpackLimits;

/// How long a stop (and a restart) waits before Docker kills the container.
const STOP_TIMEOUT_SECS: u32 = 10;

/// Where services live and what their clients may send.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// `<state>/duxcore`.
    pub dir: PathBuf,
    pub fetch: FetchLimits,
    pub unpack: UnpackLimits,
    /// Largest root filesystem tar an image import takes.
    pub max_image_bytes: u64,
}

/// The lifecycle operations of `POST /service/{id}/ctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtlOp {
    Start,
    Stop,
    Restart,
    Kill,
}

/// What creating a service is doing (its progress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateStep {
    PullingImage(String),
    CreatingContainer,
    FetchingContents(String),
    UnpackingContents,
}

/// A created service: its id and its container's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: String,
    pub container_id: String,
}

pub struct Services {
    engine: Arc<dyn ContainerEngine>,
    view: Arc<LiveView>,
    settings: ServiceSettings,
    key: CoreKey,
    locks: KeyedLocks,
    /// The intents of creates and imports in flight (`<dir>/intents`), resolved after a
    /// crash.
    intents: ServiceIntents,
}

fn not_a_service(id: &str) -> CoreError {
    CoreError::NotFound(format!(
        "no service {id}: a container of that name exists, but it is not a service of this \
         daemon"
    ))
}

fn is_running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().and_then(|s| s.running).unwrap_or(false)
}

impl Services {
    /// The services under `settings.dir`; its intent log is opened there (`intents/`).
    pub fn new(
        engine: Arc<dyn ContainerEngine>,
        view: Arc<LiveView>,
        settings: ServiceSettings,
        key: CoreKey,
    ) -> CoreResult<Self> {
        let dir = settings.dir.join("intents");
        let intents = ServiceIntents::open(&dir)
            .map_err(|e| CoreError::io(format!("cannot open {}", dir.display()), e))?;
        Ok(Self {
            engine,
            view,
            settings,
            key,
            locks: KeyedLocks::default(),
            intents,
        })
    }

    /// The intents of the operations in flight (and of interrupted ones).
    pub fn intents(&self) -> &ServiceIntents {
        &self.intents
    }

    pub fn max_image_bytes(&self) -> u64 {
        self.settings.max_image_bytes
    }

    /// The core key clients must present.
    pub fn key(&self) -> &CoreKey {
        &self.key
    }

    fn dir(&self, id: &str) -> ServiceDir {
        ServiceDir::new(&self.settings.dir.join("services"), id)
    }

    /// The container named `id`, None when there is none; a container of that name that this
    /// dialect did not create is refused (it is no service).
    async fn lookup(&self, id: &str) -> CoreResult<Option<ContainerInspectResponse>> {
        check_id(id)?;
        let c = match self.engine.inspect_container(id).await {
            Ok(c) => c,
            Err(EngineError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
        if labels
            .and_then(|l| l.get(LABEL_SERVICE))
            .map(String::as_str)
            != Some(id)
        {
            return Err(not_a_service(id));
        }
        Ok(Some(c))
    }

    /// The service's container, as Docker describes it.
    async fn container(&self, id: &str) -> CoreResult<ContainerInspectResponse> {
        self.lookup(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("no service {id}")))
    }

    /// Docker's inspect data of the service's container.
    pub async fn inspect(&self, id: &str) -> CoreResult<ContainerInspectResponse> {
        self.container(id).await
    }

    /// The service exists (as the live view has it, without asking Docker).
    async fn exists(&self, id: &str) -> CoreResult<()> {
        check_id(id)?;
        let snap = self.view.current().await?;
        let c = snap
            .container(id)
            .ok_or_else(|| CoreError::NotFound(format!("no service {id}")))?;
        if c.label(LABEL_SERVICE) != Some(id) {
            return Err(not_a_service(id));
        }
        Ok(())
    }

    /// After a call that changed the service's container: the container the view had under
    /// its name (`before`, which a new one may have replaced) and the one Docker has now.
    async fn changed(&self, id: &str, before: Option<String>) {
        let engine = self.engine.as_ref();
        match before {
            Some(old) => view_fetch::changed(&self.view, engine, &[&old, id]).await,
            None => view_fetch::changed(&self.view, engine, &[id]).await,
        }
    }

    /// The id of the container the view has under the name `id`.
    fn in_view(&self, id: &str) -> Option<String> {
        Some(self.view.snapshot().container(id)?.id.clone())
    }

    /// One resource usage sample.
    pub async fn stats(&self, id: &str) -> CoreResult<ContainerStatsResponse> {
        self.exists(id).await?;
        let mut samples = self.engine.container_stats(id, false);
        match samples.next().await {
            Some(sample) => Ok(sample?),
            None => Err(CoreError::Failed(format!("Docker sent no stats for {id}"))),
        }
    }

    /// Resource usage samples as Docker sends them (about one a second).
    pub async fn stats_stream(&self, id: &str) -> CoreResult<StatsStream> {
        self.exists(id).await?;
        Ok(self.engine.container_stats(id, true))
    }

    pub async fn ctl(&self, id: &str, op: CtlOp) -> CoreResult<()> {
        check_id(id)?;
        let _one = self.locks.lock(id).await;
        let before = self.in_view(id);
        let result = self.ctl_locked(id, op).await;
        self.changed(id, before).await;
        result
    }

    async fn ctl_locked(&self, id: &str, op: CtlOp) -> CoreResult<()> {
        match op {
            CtlOp::Start => self.start(id).await,
            CtlOp::Stop => self.stop(id).await,
            CtlOp::Restart => self.restart(id).await,
            CtlOp::Kill => {
                self.container(id).await?;
                self.engine
                    .kill_container(id)
                    .await
                    .map_err(CoreError::from)
            }
        }
    }

    async fn start(&self, id: &str) -> CoreResult<()> {
        if !self.prepare_start(id).await? {
            self.engine.start_container(id).await?;
        }
        Ok(())
    }

    async fn stop(&self, id: &str) -> CoreResult<()> {
        self.container(id).await?;
        Ok(self
            .engine
            .stop_container_with_timeout(id, STOP_TIMEOUT_SECS)
            .await?)
    }

    /// A restart applies a waiting environment change: stop, create again, start.
    async fn restart(&self, id: &str) -> CoreResult<()> {
        if self.dir(id).pending_env()?.is_none() {
            self.container(id).await?;
            return Ok(self.engine.restart_container(id).await?);
        }
        self.stop(id).await?;
        self.start(id).await
    }

    /// Makes the service's container ready to start: created again when an environment
    /// change waits (and the container is not running) or when the container is gone but
    /// its record is there (a create interrupted midway). True when it is running already.
    async fn prepare_start(&self, id: &str) -> CoreResult<bool> {
        let dir = self.dir(id);
        let missing = match self.lookup(id).await? {
            Some(c) if is_running(&c) => return Ok(true),
            Some(_) => false,
            None if dir.read_record()?.is_some() => {
                tracing::warn!(
                    service = id,
                    "container missing; creating it from its record"
                );
                true
            }
            None => return Err(CoreError::NotFound(format!("no service {id}"))),
        };
        let pending = dir.pending_env()?;
        if missing || pending.is_some() {
            self.recreate(id, &dir, pending).await?;
        }
        Ok(false)
    }

    /// Creates the container again from its record, with `env` when given; the record then
    /// holds the new environment and nothing waits any more.
    async fn recreate(&self, id: &str, dir: &ServiceDir, env: Option<Env>) -> CoreResult<()> {
        let mut record = dir
            .read_record()?
            .ok_or_else(|| CoreError::Failed(format!("service {id} has no record")))?;
        if let Some(env) = env {
            record.env = env;
        }
        match self.engine.remove_container(id, true, false).await {
            Ok(()) | Err(EngineError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.engine
            .create_container(id, record.create_body())
            .await?;
        dir.write_record(&record)?;
        dir.clear_pending_env()?;
        tracing::info!(service = id, "container created again from its record");
        Ok(())
    }

    /// Sets the service's environment (all its own variables; the image's stay unless
    /// named), applied when it next starts or restarts. Answers what will apply.
    pub async fn set_env(&self, id: &str, env: Env) -> CoreResult<Env> {
        check_id(id)?;
        check_env(&env)?;
        let _one = self.locks.lock(id).await;
        self.container(id).await?;
        self.dir(id).set_pending_env(&env)?;
        Ok(env)
    }

    /// Removes the service's container (running or not) and its directory.
    pub async fn delete(&self, id: &str) -> CoreResult<()> {
        check_id(id)?;
        let _one = self.locks.lock(id).await;
        let dir = self.dir(id);
        match self.lookup(id).await? {
            Some(c) => {
                let removed = self.engine.remove_container(id, true, false).await;
                self.changed(id, c.id).await;
                removed?
            }
            None if dir.exists() => {}
            None => return Err(CoreError::NotFound(format!("no service {id}"))),
        }
        tokio::task::spawn_blocking(move || dir.remove())
            .await
            .map_err(|e| CoreError::Failed(format!("removing the directory failed: {e}")))?
    }

    /// Connects to the service's tty, starting the service first when it is not running
    /// (attached before it starts, so nothing it writes first is lost).
    pub async fn attach(&self, id: &str, logs: bool) -> CoreResult<Attached> {
        check_id(id)?;
        let _one = self.locks.lock(id).await;
        let before = self.in_view(id);
        let result = self.attach_locked(id, logs).await;
        self.changed(id, before).await;
        result
    }

    async fn attach_locked(&self, id: &str, logs: bool) -> CoreResult<Attached> {
        let running = self.prepare_start(id).await?;
        let attached = self.engine.attach_container(id, logs).await?;
        if !running {
            self.engine.start_container(id).await?;
        }
        Ok(attached)
    }

    /// Creates a service (not started): the image is pulled when missing, the container
    /// created under the service's id, its directory made and `bind_contents` unpacked
    /// into it. A failure or a cancel leaves no container and no directory behind; a second
    /// create with an id in use fails with Docker's reason and changes nothing.
    pub async fn create(
        &self,
        spec: ServiceSpec,
        report: impl Fn(CreateStep),
        cancel: &CancellationToken,
    ) -> CoreResult<Created> {
        spec.check()?;
        let _one = self.locks.lock(&spec.id).await;
        let intent = self
            .intents
            .begin(ServiceOp::Create, Some(&spec.id), Default::default())?;
        crash_point("service-create.intent-written");
        let result = self.create_recorded(spec, &intent, report, cancel).await;
        settle(&intent, &result);
        result
    }

    async fn create_recorded(
        &self,
        spec: ServiceSpec,
        intent: &Intent<ServiceOp>,
        report: impl Fn(CreateStep),
        cancel: &CancellationToken,
    ) -> CoreResult<Created> {
        report(CreateStep::PullingImage(spec.image.clone()));
        cancellable(cancel, self.ensure_image(&spec.image)).await?;
        let dir = self.dir(&spec.id);
        let before = Before {
            container: self.lookup(&spec.id).await.map_or(true, |c| c.is_some()),
            dir: dir.exists(),
        };
        // What the rollback of an interruption from here on may remove.
        intent.note("before", before)?;
        let claimed = dir.claim()?;
        let record = spec.stored(&dir.bind())?;
        report(CreateStep::CreatingContainer);
        intent.note("requested", true)?;
        let created = self
            .engine
            .create_container(&spec.id, record.create_body())
            .await;
        if created.is_ok() {
            intent.note("created", true)?;
            crash_point("service-create.created");
        }
        let container_id = match created {
            Ok(c) => c,
            Err(e) => {
                if claimed {
                    dir.remove()?;
                }
                return Err(e.into());
            }
        };
        let filled = self
            .fill(&spec, &dir, claimed, &record, &report, cancel)
            .await;
        if let Err(e) = filled {
            let _ = self.engine.remove_container(&spec.id, true, false).await;
            self.changed(&container_id, None).await;
            dir.remove()?;
            return Err(e);
        }
        self.changed(&container_id, None).await;
        Ok(Created {
            id: spec.id,
            container_id,
        })
    }

    /// Pulls `image` unless Docker has it.
    async fn ensure_image(&self, image: &str) -> CoreResult<()> {
        match self.engine.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(EngineError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let pulled = self.engine.pull_image(image).await;
        view_fetch::images_changed(&self.view, self.engine.as_ref()).await;
        pulled.map_err(|e| {
            CoreError::Invalid(format!(
                "image {image} is not on this device and could not be pulled: {e}"
            ))
        })
    }

    /// The new service's directory: its record, and `bind_contents` unpacked.
    async fn fill(
        &self,
        spec: &ServiceSpec,
        dir: &ServiceDir,
        claimed: bool,
        record: &StoredService,
        report: &impl Fn(CreateStep),
        cancel: &CancellationToken,
    ) -> CoreResult<()> {
        if !claimed {
            // Left behind by a service whose container is gone: start afresh.
            dir.reset()?;
        }
        dir.write_record(record)?;
        crash_point("service-create.recorded");
        let Some(url) = &spec.bind_contents else {
            return Ok(());
        };
        report(CreateStep::FetchingContents(url.clone()));
        cancellable(
            cancel,
            fetch::download(url, &dir.download(), self.settings.fetch),
        )
        .await?;
        crash_point("service-create.fetched");
        report(CreateStep::UnpackingContents);
        let (archive, bind, limits) = (dir.download(), dir.bind(), self.settings.unpack);
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            unpack::unpack_tar_gz(&archive, &bind, limits, &cancel)
        })
        .await
        .map_err(|e| CoreError::Failed(format!("unpacking failed: {e}")))??;
        dir.remove_download()
    }

    /// Imports a raw root filesystem tar as an image (`docker import`); its id. The image
    /// is labelled with the import's intent ([`LABEL_IMPORT`]), so that the rollback of an
    /// interrupted import finds it; its commit point is the removal of the intent right
    /// after Docker answered.
    pub async fn import_image(&self, tar: super::engine::ByteStream) -> CoreResult<String> {
        let intent = self
            .intents
            .begin(ServiceOp::ImportImage, None, Default::default())?;
        let intent = Arc::new(intent);
        crash_point("import-image.intent-written");
        let change = format!("LABEL {LABEL_IMPORT}={}", intent.id());
        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = noting_sent(tar, intent.clone());
        let body = crash_when_sent("import-image.in-flight", body, answered.clone());
        let imported = self.engine.import_rootfs(body, &[change]).await;
        crate::core::recovery::crash_when_answered("import-image.in-flight", &answered);
        crash_point("import-image.imported");
        view_fetch::images_changed(&self.view, self.engine.as_ref()).await;
        match &imported {
            Ok(_) => intent.done(),
            // Left for the recovery, which looks for the image (without waiting when Docker
            // answered): a failure is never worth the doubt.
            Err(e) => {
                if e.kind() != crate::core::ErrorKind::Unavailable {
                    let _ = intent.note("answered", true);
                }
                intent.keep()
            }
        }
        Ok(imported?)
    }
}

/// `body`, noting in `intent` that it was sent whole before its end goes to Docker (a
/// chunked body: Docker creates the image only once it has read the end).
fn noting_sent(
    body: super::engine::ByteStream,
    intent: Arc<Intent<ServiceOp>>,
) -> super::engine::ByteStream {
    let end = futures_util::stream::once(async move {
        let noted = tokio::task::spawn_blocking(move || intent.note("sent", true)).await;
        match noted {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(std::io::Error::other(e.to_string()))),
            Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
        }
    });
    Box::pin(body.map(Some).chain(end).filter_map(std::future::ready))
}

/// Runs `work` unless `cancel` fires first (then `work` is dropped).
async fn cancellable<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = CoreResult<T>>,
) -> CoreResult<T> {
    tokio::select! {
        r = work => r,
        _ = cancel.cancelled() => Err(CoreError::Cancelled("creating the service was cancelled".into())),
    }
}
