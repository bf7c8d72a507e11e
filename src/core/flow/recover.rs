//! Interrupted Flow Manager operations: the intents of create, update and delete
//! (`<state>/flowmanager/intents/`) and the rule that resolves each one a crash (or Docker
//! going away) left, before the sockets are served again (docs/DECISIONS.md, "Interrupted
//! operations"). All three finish when their client goes away, so: a create is finished (the
//! container created from the noted request when Docker had not), a delete is finished, and
//! an update is rolled back while its old container still exists (it is kept, renamed,
//! until the new one runs: the rollback is always possible until then) and finished once
//! the old one was removed.

use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use serde::{Deserialize, Serialize};

use super::status::is_running;
use super::{code, id_of, FlowManager, DIALECT, LABEL_DIALECT};
use crate::core::engine::EngineError;
use crate::core::recovery::{conclude, resolvable, Intent, IntentKind, IntentLog, Record};
use crate::core::CoreResult;

/// The operations whose intent the Flow Manager records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowOp {
    Create,
    Update,
    Delete,
}

impl IntentKind for FlowOp {}

pub type FlowIntents = IntentLog<FlowOp>;
pub type FlowIntent = Intent<FlowOp>;

/// How long the recovery waits for a container create Docker may still be carrying out
/// (its name is taken, no container shows yet), 250 ms apart.
const LATE: Duration = Duration::from_secs(10);
const EVERY: Duration = Duration::from_millis(250);

impl FlowManager {
    /// Resolves every pending intent, oldest first (nothing while Docker does not answer).
    pub async fn recover(&self) -> CoreResult<()> {
        let what = "Flow Manager operations";
        if !resolvable(&self.intents, self.engine.as_ref(), what).await {
            return Ok(());
        }
        for p in self.intents.take_pending() {
            let (kind, name) = (p.record.kind, p.record.app.clone());
            tracing::info!(operation = %kind.name(), container = ?name, "recovering an interrupted Flow Manager operation");
            let outcome = match kind {
                FlowOp::Create => self.finish_create(&p.record).await,
                FlowOp::Update => self.settle_update(&p.record).await,
                FlowOp::Delete => self.finish_delete(&p.record).await,
            };
            conclude(&self.intents, p, outcome);
        }
        Ok(())
    }

