//! The Intervirt agent dialect: one websocket endpoint, `GET /containerManagement`.
//!
//! Each text frame is one request; each request runs as its own task, so requests on one
//! socket overlap, and its replies carry its `uuid` as `refID`. A writer task owns the
//! socket's sending half; replies reach it through a bounded channel. A frame that cannot be
//! understood gets its error reply and nothing else happens: the socket stays open, and other
//! sockets never notice.

mod protocol;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, UPGRADE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::http::{self, Response};
use super::upgrade::Upgrades;
use crate::core::intervirt::{IntervirtAgent, Progress, ProgressSink};
use crate::core::power::PowerAction;
use protocol::{code, CommandKind, Request as Req};

pub const PATH: &str = "/containerManagement";

/// Requests of one socket that may run at once; the socket is not read while all run.
const MAX_IN_FLIGHT: usize = 32;
/// Largest request frame; requests are small JSON objects.
const MAX_MESSAGE: usize = 256 << 10;

/// Answers the upgrade request and hands the socket to a tracked task.
pub fn handle(
    mut req: Request<Incoming>,
    agent: Option<Arc<IntervirtAgent>>,
    upgrades: &Upgrades,
) -> Response {
    let path = req.uri().path();
    if path != PATH && path != "/containerManagement/" {
        return plain(
            StatusCode::NOT_FOUND,
            &format!("no route for {path}; the Intervirt agent serves {PATH}"),
        );
    }
    if req.method() != Method::GET {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET with a websocket upgrade",
        );
    }
    let Some(agent) = agent else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the Intervirt agent is not running",
        );
    };
    let headers = req.headers();
    if !(has_token(headers, CONNECTION, "upgrade") && has_token(headers, UPGRADE, "websocket")) {
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks websocket only",
        );
        r.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    let version_ok = headers
        .get("sec-websocket-version")
        .is_some_and(|v| v.as_bytes() == b"13");
    let accept = match headers.get("sec-websocket-key") {
        Some(key) if version_ok => derive_accept_key(key.as_bytes()),
        _ => {
            return plain(
                StatusCode::BAD_REQUEST,
                "a websocket upgrade needs Sec-WebSocket-Key and Sec-WebSocket-Version: 13",
            )
        }
    };
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return plain(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let stop = upgrades.stop.clone();
    upgrades.spawn(async move {
        let io = match on_upgrade.await {
            Ok(io) => io,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(MAX_MESSAGE);
        config.max_frame_size = Some(MAX_MESSAGE);
        // tungstenite zero-fills its whole read buffer (128 KiB by default) on the first read;
        // the agent's JSON requests are small, so 16 KiB keeps every client's session small.
        config.read_buffer_size = 16 << 10;
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config)).await;
        serve_socket(ws, agent, stop).await;
    });
    let mut r = http::empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = r.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert("sec-websocket-accept", accept);
    r
}

/// Whether a comma-separated header lists `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

fn plain(status: StatusCode, message: &str) -> Response {
    http::json(
        status,
        &serde_json::json!({"type": "General", "refID": "", "code": code::UNSUPPORTED, "error": message}),
    )
}

/// A reply for the writer, with an optional note back once it is on the wire.
struct Outgoing {
    text: String,
    sent: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Replies {
    tx: mpsc::Sender<Outgoing>,
    ref_id: String,
    strict: bool,
}

impl Replies {
    async fn send(&self, text: String) {
        // The writer is gone when the client is: the request still completes.
        let _ = self.tx.send(Outgoing { text, sent: None }).await;
    }

    /// Sends and waits until the writer has flushed it (or failed to).
    async fn send_flushed(&self, text: String) {
        let (done, wait) = oneshot::channel();
        if self
            .tx
            .send(Outgoing {
                text,
                sent: Some(done),
            })
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    async fn result(&self, r: Result<(), crate::core::intervirt::AgentError>) {
        let text = match r {
            Ok(()) => protocol::ok(&self.ref_id),
            Err(e) => protocol::error(&self.ref_id, protocol::error_code(&e), &e.to_string()),
        };
        self.send(text).await;
    }
}

async fn serve_socket(
    ws: Socket,
    agent: Arc<IntervirtAgent>,
    stop: tokio_util::sync::CancellationToken,
) {
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Outgoing>(64);
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            if let Err(e) = sink.send(Message::text(out.text)).await {
                tracing::debug!(error = %e, "websocket send failed");
                break;
            }
            if let Some(done) = out.sent {
                let _ = done.send(());
            }
        }
        let _ = sink.close().await;
    });

    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut requests = JoinSet::new();
    'read: loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            f = stream.next() => f,
        };
        let text = match frame {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket closed with an error");
                break;
            }
            Some(Ok(Message::Text(t))) => t.as_str().to_string(),
            Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => continue,
        };
        let permit = tokio::select! {
            _ = stop.cancelled() => break 'read,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break 'read,
            },
        };
        let (agent, tx) = (agent.clone(), tx.clone());
        requests.spawn(async move {
            handle_frame(&text, agent, tx).await;
            drop(permit);
        });
        while requests.try_join_next().is_some() {}
    }
    // Requests in flight finish (their replies go out while the client still listens); at
    // shutdown the server's grace period bounds this wait.
    while requests.join_next().await.is_some() {}
    drop(tx);
    let _ = writer.await;
}

