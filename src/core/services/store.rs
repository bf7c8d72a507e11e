//! A service's directory, `<state>/duxcore/services/<id>/`: `bind/` (what the container sees at
//! its `bind_dir`), `service.json` (the [`StoredService`] record) and, while an environment
//! change waits for the next restart, `env.json`. With Docker's own state this is all there is
//! to a service: nothing lives only in memory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::de::DeserializeOwned;

use super::spec::StoredService;
use crate::core::prefs::write_atomic;
use crate::core::{CoreError, CoreResult};

const BIND: &str = "bind";
const RECORD: &str = "service.json";
const PENDING_ENV: &str = "env.json";
const DOWNLOAD: &str = "bind-contents.tar.gz";

pub type Env = IndexMap<String, String>;

pub struct ServiceDir {
    root: PathBuf,
}

fn io_at(what: &str, path: &Path) -> impl FnOnce(io::Error) -> CoreError {
    let context = format!("cannot {what} {}", path.display());
    move |e| CoreError::io(context, e)
}

/// Whether an I/O error only says the thing is not there.
fn missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

impl ServiceDir {
    /// The directory of service `id` (a checked id: no `/`, no `.` or `..`).
    pub fn new(services: &Path, id: &str) -> Self {
        Self {
            root: services.join(id),
        }
    }

    pub fn bind(&self) -> PathBuf {
        self.root.join(BIND)
    }

    /// Where a `bind_contents` archive is downloaded before it is unpacked.
    pub fn download(&self) -> PathBuf {
        self.root.join(DOWNLOAD)
    }

    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    /// Creates the directory and its `bind/`; true when this call created the directory,
    /// false when it was there already (a live service's, or one left behind).
    pub fn claim(&self) -> CoreResult<bool> {
        if let Some(parent) = self.root.parent() {
            fs::create_dir_all(parent).map_err(io_at("create", parent))?;
        }
        let created = match fs::create_dir(&self.root) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_at("create", &self.root)(e)),
        };
        let bind = self.bind();
        fs::create_dir_all(&bind).map_err(io_at("create", &bind))?;
        Ok(created)
    }

    /// Empties a directory left behind by a service whose container is gone, for a new one.
    pub fn reset(&self) -> CoreResult<()> {
        let bind = self.bind();
        remove_tree(&bind)?;
        fs::create_dir(&bind).map_err(io_at("create", &bind))?;
        for f in [PENDING_ENV, DOWNLOAD, RECORD] {
            remove_file(&self.root.join(f))?;
        }
        Ok(())
    }

    /// Removes the directory and everything in it; nothing there is no error.
    pub fn remove(&self) -> CoreResult<()> {
        remove_tree(&self.root)
    }

    pub fn read_record(&self) -> CoreResult<Option<StoredService>> {
        read_json(&self.root.join(RECORD))
    }

    pub fn write_record(&self, record: &StoredService) -> CoreResult<()> {
        write_json(&self.root.join(RECORD), record)
    }

    /// The environment waiting for the next restart, if any.
    pub fn pending_env(&self) -> CoreResult<Option<Env>> {
        read_json(&self.root.join(PENDING_ENV))
    }

    pub fn set_pending_env(&self, env: &Env) -> CoreResult<()> {
        write_json(&self.root.join(PENDING_ENV), env)
    }

    pub fn clear_pending_env(&self) -> CoreResult<()> {
        remove_file(&self.root.join(PENDING_ENV))
    }

    pub fn remove_download(&self) -> CoreResult<()> {
        remove_file(&self.download())
    }
}

fn remove_tree(path: &Path) -> CoreResult<()> {
    match fs::remove_dir_all(path) {
        Err(e) if !missing(&e) => Err(io_at("remove", path)(e)),
        _ => Ok(()),
    }
}

fn remove_file(path: &Path) -> CoreResult<()> {
    match fs::remove_file(path) {
        Err(e) if !missing(&e) => Err(io_at("remove", path)(e)),
        _ => Ok(()),
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> CoreResult<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if missing(&e) => return Ok(None),
        Err(e) => return Err(io_at("read", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CoreError::Failed(format!("{} is damaged: {e}", path.display())))
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> CoreResult<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| CoreError::Failed(format!("cannot encode {}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_record_pending_env_reset_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let d = ServiceDir::new(&tmp.path().join("services"), "web");
        assert!(!d.exists());
        assert!(d.claim().unwrap());
        assert!(!d.claim().unwrap(), "a second claim finds it");
        assert!(d.bind().is_dir());
        assert_eq!(d.read_record().unwrap(), None);
        let record = StoredService {
            id: "web".into(),
            body: Default::default(),
            env: Env::from([("A".into(), "1".into())]),
        };
        d.write_record(&record).unwrap();
        assert_eq!(d.read_record().unwrap(), Some(record));
        let env = Env::from([("B".into(), "a b\n=\"c\"".into())]);
        d.set_pending_env(&env).unwrap();
        assert_eq!(d.pending_env().unwrap(), Some(env));
        fs::write(d.bind().join("old"), b"x").unwrap();
        d.reset().unwrap();
        assert!(d.bind().is_dir() && !d.bind().join("old").exists());
        assert_eq!(d.pending_env().unwrap(), None);
        assert_eq!(d.read_record().unwrap(), None);
        d.remove().unwrap();
        assert!(!d.exists());
        d.remove().unwrap();
    }
}
