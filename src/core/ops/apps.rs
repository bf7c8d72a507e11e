//! The apps' long operations: import, start, stop and refresh of all apps.

use std::convert::Infallible;
use std::sync::Arc;

use tempfile::NamedTempFile;

use super::{Operation, Reporter, Start, Summary};
use crate::core::apps::bundle::BundleKind;
use crate::core::apps::import::{ImportOptions, ImportProgress, ImportStep, Upload};
use crate::core::apps::lifecycle::{ProcessOutcome, StopOptions};
use crate::core::apps::store::StoredApp;
use crate::core::apps::stream::UploadReader;
use crate::core::apps::AppId;
use crate::core::tasks::TaskKind;
use crate::core::{Core, CoreError, CoreResult};

/// One line of a start's or stop's output (what docker-compose would print).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine(pub String);

impl Summary for OutputLine {
    fn step(&self) -> String {
        self.0.clone()
    }
}

impl Summary for Infallible {
    fn step(&self) -> String {
        match *self {}
    }
}

impl Summary for ImportProgress {
    fn fraction(&self) -> Option<f64> {
        match self {
            ImportProgress::ImageBytes { done, size, .. } if *size > 0 => {
                Some(*done as f64 / *size as f64)
            }
            _ => None,
        }
    }

    fn step(&self) -> String {
        match self {
            ImportProgress::Done { step, .. } => format!("{} done", step_name(*step)),
            ImportProgress::Failed { step, message } => {
                format!("{} failed: {message}", step_name(*step))
            }
            ImportProgress::ImageStarted { file, .. } | ImportProgress::ImageBytes { file, .. } => {
                format!("loading {file}")
            }
            ImportProgress::ImageLoaded { file, .. } => format!("loaded {file}"),
        }
    }
}

fn step_name(step: ImportStep) -> &'static str {
    match step {
        ImportStep::CheckZip => "ZIP check",
        ImportStep::ParseConfig => "config.yml check",
        ImportStep::ParseCompose => "compose check",
        ImportStep::CheckDiskSpace => "disk space check",
        ImportStep::LoadImages => "image load",
        ImportStep::StoreInstance => "storing the app",
    }
}

/// Where an import's ZIP comes from.
pub enum ImportSource {
    /// An upload still arriving through `reader` into `file`: image tarballs stream into
    /// Docker while the rest comes (`expected`: the announced length, if any).
    Streaming {
        file: NamedTempFile,
        reader: UploadReader,
        expected: Option<u64>,
    },
    /// An upload still arriving through `reader` into `file`, imported once it is complete
    /// (for protocols that report the upload's progress before the import's).
    Buffered {
        file: NamedTempFile,
        reader: UploadReader,
    },
}

impl ImportSource {
    /// The upload file and, for a streaming import, the upload still arriving into it; a
    /// buffered upload is waited for here.
    pub async fn arrive(
        self,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> CoreResult<(NamedTempFile, Option<Upload>)> {
        match self {
            ImportSource::Streaming {
                file,
                reader,
                expected,
            } => Ok((file, Some(Upload { reader, expected }))),
            ImportSource::Buffered { file, reader } => {
                drain_upload(reader, cancel, "import").await?;
                Ok((file, None))
            }
        }
    }
}

pub type ImportOperation = Operation<ImportProgress, StoredApp>;
pub type AppOperation = Operation<OutputLine, ProcessOutcome>;

impl Core {
    /// Imports an app or a template bundle. Cancelled (by a client, or by its client going
    /// away) it rolls back: nothing of the bundle stays, no image it loaded stays.
    pub fn import_bundle(
        self: &Arc<Self>,
        kind: BundleKind,
        source: ImportSource,
        options: ImportOptions,
        start: &Start,
    ) -> CoreResult<ImportOperation> {
        let templates = match kind {
            BundleKind::App => None,
            BundleKind::Template => Some(self.templates()?.clone()),
        };
        self.operation(
            TaskKind::Import,
            None,
            start,
            |core, reporter, cancel| async move {
                let progress = move |p: ImportProgress| reporter.report(p);
                let (file, upload) = source.arrive(&cancel).await?;
                let zip = file.path();
                match templates {
                    None => {
                        core.apps
                            .import_zip(zip, upload, options, &cancel, &progress)
                            .await
                    }
                    Some(t) => t.import(zip, upload, options, &cancel, &progress).await,
                }
            },
        )
    }

    /// `docker-compose up -d` of the app `id`. Its client going away does not stop it; a
    /// cancel stops what was started and answers Cancelled.
    pub fn start_app(self: &Arc<Self>, id: AppId, start: &Start) -> CoreResult<AppOperation> {
        let app = id.to_string();
        self.operation(
            TaskKind::Start,
            Some(&app),
            start,
            |core, reporter, cancel| async move {
                core.apps.start(&id, &cancel, &lines(reporter)).await
            },
        )
    }

    /// `docker-compose down` of the app `id`. Its client going away does not stop it; a
    /// cancel starts the app again when it ran before, and answers Cancelled.
    pub fn stop_app(
        self: &Arc<Self>,
        id: AppId,
        options: StopOptions,
        start: &Start,
    ) -> CoreResult<AppOperation> {
        let app = id.to_string();
        self.operation(
            TaskKind::Stop,
            Some(&app),
            start,
            |core, reporter, cancel| async move {
                core.apps
                    .stop(&id, options, &cancel, &lines(reporter))
                    .await
            },
        )
    }

    /// Re-reads every app and publishes each; a conflict while a refresh of all apps runs.
    pub fn refresh_apps(self: &Arc<Self>, start: &Start) -> CoreResult<Operation<Infallible, ()>> {
        if !self.apps.begin_refresh_all() {
            return Err(CoreError::Conflict(
                "the transfer app is already busy refreshing".into(),
            ));
        }
        let op = self.operation(
            TaskKind::Refresh,
            None,
            start,
            |core, _, cancel| async move {
                core.apps.refresh_all(&cancel).await;
                Ok(())
            },
        );
        if op.is_err() {
            // Not started after all: free the slot again.
            self.apps.end_refresh_all();
        }
        op
    }
}

/// Reports each output line of a start or stop.
pub(super) fn lines(reporter: Reporter<OutputLine>) -> impl Fn(&str) + Send + Sync {
    move |l: &str| reporter.report(OutputLine(l.to_string()))
}

/// Waits until a buffered upload has arrived completely (its sender finished it). An upload
/// that broke off is the client's (Invalid); one the operation's cancel ended is Cancelled.
pub(super) async fn drain_upload(
    mut reader: UploadReader,
    cancel: &tokio_util::sync::CancellationToken,
    what: &str,
) -> CoreResult<()> {
    let drained = tokio::task::spawn_blocking(move || reader.drain()).await;
    if cancel.is_cancelled() {
        return Err(CoreError::Cancelled(format!(
            "the {what} was cancelled during the upload"
        )));
    }
    match drained {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(CoreError::Invalid(e)),
        Err(e) => Err(CoreError::Failed(format!("the upload failed: {e}"))),
    }
}
