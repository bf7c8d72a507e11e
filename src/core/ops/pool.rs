//! The App Pool's operations: installing from the store, publishing to it, and the work on
//! deployments (transfers to servers and removals from them), plus the pool's background
//! loops: the servers' health probe and the reconciler that carries out deployments whose
//! server is online.

use std::collections::HashSet;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Operation, Start, Summary};
use crate::core::apps::store::StoredApp;
use crate::core::apps::AppId;
use crate::core::pool::deploy::{DeployState, Deployment};
use crate::core::pool::registry::{IndexEntry, Publication};
use crate::core::pool::remote::Probe;
use crate::core::pool::servers::{self, Server, ServerStatus, ServerView};
use crate::core::pool::{Job, Pool, PoolProgress};
use crate::core::tasks::TaskKind;
use crate::core::{Core, CoreError, CoreResult, ErrorKind};

impl Summary for PoolProgress {
    fn fraction(&self) -> Option<f64> {
        match self {
            PoolProgress::Downloading { done, size } if *size > 0 => {
                Some(*done as f64 / *size as f64)
            }
            _ => None,
        }
    }

    fn step(&self) -> String {
        match self {
            PoolProgress::Downloading { .. } => "downloading".into(),
            PoolProgress::Checking => "checking the bundle".into(),
            PoolProgress::Storing => "storing the bundle".into(),
        }
    }
}

/// A deployment with what its server says of it now.
#[derive(Debug, Clone)]
pub struct DeploymentView {
    pub deployment: Deployment,
    /// The app's status on its server (`Running`, ...) once deployed, `Offline` while the
    /// server is not online, `Missing` when the server lost it; else the state's name.
    pub status: String,
    /// Bytes sent of the bundle, while transferring.
    pub progress: Option<(u64, u64)>,
}

impl Core {
    /// Downloads the app `id` from the store into the pool. Its client going away does not
    /// stop it; a cancel drops the partial download, a shutdown keeps it for the next start.
    pub fn install_pool_app(
        self: &Arc<Self>,
        id: AppId,
        start: &Start,
    ) -> CoreResult<Operation<PoolProgress, StoredApp>> {
        let pool = self.pool()?.clone();
        let kind = TaskKind::PoolInstall;
        self.operation(
            kind,
            Some(&id.to_string()),
            start,
            |core, reporter, cancel| async move {
                let progress = move |p: PoolProgress| reporter.report(p);
                let job = Job {
                    cancel: &cancel,
                    progress: &progress,
                };
                let result = pool.install(&id, &job).await;
                let dropped = matches!(&result, Err(e) if e.is(ErrorKind::Cancelled));
                if dropped && !core.tasks.is_shutting_down() {
                    pool.forget_download(&id);
                }
                result
            },
        )
    }

    /// Publishes the stored app `id` (with its images when asked) to the pool's store.
    pub fn publish_app(
        self: &Arc<Self>,
        id: AppId,
        with_images: bool,
        replace: bool,
        start: &Start,
    ) -> CoreResult<Operation<Infallible, IndexEntry>> {
        let pool = self.pool()?.clone();
        self.operation(TaskKind::Publish, Some(&id.to_string()), start, move |core, _, cancel| async move {
            let config = core.apps.get(&id).await?.app.config().clone();
            let bundle = core.apps.export(&id, with_images).await?;
            let publication = Publication { config, bundle, replace };
            tokio::select! {
                r = pool.publish(publication) => r,
                _ = cancel.cancelled() => Err(CoreError::Cancelled(format!("the publication of {id} was cancelled"))),
            }
        })
    }