async fn handle_frame(text: &str, agent: Arc<IntervirtAgent>, tx: mpsc::Sender<Outgoing>) {
    let strict = agent.strict_client();
    let (ref_id, request) = match protocol::parse(text) {
        Ok(x) => x,
        Err(r) => {
            let _ = tx
                .send(Outgoing {
                    text: protocol::error(&r.ref_id, r.code, &r.message),
                    sent: None,
                })
                .await;
            return;
        }
    };
    let out = Replies { tx, ref_id, strict };
    match request {
        Req::AddContainer(a) => {
            let r = match a.into_spec() {
                Ok(spec) => agent.add_container(spec).await,
                Err(e) => Err(e),
            };
            out.result(r).await;
        }
        Req::RemoveContainer(r) => {
            let id = r.id;
            streamed(&out, |sink| async move {
                agent.remove_container(&id, sink).await
            })
            .await;
        }
        Req::StartContainer(r) => out.result(agent.start_container(&r.id).await).await,
        Req::StopContainer(r) => out.result(agent.stop_container(&r.id).await).await,
        Req::IdWithNewIpv4(r) => {
            let res = match protocol::ipv4(&r.addr) {
                Ok(a) => agent.set_ipv4(&r.id, a).await,
                Err(e) => Err(e),
            };
            out.result(res).await;
        }
        Req::IdWithNewIpv6(r) => {
            let res = match protocol::ipv6(&r.addr) {
                Ok(a) => agent.set_ipv6(&r.id, a).await,
                Err(e) => Err(e),
            };
            out.result(res).await;
        }
        Req::Connect(p) => out.result(agent.connect(&p.id1, &p.id2).await).await,
        Req::Disconnect(p) => out.result(agent.disconnect(&p.id1, &p.id2).await).await,
        Req::SetInternetAccess(r) => out.result(agent.set_internet(&r.id, r.enabled).await).await,
        Req::AddPortForwarding(f) => {
            let res = match f.into_forward() {
                Ok(f) => agent.add_forward(f).await,
                Err(e) => Err(e),
            };
            out.result(res).await;
        }
        Req::RemovePortForwarding(f) => {
            let res = match f.parts() {
                Ok((port, proto)) => agent.remove_forward(port, proto).await,
                Err(e) => Err(e),
            };
            out.result(res).await;
        }
        Req::Command(c) => match c.command {
            CommandKind::Version => {
                out.send(protocol::version(&out.ref_id, agent.version()))
                    .await
            }
            CommandKind::Wipe => {
                streamed(&out, |sink| async move { agent.wipe(sink).await }).await;
            }
            CommandKind::Update => {
                streamed(&out, |sink| async move { agent.update(sink).await }).await;
            }
            CommandKind::Shutdown => power(&out, &agent, PowerAction::PowerOff).await,
            CommandKind::Reboot => power(&out, &agent, PowerAction::Reboot).await,
        },
    }
}

/// Runs a long operation, relaying its progress as it goes, then the final reply.
async fn streamed<F, Fut>(out: &Replies, op: F)
where
    F: FnOnce(ProgressSink) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::core::intervirt::AgentError>>,
{
    let (tx, mut rx) = mpsc::channel::<Progress>(16);
    let run = op(ProgressSink::new(tx));
    let relay = async {
        while let Some(p) = rx.recv().await {
            out.send(protocol::progress(
                &out.ref_id,
                p.fraction,
                &p.text,
                out.strict,
            ))
            .await;
        }
    };
    let (result, ()) = tokio::join!(run, relay);
    out.result(result).await;
}

/// Stops the containers, answers, and only then powers off or reboots.
async fn power(out: &Replies, agent: &IntervirtAgent, action: PowerAction) {
    match agent.prepare_power(action).await {
        Ok(order) => {
            out.send_flushed(protocol::ok(&out.ref_id)).await;
            order.execute().await;
        }
        Err(e) => out.result(Err(e)).await,
    }
}
