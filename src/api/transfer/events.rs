//! Live operations over websockets (`[prefix]/events/...`, no `/api`) and `PUT
//! /api/cancel/{id}`.
//!
//! Every session first announces its task's CancelID, then reports TransferProgress steps
//! (PascalCase JSON text messages) and ends with a close frame. Uploads follow the spec's
//! protocol: `{"Name":"Length","Value":n}`, then n bytes in one or more binary messages,
//! written to a temp file as they arrive (never more than one message in memory).
//! See docs/DECISIONS.md ("Live operations") for the step mapping.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::apps::{process_lines, process_result, UpResult};
use super::{Call, Handler, Problem, Reply};
use crate::api::http;
use crate::api::router::Routes;
use crate::core::apps::import::{ImportOptions, ImportProgress, ImportStep};
use crate::core::apps::lifecycle::StopOptions;
use crate::core::apps::AppId;
use crate::core::engine::ByteStream;
use crate::core::tasks::{TaskHandle, TaskKind};
use crate::core::{Core, CoreError, ErrorKind};

/// Largest single websocket message (and frame); a ZIP may come in several.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Read buffer of a websocket session (tungstenite's default is 128 KiB, all of it touched).
const WS_READ_BUFFER_BYTES: usize = 16 << 10;

/// How long one message may take to reach a client before it counts as gone.
const SEND_GUARD: Duration = Duration::from_secs(60);

/// How long a closing session waits for the client's close frame while the server stops.
const CLOSE_WAIT_STOPPING: Duration = Duration::from_secs(1);

/// REST routes under `/api`.
pub fn register(r: &mut Routes<Handler>) {
    r.add(Method::PUT, "/cancel/{id}", |c| Box::pin(cancel(c)))
        .add(Method::PUT, "/cancel", |c| Box::pin(cancel(c)))
        .add(Method::PUT, "/cancel/", |c| Box::pin(cancel(c)));
}

/// Websocket routes under `/events`.
pub fn register_ws(r: &mut Routes<Handler>) {
    r.add(Method::GET, "/transfer/import", |c| Box::pin(ws_import(c)))
        .add(Method::GET, "/import", |c| Box::pin(ws_import(c)))
        .add(Method::GET, "/transfer/apps/{id}/start", |c| {
            Box::pin(ws_start(c))
        })
        .add(Method::GET, "/start", |c| Box::pin(ws_start(c)))
        .add(Method::GET, "/transfer/apps/{id}/stop", |c| {
            Box::pin(ws_stop(c))
        })
        .add(Method::GET, "/system/loadimage", |c| {
            Box::pin(ws_load_image(c))
        });
}

/// `PUT /api/cancel/{id}`: 200 cancelled, 400 no id, 404 unknown or already finished.
async fn cancel(c: Call) -> Reply {
    let id = c.param("id").trim();
    if id.is_empty() {
        return Err(Problem::bad_request(
            "no operation id given: use PUT /api/cancel/{id} with the CancelID the websocket sent",
        ));
    }
    c.core
        .tasks
        .cancel(id)
        .map_err(|e| Problem::new(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(http::empty(StatusCode::OK))
}

// ---------------------------------------------------------------------------------------
// Wire types

/// TransferProgress (COMPAT-NOTES section 1).
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "PascalCase")]
struct Step {
    step_type: &'static str,
    success: bool,
    required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    process_line: Option<serde_json::Value>,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<String>,
}

impl Step {
    fn ok(step_type: &'static str, subject: Option<&str>, message: impl Into<String>) -> Self {
        Step {
            step_type,
            success: true,
            required: true,
            subject: subject.map(str::to_string),
            process_result: None,
            process_line: None,
            message: message.into(),
            details: None,
        }
    }

    fn fail(step_type: &'static str, subject: Option<&str>, message: impl Into<String>) -> Self {
        Step {
            success: false,
            ..Step::ok(step_type, subject, message)
        }
    }

    fn details(mut self, d: impl Into<String>) -> Self {
        self.details = Some(d.into());
        self
    }

