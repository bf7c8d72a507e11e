//! The import pipeline: an app ZIP in a temp file becomes a stored app with its images
//! loaded into Docker, or nothing at all.
//!
//! Each step is named ([`ImportStep`]) and reported as it completes, so the dialects can show
//! progress. A failure or cancellation anywhere rolls back: the staged directory disappears
//! with its guard, and images this import loaded (and that were not there before) are
//! removed again.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use tokio_util::sync::CancellationToken;

use super::bundle::{Bundle, BundleError, BundleKind, BundleLimits, ByteSize};
use super::recover::{AppIntent, AppIntents, AppOp};
use super::store::{AppStore, ImageRecord, StoredApp};
use super::stream::{follow, FoundImage, LocalEntry, TarWatch, UploadReader, WalkEnd};
use super::AppConfig;
use crate::core::compose::{interpolate, ComposePolicy, ComposeProject};
use crate::core::engine::{ByteStream, ContainerEngine};
use crate::core::recovery::{crash_point, crash_when_sent};
use crate::core::{CoreError, CoreResult, ErrorKind};

/// The named steps of an import, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStep {
    CheckZip,
    ParseConfig,
    ParseCompose,
    CheckDiskSpace,
    LoadImages,
    StoreInstance,
}

/// What the pipeline reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportProgress {
    /// A step finished successfully.
    Done { step: ImportStep, message: String },
    /// A step failed; the import is being rolled back.
    Failed { step: ImportStep, message: String },
    /// An image tarball started loading.
    ImageStarted { file: String, size: u64 },
    /// Bytes of the current image tarball streamed to Docker so far.
    ImageBytes { file: String, done: u64, size: u64 },
    /// An image tarball was loaded.
    ImageLoaded {
        file: String,
        references: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct ImportSettings {
    pub limits: BundleLimits,
    pub policy: ComposePolicy,
    /// Free space that must remain after the import.
    pub reserve_bytes: u64,
    /// Where an import records its intent and notes the images it loads, so that images of
    /// an import killed midway (power cut, SIGKILL) are removed at the next start. None: no
    /// record (the unit tests).
    pub intents: Option<AppIntents>,
    /// Apps or templates.
    pub kind: BundleKind,
}

impl Default for ImportSettings {
    fn default() -> Self {
        Self {
            limits: BundleLimits::default(),
            policy: ComposePolicy::default(),
            reserve_bytes: 256 << 20,
            intents: None,
            kind: BundleKind::App,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Replace an app with the same id instead of refusing with a conflict.
    pub replace: bool,
}

pub type ProgressFn<'a> = &'a (dyn Fn(ImportProgress) + Send + Sync);

/// A ZIP that is still arriving: the reading end of its upload pipe and the upload's
/// announced length, if known (for the disk-space check of streamed images).
pub struct Upload {
    pub reader: UploadReader,
    pub expected: Option<u64>,
}

/// Imports the ZIP at `zip` (a temp file the caller owns and deletes afterwards).
///
/// With an `upload`, the ZIP is still arriving through it into `zip`: image tarballs stream
/// into Docker as soon as their bytes arrive (see [`super::stream`]); when the upload has
/// ended, the whole pipeline runs over the complete file, checks every streamed entry
/// against the central directory and loads only the images not streamed yet. Any failure,
/// the upload's included, rolls back every image loaded.
#[allow(clippy::too_many_arguments)]
pub async fn import(
    engine: &dyn ContainerEngine,
    store: &Arc<AppStore>,
    zip: &Path,
    upload: Option<Upload>,
    settings: &ImportSettings,
    options: ImportOptions,
    cancel: &CancellationToken,
    progress: ProgressFn<'_>,
) -> CoreResult<StoredApp> {
    let mut current = match upload {
        Some(_) => ImportStep::LoadImages,
        None => ImportStep::CheckZip,
    };
    let loaded = match Loaded::shared(settings) {
        Ok(loaded) => loaded,
        Err(e) => {
            let message = e.to_string();
            progress(ImportProgress::Failed {
                step: current,
                message,
            });
            return Err(e);
        }
    };
    let result = async {
        let pre = match upload {
            Some(upload) => {
                let (pre, upload) = stream_images(
                    engine,
                    upload.reader,
                    upload.expected,
                    store,
                    settings,
                    options.replace,
                    cancel,
                    progress,
                    &loaded,
                )
                .await?;
                upload
                    .map_err(|e| CoreError::Invalid(format!("the upload did not complete: {e}")))?;
                current = ImportStep::CheckZip;
                pre
            }
            None => Preloaded::default(),
        };
        run(
            engine,
            store,
            zip,
            settings,
            options,
            cancel,
            progress,
            &mut current,
            &loaded,
            pre,
        )
        .await
    }
    .await;
    finish(engine, result, current, &loaded, progress).await
}

/// Reports a failure and rolls back: every image this import loaded (or was about to load)
/// and that was not there before is removed again. The intent goes when that is done; an
/// image that could not be removed (Docker went away) leaves it to the recovery. (Every load
/// has had Docker's answer by now, so none can still complete.)
async fn finish(
    engine: &dyn ContainerEngine,
    result: CoreResult<StoredApp>,
    current: ImportStep,
    loaded: &SharedLoaded,
    progress: ProgressFn<'_>,
) -> CoreResult<StoredApp> {
    let mut settled = true;
    if let Err(e) = &result {
        progress(ImportProgress::Failed {
            step: current,
            message: e.to_string(),
        });
        let ids = lock(loaded).ids.clone();
        settled = roll_back(engine, &ids).await;
    }
    let intent = lock(loaded).intent.take();
    if let Some(intent) = intent {
        if settled {
            intent.done();
        } else {
            intent.keep();
        }
    }
    result
}

/// The order to remove what an import noted: references first (untagging what it tagged,
/// even when the image itself was there before), then image ids, newest first.
pub(super) fn removal_order(ids: &[String]) -> Vec<String> {
    let mut ids = ids.to_vec();
    ids.reverse();
    ids.sort_by_key(|id| id.starts_with("sha256:"));
    ids
}

/// Removes `ids` (see [`removal_order`]); false when one could not be removed.
async fn roll_back(engine: &dyn ContainerEngine, ids: &[String]) -> bool {
    let mut settled = true;
    for id in &removal_order(ids) {
        match engine.remove_image(id, false).await {
            Ok(_) => {}
            // Named by a manifest but never created (the load did not get that far).
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(image = %id, error = %err, "import rollback: cannot remove an image it loaded");
                settled = false;
            }
        }
    }
    settled
}

/// The images an import loaded or is about to load (ids that were not in Docker before it
/// started), and the intent on disk that names them for a restart after a crash.
struct Loaded {
    ids: Vec<String>,
    before: Option<HashSet<String>>,
    intent: Option<AppIntent>,
}

type SharedLoaded = Arc<Mutex<Loaded>>;

impl Loaded {
    /// Records the import's intent (when the settings have an intent log).
    fn shared(settings: &ImportSettings) -> CoreResult<SharedLoaded> {
        let intent = match &settings.intents {
            Some(log) => Some(log.begin(AppOp::Import, None, Default::default())?),
            None => None,
        };
        crash_point("import.intent-written");
        Ok(Arc::new(Mutex::new(Loaded {
            ids: Vec::new(),
            before: None,
            intent,
        })))
    }

    /// Notes images (new ones only), durably when the list grew.
    fn add(&mut self, ids: &[String]) -> CoreResult<()> {
        let before = self.ids.len();
        for id in ids {
            let known = self.before.as_ref().is_some_and(|b| b.contains(id));
            if !id.is_empty() && !known && !self.ids.contains(id) {
                self.ids.push(id.clone());
            }
        }
        if self.ids.len() > before {
            if let Some(intent) = &self.intent {
                intent.note("images", &self.ids)?;
            }
        }
        Ok(())
    }

    /// Notes the images a manifest names, before the bytes that complete it go to Docker.
    fn add_from_manifest(loaded: &SharedLoaded, ids: &[String]) {
        match lock(loaded).add(ids) {
            Ok(()) => crash_point("import.manifest-noted"),
            Err(e) => {
                tracing::warn!(error = %e, "import intent: cannot note the images a manifest names")
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the streaming phase of an [`Upload`] leaves for the pipeline.
#[derive(Default)]
struct Preloaded {
    /// Images loaded while the upload arrived.
    records: Vec<ImageRecord>,
    /// Their entries as the local headers said, to check against the central directory.
    streamed: Vec<LocalEntry>,
    /// The first failure while streaming (reported after the ZIP checks, which explain a
    /// hostile bundle better), with its step.
    error: Option<(ImportStep, CoreError)>,
}

/// The streaming phase: follows the upload as it arrives and loads each image tarball the
/// walk finds, one after the other. Ends when the upload has ended (how: the second value).
#[allow(clippy::too_many_arguments)]
async fn stream_images(
    engine: &dyn ContainerEngine,
    mut upload: UploadReader,
    expected: Option<u64>,
    store: &Arc<AppStore>,
    settings: &ImportSettings,
    replace: bool,
    cancel: &CancellationToken,
    progress: ProgressFn<'_>,
    loaded: &SharedLoaded,
) -> CoreResult<(Preloaded, Result<(), String>)> {
    lock(loaded).before = Some(known_images(engine).await?);
    let (found_tx, mut found_rx) = tokio::sync::mpsc::channel::<FoundImage>(1);
    let follower = {
        let limits = settings.limits.clone();
        let loaded = loaded.clone();
        let store_for_walk = store.clone();
        tokio::task::spawn_blocking(move || {
            let hook = |ids: &[String]| Loaded::add_from_manifest(&loaded, ids);
            let fresh = |text: &[u8]| {
                // Only a config the checks would accept and whose app exists stops the walk;
                // anything else is for the checks to judge later.
                let parsed = std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| serde_norway::from_str::<AppConfig>(t).ok());
                !matches!(parsed, Some(c) if !replace && store_for_walk.contains(&c.id()))
            };
            let (streamed, end) = follow(&mut upload, &limits, &found_tx, &hook, &fresh);
            drop(found_tx);
            // The rest of the upload goes to the file; it decides how the upload ended.
            (streamed, end, upload.drain())
        })
    };
    let mut pre = Preloaded::default();
    while let Some(image) = found_rx.recv().await {
        if cancel.is_cancelled() {
            pre.error = Some((
                ImportStep::LoadImages,
                CoreError::Cancelled("the import was cancelled".into()),
            ));
            break;
        }
        let LocalEntry {
            name,
            size,
            header_start,
            ..
        } = image.entry.clone();
        // Room for this image as it lands in Docker, the rest of the upload, the reserve.
        let rest = expected.unwrap_or(0).saturating_sub(header_start);
        let need = image_space(&name, size)
            .saturating_add(rest)
            .saturating_add(settings.reserve_bytes);
        let free = free_space(store.root())?;
        if free < need {
            pre.error = Some((
                ImportStep::CheckDiskSpace,
                CoreError::Invalid(format!(
                    "not enough disk space: loading {name} needs {} (the image, the rest of the upload and a reserve of {}), {} is free",
                    ByteSize(need),
                    ByteSize(settings.reserve_bytes),
                    ByteSize(free)
                )),
            ));
            break;
        }
        progress(ImportProgress::ImageStarted {
            file: name.clone(),
            size,
        });
        let sent = Arc::new(AtomicU64::new(0));
        let counted = counted_body(image.body, sent.clone(), cancel);
        let result = load_body(engine, counted, &name, size, &sent, progress).await;
        if cancel.is_cancelled() && result.is_err() {
            pre.error = Some((
                ImportStep::LoadImages,
                CoreError::Cancelled("the import was cancelled".into()),
            ));
            break;
        }
        match result {
            Ok(references) => {
                match record_image(engine, loaded, name, references, progress).await {
                    Ok(record) => pre.records.push(record),
                    Err(e) => {
                        pre.error = Some((ImportStep::LoadImages, e));
                        break;
                    }
                }
            }
            Err(e) => {
                pre.error = Some((ImportStep::LoadImages, e));
                break;
            }
        }
    }
    // Dropping the receiver tells the walk to stop streaming.
    drop(found_rx);
    let (streamed, end, upload) = follower
        .await
        .map_err(|e| CoreError::Failed(format!("the upload reader failed: {e}")))?;
    match end {
        // Damage explains a failed load better than Docker's "unexpected EOF".
        WalkEnd::Damaged(e) => pre.error = Some((ImportStep::LoadImages, e.into())),
        WalkEnd::Stopped(why) => {
            tracing::debug!(reason = %why, "import: the remaining images load after the upload")
        }
        WalkEnd::Complete | WalkEnd::Abandoned => {}
    }
    pre.streamed = streamed
        .into_iter()
        .filter(|e| pre.records.iter().any(|r| r.file == e.name))
        .collect();
    Ok((pre, upload))
}

/// An image's bytes as the walk streams them, counted into `sent`. A cancel breaks the body
/// off with an error, so that Docker's load fails on the incomplete tarball instead of
/// completing with the rest of the upload.
fn counted_body(
    mut body: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    sent: Arc<AtomicU64>,
    cancel: &CancellationToken,
) -> ByteStream {
    use std::future::Future;
    use std::task::Poll;
    let mut cancelled = Box::pin(cancel.clone().cancelled_owned());
    let mut broken = false;
    Box::pin(stream::poll_fn(move |cx| {
        if broken {
            return Poll::Ready(None);
        }
        if cancelled.as_mut().poll(cx).is_ready() {
            broken = true;
            return Poll::Ready(Some(Err(std::io::Error::other("cancelled"))));
        }
        let next = body.poll_recv(cx);
        if let Poll::Ready(Some(Ok(b))) = &next {
            sent.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        next
    }))
}

/// The image ids and references Docker has: what an import finds there is never its to
/// remove when it rolls back.
pub(crate) async fn known_images(engine: &dyn ContainerEngine) -> CoreResult<HashSet<String>> {
    let mut known = HashSet::new();
    for image in engine.list_images().await? {
        known.extend(image.repo_tags.into_iter().filter(|t| t != "<none>:<none>"));
        known.insert(image.id);
    }
    Ok(known)
}

/// After a load: the references and the image ids behind them, noted for the rollback
/// (the references first: a rollback untags what the import tagged, even when the image
/// itself was there before).
async fn record_image(
    engine: &dyn ContainerEngine,
    loaded: &SharedLoaded,
    file: String,
    references: Vec<String>,
    progress: ProgressFn<'_>,
) -> CoreResult<ImageRecord> {
    let mut image_id = String::new();
    lock(loaded).add(&references)?;
    for r in &references {
        if let Ok(inspect) = engine.inspect_image(r).await {
            image_id = inspect.id.unwrap_or_default();
            lock(loaded).add(std::slice::from_ref(&image_id))?;
        }
    }
    progress(ImportProgress::ImageLoaded {
        file: file.clone(),
        references: references.clone(),
    });
    crash_point("import.image-loaded");
    Ok(ImageRecord {
        file,
        id: image_id,
        references,
    })
}

/// The bundle's compose project as the app's compose engine will read it from `app_dir` (a
/// template's: the compose file of the instances it makes), its `.env` interpolated, checked
/// against `settings.policy` (the isolation policy).
pub fn compose_project(
    bundle: &Bundle,
    app_dir: &Path,
    settings: &ImportSettings,
) -> CoreResult<ComposeProject> {
    let id = bundle.id();
    let instance;
    let text = match settings.kind {
        BundleKind::App => bundle.compose_yaml(),
        BundleKind::Template => {
            let spec = crate::core::templates::spec::BuildSpec::parse(bundle.compose_yaml(), &id)?;
            spec.check_files(|f| bundle.contains_file(f))?;
            instance = spec.instance_compose;
            &instance
        }
    };
    let vars: HashMap<String, String> = match bundle.env_file() {
        Some(text) => interpolate::parse_env_file(text, &HashMap::new(), true)
            .map_err(|e| CoreError::Invalid(format!(".env: {e}")))?
            .into_iter()
            .collect(),
        None => HashMap::new(),
    };
    ComposeProject::from_text(
        app_dir,
        &app_dir.join(bundle.compose_name()),
        text,
        &id.slug(),
        id.as_str(),
        &vars,
        &settings.policy,
    )
    .map_err(|e| CoreError::Invalid(format!("{}: {e}", bundle.compose_name())))
}

/// [`compose_project`], then checked against Docker for volumes and networks another app (or
/// none) owns: refused now, not only at start.
async fn plan_compose(
    engine: &dyn ContainerEngine,
    bundle: &Bundle,
    app_dir: &Path,
    settings: &ImportSettings,
) -> CoreResult<ComposeProject> {
    let project = compose_project(bundle, app_dir, settings)?;
    project
        .check_owners(engine)
        .await
        .map_err(|e| match e.kind() {
            crate::core::ErrorKind::Invalid => {
                CoreError::Invalid(format!("{}: {e}", bundle.compose_name()))
            }
            _ => CoreError::from(e),
        })?;
    Ok(project)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    engine: &dyn ContainerEngine,
    store: &Arc<AppStore>,
    zip: &Path,
    settings: &ImportSettings,
    options: ImportOptions,
    cancel: &CancellationToken,
    progress: ProgressFn<'_>,
    current: &mut ImportStep,
    loaded: &SharedLoaded,
    pre: Preloaded,
) -> CoreResult<StoredApp> {
    let cancelled = || CoreError::Cancelled("the import was cancelled".into());
    let step_done = |step, message: String| progress(ImportProgress::Done { step, message });

    *current = ImportStep::CheckZip;
    let path = zip.to_path_buf();
    let limits = settings.limits.clone();
    let streamed = pre.streamed;
    let kind = settings.kind;
    let bundle = blocking(move || -> Result<Bundle, BundleError> {
        let mut bundle = Bundle::open_kind(&path, &limits, kind)?;
        for entry in &streamed {
            bundle.verify_streamed(entry)?;
        }
        Ok(bundle)
    })
    .await??;
    step_done(ImportStep::CheckZip, "ZIP format valid".into());

    *current = ImportStep::ParseConfig;
    let id = bundle.id();
    if store.contains(&id) && !options.replace {
        return Err(CoreError::Conflict(format!(
            "app {id} is already imported; remove it first or import with replace"
        )));
    }
    step_done(ImportStep::ParseConfig, format!("app {id}"));

    *current = ImportStep::ParseCompose;
    let project = plan_compose(engine, &bundle, &store.app_dir(&id), settings).await?;
    step_done(
        ImportStep::ParseCompose,
        format!("{} services", project.services().len()),
    );

    // A failure while streaming, now that the bundle itself is known good.
    if let Some((step, e)) = pre.error {
        *current = step;
        return Err(e);
    }

    *current = ImportStep::CheckDiskSpace;
    let mut records = pre.records;
    let done: HashSet<String> = records.iter().map(|r| r.file.clone()).collect();
    let need = space_needed(&bundle, &done, settings.reserve_bytes);
    let free = free_space(store.root())?;
    if free < need {
        return Err(CoreError::Invalid(format!(
            "not enough disk space: the import needs {} (images, files and a reserve of {}), {} is free",
            ByteSize(need),
            ByteSize(settings.reserve_bytes),
            ByteSize(free)
        )));
    }
    step_done(
        ImportStep::CheckDiskSpace,
        format!("{} needed, {} free", ByteSize(need), ByteSize(free)),
    );

    *current = ImportStep::LoadImages;
    let files: Vec<(String, u64)> = bundle
        .images()
        .iter()
        .filter(|e| !done.contains(&e.name))
        .map(|e| (e.name.clone(), e.size))
        .collect();
    if !files.is_empty() && lock(loaded).before.is_none() {
        lock(loaded).before = Some(known_images(engine).await?);
    }
    let bundle = Arc::new(Mutex::new(bundle));
    for (file, size) in files {
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        progress(ImportProgress::ImageStarted {
            file: file.clone(),
            size,
        });
        let references = load_one(engine, &bundle, &file, size, loaded, cancel, progress).await?;
        records.push(record_image(engine, loaded, file, references, progress).await?);
    }
    records.sort_by(|a, b| a.file.cmp(&b.file));
    step_done(
        ImportStep::LoadImages,
        format!("{} image archives loaded", records.len()),
    );

    *current = ImportStep::StoreInstance;
    if cancel.is_cancelled() {
        return Err(cancelled());
    }
    let store2 = store.clone();
    let config = lock(&bundle).config().clone();
    let stored = blocking(move || -> CoreResult<StoredApp> {
        let mut staged = store2.stage(config)?;
        lock(&bundle).extract_metadata(staged.dir())?;
        crash_point("import.staged");
        staged.images = records;
        Ok(store2.insert(staged, options.replace)?)
    })
    .await??;
    // Stored: the images now belong to the app.
    lock(loaded).ids.clear();
    crash_point("import.stored");
    step_done(ImportStep::StoreInstance, "Successfully stored App".into());
    Ok(stored)
}

/// Removes the images of imports that never finished (their journals survived a crash),
/// except images a stored app uses. Returns the images removed.
pub async fn recover_journals(
    engine: &dyn ContainerEngine,
    dir: &Path,
    in_use: &HashSet<String>,
) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let images: Vec<String> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for id in &removal_order(&images) {
            if in_use.contains(id) {
                continue;
            }
            match engine.remove_image(id, false).await {
                Ok(_) => removed.push(id.clone()),
                // Untagging its last reference removed it already.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(image = %id, error = %e, "cannot remove an image of an interrupted import")
                }
            }
        }
        tracing::info!(journal = %path.display(), images = images.len(), "cleaned up an interrupted import");
        let _ = std::fs::remove_file(&path);
    }
    removed
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> CoreResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Failed(format!("import worker failed: {e}")))
}

const CHUNK: usize = 256 * 1024;

/// Streams one tarball from the ZIP into Docker: a blocking thread reads the entry and feeds
/// a small bounded channel, so memory stays at a few chunks whatever the image size. The
/// images its `manifest.json` names go into the journal before the bytes that complete it
/// go to Docker.
#[allow(clippy::too_many_arguments)]
async fn load_one(
    engine: &dyn ContainerEngine,
    bundle: &Arc<Mutex<Bundle>>,
    file: &str,
    size: u64,
    loaded: &SharedLoaded,
    cancel: &CancellationToken,
    progress: ProgressFn<'_>,
) -> CoreResult<Vec<String>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let sent = Arc::new(AtomicU64::new(0));
    let pump = {
        let bundle = bundle.clone();
        let file = file.to_string();
        let sent = sent.clone();
        let cancel = cancel.clone();
        let loaded = loaded.clone();
        tokio::task::spawn_blocking(move || -> Result<(), BundleError> {
            let mut guard = lock(&bundle);
            let mut reader = guard.entry_reader(&file)?;
            let mut watch = TarWatch::for_name(&file);
            let mut buf = vec![0u8; CHUNK];
            loop {
                if cancel.is_cancelled() {
                    let _ = tx.blocking_send(Err(std::io::Error::other("cancelled")));
                    return Ok(());
                }
                let n = match reader.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) => {
                        let err: BundleError = e.into();
                        let _ = tx.blocking_send(Err(std::io::Error::other(err.to_string())));
                        return Err(err);
                    }
                };
                if let Some(ids) = watch.as_mut().and_then(|w| w.feed(&buf[..n])) {
                    Loaded::add_from_manifest(&loaded, &ids);
                }
                sent.fetch_add(n as u64, Ordering::Relaxed);
                if tx
                    .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                    .is_err()
                {
                    // Docker stopped reading; its error says why.
                    return Ok(());
                }
            }
        })
    };
    let body: ByteStream = Box::pin(stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let loaded = load_body(engine, body, file, size, &sent, progress).await;
    let pumped = pump
        .await
        .map_err(|e| CoreError::Failed(format!("image reader failed: {e}")))?;
    // Cancelled midway, Docker's load fails. A load that completed anyway returns its
    // references, so the caller records the images for the rollback.
    if cancel.is_cancelled() && loaded.is_err() {
        return Err(CoreError::Cancelled("the import was cancelled".into()));
    }
    // A damaged entry explains a Docker failure better than Docker's "unexpected EOF".
    pumped.map_err(|e| CoreError::Invalid(format!("{file}: {e}")))?;
    loaded
}

