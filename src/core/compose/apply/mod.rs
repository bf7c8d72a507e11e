//! Applying a plan over the [`ContainerEngine`]: `up` (idempotent by config hash), `down`
//! and `status`, with compose-like output lines sent as the operations happen.
//!
//! Both `up` and `down` run their per-service work through one [`schedule::Scheduler`]:
//! `up` forwards (a service starts once what it depends on has started, and its
//! healthy/completed conditions are met), `down` backwards (a service stops once what
//! depends on it has stopped), independent work concurrently within one bound.

mod converge;
mod down;
mod prepare;
mod schedule;
mod status;
#[cfg(test)]
mod tests;
mod up;

use std::sync::Mutex;

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;

use super::plan::LABEL_PROJECT;
use super::{ComposeError, ComposeProject};
use crate::core::engine::{ContainerEngine, EngineError, Filter};

pub use down::down;
pub(super) use prepare::check_owners;
pub(crate) use status::port_mappings;
pub use status::status;
pub use up::up;

/// What `up` did, for the API's `DockerComposeUpResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpResult {
    /// Names of the project's containers running when `up` finished.
    pub running_containers: Vec<String>,
    /// Images `up` had to pull.
    pub pulled_images: Vec<String>,
    /// Every output line, in the order sent.
    pub lines: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownOptions {
    /// Remove the project's images when no container (of any app) uses them.
    pub remove_images: bool,
    /// Remove the project's named volumes (and its containers' anonymous ones) when no
    /// other container uses them.
    pub remove_volumes: bool,
    /// Images other apps need even though no container uses them now; never removed.
    pub protected_images: Vec<String>,
    /// Stop timeout for every container, instead of each service's `stop_grace_period`.
    pub timeout: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownResult {
    pub lines: Vec<String>,
    pub removed_containers: Vec<String>,
    pub removed_networks: Vec<String>,
    pub removed_volumes: Vec<String>,
    pub removed_images: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub service: String,
    /// False for containers of services no longer in the compose file.
    pub defined: bool,
    pub containers: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub name: String,
    pub id: String,
    pub image: String,
    /// Docker's state word: created, running, exited, restarting, ...
    pub state: String,
    /// Docker's human status, e.g. `Up 3 minutes (healthy)`.
    pub status: String,
    pub running: bool,
    pub image_id: String,
    /// Unix seconds.
    pub created: Option<i64>,
    /// As `docker ps` shows them: `127.0.0.1:8080->80/tcp`, or `80/tcp` when unpublished.
    pub ports: Vec<String>,
}

/// Collects lines and forwards each to the caller as it is produced.
struct Output<'a> {
    on_line: &'a (dyn Fn(&str) + Send + Sync),
    lines: Mutex<Vec<String>>,
    /// Names are padded to this width, as compose aligns its `... done` columns.
    width: usize,
}

impl<'a> Output<'a> {
    fn new(on_line: &'a (dyn Fn(&str) + Send + Sync), width: usize) -> Self {
        Self {
            on_line,
            lines: Mutex::new(Vec::new()),
            width,
        }
    }

    fn line(&self, s: impl Into<String>) {
        let s = s.into();
        (self.on_line)(&s);
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    /// `Creating x_web_1 ... ` now, then `Creating x_web_1 ... done` (or `error`) after `op`.
    async fn step<T>(
        &self,
        verb: &str,
        name: &str,
        op: impl std::future::Future<Output = Result<T, ComposeError>>,
    ) -> Result<T, ComposeError> {
        let head = format!("{verb} {name:<width$} ...", width = self.width);
        self.line(head.clone());
        let res = op.await;
        self.line(format!(
            "{head} {}",
            if res.is_ok() { "done" } else { "error" }
        ));
        res
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn project_label(p: &ComposeProject) -> Filter {
    Filter::Label(format!("{LABEL_PROJECT}={}", p.name()))
}

fn container_name(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_else(|| c.id.clone().unwrap_or_default())
}

fn label<'c>(c: &'c ContainerSummary, key: &str) -> Option<&'c str> {
    c.labels.as_ref()?.get(key).map(String::as_str)
}

fn is_running(c: &ContainerSummary) -> bool {
    matches!(
        c.state,
        Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::RESTARTING)
    )
}

fn width(p: &ComposeProject, extra: &[ContainerSummary]) -> usize {
    p.plan()
        .services
        .iter()
        .map(|s| s.container_name.len())
        .chain(extra.iter().map(|c| container_name(c).len()))
        .max()
        .unwrap_or(0)
}

/// Runs `jobs` at most `limit` at a time; the results in the jobs' order. (Boxed futures in
/// a Vec, not a lazy iterator of closures: the latter trips the compiler's `Send` inference
/// for the spawned tasks that call `up`.)
async fn bounded<T>(limit: usize, jobs: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    futures_util::stream::iter(jobs)
        .buffered(limit.max(1))
        .collect()
        .await
}

/// The values, or the first error (in the jobs' order).
fn first_error<T>(results: Vec<Result<T, ComposeError>>) -> Result<Vec<T>, ComposeError> {
    results.into_iter().collect()
}

/// One error as it is, several together.
fn one_error(mut errors: Vec<ComposeError>) -> ComposeError {
    if errors.len() == 1 {
        errors.remove(0)
    } else {
        ComposeError::Several(errors)
    }
}

async fn remove_container(
    engine: &dyn ContainerEngine,
    c: &ContainerSummary,
    timeout: u32,
) -> Result<(), ComposeError> {
    let id = c.id.clone().unwrap_or_default();
    let name = container_name(c);
    if is_running(c) {
        engine
            .stop_container_with_timeout(&id, timeout)
            .await
            .map_err(ComposeError::engine(format!("stopping {name}")))?;
    }
    match engine.remove_container(&id, true, false).await {
        Ok(()) | Err(EngineError::NotFound(_)) => Ok(()),
        Err(e) => Err(ComposeError::Engine {
            action: format!("removing {name}"),
            source: e,
        }),
    }
}
