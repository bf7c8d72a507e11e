//! Loading a `docker save` archive as a long operation, with byte progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tempfile::NamedTempFile;
use tokio_util::sync::CancellationToken;

use super::apps::drain_upload;
use super::{Operation, Reporter, Start, Summary};
use crate::core::apps::stream::UploadReader;
use crate::core::engine::ByteStream;
use crate::core::system::LoadedImage;
use crate::core::tasks::TaskKind;
use crate::core::{Core, CoreError, CoreResult};

/// How often a running load reports the bytes Docker has taken so far.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// Bytes of the archive handed to Docker so far, of `total` when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadProgress {
    pub done: u64,
    pub total: Option<u64>,
}

impl Summary for LoadProgress {
    fn fraction(&self) -> Option<f64> {
        self.total
            .filter(|t| *t > 0)
            .map(|t| self.done.min(t) as f64 / t as f64)
    }

    fn step(&self) -> String {
        "loading the image".into()
    }
}

/// Where the archive comes from.
pub enum LoadSource {
    /// A stream arriving now (a request body), of `total` bytes when announced.
    Stream {
        stream: ByteStream,
        total: Option<u64>,
    },
    /// An upload arriving through `reader` into `file`, loaded once it is complete.
    Buffered {
        file: NamedTempFile,
        reader: UploadReader,
    },
}

pub type LoadOperation = Operation<LoadProgress, LoadedImage>;

impl Core {
    /// Loads an image archive into Docker. Cancelled, the load request is dropped and Docker
    /// discards the partial image.
    pub fn load_image(
        self: &Arc<Self>,
        source: LoadSource,
        start: &Start,
    ) -> CoreResult<LoadOperation> {
        self.operation(
            TaskKind::LoadImage,
            None,
            start,
            |core, reporter, cancel| async move {
                let (stream, total, _file) = match source {
                    LoadSource::Stream { stream, total } => (stream, total, None),
                    LoadSource::Buffered { file, reader } => {
                        drain_upload(reader, &cancel, "image load").await?;
                        let (stream, size) = open_upload(&file).await?;
                        (stream, Some(size), Some(file))
                    }
                };
                core.load_counted(stream, total, &reporter, &cancel).await
            },
        )
    }

    /// Loads `stream`, reporting the bytes Docker has taken every [`REPORT_EVERY`].
    async fn load_counted(
        &self,
        stream: ByteStream,
        total: Option<u64>,
        reporter: &Reporter<LoadProgress>,
        cancel: &CancellationToken,
    ) -> CoreResult<LoadedImage> {
        let what = "the image load was cancelled";
        let load = |counted| self.system.load_image(counted);
        stream_counted(stream, total, reporter, cancel, what, load).await
    }
}

/// Hands `stream` to `consume` (a transfer into Docker), reporting the bytes taken every
/// [`REPORT_EVERY`]. Cancelled, the transfer is dropped: Docker discards what it got.
pub(super) async fn stream_counted<T, F, Fut>(
    stream: ByteStream,
    total: Option<u64>,
    reporter: &Reporter<LoadProgress>,
    cancel: &CancellationToken,
    cancelled: &str,
    consume: F,
) -> CoreResult<T>
where
    F: FnOnce(ByteStream) -> Fut,
    Fut: std::future::Future<Output = CoreResult<T>>,
{
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let counted: ByteStream = Box::pin(stream.map(move |chunk| {
        if let Ok(c) = &chunk {
            counter.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        chunk
    }));
    reporter.report(LoadProgress { done: 0, total });
    let transfer = consume(counted);
    tokio::pin!(transfer);
    let mut tick = tokio::time::interval(REPORT_EVERY);
    let mut last = 0;
    loop {
        tokio::select! {
            r = &mut transfer => return r,
            _ = cancel.cancelled() => return Err(CoreError::Cancelled(cancelled.into())),
            _ = tick.tick() => {
                let done = sent.load(Ordering::Relaxed);
                if done != last && total.is_none_or(|t| done < t) {
                    last = done;
                    reporter.report(LoadProgress { done, total });
                }
            }
        }
    }
}

/// The complete upload as a stream, and its length.
async fn open_upload(file: &NamedTempFile) -> CoreResult<(ByteStream, u64)> {
    let f = tokio::fs::File::open(file.path())
        .await
        .map_err(|e| CoreError::io("cannot read the upload", e))?;
    let size = f
        .metadata()
        .await
        .map_err(|e| CoreError::io("cannot read the upload", e))?
        .len();
    let stream: ByteStream = Box::pin(tokio_util::io::ReaderStream::with_capacity(f, 64 << 10));
    Ok((stream, size))
}