    fn optional(mut self) -> Self {
        self.required = false;
        self
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NameValue<'a, T> {
    name: &'a str,
    value: T,
}

/// A percentage as the transcripts show it: "0.25", "100".
fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return "100".into();
    }
    let p = (done.min(total) as f64) * 100.0 / (total as f64);
    let s = format!("{p:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

// ---------------------------------------------------------------------------------------
// Upgrade and the socket

/// The upgraded connection, noting when bytes last arrived (to tell a stalled upload).
struct Watched<T> {
    inner: T,
    last_read: Arc<Mutex<Instant>>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            *self.last_read.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Ws = WebSocketStream<Watched<TokioIo<hyper::upgrade::Upgraded>>>;

/// One websocket session's end: sends steps until the client is gone, then ignores them.
struct Peer {
    ws: Ws,
    last_read: Arc<Mutex<Instant>>,
    /// Bytes may stall this long before an upload fails (`http.header_read_timeout_secs`).
    idle: Duration,
    gone: bool,
    /// The server is stopping: waits for the client end as if cancelled, operations in
    /// flight (import, image load) are cancelled and roll back; a start completes.
    stop: CancellationToken,
}

enum Incoming {
    Msg(Message),
    /// The client closed or the connection broke.
    Gone,
    Cancelled,
    /// The server is stopping.
    Stopping,
    /// No bytes arrived for `idle`.
    Stalled,
    /// A protocol violation the client should hear about.
    Invalid(String),
}

impl Peer {
    async fn send<T: Serialize>(&mut self, value: &T) {
        if self.gone {
            return;
        }
        let text = serde_json::to_string(value).unwrap_or_default();
        // A client that stops reading must not hold the operation up forever.
        let sent = tokio::time::timeout(SEND_GUARD, self.ws.send(Message::text(text))).await;
        if !matches!(sent, Ok(Ok(()))) {
            self.gone = true;
        }
    }

    fn idle_for(&self) -> Duration {
        self.last_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// The next data message (pings and pongs are handled by the library).
    async fn next(&mut self, cancel: &CancellationToken) -> Incoming {
        if self.gone {
            return Incoming::Gone;
        }
        let mut tick = tokio::time::interval((self.idle / 4).max(Duration::from_millis(100)));
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return Incoming::Cancelled,
                _ = self.stop.cancelled() => return Incoming::Stopping,
                m = self.ws.next() => m,
                _ = tick.tick() => {
                    if self.idle_for() >= self.idle {
                        return Incoming::Stalled;
                    }
                    continue;
                }
            };
            match msg {
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => {
                    self.gone = true;
                    return Incoming::Gone;
                }
                Some(Ok(m)) => return Incoming::Msg(m),
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                    return Incoming::Invalid(format!(
                        "a websocket message of {size} bytes exceeds the limit of {max_size} bytes per message: send the data in several binary messages"
                    ))
                }
                Some(Err(WsError::Capacity(e))) => return Incoming::Invalid(e.to_string()),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "websocket read failed");
                    self.gone = true;
                    return Incoming::Gone;
                }
            }
        }
    }

    /// A clean close: our close frame, then the client's answer (bounded wait).
    async fn close(mut self, code: CloseCode, reason: &str) {
        if self.gone {
            return;
        }
        let frame = CloseFrame {
            code,
            reason: reason.chars().take(120).collect::<String>().into(),
        };
        if self.ws.close(Some(frame)).await.is_err() {
            return;
        }
        // While the server stops, a client that does not answer must not use up the grace
        // period of everyone else.
        let wait = if self.stop.is_cancelled() {
            self.idle.min(CLOSE_WAIT_STOPPING)
        } else {
            self.idle
        };
        let _ = tokio::time::timeout(wait, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Answers the handshake (101) and runs `session` on the upgraded connection.
fn upgrade<F, Fut>(mut c: Call, session: F) -> Reply
where
    F: FnOnce(Arc<Core>, Peer) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let headers = c.req.headers();
    let has_token = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(UPGRADE, "websocket") || !has_token(CONNECTION, "upgrade") {
        return Err(Problem::new(
            StatusCode::UPGRADE_REQUIRED,
            "this is a websocket endpoint: connect with a websocket client (Upgrade: websocket)",
        ));
    }
    if headers.get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(Problem::bad_request(
            "unsupported websocket version: Sec-WebSocket-Version must be 13",
        ));
    }
    let Some(key) = headers.get(SEC_WEBSOCKET_KEY) else {
        return Err(Problem::bad_request(
            "the Sec-WebSocket-Key header is missing",
        ));
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut c.req);
    let core = c.core.clone();
    let idle = c.limits.header_read_timeout;
    let stop = c.upgrades.stop.clone();
    // Tracked, so that a graceful shutdown waits for (and then ends) the session.
    c.upgrades.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let last_read = Arc::new(Mutex::new(Instant::now()));
        let io = Watched {
            inner: TokioIo::new(upgraded),
            last_read: last_read.clone(),
        };
        // tungstenite zero-fills its whole read buffer (128 KiB by default) on the first
        // read: 16 KiB keeps an idle session small and is plenty per read call.
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER_BYTES)
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let peer = Peer {
            ws,
            last_read,
            idle,
            gone: false,
            stop,
        };
        session(core, peer).await;
    });
    let mut resp = http::empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(resp)
}

