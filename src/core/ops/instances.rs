//! Long operations on app instances beyond start and stop: rebuild, update, snapshot,
//! purge, provision, backup, and the console (logs followed, a command run). Each reports
//! its output lines as [`OutputLine`]s.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::apps::{lines, OutputLine};
use super::{Operation, Start, Summary};
use crate::core::apps::import::{ImportOptions, ImportProgress, ImportStep};
use crate::core::apps::lifecycle::{LineFn, ProcessOutcome, RemoveOptions, Run};
use crate::core::apps::recover::{AppIntent, AppOp};
use crate::core::apps::snapshots::Snapshot;
use crate::core::apps::store::StoredApp;
use crate::core::apps::AppId;
use crate::core::recovery::{crash_point, settle};
use crate::core::tasks::TaskKind;
use crate::core::{fetch, Core, CoreError, CoreResult};

pub type LineOperation<T> = Operation<OutputLine, T>;

/// A provision answers the id of the app it imported and started.
pub type Provisioning = LineOperation<AppId>;

/// What to provision: the app (its id or project slug) and where its bundle is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provision {
    pub slug: String,
    /// A path on the device or an `http://` URL of an app ZIP.
    pub bundle: String,
}

/// What an operation on one app answers.
#[derive(Debug)]
pub enum AppDone {
    /// Compose's work: a rebuild or an update.
    Outcome(ProcessOutcome),
    /// A snapshot written (its name and size are in the output), a purge, or logs followed
    /// to their end.
    Done,
}

impl Core {
    /// Starts the operation `kind` on the app `id`: a rebuild (its containers recreated from
    /// its stored definition), an update (newer images, rolled back when a service does not
    /// become healthy), a snapshot (its export with images into the snapshots directory), a
    /// purge (stopped and deleted with its images and volumes) or its logs followed until
    /// cancelled. See the methods of [`crate::core::apps::lifecycle::Apps`] of those names.
    pub fn app_operation(
        self: &Arc<Self>,
        kind: TaskKind,
        id: AppId,
        start: &Start,
    ) -> CoreResult<LineOperation<AppDone>> {
        use TaskKind::{Logs, Purge, Rebuild, Snapshot, Update};
        if !matches!(kind, Rebuild | Update | Snapshot | Purge | Logs) {
            return Err(CoreError::Invalid(format!(
                "{kind} is no operation on one app"
            )));
        }
        let snapshots = self.snapshots.clone();
        let app = id.to_string();
        self.operation(kind, Some(&app), start, |core, r, cancel| async move {
            let (apps, out) = (&core.apps, lines(r));
            let run = Run::new(&cancel, &out);
            match kind {
                Rebuild => apps.rebuild(&id, run).await.map(AppDone::Outcome),
                Update => apps.update(&id, run).await.map(AppDone::Outcome),
                Purge => apps.purge(&id, run).await.map(|()| AppDone::Done),
                Logs => apps.follow_logs(&id, run).await.map(|()| AppDone::Done),
                _ => {
                    let dir = snapshots.ok_or_else(|| {
                        CoreError::Invalid("no snapshots directory is configured".into())
                    })?;
                    apps.get(&id).await?;
                    dir.snapshot(apps, &id, run).await?;
                    Ok(AppDone::Done)
                }
            }
        })
    }

    /// Writes a backup: a snapshot of every app; the oldest backups beyond the configured
    /// number are removed.
    pub fn backup_apps(
        self: &Arc<Self>,
        start: &Start,
    ) -> CoreResult<LineOperation<Vec<Snapshot>>> {
        let snapshots = self
            .snapshots
            .clone()
            .ok_or_else(|| CoreError::Invalid("no snapshots directory is configured".into()))?;
        self.operation(
            TaskKind::Backup,
            None,
            start,
            |core, r, cancel| async move {
                snapshots
                    .backup(&core.apps, Run::new(&cancel, &lines(r)))
                    .await
            },
        )
    }

    /// Runs `cmd` in the container of `service`, with `stdin` as its input; answers its exit
    /// code.
    pub fn exec_in_app(
        self: &Arc<Self>,
        id: AppId,
        service: String,
        cmd: Vec<String>,
        stdin: mpsc::Receiver<String>,
        start: &Start,
    ) -> CoreResult<LineOperation<i64>> {
        let app = Some(id.to_string());
        self.operation(
            TaskKind::Exec,
            app.as_deref(),
            start,
            |core, r, c| async move {
                let out = lines(r);
                let run = Run::new(&c, &out);
                core.apps.exec(&id, &service, &cmd, stdin, run).await
            },
        )
    }

