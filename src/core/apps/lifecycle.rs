//! The apps service: imported apps and what can be done with them (start, stop, remove,
//! status), over the store, the compose engine and the container engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::import::{self, ImportOptions, ImportSettings, ProgressFn};
use super::recover::{AppIntent, AppIntents, AppOp};
use super::store::{AppStore, StoredApp};
use super::stream::{UploadReader, UploadSender};
use super::AppId;
use crate::core::compose::{ComposeProject, ContainerStatus, DownOptions};
use crate::core::engine::{ContainerEngine, LogLine};
use crate::core::events::{AppEvent, EventBus};
use crate::core::recovery::crash_point;
use crate::core::recovery::{noted, settle};
use crate::core::view::state::AppEntry;
use crate::core::view::{fetch, now_ns, LiveView, Snapshot};
use crate::core::{CoreError, CoreResult, ErrorKind};

/// An app's overall state, from its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppStatus {
    Running,
    PartiallyRunning,
    Stopped,
    /// Docker could not be asked.
    Unknown,
}

/// An image an app uses, as far as Docker knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppImage {
    pub name: String,
    pub id: Option<String>,
    pub created: Option<String>,
    pub platform: Option<String>,
    pub size: Option<i64>,
}

/// An app with its live state.
#[derive(Debug, Clone)]
pub struct AppView {
    pub app: StoredApp,
    pub status: AppStatus,
    pub busy: bool,
    pub containers: Vec<ContainerStatus>,
    pub images: Vec<AppImage>,
}

/// What a compose-like operation did, for the dialects' ProcessResult.
#[derive(Debug, Clone, Default)]
pub struct ProcessOutcome {
    /// The docker-compose command line this corresponds to (for clients that show it).
    pub command: String,
    pub lines: Vec<String>,
    pub success: bool,
    pub duration: Duration,
    pub running_containers: Vec<String>,
    pub pulled_images: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct StopOptions {
    pub remove_images: bool,
    pub remove_volumes: bool,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct RemoveOptions {
    pub force: bool,
    pub remove_images: bool,
    pub remove_volumes: bool,
}

impl RemoveOptions {
    /// Stopped first if running, with its images and volumes.
    pub fn everything() -> Self {
        Self {
            force: true,
            remove_images: true,
            remove_volumes: true,
        }
    }
}

pub struct Apps {
    pub(super) engine: Arc<dyn ContainerEngine>,
    store: Arc<AppStore>,
    uploads: PathBuf,
    settings: ImportSettings,
    /// A refresh of all apps is running.
    refreshing: std::sync::atomic::AtomicBool,
    /// Where app events go (the SSE stream); the view publishes App events on it.
    events: EventBus,
    /// The intents of operations in flight (`state_dir/intents`), resolved after a crash.
    pub(super) intents: AppIntents,
    /// Where an earlier version kept its import journals (resolved at start, then unused).
    pub(super) legacy_journals: PathBuf,
    /// The template store (`state_dir/templates`): template imports record their intents in
    /// this log too, and its templates' images are never an interrupted import's to remove.
    pub(super) template_store: PathBuf,
    /// The recovery's watches for images Docker may still create; imports wait for them.
    pub(super) cleanups: super::recover::Cleanups,
    /// What reads are served from: the apps with their busy marks and Docker's state.
    view: Arc<LiveView>,
    /// How long an update waits for a recreated service to become healthy.
    pub(super) health_timeout: Duration,
}

fn not_stored(id: &AppId) -> CoreError {
    CoreError::NotFound(format!("no such app: {id}"))
}

/// Marks an app busy until dropped.
pub struct BusyGuard<'a> {
    apps: &'a Apps,
    id: AppId,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        // An operation that left its intent for the recovery keeps the app busy.
        let pending = self.apps.intents.is_pending(self.id.as_str());
        self.apps.view.update(|s| match pending {
            true => s.busy.insert(self.id.clone(), RECOVERED),
            false => s.busy.remove(&self.id),
        });
    }
}

/// The busy mark of an app with an interrupted operation waiting to be recovered.
const RECOVERED: &str = "recovered";

pub type LineFn<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// How an operation runs: the token that cancels it and where its output lines go.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    pub cancel: &'a CancellationToken,
    pub out: LineFn<'a>,
}

impl<'a> Run<'a> {
    pub fn new(cancel: &'a CancellationToken, out: LineFn<'a>) -> Self {
        Self { cancel, out }
    }
}

/// An app's log lines, streamed.
pub type LogLines = std::pin::Pin<Box<dyn futures_util::Stream<Item = CoreResult<LogLine>> + Send>>;

impl Apps {
    /// Opens the store under `state_dir/apps` and the upload area `state_dir/uploads`
    /// (emptied: uploads of a previous run are never resumed).
    pub fn open(
        engine: Arc<dyn ContainerEngine>,
        state_dir: &Path,
        settings: ImportSettings,
    ) -> CoreResult<Self> {
        let store = Arc::new(AppStore::open(&state_dir.join("apps"))?);
        let uploads = state_dir.join("uploads");
        let _ = std::fs::remove_dir_all(&uploads);
        std::fs::create_dir_all(&uploads)
            .map_err(|e| CoreError::io(format!("cannot create {}", uploads.display()), e))?;
        let intents_dir = state_dir.join("intents");
        let intents = AppIntents::open(&intents_dir)
            .map_err(|e| CoreError::io(format!("cannot open {}", intents_dir.display()), e))?;
        let mut settings = settings;
        settings.intents = Some(intents.clone());
        let events = EventBus::default();
        let apps = Self {
            engine,
            store,
            uploads,
            settings,
            intents,
            legacy_journals: state_dir.join("import-journal"),
            template_store: state_dir.join("templates"),
            cleanups: Default::default(),
            refreshing: std::sync::atomic::AtomicBool::new(false),
            view: Arc::new(LiveView::new(events.clone())),
            events,
            health_timeout: Duration::from_secs(300),
        };
        let entries: Vec<AppEntry> = apps
            .store
            .list()?
            .into_iter()
            .map(|a| apps.entry(a))
            .collect();
        apps.view.update(|s| {
            for e in entries {
                s.apps.insert(e.app.id().clone(), Arc::new(e));
            }
        });
        apps.mark_recovered();
        Ok(apps)
    }

