//! The pool's servers: other gantrys, each a Transfer API URL and a token file. Those of the
//! config file are fixed; those added through `POST /servers` persist in `servers.json`.
//! Each has the status of its last health probe.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::remote::{Probe, Target};
use super::{read_json, write_json};
use crate::config::{PoolConfig, ServerConfig};
use crate::core::{CoreError, CoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerStatus {
    /// Not probed yet.
    Unknown,
    Online,
    Offline,
    Unauthorized,
    Incompatible,
}

impl ServerStatus {
    pub fn name(self) -> &'static str {
        match self {
            ServerStatus::Unknown => "Unknown",
            ServerStatus::Online => "Online",
            ServerStatus::Offline => "Offline",
            ServerStatus::Unauthorized => "Unauthorized",
            ServerStatus::Incompatible => "Incompatible",
        }
    }
}

/// A server as it is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub id: String,
    pub url: String,
    pub token_file: Option<PathBuf>,
}

/// A server with its last probe's status and `detail` (why it is not online, or the API
/// version it speaks); `from_config`: defined in the config file (the API cannot delete it).
#[derive(Debug, Clone)]
pub struct ServerView {
    pub server: Server,
    pub from_config: bool,
    pub status: ServerStatus,
    pub detail: Option<String>,
}

pub struct Servers {
    path: PathBuf,
    list: Mutex<Vec<ServerView>>,
}

/// A server's id, from its URL: `http://198.18.1.2:54169` is `198-18-1-2-54169`.
pub fn id_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let mut id = String::new();
    for c in rest.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            id.push(c);
        } else if !id.is_empty() && !id.ends_with('-') {
            id.push('-');
        }
    }
    id.trim_end_matches('-').to_string()
}

fn view(server: Server, from_config: bool) -> ServerView {
    ServerView {
        server,
        from_config,
        status: ServerStatus::Unknown,
        detail: None,
    }
}

