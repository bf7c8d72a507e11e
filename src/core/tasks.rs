//! Long operations (app imports, starts and stops, image loads, refreshes, and the kinds the
//! other dialects add: services, app maintenance and snapshots, Flow Manager containers) as
//! tasks: each has an id that a client can cancel it by, a cancel token the operation
//! watches, and its latest progress for listings. A task is listed from
//! [`TaskRegistry::begin`] until its [`TaskHandle`] is dropped, i.e. until the operation
//! ended either way, so an id names only operations still running.
//!
//! What happens to an operation when its client goes away or the server stops is decided
//! here, per kind ([`TaskKind::on_client_gone`], [`TaskKind::on_shutdown`]), not by the
//! dialects.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::CoreError;

/// What a task does, for logs and listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Import,
    Start,
    LoadImage,
    Stop,
    Refresh,
    /// Building a template's images.
    Build,
    /// Making an app of a template.
    Instantiate,
    /// Downloading an app from the pool's store.
    PoolInstall,
    /// Publishing a stored app to the pool's store.
    Publish,
    /// Transferring an app from the pool to one of its servers.
    Deploy,
    /// Removing a deployed app from its server.
    Undeploy,
    /// Creating a service (pull, container, bind contents).
    CreateService,
    /// Importing a root filesystem tar as an image.
    ImportImage,
    /// An app's containers recreated from its stored definition.
    Rebuild,
    /// Newer images pulled, changed services recreated, rolled back when unhealthy.
    Update,
    /// An app exported with its images into the snapshots directory.
    Snapshot,
    /// An app stopped and deleted with its images and volumes.
    Purge,
    /// An app bundle fetched, imported and started.
    Provision,
    /// A snapshot of every app.
    Backup,
    /// An app's logs followed.
    Logs,
    /// A command run in a service's container.
    Exec,
    /// Flow Manager container operations.
    FlowCreate,
    FlowUpdate,
    FlowDelete,
}

/// What an operation does when its client goes away or the server stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Cancel it: it rolls back what it did so far.
    Cancel,
    /// Let it run to its end, as if the client were still there.
    Finish,
}

impl TaskKind {
    /// Every kind, in the order listings document them.
    pub const ALL: [TaskKind; 24] = [
        TaskKind::Import,
        TaskKind::Start,
        TaskKind::Stop,
        TaskKind::LoadImage,
        TaskKind::Refresh,
        TaskKind::Build,
        TaskKind::Instantiate,
        TaskKind::PoolInstall,
        TaskKind::Publish,
        TaskKind::Deploy,
        TaskKind::Undeploy,
        TaskKind::CreateService,
        TaskKind::ImportImage,
        TaskKind::Rebuild,
        TaskKind::Update,
        TaskKind::Snapshot,
        TaskKind::Purge,
        TaskKind::Provision,
        TaskKind::Backup,
        TaskKind::Logs,
        TaskKind::Exec,
        TaskKind::FlowCreate,
        TaskKind::FlowUpdate,
        TaskKind::FlowDelete,
    ];

