//! Installing an app from the store: its bundle blob is downloaded into
//! `downloads/<digest>.part`, resumed by range requests after a dropped link or a restart,
//! checked against its digest and by the same checks as an import, and only then moved into
//! the pool's storage. A download that fails a check leaves nothing; one interrupted by a
//! shutdown stays, with its intent (`<digest>.json`), for the next start.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::registry::{IndexEntry, Registry};
use super::{hex, read_json, write_json, Origin, Pool, BUNDLE_FILE, ORIGIN_FILE};
use crate::core::apps::bundle::{Bundle, ByteSize};
use crate::core::apps::import::{compose_project, free_space};
use crate::core::apps::store::StoredApp;
use crate::core::apps::AppId;
use crate::core::recovery::crash_point;
use crate::core::{CoreError, CoreResult, ErrorKind};

/// What an install reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolProgress {
    Downloading { done: u64, size: u64 },
    Checking,
    Storing,
}

/// A download in flight, as `downloads/<digest>.json` remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub id: AppId,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub size: u64,
}

impl From<IndexEntry> for Intent {
    fn from(e: IndexEntry) -> Self {
        Self {
            id: e.id,
            repository: e.repository,
            tag: e.tag,
            digest: e.digest,
            size: e.size,
        }
    }
}

/// Progress is reported at most once per this many bytes.
const REPORT_EVERY: u64 = 1 << 20;

type Progress<'a> = &'a (dyn Fn(PoolProgress) + Send + Sync);

/// How an install runs: its cancel token and where it reports.
#[derive(Clone, Copy)]
pub struct Job<'a> {
    pub cancel: &'a CancellationToken,
    pub progress: Progress<'a>,
}

/// One download: the blob of `intent` into `part`.
struct Download<'a> {
    registry: &'a Registry,
    intent: &'a Intent,
    part: &'a Path,
    job: Job<'a>,
}

impl Pool {
    fn downloads(&self) -> PathBuf {
        self.dir.join("downloads")
    }

    fn file_of(&self, digest: &str, ext: &str) -> PathBuf {
        let name = digest.replace(':', "-");
        self.downloads().join(format!("{name}.{ext}"))
    }