    /// Sets how long an update waits for a recreated service to become healthy.
    pub fn with_health_timeout(mut self, timeout: Duration) -> Self {
        self.health_timeout = timeout;
        self
    }

    /// Replaces the event bus (before anything subscribed), e.g. with a configured capacity.
    pub fn with_events(mut self, events: EventBus) -> Self {
        self.view.set_events(events.clone());
        self.events = events;
        self
    }

    /// The intents of the operations in flight (and of interrupted ones).
    pub fn intents(&self) -> &AppIntents {
        &self.intents
    }

    /// The live view the apps' reads are served from (and every other read of the core).
    pub fn view(&self) -> &Arc<LiveView> {
        &self.view
    }

    /// A stored app as the view keeps it: with its compose project and services (read as a
    /// stop would read them: no host file, no policy check, so a switch turned off later
    /// does not hide the app's services).
    fn entry(&self, app: StoredApp) -> AppEntry {
        let project = app.id().slug();
        let services = self
            .teardown_project(&app)
            .ok()
            .map(|p| p.services().into_iter().map(str::to_string).collect());
        AppEntry {
            app,
            project,
            services,
        }
    }

    /// Reads the app's containers from Docker into the view (after an operation on it, and
    /// for a refresh), so that every later read shows what the operation did.
    async fn fetch(&self, id: &AppId) -> CoreResult<()> {
        fetch::project(&self.view, self.engine.as_ref(), &id.slug()).await?;
        Ok(())
    }

    /// App events: status changes, imports, removals, refreshes.
    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Claims the "refresh all" slot; false when a refresh already runs.
    pub fn begin_refresh_all(&self) -> bool {
        let claimed = !self
            .refreshing
            .swap(true, std::sync::atomic::Ordering::SeqCst);
        if claimed {
            self.events.publish(AppEvent::Refresh(true));
        }
        claimed
    }

    pub fn is_refreshing_all(&self) -> bool {
        self.refreshing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Re-reads every app's state from Docker (after [`Apps::begin_refresh_all`]) and
    /// publishes an App event for each (whether changed or not: the client asked for a
    /// fresh picture), between Refresh(true) and Refresh(false). Cancelling skips the apps
    /// not yet refreshed; Refresh(false) comes either way and the slot is free again.
    pub async fn refresh_all(&self, cancel: &CancellationToken) {
        // It only reads: an intent that cannot be written does not stop it.
        let intent = self
            .intents
            .begin(AppOp::Refresh, None, Default::default())
            .inspect_err(|e| tracing::warn!(error = %e, "refresh of all apps: no intent recorded"));
        crash_point("refresh.intent-written");
        if let Ok(apps) = self.store.list() {
            for app in apps {
                if cancel.is_cancelled() {
                    break;
                }
                tokio::select! {
                    r = self.fetch(app.id()) => {
                        if let Err(e) = r {
                            tracing::debug!(app = %app.id(), error = %e, "cannot refresh an app");
                        }
                        self.view.publish_app(app.id());
                    }
                    _ = cancel.cancelled() => break,
                }
            }
        }
        if cancel.is_cancelled() {
            tracing::info!("refresh of all apps cancelled");
        }
        if let Ok(intent) = intent {
            intent.done();
        }
        self.end_refresh_all();
    }

    /// Frees the "refresh all" slot and says so.
    pub fn end_refresh_all(&self) {
        self.refreshing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.events.publish(AppEvent::Refresh(false));
    }

    /// Re-reads one app from its store directory and Docker; `Busy` while another operation
    /// (or refresh) on it runs; `Cancelled` when cancelled (nothing to roll back: a refresh
    /// only reads).
    pub async fn refresh(&self, id: &AppId, cancel: &CancellationToken) -> CoreResult<AppView> {
        let app = self.stored(id)?;
        {
            let _busy = self.claim(id, "refreshed")?;
            let entry = self.entry(self.project(&app).map(|_| app)?);
            self.view
                .update(|s| s.apps.insert(id.clone(), Arc::new(entry)));
            tokio::select! {
                r = self.fetch(id) => r?,
                _ = cancel.cancelled() => {
                    return Err(CoreError::Cancelled(format!("the refresh of {id} was cancelled")))
                }
            }
        }
        self.get(id).await
    }

    /// The containers of every compose project on this host, gantry's or not (from the
    /// view).
    pub async fn recognize(&self) -> CoreResult<Vec<bollard::models::ContainerSummary>> {
        let snap = self.view.current().await?;
        Ok(snap.compose_containers(now_ns()))
    }

    /// Claims an app for an operation; `Busy` when another one runs, or while an interrupted
    /// operation on it waits to be recovered. The mark is in the view, so reads and App
    /// events show it at once.
    pub fn claim(&self, id: &AppId, what: &'static str) -> CoreResult<BusyGuard<'_>> {
        self.view.update(|s| match s.busy.get(id) {
            Some(other) => Err(CoreError::Busy(format!(
                "app is busy: {id} is being {other}"
            ))),
            None if self.intents.is_pending(id.as_str()) => Err(CoreError::Busy(format!(
                "app is busy: an interrupted operation on {id} is being recovered"
            ))),
            None => {
                s.busy.insert(id.clone(), what);
                Ok(())
            }
        })?;
        Ok(BusyGuard {
            apps: self,
            id: id.clone(),
        })
    }

    #[cfg(test)]
    pub fn is_busy(&self, id: &AppId) -> bool {
        self.view.snapshot().busy.contains_key(id)
    }

    /// Claims an app for the recovery of an interrupted operation on it (which keeps it
    /// busy for everyone else until the intent is resolved, see [`Apps::unmark_recovered`]).
    pub(super) fn claim_recovery(&self, id: &AppId) -> BusyGuard<'_> {
        self.view.update(|s| s.busy.insert(id.clone(), RECOVERED));
        BusyGuard {
            apps: self,
            id: id.clone(),
        }
    }

    /// Marks busy in the view the apps with an interrupted operation waiting for recovery.
    fn mark_recovered(&self) {
        let pending = self.intents.pending_apps();
        if pending.is_empty() {
            return;
        }
        self.view.update(|s| {
            for app in pending {
                s.busy.entry(AppId::from(app.as_str())).or_insert(RECOVERED);
            }
        });
    }

    /// Ends the busy mark of the recovery on `app` once no intent on it waits any more.
    pub(super) fn unmark_recovered(&self, app: &str) {
        if self.intents.is_pending(app) {
            return;
        }
        let id = AppId::from(app);
        self.view.update(|s| {
            if s.busy.get(&id) == Some(&RECOVERED) {
                s.busy.remove(&id);
            }
        });
    }

    /// A fresh temp file in the upload area, deleted when dropped.
    pub fn upload_file(&self) -> CoreResult<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("upload-")
            .suffix(".zip")
            .tempfile_in(&self.uploads)
            .map_err(|e| CoreError::io("cannot create an upload file", e))
    }