impl Servers {
    pub fn open(dir: &Path, config: &PoolConfig) -> CoreResult<Self> {
        let path = dir.join("servers.json");
        let mut list: Vec<ServerView> = config
            .servers
            .iter()
            .map(|ServerConfig { url, token_file }| {
                let id = id_of(url);
                let server = Server {
                    id,
                    url: url.clone(),
                    token_file: token_file.clone(),
                };
                view(server, true)
            })
            .collect();
        let added: Vec<Server> = read_json(&path)?.unwrap_or_default();
        for s in added {
            if !list.iter().any(|v| v.server.id == s.id) {
                list.push(view(s, false));
            }
        }
        Ok(Self {
            path,
            list: Mutex::new(list),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ServerView>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, list: &[ServerView]) -> CoreResult<()> {
        let added: Vec<&Server> = list
            .iter()
            .filter(|v| !v.from_config)
            .map(|v| &v.server)
            .collect();
        write_json(&self.path, &added)
    }

    pub fn list(&self) -> Vec<ServerView> {
        self.lock().clone()
    }

    /// The server named by its id or its URL.
    pub fn get(&self, id_or_url: &str) -> CoreResult<ServerView> {
        let id = id_of(id_or_url);
        self.lock()
            .iter()
            .find(|v| v.server.id == id_or_url || v.server.id == id)
            .cloned()
            .ok_or_else(|| CoreError::NotFound(format!("no server {id_or_url} in the pool")))
    }

    /// Adds a server (its probe already found it online).
    pub fn add(&self, server: Server, probe: &Probe) -> CoreResult<ServerView> {
        let mut list = self.lock();
        if list.iter().any(|v| v.server.id == server.id) {
            return Err(CoreError::Conflict(format!(
                "the pool has the server {} already",
                server.url
            )));
        }
        let mut v = view(server, false);
        apply(&mut v, probe);
        list.push(v.clone());
        self.save(&list)?;
        Ok(v)
    }

    pub fn remove(&self, id: &str) -> CoreResult<()> {
        let mut list = self.lock();
        let i = list
            .iter()
            .position(|v| v.server.id == id)
            .ok_or_else(|| CoreError::NotFound(format!("no server {id} in the pool")))?;
        if list[i].from_config {
            return Err(CoreError::Conflict(format!(
                "server {id} is defined in the config file ([[pool.servers]]); remove it there"
            )));
        }
        list.remove(i);
        self.save(&list)
    }

    /// Notes a probe's result; true when the server just came online.
    pub fn set_probe(&self, id: &str, probe: &Probe) -> bool {
        let mut list = self.lock();
        let Some(v) = list.iter_mut().find(|v| v.server.id == id) else {
            return false;
        };
        let was = v.status;
        apply(v, probe);
        if was != v.status {
            tracing::info!(server = %v.server.url, status = v.status.name(), detail = ?v.detail, "server status changed");
        }
        v.status == ServerStatus::Online && was != ServerStatus::Online
    }

    pub fn is_online(&self, id: &str) -> bool {
        self.lock()
            .iter()
            .any(|v| v.server.id == id && v.status == ServerStatus::Online)
    }
}

fn apply(v: &mut ServerView, probe: &Probe) {
    let (status, detail) = match probe {
        Probe::Online { version } => (ServerStatus::Online, Some(format!("API {version}"))),
        Probe::Offline(why) => (ServerStatus::Offline, Some(why.clone())),
        Probe::Unauthorized => (
            ServerStatus::Unauthorized,
            Some("the server refused the token".into()),
        ),
        Probe::Incompatible(why) => (ServerStatus::Incompatible, Some(why.clone())),
    };
    v.status = status;
    v.detail = detail;
}

/// The token file `given` through the API (absolute, or relative to `dir`), resolved; it must
/// be a file inside `dir` (`pool.token_dir`), links followed.
pub fn api_token_file(dir: &Path, given: &Path) -> CoreResult<PathBuf> {
    let outside = || {
        CoreError::Invalid(format!(
            "TokenFile {}: a server's token file must be a file in {} (pool.token_dir)",
            given.display(),
            dir.display()
        ))
    };
    let (Ok(dir), Ok(file)) = (dir.canonicalize(), dir.join(given).canonicalize()) else {
        return Err(outside());
    };
    if !file.starts_with(&dir) || !file.is_file() {
        return Err(outside());
    }
    Ok(file)
}

impl Server {
    /// How to call it: its URL and its token, read from its token file now (so a rotated
    /// token is picked up).
    pub fn target(&self) -> CoreResult<Target<'_>> {
        let token = match &self.token_file {
            None => None,
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        CoreError::io(format!("cannot read the token file {}", path.display()), e)
                    })?
                    .trim()
                    .to_string(),
            ),
        };
        Ok(Target {
            url: &self.url,
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_urls() {
        for (url, id) in [
            ("http://198.18.1.2:54169", "198-18-1-2-54169"),
            ("https://gw.example/scaleit", "gw-example-scaleit"),
        ] {
            assert_eq!(id_of(url), id);
        }
    }

    #[test]
    fn config_servers_stay_and_added_ones_persist() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::parse("", &crate::config::ProcessEnv)
            .unwrap()
            .pool;
        config.servers.push(ServerConfig {
            url: "http://198.18.1.2:1".into(),
            token_file: None,
        });
        let servers = Servers::open(dir.path(), &config).unwrap();
        let online = Probe::Online {
            version: "1.0".into(),
        };
        let added = Server {
            id: id_of("http://198.18.1.3:1"),
            url: "http://198.18.1.3:1".into(),
            token_file: None,
        };
        assert_eq!(
            servers.add(added.clone(), &online).unwrap().status,
            ServerStatus::Online
        );
        assert!(servers.add(added, &online).is_err());
        assert!(servers.remove("198-18-1-2-1").is_err());
        assert!(servers.set_probe("198-18-1-2-1", &online));
        assert!(!servers.set_probe("198-18-1-2-1", &online));
        let again = Servers::open(dir.path(), &config).unwrap();
        assert_eq!(again.list().len(), 2);
        again.remove("198-18-1-3-1").unwrap();
        assert_eq!(Servers::open(dir.path(), &config).unwrap().list().len(), 1);
        assert_eq!(
            again.get("http://198.18.1.2:1").unwrap().server.id,
            "198-18-1-2-1"
        );
    }

    #[test]
    fn api_token_files_stay_in_the_token_dir() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("servers");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("gw.token"), "t").unwrap();
        std::fs::write(root.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(root.path().join("secret"), dir.join("link")).unwrap();
        let inside = dir.canonicalize().unwrap().join("gw.token");
        assert_eq!(api_token_file(&dir, Path::new("gw.token")).unwrap(), inside);
        assert_eq!(api_token_file(&dir, &dir.join("gw.token")).unwrap(), inside);
        for outside in [
            root.path().join("secret"),
            PathBuf::from("../secret"),
            PathBuf::from("link"),
            PathBuf::from("."),
            PathBuf::from("missing"),
        ] {
            let e = api_token_file(&dir, &outside).unwrap_err();
            assert!(e.to_string().contains("pool.token_dir"), "{outside:?}: {e}");
        }
    }
}
