//! Small persisted preferences: the device name (Transfer App v3.1) and the key/value
//! settings (General Interfaces; the App Pool reuses them).
//!
//! Each lives in one file in the state directory (`devicename`, `settings.json`), replaced
//! crash-safely: written to a temp file in the same directory, fsynced, renamed over the old
//! one, and the directory fsynced. A power cut leaves the old or the new content, never a
//! torn file. The values are kept in memory too; every change goes to disk before it is
//! visible. Settings values are opaque JSON values to gantry: it stores them, nothing reads
//! them.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};

use super::{CoreError, CoreResult};

pub const DEVICE_NAME_FILE: &str = "devicename";
pub const SETTINGS_FILE: &str = "settings.json";
/// Characters, not bytes.
pub const MAX_DEVICE_NAME_CHARS: usize = 128;
pub const MAX_KEY_CHARS: usize = 128;
pub const MAX_SETTINGS: usize = 256;
/// The settings file as serialised JSON.
pub const MAX_SETTINGS_BYTES: usize = 256 * 1024;

pub type Settings = Map<String, Value>;

struct State {
    device_name: Option<String>,
    settings: Settings,
}

pub struct Prefs {
    /// None: memory only (for cores built in unit tests).
    dir: Option<PathBuf>,
    state: Mutex<State>,
}