async fn announce_task(peer: &mut Peer, task: &TaskHandle) {
    peer.send(&NameValue {
        name: "CancelID",
        value: &task.id,
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Uploads

enum Upload {
    Done,
    Failed(String),
    Cancelled,
    /// The server is stopping.
    Stopping,
    Gone,
}

fn parse_length(text: &str) -> Result<u64, String> {
    let expected = "expected {\"Name\":\"Length\",\"Value\":<size in bytes>} as the first message";
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|_| format!("{expected}, got text that is not JSON"))?;
    let name = v
        .get("Name")
        .or_else(|| v.get("name"))
        .and_then(|n| n.as_str());
    if name != Some("Length") {
        return Err(format!("{expected}, got {}", shorten(text)));
    }
    let value = v.get("Value").or_else(|| v.get("value"));
    value
        .and_then(|n| {
            n.as_u64()
                .or_else(|| n.as_str().and_then(|s| s.trim().parse().ok()))
        })
        .ok_or_else(|| format!("{expected}: Value must be a whole number of bytes"))
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Receives Length and that many bytes into `file`, reporting DATA_TRANSFER steps.
async fn receive_upload(
    peer: &mut Peer,
    cancel: &CancellationToken,
    limit: u64,
    file: &mut tokio::fs::File,
) -> Upload {
    let length = match peer.next(cancel).await {
        Incoming::Msg(Message::Text(t)) => match parse_length(t.as_str()) {
            Ok(n) => n,
            Err(e) => return Upload::Failed(e),
        },
        Incoming::Msg(_) => {
            return Upload::Failed(
                "expected {\"Name\":\"Length\",\"Value\":<size in bytes>} as a text message first, got binary data: send the Length before the data".into(),
            )
        }
        Incoming::Stalled => {
            return Upload::Failed(format!(
                "no {{\"Name\":\"Length\",...}} message arrived within {} s",
                peer.idle.as_secs()
            ))
        }
        Incoming::Invalid(m) => return Upload::Failed(m),
        Incoming::Gone => return Upload::Gone,
        Incoming::Cancelled => return Upload::Cancelled,
        Incoming::Stopping => return Upload::Stopping,
    };
    if length == 0 {
        return Upload::Failed("Length is 0: nothing to upload".into());
    }
    if length > limit {
        return Upload::Failed(format!(
            "the upload of {length} bytes exceeds the limit of {limit} bytes"
        ));
    }
    let mut got: u64 = 0;
    while got < length {
        let data = match peer.next(cancel).await {
            Incoming::Msg(Message::Binary(b)) => b,
            Incoming::Msg(_) => {
                return Upload::Failed(format!(
                    "expected the data as binary messages, got a text message after {got} of {length} bytes"
                ))
            }
            Incoming::Stalled => {
                return Upload::Failed(format!(
                    "only {got} of the {length} bytes announced by Length arrived; nothing more came for {} s",
                    peer.idle.as_secs()
                ))
            }
            Incoming::Invalid(m) => return Upload::Failed(m),
            Incoming::Gone => return Upload::Gone,
            Incoming::Cancelled => return Upload::Cancelled,
            Incoming::Stopping => return Upload::Stopping,
        };
        got += data.len() as u64;
        if got > length {
            return Upload::Failed(format!(
                "received {got} bytes, more than the {length} bytes announced by Length: send exactly Length bytes"
            ));
        }
        if let Err(e) = file.write_all(&data).await {
            return Upload::Failed(format!("cannot store the upload: {e}"));
        }
        peer.send(&Step::ok("DATA_TRANSFER", None, percent(got, length)).details(got.to_string()))
            .await;
    }
    if let Err(e) = file.flush().await {
        return Upload::Failed(format!("cannot store the upload: {e}"));
    }
    Upload::Done
}

/// Sends the step an unfinished upload ends with; true when the session should go on.
async fn upload_outcome(peer: &mut Peer, end: Upload, what: &str) -> Result<(), CloseCode> {
    match end {
        Upload::Done => Ok(()),
        Upload::Failed(m) => {
            peer.send(&Step::fail("DATA_TRANSFER", None, m)).await;
            Err(CloseCode::Policy)
        }
        Upload::Cancelled => {
            peer.send(&Step::fail(
                "CANCEL",
                None,
                format!("the {what} was cancelled during the upload"),
            ))
            .await;
            Err(CloseCode::Normal)
        }
        Upload::Stopping => {
            peer.send(&Step::fail(
                "CANCEL",
                None,
                format!("the server is shutting down; the {what} was not done: try again later"),
            ))
            .await;
            Err(CloseCode::Away)
        }
        Upload::Gone => Err(CloseCode::Away),
    }
}

async fn open_upload(core: &Core) -> Result<(tempfile::NamedTempFile, tokio::fs::File), String> {
    let upload = core.apps.upload_file().map_err(|e| e.to_string())?;
    let file = upload
        .as_file()
        .try_clone()
        .map_err(|e| format!("cannot open the upload file: {e}"))?;
    Ok((upload, tokio::fs::File::from_std(file)))
}

/// An upload session up to its operation: `task` announced, then the upload (of the
/// `what`: "import") received into a temp file. On failure, reported to the peer already,
/// the code and reason to close with.
async fn session_upload(
    core: &Core,
    peer: &mut Peer,
    task: &TaskHandle,
    limit: u64,
    what: &str,
) -> Result<tempfile::NamedTempFile, (CloseCode, String)> {
    announce_task(peer, task).await;
    let (upload, mut file) = match open_upload(core).await {
        Ok(x) => x,
        Err(m) => {
            peer.send(&Step::fail("DATA_TRANSFER", None, m)).await;
            return Err((CloseCode::Error, "server error".into()));
        }
    };
    let end = receive_upload(peer, &task.cancel, limit, &mut file).await;
    drop(file);
    if let Err(code) = upload_outcome(peer, end, what).await {
        return Err((code, format!("{what} failed")));
    }
    Ok(upload)
}

// ---------------------------------------------------------------------------------------
// Import

fn step_name(step: ImportStep) -> (&'static str, &'static str) {
    match step {
        ImportStep::CheckZip => ("CHECK_ZIP", "ZIP Archive"),
        ImportStep::ParseConfig => ("CHECK_CONFIG", "config.yml"),
        ImportStep::ParseCompose => ("CHECK_COMPOSE", "Compose file"),
        ImportStep::CheckDiskSpace => ("CHECK_DISK_SPACE", "Disk space"),
        ImportStep::LoadImages => ("LOAD_IMAGE", "Images"),
        ImportStep::StoreInstance => ("STORE_INSTANCE", "App"),
    }
}

/// Maps the pipeline's progress onto TransferProgress steps (see docs/DECISIONS.md).
fn import_steps(p: ImportProgress, images_announced: &AtomicBool, cancelled: bool) -> Vec<Step> {
    match p {
        ImportProgress::Done {
            step: ImportStep::LoadImages,
            message,
        } => {
            let mut v = Vec::new();
            // A bundle without images has no image steps at all.
            if images_announced.load(Ordering::SeqCst) {
                v.push(Step::ok("LOAD_IMAGE", Some("Images"), message));
            }
            v.push(Step::ok("ANNOUNCEMENT", Some("Import"), "Storing App"));
            v
        }
        ImportProgress::Done { step, message } => {
            let (name, subject) = step_name(step);
            vec![Step::ok(name, Some(subject), message)]
        }
        ImportProgress::Failed { step, message } => {
            let (name, subject) = step_name(step);
            let name = if cancelled { "CANCEL" } else { name };
            vec![Step::fail(name, Some(subject), message)]
        }
        ImportProgress::ImageStarted { file, size } => {
            let mut v = Vec::new();
            if !images_announced.swap(true, Ordering::SeqCst) {
                v.push(Step::ok("ANNOUNCEMENT", Some("Import"), "Loading images"));
            }
            let _ = size;
            v.push(Step::ok("LOAD_IMAGE", Some(&file), "0").details("0"));
            v
        }
        // The last count (all bytes) is followed by ImageLoaded or Failed: skip it.
        ImportProgress::ImageBytes { file, done, size } if done < size => {
            vec![Step::ok("LOAD_IMAGE", Some(&file), percent(done, size)).details(done.to_string())]
        }
        ImportProgress::ImageBytes { .. } => Vec::new(),
        ImportProgress::ImageLoaded { file, references } => {
            vec![Step::ok("LOAD_IMAGE", Some(&file), "100").details(references.join(", "))]
        }
    }
}

async fn ws_import(c: Call) -> Reply {
    let replace = c.bool("replace", false)?;
    let limit = c
        .limits
        .max_upload_bytes
        .min(c.core.apps.max_upload_bytes());
    upgrade(c, move |core, peer| {
        import_session(core, peer, limit, replace)
    })
}

async fn import_session(core: Arc<Core>, mut peer: Peer, limit: u64, replace: bool) {
    let task = core.tasks.start(TaskKind::Import);
    let cancel = task.cancel.clone();
    let upload = match session_upload(&core, &mut peer, &task, limit, "import").await {
        Ok(u) => u,
        Err((code, reason)) => return peer.close(code, &reason).await,
    };
    peer.send(&Step::ok(
        "ANNOUNCEMENT",
        Some("Import"),
        "Checking ZIP Format",
    ))
    .await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Step>();
    let announced = AtomicBool::new(false);
    let cancel2 = cancel.clone();
    let progress = move |p: ImportProgress| {
        for step in import_steps(p, &announced, cancel2.is_cancelled()) {
            let _ = tx.send(step);
        }
    };
    let stop = peer.stop.clone();
    let result = {
        let op = core
            .apps
            .import(upload.path(), ImportOptions { replace }, &cancel, &progress);
        tokio::pin!(op);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled(), if !cancel.is_cancelled() => {
                    tracing::info!(task = %task.id, "server stopping; cancelling the import");
                    cancel.cancel();
                }
                Some(step) = rx.recv() => {
                    peer.send(&step).await;
                    if peer.gone && !cancel.is_cancelled() {
                        tracing::info!(task = %task.id, "import client stopped reading; cancelling");
                        cancel.cancel();
                    }
                }
                r = &mut op => break r,
                gone = client_gone(&mut peer) => if gone {
                    tracing::info!(task = %task.id, "import client went away; cancelling");
                    cancel.cancel();
                },
            }
        }
    };
    drop(progress);
    while let Some(step) = rx.recv().await {
        peer.send(&step).await;
    }
    drop(upload);
    match result {
        Ok(stored) => {
            let id = stored.id().to_string();
            peer.send(
                &Step::ok(
                    "ANNOUNCEMENT",
                    Some("Import"),
                    format!("Successfully imported App Instance {id}"),
                )
                .optional()
                .details(id),
            )
            .await;
            peer.close(CloseCode::Normal, "").await;
        }
        Err(e) => {
            tracing::info!(task = %task.id, error = %e, "websocket import failed");
            peer.close(CloseCode::Normal, "import failed").await;
        }
    }
}

/// Resolves when the client closed or dropped the connection (true); other messages arriving
/// while an operation runs are read and ignored (false). Pending forever once gone.
async fn client_gone(peer: &mut Peer) -> bool {
    if peer.gone {
        return std::future::pending().await;
    }
    match peer.ws.next().await {
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
            peer.gone = true;
            true
        }
        Some(Ok(_)) => false,
    }
}

