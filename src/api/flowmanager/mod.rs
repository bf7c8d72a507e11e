//! The Flow Manager dialect: Socket.IO v5 over Engine.IO v4 (long-polling, websocket and the
//! upgrade between them) at `/socket.io/`, served by socketioxide inside gantry's own HTTP
//! stack: `serve` hands those requests to socketioxide's service. `GET /health` answers on
//! the same port. kawaflow's server answers CORS for any origin; here the server layer's
//! Origin rule and CORS answers apply as on every listener (`allowed_origins = ["*"]` is
//! the original's openness, written out), before this dialect sees a request.
//!
//! The Socket.IO server is built on the listener's first request (it needs the core): from
//! then on the core's Flow Manager events are broadcast to every client, and when the server
//! stops every client is disconnected.

mod events;
mod wire;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};
use socketioxide::extract::{Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::service::SocketIoService;
use socketioxide::{SocketIo, TransportType};
use tokio_util::sync::CancellationToken;

use super::http::{self, Response};
use crate::core::flow::FlowManager as Flow;
use crate::core::Core;
use crate::server::dialect::LiveClients;
use crate::server::{Cx, Dialect};
use events::Ctx;

/// Largest Socket.IO packet a client may send (python-socketio's default buffer, 1 MB).
const MAX_PAYLOAD: u64 = 1_000_000;
/// Packets queued for one client before further ones are dropped for it.
const CLIENT_BUFFER: usize = 4096;

/// The Flow Manager dialect; errors are `{"detail": ...}` JSON, as FastAPI answers.
#[derive(Default)]
pub struct FlowManager {
    stack: OnceLock<Stack>,
}

struct Stack {
    svc: SocketIoService<Unrouted>,
    io: SocketIo,
    clients: Arc<AtomicUsize>,
    max_clients: usize,
}

/// What socketioxide answers for paths outside `/socket.io/` (never asked: `serve` routes).
#[derive(Clone)]
struct Unrouted;

impl Service<Request<Incoming>> for Unrouted {
    type Response = hyper::Response<http_body_util::Empty<bytes::Bytes>>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn call(&self, _: Request<Incoming>) -> Self::Future {
        let mut r = hyper::Response::new(http_body_util::Empty::new());
        *r.status_mut() = StatusCode::NOT_FOUND;
        std::future::ready(Ok(r))
    }
}

impl Stack {
    fn new(core: Arc<Core>, flow: Arc<Flow>, stopping: CancellationToken) -> Self {
        let (svc, io) = SocketIo::builder()
            .max_payload(MAX_PAYLOAD)
            .max_buffer_size(CLIENT_BUFFER)
            .ws_max_message_size(MAX_PAYLOAD as usize)
            .ws_max_frame_size(MAX_PAYLOAD as usize)
            .build_with_inner_svc(Unrouted);
        let clients = Arc::new(AtomicUsize::new(0));
        let ctx = Arc::new(Ctx {
            core,
            flow: flow.clone(),
            io: io.clone(),
        });
        let counted = clients.clone();
        // The handlers are registered by a middleware, which socketioxide runs to the end
        // before it acknowledges the CONNECT; the connect handler itself runs in a task of
        // its own after the acknowledgement, which a fast client's first request can beat.
        let register = move |s: SocketRef| {
            register(ctx.clone(), &counted, &s);
            std::future::ready(Ok::<(), std::convert::Infallible>(()))
        };
        io.ns("/", greet.with(register));
        tokio::spawn(forward_events(flow.clone(), io.clone(), stopping.clone()));
        let closing = io.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            closing.close().await;
        });
        Stack {
            svc,
            io,
            clients,
            max_clients: flow.settings().max_clients,
        }
    }
}

