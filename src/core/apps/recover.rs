//! Interrupted app operations: the intents the apps service records (import, image load,
//! start, stop, delete, refresh of all apps, the app instances' operations, and the
//! templates' imports, builds and instantiations) and the rule that resolves each one left
//! by a crash, or by an operation that Docker's going away kept from settling.
//!
//! The rules (docs/DECISIONS.md, "Interrupted operations"): a crash counts as the client
//! leaving for good, so each kind ends as its client-gone policy says. An import or image
//! load is rolled back (the images it noted are removed unless a stored app or template uses
//! them, including any that Docker finishes loading after the restart); a start, stop or
//! delete is finished (one that was being cancelled is undone instead); a refresh only read.
//! A template's build or instantiation cannot be carried on (Docker stopped the build with
//! its connection): it ends as a cancelled one, the images it created removed, unless the
//! instance was stored (then they are the stored app's).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::lifecycle::{Apps, BusyGuard, LineFn, RemoveOptions, StopOptions};
use super::store::{AppStore, StoredApp};
use super::AppId;
use crate::core::engine::{ContainerEngine, EngineError};
use crate::core::recovery::{self, Intent, IntentKind, IntentLog, Pending, Record};
use crate::core::{CoreResult, ErrorKind};

/// The operations whose intent the apps service records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppOp {
    Import,
    LoadImage,
    Start,
    Stop,
    Delete,
    Refresh,
    Rebuild,
    Update,
    Purge,
    Snapshot,
    Backup,
    Provision,
    /// A template's build (the images it created are noted).
    Build,
    /// A template's instantiation (its build's images noted; the instance is the app).
    Instantiate,
}

impl IntentKind for AppOp {}

pub type AppIntents = IntentLog<AppOp>;
pub type AppIntent = Intent<AppOp>;

/// How one resolution went.
enum Outcome {
    Resolved,
    /// Images that are not (yet) there: watched until no load of them can be in flight.
    Watch(Vec<String>),
}

impl Apps {
    /// Resolves every pending intent by its kind's rule, oldest first; run at start before
    /// anything is served, then by [`crate::core::recovery::resolve_pending`] whenever one is
    /// left. With Docker
    /// unreachable nothing is done: the apps concerned stay busy until it answers.
    pub async fn recover(&self) -> CoreResult<()> {
        if !self.intents.has_pending() && !self.legacy_journals.exists() {
            return Ok(());
        }
        if let Err(e) = self.engine.version().await {
            tracing::warn!(error = %e, "interrupted operations are recovered once Docker answers");
            return Ok(());
        }
        self.recover_legacy_journals().await?;
        for p in self.intents.take_pending() {
            let (kind, app) = (p.record.kind, p.record.app.clone().unwrap_or_default());
            tracing::info!(operation = %kind.name(), app = %app, "recovering an interrupted operation");
            let outcome = self.resolve_intent(&p.record).await;
            self.conclude(p, outcome);
        }
        Ok(())
    }

    async fn resolve_intent(&self, r: &Record<AppOp>) -> CoreResult<Outcome> {
        match r.kind {
            AppOp::Import | AppOp::LoadImage => self.remove_noted_images(r).await,
            AppOp::Build | AppOp::Instantiate => self.undo_build(r).await,
            AppOp::Start => self.finish_start(r).await,
            AppOp::Stop => self.finish_stop(r).await,
            AppOp::Delete | AppOp::Purge | AppOp::Provision => self.finish_removal(r).await,
            AppOp::Rebuild => self.finish_rebuild(r).await,
            AppOp::Update => self.undo_update(r).await,
            // They only read, or wrote under temp names that the start-up removed.
            AppOp::Refresh | AppOp::Snapshot | AppOp::Backup => Ok(Outcome::Resolved),
        }
    }

    fn conclude(&self, p: Pending<AppOp>, outcome: CoreResult<Outcome>) {
        let app = p.record.app.clone();
        self.release(p, outcome);
        if let Some(app) = app {
            self.unmark_recovered(&app);
        }
    }