// ---------------------------------------------------------------------------------------
// Start

async fn ws_start(c: Call) -> Reply {
    let id = if c.params.is_empty() {
        let name = c.query.get("name").unwrap_or("").trim();
        let version = c.query.get("version").unwrap_or("").trim();
        if name.is_empty() || version.is_empty() {
            return Err(Problem::bad_request(
                "query parameters 'name' and 'version' are required",
            ));
        }
        AppId::new(name, version)
    } else {
        let id = c.param("id");
        if id.trim().is_empty() {
            return Err(Problem::bad_request("app id not given"));
        }
        AppId::from(id)
    };
    // An unknown app is an HTTP 404 before the upgrade, like the REST route.
    c.core.apps.get(&id).await?;
    upgrade(c, move |core, peer| start_session(core, peer, id))
}

async fn start_session(core: Arc<Core>, mut peer: Peer, id: AppId) {
    let what = format!("Starting App instance {id}");
    let task = open_app_session(&core, &mut peer, TaskKind::Start, what).await;
    let (on_line, mut rx) = line_channel();
    let result = relay_lines(
        &mut peer,
        &mut rx,
        core.apps.start(&id, &task.cancel, &on_line),
    )
    .await;
    match result {
        Ok(outcome) => {
            let announcement = if outcome.success {
                Step::ok(
                    "ANNOUNCEMENT",
                    None,
                    format!("Successfully started App {id}"),
                )
                .optional()
            } else {
                Step::fail(
                    "ANNOUNCEMENT",
                    None,
                    format!(
                        "Starting App {id} failed: {}",
                        outcome
                            .lines
                            .last()
                            .map(String::as_str)
                            .unwrap_or("see the process result")
                    ),
                )
            };
            peer.send(&announcement).await;
            let mut last = Step::ok(
                "PROCESS_PROGRESS",
                None,
                "Process result of docker-compose up",
            )
            .optional();
            last.success = outcome.success;
            last.process_result = serde_json::to_value(UpResult::of(&outcome)).ok();
            peer.send(&last).await;
        }
        Err(e) => {
            peer.send(&failed_step(e, &format!("Starting App {id}")))
                .await
        }
    }
    drop(task);
    peer.close(CloseCode::Normal, "").await;
}