    /// A fresh upload file and a pipe into it: the receiving route pushes the upload's bytes
    /// into the sender, an import or image load reads them from the reader.
    pub fn upload_pipe(&self) -> CoreResult<(tempfile::NamedTempFile, UploadSender, UploadReader)> {
        let file = self.upload_file()?;
        let writer = file
            .as_file()
            .try_clone()
            .map_err(|e| CoreError::io("cannot open the upload file", e))?;
        let (sender, reader) = super::stream::upload_pipe(writer);
        Ok((file, sender, reader))
    }

    pub fn max_upload_bytes(&self) -> u64 {
        self.settings.limits.max_zip_bytes
    }

    pub async fn import(
        &self,
        zip: &Path,
        options: ImportOptions,
        cancel: &CancellationToken,
        progress: ProgressFn<'_>,
    ) -> CoreResult<StoredApp> {
        self.import_zip(zip, None, options, cancel, progress).await
    }

    /// Puts a new app into the view and tells subscribers, whichever import path stored it.
    pub(crate) async fn publish_import(&self, stored: &StoredApp) {
        if let Err(e) = fetch::images(&self.view, self.engine.as_ref(), &[stored]).await {
            tracing::debug!(error = %e, "cannot read the images after an import");
        }
        let _ = self.fetch(stored.id()).await;
        let entry = Arc::new(self.entry(stored.clone()));
        let id = stored.id().clone();
        self.view.update_and_publish(
            |s| {
                s.apps.insert(id.clone(), entry);
            },
            |s, known| AppEvent::Import(s.app(&id, known, now_ns()).expect("just inserted")),
        );
    }

    /// Imports an upload that is still arriving (see [`import::import`]): the caller
    /// pushes its bytes into the pipe whose reading end is `upload`, writing into `zip`.
    pub async fn import_upload(
        &self,
        zip: &Path,
        upload: UploadReader,
        expected: Option<u64>,
        options: ImportOptions,
        cancel: &CancellationToken,
        progress: ProgressFn<'_>,
    ) -> CoreResult<StoredApp> {
        let upload = import::Upload {
            reader: upload,
            expected,
        };
        self.import_zip(zip, Some(upload), options, cancel, progress)
            .await
    }

    /// Imports `zip` (still arriving through `upload`, if any) and publishes the new app.
    pub(crate) async fn import_zip(
        &self,
        zip: &Path,
        upload: Option<import::Upload>,
        options: ImportOptions,
        cancel: &CancellationToken,
        progress: ProgressFn<'_>,
    ) -> CoreResult<StoredApp> {
        self.after_cleanups(cancel).await;
        let stored = import::import(
            self.engine.as_ref(),
            &self.store,
            zip,
            upload,
            &self.settings,
            options,
            cancel,
            progress,
        )
        .await?;
        self.publish_import(&stored).await;
        Ok(stored)
    }

    pub(super) fn stored(&self, id: &AppId) -> CoreResult<StoredApp> {
        Ok(self.store.get(id)?)
    }

    /// The app's project to start: every check of the policy, and its files read again.
    pub(super) fn project(&self, app: &StoredApp) -> CoreResult<ComposeProject> {
        Self::load(app, &self.settings.policy)
    }

    /// The app's project to stop, remove or read the state of (see
    /// [`crate::core::compose::ComposePolicy::teardown`]).
    pub(super) fn teardown_project(&self, app: &StoredApp) -> CoreResult<ComposeProject> {
        Self::load(app, &crate::core::compose::ComposePolicy::teardown())
    }

    fn load(
        app: &StoredApp,
        policy: &crate::core::compose::ComposePolicy,
    ) -> CoreResult<ComposeProject> {
        ComposeProject::load(
            &app.dir,
            &app.id().slug(),
            app.id().as_str(),
            &HashMap::new(),
            policy,
        )
        .map_err(|e| CoreError::from(e).context(app.id().to_string()))
    }

    /// Checks an app whose files are staged in `dir` and not stored yet, as its import and
    /// every start do: the isolation policy, then who owns what of it exists in Docker.
    pub(crate) async fn check_staged(&self, id: &AppId, dir: &Path) -> CoreResult<()> {
        let context =
            |e: crate::core::compose::ComposeError| CoreError::from(e).context(id.to_string());
        let project = ComposeProject::load(
            dir,
            &id.slug(),
            id.as_str(),
            &HashMap::new(),
            &self.settings.policy,
        )
        .map_err(context)?;
        project
            .check_owners(self.engine.as_ref())
            .await
            .map_err(context)
    }

