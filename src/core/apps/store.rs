//! The store of imported apps at `<state_dir>/apps/`: one directory per app, named by the
//! percent-encoded app id, holding the bundle's files (minus image tarballs) and
//! `gantry-app.json`.
//!
//! An app is fully there or absent, even across a power cut: an import is written into a
//! `.tmp-*` directory, fsynced, renamed into place and the parent fsynced. A replaced or
//! removed app is first renamed to `.old-*`, so nothing half-deleted is ever visible;
//! [`AppStore::open`] finishes or undoes whatever a crash interrupted. All calls block: async
//! callers use `spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tempfile::TempDir;

use super::{AppConfig, AppId};
use crate::core::recovery::{crash_point, crash_point_unsynced};
use crate::core::ErrorKind;

pub const RECORD_FILE: &str = "gantry-app.json";
const RECORD_FORMAT: u32 = 1;
const TMP_PREFIX: &str = ".tmp-";
const OLD_PREFIX: &str = ".old-";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("app {0} is already installed")]
    Exists(AppId),
    #[error("no such app: {0}")]
    NotFound(AppId),
    /// Two apps would fight over one compose project.
    #[error("app {id} would share the compose project name \"{slug}\" with the installed app {other}; change its Name or Version")]
    SlugTaken {
        id: AppId,
        other: AppId,
        slug: String,
    },
    #[error("\"{0}\" cannot be stored: the app id is empty or too long")]
    InvalidId(AppId),
    #[error("app store: {0}")]
    Io(String),
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Exists(_) | StoreError::SlugTaken { .. } => ErrorKind::Conflict,
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::InvalidId(_) => ErrorKind::Invalid,
            StoreError::Io(_) => ErrorKind::Failed,
        }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |e| StoreError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// An image loaded from the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The tarball it came from (`docker/web.tar`).
    pub file: String,
    pub id: String,
    pub references: Vec<String>,
}

/// `gantry-app.json`: gantry's own metadata about an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub format: u32,
    pub id: AppId,
    /// RFC 3339, UTC.
    pub imported: String,
    pub images: Vec<ImageRecord>,
    pub config: AppConfig,
}

/// An app in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredApp {
    pub dir: PathBuf,
    pub record: AppRecord,
}

impl StoredApp {
    pub fn id(&self) -> &AppId {
        &self.record.id
    }

    pub fn config(&self) -> &AppConfig {
        &self.record.config
    }

    /// `icon.svg`, `icon.png` or `icon.jpg` (in that preference, any case).
    pub fn icon(&self) -> Option<PathBuf> {
        find_file(&self.dir, &["icon.svg", "icon.png", "icon.jpg"])
    }

    /// `README.md`, any case.
    pub fn readme(&self) -> Option<PathBuf> {
        find_file(&self.dir, &["readme.md"])
    }
}

/// An import being written: a `.tmp-*` directory in the store, removed when dropped unless
/// [`AppStore::insert`] moved it into place.
#[derive(Debug)]
pub struct StagedApp {
    dir: TempDir,
    id: AppId,
    config: AppConfig,
    /// Filled by the import as it loads images.
    pub images: Vec<ImageRecord>,
}

impl StagedApp {
    /// Where the bundle's files go (`Bundle::extract_metadata`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    #[cfg(test)]
    pub fn id(&self) -> &AppId {
        &self.id
    }

    #[cfg(test)]
    pub fn config(&self) -> &AppConfig {
        &self.config
    }
}

pub struct AppStore {
    root: PathBuf,
    /// Serialises inserts and removals, so "exists?" and the renames that follow agree.
    lock: Mutex<()>,
}

