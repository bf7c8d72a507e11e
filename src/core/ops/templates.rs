//! The templates' long operations: build and instantiation (their import is an import, in
//! `apps.rs`).

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Operation, Start, Summary};
use crate::core::apps::import::ImportOptions;
use crate::core::apps::store::StoredApp;
use crate::core::apps::AppId;
use crate::core::tasks::TaskKind;
use crate::core::templates::build::{BuildProgress, Built};
use crate::core::templates::Templates;
use crate::core::{Core, CoreResult};

impl Summary for BuildProgress {
    fn step(&self) -> String {
        match self {
            BuildProgress::Started { service, .. } => format!("building {service}"),
            BuildProgress::Line { service, line } => format!("{service}: {line}"),
            BuildProgress::Built { service, .. } => format!("built {service}"),
        }
    }
}

/// Where a template operation reports its build's progress.
pub type BuildReport = Box<dyn Fn(BuildProgress) + Send + Sync>;

impl Core {
    /// Builds every service of the template `id`; cancelled, it removes what it built.
    pub fn build_template(
        self: &Arc<Self>,
        id: AppId,
        start: &Start,
    ) -> CoreResult<Operation<BuildProgress, Vec<Built>>> {
        self.template_operation(
            TaskKind::Build,
            id,
            start,
            |_, t, id, report, cancel| async move { t.build(&id, &cancel, &report).await },
        )
    }

    /// Makes an app of the template `id`, building its images first if needed.
    pub fn instantiate_template(
        self: &Arc<Self>,
        id: AppId,
        options: ImportOptions,
        start: &Start,
    ) -> CoreResult<Operation<BuildProgress, StoredApp>> {
        let kind = TaskKind::Instantiate;
        self.template_operation(
            kind,
            id,
            start,
            move |core, t, id, report, cancel| async move {
                t.instantiate(&core.apps, &id, options, &cancel, &report)
                    .await
            },
        )
    }

    fn template_operation<T, F, Fut>(
        self: &Arc<Self>,
        kind: TaskKind,
        id: AppId,
        start: &Start,
        run: F,
    ) -> CoreResult<Operation<BuildProgress, T>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Core>, Arc<Templates>, AppId, BuildReport, CancellationToken) -> Fut,
        Fut: Future<Output = CoreResult<T>> + Send + 'static,
    {
        let templates = self.templates()?.clone();
        templates.ready_for(&id)?;
        self.operation(
            kind,
            Some(&id.to_string()),
            start,
            move |core, reporter, cancel| {
                let report: BuildReport = Box::new(move |p| reporter.report(p));
                run(core, templates, id, report, cancel)
            },
        )
    }
}
