//! The intent log: one small file per long operation in flight, written durably before the
//! operation touches Docker, the store or the kernel and removed when it is done.
//!
//! `<dir>/<started>-<n>-<kind>.json` holds a [`Record`]: the operation's kind, the app it works
//! on, and what its recovery rule needs (`data`, noted as the operation goes). Each write goes
//! to a temp file that is fsynced, renamed into place, and the directory fsynced, so a file
//! is either absent or whole. An operation that ends ([`Intent::done`]) removes its file; one
//! that cannot settle (Docker went away) leaves it ([`Intent::keep`]) for the resolver, as a
//! crash does. At start every file found is pending: the owner resolves it by its kind's rule
//! before serving (docs/DECISIONS.md, "Interrupted operations").

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::crash::crash_point_unsynced;
use crate::core::{CoreError, CoreResult};

/// The kinds of operation one log holds (each owner has its enum, resolved exhaustively).
pub trait IntentKind:
    Copy + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The name in file names and logs: the kind as the intent file writes it.
    fn name(self) -> String {
        let v = serde_json::to_value(self).unwrap_or_default();
        v.as_str().unwrap_or("operation").to_string()
    }
}

const FORMAT: u32 = 1;

/// What an intent file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record<K> {
    pub format: u32,
    pub kind: K,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// When the operation began (RFC 3339, UTC).
    #[serde(default)]
    pub started: String,
    /// What the kind's recovery rule needs, noted by the operation as it goes.
    #[serde(default)]
    pub data: Map<String, Value>,
}

impl<K> Record<K> {
    /// The noted value `key`, decoded (None when absent or of another shape).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_value(self.data.get(key)?.clone()).ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its operation runs in this process.
    Running,
    /// Left by a crash or by an operation that could not settle: the resolver's.
    Pending,
    /// Being resolved.
    Resolving,
}

#[derive(Debug, Clone)]
struct Entry {
    app: Option<String>,
    state: State,
    /// Resolutions tried and failed so far.
    attempts: u32,
}

struct Inner {
    /// None: a log that keeps nothing (unit tests).
    dir: Option<PathBuf>,
    entries: Mutex<HashMap<String, Entry>>,
    seq: AtomicU64,
    /// Wakes the resolver when an intent becomes pending.
    pending: tokio::sync::Notify,
}