    /// The name listings use.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Import => "import",
            TaskKind::Start => "start",
            TaskKind::LoadImage => "load-image",
            TaskKind::Stop => "stop",
            TaskKind::Refresh => "refresh",
            TaskKind::Build => "build",
            TaskKind::Instantiate => "instantiate",
            TaskKind::PoolInstall => "pool-install",
            TaskKind::Publish => "publish",
            TaskKind::Deploy => "deploy",
            TaskKind::Undeploy => "undeploy",
            TaskKind::CreateService => "create-service",
            TaskKind::ImportImage => "import-image",
            TaskKind::Rebuild => "rebuild",
            TaskKind::Update => "update",
            TaskKind::Snapshot => "snapshot",
            TaskKind::Purge => "purge",
            TaskKind::Provision => "provision",
            TaskKind::Backup => "backup",
            TaskKind::Logs => "logs",
            TaskKind::Exec => "exec",
            TaskKind::FlowCreate => "flow-create",
            TaskKind::FlowUpdate => "flow-update",
            TaskKind::FlowDelete => "flow-delete",
        }
    }

    /// An upload (import, image load, a provision's import) is worthless without its client
    /// and is rolled back, as is a service whose creator left and what only streams to the
    /// client (logs, a command's output); a start, stop, rebuild, update or purge completes,
    /// so that the app never stays half done, and a snapshot or backup is worth having
    /// without its client. A Flow Manager create, update or delete completes too: its outcome
    /// shows in the container list and the broadcasts every client gets. Builds and the
    /// pool's transfers complete too: what they make is useful without the client that asked.
    pub fn on_client_gone(self) -> Policy {
        match self {
            TaskKind::Import
            | TaskKind::LoadImage
            | TaskKind::CreateService
            | TaskKind::ImportImage
            | TaskKind::Provision
            | TaskKind::Logs
            | TaskKind::Exec => Policy::Cancel,
            TaskKind::Start
            | TaskKind::Stop
            | TaskKind::Refresh
            | TaskKind::Rebuild
            | TaskKind::Update
            | TaskKind::Purge
            | TaskKind::Snapshot
            | TaskKind::Backup
            | TaskKind::FlowCreate
            | TaskKind::FlowUpdate
            | TaskKind::FlowDelete
            | TaskKind::Build
            | TaskKind::Instantiate
            | TaskKind::PoolInstall
            | TaskKind::Publish
            | TaskKind::Deploy
            | TaskKind::Undeploy => Policy::Finish,
        }
    }

    /// While the server stops, a refresh (it only reads) stops at once; every other
    /// operation may finish within the shutdown grace period. One still running after it has
    /// lost its client (the server drops what is left), so the client-gone policy applies:
    /// an upload rolls back, and the daemon waits for that before it exits.
    ///
    /// Following logs, a command, and writing snapshots (a temp file that is then removed)
    /// stop at once too: none of them leaves anything half done. Builds stop at once and
    /// remove what they created (they may run for minutes); the pool's transfers stop at once
    /// and resume at the next start (downloads from where they were, deployments from the
    /// beginning).
    pub fn on_shutdown(self) -> Policy {
        match self {
            TaskKind::Refresh
            | TaskKind::Logs
            | TaskKind::Exec
            | TaskKind::Snapshot
            | TaskKind::Backup
            | TaskKind::Build
            | TaskKind::Instantiate
            | TaskKind::PoolInstall
            | TaskKind::Publish
            | TaskKind::Deploy
            | TaskKind::Undeploy => Policy::Cancel,
            TaskKind::Import
            | TaskKind::LoadImage
            | TaskKind::Start
            | TaskKind::Stop
            | TaskKind::CreateService
            | TaskKind::ImportImage
            | TaskKind::Rebuild
            | TaskKind::Update
            | TaskKind::Purge
            | TaskKind::Provision
            | TaskKind::FlowCreate
            | TaskKind::FlowUpdate
            | TaskKind::FlowDelete => Policy::Finish,
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskKind::LoadImage => "image load",
            k => k.name(),
        })
    }
}

/// No running task has this id (never had one, or it already finished).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no running operation has the id {0}")]
pub struct NotFound(pub String);

/// A running task, as listings show it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskInfo {
    pub id: String,
    pub kind: TaskKind,
    /// The app it works on, if any.
    pub app: Option<String>,
    pub started: SystemTime,
    /// How far it is (0.0 ..= 1.0), when it can tell.
    pub fraction: Option<f64>,
    /// What it does right now.
    pub step: String,
}

struct Entry {
    kind: TaskKind,
    app: Option<String>,
    cancel: CancellationToken,
    started: SystemTime,
    fraction: Option<f64>,
    step: String,
}

type Table = Mutex<HashMap<String, Entry>>;

#[derive(Clone)]
pub struct TaskRegistry {
    tasks: Arc<Table>,
    /// Fires when the server stops: tasks whose kind cancels on shutdown are its children.
    shutdown: CancellationToken,
}