impl AppStore {
    /// Opens (creating) the store at `root` and cleans up after a crash: unfinished imports
    /// are deleted, interrupted replaces and removals resolved (see `resolve_old`).
    pub fn open(root: &Path) -> Result<AppStore, StoreError> {
        fs::create_dir_all(root).map_err(io_err("create", root))?;
        let store = AppStore {
            root: root.to_path_buf(),
            lock: Mutex::new(()),
        };
        let mut changed = false;
        for entry in fs::read_dir(root).map_err(io_err("read", root))? {
            let path = entry.map_err(io_err("read", root))?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with(TMP_PREFIX) {
                match remove_any(&path) {
                    Ok(()) => tracing::info!(dir = %path.display(), "removed an unfinished import"),
                    Err(e) => {
                        tracing::warn!(
                            dir = %path.display(),
                            error = %e,
                            "cannot remove an unfinished import"
                        )
                    }
                }
            } else if name.starts_with(OLD_PREFIX) {
                store.resolve_old(&path);
            } else {
                continue;
            }
            changed = true;
        }
        if changed {
            sync_dir(root)?;
        }
        Ok(store)
    }

    /// The store at `root` as it is, for reading only (no clean-up: another part of the
    /// daemon owns it); None when it does not exist.
    pub fn existing(root: &Path) -> Option<AppStore> {
        root.is_dir().then(|| AppStore {
            root: root.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    /// A `.old-*` directory that still holds its record was moved away by a replace or
    /// removal that a crash interrupted: if nothing took its place, put it back (the app is
    /// whole; the operation did not happen). Otherwise finish the job and delete it.
    fn resolve_old(&self, path: &Path) {
        if let Ok(record) = read_record(path) {
            let target = self.app_dir(&record.id);
            if valid_id(&record.id) && !target.exists() {
                match fs::rename(path, &target) {
                    Ok(()) => {
                        tracing::info!(
                            app = %record.id,
                            "restored an app that an interrupted replace or removal had moved away"
                        );
                        return;
                    }
                    Err(e) => tracing::warn!(app = %record.id, error = %e, "cannot restore an app"),
                }
            }
        }
        match discard(path) {
            Ok(()) => tracing::info!(dir = %path.display(), "removed a replaced or deleted app"),
            Err(e) => {
                tracing::warn!(
                    dir = %path.display(),
                    error = %e,
                    "cannot remove a replaced or deleted app"
                )
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn app_dir(&self, id: &AppId) -> PathBuf {
        self.root.join(id.dir_name())
    }

    /// Every app, sorted by id. Directories without a readable `gantry-app.json` are skipped
    /// (and logged): they are not apps gantry made.
    pub fn list(&self) -> Result<Vec<StoredApp>, StoreError> {
        let mut apps = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(io_err("read", &self.root))? {
            let entry = entry.map_err(io_err("read", &self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = entry.path();
            match read_record(&dir) {
                Ok(record) if record.id.dir_name() == name => {
                    apps.push(StoredApp { dir, record });
                }
                Ok(record) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        app = %record.id,
                        "skipping an app stored under the wrong directory name"
                    );
                }
                Err(e) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        error = %e,
                        "skipping a directory that is not an app"
                    )
                }
            }
        }
        apps.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        Ok(apps)
    }

    pub fn get(&self, id: &AppId) -> Result<StoredApp, StoreError> {
        if !valid_id(id) {
            return Err(StoreError::NotFound(id.clone()));
        }
        let dir = self.app_dir(id);
        match read_record(&dir) {
            Ok(record) => Ok(StoredApp { dir, record }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(id.clone())),
            Err(e) => Err(StoreError::Io(format!(
                "cannot read {}: {e}",
                dir.join(RECORD_FILE).display()
            ))),
        }
    }

    pub fn contains(&self, id: &AppId) -> bool {
        valid_id(id) && self.app_dir(id).join(RECORD_FILE).is_file()
    }

    /// A fresh `.tmp-*` directory for the app that `config` describes.
    pub fn stage(&self, config: AppConfig) -> Result<StagedApp, StoreError> {
        let id = config.id();
        if !valid_id(&id) {
            return Err(StoreError::InvalidId(id));
        }
        // 0755 rather than tempfile's 0700: the directory becomes the app's, and a compose
        // file may bind-mount it into containers that do not run as root.
        let dir = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir_in(&self.root)
            .map_err(io_err("create a directory in", &self.root))?;
        Ok(StagedApp {
            dir,
            id,
            config,
            images: Vec::new(),
        })
    }

    /// Moves a staged app into place, replacing an app of the same id only with `replace`.
    /// Writes `gantry-app.json` (imported now) and fsyncs everything before the rename.
    pub fn insert(&self, staged: StagedApp, replace: bool) -> Result<StoredApp, StoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let StagedApp {
            dir: tmp,
            id,
            config,
            images,
        } = staged;
        let target = self.app_dir(&id);
        let exists = target.exists();
        if exists && !replace {
            return Err(StoreError::Exists(id));
        }
        let slug = id.slug();
        if let Some(other) = self
            .list()?
            .into_iter()
            .find(|a| a.record.id != id && a.record.id.slug() == slug)
        {
            return Err(StoreError::SlugTaken {
                id,
                other: other.record.id,
                slug,
            });
        }

        let record = AppRecord {
            format: RECORD_FORMAT,
            id,
            imported: rfc3339(SystemTime::now()),
            images,
            config,
        };
        write_record(tmp.path(), &record)?;
        sync_tree(tmp.path()).map_err(io_err("sync", tmp.path()))?;

        let old = if exists {
            let old = self.old_dir()?;
            fs::rename(&target, &old).map_err(io_err("move away", &target))?;
            Some(old)
        } else {
            None
        };
        if let Err(e) = fs::rename(tmp.path(), &target) {
            if let Some(old) = &old {
                if let Err(e) = fs::rename(old, &target) {
                    tracing::warn!(
                        app = %record.id,
                        error = %e,
                        "cannot put the replaced app back; it is restored at the next start"
                    );
                }
            }
            return Err(io_err("move into place", &target)(e));
        }
        // Renamed away: dropping the TempDir must not delete the app.
        let _ = tmp.keep();
        crash_point("store.insert.renamed");
        sync_dir(&self.root)?;
        if let Some(old) = old {
            if let Err(e) = discard(&old) {
                tracing::warn!(
                    dir = %old.display(),
                    error = %e,
                    "cannot remove the replaced app; it is removed at the next start"
                );
            }
        }
        Ok(StoredApp {
            dir: target,
            record,
        })
    }

    /// Removes an app: renamed away first, so a crash never leaves half of it visible.
    pub fn remove(&self, id: &AppId) -> Result<(), StoreError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.contains(id) {
            return Err(StoreError::NotFound(id.clone()));
        }
        let target = self.app_dir(id);
        let old = self.old_dir()?;
        fs::rename(&target, &old).map_err(io_err("move away", &target))?;
        sync_dir(&self.root)?;
        crash_point("store.remove.renamed");
        if let Err(e) = discard(&old) {
            tracing::warn!(
                dir = %old.display(),
                error = %e,
                "cannot remove a deleted app's files; they are removed at the next start"
            );
        }
        Ok(())
    }

    /// An empty, uniquely named `.old-*` directory; `rename(2)` may replace an empty one.
    fn old_dir(&self) -> Result<PathBuf, StoreError> {
        tempfile::Builder::new()
            .prefix(OLD_PREFIX)
            .tempdir_in(&self.root)
            .map(TempDir::keep)
            .map_err(io_err("create a directory in", &self.root))
    }
}

/// Ids the store can hold: the directory name must be a valid, non-empty file name.
fn valid_id(id: &AppId) -> bool {
    let len = id.dir_name().len();
    len > 0 && len <= 255
}

fn read_record(dir: &Path) -> io::Result<AppRecord> {
    // A service that bind-mounts its app directory could swap the record for a symlink.
    let bytes = crate::core::safe_fs::read(dir, Path::new(RECORD_FILE), 1 << 20)
        .map_err(io::Error::from)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn write_record(dir: &Path, record: &AppRecord) -> Result<(), StoreError> {
    let path = dir.join(RECORD_FILE);
    let json = serde_json::to_vec_pretty(record).expect("the record serialises");
    let mut file = File::create(&path).map_err(io_err("create", &path))?;
    file.write_all(&json)
        .and_then(|()| {
            crash_point_unsynced("store.record.unsynced", &path, 0);
            file.sync_all()
        })
        .map_err(io_err("write", &path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

/// fsyncs every file and directory under `dir`, and `dir` itself.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    File::open(dir)?.sync_all()
}

/// Deletes a `.old-*` directory. Its record goes first (and durably), so that a crash
/// midway leaves a directory [`AppStore::open`] deletes rather than one it would restore.
fn discard(dir: &Path) -> io::Result<()> {
    match fs::remove_file(dir.join(RECORD_FILE)) {
        Ok(()) => File::open(dir)?.sync_all()?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::remove_dir_all(dir)
}

fn remove_any(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

/// The first of `names` (lowercase, by preference) that `dir` holds as a regular file, in
/// any case; among names differing only in case, the alphabetically first.
fn find_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    let mut files: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    files.sort();
    names.iter().find_map(|want| {
        files
            .iter()
            .find(|(name, _)| name.to_lowercase() == *want)
            .map(|(_, path)| path.clone())
    })
}

/// `2024-02-29T12:00:00Z`, without a date crate: days since the epoch to a civil date by
/// Howard Hinnant's `civil_from_days`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(name: &str, version: &str) -> AppConfig {
        AppConfig {
            name: name.into(),
            version: version.into(),
            ..Default::default()
        }
    }

    /// Stages an app with a compose file and `files`, as an import would.
    fn staged(store: &AppStore, name: &str, version: &str, files: &[(&str, &str)]) -> StagedApp {
        let staged = store.stage(config(name, version)).unwrap();
        fs::write(staged.dir().join("compose.yaml"), "services: {}\n").unwrap();
        for (file, content) in files {
            let path = staged.dir().join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        staged
    }

    /// Read, not set: setting it would race with the other tests' threads.
    fn umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }

    fn entries(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn ids(store: &AppStore) -> Vec<String> {
        store
            .list()
            .unwrap()
            .iter()
            .map(|a| a.id().to_string())
            .collect()
    }

    #[test]
    fn open_creates_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("state/apps");
        let store = AppStore::open(&root).unwrap();
        assert!(root.is_dir());
        assert_eq!(store.root(), root);
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn insert_get_list() {
        let tmp = tempfile::tempdir().unwrap();
        let store = AppStore::open(tmp.path()).unwrap();
        let mut app = staged(&store, "web", "1.0", &[("README.md", "# web")]);
        app.images.push(ImageRecord {
            file: "docker/web.tar".into(),
            id: "sha256:abc".into(),
            references: vec!["web:1.0".into()],
        });
        let staged_dir = app.dir().to_path_buf();
        let mode = fs::metadata(&staged_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755 & !umask());
        assert!(staged_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".tmp-"));
        let id = app.id().clone();
        assert_eq!(app.config().name, "web");
        let stored = store.insert(app, false).unwrap();
        assert_eq!(stored.config().version, "1.0");

        assert_eq!(stored.dir, tmp.path().join("web%3A1%2E0"));
        assert!(!staged_dir.exists());
        assert!(store.contains(&id));
        assert_eq!(store.get(&id).unwrap(), stored);
        assert_eq!(ids(&store), ["web:1.0"]);
        assert_eq!(entries(tmp.path()), ["web%3A1%2E0"]);

        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(stored.dir.join(RECORD_FILE)).unwrap()).unwrap();
        assert_eq!(json["format"], 1);
        assert_eq!(json["id"], "web:1.0");
        assert_eq!(json["config"]["Name"], "web");
        assert_eq!(json["images"][0]["id"], "sha256:abc");
        assert_eq!(json["images"][0]["references"][0], "web:1.0");
        let imported = json["imported"].as_str().unwrap();
        assert_eq!(imported.len(), 20, "{imported}");
        assert!(imported.ends_with('Z') && imported.as_bytes()[10] == b'T');

        // Sorted by id.
        store.insert(staged(&store, "db", "2", &[]), false).unwrap();
        store
            .insert(staged(&store, "api", "1", &[]), false)
            .unwrap();
        assert_eq!(ids(&store), ["api:1", "db:2", "web:1.0"]);
    }

    #[test]
    fn insert_refuses_an_existing_app_unless_replacing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = AppStore::open(tmp.path()).unwrap();
        store
            .insert(staged(&store, "web", "1", &[("old.txt", "old")]), false)
            .unwrap();

        let again = staged(&store, "web", "1", &[("new.txt", "new")]);
        let again_dir = again.dir().to_path_buf();
        let e = store.insert(again, false).unwrap_err();
        assert_eq!(e, StoreError::Exists(AppId::from("web:1")));
        assert_eq!(e.to_string(), "app web:1 is already installed");
        // The refused import's temp directory went with it.
        assert!(!again_dir.exists());

        let stored = store
            .insert(staged(&store, "web", "1", &[("new.txt", "new")]), true)
            .unwrap();
        assert!(stored.dir.join("new.txt").is_file());
        assert!(!stored.dir.join("old.txt").exists());
        assert_eq!(entries(tmp.path()), ["web%3A1"]);
    }

    #[test]
    fn apps_sharing_a_compose_project_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = AppStore::open(tmp.path()).unwrap();
        store
            .insert(staged(&store, "My App", "1", &[]), false)
            .unwrap();
        let e = store
            .insert(staged(&store, "myapp", "1", &[]), false)
            .unwrap_err();
        assert_eq!(
            e,
            StoreError::SlugTaken {
                id: AppId::from("myapp:1"),
                other: AppId::from("My App:1"),
                slug: "myapp1".into(),
            }
        );
    }

    #[test]
    fn remove() {
        let tmp = tempfile::tempdir().unwrap();
        let store = AppStore::open(tmp.path()).unwrap();
        store
            .insert(staged(&store, "web", "1", &[("a/b/c.txt", "x")]), false)
            .unwrap();
        let id = AppId::from("web:1");
        store.remove(&id).unwrap();
        assert!(!store.contains(&id));
        assert_eq!(
            store.get(&id).unwrap_err(),
            StoreError::NotFound(id.clone())
        );
        assert!(entries(tmp.path()).is_empty());
        assert_eq!(store.remove(&id).unwrap_err(), StoreError::NotFound(id));
    }

    #[test]
    fn odd_ids_are_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let store = AppStore::open(tmp.path()).unwrap();
        for id in ["", "..", "../x", &"x".repeat(300)] {
            let id = AppId::from(id);
            assert!(!store.contains(&id));
            assert_eq!(
                store.get(&id).unwrap_err(),
                StoreError::NotFound(id.clone())
            );
        }
        assert!(matches!(
            store.stage(config(&"x".repeat(300), "1")),
            Err(StoreError::InvalidId(_))
        ));
    }