    /// Adds a server once `GET /api/versions` found it online with a compatible API.
    pub async fn add_server(
        &self,
        url: &str,
        token_file: Option<PathBuf>,
    ) -> CoreResult<ServerView> {
        let pool = self.pool()?;
        let url =
            crate::config::pool::server_url(url).map_err(|e| CoreError::Invalid(e.to_string()))?;
        let token_file = match token_file {
            None => None,
            Some(f) => Some(servers::api_token_file(&pool.config().token_dir, &f)?),
        };
        let server = Server {
            id: servers::id_of(&url),
            url,
            token_file,
        };
        let probe = pool.remote.probe(&server.target()?).await;
        match &probe {
            Probe::Online { .. } => pool.servers.add(server, &probe),
            Probe::Offline(why) => Err(CoreError::Invalid(format!(
                "server {} is offline: {why}",
                server.url
            ))),
            Probe::Unauthorized => Err(CoreError::Invalid(format!(
                "server {} refuses the token (unauthorized)",
                server.url
            ))),
            Probe::Incompatible(why) => Err(CoreError::Invalid(format!(
                "server {} speaks an incompatible version: {why}",
                server.url
            ))),
        }
    }

    /// Removes a server that no deployment names.
    pub fn remove_server(&self, id: &str) -> CoreResult<()> {
        let pool = self.pool()?;
        let n = pool.deployments.count_for(id);
        if n > 0 {
            return Err(CoreError::Conflict(format!(
                "{n} deployments name server {id}; delete them first"
            )));
        }
        pool.servers.remove(id)
    }

    /// Asks for `app` (installed in the pool) on `server`: pending until the reconciler has
    /// transferred it, which it does at once when the server is online.
    pub fn request_deployment(&self, server: &str, app: &AppId) -> CoreResult<Deployment> {
        let pool = self.pool()?;
        let server = pool.servers.get(server)?;
        pool.installed(app)?;
        let d = pool
            .deployments
            .add(&server.server.id, app, crate::core::tasks::new_id())?;
        pool.wake.notify_one();
        Ok(d)
    }
}

impl Core {
    /// Deletes a deployment: at once when nothing reached its server; otherwise it is
    /// stopped and removed there (now when the server is online; true then), else when the
    /// server returns.
    pub async fn delete_deployment(self: &Arc<Self>, id: &str) -> CoreResult<bool> {
        let pool = self.pool()?.clone();
        let d = pool.deployments.get(id)?;
        let active = pool.deployments.active_of(id);
        match d.state {
            DeployState::Pending | DeployState::Failed if active.is_none() => {
                pool.deployments.remove(id)?;
                return Ok(true);
            }
            DeployState::Deleting => return Ok(false),
            _ => {}
        }
        pool.deployments.set(id, DeployState::Deleting, None)?;
        if let Some(a) = active {
            // A transfer in flight: it stops, and the removal follows when it has.
            let _ = self.tasks.cancel(&a.task);
            pool.wake.notify_one();
            return Ok(false);
        }
        if !pool.servers.is_online(&d.server) {
            return Ok(false);
        }
        self.undeploy(d)?.finish().await?;
        Ok(true)
    }

    /// `start` or `stop` of a deployed app on its server: the server's answer.
    pub async fn deployment_action(&self, id: &str, action: &str) -> CoreResult<Value> {
        let pool = self.pool()?;
        let d = pool.deployments.get(id)?;
        if d.state != DeployState::Deployed {
            return Err(CoreError::Conflict(format!(
                "deployment {id} is {}, not deployed",
                d.state.name()
            )));
        }
        let server = pool.servers.get(&d.server)?;
        if server.status != ServerStatus::Online {
            return Err(CoreError::Unavailable(format!(
                "server {} is {}",
                server.server.url,
                server.status.name()
            )));
        }
        pool.remote
            .act(&server.server.target()?, &d.app, action)
            .await
    }

    /// Every deployment, its status read from its server (at most `pool.max_parallel`
    /// servers asked at once, each bounded by the request timeout).
    pub async fn deployment_views(&self) -> CoreResult<Vec<DeploymentView>> {
        let pool = self.pool()?;
        let list = pool.deployments.list();
        let views = futures_util::stream::iter(list)
            .map(|d| deployment_view(pool, d))
            .buffered(pool.config().max_parallel)
            .collect()
            .await;
        Ok(views)
    }
}