    /// Imports the app bundle at `bundle` (a path on the device or an `http://` URL) through
    /// the import's checks and starts it. The bundle must hold the app `slug` (its id or
    /// project slug). Failed or cancelled, nothing of the app stays.
    pub fn provision_app(
        self: &Arc<Self>,
        p: Provision,
        start: &Start,
    ) -> CoreResult<Provisioning> {
        let app = Some(p.slug.clone());
        let kind = TaskKind::Provision;
        self.operation(kind, app.as_deref(), start, |core, r, c| async move {
            let out = lines(r);
            core.provision(&p.slug, &p.bundle, Run::new(&c, &out)).await
        })
    }

    /// A provision with its intent: interrupted, it is rolled back as a failed one (the app
    /// it imported is removed with its images and volumes).
    async fn provision(&self, slug: &str, bundle: &str, run: Run<'_>) -> CoreResult<AppId> {
        let intents = self.apps.intents();
        let intent = intents.begin(AppOp::Provision, Some(slug), Default::default())?;
        crash_point("provision.intent-written");
        let result = self.provision_recorded(slug, bundle, &intent, run).await;
        crash_point("provision.done");
        settle(&intent, &result);
        result
    }

    async fn provision_recorded(
        &self,
        slug: &str,
        bundle: &str,
        intent: &AppIntent,
        run: Run<'_>,
    ) -> CoreResult<AppId> {
        let id = self
            .fetch_and_import(bundle, intent, run)
            .await?
            .id()
            .clone();
        crash_point("provision.imported");
        if id.as_str() != slug && id.slug() != slug {
            self.unprovision(&id, run.out).await;
            return Err(CoreError::Invalid(format!(
                "the bundle holds the app {id}, not \"{slug}\"; it was not kept"
            )));
        }
        let started = self.apps.start(&id, run.cancel, run.out).await;
        let failure = match started {
            Ok(outcome) if outcome.success => return Ok(id),
            Ok(outcome) => CoreError::Failed(format!(
                "{id} did not start: {}",
                outcome.lines.last().map_or("", String::as_str)
            )),
            Err(e) => e,
        };
        self.unprovision(&id, run.out).await;
        let message = format!("{failure}; {id} was removed again");
        Err(match failure.kind() {
            crate::core::ErrorKind::Cancelled => CoreError::Cancelled(message),
            _ => CoreError::Failed(message),
        })
    }

    /// Removes an app a provision imported, with its images and volumes.
    async fn unprovision(&self, id: &AppId, on_line: LineFn<'_>) {
        on_line(&format!("Removing {id}"));
        if let Err(e) = self.apps.remove(id, RemoveOptions::everything()).await {
            on_line(&format!("Removing {id} failed: {e}"));
        }
    }

    /// Imports the bundle at a path or an `http://` URL (streamed into the import as it
    /// downloads).
    /// The import names the app in the provision's intent as soon as it knows it (and knows
    /// it is new: the import refuses an app that exists).
    async fn fetch_and_import(
        &self,
        bundle: &str,
        intent: &AppIntent,
        run: Run<'_>,
    ) -> CoreResult<StoredApp> {
        let progress = |p: ImportProgress| {
            if let ImportProgress::Done {
                step: ImportStep::ParseConfig,
                message,
            } = &p
            {
                let named = message.strip_prefix("app ").map(|id| intent.set_app(id));
                if let Some(Err(e)) = named {
                    tracing::warn!(error = %e, "provision: cannot note the app in its intent");
                }
            }
            if !matches!(p, ImportProgress::ImageBytes { .. }) {
                (run.out)(&p.step());
            }
        };
        let options = ImportOptions::default();
        if !bundle.contains("://") {
            let path = Path::new(bundle);
            if !path.is_absolute() {
                return Err(CoreError::Invalid(format!(
                    "\"{bundle}\" is neither an absolute path nor an http:// URL"
                )));
            }
            return self.apps.import(path, options, run.cancel, &progress).await;
        }
        let max = self.apps.max_upload_bytes();
        (run.out)(&format!("Downloading {bundle}"));
        let download = tokio::select! {
            _ = run.cancel.cancelled() => {
                return Err(CoreError::Cancelled("the provision was cancelled".into()))
            }
            d = fetch::get(bundle, max) => d?,
        };
        let (file, sender, reader) = self.apps.upload_pipe()?;
        let length = download.length;
        let pump = async {
            tokio::select! {
                _ = run.cancel.cancelled() => {}
                _ = download.pump(sender, max) => {}
            }
        };
        let import =
            self.apps
                .import_upload(file.path(), reader, length, options, run.cancel, &progress);
        match tokio::join!(import, pump).0 {
            // The download was stopped by the cancel: the import saw its end first.
            Err(_) if run.cancel.is_cancelled() => Err(CoreError::Cancelled(
                "the provision was cancelled during the download; the import was rolled back"
                    .into(),
            )),
            r => r,
        }
    }
}
