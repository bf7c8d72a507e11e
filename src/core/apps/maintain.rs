//! Maintenance of an app instance: finding it by id or project slug, rebuilding its
//! containers from its stored definition, purging it with its images and volumes.

use std::sync::Mutex;
use std::time::Instant;

use super::lifecycle::{Apps, LineFn, ProcessOutcome, RemoveOptions, Run, StopOptions};
use super::store::StoredApp;
use super::AppId;
use crate::core::{CoreError, CoreResult, ErrorKind};

/// Output lines of an operation, passed on as they come and kept for its outcome.
pub(super) struct Collect<'a> {
    on_line: LineFn<'a>,
    seen: Mutex<Vec<String>>,
}

impl<'a> Collect<'a> {
    pub(super) fn new(on_line: LineFn<'a>) -> Self {
        Self {
            on_line,
            seen: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn line(&self, line: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line.to_string());
        (self.on_line)(line);
    }

    pub(super) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Apps {
    /// The app named `slug`: its id, or else its compose project slug (which import keeps
    /// unique).
    pub fn resolve(&self, slug: &str) -> CoreResult<AppId> {
        let id = AppId::from(slug);
        if self.store().contains(&id) {
            return Ok(id);
        }
        self.store()
            .list()?
            .into_iter()
            .map(|a| a.id().clone())
            .find(|id| id.slug() == slug)
            .ok_or_else(|| CoreError::NotFound(format!("no app has the id or slug \"{slug}\"")))
    }

    /// Recreates the app's containers from its stored definition: `down` (volumes and images
    /// kept), then `up`. A compose failure is an outcome with `success: false`, as for a
    /// start. Cancelled, the app returns to how it was: running again when it ran before,
    /// else without containers.
    pub async fn rebuild(&self, id: &AppId, run: Run<'_>) -> CoreResult<ProcessOutcome> {
        self.claimed(id, "rebuilt", false, async |app| {
            self.rebuild_claimed(app, run).await
        })
        .await
    }

    async fn rebuild_claimed(&self, app: &StoredApp, run: Run<'_>) -> CoreResult<ProcessOutcome> {
        let was_running = self.containers(app).await?.iter().any(|c| c.running);
        let project = self.project(app)?;
        let started = Instant::now();
        let seen = Collect::new(run.out);
        let collect = |line: &str| seen.line(line);
        let work = async {
            self.down(app, false, false, &collect).await?;
            Ok::<_, CoreError>(project.up(self.engine(), &collect).await)
        };
        let up = tokio::select! {
            biased;
            _ = run.cancel.cancelled() => None,
            r = work => Some(r?),
        };
        let Some(up) = up else {
            self.undo_rebuild(app, was_running, run.out).await?;
            return Err(CoreError::Cancelled(format!(
                "the rebuild of {} was cancelled; the app was {}",
                app.id(),
                if was_running {
                    "started again"
                } else {
                    "left stopped"
                }
            )));
        };
        let outcome = |up: Option<crate::core::compose::UpResult>| ProcessOutcome {
            command: format!(
                "docker-compose -p {} -f {} up -d --force-recreate",
                project.name(),
                project.compose_file().display()
            ),
            lines: seen.take(),
            success: up.is_some(),
            duration: started.elapsed(),
            running_containers: up
                .as_ref()
                .map(|u| u.running_containers.clone())
                .unwrap_or_default(),
            pulled_images: up.map(|u| u.pulled_images).unwrap_or_default(),
        };
        match up {
            Ok(up) => Ok(outcome(Some(up))),
            Err(e) if e.kind() == ErrorKind::Unavailable => Err(e.into()),
            Err(_) => Ok(outcome(None)),
        }
    }

    /// After a cancelled rebuild: the app running again when it ran before, else down.
    async fn undo_rebuild(
        &self,
        app: &StoredApp,
        was_running: bool,
        on_line: LineFn<'_>,
    ) -> CoreResult<()> {
        if was_running {
            self.undo_stop(app, true, &[], on_line).await
        } else {
            on_line("Cancelled: removing what was created");
            self.undo_start(app, on_line).await
        }
    }

    /// Stops the app and deletes it with its images (the bundle's and the compose file's,
    /// unless another app or container uses them) and its volumes. Cancelled while it stops,
    /// the stop is rolled back as any cancelled stop; once the app is stopped, the deletion
    /// is no longer cancellable and completes.
    pub async fn purge(&self, id: &AppId, run: Run<'_>) -> CoreResult<()> {
        let app = self.stored(id)?;
        let _busy = self.claim(id, "purged")?;
        let result = self.purge_claimed(&app, run).await;
        self.removed(id, result).await
    }

    async fn purge_claimed(&self, app: &StoredApp, run: Run<'_>) -> CoreResult<()> {
        let stop = StopOptions {
            remove_images: true,
            remove_volumes: true,
        };
        self.stop_claimed(app, stop, run.cancel, run.out).await?;
        (run.out)(&format!("Deleting {}", app.id()));
        self.remove_stopped(app, RemoveOptions::everything()).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::apps::import::ImportSettings;
    use crate::testutil::{store_web_app, FakeEngine};

    #[test]
    fn apps_are_found_by_id_or_project_slug() {
        let state = tempfile::tempdir().unwrap();
        store_web_app(state.path(), "services:\n  main:\n    image: busybox\n");
        let fake = Arc::new(FakeEngine::default());
        let apps = Apps::open(fake, state.path(), ImportSettings::default()).unwrap();
        assert_eq!(apps.resolve("web:1").unwrap(), AppId::from("web:1"));
        assert_eq!(apps.resolve("web1").unwrap(), AppId::from("web:1"));
        for unknown in ["web", "WEB1", "web:2", ""] {
            let e = apps.resolve(unknown).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NotFound, "{unknown}");
        }
    }
}