    fn release(&self, p: Pending<AppOp>, outcome: CoreResult<Outcome>) {
        match outcome {
            Ok(Outcome::Watch(ids)) => {
                let (engine, store) = (self.engine.clone(), self.store().clone());
                let templates = self.template_store.clone();
                let intents = self.intents.clone();
                let watching = self.cleanups.begin();
                tokio::spawn(async move {
                    watch_loads(engine.as_ref(), (&store, &templates), ids).await;
                    intents.release(p, true);
                    drop(watching);
                });
            }
            other => recovery::conclude(&self.intents, p, other.map(|_| ())),
        }
    }

    /// The stored app an intent names, None when it is not (or no longer) stored.
    fn app_of(&self, r: &Record<AppOp>) -> Option<StoredApp> {
        let id = AppId::from(r.app.as_deref()?);
        self.store().get(&id).ok()
    }

    /// The app an intent names (None when it is not stored), claimed for the recovery.
    fn claim_for(&self, r: &Record<AppOp>) -> Option<(StoredApp, BusyGuard<'_>)> {
        let app = self.app_of(r)?;
        let busy = self.claim_recovery(app.id());
        Some((app, busy))
    }

    /// A start: `up`; when that fails, `down` (never half started). A start that was being
    /// cancelled is undone instead.
    async fn finish_start(&self, r: &Record<AppOp>) -> CoreResult<Outcome> {
        let Some((app, _busy)) = self.claim_for(r) else {
            return Ok(Outcome::Resolved);
        };
        let log = log_lines(app.id());
        match r.data.contains_key("undo") {
            true => self.undo_start(&app, &log).await?,
            false => self.up_or_down(&app, &log).await?,
        }
        self.fetch_after(app.id(), false).await;
        Ok(Outcome::Resolved)
    }

