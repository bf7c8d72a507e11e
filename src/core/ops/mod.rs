//! Long operations, each started by one core call that returns an [`Operation`]: its task
//! id, a stream of typed progress and its result. The operation runs on a task of its own,
//! detached from whoever started it; the core decides what a client going away or the server
//! stopping does to it ([`TaskKind::on_client_gone`], [`TaskKind::on_shutdown`]). A dialect
//! only translates: it starts the operation, relays its progress in its wire format, and
//! drops the handle when its client is gone.

pub mod apps;
pub mod images;
pub mod instances;
#[cfg(feature = "pool")]
pub mod pool;
mod recorded;
pub mod services;
pub mod templates;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::metrics::Outcome;
use super::tasks::{Policy, TaskHandle, TaskKind};
use super::{Core, CoreError, CoreResult};

/// What a progress report says in a task listing: how far (0.0 ..= 1.0, if known) and the
/// current step.
pub trait Summary {
    fn fraction(&self) -> Option<f64> {
        None
    }
    fn step(&self) -> String;
}

/// How an operation is started: the id the client chose for it (a UUID), if any.
#[derive(Debug, Clone, Default)]
pub struct Start {
    pub task_id: Option<String>,
}

impl Start {
    pub fn with_id(task_id: Option<&str>) -> Self {
        Self {
            task_id: task_id.map(str::to_string),
        }
    }
}

/// One thing an operation reports.
#[derive(Debug)]
pub enum Event<P, T> {
    Progress(P),
    /// The operation ended; nothing follows.
    Done(CoreResult<T>),
}

/// A running operation, as its starter holds it. Dropping it before the result arrived means
/// the client is gone: the operation's kind decides whether it is cancelled or finishes.
pub struct Operation<P, T> {
    id: String,
    kind: TaskKind,
    cancel: CancellationToken,
    progress: mpsc::UnboundedReceiver<P>,
    result: Option<oneshot::Receiver<CoreResult<T>>>,
}

impl<P, T> Operation<P, T> {
    /// The task id (`PUT /api/cancel/{id}` and the like).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Resolves when the operation was cancelled (by a client or by the server stopping).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// The next report: progress until the operation ends, then its result (once).
    /// Cancel-safe: dropped before it answered (in a `select!`), nothing is lost.
    pub async fn next(&mut self) -> Event<P, T> {
        if let Some(p) = self.progress.recv().await {
            return Event::Progress(p);
        }
        let result = match self.result.as_mut() {
            Some(rx) => rx.await.unwrap_or_else(|_| {
                Err(CoreError::Failed(
                    "the operation ended without a result".into(),
                ))
            }),
            None => Err(CoreError::Failed("the operation's result was taken".into())),
        };
        self.result = None;
        Event::Done(result)
    }

    /// Waits for the result, dropping progress reports.
    pub async fn finish(mut self) -> CoreResult<T> {
        loop {
            if let Event::Done(r) = self.next().await {
                return r;
            }
        }
    }
}

impl<P, T> Drop for Operation<P, T> {
    fn drop(&mut self) {
        if self.result.is_some() && self.kind.on_client_gone() == Policy::Cancel {
            tracing::info!(task = %self.id, kind = %self.kind, "client gone; cancelling");
            self.cancel.cancel();
        }
    }
}

/// Where an operation reports its progress: to its starter and to the task listing.
pub struct Reporter<P> {
    tx: mpsc::UnboundedSender<P>,
    task: Arc<TaskHandle>,
}

impl<P: Summary> Reporter<P> {
    pub fn report(&self, p: P) {
        self.task.report(p.fraction(), &p.step());
        let _ = self.tx.send(p);
    }
}

/// Runs `run` as the operation of `task`, detached from the caller.
pub fn spawn<P, T, F, Fut>(task: TaskHandle, run: F) -> Operation<P, T>
where
    P: Send + 'static,
    T: Send + 'static,
    F: FnOnce(Reporter<P>, CancellationToken) -> Fut,
    Fut: Future<Output = CoreResult<T>> + Send + 'static,
{
    let (tx, progress) = mpsc::unbounded_channel();
    let (result_tx, result) = oneshot::channel();
    let (id, kind, cancel) = (task.id.clone(), task.kind, task.cancel.clone());
    let task = Arc::new(task);
    let began = std::time::Instant::now();
    let fut = run(
        Reporter {
            tx,
            task: task.clone(),
        },
        cancel.clone(),
    );
    tokio::spawn(async move {
        let r = fut.await;
        super::metrics::operation_ended(kind.name(), Outcome::of(&r), began.elapsed());
        // Unlisted before the answer goes out: a cancel after the answer finds nothing.
        drop(task);
        let _ = result_tx.send(r);
    });
    Operation {
        id,
        kind,
        cancel,
        progress,
        result: Some(result),
    }
}

impl Core {
    /// Starts `run` as an operation of `kind` (on `app`), under the id `start` names or a
    /// new one.
    pub fn operation<P, T, F, Fut>(
        self: &Arc<Self>,
        kind: TaskKind,
        app: Option<&str>,
        start: &Start,
        run: F,
    ) -> CoreResult<Operation<P, T>>
    where
        P: Send + 'static,
        T: Send + 'static,
        F: FnOnce(Arc<Core>, Reporter<P>, CancellationToken) -> Fut,
        Fut: Future<Output = CoreResult<T>> + Send + 'static,
    {
        let task = self.tasks.begin(kind, app, start.task_id.as_deref())?;
        let core = self.clone();
        Ok(spawn(task, move |reporter, cancel| {
            run(core, reporter, cancel)
        }))
    }
}
