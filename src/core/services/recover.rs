//! Interrupted service operations: the intents the duxcore services record (creating a
//! service, importing a root filesystem as an image) in `<state>/duxcore/intents/`, and the
//! rule that resolves each one a crash (or Docker going away) left. Both operations roll
//! back when their client goes away, so both are rolled back (docs/DECISIONS.md,
//! "Interrupted operations"): a create leaves no container and no directory of its own, an
//! import leaves no image.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::spec::LABEL_SERVICE;
use super::Services;
use crate::core::engine::EngineError;
use crate::core::recovery::{conclude, resolvable, IntentKind, IntentLog, Record};
use crate::core::view::fetch as view_fetch;
use crate::core::CoreResult;

/// The operations whose intent the services record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceOp {
    Create,
    ImportImage,
}

impl IntentKind for ServiceOp {}

pub type ServiceIntents = IntentLog<ServiceOp>;

/// The label an import gives its image (`docker import --change "LABEL ..."`), naming the
/// import's intent: what the rollback removes, and only that.
pub const LABEL_IMPORT: &str = "io.gantry.duxcore.import";

/// What a create notes before it creates the container.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Before {
    /// A container of that name was there (the create will fail on it).
    pub container: bool,
    /// The service's directory was there (a live service's, or one left behind).
    pub dir: bool,
}

/// How long the rollback watches for what Docker may still carry out of a killed request
/// (a container create, an image import whose body it had whole), 250 ms apart.
const LATE: Duration = Duration::from_secs(10);
const EVERY: Duration = Duration::from_millis(250);

impl Services {
    /// Resolves every pending intent, oldest first (nothing while Docker does not answer).
    pub async fn recover(&self) -> CoreResult<()> {
        let what = "service operations";
        if !resolvable(&self.intents, self.engine.as_ref(), what).await {
            return Ok(());
        }
        for p in self.intents.take_pending() {
            let name = p.record.kind.name();
            tracing::info!(operation = %name, service = ?p.record.app, "recovering an interrupted service operation");
            let outcome = match p.record.kind {
                ServiceOp::Create => self.undo_create(&p.record).await,
                ServiceOp::ImportImage => self.undo_import(&p.id, &p.record).await,
            };
            conclude(&self.intents, p, outcome);
        }
        Ok(())
    }

