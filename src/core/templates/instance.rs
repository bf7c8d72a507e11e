//! Instantiating a template: build what is not built yet, then store an app made of the
//! template's files, its `config.yml` with the instance's version and a `compose.yaml` that
//! names the built images.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::build::BuildFn;
use super::spec::BuildSpec;
use super::{settle, Templates};
use crate::core::apps::bundle::{BUILD_FILE, COMPOSE_FILES, CONFIG_FILE};
use crate::core::apps::import::ImportOptions;
use crate::core::apps::lifecycle::{list_files, Apps};
use crate::core::apps::recover::{AppIntent, AppOp};
use crate::core::apps::store::{AppStore, ImageRecord, StagedApp, StoredApp};
use crate::core::apps::{AppConfig, AppId};
use crate::core::compose::MAX_COMPOSE_FILE_BYTES;
use crate::core::recovery::crash_point;
use crate::core::{safe_fs, CoreError, CoreResult};

/// The instance's version: the template's without a trailing `-tpl` (the convention the
/// App ID section suggests: `1.0.0-tpl` makes `1.0.0`); otherwise the same.
pub fn instance_version(template_version: &str) -> &str {
    template_version
        .strip_suffix("-tpl")
        .filter(|v| !v.is_empty())
        .unwrap_or(template_version)
}

impl Templates {
    /// Makes an app of the template `id`, building its images first when Docker lacks any
    /// (a failed build stores nothing and leaves none of its images). The app is stored and
    /// announced as an import is; `options.replace` replaces an app of the same id.
    pub async fn instantiate(
        &self,
        apps: &Apps,
        id: &AppId,
        options: ImportOptions,
        cancel: &CancellationToken,
        progress: BuildFn<'_>,
    ) -> CoreResult<StoredApp> {
        let _claim = self.claim(id, "instantiated")?;
        let template = self.stored(id)?;
        let spec = Self::spec(&template)?;
        let mut config = template.config().clone();
        config.version = instance_version(&config.version).to_string();
        if apps.store().contains(&config.id()) && !options.replace {
            return Err(CoreError::Conflict(format!(
                "app {} exists already; remove it first or instantiate with replace",
                config.id()
            )));
        }
        let app = config.id();
        let intent = self.intent(AppOp::Instantiate, id, Some(app.as_str()))?;
        crash_point("instantiate.intent-written");
        let made = (template, spec, config);
        let result = self
            .instantiate_recorded(apps, made, intent.as_ref(), options, cancel, progress)
            .await;
        settle(intent.as_ref(), &result);
        result
    }

    /// [`Self::instantiate`] with its intent (which the build notes its images in).
    async fn instantiate_recorded(
        &self,
        apps: &Apps,
        (template, spec, config): (StoredApp, BuildSpec, AppConfig),
        intent: Option<&AppIntent>,
        options: ImportOptions,
        cancel: &CancellationToken,
        progress: BuildFn<'_>,
    ) -> CoreResult<StoredApp> {
        let id = template.id().clone();
        if !self.get(&id).await?.built() {
            self.build_all(&template, (&spec, intent), cancel, progress)
                .await?;
        }
        if cancel.is_cancelled() {
            return Err(CoreError::Cancelled(format!(
                "the instantiation of {id} was cancelled"
            )));
        }
        let images = self.image_records(&spec).await?;
        let app = config.id();
        let store = apps.store().clone();
        let staged =
            blocking(move || stage_instance(&store, &template, &spec, config, images)).await?;
        // The instance passes the checks an import of it would: the isolation policy, and
        // the volumes and networks of it that exist in Docker are its own.
        apps.check_staged(&app, staged.dir()).await?;
        let store = apps.store().clone();
        let stored = blocking(move || Ok(store.insert(staged, options.replace)?)).await?;
        crash_point("instantiate.stored");
        apps.publish_import(&stored).await;
        Ok(stored)
    }

