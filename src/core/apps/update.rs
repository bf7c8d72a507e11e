//! Updating an app: newer images pulled where a registry answers, the services whose image
//! changed recreated (compose's config hash includes the image id) and their health awaited.
//! When one does not become healthy (or the update is cancelled), the previous images get
//! their references back and `up` recreates the previous containers, with the configuration
//! they had; the update then fails naming the service.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::models::{ContainerState, ContainerStateStatusEnum, HealthStatusEnum};
use tokio_util::sync::CancellationToken;

use super::lifecycle::{Apps, LineFn, ProcessOutcome, Run};
use super::maintain::Collect;
use super::store::StoredApp;
use super::AppId;
use crate::core::compose::{ComposeProject, ServiceStatus};
use crate::core::{CoreError, CoreResult, ErrorKind};

/// How long one image pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a service without a healthcheck must keep running to count as started.
const STEADY: Duration = Duration::from_secs(1);

/// The images of an app before the update: per reference, the image its containers run (or
/// the reference's image when no container uses it).
type Previous = HashMap<String, String>;

impl Apps {
    /// Updates the app `id` (see the module's documentation). An app that is not running
    /// only gets its images pulled; the new ones are used at its next start.
    pub async fn update(&self, id: &AppId, run: Run<'_>) -> CoreResult<ProcessOutcome> {
        self.claimed(id, "updated", true, async |app| {
            self.update_claimed(app, run).await
        })
        .await
    }

    async fn update_claimed(&self, app: &StoredApp, run: Run<'_>) -> CoreResult<ProcessOutcome> {
        let started = Instant::now();
        let seen = Collect::new(run.out);
        let out = |line: &str| seen.line(line);
        let project = self.project(app)?;
        let before = project.status(self.engine()).await?;
        let previous = self.previous_images(&project, &before).await;
        let pulled = Mutex::new(Vec::new());
        tokio::select! {
            biased;
            _ = run.cancel.cancelled() => {
                let pulled = lock(&pulled).clone();
                self.retag_previous(&previous, &out).await;
                self.remove_pulled(&previous, &pulled, &out).await;
                return Err(CoreError::Cancelled(format!(
                    "the update of {} was cancelled while pulling; nothing changed",
                    app.id()
                )));
            }
            r = self.pull_newer(&project, &pulled, &out) => r?,
        }
        let pulled = pulled.into_inner().unwrap_or_else(|p| p.into_inner());
        let stale = self.stale_services(&project, &before).await?;
        let running = before.iter().flat_map(|s| &s.containers).any(|c| c.running);
        if !running {
            out("The app is not running: the new images are used at its next start");
        } else if stale.is_empty() {
            out("Every service runs its newest image");
        } else if let Err(e) = self.recreate(app, &project, &stale, run.cancel, &out).await {
            self.retag_previous(&previous, &out).await;
            self.up_until_running(app, "the failed update", &out)
                .await?;
            self.remove_pulled(&previous, &pulled, &out).await;
            return Err(rolled_back(e, app.id()));
        }
        Ok(ProcessOutcome {
            command: format!("docker-compose -p {} pull && up -d", project.name()),
            lines: seen.take(),
            success: true,
            duration: started.elapsed(),
            running_containers: Vec::new(),
            pulled_images: pulled.into_iter().map(|(r, _)| r).collect(),
        })
    }

    /// Per image reference of the app: the image its containers run now, else the image the
    /// reference names now.
    async fn previous_images(
        &self,
        project: &ComposeProject,
        before: &[ServiceStatus],
    ) -> Previous {
        let mut previous = Previous::new();
        for s in &project.plan().services {
            let running = before
                .iter()
                .filter(|b| b.service == s.name)
                .flat_map(|b| &b.containers)
                .map(|c| c.image_id.clone())
                .find(|id| !id.is_empty());
            if let Some(id) = running {
                previous.entry(s.image.clone()).or_insert(id);
            }
        }
        for reference in project.images() {
            if previous.contains_key(&reference) {
                continue;
            }
            if let Some(id) = self.image_id(&reference).await {
                previous.insert(reference, id);
            }
        }
        previous
    }

