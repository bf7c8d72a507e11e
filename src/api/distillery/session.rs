//! One Distillery websocket session: the call (the first binary frame, within a second),
//! the core operation it starts, its output as text frames, the client's text frames as its
//! stdin, a cancel signal or a closed socket as a cancel, and one result frame at the end.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::protocol::{self, Call, FIRST_TIMEOUT, UNKNOWN_CALL};
use crate::core::apps::lifecycle::{ProcessOutcome, StopOptions};
use crate::core::ops::apps::OutputLine;
use crate::core::ops::instances::AppDone;
use crate::core::ops::{Event, Operation, Start};
use crate::core::{Core, CoreError};
use crate::server::ws::{Incoming, WsReceiver, WsSender, WsSession};

/// How long the client has to send its call.
const FIRST_MESSAGE: Duration = Duration::from_secs(1);

/// Lines of client input waiting for the command to read them.
const STDIN_QUEUE: usize = 64;

/// Why a call failed: the message of the result frame.
pub struct Failure(pub String);

impl From<CoreError> for Failure {
    fn from(e: CoreError) -> Self {
        Failure(e.to_string())
    }
}

type Outcome = Result<(), Failure>;

/// The socket while a call runs.
struct Io {
    tx: WsSender,
    rx: WsReceiver,
    /// The client closed the socket (or it broke).
    gone: bool,
    /// The server is stopping: the call finishes as the core's shutdown policy says.
    stopping: bool,
    /// Where the client's text frames go (a command's stdin), and a line waiting for room.
    stdin: Option<mpsc::Sender<String>>,
    pending: Option<String>,
}

pub async fn run(session: WsSession, core: Arc<Core>, client: String) {
    let WsSession { tx, rx } = session;
    let mut io = Io {
        tx,
        rx,
        gone: false,
        stopping: false,
        stdin: None,
        pending: None,
    };
    let outcome = match io.first_call().await {
        None => return,
        Some(Err(message)) => Err(Failure(message)),
        Some(Ok(call)) => {
            tracing::info!(%client, call = call.name(), "distillery call");
            io.call(call, &core).await
        }
    };
    if let Err(Failure(m)) = &outcome {
        tracing::info!(%client, failure = %m, "distillery call failed");
    }
    io.finish(outcome.map_err(|Failure(m)| m)).await;
}

impl Io {
    /// The call of the first binary frame; None when the client left first.
    async fn first_call(&mut self) -> Option<Result<Call, String>> {
        let deadline = tokio::time::Instant::now() + FIRST_MESSAGE;
        loop {
            let incoming = tokio::time::timeout_at(deadline, self.rx.next(std::future::pending()));
            match incoming.await {
                Err(_) => return Some(Err(FIRST_TIMEOUT.into())),
                Ok(Incoming::Msg(Message::Binary(b))) => return Some(protocol::parse_call(&b)),
                // Text before the call: there is no process to feed yet.
                Ok(Incoming::Msg(_) | Incoming::Stalled | Incoming::Cancelled) => {}
                Ok(Incoming::Gone) => return None,
                Ok(Incoming::Invalid(_)) => return Some(Err(UNKNOWN_CALL.into())),
                Ok(Incoming::Stopping) => return Some(Err("the server is shutting down".into())),
            }
        }
    }

    /// Starts the call's core operation and relays it to its end.
    async fn call(&mut self, call: Call, core: &Arc<Core>) -> Outcome {
        let s = Start::default();
        let apps = &core.apps;
        if let Some((kind, slug)) = call.on_one_app() {
            let op = core.app_operation(kind, apps.resolve(slug)?, &s)?;
            return self.relay(core, op, app_done).await;
        }
        match call {
            Call::Start(slug) => {
                let op = core.start_app(apps.resolve(&slug)?, &s)?;
                self.relay(core, op, compose_outcome).await
            }
            Call::Stop(slug) => {
                let op = core.stop_app(apps.resolve(&slug)?, StopOptions::default(), &s)?;
                self.relay(core, op, compose_outcome).await
            }
            Call::Provision(p) => {
                let op = core.provision_app(p, &s)?;
                self.relay(core, op, |_| Ok(())).await
            }
            Call::Backup => {
                let op = core.backup_apps(&s)?;
                self.relay(core, op, |_| Ok(())).await
            }
            Call::Exec { slug, service, cmd } => {
                let (stdin, input) = mpsc::channel(STDIN_QUEUE);
                self.stdin = Some(stdin);
                let op = core.exec_in_app(apps.resolve(&slug)?, service, cmd, input, &s)?;
                self.relay(core, op, exit_status).await
            }
            _ => unreachable!("calls on one app are handled above"),
        }
    }