/// Runs Docker's load over `body`, reporting the bytes sent so far every 250 ms; the
/// references and ids Docker reports.
async fn load_body(
    engine: &dyn ContainerEngine,
    body: ByteStream,
    file: &str,
    size: u64,
    sent: &AtomicU64,
    progress: ProgressFn<'_>,
) -> CoreResult<Vec<String>> {
    // While Docker registers an archive it has whole, the fault tests may crash.
    let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = crash_when_sent("import.load-in-flight", body, answered.clone());
    let load = engine.load_images(body);
    tokio::pin!(load);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let loaded = loop {
        tokio::select! {
            r = &mut load => break r,
            _ = tick.tick() => progress(ImportProgress::ImageBytes {
                file: file.to_string(),
                done: sent.load(Ordering::Relaxed),
                size,
            }),
        }
    };
    crate::core::recovery::crash_when_answered("import.load-in-flight", &answered);
    let loaded = loaded.map_err(|e| match e.kind() {
        ErrorKind::Invalid => CoreError::from(e).context(format!("{file}: Docker cannot load it")),
        _ => CoreError::from(e),
    })?;
    progress(ImportProgress::ImageBytes {
        file: file.to_string(),
        done: sent.load(Ordering::Relaxed),
        size,
    });
    let mut refs = loaded.references;
    refs.extend(loaded.ids);
    Ok(refs)
}