    async fn image_id(&self, reference: &str) -> Option<String> {
        self.engine().inspect_image(reference).await.ok()?.id
    }

    /// Pulls each image of the app; notes in `pulled` the references that now name another
    /// image (with that image). A registry that does not answer skips its images.
    async fn pull_newer(
        &self,
        project: &ComposeProject,
        pulled: &Mutex<Vec<(String, String)>>,
        out: LineFn<'_>,
    ) -> CoreResult<()> {
        for reference in project.images() {
            let before = self.image_id(&reference).await;
            out(&format!("Pulling {reference} ..."));
            let result = tokio::time::timeout(PULL_TIMEOUT, self.engine().pull_image(&reference));
            let why = match result.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) if e.kind() == ErrorKind::Unavailable => return Err(e.into()),
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {}s", PULL_TIMEOUT.as_secs())),
            };
            if let Some(why) = why {
                out(&format!("Pulling {reference} ... skipped: {why}"));
                continue;
            }
            match self.image_id(&reference).await {
                Some(after) if Some(&after) != before.as_ref() => {
                    out(&format!("Pulling {reference} ... done: a newer image"));
                    lock(pulled).push((reference, after));
                }
                _ => out(&format!("Pulling {reference} ... up to date")),
            }
        }
        Ok(())
    }

    /// The services whose containers run another image than their reference names now.
    async fn stale_services(
        &self,
        project: &ComposeProject,
        before: &[ServiceStatus],
    ) -> CoreResult<Vec<String>> {
        let mut stale = Vec::new();
        for s in &project.plan().services {
            let Some(now) = self.image_id(&s.image).await else {
                continue;
            };
            let outdated = before
                .iter()
                .filter(|b| b.service == s.name)
                .flat_map(|b| &b.containers)
                .any(|c| c.image_id != now);
            if outdated {
                stale.push(s.name.clone());
            }
        }
        Ok(stale)
    }

    /// `up` (which recreates the stale services), then waits until each is healthy.
    async fn recreate(
        &self,
        app: &StoredApp,
        project: &ComposeProject,
        stale: &[String],
        cancel: &CancellationToken,
        out: LineFn<'_>,
    ) -> CoreResult<()> {
        out(&format!("Recreating {}", stale.join(", ")));
        let work = async {
            project.up(self.engine(), out).await?;
            let now = project.status(self.engine()).await?;
            for service in stale {
                for c in now
                    .iter()
                    .filter(|s| &s.service == service)
                    .flat_map(|s| &s.containers)
                {
                    out(&format!(
                        "Waiting for {service} ({}) to become healthy",
                        c.name
                    ));
                    self.wait_healthy(service, &c.id).await?;
                    out(&format!("{service} is healthy"));
                }
            }
            Ok::<(), CoreError>(())
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(CoreError::Cancelled(format!(
                "the update of {} was cancelled", app.id()
            ))),
            r = work => r,
        }
    }

    /// Waits until the container `id` of `service` is healthy (or, without a healthcheck,
    /// has kept running for a moment), bounded by the health timeout.
    async fn wait_healthy(&self, service: &str, id: &str) -> CoreResult<()> {
        let deadline = Instant::now() + self.health_timeout;
        let mut steady_since: Option<Instant> = None;
        loop {
            let state = self
                .engine()
                .inspect_container(id)
                .await?
                .state
                .unwrap_or_default();
            match judge(service, &state)? {
                Health::Healthy => return Ok(()),
                Health::Running => {
                    let since = *steady_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= STEADY {
                        return Ok(());
                    }
                }
                Health::Starting => {}
            }
            if Instant::now() >= deadline {
                return Err(CoreError::Failed(format!(
                    "service \"{service}\" did not become healthy within {}s",
                    self.health_timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Gives each reference back its previous image.
    async fn retag_previous(&self, previous: &Previous, out: LineFn<'_>) {
        for (reference, old) in previous {
            if reference.contains('@') || self.image_id(reference).await.as_ref() == Some(old) {
                continue;
            }
            out(&format!("Restoring {reference} to {old}"));
            if let Err(e) = self.engine().tag_image(old, reference).await {
                out(&format!("Restoring {reference} failed: {e}"));
            }
        }
    }

    /// Removes the images this update pulled, when nothing uses them any more.
    async fn remove_pulled(
        &self,
        previous: &Previous,
        pulled: &[(String, String)],
        out: LineFn<'_>,
    ) {
        for (reference, new) in pulled {
            if previous.get(reference) == Some(new) {
                continue;
            }
            match self.engine().remove_image(new, false).await {
                Ok(_) => out(&format!("Removed the new image of {reference}")),
                Err(e) => tracing::debug!(image = %new, error = %e, "new image kept"),
            }
        }
    }
}

enum Health {
    Healthy,
    /// Running, without a healthcheck.
    Running,
    Starting,
}

/// What a container's state says about `service`'s health; an error when it can no longer
/// become healthy.
fn judge(service: &str, state: &ContainerState) -> CoreResult<Health> {
    let exited = matches!(
        state.status,
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
    );
    if exited {
        return Err(CoreError::Failed(format!(
            "service \"{service}\" exited with code {}",
            state.exit_code.unwrap_or_default()
        )));
    }
    let health = state.health.as_ref();
    match health.and_then(|h| h.status) {
        Some(HealthStatusEnum::HEALTHY) => Ok(Health::Healthy),
        Some(HealthStatusEnum::UNHEALTHY) => {
            let probe = health
                .and_then(|h| h.log.as_ref())
                .and_then(|l| l.last())
                .and_then(|r| r.output.as_deref())
                .map(str::trim)
                .unwrap_or_default();
            Err(CoreError::Failed(format!(
                "service \"{service}\" is unhealthy: {probe}"
            )))
        }
        Some(HealthStatusEnum::STARTING) => Ok(Health::Starting),
        _ if state.running == Some(true) => Ok(Health::Running),
        _ => Ok(Health::Starting),
    }
}

/// The update's error, saying that the previous version runs again.
fn rolled_back(e: CoreError, id: &AppId) -> CoreError {
    let message = format!("{e}; {id} was rolled back to its previous images and containers");
    match e.kind() {
        ErrorKind::Cancelled => CoreError::Cancelled(message),
        ErrorKind::Unavailable => e,
        _ => CoreError::Failed(message),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use bollard::models::{Health as DockerHealth, HealthcheckResult};

    use super::*;

    fn state(status: ContainerStateStatusEnum, health: Option<HealthStatusEnum>) -> ContainerState {
        ContainerState {
            status: Some(status),
            running: Some(status == ContainerStateStatusEnum::RUNNING),
            exit_code: Some(3),
            health: health.map(|h| DockerHealth {
                status: Some(h),
                log: Some(vec![HealthcheckResult {
                    output: Some("probe said no\n".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn health_is_judged_from_the_state_and_failures_name_the_service() {
        use ContainerStateStatusEnum::{EXITED, RUNNING};
        use HealthStatusEnum::{HEALTHY, STARTING, UNHEALTHY};
        assert!(matches!(
            judge("web", &state(RUNNING, Some(HEALTHY))),
            Ok(Health::Healthy)
        ));
        assert!(matches!(
            judge("web", &state(RUNNING, Some(STARTING))),
            Ok(Health::Starting)
        ));
        assert!(matches!(
            judge("web", &state(RUNNING, None)),
            Ok(Health::Running)
        ));
        let e = judge("web", &state(RUNNING, Some(UNHEALTHY)))
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "service \"web\" is unhealthy: probe said no");
        let e = judge("db", &state(EXITED, Some(STARTING))).err().unwrap();
        assert_eq!(e.to_string(), "service \"db\" exited with code 3");
        let id = AppId::from("web:1");
        let e = rolled_back(CoreError::Failed("x".into()), &id);
        assert_eq!(e.kind(), ErrorKind::Failed);
        assert!(e
            .to_string()
            .ends_with("web:1 was rolled back to its previous images and containers"));
        let e = rolled_back(CoreError::Cancelled("c".into()), &id);
        assert_eq!(e.kind(), ErrorKind::Cancelled);
    }
}