/// A start or stop session up to its operation: the task, announced, and the ANNOUNCEMENT
/// of what the session does.
async fn open_app_session(
    core: &Core,
    peer: &mut Peer,
    kind: TaskKind,
    what: String,
) -> TaskHandle {
    let task = core.tasks.start(kind);
    announce_task(peer, &task).await;
    peer.send(&Step::ok("ANNOUNCEMENT", None, what)).await;
    task
}

/// Where a start or stop reports its output lines, and where [`relay_lines`] takes them.
fn line_channel() -> (
    impl Fn(&str) + Send + Sync,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let on_line = move |l: &str| {
        let _ = tx.send(l.to_string());
    };
    (on_line, rx)
}

/// The step a start or stop that did not complete ends with (`doing`: "Starting App x").
fn failed_step(e: CoreError, doing: &str) -> Step {
    match e {
        e if e.is(ErrorKind::Cancelled) => Step::fail("CANCEL", None, e.to_string()),
        e => Step::fail("ANNOUNCEMENT", None, format!("{doing} failed: {e}")),
    }
}

// ---------------------------------------------------------------------------------------
// Stop

/// Runs `op` (a start or a stop), sending each output line it reports on `rx` to the peer as
/// a PROCESS_PROGRESS step as it happens. A client going away does not interrupt it: it
/// completes (and frees the app) as its REST form would; only an explicit cancel undoes it.
async fn relay_lines<T>(
    peer: &mut Peer,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    op: impl Future<Output = T>,
) -> T {
    tokio::pin!(op);
    let result = loop {
        tokio::select! {
            biased;
            Some(line) = rx.recv() => peer.send(&line_step(line)).await,
            r = &mut op => break r,
            _ = client_gone(peer) => {},
        }
    };
    // The operation has ended, so every line it reported is queued already.
    while let Ok(line) = rx.try_recv() {
        peer.send(&line_step(line)).await;
    }
    result
}