async fn deployment_view(pool: &Pool, d: Deployment) -> DeploymentView {
    let progress = pool.deployments.active_of(&d.id).and_then(|a| a.progress());
    let status = match d.state {
        DeployState::Deployed => live_status(pool, &d).await,
        s => s.name().to_string(),
    };
    DeploymentView {
        deployment: d,
        status,
        progress,
    }
}

async fn live_status(pool: &Pool, d: &Deployment) -> String {
    let Ok(server) = pool.servers.get(&d.server) else {
        return "Unknown".into();
    };
    if server.status != ServerStatus::Online {
        return "Offline".into();
    }
    let Ok(target) = server.server.target() else {
        return "Unknown".into();
    };
    match pool.remote.app_status(&target, &d.app).await {
        Ok(Some(s)) => s,
        Ok(None) => "Missing".into(),
        Err(_) => "Offline".into(),
    }
}

impl Core {
    /// Transfers a pending deployment's bundle to its server, as an operation.
    fn deploy(self: &Arc<Self>, d: Deployment) -> CoreResult<Operation<Infallible, ()>> {
        self.deployment_op(TaskKind::Deploy, d, |pool, d, cancel| async move {
            run_deploy(&pool, &d, &cancel).await
        })
    }

    /// Stops and removes a deployment's app on its server and forgets the deployment.
    fn undeploy(self: &Arc<Self>, d: Deployment) -> CoreResult<Operation<Infallible, ()>> {
        self.deployment_op(TaskKind::Undeploy, d, |pool, d, cancel| async move {
            let result = tokio::select! {
                r = run_undeploy(&pool, &d) => r,
                _ = cancel.cancelled() => Err(CoreError::Cancelled("the removal was cancelled".into())),
            };
            if let Err(e) = &result {
                pool.deployments.set(&d.id, DeployState::Deleting, Some(e.to_string()))?;
            }
            result
        })
    }

    /// Runs `run` on a deployment as an operation of `kind`: the deployment is claimed from
    /// now on, and the work waits for one of the pool's `max_parallel` permits.
    fn deployment_op<F, Fut>(
        self: &Arc<Self>,
        kind: TaskKind,
        d: Deployment,
        run: F,
    ) -> CoreResult<Operation<Infallible, ()>>
    where
        F: FnOnce(Arc<Pool>, Deployment, CancellationToken) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = CoreResult<()>> + Send + 'static,
    {
        let pool = self.pool()?.clone();
        let guard = pool.deployments.activate(&d.id)?;
        let (id, app) = (d.id.clone(), d.app.to_string());
        let worker = pool.clone();
        let op = self.operation(
            kind,
            Some(&app),
            &Start::default(),
            move |_, _, cancel| async move {
                let _guard = guard;
                let _permit = worker.permits.clone().acquire_owned().await;
                run(worker, d, cancel).await
            },
        )?;
        pool.deployments.set_task(&id, op.id());
        Ok(op)
    }
}

async fn run_deploy(pool: &Pool, d: &Deployment, cancel: &CancellationToken) -> CoreResult<()> {
    if pool.deployments.get(&d.id)?.state != DeployState::Pending {
        return Ok(());
    }
    pool.deployments.set(&d.id, DeployState::Deploying, None)?;
    let result = transfer(pool, d, cancel).await;
    let (state, error) = match &result {
        Ok(()) => (DeployState::Deployed, None),
        Err(e) if e.is(ErrorKind::Unavailable) => {
            // Not retried before the probe finds the server online again.
            pool.servers
                .set_probe(&d.server, &Probe::Offline(e.to_string()));
            (DeployState::Pending, Some(e.to_string()))
        }
        Err(e) if e.is(ErrorKind::Cancelled) => (DeployState::Pending, Some(e.to_string())),
        Err(e) => (DeployState::Failed, Some(e.to_string())),
    };
    // A deletion asked for meanwhile (Deleting) stands.
    if pool
        .deployments
        .get(&d.id)
        .is_ok_and(|x| x.state == DeployState::Deploying)
    {
        pool.deployments.set(&d.id, state, error)?;
    }
    pool.wake.notify_one();
    match state {
        DeployState::Deployed => tracing::info!(app = %d.app, server = %d.server, "deployed"),
        s => {
            tracing::warn!(app = %d.app, server = %d.server, state = s.name(), error = ?result.as_ref().err(), "deployment not done")
        }
    }
    result
}

