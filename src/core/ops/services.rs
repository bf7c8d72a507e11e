//! The duxcore services' long operations: creating a service (image pull, bind contents
//! fetch) and importing a root filesystem as an image.

use std::sync::Arc;

use super::images::{stream_counted, LoadProgress};
use super::{Operation, Start, Summary};
use crate::core::engine::ByteStream;
use crate::core::services::spec::ServiceSpec;
use crate::core::services::{CreateStep, Created};
use crate::core::tasks::TaskKind;
use crate::core::{Core, CoreResult};

impl Summary for CreateStep {
    fn step(&self) -> String {
        match self {
            CreateStep::PullingImage(image) => format!("pulling {image} when missing"),
            CreateStep::CreatingContainer => "creating the container".into(),
            CreateStep::FetchingContents(url) => format!("fetching {url}"),
            CreateStep::UnpackingContents => "unpacking the bind contents".into(),
        }
    }
}

impl Core {
    /// Creates a service. A failure, a cancel or the client leaving rolls it back: no
    /// container and no directory stay.
    pub fn create_service(
        self: &Arc<Self>,
        spec: ServiceSpec,
        start: &Start,
    ) -> CoreResult<Operation<CreateStep, Created>> {
        let services = self.services()?.clone();
        let id = spec.id.clone();
        self.operation(
            TaskKind::CreateService,
            Some(&id),
            start,
            |_core, reporter, cancel| async move {
                services
                    .create(spec, |step| reporter.report(step), &cancel)
                    .await
            },
        )
    }

    /// Imports a raw root filesystem tar (`docker import`) streaming from `tar` (`total`
    /// bytes when announced); the result is the image's id.
    pub fn import_rootfs(
        self: &Arc<Self>,
        tar: ByteStream,
        total: Option<u64>,
        start: &Start,
    ) -> CoreResult<Operation<LoadProgress, String>> {
        let services = self.services()?.clone();
        self.operation(
            TaskKind::ImportImage,
            None,
            start,
            |_core, reporter, cancel| async move {
                let what = "the image import was cancelled";
                let import = |counted| services.import_image(counted);
                stream_counted(tar, total, &reporter, &cancel, what, import).await
            },
        )
    }
}
