//! Long operations on app instances beyond start and stop: rebuild, update, snapshot,
//! purge, provision, backup, and the console (logs followed, a command run). Each reports
//! its output lines as [`OutputLine`]s.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::apps::{lines, AppOperation, OutputLine};
use super::{Operation, Start, Summary};
use crate::core::apps::import::{ImportOptions, ImportProgress};
use crate::core::apps::lifecycle::{LineFn, RemoveOptions};
use crate::core::apps::snapshots::{SnapshotInfo, Snapshots};
use crate::core::apps::store::StoredApp;
use crate::core::apps::AppId;
use crate::core::tasks::TaskKind;
use crate::core::{fetch, Core, CoreError, CoreResult};

pub type LineOperation<T> = Operation<OutputLine, T>;

impl Core {
    /// Recreates the app's containers from its stored definition; see
    /// [`crate::core::apps::lifecycle::Apps::rebuild`].
    pub fn rebuild_app(self: &Arc<Self>, id: AppId, start: &Start) -> CoreResult<AppOperation> {
        let app = id.to_string();
        self.operation(
            TaskKind::Rebuild,
            Some(&app),
            start,
            |core, r, cancel| async move { core.apps.rebuild(&id, &cancel, &lines(r)).await },
        )
    }

    /// Pulls newer images and recreates what changed, rolling back a service that does not
    /// become healthy; see [`crate::core::apps::lifecycle::Apps::update`].
    pub fn update_app(self: &Arc<Self>, id: AppId, start: &Start) -> CoreResult<AppOperation> {
        let app = id.to_string();
        self.operation(
            TaskKind::Update,
            Some(&app),
            start,
            |core, r, cancel| async move { core.apps.update(&id, &cancel, &lines(r)).await },
        )
    }

    /// Stops the app and deletes it with its images and volumes.
    pub fn purge_app(self: &Arc<Self>, id: AppId, start: &Start) -> CoreResult<LineOperation<()>> {
        let app = id.to_string();
        self.operation(
            TaskKind::Purge,
            Some(&app),
            start,
            |core, r, cancel| async move { core.apps.purge(&id, &cancel, &lines(r)).await },
        )
    }

    /// Writes a snapshot of the app (its export with images) into the snapshots directory.
    pub fn snapshot_app(
        self: &Arc<Self>,
        id: AppId,
        start: &Start,
    ) -> CoreResult<LineOperation<SnapshotInfo>> {
        let snapshots = self.snapshot_dir()?;
        let app = id.to_string();
        self.operation(
            TaskKind::Snapshot,
            Some(&app),
            start,
            |core, r, cancel| async move {
                core.apps.get(&id).await?;
                snapshots
                    .snapshot(&core.apps, &id, &cancel, &lines(r))
                    .await
            },
        )
    }

    /// Writes a backup: a snapshot of every app; the oldest backups beyond the configured
    /// number are removed.
    pub fn backup_apps(
        self: &Arc<Self>,
        start: &Start,
    ) -> CoreResult<LineOperation<Vec<SnapshotInfo>>> {
        let snapshots = self.snapshot_dir()?;
        self.operation(
            TaskKind::Backup,
            None,
            start,
            |core, r, cancel| async move { snapshots.backup(&core.apps, &cancel, &lines(r)).await },
        )
    }

    fn snapshot_dir(&self) -> CoreResult<Arc<Snapshots>> {
        self.snapshots
            .clone()
            .ok_or_else(|| CoreError::Invalid("no snapshots directory is configured".into()))
    }

