//! Interrupted Intervirt requests: the intents the agent records for its long requests
//! (AddContainer, RemoveContainer, update, wipe) and the rule that resolves each one a crash
//! (or Docker's going away) left.
//!
//! A client that disconnects does not cancel its requests: they finish. A crash counts as
//! the client leaving for good, so every interrupted request is finished: an add ends with
//! the container created, started and attached (or, when that cannot be done, with nothing
//! of it left, as a failed add); a remove, the containers' part of an update and a wipe are
//! done to their end. The upgrade command of an update is not run again.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{
    container_body, is_intervirt, running_pid, AgentError, AgentResult, IntervirtAgent,
    ProgressSink,
};
use crate::core::engine::EngineError;
use crate::core::recovery::{conclude, resolvable, Intent, IntentKind, IntentLog, Record};
use crate::core::ErrorKind;

/// The requests whose intent the agent records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentOp {
    #[serde(rename = "intervirt-add")]
    Add,
    #[serde(rename = "intervirt-remove")]
    Remove,
    #[serde(rename = "intervirt-update")]
    Update,
    #[serde(rename = "intervirt-wipe")]
    Wipe,
}

impl IntentKind for AgentOp {}

pub type AgentIntents = IntentLog<AgentOp>;
pub type AgentIntent = Intent<AgentOp>;

/// The container an update is working on, as its intent notes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Updating {
    pub name: String,
    pub image: String,
    pub running: bool,
}

/// The agent's intent log in `<state_dir>/intents`; without one (an unusable directory) the
/// agent runs without crash recovery, and says so.
pub(super) fn open_intents(state_dir: &Path) -> AgentIntents {
    let dir = state_dir.join("intents");
    AgentIntents::open(&dir).unwrap_or_else(|e| {
        tracing::error!(dir = %dir.display(), error = %e, "cannot open the Intervirt intent log; interrupted requests will not be recovered");
        AgentIntents::disabled()
    })
}

/// How long the recovery of an add waits for a container Docker is still creating.
const CREATE_WAIT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
const CREATE_WAIT_ROUNDS: u32 = 40;

impl IntervirtAgent {
    /// Resolves every pending intent, oldest first (at start, and whenever the watcher
    /// reconnects to Docker). Nothing happens while Docker is unreachable.
    pub(super) async fn recover(&self) {
        let what = "Intervirt requests";
        if !resolvable(&self.intents, self.engine.as_ref(), what).await {
            return;
        }
        for p in self.intents.take_pending() {
            let name = p.record.app.clone().unwrap_or_default();
            tracing::info!(request = %p.record.kind.name(), container = %name, "recovering an interrupted request");
            let result = self.resolve(&p.record).await;
            conclude(&self.intents, p, result);
        }
    }

    async fn resolve(&self, r: &Record<AgentOp>) -> AgentResult<()> {
        let name = r.app.clone().unwrap_or_default();
        match r.kind {
            AgentOp::Add => {
                let image: String = r.get("image").unwrap_or_default();
                self.finish_add(&name, &image).await
            }
            AgentOp::Remove => self.finish_remove(&name).await,
            AgentOp::Update => match r.get::<Updating>("container") {
                Some(c) => self.finish_update(&c).await,
                None => Ok(()),
            },
            AgentOp::Wipe => {
                let _all = self.global.write().await;
                self.wipe_steps(&ProgressSink::default()).await
            }
        }
    }

    /// An add: created, started and attached; when that cannot be done, nothing of it is
    /// left (as after a failed add).
    async fn finish_add(&self, name: &str, image: &str) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _name = self.names.lock(name).await;
        if !self.known(name).await? {
            // The record never made it: a container cannot have been created either.
            return self.remove_labelled(name).await;
        }
        let finished = match self.inspect(name).await? {
            None => match self.create_and_start(name, image).await {
                // The name is taken: the killed add's create may still be under way in Docker.
                Err(AgentError::AlreadyDone(_)) => self.finish_created(name).await,
                created => created.map(|_| ()),
            },
            Some(c) if running_pid(&c).is_some() => self.attach_running(name).await,
            Some(_) => self.start_and_attach(name).await.map(|_| ()),
        };
        match finished {
            Err(e) if e.kind() == ErrorKind::Unavailable => Err(e),
            Err(e) => {
                tracing::warn!(container = %name, error = %e, "the interrupted add cannot finish; removing it");
                self.remove_steps_of(name).await
            }
            Ok(()) => Ok(()),
        }
    }

    /// A container whose name Docker had taken when no Intervirt container of that name was
    /// there: the create of a killed add that Docker was still carrying out. Waits (bounded)
    /// until it shows, then starts and attaches it. Someone else's container of that name
    /// is left alone.
    async fn finish_created(&self, name: &str) -> AgentResult<()> {
        for _ in 0..CREATE_WAIT_ROUNDS {
            tokio::time::sleep(CREATE_WAIT_EVERY).await;
            match self.engine.inspect_container(name).await {
                Ok(c) if is_intervirt(&c) && running_pid(&c).is_some() => {
                    return self.attach_running(name).await
                }
                Ok(c) if is_intervirt(&c) => return self.start_and_attach(name).await.map(|_| ()),
                Ok(_) => {
                    return Err(AgentError::AlreadyDone(format!(
                        "another Docker container is named {name}"
                    )))
                }
                Err(EngineError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(AgentError::Guest(format!(
            "Docker holds the name {name} but shows no container of that name"
        )))
    }

    /// A remove: the Docker container and the record go.
    async fn finish_remove(&self, name: &str) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _name = self.names.lock(name).await;
        self.remove_steps_of(name).await
    }

    /// Removes the Intervirt container `name` from Docker (if there is one) and its record
    /// (if there is one); the caller holds the locks.
    async fn remove_steps_of(&self, name: &str) -> AgentResult<()> {
        self.remove_labelled(name).await?;
        if self.known(name).await? {
            let n = name.to_string();
            self.net(move |d| d.remove_container(&n)).await?;
        }
        Ok(())
    }

    /// Removes the Intervirt container `name` from Docker, if there is one.
    async fn remove_labelled(&self, name: &str) -> AgentResult<()> {
        match self.engine.inspect_container(name).await {
            Ok(c) if is_intervirt(&c) => {}
            Ok(_) | Err(EngineError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        match self.engine.remove_container(name, true, true).await {
            Ok(()) | Err(EngineError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The container an update was working on: there again (recreated from its image when
    /// the update had removed it), running when it ran, attached.
    async fn finish_update(&self, c: &Updating) -> AgentResult<()> {
        let _all = self.global.read().await;
        let _name = self.names.lock(&c.name).await;
        let now = match self.inspect(&c.name).await? {
            Some(now) => now,
            None => {
                let body = container_body(&c.name, &c.image);
                self.engine.create_container(&c.name, body).await?;
                self.engine.inspect_container(&c.name).await?
            }
        };
        if c.running && running_pid(&now).is_none() {
            self.engine.start_container(&c.name).await?;
        }
        if c.running && self.known(&c.name).await? {
            self.attach_running(&c.name).await?;
        }
        Ok(())
    }
}