/// One client in the listener's count, for as long as its socket's disconnect handler is
/// alive: until the handler has run, or, when the socket never got connected (its
/// acknowledgement could not be sent), until the socket is dropped.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts the client and registers its handlers; runs before the CONNECT is acknowledged.
fn register(ctx: Arc<Ctx>, clients: &Arc<AtomicUsize>, s: &SocketRef) {
    clients.fetch_add(1, Ordering::SeqCst);
    let counted = Arc::new(Counted(clients.clone()));
    s.on_disconnect(move || {
        let counted = counted.clone();
        async move { drop(counted) }
    });
    s.on_fallback(
        move |s: SocketRef, Event(event), TryData(data): TryData<Value>| {
            let ctx = ctx.clone();
            // Data that is not JSON is answered as missing data.
            events::handle(ctx, s, event, data.unwrap_or(Value::Null))
        },
    );
}

/// The connect handler: the greeting, once the CONNECT is acknowledged.
async fn greet(s: SocketRef) {
    let _ = s.emit(
        "connected",
        &json!({"message": "Connected to flow-manager"}),
    );
}

/// Broadcasts the core's events (and their activity logs) to every client.
async fn forward_events(flow: Arc<Flow>, io: SocketIo, stop: CancellationToken) {
    let mut rx = flow.subscribe();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = rx.recv() => e,
        };
        match event {
            Ok(e) => {
                for (name, payload) in wire::broadcast(&e) {
                    let _ = io.emit(name, &payload).await;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(dropped = n, "flowmanager broadcasts fell behind");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// An Engine.IO handshake: a request without a session id.
fn is_handshake(req: &Request<Incoming>) -> bool {
    http::Query::parse(req.uri().query())
        .get("sid")
        .is_none_or(str::is_empty)
}

fn health(cx: &Cx) -> Response {
    let docker = cx.core.engine_health.current();
    let body = json!({
        "status": if docker.is_reachable() { "healthy" } else { "degraded" },
        "service": "flow-manager",
        "socket_dir": cx.core.flow.as_ref().map(|f| f.settings().socket_dir.display().to_string()),
        "docker": { "reachable": docker.is_reachable() },
        "components": { "container_manager": "active", "socket_handler": "active", "event_handler": "active" },
    });
    http::json(StatusCode::OK, &body)
}

impl FlowManager {
    async fn socket_io(&self, req: Request<Incoming>, cx: &Cx) -> Response {
        let Some(flow) = cx.core.flow.clone() else {
            return self.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the Flow Manager is not running",
                "",
            );
        };
        let stack = self
            .stack
            .get_or_init(|| Stack::new(cx.core.clone(), flow, cx.sessions.stopping().clone()));
        if is_handshake(&req) && stack.clients.load(Ordering::SeqCst) >= stack.max_clients {
            let m = format!(
                "this listener already serves {} clients (flowmanager.max_clients)",
                stack.max_clients
            );
            return self.error(StatusCode::SERVICE_UNAVAILABLE, &m, req.uri().path());
        }
        let resp = match stack.svc.call(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        resp.map(|b| b.map_err(|e| match e {}).boxed_unsync())
    }
}

#[async_trait]
impl Dialect for FlowManager {
    async fn serve(&self, req: Request<Incoming>, cx: Cx) -> Response {
        let path = req.uri().path().to_string();
        if path == "/socket.io" || path.starts_with("/socket.io/") {
            return self.socket_io(req, &cx).await;
        }
        match (req.method(), path.as_str()) {
            (&Method::GET | &Method::HEAD, "/health") => health(&cx),
            (_, "/health") => {
                self.error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed", &path)
            }
            _ => self.error(StatusCode::NOT_FOUND, "Not Found", &path),
        }
    }

    fn error(&self, status: StatusCode, message: &str, _path: &str) -> Response {
        http::json(status, &json!({ "detail": message }))
    }

    fn live_clients(&self) -> Option<LiveClients> {
        let mut clients = LiveClients::default();
        // Before the first request there is no Socket.IO server, and no client.
        for s in self.stack.get().map(|s| s.io.sockets()).unwrap_or_default() {
            match s.transport_type() {
                TransportType::Polling => clients.polling += 1,
                TransportType::Websocket => clients.websocket += 1,
            }
        }
        Some(clients)
    }
}
