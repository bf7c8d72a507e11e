//! The App Pool: a gantry that keeps app bundles from a store (an OCI registry) and deploys
//! them to servers (other gantrys). See docs/DECISIONS.md ("App Pool").
//!
//! State lives in `<state_dir>/pool/`: `apps/` (installed bundles, an [`AppStore`] whose
//! app directories hold `bundle.zip` and `pool.json`), `downloads/` (downloads in flight:
//! `<digest>.json` and `<digest>.part`, resumed at the next start), `index.json` (the store's
//! offer when last fetched), `store.json` (the store `PUT /configure` set), `servers.json`
//! and `deployments.json`.

pub mod deploy;
mod download;
pub mod names;
pub mod registry;
pub mod remote;
pub mod servers;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::config::{PoolConfig, StoreConfig};
use crate::core::apps::import::ImportSettings;
use crate::core::apps::store::{AppStore, StoredApp};
use crate::core::apps::{AppConfig, AppId, Claims};
use crate::core::{CoreError, CoreResult};
pub use download::{Job, PoolProgress};
use registry::{IndexEntry, Publication, Registry};

/// Where an installed app came from (`pool.json` next to its `bundle.zip`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub size: u64,
}

pub const BUNDLE_FILE: &str = "bundle.zip";
const ORIGIN_FILE: &str = "pool.json";

/// An app as `GET /pool/apps` lists it: `installed`, its bundle is in the pool's storage;
/// `available`, the store offered it when its index was last fetched; its bundle's size and
/// digest, when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolApp {
    pub id: AppId,
    pub config: AppConfig,
    pub installed: bool,
    pub available: bool,
    pub bundle: Option<(u64, String)>,
}

/// The store in effect, and where its setting came from.
#[derive(Debug, Clone)]
pub struct StoreView {
    pub store: Option<StoreConfig>,
    /// Set through `PUT /configure` (else: the config file's, if any).
    pub from_api: bool,
}

struct StoreState {
    view: StoreView,
    registry: Option<Arc<Registry>>,
}

pub struct Pool {
    dir: PathBuf,
    config: PoolConfig,
    store: RwLock<StoreState>,
    index: Mutex<Vec<IndexEntry>>,
    apps: Arc<AppStore>,
    /// How bundles are checked (the apps' import settings).
    check: ImportSettings,
    installing: Claims,
    pub servers: servers::Servers,
    pub deployments: Arc<deploy::Deployments>,
    /// The client of the servers.
    pub remote: remote::Remote,
    /// Bounds the outbound operations (downloads, deployments) running at once.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// Wakes the deployments' reconciler (a deployment asked for, a server back online).
    pub wake: tokio::sync::Notify,
}

/// `sha256` of `data`, hex.
pub fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `value` as JSON to `path` atomically (temp file, fsync, rename, directory fsync).
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> CoreResult<()> {
    let fail = |e: std::io::Error| CoreError::io(format!("cannot write {}", path.display()), e);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    let json = serde_json::to_vec_pretty(value).expect("pool state serialises");
    std::io::Write::write_all(&mut tmp, &json).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)
}

/// Reads JSON from `path`; None when the file does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> CoreResult<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CoreError::Failed(format!("{} is damaged: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CoreError::io(format!("cannot read {}", path.display()), e)),
    }
}