impl Prefs {
    /// Memory only: nothing is read or written.
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            state: Mutex::new(State {
                device_name: None,
                settings: Settings::new(),
            }),
        }
    }

    /// Reads both files from `dir` (the state directory); a missing file is the default.
    /// A file that is unreadable as what it should be (edited by hand, say) is moved aside
    /// to `<name>.corrupt` with a warning, so gantry still starts; the writes themselves
    /// cannot tear it. Stale temp files of an interrupted write are removed.
    pub fn open(dir: &Path) -> CoreResult<Self> {
        fs::create_dir_all(dir).map_err(|e| failed("create", dir, e))?;
        remove_stale_temps(dir);
        let path = dir.join(DEVICE_NAME_FILE);
        let device_name = match fs::read(&path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(s) if validate_device_name(&s).is_ok() => Some(s),
                _ => {
                    set_aside(&path, "not a valid device name");
                    None
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(failed("read", &path, e)),
        };
        let path = dir.join(SETTINGS_FILE);
        let settings = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Settings>(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    set_aside(&path, &format!("not a JSON object: {e}"));
                    Settings::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Settings::new(),
            Err(e) => return Err(failed("read", &path, e)),
        };
        Ok(Self {
            dir: Some(dir.to_path_buf()),
            state: Mutex::new(State {
                device_name,
                settings,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The name set with [`Prefs::set_device_name`], else the host name; None when neither
    /// is known.
    pub fn device_name(&self) -> Option<String> {
        self.state().device_name.clone().or_else(hostname)
    }

    /// Validates and persists a device name.
    pub fn set_device_name(&self, name: &str) -> CoreResult<()> {
        validate_device_name(name)?;
        let mut state = self.state();
        if let Some(dir) = &self.dir {
            write_atomic(&dir.join(DEVICE_NAME_FILE), name.as_bytes())?;
        }
        state.device_name = Some(name.to_string());
        Ok(())
    }

    pub fn settings(&self) -> Settings {
        self.state().settings.clone()
    }

    /// Merges `changes` into the settings (a shallow JSON merge patch): a key with a value
    /// sets it, a key with `null` removes it, keys not named stay. Everything is validated
    /// before anything is written; answers the settings as stored.
    pub fn merge_settings(&self, changes: Settings) -> CoreResult<Settings> {
        for key in changes.keys() {
            validate_key(key)?;
        }
        let mut state = self.state();
        let mut next = state.settings.clone();
        for (k, v) in changes {
            if v.is_null() {
                next.remove(&k);
            } else {
                next.insert(k, v);
            }
        }
        if next.len() > MAX_SETTINGS {
            return Err(CoreError::Invalid(format!(
                "too many settings: {} (at most {MAX_SETTINGS})",
                next.len()
            )));
        }
        let bytes = serde_json::to_vec_pretty(&next)
            .map_err(|e| CoreError::Failed(format!("cannot serialise the settings: {e}")))?;
        if bytes.len() > MAX_SETTINGS_BYTES {
            return Err(CoreError::Invalid(format!(
                "the settings would take {} bytes (at most {MAX_SETTINGS_BYTES})",
                bytes.len()
            )));
        }
        if let Some(dir) = &self.dir {
            write_atomic(&dir.join(SETTINGS_FILE), &bytes)?;
        }
        state.settings = next;
        Ok(state.settings.clone())
    }
}

pub fn validate_device_name(name: &str) -> CoreResult<()> {
    if name.trim().is_empty() {
        return Err(CoreError::Invalid("no device name given".into()));
    }
    let chars = name.chars().count();
    if chars > MAX_DEVICE_NAME_CHARS {
        return Err(CoreError::Invalid(format!(
            "the device name is too long: {chars} characters (at most {MAX_DEVICE_NAME_CHARS})"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(CoreError::Invalid(
            "the device name must not contain control characters".into(),
        ));
    }
    Ok(())
}

fn validate_key(key: &str) -> CoreResult<()> {
    if key.trim().is_empty() {
        return Err(CoreError::Invalid(
            "a setting's key must not be empty".into(),
        ));
    }
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(CoreError::Invalid(format!(
            "the setting key \"{}...\" is too long (at most {MAX_KEY_CHARS} characters)",
            key.chars().take(32).collect::<String>()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(CoreError::Invalid(format!(
            "the setting key {key:?} contains control characters"
        )));
    }
    Ok(())
}

/// The kernel's host name.
fn hostname() -> Option<String> {
    let name = nix::unistd::gethostname().ok()?;
    let name = name.to_string_lossy().trim().to_string();
    (!name.is_empty()).then_some(name)
}

const TEMP_PREFIX: &str = ".prefs-tmp-";

fn failed(what: &str, path: &Path, e: io::Error) -> CoreError {
    CoreError::io(format!("cannot {what} {}", path.display()), e)
}

fn set_aside(path: &Path, why: &str) {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    match fs::rename(path, &aside) {
        Ok(()) => {
            tracing::warn!(file = %path.display(), reason = why, "moved an unreadable file aside to .corrupt; using the default")
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), reason = why, error = %e, "ignoring an unreadable file")
        }
    }
}

fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Replaces `path` with `bytes`: temp file in the same directory, fsync, rename, fsync of
/// the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> CoreResult<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(|e| failed("create a temp file in", dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| failed("write", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| failed("replace", path, e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| failed("sync", dir, e))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Settings {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn device_name_defaults_to_the_host_name_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let p = Prefs::open(dir.path()).unwrap();
        assert_eq!(p.device_name(), hostname());
        p.set_device_name("IoT Gateway Server 10:5-dev").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(DEVICE_NAME_FILE)).unwrap(),
            "IoT Gateway Server 10:5-dev"
        );
        let p = Prefs::open(dir.path()).unwrap();
        assert_eq!(p.device_name().unwrap(), "IoT Gateway Server 10:5-dev");
        // No temp file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [DEVICE_NAME_FILE]);
    }

    #[test]
    fn bad_device_names_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = Prefs::open(dir.path()).unwrap();
        p.set_device_name("ok").unwrap();
        let long = "x".repeat(MAX_DEVICE_NAME_CHARS + 1);
        for bad in ["", "   ", "a\nb", "tab\there", "\u{7f}", long.as_str()] {
            assert!(
                matches!(p.set_device_name(bad), Err(CoreError::Invalid(_))),
                "{bad:?} accepted"
            );
        }
        p.set_device_name(&"ä".repeat(MAX_DEVICE_NAME_CHARS))
            .unwrap();
        assert_eq!(
            p.device_name().unwrap().chars().count(),
            MAX_DEVICE_NAME_CHARS
        );
    }

    #[test]
    fn settings_merge_remove_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let p = Prefs::open(dir.path()).unwrap();
        assert!(p.settings().is_empty());
        let s = p
            .merge_settings(obj(json!({"a": 1, "b": {"x": [true]}, "c": "s"})))
            .unwrap();
        assert_eq!(
            Value::Object(s),
            json!({"a": 1, "b": {"x": [true]}, "c": "s"})
        );
        let s = p.merge_settings(obj(json!({"a": null, "c": 2}))).unwrap();
        assert_eq!(Value::Object(s), json!({"b": {"x": [true]}, "c": 2}));
        let p = Prefs::open(dir.path()).unwrap();
        assert_eq!(
            Value::Object(p.settings()),
            json!({"b": {"x": [true]}, "c": 2})
        );
    }

    #[test]
    fn bad_settings_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = Prefs::open(dir.path()).unwrap();
        p.merge_settings(obj(json!({"keep": 1}))).unwrap();
        let long_key = "k".repeat(MAX_KEY_CHARS + 1);
        let big = "v".repeat(MAX_SETTINGS_BYTES);
        for bad in [
            json!({"": 1}),
            json!({" ": 1}),
            json!({"a\u{1}": 1}),
            json!({ long_key: 1 }),
            json!({"ok": 1, "big": big}),
        ] {
            assert!(
                matches!(
                    p.merge_settings(obj(bad.clone())),
                    Err(CoreError::Invalid(_))
                ),
                "{bad} accepted"
            );
        }
        let many: Settings = (0..=MAX_SETTINGS)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        assert!(matches!(p.merge_settings(many), Err(CoreError::Invalid(_))));
        let p = Prefs::open(dir.path()).unwrap();
        assert_eq!(Value::Object(p.settings()), json!({"keep": 1}));
    }

    #[test]
    fn corrupt_files_are_set_aside_and_stale_temps_go() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".prefs-tmp-abc"), "half").unwrap();
        fs::write(dir.path().join(SETTINGS_FILE), "[1,2]").unwrap();
        fs::write(dir.path().join(DEVICE_NAME_FILE), "two\nlines").unwrap();
        let p = Prefs::open(dir.path()).unwrap();
        assert!(p.settings().is_empty());
        assert_eq!(p.device_name(), hostname());
        assert!(!dir.path().join(".prefs-tmp-abc").exists());
        assert_eq!(
            fs::read_to_string(dir.path().join("settings.json.corrupt")).unwrap(),
            "[1,2]"
        );
        assert!(dir.path().join("devicename.corrupt").exists());
    }
}