    /// Relays the operation's lines until its result, which `verdict` judges; meanwhile
    /// reads the client: a cancel signal or a closed socket cancels the operation, text
    /// frames go to its stdin.
    async fn relay<T>(
        &mut self,
        core: &Core,
        mut op: Operation<OutputLine, T>,
        verdict: impl FnOnce(T) -> Outcome,
    ) -> Outcome {
        loop {
            let listening = !self.gone && !self.stopping && self.pending.is_none();
            let step = tokio::select! {
                biased;
                e = op.next() => Step::Op(e),
                () = send_pending(&self.stdin, &mut self.pending), if self.pending.is_some() => {
                    Step::Fed
                }
                i = self.rx.next(std::future::pending()), if listening => Step::Client(i),
            };
            match step {
                Step::Op(Event::Progress(OutputLine(line))) => self.line(&line).await,
                Step::Op(Event::Done(result)) => return verdict(result?),
                Step::Fed => {}
                Step::Client(incoming) => self.incoming(incoming, core, op.id()),
            }
        }
    }

    /// What the client sent while the operation runs.
    fn incoming(&mut self, incoming: Incoming, core: &Core, task: &str) {
        match incoming {
            Incoming::Msg(Message::Binary(b)) if protocol::is_cancel(&b) => {
                tracing::info!(%task, "cancel signal");
                let _ = core.tasks.cancel(task);
            }
            Incoming::Msg(Message::Text(t)) if self.stdin.is_some() => {
                self.pending = Some(t.as_str().to_string());
            }
            Incoming::Msg(_) | Incoming::Stalled | Incoming::Cancelled => {}
            Incoming::Gone | Incoming::Invalid(_) => {
                // The protocol: a closed socket is a cancel.
                self.gone = true;
                self.stdin = None;
                tracing::info!(%task, "client gone; cancelling");
                let _ = core.tasks.cancel(task);
            }
            Incoming::Stopping => self.stopping = true,
        }
    }

    /// Sends output, one text frame per line.
    async fn line(&mut self, text: &str) {
        for line in text.lines() {
            if !self.tx.send(Message::text(line)).await {
                return;
            }
        }
    }

    /// The result frame, then the close.
    async fn finish(self, outcome: Result<(), String>) {
        let Io { mut tx, rx, .. } = self;
        if tx.is_gone() {
            return;
        }
        if tx.send(Message::binary(protocol::result(&outcome))).await {
            WsSession { tx, rx }.end("").await;
        }
    }
}

/// What [`Io::relay`] waited for.
enum Step<P, T> {
    Op(Event<P, T>),
    Fed,
    Client(Incoming),
}

/// Hands the pending line to the command's stdin once there is room (pending forever
/// without a stdin); cancel-safe: the line is taken only when it can be sent.
async fn send_pending(stdin: &Option<mpsc::Sender<String>>, pending: &mut Option<String>) {
    let Some(tx) = stdin else {
        return std::future::pending().await;
    };
    match tx.reserve().await {
        Ok(permit) => {
            if let Some(line) = pending.take() {
                permit.send(line);
            }
        }
        // The command no longer reads its input.
        Err(_) => *pending = None,
    }
}

/// A rebuild or update as a start or stop; anything else that ended is a success.
fn app_done(done: AppDone) -> Outcome {
    match done {
        AppDone::Outcome(o) => compose_outcome(o),
        AppDone::Done => Ok(()),
    }
}

/// A start, stop, rebuild or update succeeded when compose did; else its error line.
fn compose_outcome(o: ProcessOutcome) -> Outcome {
    if o.success {
        return Ok(());
    }
    let error = o
        .lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("ERROR: "))
        .unwrap_or("the compose operation failed");
    Err(Failure(error.to_string()))
}

/// A command succeeded when it exited 0.
fn exit_status(code: i64) -> Outcome {
    match code {
        0 => Ok(()),
        n => Err(Failure(format!("the command exited with code {n}"))),
    }
}
