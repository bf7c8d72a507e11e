//! Deployments: which app of the pool goes (or went) to which server, persisted in
//! `deployments.json`. Each is a wish the pool works towards whenever its server is online:
//! `Pending` means "transfer it", `Deleting` "remove it from the server"; both survive a
//! restart and a server being away, so a deployment asked for while its server was offline
//! happens when it returns, and a deleted one never comes back.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{read_json, write_json};
use crate::core::apps::store::rfc3339;
use crate::core::apps::AppId;
use crate::core::{CoreError, CoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeployState {
    /// To be transferred when its server is online.
    Pending,
    /// The bundle is being transferred.
    Deploying,
    /// The server imported the app.
    Deployed,
    /// The server refused the app (or it is gone from the pool); not retried.
    Failed,
    /// To be removed from its server; the record goes once that is done.
    Deleting,
}

impl DeployState {
    pub fn name(self) -> &'static str {
        match self {
            DeployState::Pending => "Pending",
            DeployState::Deploying => "Deploying",
            DeployState::Deployed => "Deployed",
            DeployState::Failed => "Failed",
            DeployState::Deleting => "Deleting",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    /// The server's id.
    pub server: String,
    pub app: AppId,
    pub state: DeployState,
    /// Why the last attempt failed.
    pub error: Option<String>,
    pub created: String,
}

pub struct Deployments {
    path: PathBuf,
    list: Mutex<Vec<Deployment>>,
    /// Deployments an operation works on now, with its task id; and bytes sent of those
    /// transferring.
    active: Mutex<HashMap<String, Active>>,
}

/// An operation on a deployment: its task id, and for a transfer the bytes sent so far of
/// the bundle's size.
#[derive(Debug, Clone, Default)]
pub struct Active {
    pub task: String,
    pub sent: Option<Arc<AtomicU64>>,
    pub size: u64,
}

impl Active {
    /// Bytes sent and the bundle's size, while transferring.
    pub fn progress(&self) -> Option<(u64, u64)> {
        let sent = self.sent.as_ref()?.load(Ordering::Relaxed);
        Some((sent.min(self.size), self.size))
    }
}

/// Marks a deployment as worked on until dropped.
pub struct ActiveGuard {
    deployments: Arc<Deployments>,
    id: String,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.deployments.active().remove(&self.id);
    }
}

impl Deployments {
    /// Opens `deployments.json`; transfers a restart interrupted are pending again.
    pub fn open(dir: &Path) -> CoreResult<Self> {
        let path = dir.join("deployments.json");
        let mut list: Vec<Deployment> = read_json(&path)?.unwrap_or_default();
        for d in list
            .iter_mut()
            .filter(|d| d.state == DeployState::Deploying)
        {
            d.state = DeployState::Pending;
        }
        Ok(Self {
            path,
            list: Mutex::new(list),
            active: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Deployment>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Vec<Deployment> {
        self.lock().clone()
    }

    pub fn get(&self, id: &str) -> CoreResult<Deployment> {
        self.lock()
            .iter()
            .find(|d| d.id == id)
            .cloned()
            .ok_or_else(|| CoreError::NotFound(format!("no deployment {id}")))
    }

    /// A new pending deployment; `Conflict` while another of the app to the server exists
    /// (and has not failed).
    pub fn add(&self, server: &str, app: &AppId, id: String) -> CoreResult<Deployment> {
        let mut list = self.lock();
        if let Some(d) = list
            .iter()
            .find(|d| d.server == server && &d.app == app && d.state != DeployState::Failed)
        {
            return Err(CoreError::Conflict(format!(
                "{app} is deployed to {server} already (deployment {}, {})",
                d.id,
                d.state.name()
            )));
        }
        list.retain(|d| !(d.server == server && &d.app == app));
        let d = Deployment {
            id,
            server: server.to_string(),
            app: app.clone(),
            state: DeployState::Pending,
            error: None,
            created: rfc3339(SystemTime::now()),
        };
        list.push(d.clone());
        write_json(&self.path, &*list)?;
        Ok(d)
    }

    /// Sets a deployment's state (and error); false when it is gone.
    pub fn set(&self, id: &str, state: DeployState, error: Option<String>) -> CoreResult<bool> {
        let mut list = self.lock();
        let Some(d) = list.iter_mut().find(|d| d.id == id) else {
            return Ok(false);
        };
        d.state = state;
        d.error = error;
        write_json(&self.path, &*list)?;
        Ok(true)
    }

    pub fn remove(&self, id: &str) -> CoreResult<()> {
        let mut list = self.lock();
        list.retain(|d| d.id != id);
        write_json(&self.path, &*list)
    }

    /// Whether a deployment of `app` still needs the pool's copy of it.
    pub fn pending_for(&self, app: &AppId) -> bool {
        self.lock().iter().any(|d| {
            &d.app == app && matches!(d.state, DeployState::Pending | DeployState::Deploying)
        })
    }

    /// Deployments to `server`.
    pub fn count_for(&self, server: &str) -> usize {
        self.lock().iter().filter(|d| d.server == server).count()
    }

    /// Deployments with work to do on servers that are online, no operation on them yet.
    pub fn due(&self, online: &HashSet<String>) -> Vec<Deployment> {
        let active = self.active();
        self.lock()
            .iter()
            .filter(|d| matches!(d.state, DeployState::Pending | DeployState::Deleting))
            .filter(|d| online.contains(&d.server) && !active.contains_key(&d.id))
            .cloned()
            .collect()
    }

    /// Claims a deployment for an operation; `Busy` while another works on it.
    pub fn activate(self: &Arc<Self>, id: &str) -> CoreResult<ActiveGuard> {
        let mut active = self.active();
        if active.contains_key(id) {
            return Err(CoreError::Busy(format!(
                "deployment {id} is being worked on"
            )));
        }
        active.insert(id.to_string(), Active::default());
        Ok(ActiveGuard {
            deployments: self.clone(),
            id: id.to_string(),
        })
    }

    /// Names the operation's task (once it has one).
    pub fn set_task(&self, id: &str, task: &str) {
        if let Some(a) = self.active().get_mut(id) {
            a.task = task.to_string();
        }
    }

    /// The operation working on a deployment now, if any.
    pub fn active_of(&self, id: &str) -> Option<Active> {
        self.active().get(id).cloned()
    }

    /// Follows a transfer's bytes (`sent`) of `size`.
    pub fn track(&self, id: &str, sent: Arc<AtomicU64>, size: u64) {
        if let Some(a) = self.active().get_mut(id) {
            a.sent = Some(sent);
            a.size = size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_persist_and_interrupted_transfers_are_pending_again() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Arc::new(Deployments::open(dir.path()).unwrap());
        let app = AppId::from("web:1");
        let d = ds.add("s1", &app, "d1".into()).unwrap();
        assert_eq!(d.state, DeployState::Pending);
        assert!(ds.add("s1", &app, "d2".into()).is_err());
        ds.add("s2", &app, "d3".into()).unwrap();
        assert!(ds.pending_for(&app));
        let online = HashSet::from(["s1".to_string()]);
        assert_eq!(ds.due(&online).len(), 1);
        let guard = ds.activate("d1").unwrap();
        assert!(ds.activate("d1").is_err());
        assert!(ds.due(&online).is_empty());
        ds.set("d1", DeployState::Deploying, None).unwrap();
        drop(guard);
        let again = Deployments::open(dir.path()).unwrap();
        assert_eq!(again.get("d1").unwrap().state, DeployState::Pending);
        again
            .set("d1", DeployState::Failed, Some("refused".into()))
            .unwrap();
        // A failed deployment may be asked for again.
        again.add("s1", &app, "d4".into()).unwrap();
        assert!(again.get("d1").is_err());
        again.remove("d4").unwrap();
        assert_eq!(again.count_for("s1"), 0);
    }
}