    async fn up_or_down(&self, app: &StoredApp, log: LineFn<'_>) -> CoreResult<()> {
        let project = self.project(app)?;
        match project.up(self.engine.as_ref(), log).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::Unavailable => Err(e.into()),
            Err(e) => {
                tracing::warn!(app = %app.id(), error = %e, "the interrupted operation cannot start the app; stopping it");
                self.down(app, false, false, log).await.map(|_| ())
            }
        }
    }

    /// A stop: `down` with its options. A stop that was being cancelled is undone instead
    /// (the app started again when it ran before).
    async fn finish_stop(&self, r: &Record<AppOp>) -> CoreResult<Outcome> {
        let Some((app, _busy)) = self.claim_for(r) else {
            return Ok(Outcome::Resolved);
        };
        let log = log_lines(app.id());
        let options: StopOptions = r.get("options").unwrap_or_default();
        match undo_of(r) {
            Some(was_running) => self.undo_stop(&app, was_running, &[], &log).await?,
            None => {
                let (rmi, volumes) = (options.remove_images, options.remove_volumes);
                self.down(&app, rmi, volumes, &log).await?;
            }
        }
        self.fetch_after(app.id(), true).await;
        Ok(Outcome::Resolved)
    }

    /// A rebuild: done again (`down`, then `up`; when that fails, `down`). One that was being
    /// cancelled is undone instead.
    async fn finish_rebuild(&self, r: &Record<AppOp>) -> CoreResult<Outcome> {
        let Some((app, _busy)) = self.claim_for(r) else {
            return Ok(Outcome::Resolved);
        };
        let log = log_lines(app.id());
        match undo_of(r) {
            Some(was_running) => self.undo_rebuild(&app, was_running, &log).await?,
            None => {
                self.down(&app, false, false, &log).await?;
                self.up_or_down(&app, &log).await?;
            }
        }
        self.fetch_after(app.id(), false).await;
        Ok(Outcome::Resolved)
    }

    /// An update: rolled back as a failed one (the references get their previous images,
    /// the app runs again when it ran, the pulled images go), unless it was complete.
    async fn undo_update(&self, r: &Record<AppOp>) -> CoreResult<Outcome> {
        let committed = r.get::<bool>("committed").unwrap_or(false);
        // Interrupted before it looked at anything (or complete): nothing to undo.
        let previous = r.get::<super::update::Previous>("previous");
        let (Some(previous), false) = (previous, committed) else {
            return Ok(Outcome::Resolved);
        };
        let Some((app, _busy)) = self.claim_for(r) else {
            return Ok(Outcome::Resolved);
        };
        let log = log_lines(app.id());
        let pulled: Vec<(String, String)> = r.get("pulled").unwrap_or_default();
        self.retag_previous(&previous, &log).await;
        if r.get::<bool>("was_running").unwrap_or(false) {
            self.up_until_running(&app, "the interrupted update", &log)
                .await?;
        }
        self.remove_pulled(&previous, &pulled, &log).await;
        self.fetch_after(app.id(), true).await;
        Ok(Outcome::Resolved)
    }

    /// A delete, a purge or a provision: the app removed (a purge or provision with its
    /// images and volumes). A purge that was being cancelled while it stopped is undone
    /// instead, as a cancelled stop.
    async fn finish_removal(&self, r: &Record<AppOp>) -> CoreResult<Outcome> {
        if r.kind == AppOp::Purge && undo_of(r).is_some() {
            return self.finish_stop(r).await;
        }
        let Some((app, _busy)) = self.claim_for(r) else {
            return Ok(Outcome::Resolved);
        };
        let result = match r.kind {
            AppOp::Delete => {
                let options: RemoveOptions = r.get("options").unwrap_or_default();
                self.remove_claimed(&app, options).await
            }
            AppOp::Purge => self.finish_purge(&app).await,
            _ => self.remove_claimed(&app, RemoveOptions::everything()).await,
        };
        self.removed_with(app.id(), result, false).await?;
        Ok(Outcome::Resolved)
    }

    async fn finish_purge(&self, app: &StoredApp) -> CoreResult<()> {
        let stop = super::maintain::PURGE_STOP;
        let log = log_lines(app.id());
        self.down(app, stop.remove_images, stop.remove_volumes, &log)
            .await?;
        self.remove_stopped(app, RemoveOptions::everything()).await
    }

    /// A template's build or instantiation: undone as a cancelled build, with what Docker
    /// built on after the crash, unless a stored app (the instance) uses what it built.
    async fn undo_build(&self, r: &Record<AppOp>) -> CoreResult<Outcome> {
        let noted: Vec<String> = r.get("images").unwrap_or_default();
        let in_use = images_in_use(self.store(), &self.template_store)?;
        if !noted.iter().any(|id| used(&in_use, id)) {
            crate::core::templates::build::undo_interrupted(self.engine.as_ref(), &noted).await?;
        }
        Ok(Outcome::Resolved)
    }

    /// An import or image load: the images it noted, except those a stored app uses.
    /// Images not there (yet) are watched: Docker may still be loading them.
    async fn remove_noted_images(&self, r: &Record<AppOp>) -> CoreResult<Outcome> {
        let ids: Vec<String> = r.get("images").unwrap_or_default();
        let in_use = images_in_use(self.store(), &self.template_store)?;
        let mut missing = Vec::new();
        let ids = super::import::removal_order(&ids);
        // What the removals so far untagged or deleted (an image goes with its last tag).
        let mut gone = HashSet::new();
        for id in ids.iter().filter(|id| !used(&in_use, id)) {
            match self.engine.remove_image(id, false).await {
                Ok(items) => {
                    tracing::info!(image = %id, "removed an image of an interrupted operation");
                    let items = items.into_iter().flat_map(|i| [i.deleted, i.untagged]);
                    gone.extend(items.flatten());
                }
                Err(EngineError::NotFound(_)) if gone.contains(id) => {}
                Err(EngineError::NotFound(_)) => missing.push(id.clone()),
                Err(e @ EngineError::Unavailable(_)) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(image = %id, error = %e, "cannot remove an image of an interrupted operation")
                }
            }
        }
        Ok(match missing.is_empty() {
            true => Outcome::Resolved,
            false => Outcome::Watch(missing),
        })
    }

    /// Waits until the recovery no longer watches for images Docker may still create (or
    /// until `cancel`). An import or image load waits for this before it begins: it could
    /// load one of those images again, and the watch would remove it from under it.
    pub async fn after_cleanups(&self, cancel: &CancellationToken) {
        let mut count = self.cleanups.0.subscribe();
        if *count.borrow() > 0 {
            tracing::info!("waiting for the clean-up after an interrupted import or image load");
        }
        tokio::select! {
            _ = count.wait_for(|n| *n == 0) => {}
            _ = cancel.cancelled() => {}
        }
    }

    /// Images of imports interrupted under an earlier version (`import-journal/`).
    async fn recover_legacy_journals(&self) -> CoreResult<()> {
        if self.legacy_journals.exists() {
            let in_use = images_in_use(self.store(), &self.template_store)?;
            super::import::recover_journals(self.engine.as_ref(), &self.legacy_journals, &in_use)
                .await;
            let _ = std::fs::remove_dir(&self.legacy_journals);
        }
        Ok(())
    }
}