/// A directory of intents of kind `K`. Cheap to clone (shared).
pub struct IntentLog<K> {
    inner: Arc<Inner>,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for IntentLog<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for IntentLog<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntentLog")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// An intent found pending, taken by the resolver ([`IntentLog::take_pending`]).
#[derive(Debug)]
pub struct Pending<K> {
    pub id: String,
    pub record: Record<K>,
    /// Earlier resolutions of it that failed.
    pub attempts: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K: IntentKind> IntentLog<K> {
    /// Opens (creating) the log at `dir`: temp files of a write a crash interrupted are
    /// removed; every intent found is pending.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut entries = HashMap::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.ends_with(".tmp") {
                fs::remove_file(&path)?;
            } else if let Some(id) = name.strip_suffix(".json") {
                let app = app_of(&path);
                let (state, attempts) = (State::Pending, 0);
                entries.insert(
                    id.to_string(),
                    Entry {
                        app,
                        state,
                        attempts,
                    },
                );
            }
        }
        sync_dir(dir)?;
        if !entries.is_empty() {
            tracing::info!(dir = %dir.display(), pending = entries.len(), "operations interrupted by a crash");
        }
        Ok(Self::with(Some(dir.to_path_buf()), entries))
    }

    /// A log that writes nothing: operations run without crash recovery.
    pub fn disabled() -> Self {
        Self::with(None, HashMap::new())
    }

    fn with(dir: Option<PathBuf>, entries: HashMap<String, Entry>) -> Self {
        Self {
            inner: Arc::new(Inner {
                dir,
                entries: Mutex::new(entries),
                seq: AtomicU64::new(0),
                pending: tokio::sync::Notify::new(),
            }),
            _kind: PhantomData,
        }
    }

    /// Records, durably, that an operation of `kind` on `app` begins.
    pub fn begin(
        &self,
        kind: K,
        app: Option<&str>,
        data: Map<String, Value>,
    ) -> CoreResult<Intent<K>> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{nanos:020}-{n}-{}", kind.name());
        let record = Record {
            format: FORMAT,
            kind,
            app: app.map(str::to_string),
            started: crate::core::apps::store::rfc3339(SystemTime::now()),
            data,
        };
        self.write(&id, &record)?;
        let entry = Entry {
            app: record.app.clone(),
            state: State::Running,
            attempts: 0,
        };
        lock(&self.inner.entries).insert(id.clone(), entry);
        Ok(Intent {
            log: self.clone(),
            id,
            record: Mutex::new(record),
            ended: AtomicBool::new(false),
        })
    }

    fn path(&self, id: &str) -> Option<PathBuf> {
        Some(self.inner.dir.as_ref()?.join(format!("{id}.json")))
    }

    /// Writes the record: temp file, fsync, rename, fsync of the directory.
    fn write(&self, id: &str, record: &Record<K>) -> CoreResult<()> {
        let Some(path) = self.path(id) else {
            return Ok(());
        };
        let fail = |e| CoreError::io("cannot record the operation's intent", e);
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(record).map_err(|e| fail(io::Error::other(e)))?;
        let mut file = File::create(&tmp).map_err(fail)?;
        let written = file.write_all(&bytes).and_then(|()| {
            crash_point_unsynced("intent.unsynced", &tmp, 0);
            file.sync_all()
        });
        let renamed = written
            .and_then(|()| fs::rename(&tmp, &path))
            .and_then(|()| sync_dir(path.parent().unwrap_or(Path::new("."))));
        if let Err(e) = renamed {
            let _ = fs::remove_file(&tmp);
            return Err(fail(e));
        }
        Ok(())
    }

    /// Removes the intent's file for good.
    fn remove(&self, id: &str) {
        lock(&self.inner.entries).remove(id);
        let Some(path) = self.path(id) else {
            return;
        };
        let removed = fs::remove_file(&path)
            .or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .and_then(|()| sync_dir(path.parent().unwrap_or(Path::new("."))));
        if let Err(e) = removed {
            // Resolved again at the next start: every rule can run twice.
            tracing::warn!(intent = %id, error = %e, "cannot remove a finished operation's intent");
        }
    }

    fn set_state(&self, id: &str, state: State) {
        if self.inner.dir.is_none() {
            // Nothing on disk to resolve.
            lock(&self.inner.entries).remove(id);
            return;
        }
        if let Some(e) = lock(&self.inner.entries).get_mut(id) {
            e.state = state;
        }
        if state == State::Pending {
            self.inner.pending.notify_one();
        }
    }

    /// Whether an intent waits for (or is in) resolution.
    pub fn has_pending(&self) -> bool {
        lock(&self.inner.entries)
            .values()
            .any(|e| e.state != State::Running)
    }

    /// The apps with an intent that waits for (or is in) resolution: they are busy.
    pub fn pending_apps(&self) -> Vec<String> {
        let entries = lock(&self.inner.entries);
        let apps = entries.values().filter(|e| e.state != State::Running);
        apps.filter_map(|e| e.app.clone()).collect()
    }

    /// Whether `app` has an intent that waits for (or is in) resolution.
    pub fn is_pending(&self, app: &str) -> bool {
        self.pending_apps().iter().any(|a| a == app)
    }

    /// Resolves when an intent became pending since the last call (or was before).
    pub async fn became_pending(&self) {
        self.inner.pending.notified().await
    }

    /// The pending intents, oldest first, now being resolved; each goes back with
    /// [`IntentLog::release`]. A file that does not read as an intent of this log is moved
    /// aside (`.bad`) with an error in the log.
    pub fn take_pending(&self) -> Vec<Pending<K>> {
        let mut ids: Vec<(String, u32)> = {
            let mut entries = lock(&self.inner.entries);
            let pending = entries
                .iter_mut()
                .filter(|(_, e)| e.state == State::Pending);
            pending
                .map(|(id, e)| {
                    e.state = State::Resolving;
                    (id.clone(), e.attempts)
                })
                .collect()
        };
        ids.sort();
        ids.into_iter()
            .filter_map(|(id, attempts)| self.read(id, attempts))
            .collect()
    }

    fn read(&self, id: String, attempts: u32) -> Option<Pending<K>> {
        let path = self.path(&id)?;
        let parsed = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Record<K>>(&b).map_err(|e| e.to_string()));
        match parsed {
            Ok(record) => Some(Pending {
                id,
                record,
                attempts,
            }),
            Err(e) => {
                tracing::error!(intent = %path.display(), error = %e, "an interrupted operation this gantry cannot resolve; moved aside");
                let _ = fs::rename(&path, path.with_extension("bad"));
                lock(&self.inner.entries).remove(&id);
                None
            }
        }
    }

    /// Ends the resolution of `p`: resolved, its file goes; else it stays pending.
    pub fn release(&self, p: Pending<K>, resolved: bool) {
        if resolved {
            self.remove(&p.id);
            return;
        }
        if let Some(e) = lock(&self.inner.entries).get_mut(&p.id) {
            e.attempts += 1;
            e.state = State::Pending;
        }
    }
}