/// Streams the bundle into the server's import. A server that has the app already (an
/// earlier attempt whose answer was lost) counts as done.
async fn transfer(pool: &Pool, d: &Deployment, cancel: &CancellationToken) -> CoreResult<()> {
    let server = pool.servers.get(&d.server)?.server;
    let target = server.target()?;
    let (_, bundle) = pool.installed(&d.app)?;
    let size = std::fs::metadata(&bundle).map_or(0, |m| m.len());
    let sent = Arc::new(AtomicU64::new(0));
    pool.deployments.track(&d.id, sent.clone(), size);
    match pool.remote.import(&target, &bundle, sent, cancel).await {
        Err(e) if e.is(ErrorKind::Conflict) => {
            match pool.remote.app_status(&target, &d.app).await? {
                Some(_) => Ok(()),
                None => Err(e),
            }
        }
        r => r,
    }
}

async fn run_undeploy(pool: &Pool, d: &Deployment) -> CoreResult<()> {
    let server = pool.servers.get(&d.server)?.server;
    let target = server.target()?;
    match pool.remote.app_status(&target, &d.app).await? {
        None => {}
        Some(status) => {
            if status != "Stopped" {
                pool.remote.act(&target, &d.app, "stop").await?;
            }
            pool.remote.delete(&target, &d.app).await?;
        }
    }
    pool.deployments.remove(&d.id)?;
    tracing::info!(app = %d.app, server = %d.server, "deployment removed");
    Ok(())
}

impl Core {
    /// Starts the pool's background work: downloads a restart interrupted resume, servers
    /// are probed every `pool.probe_interval_secs`, and deployments whose server is online
    /// are carried out. Everything ends with `stop`.
    pub fn run_pool(self: &Arc<Self>, stop: CancellationToken) {
        let Ok(pool) = self.pool() else { return };
        for intent in pool.intents() {
            tracing::info!(app = %intent.id, "resuming an interrupted download");
            if let Err(e) = self.install_pool_app(intent.id.clone(), &Start::default()) {
                tracing::warn!(app = %intent.id, error = %e, "cannot resume a download");
            }
        }
        tokio::spawn(probe_loop(self.clone(), stop.clone()));
        tokio::spawn(reconcile_loop(self.clone(), stop));
    }
}

async fn probe_loop(core: Arc<Core>, stop: CancellationToken) {
    let Ok(pool) = core.pool().cloned() else {
        return;
    };
    loop {
        let results: Vec<(String, Probe)> = futures_util::stream::iter(pool.servers.list())
            .map(|v| {
                let pool = pool.clone();
                async move {
                    let probe = match v.server.target() {
                        Ok(t) => pool.remote.probe(&t).await,
                        Err(e) => Probe::Offline(e.to_string()),
                    };
                    (v.server.id, probe)
                }
            })
            .buffer_unordered(pool.config().max_parallel.max(4))
            .collect()
            .await;
        let mut back = false;
        for (id, probe) in &results {
            back |= pool.servers.set_probe(id, probe);
        }
        if back {
            pool.wake.notify_one();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pool.config().probe_interval) => {}
        }
    }
}

async fn reconcile_loop(core: Arc<Core>, stop: CancellationToken) {
    let Ok(pool) = core.pool().cloned() else {
        return;
    };
    loop {
        let online: HashSet<String> = pool
            .servers
            .list()
            .into_iter()
            .filter(|v| v.status == ServerStatus::Online)
            .map(|v| v.server.id)
            .collect();
        for d in pool.deployments.due(&online) {
            let started = match d.state {
                DeployState::Deleting => core.undeploy(d),
                _ => core.deploy(d),
            };
            // Runs on without a client; failures are noted on the deployment.
            if let Err(e) = started {
                tracing::debug!(error = %e, "deployment not started");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = pool.wake.notified() => {}
            _ = tokio::time::sleep(pool.config().probe_interval) => {}
        }
    }
}