    /// The built images as the app's record names them: `docker/<service>.tar`, so that an
    /// export with images makes an ordinary app bundle of the instance.
    async fn image_records(&self, spec: &BuildSpec) -> CoreResult<Vec<ImageRecord>> {
        let mut out = Vec::with_capacity(spec.builds.len());
        for b in &spec.builds {
            let inspect = self.engine.inspect_image(&b.image).await?;
            out.push(ImageRecord {
                file: format!("docker/{}.tar", b.service),
                id: inspect.id.unwrap_or_default(),
                references: vec![b.image.clone()],
            });
        }
        out.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> CoreResult<T> + Send + 'static,
) -> CoreResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CoreError::Failed(format!("instantiation worker failed: {e}")))?
}

/// Stages the instance's files in the app store (blocking); not stored yet.
fn stage_instance(
    store: &AppStore,
    template: &StoredApp,
    spec: &BuildSpec,
    config: AppConfig,
    images: Vec<ImageRecord>,
) -> CoreResult<StagedApp> {
    let version = config.version.clone();
    let mut staged = store.stage(config)?;
    copy_files(&template.dir, staged.dir())?;
    let write = |name: &str, text: &str| {
        let path = staged.dir().join(name);
        std::fs::write(&path, text)
            .map_err(|e| CoreError::io(format!("cannot write {}", path.display()), e))
    };
    write(CONFIG_FILE, &instance_config(&template.dir, &version)?)?;
    write(COMPOSE_FILES[0], &spec.instance_compose)?;
    staged.images = images;
    Ok(staged)
}

/// Copies the template's files, except its config, build and compose files (written anew);
/// no symlink is followed, modes are kept.
fn copy_files(from: &Path, to: &Path) -> CoreResult<()> {
    let skip = |rel: &str| rel == BUILD_FILE || rel == CONFIG_FILE || COMPOSE_FILES.contains(&rel);
    for rel in list_files(from)? {
        if skip(&rel) {
            continue;
        }
        let dest = to.join(&rel);
        let copied = dest
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| copy_file(from, &rel, &dest));
        copied.map_err(|e| CoreError::io(format!("cannot copy {rel} into the instance"), e))?;
    }
    Ok(())
}

fn copy_file(from: &Path, rel: &str, dest: &Path) -> std::io::Result<()> {
    let mut src = safe_fs::open_file(from, Path::new(rel))?;
    let mut out = std::fs::File::create(dest)?;
    std::io::copy(&mut src, &mut out)?;
    out.set_permissions(src.metadata()?.permissions())
}

/// The template's `config.yml` with `Version` set to the instance's (other keys kept).
fn instance_config(template_dir: &Path, version: &str) -> CoreResult<String> {
    let path = template_dir.join(CONFIG_FILE);
    let text = safe_fs::read_text(template_dir, Path::new(CONFIG_FILE), MAX_COMPOSE_FILE_BYTES)
        .map_err(|e| CoreError::io(format!("cannot read {}", path.display()), e.into()))?;
    let mut doc: serde_norway::Value = serde_norway::from_str(&text)
        .map_err(|e| CoreError::Failed(format!("{}: {e}", path.display())))?;
    let map = doc
        .as_mapping_mut()
        .ok_or_else(|| CoreError::Failed(format!("{} is not a mapping", path.display())))?;
    map.insert("Version".into(), version.into());
    serde_norway::to_string(&doc)
        .map_err(|e| CoreError::Failed(format!("cannot write the instance's config.yml: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_versions_drop_the_template_suffix() {
        for (template, instance) in [("1.0.0-tpl", "1.0.0"), ("1.0.0", "1.0.0"), ("-tpl", "-tpl")] {
            assert_eq!(instance_version(template), instance);
        }
    }

    #[test]
    fn the_instance_config_keeps_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "Name: web\nVersion: 1.0-tpl\nDescription: d\nX-Extra: 1\n",
        )
        .unwrap();
        let text = instance_config(dir.path(), "1.0").unwrap();
        let c: AppConfig = serde_norway::from_str(&text).unwrap();
        assert_eq!(c.id().as_str(), "web:1.0");
        assert_eq!(c.description.as_deref(), Some("d"));
        assert!(text.contains("X-Extra"), "{text}");
    }
}
