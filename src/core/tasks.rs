//! Long operations (import, start, image load, stop, refresh) as tasks: each has an id that a client
//! can cancel it by and a cancel handle the operation watches. A task is listed from
//! [`TaskRegistry::start`] until its [`TaskHandle`] is dropped, i.e. until the operation ended
//! either way, so an id names only operations still running.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// What a task does, for logs and listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Import,
    Start,
    LoadImage,
    Stop,
    Refresh,
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskKind::Import => "import",
            TaskKind::Start => "start",
            TaskKind::LoadImage => "image load",
            TaskKind::Stop => "stop",
            TaskKind::Refresh => "refresh",
        })
    }
}

/// No running task has this id (never had one, or it already finished).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no running operation has the id {0}")]
pub struct NotFound(pub String);

type Table = Mutex<HashMap<String, (TaskKind, CancellationToken)>>;

#[derive(Default, Clone)]
pub struct TaskRegistry {
    tasks: Arc<Table>,
}

/// A running task; dropping it ends the task (its id is no longer cancellable).
pub struct TaskHandle {
    pub id: String,
    pub cancel: CancellationToken,
    tasks: Arc<Table>,
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        lock(&self.tasks).remove(&self.id);
    }
}

fn lock(t: &Table) -> std::sync::MutexGuard<'_, HashMap<String, (TaskKind, CancellationToken)>> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl TaskRegistry {
    pub fn start(&self, kind: TaskKind) -> TaskHandle {
        let cancel = CancellationToken::new();
        let mut tasks = lock(&self.tasks);
        let id = loop {
            let id = new_id();
            if !tasks.contains_key(&id) {
                break id;
            }
        };
        tasks.insert(id.clone(), (kind, cancel.clone()));
        tracing::debug!(task = %id, %kind, "task started");
        TaskHandle {
            id,
            cancel,
            tasks: self.tasks.clone(),
        }
    }

    /// Asks the task to stop; it rolls itself back and ends.
    pub fn cancel(&self, id: &str) -> Result<TaskKind, NotFound> {
        let tasks = lock(&self.tasks);
        let (kind, token) = tasks.get(id).ok_or_else(|| NotFound(id.to_string()))?;
        tracing::info!(task = %id, kind = %kind, "cancel requested");
        token.cancel();
        Ok(*kind)
    }

    /// How many tasks are running.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.tasks).len()
    }
}

/// A random id in the UUID v4 layout (clients treat it as an opaque string). Reads the
/// kernel's random source; falls back to std's randomly keyed hasher.
fn new_id() -> String {
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
}
