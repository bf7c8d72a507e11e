//! App templates: bundles whose services are built on the device ("Transfer Technology -
//! Templates", "App Template"). A template is an app bundle plus `docker-compose-build.yml`
//! whose services have a `build:` context, with the contexts' files in the bundle.
//!
//! Templates are imported through the same pipeline as apps (the same ZIP checks, images
//! under `docker/` loaded and rolled back alike) into their own store,
//! `<state_dir>/templates/`, extracted as apps are. Building streams each context as a tar
//! from there into Docker's build API; instantiating builds what is not built yet and stores
//! an app whose compose file names the built images.

pub mod build;
pub mod instance;
pub mod spec;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::core::apps::bundle::{BundleKind, BUILD_FILE};
use crate::core::apps::files::{lookup_blocking, FileLookup};
use crate::core::apps::import::{self, ImportOptions, ImportSettings, ProgressFn, Upload};
use crate::core::apps::recover::{AppIntent, AppOp};
use crate::core::apps::store::{AppStore, StoredApp};
use crate::core::apps::{AppId, ClaimGuard, Claims};
use crate::core::compose::MAX_COMPOSE_FILE_BYTES;
use crate::core::engine::ContainerEngine;
use crate::core::recovery::{self, crash_point};
use crate::core::safe_fs;
use crate::core::view::{fetch, LiveView, Snapshot};
use crate::core::{CoreError, CoreResult, ErrorKind};
use build::{BuildFn, Built};

/// A template operation's intent (None: the settings have no intent log, as in unit tests).
type Intent = Option<AppIntent>;

/// Ends an operation's intent, if it has one, by its result (see [`recovery::settle`]).
fn settle<T>(intent: Option<&AppIntent>, result: &CoreResult<T>) {
    if let Some(intent) = intent {
        recovery::settle(intent, result);
    }
}
use spec::BuildSpec;

/// A built service of a template, as listings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceImage {
    pub service: String,
    pub image: String,
    /// Whether Docker has the image.
    pub built: bool,
}

#[derive(Debug, Clone)]
pub struct TemplateView {
    pub template: StoredApp,
    pub services: Vec<ServiceImage>,
    pub busy: bool,
}

impl TemplateView {
    /// Every service's image is in Docker.
    pub fn built(&self) -> bool {
        self.services.iter().all(|s| s.built)
    }
}

pub struct Templates {
    engine: Arc<dyn ContainerEngine>,
    /// Where listings read which images Docker has, and where operations read back the
    /// images they made or removed.
    view: Arc<LiveView>,
    store: Arc<AppStore>,
    settings: ImportSettings,
    /// Templates being built, instantiated or removed.
    busy: Claims,
}

impl Templates {
    /// Opens the store `<state_dir>/templates`; imports check bundles as the apps' imports
    /// do (`apps`), and record their intents in the apps' log (`apps.intents`): an import
    /// interrupted by a crash is rolled back at the next start as an app's is.
    pub fn open(
        engine: Arc<dyn ContainerEngine>,
        view: Arc<LiveView>,
        state: &Path,
        apps: &ImportSettings,
    ) -> CoreResult<Self> {
        let store = AppStore::open(&state.join("templates")).map(Arc::new)?;
        let mut settings = apps.clone();
        settings.kind = BundleKind::Template;
        Ok(Self {
            engine,
            view,
            store,
            settings,
            busy: Claims::default(),
        })
    }

    /// The stored templates' ids, sorted: the Files API's "templates" category.
    pub fn ids(&self) -> CoreResult<Vec<AppId>> {
        Ok(self
            .store
            .list()?
            .into_iter()
            .map(|t| t.record.id)
            .collect())
    }

    /// A template's file or directory, for the Files API (see `apps::files::lookup`).
    pub async fn file(&self, id: &str) -> CoreResult<FileLookup> {
        lookup_blocking(self.store.clone(), id).await
    }