/// A PROCESS_PROGRESS step (Required false) carrying one output line.
fn line_step(l: String) -> Step {
    let lines = [l];
    let pl = process_lines(&lines);
    let mut s = Step::ok("PROCESS_PROGRESS", None, "").optional();
    s.process_line = pl.first().and_then(|p| serde_json::to_value(p).ok());
    s.message = lines[0].trim_end().to_string();
    s
}

/// `/events/transfer/apps/{id}/stop?remove_images=&remove_volumes=` (as the REST stop).
async fn ws_stop(c: Call) -> Reply {
    let id = c.param("id");
    if id.trim().is_empty() {
        return Err(Problem::bad_request("app id not given"));
    }
    let id = AppId::from(id);
    let options = StopOptions {
        remove_images: c.bool("remove_images", false)?,
        remove_volumes: c.bool("remove_volumes", false)?,
    };
    c.core.apps.get(&id).await?;
    upgrade(c, move |core, peer| stop_session(core, peer, id, options))
}

async fn stop_session(core: Arc<Core>, mut peer: Peer, id: AppId, options: StopOptions) {
    let what = format!("Stopping App instance {id}");
    let task = open_app_session(&core, &mut peer, TaskKind::Stop, what).await;
    let (on_line, mut rx) = line_channel();
    let result = relay_lines(
        &mut peer,
        &mut rx,
        core.apps.stop(&id, options, &task.cancel, &on_line),
    )
    .await;
    match result {
        Ok(outcome) => {
            peer.send(
                &Step::ok(
                    "ANNOUNCEMENT",
                    None,
                    format!("Successfully stopped App {id}"),
                )
                .optional(),
            )
            .await;
            let mut last = Step::ok(
                "PROCESS_PROGRESS",
                None,
                "Process result of docker-compose down",
            )
            .optional();
            last.success = outcome.success;
            last.process_result = serde_json::to_value(process_result(&outcome)).ok();
            peer.send(&last).await;
        }
        Err(e) => {
            peer.send(&failed_step(e, &format!("Stopping App {id}")))
                .await
        }
    }
    drop(task);
    peer.close(CloseCode::Normal, "").await;
}