    /// The downloads in flight (interrupted ones included).
    pub fn intents(&self) -> Vec<Intent> {
        let Ok(dir) = std::fs::read_dir(self.downloads()) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| read_json::<Intent>(&e.path()).ok().flatten())
            .collect()
    }

    /// Drops the download of `id` (intent and partial file); whether there was one.
    pub fn forget_download(&self, id: &AppId) -> bool {
        let mut found = false;
        for i in self.intents().into_iter().filter(|i| &i.id == id) {
            let _ = std::fs::remove_file(self.file_of(&i.digest, "part"));
            let _ = std::fs::remove_file(self.file_of(&i.digest, "json"));
            found = true;
        }
        found
    }

    /// Installs `id` from the store (already installed: answers it). Cancelled, the partial
    /// download stays; the caller decides whether to forget it.
    pub async fn install(&self, id: &AppId, job: &Job<'_>) -> CoreResult<StoredApp> {
        let _claim = self
            .installing
            .claim(id, "installed")
            .map_err(|w| CoreError::Conflict(format!("{id} is being {w} already")))?;
        if let Ok(app) = self.apps.get(id) {
            // A crash between storing it and removing its record left the record.
            self.forget_download(id);
            return Ok(app);
        }
        let intent = match self.intents().into_iter().find(|i| &i.id == id) {
            Some(i) => i,
            None => self.index_entry(id).map(Intent::from).ok_or_else(|| {
                CoreError::NotFound(format!(
                    "the store offers no app {id} (as of its last index; PUT /pool/refresh)"
                ))
            })?,
        };
        let part = self.file_of(&intent.digest, "part");
        self.check_space(&intent, &part)?;
        write_json(&self.file_of(&intent.digest, "json"), &intent)?;
        crash_point("pool-install.intent-written");
        if let Err(e) = self.fetch(&intent, &part, job).await {
            // An outage keeps the download for the next try or start, and a cancel leaves
            // the choice to the caller; a store that refuses it (credentials, certificate)
            // or sends something else keeps nothing of it.
            if !e.is(ErrorKind::Unavailable) && !e.is(ErrorKind::Cancelled) {
                self.forget_download(id);
            }
            return Err(e);
        }
        crash_point("pool-install.downloaded");
        (job.progress)(PoolProgress::Checking);
        if let Err(e) = self.verify(&intent, &part).await {
            self.forget_download(id);
            return Err(e);
        }
        (job.progress)(PoolProgress::Storing);
        let stored = self.store_download(&intent, &part).await;
        crash_point("pool-install.stored");
        let _ = std::fs::remove_file(self.file_of(&intent.digest, "json"));
        stored
    }

    /// The bundle must be within `apps.max_bundle_bytes`, as an import's, and fit on disk.
    fn check_space(&self, intent: &Intent, part: &Path) -> CoreResult<()> {
        let limit = self.check.limits.max_zip_bytes;
        if intent.size > limit {
            return Err(CoreError::Invalid(format!(
                "{} is {} in the store, over the bundle limit of {} (apps.max_bundle_bytes)",
                intent.id,
                ByteSize(intent.size),
                ByteSize(limit)
            )));
        }
        let have = std::fs::metadata(part).map_or(0, |m| m.len());
        let need = intent.size.saturating_sub(have) + self.check.reserve_bytes;
        let free = free_space(&self.dir)?;
        if free < need {
            return Err(CoreError::Invalid(format!(
                "not enough disk space for {}: {} needed (with the reserve), {} free",
                intent.id,
                ByteSize(need),
                ByteSize(free)
            )));
        }
        Ok(())
    }

    /// Downloads the rest of the blob into `part`, retrying (with range requests) while the
    /// store is unreachable, until it made no progress for `pool.download_retry_secs`.
    async fn fetch(&self, intent: &Intent, part: &Path, job: &Job<'_>) -> CoreResult<()> {
        let mut last_progress = Instant::now();
        let mut pause = Duration::from_millis(250);
        loop {
            let have = std::fs::metadata(part).map_or(0, |m| m.len());
            if have == intent.size {
                return Ok(());
            }
            let registry = self.registry()?;
            let download = Download {
                registry: &registry,
                intent,
                part,
                job: *job,
            };
            match download.once(have).await {
                Ok(moved) if moved > 0 => last_progress = Instant::now(),
                Ok(_) => {}
                Err(e) if e.is(ErrorKind::Unavailable) => {
                    if last_progress.elapsed() > self.config.download_retry {
                        return Err(e);
                    }
                    tracing::info!(app = %intent.id, error = %e, "download interrupted; retrying");
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                _ = job.cancel.cancelled() => return Err(cancelled(&intent.id)),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// The complete download's sha256 must be its digest.
    async fn verify(&self, intent: &Intent, part: &Path) -> CoreResult<()> {
        let path = part.to_path_buf();
        let actual = blocking(move || file_sha256(&path)).await??;
        let actual = format!("sha256:{actual}");
        if actual != intent.digest {
            return Err(CoreError::Failed(format!(
                "the bundle of {} from the store does not match its digest {} (it is {actual}): \
                 refused",
                intent.id, intent.digest
            )));
        }
        Ok(())
    }

    /// Runs the import's checks on the bundle (ZIP safety, config, the compose file under the
    /// isolation policy) and moves it into the pool's storage.
    async fn store_download(&self, intent: &Intent, part: &Path) -> CoreResult<StoredApp> {
        let (apps, settings) = (self.apps.clone(), self.check.clone());
        let id = intent.id.clone();
        let (intent, part) = (intent.clone(), part.to_path_buf());
        let result = blocking(move || -> CoreResult<StoredApp> {
            let bundle = Bundle::open(&part, &settings.limits)?;
            if bundle.id() != intent.id {
                return Err(CoreError::Invalid(format!(
                    "the store's bundle for {} holds the app {}",
                    intent.id,
                    bundle.id()
                )));
            }
            compose_project(&bundle, &apps.app_dir(&intent.id), &settings)?;
            let mut staged = apps.stage(bundle.config().clone())?;
            let origin = Origin {
                repository: intent.repository.clone(),
                tag: intent.tag.clone(),
                digest: intent.digest.clone(),
                size: intent.size,
            };
            write_json(&staged.dir().join(ORIGIN_FILE), &origin)?;
            std::fs::rename(&part, staged.dir().join(BUNDLE_FILE))
                .map_err(|e| CoreError::io("cannot move the download into place", e))?;
            crash_point("pool-install.staged");
            staged.images = Vec::new();
            Ok(apps.insert(staged, false)?)
        })
        .await?;
        if result.is_err() {
            // A bundle that fails the checks is no use: the next try downloads it again.
            self.forget_download(&id);
        }
        result
    }
}

fn cancelled(id: &AppId) -> CoreError {
    CoreError::Cancelled(format!("the download of {id} was cancelled"))
}

impl Download<'_> {
    /// One request for the blob from `have` on, written to `part`; the bytes it wrote.
    async fn once(&self, have: u64) -> CoreResult<u64> {
        let Download {
            registry,
            intent,
            part,
            job,
        } = *self;
        let (cancel, progress) = (job.cancel, job.progress);
        let (mut stream, restart) = registry
            .blob_from(&intent.repository, &intent.digest, have)
            .await?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(!restart)
            .write(true)
            .truncate(restart)
            .open(part)
            .await
            .map_err(|e| CoreError::io(format!("cannot open {}", part.display()), e))?;
        let mut done = if restart { 0 } else { have };
        let mut reported = done;
        let (mut moved, size) = (0u64, intent.size);
        loop {
            let chunk = tokio::select! {
                _ = cancel.cancelled() => return Err(cancelled(&intent.id)),
                c = stream.next() => c,
            };
            let Some(chunk) = chunk else { break };
            let chunk = chunk.map_err(|e| {
                CoreError::Unavailable(format!("the download from the store broke off: {e}"))
            })?;
            if done + chunk.len() as u64 > size {
                return Err(CoreError::Failed(format!(
                    "the store sent more than the {size} bytes of {}",
                    intent.id
                )));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| CoreError::io(format!("cannot write {}", part.display()), e))?;
            done += chunk.len() as u64;
            moved += chunk.len() as u64;
            if done - reported >= REPORT_EVERY || done == size {
                reported = done;
                progress(PoolProgress::Downloading { done, size });
            }
        }
        file.sync_data()
            .await
            .map_err(|e| CoreError::io(format!("cannot write {}", part.display()), e))?;
        if done < size {
            return Err(CoreError::Unavailable(format!(
                "the store ended the download of {} after {done} of {size} bytes",
                intent.id
            )));
        }
        Ok(moved)
    }
}

fn file_sha256(path: &Path) -> CoreResult<String> {
    use sha2::Digest;
    use std::io::Read;
    let fail = |e| CoreError::io(format!("cannot read {}", path.display()), e);
    let mut f = std::fs::File::open(path).map_err(fail)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(fail)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> CoreResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Failed(format!("pool worker failed: {e}")))
}
