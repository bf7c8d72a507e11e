//! The one websocket layer every dialect uses: the handshake, a per-listener session cap,
//! tracking of sessions for graceful shutdown, message size limits, an idle timeout for
//! sessions that wait for data, and a clean close (with 1001 "going away" when the server
//! stops). A dialect checks its own preconditions, calls [`accept`], and runs its protocol on
//! the [`WsSession`] it is handed; a [`Refusal`] is rendered in the dialect's error format.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming as Body;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::api::http::{self, Response};

/// Read buffer of a session (tungstenite's default is 128 KiB, all of it zero-filled on the
/// first read): 16 KiB keeps an idle session small and is plenty per read call.
const READ_BUFFER_BYTES: usize = 16 << 10;

/// How long one message may take to reach a client before the client counts as gone.
const SEND_GUARD: Duration = Duration::from_secs(60);

/// How long a closing session waits for the client's close frame while the server stops.
const CLOSE_WAIT_STOPPING: Duration = Duration::from_secs(1);

/// How long a closing session waits for the client's close frame otherwise.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// `http.websocket_idle_timeout_secs` when not configured otherwise.
const DEFAULT_IDLE: Duration = Duration::from_secs(120);

/// What a dialect asks of a session.
#[derive(Debug, Clone, Copy)]
pub struct WsConfig {
    /// Largest message (and frame) a client may send.
    pub max_message: usize,
    /// How long [`WsReceiver::next`] waits for bytes before it answers [`Incoming::Stalled`];
    /// `None` waits as long as the client keeps the connection.
    pub idle: Option<Duration>,
}

/// Why a websocket request was not upgraded; the dialect renders it in its error format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// The websocket sessions of one listener: at most `cap` at once, each on a task the server
/// waits for (within its grace period) when it stops.
#[derive(Clone)]
pub struct Sessions {
    tasks: Arc<Mutex<JoinSet<()>>>,
    permits: Arc<Semaphore>,
    cap: usize,
    stop: CancellationToken,
    /// How long a session that waits for the client may hear nothing (pings included).
    idle: Duration,
}