// ---------------------------------------------------------------------------------------
// Image load

async fn ws_load_image(c: Call) -> Reply {
    let limit = c.limits.max_upload_bytes;
    upgrade(c, move |core, peer| load_image_session(core, peer, limit))
}

async fn load_image_session(core: Arc<Core>, mut peer: Peer, limit: u64) {
    let task = core.tasks.start(TaskKind::LoadImage);
    let cancel = task.cancel.clone();
    let upload = match session_upload(&core, &mut peer, &task, limit, "image load").await {
        Ok(u) => u,
        Err((code, reason)) => return peer.close(code, &reason).await,
    };
    let size = upload.as_file().metadata().map(|m| m.len()).unwrap_or(0);
    peer.send(&Step::ok("ANNOUNCEMENT", Some("Image"), "Loading image"))
        .await;
    peer.send(&Step::ok("LOAD_IMAGE", Some("Image"), "0").details("0"))
        .await;
    let file = match tokio::fs::File::open(upload.path()).await {
        Ok(f) => f,
        Err(e) => {
            peer.send(&Step::fail(
                "LOAD_IMAGE",
                Some("Image"),
                format!("cannot read the upload: {e}"),
            ))
            .await;
            return peer.close(CloseCode::Error, "server error").await;
        }
    };
    let stop = peer.stop.clone();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let stream: ByteStream = Box::pin(
        tokio_util::io::ReaderStream::with_capacity(file, 64 << 10).map(move |chunk| {
            if let Ok(c) = &chunk {
                counter.fetch_add(c.len() as u64, Ordering::Relaxed);
            }
            chunk
        }),
    );
    let result = {
        let op = core.system.load_image(stream);
        tokio::pin!(op);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                r = &mut op => break Some(r),
                // Dropping the load aborts the request: Docker discards the partial image.
                _ = cancel.cancelled() => break None,
                _ = tick.tick() => {
                    let done = sent.load(Ordering::Relaxed);
                    if done > 0 && done < size {
                        peer.send(&Step::ok("LOAD_IMAGE", Some("Image"), percent(done, size))
                            .details(done.to_string())).await;
                    }
                    if peer.gone {
                        cancel.cancel();
                    }
                }
                gone = client_gone(&mut peer) => if gone { cancel.cancel(); },
                _ = stop.cancelled(), if !cancel.is_cancelled() => cancel.cancel(),
            }
        }
    };
    drop(upload);
    match result {
        Some(Ok(loaded)) => {
            let refs = if loaded.references.is_empty() {
                loaded.id.clone()
            } else {
                loaded.references.join(", ")
            };
            peer.send(&Step::ok("LOAD_IMAGE", Some("Image"), "100").details(refs.clone()))
                .await;
            peer.send(
                &Step::ok(
                    "ANNOUNCEMENT",
                    Some("Image"),
                    format!("Successfully loaded image {refs}"),
                )
                .optional()
                .details(loaded.id),
            )
            .await;
        }
        Some(Err(e)) => {
            peer.send(&Step::fail("LOAD_IMAGE", Some("Image"), e.to_string()))
                .await
        }
        None => {
            peer.send(&Step::fail(
                "CANCEL",
                Some("Image"),
                "the image load was cancelled",
            ))
            .await
        }
    }
    drop(task);
    peer.close(CloseCode::Normal, "").await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_read_like_the_transcript() {
        assert_eq!(percent(130966, 51893840), "0.25");
        assert_eq!(percent(51893840, 51893840), "100");
        assert_eq!(percent(1, 2), "50");
        assert_eq!(percent(0, 10), "0");
        assert_eq!(percent(5, 0), "100");
    }

    #[test]
    fn length_message_is_checked() {
        assert_eq!(parse_length(r#"{"Name":"Length","Value":12}"#), Ok(12));
        assert_eq!(parse_length(r#"{"Name":"Length","Value":"12"}"#), Ok(12));
        assert!(parse_length(r#"{"Name":"Size","Value":12}"#).is_err());
        assert!(parse_length(r#"{"Name":"Length","Value":-1}"#).is_err());
        assert!(parse_length("hello").is_err());
    }

    #[test]
    fn steps_serialise_pascal_case_without_empty_fields() {
        let s = Step::ok("DATA_TRANSFER", None, "0.25").details("130966");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"StepType":"DATA_TRANSFER","Success":true,"Required":true,"Message":"0.25","Details":"130966"}"#
        );
    }

    #[test]
    fn import_progress_maps_to_named_steps() {
        let a = AtomicBool::new(false);
        let steps = import_steps(
            ImportProgress::ImageStarted {
                file: "docker/a.tar".into(),
                size: 10,
            },
            &a,
            false,
        );
        assert_eq!(steps[0].step_type, "ANNOUNCEMENT");
        assert_eq!(steps[1].step_type, "LOAD_IMAGE");
        let steps = import_steps(
            ImportProgress::Failed {
                step: ImportStep::LoadImages,
                message: "x".into(),
            },
            &a,
            true,
        );
        assert_eq!(steps[0].step_type, "CANCEL");
        assert!(!steps[0].success && steps[0].required);
    }
}