impl Default for TaskRegistry {
    fn default() -> Self {
        Self {
            tasks: Arc::default(),
            shutdown: CancellationToken::new(),
        }
    }
}

/// A running task; dropping it ends the task (its id is no longer listed or cancellable).
pub struct TaskHandle {
    pub id: String,
    pub kind: TaskKind,
    pub cancel: CancellationToken,
    tasks: Arc<Table>,
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        lock(&self.tasks).remove(&self.id);
    }
}

impl TaskHandle {
    /// Notes the task's progress for listings.
    pub fn report(&self, fraction: Option<f64>, step: &str) {
        if let Some(e) = lock(&self.tasks).get_mut(&self.id) {
            e.fraction = fraction
                .filter(|f| f.is_finite())
                .map(|f| f.clamp(0.0, 1.0));
            if e.step != step {
                e.step = step.to_string();
            }
        }
    }
}

fn lock(t: &Table) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl TaskRegistry {
    /// A task with a new random id.
    pub fn start(&self, kind: TaskKind) -> TaskHandle {
        self.begin(kind, None, None)
            .expect("a task with a fresh id cannot collide")
    }

    /// A task for `app`, with the id the client chose (`requested`, a UUID) or a new one.
    /// A requested id that is not a UUID is invalid; one a running task has is a conflict.
    pub fn begin(
        &self,
        kind: TaskKind,
        app: Option<&str>,
        requested: Option<&str>,
    ) -> Result<TaskHandle, CoreError> {
        let requested = requested.map(checked_id).transpose()?;
        let cancel = match kind.on_shutdown() {
            Policy::Cancel => self.shutdown.child_token(),
            Policy::Finish => CancellationToken::new(),
        };
        let mut tasks = lock(&self.tasks);
        let id = match requested {
            Some(id) if tasks.contains_key(&id) => {
                return Err(CoreError::Conflict(format!(
                    "an operation with the id {id} is already running: choose another id"
                )))
            }
            Some(id) => id,
            None => loop {
                let id = new_id();
                if !tasks.contains_key(&id) {
                    break id;
                }
            },
        };
        let entry = Entry {
            kind,
            app: app.map(str::to_string),
            cancel: cancel.clone(),
            started: SystemTime::now(),
            fraction: None,
            step: String::new(),
        };
        tasks.insert(id.clone(), entry);
        tracing::debug!(task = %id, %kind, "task started");
        Ok(TaskHandle {
            id,
            kind,
            cancel,
            tasks: self.tasks.clone(),
        })
    }

    /// Asks the task to stop; it rolls itself back and ends.
    pub fn cancel(&self, id: &str) -> Result<TaskKind, NotFound> {
        let tasks = lock(&self.tasks);
        let entry = tasks.get(id).ok_or_else(|| NotFound(id.to_string()))?;
        tracing::info!(task = %id, kind = %entry.kind, "cancel requested");
        entry.cancel.cancel();
        Ok(entry.kind)
    }

    /// The running tasks, oldest first.
    pub fn list(&self) -> Vec<TaskInfo> {
        let mut out: Vec<TaskInfo> = lock(&self.tasks)
            .iter()
            .map(|(id, e)| TaskInfo {
                id: id.clone(),
                kind: e.kind,
                app: e.app.clone(),
                started: e.started,
                fraction: e.fraction,
                step: e.step.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
        out
    }

    /// Whether the server is stopping (a cancelled operation may keep what it did for the
    /// next start instead of rolling back).
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// The server stops: cancels every task (running or started later) whose kind cancels on
    /// shutdown.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
    }

    /// How many tasks are running.
    pub fn len(&self) -> usize {
        lock(&self.tasks).len()
    }

    /// Waits until no task runs, at most `limit`; false when some still run then.
    pub async fn wait_idle(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.len() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        true
    }
}

/// A client-chosen task id in the canonical UUID layout (lowercased).
fn checked_id(id: &str) -> Result<String, CoreError> {
    let id = id.trim().to_ascii_lowercase();
    let groups: Vec<&str> = id.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(CoreError::Invalid(format!(
            "\"{id}\" is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx): an operation id \
             chosen by the client must be one"
        )));
    }
    Ok(id)
}

