//! The duxcore core key: the bytes of a key file, which clients send as standard base64 in
//! `X-Duxcore-CoreKey` (and in a websocket's first message). Read at start (a missing or
//! unreadable file is a configuration error) and again on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::config::{read_corekey, ConfigError};

pub struct CoreKey {
    path: PathBuf,
    key: RwLock<Arc<Vec<u8>>>,
}

impl CoreKey {
    /// The key `key`, read from `path` (re-read from there by [`CoreKey::reload`]).
    pub fn new(path: &Path, key: Vec<u8>) -> Self {
        Self {
            path: path.to_path_buf(),
            key: RwLock::new(Arc::new(key)),
        }
    }

    /// Reads the key file again. On failure the key in use stays.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let key = read_corekey(&self.path)?;
        *self.key.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `given` (standard base64, surrounding blanks ignored) decodes to the key. The
    /// comparison takes the same time wherever the bytes differ; a missing or undecodable
    /// value is simply not the key.
    pub fn matches(&self, given: Option<&[u8]>) -> bool {
        let Some(given) = given else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(given.trim_ascii())
        else {
            return false;
        };
        let key = self.key.read().unwrap_or_else(|p| p.into_inner()).clone();
        decoded.ct_eq(key.as_slice()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    #[test]
    fn matches_only_the_key_in_standard_base64_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corekey.bin");
        let key: Vec<u8> = (0..=255u8).collect();
        std::fs::write(&path, &key).unwrap();
        let k = CoreKey::new(&path, key.clone());
        let good = STANDARD.encode(&key);
        assert!(k.matches(Some(good.as_bytes())));
        assert!(k.matches(Some(format!(" {good}\n").as_bytes())));
        assert!(!k.matches(None));
        assert!(!k.matches(Some(b"")));
        assert!(!k.matches(Some(b"not base64!")));
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode(&key);
        assert!(!k.matches(Some(url_safe.as_bytes())));
        assert!(!k.matches(Some(STANDARD.encode(&key[1..]).as_bytes())));

        std::fs::write(&path, b"new key").unwrap();
        k.reload().unwrap();
        assert!(!k.matches(Some(good.as_bytes())));
        assert!(k.matches(Some(STANDARD.encode(b"new key").as_bytes())));
        // A reload that fails keeps the key in use.
        std::fs::write(&path, b"").unwrap();
        assert!(k.reload().is_err());
        assert!(k.matches(Some(STANDARD.encode(b"new key").as_bytes())));
    }
}