/// Every image id and reference a stored app or template recorded.
fn images_in_use(store: &AppStore, templates: &Path) -> CoreResult<HashSet<String>> {
    let mut apps = store.list()?;
    if let Some(templates) = AppStore::existing(templates) {
        apps.extend(templates.list()?);
    }
    Ok(apps
        .into_iter()
        .flat_map(|a| a.record.images)
        .flat_map(|i| std::iter::once(i.id).chain(i.references))
        .collect())
}

/// Whether a stored app or template uses the image `id`: a full id or reference, or the
/// short id a build reports (a stored instance records its images' full ids).
fn used(in_use: &HashSet<String>, id: &str) -> bool {
    in_use.contains(id)
        || (!id.contains(':')
            && in_use
                .iter()
                .filter_map(|u| u.strip_prefix("sha256:"))
                .any(|full| full.starts_with(id)))
}

/// Whether the operation was being undone (cancelled) when it was interrupted, and whether
/// the app ran before it.
fn undo_of(r: &Record<AppOp>) -> Option<bool> {
    let undo: Value = r.get("undo")?;
    Some(undo["was_running"] == true)
}

/// Where a recovery's compose lines go: gantry's log.
fn log_lines(id: &AppId) -> impl Fn(&str) + Send + Sync + '_ {
    move |line: &str| tracing::info!(app = %id, "recovery: {line}")
}

/// How many watches for images of interrupted operations run ([`watch_loads`]).
pub struct Cleanups(tokio::sync::watch::Sender<usize>);

impl Default for Cleanups {
    fn default() -> Self {
        Self(tokio::sync::watch::channel(0).0)
    }
}

impl Cleanups {
    /// One more watch, until the guard is dropped.
    fn begin(&self) -> Watching {
        self.0.send_modify(|n| *n += 1);
        Watching(self.0.clone())
    }
}