impl Pool {
    /// Opens the pool's state in `<state_dir>/pool`; bundles are checked with `check` (the
    /// apps' isolation policy, but for the ports of this gantry's own listeners: the apps are
    /// for the servers, which check theirs when they import them).
    pub fn open(
        config: &PoolConfig,
        state_dir: &Path,
        mut check: ImportSettings,
    ) -> CoreResult<Self> {
        check.policy.reserved.clear();
        let dir = state_dir.join("pool");
        let mkdir = |d: &Path| {
            std::fs::create_dir_all(d)
                .map_err(|e| CoreError::io(format!("cannot create {}", d.display()), e))
        };
        mkdir(&dir)?;
        mkdir(&dir.join("downloads"))?;
        let apps = AppStore::open(&dir.join("apps")).map(Arc::new)?;
        let view = match read_json::<StoredStore>(&dir.join("store.json"))? {
            Some(s) => StoreView {
                store: Some(s.into_config(config.store.as_ref())),
                from_api: true,
            },
            None => StoreView {
                store: config.store.clone(),
                from_api: false,
            },
        };
        let pool = Self {
            servers: servers::Servers::open(&dir, config)?,
            deployments: Arc::new(deploy::Deployments::open(&dir)?),
            remote: remote::Remote::new(config)?,
            permits: Arc::new(tokio::sync::Semaphore::new(config.max_parallel)),
            wake: tokio::sync::Notify::new(),
            index: Mutex::new(read_json(&dir.join("index.json"))?.unwrap_or_default()),
            store: RwLock::new(StoreState {
                view,
                registry: None,
            }),
            dir,
            config: config.clone(),
            apps,
            check,
            installing: Claims::default(),
        };
        pool.connect_store()?;
        Ok(pool)
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    fn connect_store(&self) -> CoreResult<()> {
        let mut state = self.store.write().unwrap_or_else(|p| p.into_inner());
        state.registry = match &state.view.store {
            None => None,
            Some(s) => Some(Arc::new(Registry::new(s, &self.config)?)),
        };
        Ok(())
    }

    /// The store in effect.
    pub fn store(&self) -> StoreView {
        self.store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .view
            .clone()
    }

    /// Sets the store (`None`: back to the config file's); persisted. Credentials stay the
    /// config file's: a store on the file's registry keeps its credentials.
    pub fn set_store(&self, registry: Option<(String, String)>) -> CoreResult<StoreView> {
        let stored = registry.map(|(registry, namespace)| {
            StoredStore {
                registry,
                namespace,
            }
            .into_config(self.config.store.as_ref())
        });
        match &stored {
            Some(s) => write_json(&self.dir.join("store.json"), &StoredStore::of(s))?,
            None => {
                let _ = std::fs::remove_file(self.dir.join("store.json"));
            }
        }
        {
            let mut state = self.store.write().unwrap_or_else(|p| p.into_inner());
            state.view = match stored {
                Some(s) => StoreView {
                    store: Some(s),
                    from_api: true,
                },
                None => StoreView {
                    store: self.config.store.clone(),
                    from_api: false,
                },
            };
        }
        self.connect_store()?;
        Ok(self.store())
    }

    /// The store's client; `Conflict` when no store is configured.
    fn registry(&self) -> CoreResult<Arc<Registry>> {
        self.store
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .registry
            .clone()
            .ok_or_else(|| {
                CoreError::Conflict(
                    "no store is configured (set pool.registry or PUT /configure)".into(),
                )
            })
    }

    /// Fetches the store's offer again and keeps it (also on disk).
    pub async fn refresh(&self) -> CoreResult<Vec<PoolApp>> {
        let entries = self.registry()?.index(self.config.max_parallel).await?;
        write_json(&self.dir.join("index.json"), &entries)?;
        *self.index.lock().unwrap_or_else(|p| p.into_inner()) = entries;
        self.list()
    }

    fn index_entry(&self, id: &AppId) -> Option<IndexEntry> {
        let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        index.iter().find(|e| &e.id == id).cloned()
    }

    /// Installed apps and those the store offers, by id.
    pub fn list(&self) -> CoreResult<Vec<PoolApp>> {
        let mut out: Vec<PoolApp> = self
            .index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|e| PoolApp {
                id: e.id.clone(),
                config: e.config.clone(),
                installed: false,
                available: true,
                bundle: Some((e.size, e.digest.clone())),
            })
            .collect();
        for app in self.apps.list()? {
            let origin = read_json::<Origin>(&app.dir.join(ORIGIN_FILE))?;
            match out.iter_mut().find(|p| &p.id == app.id()) {
                Some(p) => p.installed = true,
                None => out.push(PoolApp {
                    id: app.id().clone(),
                    config: app.config().clone(),
                    installed: true,
                    available: false,
                    bundle: origin.map(|o| (o.size, o.digest)),
                }),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// An installed app and the path of its bundle.
    pub fn installed(&self, id: &AppId) -> CoreResult<(StoredApp, PathBuf)> {
        let app = self.apps.get(id).map_err(|_| {
            CoreError::NotFound(format!(
                "{id} is not installed in the pool (PUT /pool/apps/{{id}})"
            ))
        })?;
        let bundle = app.dir.join(BUNDLE_FILE);
        Ok((app, bundle))
    }

    /// Removes an installed app (or a download of it that was interrupted).
    pub fn remove(&self, id: &AppId) -> CoreResult<()> {
        let _claim = self
            .installing
            .claim(id, "installed")
            .map_err(|w| CoreError::Conflict(format!("{id} is being {w}; cancel that first")))?;
        if self.deployments.pending_for(id) {
            return Err(CoreError::Conflict(format!(
                "deployments of {id} are still waiting for their servers; delete them first"
            )));
        }
        let forgot = self.forget_download(id);
        match self.apps.remove(id) {
            Ok(()) => Ok(()),
            Err(_) if forgot => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes every installed app, download and the store's cached index. Servers and
    /// deployments stay (they are the transfer side's).
    pub fn clear(&self) -> CoreResult<()> {
        for app in self.apps.list()? {
            self.remove(app.id())?;
        }
        for intent in self.intents() {
            self.forget_download(&intent.id);
        }
        let _ = std::fs::remove_file(self.dir.join("index.json"));
        self.index.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }

    /// Publishes a stored app's bundle to the store and notes it in the index.
    pub async fn publish(&self, p: Publication) -> CoreResult<IndexEntry> {
        let entry = self.registry()?.publish(p).await?;
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        index.retain(|e| e.id != entry.id);
        index.push(entry.clone());
        index.sort_by(|a, b| a.id.cmp(&b.id));
        write_json(&self.dir.join("index.json"), &*index)?;
        Ok(entry)
    }
}

/// `store.json`: the store `PUT /configure` set (no credentials: those stay in the config
/// file, and apply when it names the same registry).
#[derive(Debug, Serialize, Deserialize)]
struct StoredStore {
    registry: String,
    namespace: String,
}

impl StoredStore {
    fn of(s: &StoreConfig) -> Self {
        Self {
            registry: s.registry.clone(),
            namespace: s.namespace.clone(),
        }
    }

    fn into_config(self, file: Option<&StoreConfig>) -> StoreConfig {
        let credentials = file
            .filter(|f| f.registry == self.registry)
            .and_then(|f| f.credentials.clone());
        StoreConfig {
            registry: self.registry,
            namespace: self.namespace,
            credentials,
        }
    }
}