/// The app a file names, read loosely (the kind may be unknown to this build).
fn app_of(path: &Path) -> Option<String> {
    let bytes = fs::read(path).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("app")?.as_str().map(str::to_string)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A running operation's intent. [`Intent::done`] when it ended, [`Intent::keep`] when the
/// resolver must finish its work; dropped without either, it is kept.
pub struct Intent<K: IntentKind> {
    log: IntentLog<K>,
    id: String,
    record: Mutex<Record<K>>,
    ended: AtomicBool,
}

impl<K: IntentKind> Intent<K> {
    /// Notes `value` under `key` in the intent, durably.
    pub fn note(&self, key: &str, value: impl Serialize) -> CoreResult<()> {
        let value = serde_json::to_value(value)
            .map_err(|e| CoreError::Failed(format!("cannot note {key}: {e}")))?;
        let mut record = lock(&self.record);
        record.data.insert(key.to_string(), value);
        self.log.write(&self.id, &record)
    }

    /// The intent's id (unique: its file name without `.json`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Names the app the operation works on once it is known (a provision learns it from
    /// the bundle), durably: from now on an interruption keeps that app busy.
    pub fn set_app(&self, app: &str) -> CoreResult<()> {
        let mut record = lock(&self.record);
        record.app = Some(app.to_string());
        self.log.write(&self.id, &record)?;
        if let Some(e) = lock(&self.log.inner.entries).get_mut(&self.id) {
            e.app = Some(app.to_string());
        }
        Ok(())
    }

    /// The operation ended (succeeded, or failed leaving nothing to resolve).
    pub fn done(&self) {
        if !self.ended.swap(true, Ordering::SeqCst) {
            self.log.remove(&self.id);
        }
    }

    /// The operation ended without settling: the resolver applies its kind's rule (once
    /// Docker answers).
    pub fn keep(&self) {
        if !self.ended.swap(true, Ordering::SeqCst) {
            tracing::info!(intent = %self.id, "an operation left for recovery");
            self.log.set_state(&self.id, State::Pending);
        }
    }
}

impl<K: IntentKind> Drop for Intent<K> {
    fn drop(&mut self) {
        self.keep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum Op {
        Start,
        Stop,
    }

    impl IntentKind for Op {}

    fn files(dir: &Path) -> Vec<String> {
        let names = fs::read_dir(dir).unwrap().flatten();
        let names = names.map(|e| e.file_name().to_string_lossy().into_owned());
        names
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    #[test]
    fn an_intent_is_on_disk_while_its_operation_runs() {
        let dir = tempfile::tempdir().unwrap();
        let log = IntentLog::<Op>::open(dir.path()).unwrap();
        let intent = log.begin(Op::Start, Some("web:1"), Map::new()).unwrap();
        let names = files(dir.path());
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].ends_with("-start.json"), "{names:?}");
        intent.note("images", ["sha256:a"]).unwrap();
        assert!(!log.has_pending());
        intent.done();
        assert!(files(dir.path()).is_empty());
    }

    #[test]
    fn a_kept_or_dropped_intent_is_pending_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log = IntentLog::<Op>::open(dir.path()).unwrap();
        let a = log.begin(Op::Start, Some("web:1"), Map::new()).unwrap();
        a.note("step", 2).unwrap();
        a.keep();
        let b = log.begin(Op::Stop, Some("db:1"), Map::new()).unwrap();
        drop(b);
        assert!(log.has_pending());
        assert!(log.is_pending("web:1") && log.is_pending("db:1"));

        // A crash: a new process opens the same directory; a torn temp file is removed.
        fs::write(dir.path().join("x.tmp"), b"{\"form").unwrap();
        let log = IntentLog::<Op>::open(dir.path()).unwrap();
        assert!(log.is_pending("web:1"));
        let pending = log.take_pending();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].record.kind, Op::Start);
        assert_eq!(pending[0].record.get::<u32>("step"), Some(2));
        assert_eq!(pending[1].record.app.as_deref(), Some("db:1"));
        let mut pending = pending.into_iter();
        log.release(pending.next().unwrap(), true);
        log.release(pending.next().unwrap(), false);
        assert_eq!(log.pending_apps(), ["db:1"]);
        assert_eq!(files(dir.path()).len(), 1);
    }

    #[test]
    fn an_unreadable_intent_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("1-0-rebuild.json"),
            br#"{"format":1,"kind":"rebuild","app":"x:1"}"#,
        )
        .unwrap();
        let log = IntentLog::<Op>::open(dir.path()).unwrap();
        assert!(log.is_pending("x:1"));
        assert!(log.take_pending().is_empty());
        assert!(!log.has_pending());
        assert_eq!(files(dir.path()), ["1-0-rebuild.bad"]);
    }

    #[test]
    fn a_disabled_log_writes_nothing() {
        let log = IntentLog::<Op>::disabled();
        let intent = log.begin(Op::Start, None, Map::new()).unwrap();
        intent.note("k", 1).unwrap();
        intent.keep();
        assert!(!log.has_pending());
        assert!(log.take_pending().is_empty());
    }
}