/// A watch in progress (see [`Cleanups`]).
struct Watching(tokio::sync::watch::Sender<usize>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// How often the watch of loads in flight looks again.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// The longest a watch lasts while Docker still loads something.
const WATCH_LIMIT: Duration = Duration::from_secs(300);
/// How long a watch lasts when the loads in flight cannot be seen (Docker's data directory
/// is not readable from here).
const WATCH_BLIND: Duration = Duration::from_secs(60);

/// Removes each of `ids` that Docker creates while a load may still be in flight: until no
/// load is (Docker's `tmp/docker-import-*` directories are gone, seen twice in a row), at
/// most [`WATCH_LIMIT`], or [`WATCH_BLIND`] when they cannot be seen.
pub(super) async fn watch_loads(
    engine: &dyn ContainerEngine,
    (store, templates): (&AppStore, &Path),
    mut ids: Vec<String>,
) {
    let tmp = engine
        .data_root()
        .await
        .ok()
        .flatten()
        .map(|r| r.join("tmp"));
    let visible = tmp.as_deref().and_then(loads_in_flight).is_some();
    let started = Instant::now();
    let limit = if visible { WATCH_LIMIT } else { WATCH_BLIND };
    let mut quiet = 0;
    while !ids.is_empty() && quiet < 2 {
        tokio::time::sleep(WATCH_EVERY).await;
        let in_use = images_in_use(store, templates).unwrap_or_default();
        ids.retain(|id| !used(&in_use, id));
        remove_present(engine, &mut ids).await;
        match tmp.as_deref().and_then(loads_in_flight) {
            Some(false) => quiet += 1,
            _ => quiet = 0,
        }
        if started.elapsed() >= limit {
            tracing::warn!(images = ?ids, "stopped watching for images of an interrupted operation");
            return;
        }
    }
    remove_present(engine, &mut ids).await;
}

/// Removes those of `ids` that are there now, and forgets them.
async fn remove_present(engine: &dyn ContainerEngine, ids: &mut Vec<String>) {
    let mut left = Vec::new();
    for id in ids.drain(..) {
        match engine.remove_image(&id, false).await {
            Ok(_) => {
                tracing::info!(image = %id, "removed an image Docker loaded after an interrupted operation")
            }
            Err(EngineError::NotFound(_)) => left.push(id),
            Err(e) => {
                tracing::warn!(image = %id, error = %e, "cannot remove an image of an interrupted operation")
            }
        }
    }
    *ids = left;
}

/// Whether Docker has a load in flight (a `docker-import-*` directory in its `tmp`); None
/// when that cannot be read.
fn loads_in_flight(tmp: &Path) -> Option<bool> {
    let mut entries = std::fs::read_dir(tmp).ok()?;
    Some(entries.any(|e| {
        e.is_ok_and(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("docker-import-")
        })
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Map;

    use super::*;
    use crate::core::apps::import::ImportSettings;
    use crate::core::recovery::noted;
    use crate::testutil::{store_web_app, web_app_container, FakeEngine};

    const COMPOSE: &str = "services:\n  main:\n    image: busybox\n";

    /// The app `web:1` stored in `state`, and an intent of `kind` on it that a crash left.
    fn crashed_in(state: &Path, kind: AppOp, data: Map<String, Value>) {
        store_web_app(state, COMPOSE);
        let log = AppIntents::open(&state.join("intents")).unwrap();
        let intent = log.begin(kind, Some("web:1"), data).unwrap();
        // Never ended: what a SIGKILL leaves.
        std::mem::forget(intent);
    }

    fn open(state: &Path, fake: Arc<FakeEngine>) -> Apps {
        Apps::open(fake, state, ImportSettings::default()).unwrap()
    }

    fn running(fake: &FakeEngine) -> Vec<String> {
        let all = fake.containers();
        all.into_iter()
            .filter(|c| c.pid.is_some())
            .map(|c| c.name)
            .collect()
    }

    #[tokio::test]
    async fn an_interrupted_start_is_finished_and_the_app_freed() {
        let state = tempfile::tempdir().unwrap();
        crashed_in(state.path(), AppOp::Start, Map::new());
        let fake = Arc::new(FakeEngine::with_images(&["busybox"]));
        let apps = open(state.path(), fake.clone());
        let id = AppId::from("web:1");
        assert!(apps.is_busy(&id), "busy until recovered");
        assert!(matches!(apps.claim(&id, "started"), Err(e) if e.kind() == ErrorKind::Busy));
        apps.recover().await.unwrap();
        assert_eq!(running(&fake), ["web1_main_1"]);
        assert!(!apps.is_busy(&id));
        assert!(!apps.intents().has_pending());
    }

    /// Docker with `web1_main_1` (running or not) after a crash left an intent of `kind` on
    /// `web:1`, recovered.
    async fn recovered(
        kind: AppOp,
        data: Map<String, Value>,
        running: bool,
    ) -> (Apps, Arc<FakeEngine>, tempfile::TempDir) {
        let state = tempfile::tempdir().unwrap();
        crashed_in(state.path(), kind, data);
        let fake = Arc::new(FakeEngine::with_images(&["busybox"]));
        fake.add_container(web_app_container(running));
        let apps = open(state.path(), fake.clone());
        apps.recover().await.unwrap();
        assert!(!apps.intents().has_pending());
        (apps, fake, state)
    }

    #[tokio::test]
    async fn an_interrupted_stop_is_finished_with_its_options() {
        let options = StopOptions {
            remove_images: false,
            remove_volumes: true,
        };
        let (_, fake, _state) = recovered(AppOp::Stop, noted("options", options), true).await;
        assert!(fake.containers().is_empty(), "{:?}", fake.containers());
    }

    #[tokio::test]
    async fn a_start_that_was_being_cancelled_is_undone() {
        let (_, fake, _state) = recovered(AppOp::Start, noted("undo", true), true).await;
        assert!(fake.containers().is_empty());
    }

    #[tokio::test]
    async fn an_interrupted_delete_is_finished() {
        let options = RemoveOptions {
            force: true,
            remove_images: true,
            remove_volumes: true,
        };
        let (apps, fake, _state) = recovered(AppOp::Delete, noted("options", options), false).await;
        assert!(fake.containers().is_empty());
        let left = apps.list().await.unwrap();
        assert!(left.is_empty(), "the app is still stored");
    }

    #[tokio::test]
    async fn an_interrupted_rebuild_is_done_again_and_the_app_runs() {
        let (apps, fake, _state) = recovered(AppOp::Rebuild, Map::new(), false).await;
        assert_eq!(running(&fake), ["web1_main_1"]);
        assert!(!apps.is_busy(&AppId::from("web:1")));
    }

    #[tokio::test]
    async fn a_rebuild_that_was_being_cancelled_is_undone() {
        let undo = noted("undo", serde_json::json!({ "was_running": false }));
        let (_, fake, _state) = recovered(AppOp::Rebuild, undo, true).await;
        assert!(fake.containers().is_empty());
    }

    #[tokio::test]
    async fn interrupted_purges_and_provisions_leave_no_app() {
        for kind in [AppOp::Purge, AppOp::Provision] {
            let (apps, fake, _state) = recovered(kind, Map::new(), true).await;
            assert!(fake.containers().is_empty(), "{kind:?}");
            assert!(
                apps.list().await.unwrap().is_empty(),
                "{kind:?}: still listed"
            );
            assert!(
                apps.store().list().unwrap().is_empty(),
                "{kind:?}: still stored"
            );
        }
    }

    #[tokio::test]
    async fn a_purge_that_was_being_cancelled_runs_the_app_again() {
        let undo = noted("undo", serde_json::json!({ "was_running": true }));
        let (apps, fake, _state) = recovered(AppOp::Purge, undo, false).await;
        assert_eq!(running(&fake), ["web1_main_1"]);
        assert_eq!(apps.store().list().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_interrupted_update_is_rolled_back_unless_it_was_complete() {
        let mut data = noted(
            "previous",
            serde_json::json!({ "busybox": "sha256:busybox" }),
        );
        data.insert("was_running".into(), true.into());
        let (_, fake, _state) = recovered(AppOp::Update, data.clone(), false).await;
        assert_eq!(running(&fake), ["web1_main_1"], "runs again as before");
        data.insert("committed".into(), true.into());
        let (_, fake, _state) = recovered(AppOp::Update, data, false).await;
        assert!(running(&fake).is_empty(), "a complete update is kept");
    }

    #[test]
    fn a_builds_short_image_id_is_used_by_the_full_id_a_stored_instance_records() {
        let in_use: HashSet<String> = ["sha256:0123abcd4567".to_string(), "web:1".to_string()]
            .into_iter()
            .collect();
        assert!(used(&in_use, "0123abcd"));
        assert!(used(&in_use, "web:1"));
        assert!(!used(&in_use, "4567"));
        assert!(!used(&in_use, "web:2"));
    }

    #[tokio::test]
    async fn snapshots_and_backups_leave_nothing_to_do() {
        for kind in [AppOp::Snapshot, AppOp::Backup] {
            let (apps, fake, _state) = recovered(kind, Map::new(), true).await;
            assert_eq!(running(&fake), ["web1_main_1"], "{kind:?}");
            assert_eq!(apps.store().list().unwrap().len(), 1, "{kind:?}");
        }
    }

    #[tokio::test]
    async fn with_docker_away_nothing_is_resolved_and_the_app_stays_busy() {
        let state = tempfile::tempdir().unwrap();
        crashed_in(state.path(), AppOp::Start, Map::new());
        let fake = Arc::new(FakeEngine::with_images(&["busybox"]));
        fake.fail_next("version", EngineError::Unavailable("down".into()));
        let apps = open(state.path(), fake.clone());
        apps.recover().await.unwrap();
        assert!(fake.containers().is_empty());
        assert!(apps.is_busy(&AppId::from("web:1")));
        // Docker is back.
        apps.recover().await.unwrap();
        assert_eq!(running(&fake), ["web1_main_1"]);
        assert!(!apps.is_busy(&AppId::from("web:1")));
    }

    #[tokio::test]
    async fn an_interrupted_import_loses_the_images_it_noted_but_not_an_apps() {
        let state = tempfile::tempdir().unwrap();
        store_web_app(state.path(), COMPOSE);
        let log = AppIntents::open(&state.path().join("intents")).unwrap();
        let intent = log.begin(AppOp::Import, None, Map::new()).unwrap();
        intent
            .note("images", ["sha256:gone", "sha256:new"])
            .unwrap();
        std::mem::forget(intent);
        let fake = Arc::new(FakeEngine::with_images(&["busybox", "sha256:new"]));
        let apps = open(state.path(), fake.clone());
        apps.recover().await.unwrap();
        let removed = fake.calls_to(&["remove_image"]);
        assert!(
            removed.iter().any(|c| c.contains("sha256:new")),
            "{removed:?}"
        );
        // The one Docker never created is watched for a moment (the fake has no data
        // directory, so for WATCH_BLIND at most); it is not removed from the app.
        assert!(apps.list().await.unwrap().len() == 1);
    }

    #[tokio::test]
    async fn imports_wait_while_the_recovery_watches_for_an_image_docker_may_create() {
        let state = tempfile::tempdir().unwrap();
        let log = AppIntents::open(&state.path().join("intents")).unwrap();
        let intent = log.begin(AppOp::Import, None, Map::new()).unwrap();
        intent.note("images", ["late"]).unwrap();
        std::mem::forget(intent);
        let fake = Arc::new(FakeEngine::with_images(&["busybox"]));
        let apps = open(state.path(), fake.clone());
        apps.recover().await.unwrap();
        let wait = Duration::from_millis(600);
        let never = CancellationToken::new();
        let waited = tokio::time::timeout(wait, apps.after_cleanups(&never)).await;
        assert!(waited.is_err(), "an import went ahead during the watch");
        // A cancelled import does not wait (it fails at once).
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        let waited = tokio::time::timeout(wait, apps.after_cleanups(&cancelled)).await;
        assert!(waited.is_ok(), "a cancelled import waited");
        // Docker finishes the load: the watch removes the image and ends.
        fake.add_image("late");
        let waited =
            tokio::time::timeout(Duration::from_secs(5), apps.after_cleanups(&never)).await;
        assert!(
            waited.is_ok(),
            "the watch did not end once the image was removed"
        );
        let images = fake.list_images().await.unwrap();
        assert!(images.iter().all(|i| i.id != "sha256:late"), "{images:?}");
        assert!(!apps.intents().has_pending());
    }
}