    /// Every stored app with its live state, from the view (status Unknown while Docker
    /// cannot be followed).
    pub async fn list(&self) -> CoreResult<Vec<AppView>> {
        let (snap, known) = self.snapshot().await;
        Ok(snap.app_list(known, now_ns()))
    }

    pub async fn get(&self, id: &AppId) -> CoreResult<AppView> {
        let (snap, known) = self.snapshot().await;
        snap.app(id, known, now_ns())
            .ok_or_else(|| self.stored(id).err().unwrap_or_else(|| not_stored(id)))
    }

    /// The view's snapshot and whether it is current (else apps read as Unknown).
    async fn snapshot(&self) -> (Arc<Snapshot>, bool) {
        match self.view.current().await {
            Ok(s) => (s, true),
            Err(_) => (self.view.snapshot(), false),
        }
    }

    pub(super) async fn containers(&self, app: &StoredApp) -> CoreResult<Vec<ContainerStatus>> {
        let project = self.teardown_project(app)?;
        let services = project.status(self.engine.as_ref()).await?;
        Ok(services.into_iter().flat_map(|s| s.containers).collect())
    }

    /// `docker-compose up -d`, natively. A compose failure is an outcome with
    /// `success: false` and the lines up to the error, as docker-compose's exit code would be;
    /// only "no such app", "busy", "Docker unreachable" and "cancelled" are errors.
    ///
    /// Cancelling stops what was started so far (`down`, reported through `on_line` too) and
    /// answers `Cancelled`: the app ends stopped.
    pub async fn start(
        &self,
        id: &AppId,
        cancel: &CancellationToken,
        on_line: LineFn<'_>,
    ) -> CoreResult<ProcessOutcome> {
        self.claimed(id, "started", false, async |app| {
            self.start_recorded(app, cancel, on_line).await
        })
        .await
    }

    /// The start of a claimed app, its intent recorded.
    async fn start_recorded(
        &self,
        app: &StoredApp,
        cancel: &CancellationToken,
        on_line: LineFn<'_>,
    ) -> CoreResult<ProcessOutcome> {
        let id = app.id();
        let intent = self
            .intents
            .begin(AppOp::Start, Some(id.as_str()), Default::default())?;
        crash_point("start.intent-written");
        let result = self.start_claimed(app, &intent, cancel, on_line).await;
        crash_point("start.done");
        settle(&intent, &result);
        result
    }

    /// After an operation on the app, before it answers (and while it is still busy):
    /// its containers (and with `lists`, the images and volumes) as Docker has them now.
    pub(super) async fn fetch_after(&self, id: &AppId, lists: bool) {
        let engine = self.engine.as_ref();
        let result = if lists {
            let (a, b, c) = tokio::join!(
                self.fetch(id),
                fetch::images(&self.view, engine, &[]),
                fetch::volumes(&self.view, engine)
            );
            a.and(b.map_err(CoreError::from))
                .and(c.map_err(CoreError::from))
        } else {
            self.fetch(id).await
        };
        if let Err(e) = result {
            tracing::debug!(app = %id, error = %e, "cannot read the app's state after an operation");
        }
    }