impl Sessions {
    pub fn new(cap: usize, stop: CancellationToken) -> Self {
        Self {
            tasks: Arc::new(Mutex::new(JoinSet::new())),
            permits: Arc::new(Semaphore::new(cap)),
            cap,
            stop,
            idle: DEFAULT_IDLE,
        }
    }

    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.cap - self.permits.available_permits()
    }

    /// Sessions whose client sends nothing (not even a pong) for `idle` end.
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle.max(Duration::from_secs(1));
        self
    }

    /// Fires when the server stops: sessions finish their work in flight and close.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stop
    }

    /// A session slot, or the refusal a client hears when every slot is taken.
    fn reserve(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "this listener already serves {} websocket sessions, its limit \
                     (http.max_websocket_sessions): try again when one has ended",
                    self.cap
                ),
            )
        })
    }

    fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Takes the sessions started so far, for the server to wait for and then end.
    pub fn take(&self) -> JoinSet<()> {
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Whether a comma-separated header lists `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `Sec-WebSocket-Accept` answer to a valid upgrade request.
fn check_handshake(headers: &HeaderMap) -> Result<HeaderValue, Refusal> {
    if !has_token(headers, UPGRADE, "websocket") || !has_token(headers, CONNECTION, "upgrade") {
        return Err(Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            "this is a websocket endpoint: connect with a websocket client (Upgrade: websocket)",
        ));
    }
    if headers.get(SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "unsupported websocket version: Sec-WebSocket-Version must be 13",
        ));
    }
    let key = headers.get(SEC_WEBSOCKET_KEY).ok_or_else(|| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "the Sec-WebSocket-Key header is missing",
        )
    })?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key"))
}

/// Answers a websocket handshake: 101, with `session` run on the upgraded connection as a
/// tracked task; or a refusal (not a websocket request, or the listener's cap reached).
pub fn accept<F, Fut>(
    req: &mut Request<Body>,
    sessions: &Sessions,
    config: WsConfig,
    session: F,
) -> Result<Response, Refusal>
where
    F: FnOnce(WsSession) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let accept = check_handshake(req.headers())?;
    let permit = sessions.reserve()?;
    let on_upgrade = hyper::upgrade::on(req);
    let stop = sessions.stop.clone();
    let quiet = sessions.idle;
    sessions.spawn(async move {
        let _slot = permit;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        session(WsSession::open(upgraded, config, quiet, stop).await).await;
    });
    let mut resp = http::empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    Ok(resp)
}

/// The upgraded connection, noting when bytes last arrived (to tell a stalled client).
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

/// What arrived from the client.
#[derive(Debug)]
pub enum Incoming {
    /// A text or binary message (pings and pongs are answered by the layer).
    Msg(Message),
    /// The client closed or the connection broke.
    Gone,
    /// The operation's cancel token fired.
    Cancelled,
    /// The server is stopping.
    Stopping,
    /// No bytes arrived for the session's idle time.
    Stalled,
    /// A protocol violation the client should hear about (a message over the size limit).
    Invalid(String),
}

/// One websocket session: its sending and its receiving half, usable together or apart.
pub struct WsSession {
    pub tx: WsSender,
    pub rx: WsReceiver,
}

type Sink = Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>;

/// The sending half; a client that stops reading counts as gone and hears nothing more.
pub struct WsSender {
    sink: Sink,
    gone: Arc<AtomicBool>,
}

/// The receiving half.
pub struct WsReceiver {
    stream: SplitStream<Ws>,
    last_read: Arc<Mutex<Instant>>,
    idle: Option<Duration>,
    /// Without `idle`: the client is pinged after half of this, and gone after all of it.
    quiet: Duration,
    /// To ping the client.
    sink: Sink,
    gone: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl WsSession {
    async fn open(
        upgraded: hyper::upgrade::Upgraded,
        config: WsConfig,
        quiet: Duration,
        stop: CancellationToken,
    ) -> Self {
        let last_read = Arc::new(Mutex::new(Instant::now()));
        let io = Watched {
            inner: TokioIo::new(upgraded),
            last_read: last_read.clone(),
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(config.max_message))
            .max_frame_size(Some(config.max_message));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
        let (sink, stream) = ws.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let gone = Arc::new(AtomicBool::new(false));
        WsSession {
            tx: WsSender {
                sink: sink.clone(),
                gone: gone.clone(),
            },
            rx: WsReceiver {
                stream,
                last_read,
                idle: config.idle,
                quiet,
                sink,
                gone,
                stop,
            },
        }
    }

    /// Closes a session whose work is done: 1000, or 1001 "going away" while the server
    /// stops.
    pub async fn end(self, reason: &str) {
        if self.rx.stop.is_cancelled() {
            self.close(CloseCode::Away, "the server is shutting down")
                .await
        } else {
            self.close(CloseCode::Normal, reason).await
        }
    }

    /// A clean close: the close frame, then the client's answer (a bounded wait).
    pub async fn close(mut self, code: CloseCode, reason: &str) {
        if !self.tx.close(code, reason).await {
            return;
        }
        let wait = if self.rx.stop.is_cancelled() {
            CLOSE_WAIT_STOPPING
        } else {
            self.rx.idle.unwrap_or(CLOSE_WAIT).min(CLOSE_WAIT)
        };
        let _ = tokio::time::timeout(wait, async {
            while let Some(Ok(_)) = self.rx.stream.next().await {}
        })
        .await;
    }
}

impl WsSender {
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// Sends one message; false (and the client counts as gone) when it cannot be delivered.
    pub async fn send(&mut self, msg: Message) -> bool {
        if self.is_gone() {
            return false;
        }
        let sent =
            tokio::time::timeout(SEND_GUARD, async { self.sink.lock().await.send(msg).await })
                .await;
        if !matches!(sent, Ok(Ok(()))) {
            self.gone.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Sends `value` as a JSON text message.
    pub async fn send_json<T: Serialize + ?Sized>(&mut self, value: &T) -> bool {
        let text = serde_json::to_string(value).unwrap_or_default();
        self.send(Message::text(text)).await
    }

    /// Sends a close frame (the reason cut to what a frame can hold); false when the client
    /// is gone already.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> bool {
        if self.is_gone() {
            return false;
        }
        let frame = CloseFrame {
            code,
            reason: reason.chars().take(120).collect::<String>().into(),
        };
        let closing = async {
            self.sink
                .lock()
                .await
                .send(Message::Close(Some(frame)))
                .await
        };
        let closed = tokio::time::timeout(SEND_GUARD, closing)
            .await
            .is_ok_and(|r| r.is_ok());
        self.gone.store(!closed, Ordering::Relaxed);
        closed
    }
}

impl WsReceiver {
    /// Fires when the server stops.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stop
    }

    /// How long [`WsReceiver::next`] waits for bytes, if it is bounded.
    pub fn idle_limit(&self) -> Option<Duration> {
        self.idle
    }

    fn idle_for(&self) -> Duration {
        self.last_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// The next text or binary message, or why none comes: the client left, `cancelled`
    /// resolved, the server stops, or the client sent nothing for too long (with an idle
    /// time, bytes; without, not even a pong to the ping sent after half the listener's
    /// websocket idle timeout).
    pub async fn next(&mut self, cancelled: impl Future<Output = ()>) -> Incoming {
        if self.gone.load(Ordering::Relaxed) {
            return Incoming::Gone;
        }
        let limit = self.idle.unwrap_or(self.quiet);
        let mut ticker = tokio::time::interval((limit / 4).max(Duration::from_millis(100)));
        let mut pinged = false;
        tokio::pin!(cancelled);
        loop {
            let msg = tokio::select! {
                _ = &mut cancelled => return Incoming::Cancelled,
                _ = self.stop.cancelled() => return Incoming::Stopping,
                m = self.stream.next() => m,
                _ = ticker.tick() => {
                    let quiet_for = self.idle_for();
                    if quiet_for >= limit {
                        return Incoming::Stalled;
                    }
                    if self.idle.is_none() && quiet_for >= limit / 2 && !pinged {
                        pinged = self.ping().await;
                    }
                    continue;
                }
            };
            pinged = false;
            if let Some(incoming) = self.classify(msg) {
                return incoming;
            }
        }
    }

    /// What a read means for the session; None for control frames the layer handles.
    fn classify(&mut self, msg: Option<Result<Message, WsError>>) -> Option<Incoming> {
        match msg {
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
            Some(Ok(Message::Close(_))) | None => Some(self.left()),
            Some(Ok(m)) => Some(Incoming::Msg(m)),
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                Some(Incoming::Invalid(format!(
                    "a websocket message of {size} bytes exceeds the limit of {max_size} bytes \
                     per message: send the data in several messages"
                )))
            }
            Some(Err(WsError::Capacity(e))) => Some(Incoming::Invalid(e.to_string())),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket read failed");
                Some(self.left())
            }
        }
    }

    /// Pings the client (a live one answers with a pong, which counts as activity).
    async fn ping(&self) -> bool {
        let ping = async {
            self.sink
                .lock()
                .await
                .send(Message::Ping(Vec::new().into()))
                .await
        };
        matches!(tokio::time::timeout(SEND_GUARD, ping).await, Ok(Ok(())))
    }

    fn left(&mut self) -> Incoming {
        self.gone.store(true, Ordering::Relaxed);
        Incoming::Gone
    }

    /// Resolves (true) when the client closed or dropped the connection; messages arriving
    /// meanwhile are read and dropped (false). Pending forever once the client is gone, so it
    /// can sit in a `select!` beside an operation.
    pub async fn client_gone(&mut self) -> bool {
        if self.gone.load(Ordering::Relaxed) {
            return std::future::pending().await;
        }
        match self.stream.next().await {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                self.gone.store(true, Ordering::Relaxed);
                true
            }
            Some(Ok(_)) => false,
        }
    }
}