    /// The id of the Flow Manager container named `name`; None when there is none (or the
    /// name is another's).
    async fn own_named(&self, name: &str) -> CoreResult<Option<(String, bool)>> {
        match self.engine.inspect_container(name).await {
            Ok(c) => {
                let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
                let ours = labels
                    .and_then(|l| l.get(LABEL_DIALECT))
                    .map(String::as_str);
                Ok((ours == Some(DIALECT)).then(|| (id_of(&c), is_running(&c))))
            }
            Err(EngineError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits (bounded) for the container a create Docker still carries out to show.
    async fn wait_named(&self, name: &str) -> CoreResult<Option<String>> {
        let started = Instant::now();
        while started.elapsed() < LATE {
            if let Some((id, _)) = self.own_named(name).await? {
                return Ok(Some(id));
            }
            tokio::time::sleep(EVERY).await;
        }
        Ok(None)
    }

    /// A create: the container created from the noted request when Docker does not have it
    /// (nothing when the request was never noted: the image was being pulled), its socket
    /// served.
    async fn finish_create(&self, r: &Record<FlowOp>) -> CoreResult<()> {
        let (Some(name), Some(body)) = (r.app.as_deref(), r.get::<ContainerCreateBody>("body"))
        else {
            return Ok(());
        };
        let lock = self.lock_of(name);
        let _held = lock.lock().await;
        let id = match self.own_named(name).await? {
            Some((id, _)) => id,
            None => match self.engine.create_container(name, body).await {
                Ok(id) => id,
                // Docker is still carrying out the killed create.
                Err(EngineError::Conflict(m)) => match self.wait_named(name).await? {
                    Some(id) => id,
                    None => {
                        tracing::warn!(container = name, error = %m, "an interrupted create cannot be finished: the name is another's");
                        return Ok(());
                    }
                },
                Err(e @ EngineError::Unavailable(_)) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(container = name, error = %e, "an interrupted create cannot be finished; dropped");
                    return Ok(());
                }
            },
        };
        let path = self.sockets.path_of(name);
        if let Err(e) = self.sockets.open(name, &id, &path) {
            tracing::warn!(container = name, error = %e, "cannot serve the socket of a recovered container");
        }
        self.changed(&[&id]).await;
        tracing::info!(container = name, "finished an interrupted create");
        Ok(())
    }

    /// A delete: the container and its code removed, its socket closed.
    async fn finish_delete(&self, r: &Record<FlowOp>) -> CoreResult<()> {
        let (Some(name), Some(id)) = (r.app.as_deref(), r.get::<String>("id")) else {
            return Ok(());
        };
        let lock = self.lock_of(name);
        let _held = lock.lock().await;
        match self.engine.remove_container(&id, true, true).await {
            Ok(()) | Err(EngineError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.changed(&[&id]).await;
        self.sockets.close(name);
        code::remove(&self.settings.socket_dir, name)
            .map_err(|e| crate::core::CoreError::io("cannot remove the code directory", e))?;
        tracing::info!(container = name, "finished an interrupted delete");
        Ok(())
    }

    /// An update: rolled back while the old container exists (the new one removed, the old
    /// one under its name again, running when it ran, the old code back); finished once it
    /// was removed (the new one running when the old one ran, the old code removed).
    async fn settle_update(&self, r: &Record<FlowOp>) -> CoreResult<()> {
        let (Some(name), Some(old)) = (r.app.as_deref(), r.get::<String>("old")) else {
            return Ok(());
        };
        let running = r.get::<bool>("running").unwrap_or(false);
        let lock = self.lock_of(name);
        let _held = lock.lock().await;
        let dir = &self.settings.socket_dir;
        let io = |e| crate::core::CoreError::io("cannot settle the code directory", e);
        let kept = match self.engine.inspect_container(&old).await {
            Ok(c) => Some(c),
            Err(EngineError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(old_c) = kept else {
            if let Some((id, false)) = self.own_named(name).await?.filter(|_| running) {
                self.engine.start_container(&id).await?;
            }
            code::commit_interrupted(dir, name).map_err(io)?;
            tracing::info!(container = name, "finished an interrupted update");
            return Ok(());
        };
        self.take_name_back(name, &old, &super::name_of(&old_c))
            .await?;
        let (ino, had) = (r.get::<u64>("code_ino"), r.get::<bool>("had_code"));
        code::undo_interrupted(dir, name, ino, had.unwrap_or(true)).map_err(io)?;
        if running && !is_running(&old_c) {
            self.engine.start_container(&old).await?;
        }
        if let Some(ep) = self.sockets.get(name) {
            ep.set_container(&old);
        }
        self.changed(&[&old, name]).await;
        tracing::info!(container = name, "rolled back an interrupted update");
        Ok(())
    }

    /// The old container of an update gets its name back: the new one that may hold it
    /// goes first (also one Docker creates only now, hence a second round).
    async fn take_name_back(&self, name: &str, old: &str, now: &str) -> CoreResult<()> {
        if now == name {
            return self.remove_successor(name, old).await;
        }
        for round in 0..2 {
            self.remove_successor(name, old).await?;
            match self.engine.rename_container(old, name).await {
                Ok(()) => return Ok(()),
                Err(EngineError::Conflict(_)) if round == 0 => {
                    tokio::time::sleep(EVERY).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Removes the Flow Manager container named `name` unless it is `old`.
    async fn remove_successor(&self, name: &str, old: &str) -> CoreResult<()> {
        if let Some((id, _)) = self.own_named(name).await? {
            if id != old {
                match self.engine.remove_container(&id, true, false).await {
                    Ok(()) | Err(EngineError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                self.changed(&[&id]).await;
            }
        }
        Ok(())
    }
}