    /// Claims a template for an operation; `Conflict` while another one runs on it.
    pub fn claim(&self, id: &AppId, what: &'static str) -> CoreResult<ClaimGuard<'_>> {
        self.busy.claim(id, what).map_err(|other| {
            CoreError::Conflict(format!(
                "template {id} is being {other}; try again when that has finished"
            ))
        })
    }

    /// Imports the template ZIP at `zip` (still arriving through `upload`, if any).
    pub async fn import(
        &self,
        zip: &Path,
        upload: Option<Upload>,
        options: ImportOptions,
        cancel: &CancellationToken,
        progress: ProgressFn<'_>,
    ) -> CoreResult<StoredApp> {
        let (engine, store, settings) = (self.engine.as_ref(), &self.store, &self.settings);
        let imported = import::import(
            engine, store, zip, upload, settings, options, cancel, progress,
        )
        .await;
        // Base images in its `docker/` were loaded (or rolled back).
        self.images_changed().await;
        imported
    }

    /// The view reads Docker's images again, after an operation made or removed some.
    async fn images_changed(&self) {
        fetch::images_changed(&self.view, self.engine.as_ref()).await;
    }

    fn stored(&self, id: &AppId) -> CoreResult<StoredApp> {
        self.store.get(id).map_err(|e| match e.kind() {
            ErrorKind::NotFound => CoreError::NotFound(format!("no such template: {id}")),
            _ => e.into(),
        })
    }

    /// Before an operation on `id` starts: the template exists (else `NotFound`) and no
    /// other operation runs on it (else `Conflict`), so that a stream's errors before it
    /// starts can be answers of their own. The operation claims it as it runs.
    pub fn ready_for(&self, id: &AppId) -> CoreResult<()> {
        self.stored(id)?;
        if self.busy.is_busy(id) {
            return Err(CoreError::Conflict(format!(
                "template {id} is busy with another operation; try again when it has finished"
            )));
        }
        Ok(())
    }

    /// The template's build file, as stored (not read through a symlink).
    pub fn spec(template: &StoredApp) -> CoreResult<BuildSpec> {
        let path = template.dir.join(BUILD_FILE);
        let text = safe_fs::read_text(&template.dir, Path::new(BUILD_FILE), MAX_COMPOSE_FILE_BYTES)
            .map_err(|e| CoreError::io(format!("cannot read {}", path.display()), e.into()))?;
        BuildSpec::parse(&text, template.id())
    }

    /// The template with its services' images as the live view has them (no Docker call).
    fn describe(&self, template: StoredApp, images: &Snapshot) -> CoreResult<TemplateView> {
        let services = Self::spec(&template)?
            .builds
            .into_iter()
            .map(|b| ServiceImage {
                built: images.has_image(&b.image),
                service: b.service,
                image: b.image,
            })
            .collect();
        let busy = self.busy.is_busy(template.id());
        Ok(TemplateView {
            template,
            services,
            busy,
        })
    }

    pub async fn list(&self) -> CoreResult<Vec<TemplateView>> {
        let templates = self.store.list()?;
        if templates.is_empty() {
            return Ok(Vec::new());
        }
        let images = self.view.current().await?;
        templates
            .into_iter()
            .map(|t| self.describe(t, &images))
            .collect()
    }

    pub async fn get(&self, id: &AppId) -> CoreResult<TemplateView> {
        let template = self.stored(id)?;
        self.describe(template, &*self.view.current().await?)
    }

    /// [`build::build_all`], then the view reads the images it made (or removed again).
    async fn build_all(
        &self,
        template: &StoredApp,
        (spec, intent): (&BuildSpec, Option<&AppIntent>),
        cancel: &CancellationToken,
        progress: BuildFn<'_>,
    ) -> CoreResult<Vec<Built>> {
        let engine = self.engine.as_ref();
        let built = build::build_all(engine, &template.dir, spec, intent, cancel, progress).await;
        self.images_changed().await;
        built
    }

    /// Records the intent of an operation on a template (in the apps' log, when the settings
    /// have it): `app` is the app it makes, if any.
    fn intent(&self, op: AppOp, template: &AppId, app: Option<&str>) -> CoreResult<Intent> {
        let Some(log) = &self.settings.intents else {
            return Ok(None);
        };
        let data = recovery::noted("template", template.as_str());
        Ok(Some(log.begin(op, app, data)?))
    }

    /// Builds every service of the template (images already there are rebuilt, from
    /// Docker's cache when nothing changed). Its intent notes the images it creates: a
    /// build a crash interrupted is undone at the next start as a cancelled one is.
    pub async fn build(
        &self,
        id: &AppId,
        cancel: &CancellationToken,
        progress: BuildFn<'_>,
    ) -> CoreResult<Vec<Built>> {
        let template = self.stored(id)?;
        let _claim = self.claim(id, "built")?;
        let spec = Self::spec(&template)?;
        let intent = self.intent(AppOp::Build, id, None)?;
        crash_point("build.intent-written");
        let built = (&spec, intent.as_ref());
        let result = self.build_all(&template, built, cancel, progress).await;
        crash_point("build.done");
        settle(intent.as_ref(), &result);
        result
    }

    /// Removes a template and, with `remove_images`, the images it built or brought that no
    /// stored app (`in_use`: image ids and references of stored apps) uses.
    pub async fn remove(
        &self,
        id: &AppId,
        remove_images: bool,
        in_use: &HashSet<String>,
    ) -> CoreResult<()> {
        let template = self.stored(id)?;
        let _claim = self.claim(id, "removed")?;
        if remove_images {
            let mut refs: Vec<String> = Self::spec(&template)?
                .builds
                .into_iter()
                .map(|b| b.image)
                .collect();
            for image in &template.record.images {
                refs.extend(image.references.iter().cloned());
            }
            let removed = self.remove_unused(&refs, in_use).await;
            self.images_changed().await;
            removed?;
        }
        Ok(self.store.remove(id)?)
    }

    async fn remove_unused(&self, refs: &[String], in_use: &HashSet<String>) -> CoreResult<()> {
        for r in refs {
            let used = match self.engine.inspect_image(r).await {
                Ok(i) => in_use.contains(r) || i.id.is_some_and(|id| in_use.contains(&id)),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            if used {
                continue;
            }
            match self.engine.remove_image(r, false).await {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    return Err(CoreError::Conflict(format!(
                        "image {r} is still needed: {e}"
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