    #[test]
    fn a_dropped_stage_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = AppStore::open(tmp.path()).unwrap();
        let app = staged(&store, "web", "1", &[("x", "y")]);
        assert_eq!(entries(tmp.path()).len(), 1);
        drop(app);
        assert!(entries(tmp.path()).is_empty());
    }

    #[test]
    fn a_crash_mid_import_is_cleaned_up() {
        let tmp = tempfile::tempdir().unwrap();
        let store = AppStore::open(tmp.path()).unwrap();
        store
            .insert(staged(&store, "web", "1", &[("README.md", "hi")]), false)
            .unwrap();
        let before = store.list().unwrap();

        // A crash halfway through writing an import: some files, no record.
        let half = tmp.path().join(".tmp-x");
        fs::create_dir_all(half.join("screenshots")).unwrap();
        fs::write(half.join("compose.yaml"), "services:").unwrap();
        fs::write(half.join("screenshots/a.png"), "png").unwrap();
        // Some other leftover that only looks like an app.
        fs::create_dir(tmp.path().join("junk")).unwrap();
        drop(store);

        let store = AppStore::open(tmp.path()).unwrap();
        assert!(!half.exists());
        assert_eq!(store.list().unwrap(), before);
        assert_eq!(entries(tmp.path()), ["junk", "web%3A1"]);
    }

    #[test]
    fn a_crash_mid_replace_or_remove_is_resolved() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let store = AppStore::open(root).unwrap();
        store.insert(staged(&store, "a", "1", &[]), false).unwrap();
        store.insert(staged(&store, "b", "1", &[]), false).unwrap();
        store.insert(staged(&store, "c", "1", &[]), false).unwrap();
        drop(store);
        // "a" was moved away and the crash came before its replacement moved in: put back.
        fs::rename(root.join("a%3A1"), root.join(".old-1")).unwrap();
        // "b" was replaced; only deleting the old copy was left to do.
        fs::create_dir(root.join(".old-2")).unwrap();
        fs::copy(
            root.join("b%3A1").join(RECORD_FILE),
            root.join(".old-2").join(RECORD_FILE),
        )
        .unwrap();
        // "c" was being removed and its record was already gone: finish removing.
        fs::rename(root.join("c%3A1"), root.join(".old-3")).unwrap();
        fs::remove_file(root.join(".old-3").join(RECORD_FILE)).unwrap();

        let store = AppStore::open(root).unwrap();
        assert_eq!(ids(&store), ["a:1", "b:1"]);
        assert_eq!(entries(root), ["a%3A1", "b%3A1"]);
    }

    #[test]
    fn icon_and_readme() {
        let tmp = tempfile::tempdir().unwrap();
        let store = AppStore::open(tmp.path()).unwrap();
        let app = store
            .insert(
                staged(
                    &store,
                    "web",
                    "1",
                    &[
                        ("Readme.MD", "# hi"),
                        ("ICON.png", "png"),
                        ("icon.jpg", "jpg"),
                    ],
                ),
                false,
            )
            .unwrap();
        assert_eq!(app.icon().unwrap(), app.dir.join("ICON.png"));
        assert_eq!(app.readme().unwrap(), app.dir.join("Readme.MD"));
        fs::write(app.dir.join("icon.SVG"), "<svg/>").unwrap();
        assert_eq!(app.icon().unwrap(), app.dir.join("icon.SVG"));

        let bare = store.insert(staged(&store, "db", "1", &[]), false).unwrap();
        assert_eq!(bare.icon(), None);
        assert_eq!(bare.readme(), None);
        // A directory by that name is not a readme.
        fs::create_dir(bare.dir.join("README.md")).unwrap();
        assert_eq!(bare.readme(), None);
    }

    #[test]
    fn rfc3339_by_hand() {
        let at = |secs: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(1_709_164_800), "2024-02-29T00:00:00Z");
        assert_eq!(at(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
        // Before the epoch cannot happen on a sane clock; it reads as the epoch.
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn errors_have_kinds() {
        let id = AppId::from("a:1");
        assert_eq!(StoreError::Exists(id.clone()).kind(), ErrorKind::Conflict);
        assert_eq!(StoreError::NotFound(id.clone()).kind(), ErrorKind::NotFound);
        let e = crate::core::CoreError::from(StoreError::NotFound(id));
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(matches!(
            e,
            crate::core::CoreError::Store(StoreError::NotFound(_))
        ));
    }
}