/// Image tarballs land in Docker's storage roughly at their size; compressed ones expand,
/// so they count three times.
fn image_space(name: &str, size: u64) -> u64 {
    if name.ends_with(".tar") {
        size
    } else {
        size.saturating_mul(3)
    }
}

/// The images not loaded yet (`done`), the bundle's other files and the reserve.
fn space_needed(bundle: &Bundle, done: &HashSet<String>, reserve: u64) -> u64 {
    let images: u64 = bundle
        .images()
        .iter()
        .filter(|e| !done.contains(&e.name))
        .map(|e| image_space(&e.name, e.size))
        .sum();
    images
        .saturating_add(bundle.metadata_size())
        .saturating_add(reserve)
}

pub(crate) fn free_space(dir: &Path) -> CoreResult<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| {
        // As std::io::Error: the same text as every other system error gantry reports.
        let e = std::io::Error::from(e);
        CoreError::Failed(format!("cannot read free space of {}: {e}", dir.display()))
    })?;
    #[allow(clippy::unnecessary_cast)]
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::core::apps::bundle::build_zip;
    use crate::testutil::{docker, docker_host, docker_ok, engine, image, unique};

    /// A new image with its own id (so rollback may remove it), saved as a tarball.
    fn fresh_image_tar(host: &str, reference: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("marker"), reference).unwrap();
        let script = format!(
            "tar -C {} -c . | docker -H {host} import - {reference} >/dev/null",
            dir.path().display()
        );
        let st = std::process::Command::new("sh")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(st.success(), "docker import failed");
        let out = std::process::Command::new("docker")
            .args(["-H", host, "save", reference])
            .output()
            .unwrap();
        assert!(out.status.success());
        docker_ok(host, &["rmi", reference]);
        out.stdout
    }

    fn bundle(name: &str, images: &[(&str, &[u8])], compose: &str) -> Vec<u8> {
        let config = format!("Name: {name}\nVersion: 1.0\nDescription: test app\n");
        let mut entries: Vec<(String, Vec<u8>)> = vec![
            ("config.yml".into(), config.into_bytes()),
            ("compose.yaml".into(), compose.as_bytes().to_vec()),
            ("README.md".into(), b"# hello".to_vec()),
        ];
        for (n, data) in images {
            entries.push((format!("docker/{n}"), data.to_vec()));
        }
        let refs: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        build_zip(&refs)
    }

    struct Setup {
        _dir: tempfile::TempDir,
        store: Arc<AppStore>,
        zip: PathBuf,
    }

    impl Setup {
        /// Imports the setup's ZIP (already complete) with the default settings.
        async fn import(
            &self,
            engine: &dyn ContainerEngine,
            options: ImportOptions,
            cancel: &CancellationToken,
            progress: ProgressFn<'_>,
        ) -> CoreResult<StoredApp> {
            let settings = ImportSettings::default();
            import(
                engine,
                &self.store,
                &self.zip,
                None,
                &settings,
                options,
                cancel,
                progress,
            )
            .await
        }
    }

    fn setup(zip_bytes: &[u8]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(AppStore::open(&dir.path().join("apps")).unwrap());
        let zip = dir.path().join("upload.zip");
        std::fs::write(&zip, zip_bytes).unwrap();
        Setup {
            _dir: dir,
            store,
            zip,
        }
    }

    fn collect() -> (
        Arc<Mutex<Vec<ImportProgress>>>,
        impl Fn(ImportProgress) + Send + Sync,
    ) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        (events, move |p| sink.lock().unwrap().push(p))
    }

    fn image_exists(host: &str, reference: &str) -> bool {
        docker(host, &["image", "inspect", reference]).0
    }

    #[tokio::test]
    #[ignore = "needs the test dockerd (run scripts/test.sh)"]
    async fn import_loads_images_and_stores_the_app() {
        let Some(host) = docker_host("apps::import::import_loads_images_and_stores_the_app") else {
            return;
        };
        let reference = format!("{}:1", unique("gantry-imp-ok"));
        let tar = fresh_image_tar(&host, &reference);
        let compose = format!("services:\n  web:\n    image: {reference}\n    command: sleep 5\n");
        let s = setup(&bundle(&unique("ImpOk"), &[("web.tar", &tar)], &compose));
        let (events, sink) = collect();
        let eng = engine(&host);
        let stored = s
            .import(
                &eng,
                ImportOptions::default(),
                &CancellationToken::new(),
                &sink,
            )
            .await
            .expect("import");
        assert!(image_exists(&host, &reference), "image was not loaded");
        assert_eq!(stored.record.images.len(), 1);
        assert_eq!(stored.record.images[0].file, "docker/web.tar");
        assert!(stored.record.images[0].references.contains(&reference));
        assert!(stored.record.images[0].id.starts_with("sha256:"));
        assert!(stored.dir.join("compose.yaml").is_file());
        assert!(stored.readme().is_some());
        assert!(
            !stored.dir.join("docker").exists(),
            "image tarballs are not stored"
        );
        assert_eq!(s.store.list().unwrap().len(), 1);
        let steps: Vec<ImportStep> = events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                ImportProgress::Done { step, .. } => Some(*step),
                _ => None,
            })
            .collect();
        assert_eq!(
            steps,
            vec![
                ImportStep::CheckZip,
                ImportStep::ParseConfig,
                ImportStep::ParseCompose,
                ImportStep::CheckDiskSpace,
                ImportStep::LoadImages,
                ImportStep::StoreInstance
            ]
        );
        // The same id again is a conflict, unless replacing.
        let err = s
            .import(
                &eng,
                ImportOptions::default(),
                &CancellationToken::new(),
                &|_| {},
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict, "{err:?}");
        s.import(
            &eng,
            ImportOptions { replace: true },
            &CancellationToken::new(),
            &|_| {},
        )
        .await
        .expect("replace");
        assert_eq!(s.store.list().unwrap().len(), 1);
        docker_ok(&host, &["rmi", &reference]);
    }

    #[tokio::test]
    #[ignore = "needs the test dockerd (run scripts/test.sh)"]
    async fn a_failed_import_leaves_nothing_behind() {
        let Some(host) = docker_host("apps::import::a_failed_import_leaves_nothing_behind") else {
            return;
        };
        let reference = format!("{}:1", unique("gantry-imp-rb"));
        let tar = fresh_image_tar(&host, &reference);
        let compose = format!("services:\n  web:\n    image: {reference}\n");
        // a.tar loads fine, b.tar is not an image: the import fails after loading a.tar.
        let zip = bundle(
            &unique("ImpRb"),
            &[("a.tar", &tar), ("b.tar", b"this is not a tarball at all")],
            &compose,
        );
        let s = setup(&zip);
        let (events, sink) = collect();
        let err = s
            .import(
                &engine(&host),
                ImportOptions::default(),
                &CancellationToken::new(),
                &sink,
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err:?}");
        assert!(err.to_string().contains("b.tar"), "{err}");
        assert!(
            !image_exists(&host, &reference),
            "the image the failed import loaded is still there"
        );
        assert!(s.store.list().unwrap().is_empty());
        let leftovers: Vec<_> = std::fs::read_dir(s.store.root()).unwrap().collect();
        assert!(leftovers.is_empty(), "store not empty: {leftovers:?}");
        assert!(events.lock().unwrap().iter().any(|e| matches!(
            e,
            ImportProgress::Failed {
                step: ImportStep::LoadImages,
                ..
            }
        )));
    }

    #[tokio::test]
    #[ignore = "needs the test dockerd (run scripts/test.sh)"]
    async fn bad_compose_and_cancel_are_refused_before_docker() {
        let Some(host) = docker_host("apps::import::bad_compose_and_cancel") else {
            return;
        };
        let compose = format!(
            "services:\n  web:\n    image: {}\n    bogus_key: 1\n",
            image()
        );
        let s = setup(&bundle(&unique("ImpBad"), &[], &compose));
        let err = s
            .import(
                &engine(&host),
                ImportOptions::default(),
                &CancellationToken::new(),
                &|_| {},
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("bogus_key"), "{err}");
        assert!(err.to_string().contains("web"), "{err}");
        assert!(s.store.list().unwrap().is_empty());

        let reference = format!("{}:1", unique("gantry-imp-cx"));
        let tar = fresh_image_tar(&host, &reference);
        let compose = format!("services:\n  web:\n    image: {reference}\n");
        let s = setup(&bundle(&unique("ImpCx"), &[("a.tar", &tar)], &compose));
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = s
            .import(&engine(&host), ImportOptions::default(), &cancel, &|_| {})
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{err:?}");
        assert!(!image_exists(&host, &reference));
        assert!(s.store.list().unwrap().is_empty());
    }

    /// The race of a kill between Docker creating an image and the journal noting it: the
    /// journal names the image as soon as the tarball's manifest has gone by, while Docker
    /// cannot have created it yet (its tarball is incomplete), and that journal alone lets
    /// the recovery remove the image.
    #[tokio::test]
    #[ignore = "needs the test dockerd (run scripts/test.sh)"]
    async fn the_journal_names_images_before_docker_can_create_them() {
        let Some(host) = docker_host("apps::import::the_journal_names_images_before") else {
            return;
        };
        let reference = format!("{}:1", unique("gantry-imp-jn"));
        let tar = fresh_image_tar(&host, &reference);
        let compose = format!("services:\n  web:\n    image: {reference}\n");
        let name = unique("ImpJournal");
        let zip = {
            use std::io::Write;
            let stored = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            w.start_file("config.yml", stored).unwrap();
            w.write_all(format!("Name: {name}\nVersion: 1\n").as_bytes())
                .unwrap();
            w.start_file("compose.yaml", stored).unwrap();
            w.write_all(compose.as_bytes()).unwrap();
            w.start_file("docker/web.tar", stored).unwrap();
            w.write_all(&tar).unwrap();
            w.finish().unwrap().into_inner()
        };
        let data_start = zip::ZipArchive::new(std::io::Cursor::new(&zip))
            .unwrap()
            .by_name("docker/web.tar")
            .unwrap()
            .data_start()
            .unwrap() as usize;
        // Everything but the tarball's end-of-archive blocks.
        let first = data_start + tar.len() - 1024;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(AppStore::open(&dir.path().join("apps")).unwrap());
        let journals = dir.path().join("intents");
        let settings = ImportSettings {
            intents: Some(AppIntents::open(&journals).unwrap()),
            ..ImportSettings::default()
        };
        let upload = dir.path().join("upload.zip");
        let (sender, reader) =
            crate::core::apps::stream::upload_pipe(std::fs::File::create(&upload).unwrap());
        assert!(sender.send(Bytes::copy_from_slice(&zip[..first])).await);
        let eng = Arc::new(engine(&host));
        let task = {
            let (eng, store, upload, settings) =
                (eng.clone(), store.clone(), upload.clone(), settings.clone());
            tokio::spawn(async move {
                import(
                    eng.as_ref(),
                    &store,
                    &upload,
                    Some(Upload {
                        reader,
                        expected: None,
                    }),
                    &settings,
                    ImportOptions::default(),
                    &CancellationToken::new(),
                    &|_| {},
                )
                .await
            })
        };
        let journal_files = || -> Vec<PathBuf> {
            std::fs::read_dir(&journals)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        };
        let journal_ids = || -> Vec<String> {
            journal_files()
                .iter()
                .filter_map(|p| std::fs::read(p).ok())
                .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter_map(|v| {
                    serde_json::from_value::<Vec<String>>(v["data"]["images"].clone()).ok()
                })
                .flatten()
                .collect()
        };
        let mut noted = Vec::new();
        for _ in 0..300 {
            noted = journal_ids();
            if !noted.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let image_id = noted.iter().find(|n| n.starts_with("sha256:")).cloned();
        assert!(
            noted.contains(&reference),
            "the journal never named {reference}: {noted:?}"
        );
        let image_id = image_id.expect("the journal never named the image id");
        assert_eq!(noted.len(), 2, "{noted:?}");
        assert!(
            !image_exists(&host, &reference),
            "Docker has the image although its tarball is incomplete"
        );
        // What a kill from here on leaves on disk.
        let crash = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(crash.path().join("intents")).unwrap();
        let file = journal_files().pop().unwrap();
        std::fs::copy(
            &file,
            crash.path().join("intents").join(file.file_name().unwrap()),
        )
        .unwrap();

        assert!(sender.send(Bytes::copy_from_slice(&zip[first..])).await);
        sender.finish(Ok(()));
        let stored = task.await.unwrap().expect("import");
        assert_eq!(
            stored.record.images[0].id, image_id,
            "the journal named another id"
        );
        assert!(image_exists(&host, &reference));
        assert!(journal_ids().is_empty(), "journal left after the import");

        // Had gantry died after Docker created the image: the recovery removes it.
        let apps = crate::core::apps::lifecycle::Apps::open(
            eng.clone(),
            crash.path(),
            ImportSettings::default(),
        )
        .unwrap();
        assert!(apps.intents().has_pending());
        apps.recover().await.unwrap();
        assert!(!image_exists(&host, &reference));
        assert!(!image_exists(&host, &image_id));
        assert!(!apps.intents().has_pending());
    }

    #[test]
    fn free_space_reads_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).unwrap() > 0);
        assert!(free_space(Path::new("/no/such/dir")).is_err());
    }
}