    /// A create: the container it made (only when none of that name was there before) and
    /// the directory it made or filled are removed. A create Docker may still carry out
    /// (the request was out, no answer noted) is waited for.
    async fn undo_create(&self, r: &Record<ServiceOp>) -> CoreResult<()> {
        let (Some(id), Some(before)) = (r.app.as_deref(), r.get::<Before>("before")) else {
            // Killed before it looked: it changed nothing.
            return Ok(());
        };
        if before.container {
            // Docker refused (or will refuse) the create: nothing of it to undo.
            return Ok(());
        }
        let requested = r.data.contains_key("requested") && !r.data.contains_key("created");
        let found = self.own_container(id, requested).await?;
        let _one = self.locks.lock(id).await;
        if found {
            match self.engine.remove_container(id, true, false).await {
                Ok(()) | Err(EngineError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            self.changed(id, None).await;
        }
        if found || !before.dir || r.data.contains_key("created") {
            self.dir(id).remove()?;
        }
        tracing::info!(service = id, "rolled back an interrupted create");
        Ok(())
    }

    /// Whether the service's container (labelled as this service) is there; with `late`,
    /// waits a moment for a create Docker may still be carrying out.
    async fn own_container(&self, id: &str, late: bool) -> CoreResult<bool> {
        let started = Instant::now();
        loop {
            match self.engine.inspect_container(id).await {
                Ok(c) => {
                    let labels = c.config.as_ref().and_then(|c| c.labels.as_ref());
                    let ours = labels
                        .and_then(|l| l.get(LABEL_SERVICE))
                        .map(String::as_str);
                    return Ok(ours == Some(id));
                }
                Err(EngineError::NotFound(_)) if late && started.elapsed() < LATE => {
                    tokio::time::sleep(EVERY).await
                }
                Err(EngineError::NotFound(_)) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// An image import: the image it labelled removed, also when Docker finishes it only
    /// after the restart (watched for a moment when Docker had the whole body and had not
    /// answered).
    async fn undo_import(&self, intent: &str, r: &Record<ServiceOp>) -> CoreResult<()> {
        let label = format!("{LABEL_IMPORT}={intent}");
        let late = r.data.contains_key("sent") && !r.data.contains_key("answered");
        let started = Instant::now();
        let mut removed = false;
        loop {
            for image in self.engine.list_images().await? {
                let ours = image.labels.get(LABEL_IMPORT).map(String::as_str) == Some(intent);
                if !ours {
                    continue;
                }
                match self.engine.remove_image(&image.id, false).await {
                    Ok(_) => {
                        tracing::info!(image = %image.id, label = %label, "removed the image of an interrupted import");
                        removed = true;
                    }
                    Err(EngineError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if removed || !late || started.elapsed() >= LATE {
                break;
            }
            tokio::time::sleep(EVERY).await;
        }
        if removed {
            view_fetch::images_changed(&self.view, self.engine.as_ref()).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Map;

    use super::*;
    use crate::core::events::EventBus;
    use crate::core::recovery::noted;
    use crate::core::services::{CoreKey, FetchLimits, ServiceSettings, UnpackLimits};
    use crate::core::view::LiveView;
    use crate::testutil::{FakeContainer, FakeEngine};

    fn services(dir: &std::path::Path, fake: Arc<FakeEngine>) -> Services {
        let settings = ServiceSettings {
            dir: dir.to_path_buf(),
            fetch: FetchLimits {
                max_bytes: 1 << 20,
                timeout: Duration::from_secs(1),
            },
            unpack: UnpackLimits {
                max_bytes: 1 << 20,
                max_entries: 10,
                max_ratio: 100,
                ratio_min_bytes: 1 << 20,
            },
            max_image_bytes: 1 << 20,
        };
        let view = Arc::new(LiveView::new(EventBus::default()));
        let key = CoreKey::new(&dir.join("key"), b"k".to_vec());
        Services::new(fake, view, settings, key).unwrap()
    }

    /// A create of `svc1` that a crash left with `data` noted.
    fn crashed(dir: &std::path::Path, data: Map<String, serde_json::Value>) {
        let log = ServiceIntents::open(&dir.join("intents")).unwrap();
        std::mem::forget(log.begin(ServiceOp::Create, Some("svc1"), data).unwrap());
    }

    fn service_container() -> FakeContainer {
        FakeContainer::new("svc1", "busybox").with_labels(&[(LABEL_SERVICE, "svc1")])
    }

    #[tokio::test]
    async fn an_interrupted_create_leaves_no_container_and_no_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = noted("before", Before::default());
        data.insert("created".into(), true.into());
        crashed(dir.path(), data);
        std::fs::create_dir_all(dir.path().join("services/svc1/bind")).unwrap();
        let fake = Arc::new(FakeEngine::with_images(&["busybox"]));
        fake.add_container(service_container());
        let s = services(dir.path(), fake.clone());
        s.recover().await.unwrap();
        assert!(fake.containers().is_empty());
        assert!(!dir.path().join("services/svc1").exists());
        assert!(!s.intents().has_pending());
    }

    #[tokio::test]
    async fn a_create_refused_for_an_existing_service_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let before = Before {
            container: true,
            dir: true,
        };
        crashed(dir.path(), noted("before", before));
        std::fs::create_dir_all(dir.path().join("services/svc1/bind")).unwrap();
        let fake = Arc::new(FakeEngine::with_images(&["busybox"]));
        fake.add_container(service_container());
        let s = services(dir.path(), fake.clone());
        s.recover().await.unwrap();
        assert_eq!(fake.containers().len(), 1);
        assert!(dir.path().join("services/svc1/bind").exists());
        assert!(!s.intents().has_pending());
    }
}