/// A random id in the UUID v4 layout (clients treat it as an opaque string). Reads the
/// kernel's random source; falls back to std's randomly keyed hasher.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !ok {
        use std::hash::{BuildHasher, Hasher};
        for half in b.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ErrorKind;

    /// The kinds the Transfer API documents for `GET /api/tasks` are all of them, once each
    /// (`/metrics` lists every kind from [`TaskKind::ALL`]).
    #[test]
    fn every_kind_is_listed_once_as_the_task_listing_documents_them() {
        let doc = include_str!("../api/transfer/openapi.yaml");
        let line = doc
            .lines()
            .find(|l| l.trim_start().starts_with("enum: [import, start,"))
            .expect("the Task.Kind enum");
        let documented: Vec<&str> = line
            .split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(names, _)| names.split(',').map(str::trim).collect())
            .unwrap();
        let mut names: Vec<&str> = TaskKind::ALL.iter().map(|k| k.name()).collect();
        let mut want = documented.clone();
        names.sort_unstable();
        want.sort_unstable();
        assert_eq!(names, want);
        names.dedup();
        assert_eq!(names.len(), TaskKind::ALL.len());
    }

    #[test]
    fn tasks_are_listed_until_dropped_and_cancellable_meanwhile() {
        let reg = TaskRegistry::default();
        let a = reg.start(TaskKind::Import);
        let b = reg.start(TaskKind::Start);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 36);
        assert_eq!(a.id.as_bytes()[14], b'4');
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.cancel(&a.id), Ok(TaskKind::Import));
        assert!(a.cancel.is_cancelled());
        assert!(!b.cancel.is_cancelled());
        let id = a.id.clone();
        drop(a);
        assert_eq!(reg.cancel(&id), Err(NotFound(id.clone())));
        assert_eq!(reg.len(), 1);
        drop(b);
        assert_eq!(reg.len(), 0);
        assert!(reg.cancel("nope").is_err());
    }

    #[test]
    fn clients_may_name_the_id_once_and_only_as_a_uuid() {
        let reg = TaskRegistry::default();
        let id = "0F8FAD5B-D9CB-469F-A165-70867728950E";
        let t = reg.begin(TaskKind::Start, Some("web:1"), Some(id)).unwrap();
        assert_eq!(t.id, id.to_ascii_lowercase());
        let again = reg.begin(TaskKind::Stop, None, Some(id)).err().unwrap();
        assert_eq!(again.kind(), ErrorKind::Conflict);
        for bad in [
            "",
            "x",
            "0f8fad5b-d9cb-469f-a165-70867728950",
            "g".repeat(36).as_str(),
        ] {
            let e = reg.begin(TaskKind::Start, None, Some(bad)).err().unwrap();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad}");
        }
        t.report(Some(0.5), "Loading images");
        let list = reg.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].app.as_deref(), Some("web:1"));
        assert_eq!(list[0].fraction, Some(0.5));
        assert_eq!(list[0].step, "Loading images");
        assert_eq!(list[0].kind, TaskKind::Start);
    }

    #[test]
    fn shutdown_cancels_refreshes_and_lets_other_operations_finish() {
        let reg = TaskRegistry::default();
        let import = reg.start(TaskKind::Import);
        let start = reg.start(TaskKind::Start);
        let stop = reg.start(TaskKind::Stop);
        let refresh = reg.start(TaskKind::Refresh);
        reg.shut_down();
        assert!(refresh.cancel.is_cancelled());
        assert!(reg.start(TaskKind::Refresh).cancel.is_cancelled());
        for t in [&import, &start, &stop] {
            assert!(!t.cancel.is_cancelled(), "{}", t.kind);
        }
        assert!(!reg.start(TaskKind::LoadImage).cancel.is_cancelled());
    }
}