    /// Follows the app's logs until cancelled (or its containers stop).
    pub fn follow_app_logs(
        self: &Arc<Self>,
        id: AppId,
        start: &Start,
    ) -> CoreResult<LineOperation<()>> {
        let app = id.to_string();
        self.operation(
            TaskKind::Logs,
            Some(&app),
            start,
            |core, r, cancel| async move { core.apps.follow_logs(&id, &cancel, &lines(r)).await },
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
        let app = id.to_string();
        self.operation(
            TaskKind::Exec,
            Some(&app),
            start,
            |core, r, cancel| async move {
                let out = lines(r);
                core.apps
                    .exec(&id, &service, &cmd, stdin, &cancel, &out)
                    .await
            },
        )
    }

    /// Imports the app bundle at `bundle` (a path on the device or an `http://` URL) through
    /// the import's checks and starts it. The bundle must hold the app `slug` (its id or
    /// project slug). Failed or cancelled, nothing of the app stays.
    pub fn provision_app(
        self: &Arc<Self>,
        slug: String,
        bundle: String,
        start: &Start,
    ) -> CoreResult<LineOperation<AppId>> {
        let app = slug.clone();
        self.operation(TaskKind::Provision, Some(&app), start, |core, r, cancel| async move {
            core.provision(&slug, &bundle, &cancel, &lines(r)).await
        })
    }

    async fn provision(
        &self,
        slug: &str,
        bundle: &str,
        cancel: &CancellationToken,
        on_line: LineFn<'_>,
    ) -> CoreResult<AppId> {
        let id = self
            .import_bundle(bundle, cancel, on_line)
            .await?
            .id()
            .clone();
        if id.as_str() != slug && id.slug() != slug {
            self.unprovision(&id, on_line).await;
            return Err(CoreError::Invalid(format!(
                "the bundle holds the app {id}, not \"{slug}\"; it was not kept"
            )));
        }
        let started = self.apps.start(&id, cancel, on_line).await;
        let failure = match started {
            Ok(outcome) if outcome.success => return Ok(id),
            Ok(outcome) => CoreError::Failed(format!(
                "{id} did not start: {}",
                outcome.lines.last().map_or("", String::as_str)
            )),
            Err(e) => e,
        };
        self.unprovision(&id, on_line).await;
        let message = format!("{failure}; {id} was removed again");
        Err(match failure.kind() {
            crate::core::ErrorKind::Cancelled => CoreError::Cancelled(message),
            _ => CoreError::Failed(message),
        })
    }

    /// Removes an app a provision imported, with its images and volumes.
    async fn unprovision(&self, id: &AppId, on_line: LineFn<'_>) {
        on_line(&format!("Removing {id}"));
        let all = RemoveOptions {
            force: true,
            remove_images: true,
            remove_volumes: true,
        };
        if let Err(e) = self.apps.remove(id, all).await {
            on_line(&format!("Removing {id} failed: {e}"));
        }
    }

    /// Imports the bundle at a path or an `http://` URL (streamed into the import as it
    /// downloads).
    async fn import_bundle(
        &self,
        bundle: &str,
        cancel: &CancellationToken,
        on_line: LineFn<'_>,
    ) -> CoreResult<StoredApp> {
        let progress = |p: ImportProgress| {
            if !matches!(p, ImportProgress::ImageBytes { .. }) {
                on_line(&p.step());
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
            return self.apps.import(path, options, cancel, &progress).await;
        }
        let max = self.apps.max_upload_bytes();
        on_line(&format!("Downloading {bundle}"));
        let download = tokio::select! {
            _ = cancel.cancelled() => {
                return Err(CoreError::Cancelled("the provision was cancelled".into()))
            }
            d = fetch::get(bundle, max) => d?,
        };
        let (file, sender, reader) = self.apps.upload_pipe()?;
        let length = download.length;
        let pump = async {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = download.pump(sender, max) => {}
            }
        };
        let import =
            self.apps
                .import_upload(file.path(), reader, length, options, cancel, &progress);
        match tokio::join!(import, pump).0 {
            // The download was stopped by the cancel: the import saw its end first.
            Err(_) if cancel.is_cancelled() => Err(CoreError::Cancelled(
                "the provision was cancelled during the download; the import was rolled back"
                    .into(),
            )),
            r => r,
        }
    }
}