    async fn start_claimed(
        &self,
        app: &StoredApp,
        intent: &AppIntent,
        cancel: &CancellationToken,
        on_line: LineFn<'_>,
    ) -> CoreResult<ProcessOutcome> {
        let id = app.id();
        let project = self.project(app)?;
        let started = Instant::now();
        let command = format!(
            "docker-compose -p {} -f {} up -d",
            project.name(),
            project.compose_file().display()
        );
        let seen = Mutex::new(Vec::new());
        let collect = |line: &str| {
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line.to_string());
            on_line(line);
        };
        let result = tokio::select! {
            r = project.up(self.engine.as_ref(), &collect) => Some(r),
            _ = cancel.cancelled() => None,
        };
        let Some(result) = result else {
            collect("Cancelled: stopping what was started");
            // Interrupted from here on, the start is undone rather than finished.
            intent.note("undo", true)?;
            self.undo_start(app, &collect).await?;
            return Err(CoreError::Cancelled(format!(
                "the start of {id} was cancelled; the app was stopped"
            )));
        };
        let lines = seen.into_inner().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(up) => Ok(ProcessOutcome {
                command,
                lines,
                success: true,
                duration: started.elapsed(),
                running_containers: up.running_containers,
                pulled_images: up.pulled_images,
            }),
            Err(e) => match e.kind() {
                ErrorKind::Unavailable => Err(e.into()),
                _ => Ok(ProcessOutcome {
                    command,
                    lines,
                    success: false,
                    duration: started.elapsed(),
                    running_containers: Vec::new(),
                    pulled_images: Vec::new(),
                }),
            },
        }
    }

    /// After a cancelled `up`: `down` until no container of the app is left. A create request
    /// dropped mid-flight may still complete in Docker after the first `down` listed the
    /// containers, hence a few (bounded) rounds.
    pub(super) async fn undo_start(&self, app: &StoredApp, on_line: LineFn<'_>) -> CoreResult<()> {
        for round in 0..3 {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            self.down(app, false, false, on_line).await?;
            if self.containers(app).await?.is_empty() {
                return Ok(());
            }
        }
        Err(CoreError::Failed(format!(
            "{} still has containers after the cancelled start was undone",
            app.id()
        )))
    }

    /// The last `lines` lines (all with None) of each of the app's containers, prefixed
    /// `name | ` as `docker-compose logs` does, as Docker sends them (nothing is held whole).
    /// An unknown app or an unreachable Docker fail here, before the first line.
    pub async fn logs(&self, id: &AppId, lines: Option<u64>) -> CoreResult<LogLines> {
        let app = self.stored(id)?;
        let containers = self.containers(&app).await?;
        let engine = self.engine.clone();
        let per_container = futures_util::stream::iter(containers).flat_map(move |c| {
            let name = c.name.clone();
            engine.container_logs(&c.id, lines).map(move |l| {
                l.map(|l| LogLine {
                    stdout: l.stdout,
                    text: format!("{name} | {}", l.text),
                })
                .map_err(CoreError::from)
            })
        });
        Ok(Box::pin(per_container))
    }

    /// `docker-compose down`, natively; images and volumes only when asked and unused.
    ///
    /// Cancelling rolls back to the state before: the stop of a container Docker is already
    /// performing is finished at once (Docker does not take a stop request back, it would
    /// kill the container at the end of its grace period), then, when any container of the
    /// app was running before, `up` starts the app again (all its services) and the answer
    /// is `Cancelled`. The rollback's lines go through `on_line` too.
    pub async fn stop(
        &self,
        id: &AppId,
        options: StopOptions,
        cancel: &CancellationToken,
        on_line: LineFn<'_>,
    ) -> CoreResult<ProcessOutcome> {
        let lists = options.remove_images || options.remove_volumes;
        self.claimed(id, "stopped", lists, async |app| {
            let data = noted("options", options);
            self.recorded(AppOp::Stop, app.id(), data, async |intent| {
                crash_point("stop.intent-written");
                let result = self
                    .stop_claimed(app, options, Some(intent), cancel, on_line)
                    .await;
                crash_point("stop.done");
                result
            })
            .await
        })
        .await
    }

    /// Runs `work` with an intent of `kind` on the app `id` recorded first (with `data`);
    /// the intent ends with the result (see [`crate::core::recovery::settle`]).
    pub(super) async fn recorded<T>(
        &self,
        kind: AppOp,
        id: &AppId,
        data: serde_json::Map<String, serde_json::Value>,
        work: impl AsyncFnOnce(&AppIntent) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let intent = self.intents.begin(kind, Some(id.as_str()), data)?;
        let result = work(&intent).await;
        settle(&intent, &result);
        result
    }

    /// Runs `work` on the stored app `id` claimed as `what` (Busy while another operation
    /// runs on it). Before the claim ends, what it did is read back into the view (the
    /// app's containers; with `lists` the images and volumes too), so every read that starts
    /// after the answer sees it, and the App event with the result comes before Busy false.
    pub(super) async fn claimed<T>(
        &self,
        id: &AppId,
        what: &'static str,
        lists: bool,
        work: impl AsyncFnOnce(&StoredApp) -> CoreResult<T>,
    ) -> CoreResult<T> {
        let app = self.stored(id)?;
        let _busy = self.claim(id, what)?;
        let result = work(&app).await;
        self.fetch_after(id, lists).await;
        result
    }

    pub(super) async fn stop_claimed(
        &self,
        app: &StoredApp,
        options: StopOptions,
        intent: Option<&AppIntent>,
        cancel: &CancellationToken,
        on_line: LineFn<'_>,
    ) -> CoreResult<ProcessOutcome> {
        let was_running = self
            .containers(app)
            .await
            .map(|cs| cs.iter().any(|c| c.running))
            .unwrap_or(false);
        // Containers whose stop request is out (the compose engine's "Stopping <name> ..."
        // line without its "done"/"error" yet).
        let stopping: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let track = |line: &str| {
            if let Some(rest) = line.strip_prefix("Stopping ") {
                let mut s = stopping.lock().unwrap_or_else(|p| p.into_inner());
                let name = rest.split_whitespace().next().unwrap_or("").to_string();
                if line.ends_with(" ...") {
                    s.push(name);
                } else {
                    s.retain(|n| *n != name);
                }
            }
            on_line(line);
        };
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            r = self.down(app, options.remove_images, options.remove_volumes, &track) => Some(r),
        };
        if let Some(result) = result {
            return result;
        }
        let id = app.id();
        let stopping = stopping.into_inner().unwrap_or_else(|p| p.into_inner());
        // Interrupted from here on, the stop is undone rather than finished.
        if let Some(intent) = intent {
            intent.note("undo", serde_json::json!({ "was_running": was_running }))?;
        }
        self.undo_stop(app, was_running, &stopping, on_line).await?;
        Err(CoreError::Cancelled(if was_running {
            format!("the stop of {id} was cancelled; the app was started again")
        } else {
            format!("the stop of {id} was cancelled; it was not running before")
        }))
    }

    /// After a cancelled `down`: finishes the stops Docker already performs, then `up` when
    /// the app ran before, until its services run again (a removal Docker still completes
    /// may race the first `up`, hence a few bounded rounds).
    pub(super) async fn undo_stop(
        &self,
        app: &StoredApp,
        was_running: bool,
        stopping: &[String],
        on_line: LineFn<'_>,
    ) -> CoreResult<()> {
        if was_running {
            on_line("Cancelled: starting again what was stopped");
        } else {
            on_line("Cancelled: the app was not running before");
        }
        for name in stopping {
            on_line(&format!("Finishing the stop Docker started for {name}"));
            match self.engine.stop_container_with_timeout(name, 0).await {
                Ok(()) | Err(crate::core::engine::EngineError::NotFound(_)) => {}
                Err(e) => on_line(&format!("Stopping {name} failed: {e}")),
            }
        }
        if !was_running {
            return Ok(());
        }
        self.up_until_running(app, "the cancelled stop", on_line)
            .await
    }

    /// `up` until every service of the app runs: a removal Docker still completes may race
    /// the first `up`, hence a few bounded rounds. `after` says what is being undone.
    pub(super) async fn up_until_running(
        &self,
        app: &StoredApp,
        after: &str,
        on_line: LineFn<'_>,
    ) -> CoreResult<()> {
        let project = self.project(app)?;
        let expected = project.services().len();
        let mut last = String::new();
        for round in 0..3 {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            match project.up(self.engine.as_ref(), on_line).await {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Unavailable => return Err(e.into()),
                Err(e) => last = e.to_string(),
            }
            let running = self
                .containers(app)
                .await?
                .iter()
                .filter(|c| c.running)
                .count();
            if running >= expected {
                return Ok(());
            }
        }
        Err(CoreError::Failed(format!(
            "{} could not be started again after {after}: {last}",
            app.id()
        )))
    }

    pub(super) async fn down(
        &self,
        app: &StoredApp,
        remove_images: bool,
        remove_volumes: bool,
        on_line: LineFn<'_>,
    ) -> CoreResult<ProcessOutcome> {
        let project = self.teardown_project(app)?;
        let started = Instant::now();
        let mut command = format!(
            "docker-compose -p {} -f {} down",
            project.name(),
            project.compose_file().display()
        );
        if remove_volumes {
            command.push_str(" -v");
        }
        if remove_images {
            command.push_str(" --rmi all");
        }
        let options = DownOptions {
            remove_images,
            remove_volumes,
            protected_images: self.images_of_other_apps(app.id())?,
            timeout: None,
        };
        let down = project
            .down(self.engine.as_ref(), &options, on_line)
            .await?;
        Ok(ProcessOutcome {
            command,
            lines: down.lines,
            success: true,
            duration: started.elapsed(),
            ..ProcessOutcome::default()
        })
    }

    /// Image references other stored apps brought along; never removed with this app.
    fn images_of_other_apps(&self, id: &AppId) -> CoreResult<Vec<String>> {
        self.images_of(|a| a != id)
    }

    /// The image ids and references every stored app brought (templates keep these).
    pub fn images_in_use(&self) -> CoreResult<std::collections::HashSet<String>> {
        Ok(self.images_of(|_| true)?.into_iter().collect())
    }

    fn images_of(&self, include: impl Fn(&AppId) -> bool) -> CoreResult<Vec<String>> {
        Ok(self
            .store
            .list()?
            .into_iter()
            .filter(|a| include(a.id()))
            .flat_map(|a| {
                a.record
                    .images
                    .into_iter()
                    .flat_map(|i| i.references.into_iter().chain(std::iter::once(i.id)))
            })
            .collect())
    }

    /// Removes an app: refuses while it runs unless forced (then stops it first).
    pub async fn remove(&self, id: &AppId, options: RemoveOptions) -> CoreResult<()> {
        let app = self.stored(id)?;
        let _busy = self.claim(id, "removed")?;
        if let Err(e) = self.refuse_running(&app, options).await {
            return self.removed(id, Err(e)).await;
        }
        self.removal_recorded(id, AppOp::Delete, noted("options", options), async |_| {
            crash_point("delete.intent-written");
            self.remove_claimed(&app, options).await
        })
        .await
    }

    /// A removal with its intent recorded first: `work`, then [`Apps::removed`]; the intent
    /// ends once the app left the store (or the removal failed).
    pub(super) async fn removal_recorded(
        &self,
        id: &AppId,
        kind: AppOp,
        data: serde_json::Map<String, serde_json::Value>,
        work: impl AsyncFnOnce(&AppIntent) -> CoreResult<()>,
    ) -> CoreResult<()> {
        let intent = match self.intents.begin(kind, Some(id.as_str()), data) {
            Ok(intent) => intent,
            Err(e) => return self.removed(id, Err(e)).await,
        };
        let result = work(&intent).await;
        let result = self.removed(id, result).await;
        settle(&intent, &result);
        result
    }

    /// The end of a removal (the app still claimed): Docker's state read back into the view,
    /// then, when it succeeded, the app leaves the store and the view with a Remove event
    /// carrying its last state.
    pub(super) async fn removed(&self, id: &AppId, result: CoreResult<()>) -> CoreResult<()> {
        self.removed_with(id, result, true).await
    }

    /// [`Apps::removed`]; without `wait`, the last state is what the view has now (the
    /// recovery at start runs before the view follows Docker).
    pub(super) async fn removed_with(
        &self,
        id: &AppId,
        result: CoreResult<()>,
        wait: bool,
    ) -> CoreResult<()> {
        self.fetch_after(id, true).await;
        result?;
        let (snap, known) = match wait {
            true => self.snapshot().await,
            false => (self.view.snapshot(), self.view.is_current()),
        };
        let mut last = snap
            .app(id, known, now_ns())
            .ok_or_else(|| not_stored(id))?;
        last.busy = false;
        self.store.remove(id)?;
        self.view.update_and_publish(
            |s| {
                s.apps.remove(id);
                s.busy.remove(id);
            },
            |_, _| AppEvent::Remove(last),
        );
        Ok(())
    }

    /// A removal of a running app without force is refused.
    async fn refuse_running(&self, app: &StoredApp, options: RemoveOptions) -> CoreResult<()> {
        let containers = self.containers(app).await?;
        if containers.iter().any(|c| c.running) && !options.force {
            return Err(CoreError::Conflict(format!(
                "app {} is running; stop it first or remove with force=true",
                app.id()
            )));
        }
        Ok(())
    }

    /// Stops and removes the app's containers (and images when asked). Also what finishes
    /// an interrupted removal.
    pub(super) async fn remove_claimed(
        &self,
        app: &StoredApp,
        options: RemoveOptions,
    ) -> CoreResult<()> {
        self.down(app, false, options.remove_volumes, &|_| {})
            .await?;
        crash_point("delete.stopped");
        self.remove_stopped(app, options).await?;
        crash_point("delete.images-removed");
        Ok(())
    }

    /// Removes the images a stopped app's bundle brought (claimed by the caller), when
    /// asked and unless other apps need them; [`Apps::removed`] then drops the app.
    pub(super) async fn remove_stopped(
        &self,
        app: &StoredApp,
        options: RemoveOptions,
    ) -> CoreResult<()> {
        if options.remove_images {
            self.remove_app_images(app).await?;
        }
        Ok(())
    }

    /// Removes the images `app` brought, except those another stored app brought too.
    async fn remove_app_images(&self, app: &StoredApp) -> CoreResult<()> {
        let protected = self.images_of_other_apps(app.id())?;
        for image in &app.record.images {
            if protected.contains(&image.id) {
                continue;
            }
            for reference in &image.references {
                if protected.contains(reference) {
                    continue;
                }
                match self.engine.remove_image(reference, false).await {
                    Ok(_) => {}
                    Err(crate::core::engine::EngineError::NotFound(_)) => {}
                    Err(crate::core::engine::EngineError::Conflict(m)) => {
                        return Err(CoreError::Conflict(format!(
                            "image {reference} is still needed: {m}"
                        )))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// The store, for the Files API (`files.rs`).
    pub(crate) fn store(&self) -> &Arc<AppStore> {
        &self.store
    }

    /// The engine, for the app operations in sibling modules.
    pub(super) fn engine(&self) -> &dyn ContainerEngine {
        self.engine.as_ref()
    }

    pub fn icon(&self, id: &AppId) -> CoreResult<Option<PathBuf>> {
        Ok(self.stored(id)?.icon())
    }

    pub fn readme(&self, id: &AppId) -> CoreResult<Option<PathBuf>> {
        Ok(self.stored(id)?.readme())
    }

    /// A file directly in an app's directory (its icon, its readme), read whole: at most
    /// [`MAX_SMALL_FILE_BYTES`], and not through a symlink planted since it was found.
    pub async fn read_small_file(path: PathBuf) -> CoreResult<Vec<u8>> {
        let read = move || {
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(CoreError::Invalid(format!(
                    "{} is not a file",
                    path.display()
                )));
            };
            crate::core::safe_fs::read(dir, Path::new(name), MAX_SMALL_FILE_BYTES)
                .map_err(|e| CoreError::Failed(format!("cannot read {}: {e}", path.display())))
        };
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| CoreError::Failed(format!("reading a file failed: {e}")))?
    }
}

/// The largest icon or readme served.
pub const MAX_SMALL_FILE_BYTES: u64 = 4 << 20;

impl Apps {
    /// The app as a ZIP bundle, streamed: its files as imported and, with `with_images`,
    /// each image it brought as `docker/<name>.tar` straight from `docker save`. Memory stays
    /// at a few chunks whatever the size.
    pub async fn export(
        &self,
        id: &AppId,
        with_images: bool,
    ) -> CoreResult<crate::core::engine::ByteStream> {
        use futures_util::StreamExt;
        let app = self.stored(id)?;
        let mut images = Vec::new();
        if with_images {
            for record in &app.record.images {
                let reference = record
                    .references
                    .first()
                    .cloned()
                    .unwrap_or_else(|| record.id.clone());
                // Fail before the first byte when an image is gone.
                self.engine.inspect_image(&reference).await.map_err(|e| {
                    CoreError::Conflict(format!(
                        "image {reference} of {id} is not in Docker any more: {e}"
                    ))
                })?;
                let stem = record
                    .file
                    .rsplit('/')
                    .next()
                    .unwrap_or("image")
                    .trim_end_matches(".tar.gz")
                    .trim_end_matches(".tgz")
                    .trim_end_matches(".tar")
                    .to_string();
                images.push((
                    format!("docker/{stem}.tar"),
                    self.engine.export_image(&reference),
                ));
            }
        }
        let files = list_files(&app.dir)?;
        let handle = tokio::runtime::Handle::current();
        let dir = app.dir.clone();
        Ok(super::stream::write_stream("export", move |out| {
            let mut zip = zip::ZipWriter::new_stream(out).set_auto_large_file();
            let deflate = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            for rel in files {
                zip.start_file(rel.as_str(), deflate)?;
                let mut f = crate::core::safe_fs::open_file(&dir, Path::new(&rel))
                    .map_err(std::io::Error::from)?;
                std::io::copy(&mut f, &mut zip)?;
            }
            let stored = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .large_file(true);
            for (name, mut stream) in images {
                zip.start_file(name.as_str(), stored)?;
                while let Some(chunk) = handle.block_on(stream.next()) {
                    std::io::Write::write_all(&mut zip, &chunk?)?;
                }
            }
            let mut out = zip.finish()?.into_inner();
            std::io::Write::flush(&mut out)
        }))
    }
}

/// The app's files relative to its directory, sorted, without gantry's own metadata; no
/// symlink is followed (a container may have planted one in a directory it bind-mounts).
pub(crate) fn list_files(dir: &Path) -> CoreResult<Vec<String>> {
    let mut out = crate::core::safe_fs::walk_files(dir)
        .map_err(|e| CoreError::Failed(format!("cannot read {}: {e}", dir.display())))?;
    out.retain(|rel| rel != super::store::RECORD_FILE);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::testutil::{store_web_app, web_app_container, FakeEngine};

    /// Docker with one app container `web1_main_1` (running or not) and no images (so `up`
    /// fails). compose's stop of it (by id, with its ten-minute grace period) is held, as
    /// for a container ignoring SIGTERM; a stop by name goes through.
    fn fake_with_one_app(running: bool) -> Arc<FakeEngine> {
        let fake = FakeEngine::default();
        fake.add_container(web_app_container(running));
        fake.hold("stop_container_with_timeout c1");
        Arc::new(fake)
    }

    fn apps_with_one_app(state: &Path, fake: Arc<FakeEngine>) -> Arc<Apps> {
        store_web_app(
            state,
            "services:\n  main:\n    image: busybox\n    stop_grace_period: 10m\n",
        );
        Arc::new(Apps::open(fake, state, ImportSettings::default()).unwrap())
    }

    /// A guard against a hang, not a timing assertion.
    const GUARD: Duration = Duration::from_secs(30);

    /// Icons and readmes are read whole: capped, and never through a symlink a container
    /// planted in its app directory.
    #[tokio::test]
    async fn small_files_are_capped_and_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("shadow"), "host secret").unwrap();
        std::fs::write(dir.path().join("README.md"), "# hi").unwrap();
        let read = |name: &str| Apps::read_small_file(dir.path().join(name));
        assert_eq!(read("README.md").await.unwrap(), b"# hi");
        std::os::unix::fs::symlink(outside.path().join("shadow"), dir.path().join("icon.svg"))
            .unwrap();
        let e = read("icon.svg").await.unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let big = std::fs::File::create(dir.path().join("icon.png")).unwrap();
        big.set_len(MAX_SMALL_FILE_BYTES + 1).unwrap();
        let e = read("icon.png").await.unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
    }

    #[tokio::test]
    async fn a_cancelled_stop_finishes_dockers_stop_and_never_leaves_the_app_busy() {
        let state = tempfile::tempdir().unwrap();
        let fake = fake_with_one_app(true);
        let apps = apps_with_one_app(state.path(), fake.clone());
        let id = AppId::from("web:1");
        let cancel = CancellationToken::new();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let op = {
            let (apps, id, cancel, lines) =
                (apps.clone(), id.clone(), cancel.clone(), lines.clone());
            tokio::spawn(async move {
                let on_line = move |l: &str| lines.lock().unwrap().push(l.to_string());
                apps.stop(&id, StopOptions::default(), &cancel, &on_line)
                    .await
            })
        };
        // Held in the stop of the container (its grace period is ten minutes).
        tokio::time::timeout(GUARD, fake.reached("stop_container_with_timeout c1"))
            .await
            .expect("the stop never reached the container");
        assert!(apps.is_busy(&id));
        assert!(matches!(
            apps.stop(
                &id,
                StopOptions::default(),
                &CancellationToken::new(),
                &|_| {}
            )
            .await,
            Err(CoreError::Busy(_))
        ));
        cancel.cancel();
        let result = tokio::time::timeout(GUARD, op).await.unwrap().unwrap();
        // The stop Docker had begun is finished at once, so it cannot kill the container
        // after the rollback; `up` then fails in this fake, which is reported, not hidden.
        let log = fake.calls_to(&["stop_container_with_timeout", "remove_container"]);
        assert_eq!(
            log,
            [
                "stop_container_with_timeout c1 600",
                "stop_container_with_timeout web1_main_1 0"
            ],
            "{log:?}"
        );
        let lines = lines.lock().unwrap().clone();
        assert!(
            lines.contains(&"Cancelled: starting again what was stopped".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"Finishing the stop Docker started for web1_main_1".to_string()),
            "{lines:?}"
        );
        match result {
            Err(CoreError::Failed(m)) => assert!(m.contains("could not be started again"), "{m}"),
            other => panic!("expected the failed restart, got {other:?}"),
        }
        assert!(!apps.is_busy(&id));
    }

    #[tokio::test]
    async fn a_stop_of_a_stopped_app_cancelled_restarts_nothing() {
        let state = tempfile::tempdir().unwrap();
        let fake = fake_with_one_app(false);
        let apps = apps_with_one_app(state.path(), fake.clone());
        let id = AppId::from("web:1");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let lines = Mutex::new(Vec::<String>::new());
        let on_line = |l: &str| lines.lock().unwrap().push(l.to_string());
        let result = apps
            .stop(&id, StopOptions::default(), &cancel, &on_line)
            .await;
        match result {
            Err(CoreError::Cancelled(m)) => assert!(m.contains("not running before"), "{m}"),
            other => panic!("expected Cancelled, got {other:?}"),
        }
        assert_eq!(
            *lines.lock().unwrap(),
            ["Cancelled: the app was not running before"]
        );
        assert!(!apps.is_busy(&id));
        assert!(fake
            .calls_to(&["stop_container_with_timeout", "stop_container"])
            .is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_refresh_of_all_apps_ends_with_refresh_false_and_frees_the_slot() {
        let state = tempfile::tempdir().unwrap();
        let fake = fake_with_one_app(false);
        fake.hold("list_containers_filtered");
        let apps = apps_with_one_app(state.path(), fake.clone());
        let mut events = apps.events().subscribe(CancellationToken::new());
        assert!(apps.begin_refresh_all());
        assert!(
            !apps.begin_refresh_all(),
            "a second refresh-all was accepted"
        );
        let cancel = CancellationToken::new();
        let op = {
            let (apps, cancel) = (apps.clone(), cancel.clone());
            tokio::spawn(async move { apps.refresh_all(&cancel).await })
        };
        // Held reading the app's containers.
        tokio::time::timeout(GUARD, fake.reached("list_containers_filtered"))
            .await
            .expect("the refresh never asked Docker");
        assert!(apps.is_refreshing_all());
        cancel.cancel();
        tokio::time::timeout(GUARD, op).await.unwrap().unwrap();
        assert!(!apps.is_refreshing_all());
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let e = tokio::time::timeout(GUARD, events.next())
                .await
                .expect("no event")
                .expect("subscription ended");
            match &*e {
                AppEvent::Refresh(b) => seen.push(*b),
                other => panic!("no App event expected from a cancelled refresh: {other:?}"),
            }
        }
        assert_eq!(seen, [true, false]);
        assert!(!apps.is_busy(&AppId::from("web:1")));
        assert!(apps.begin_refresh_all());
    }
}
