//! The Intervirt agent dialect: one websocket endpoint, `GET /containerManagement`.
//!
//! Each text frame is one request; each request runs as its own task, so requests on one
//! socket overlap, and its replies carry its `uuid` as `refID`. A writer task owns the
//! socket's sending half; replies reach it through a bounded channel. A frame that cannot be
//! understood gets its error reply and nothing else happens: the socket stays open, and other
//! sockets never notice.

mod protocol;

#[cfg(test)]
pub use protocol::code_of;

use std::sync::Arc;

use async_trait::async_trait;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::http::{self, Response};
use super::router::{Lookup, Routes};
use crate::core::intervirt::{IntervirtAgent, Progress, ProgressSink};
use crate::core::power::PowerAction;
use crate::server::ws::{self, Incoming as WsIncoming, Refusal, WsConfig, WsReceiver, WsSession};
use crate::server::{Cx, Dialect};
use protocol::{code, CommandKind, Request as Req};

pub const PATH: &str = "/containerManagement";

/// Requests of one socket that may run at once; the socket is not read while all run.
const MAX_IN_FLIGHT: usize = 32;
/// Largest request frame; requests are small JSON objects.
const MAX_MESSAGE: usize = 256 << 10;

/// The Intervirt dialect: errors are General replies (`type`, `refID`, `code`, `error`).
pub struct Intervirt;

type Handler = fn(Request<Incoming>, Cx) -> Result<Response, Refusal>;

fn routes() -> &'static Routes<Handler> {
    static ROUTES: std::sync::OnceLock<Routes<Handler>> = std::sync::OnceLock::new();
    ROUTES.get_or_init(|| {
        let mut r = Routes::default();
        let upgrade: Handler = container_management;
        r.add(Method::GET, PATH, upgrade)
            .add(Method::GET, "/containerManagement/", upgrade);
        r
    })
}

#[async_trait]
impl Dialect for Intervirt {
    async fn serve(&self, req: Request<Incoming>, cx: Cx) -> Response {
        let path = req.uri().path().to_string();
        let lookup = routes().find(req.method(), &path);
        if let Some(resp) = lookup.unrouted(&path, |status, m| {
            self.error(
                status,
                &format!("{m}; the Intervirt agent serves GET {PATH}"),
                &path,
            )
        }) {
            return resp;
        }
        let Lookup::Route { handler, .. } = lookup else {
            unreachable!("unrouted answers every other lookup")
        };
        handler(req, cx).unwrap_or_else(|r| self.error(r.status, &r.message, &path))
    }

    fn error(&self, status: StatusCode, message: &str, _path: &str) -> Response {
        let code = match status {
            StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::UPGRADE_REQUIRED => code::UNSUPPORTED,
            StatusCode::BAD_REQUEST => code::INVALID,
            _ => code::GENERAL,
        };
        http::json(status, &protocol::error_value("", code, message))
    }
}

/// Answers the upgrade request and hands the socket to a tracked session.
fn container_management(mut req: Request<Incoming>, cx: Cx) -> Result<Response, Refusal> {
    let Some(agent) = cx.core.intervirt.clone() else {
        return Err(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the Intervirt agent is not running".into(),
        });
    };
    let config = WsConfig {
        max_message: MAX_MESSAGE,
        idle: None,
    };
    ws::accept(&mut req, &cx.sessions, config, move |session| {
        serve_socket(session, agent)
    })
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

async fn serve_socket(session: WsSession, agent: Arc<IntervirtAgent>) {
    let WsSession { mut tx, rx } = session;
    let (out, mut replies) = mpsc::channel::<Outgoing>(64);
    let writer = tokio::spawn(async move {
        while let Some(reply) = replies.recv().await {
            if !tx.send(Message::text(reply.text)).await {
                break;
            }
            if let Some(done) = reply.sent {
                let _ = done.send(());
            }
        }
        tx
    });
    let (rx, close) = read_requests(rx, agent, out).await;
    // Every sender is gone now, so the writer has sent every reply and returned.
    if let Ok(tx) = writer.await {
        WsSession { tx, rx }.close(close.0, close.1).await;
    }
}

/// Reads request frames and runs each as a task until the client leaves or the server stops;
/// waits for the requests in flight (their replies go out while the client still listens; at
/// shutdown the server's grace period bounds this). Returns the close code and reason.
async fn read_requests(
    mut rx: WsReceiver,
    agent: Arc<IntervirtAgent>,
    out: mpsc::Sender<Outgoing>,
) -> (WsReceiver, (CloseCode, &'static str)) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut requests = JoinSet::new();
    let close = loop {
        let text = match rx.next(std::future::pending()).await {
            WsIncoming::Msg(Message::Text(t)) => t.as_str().to_string(),
            WsIncoming::Msg(Message::Binary(b)) => String::from_utf8_lossy(&b).into_owned(),
            WsIncoming::Msg(_) => continue,
            WsIncoming::Invalid(m) => {
                send(&out, protocol::error("", code::INVALID, &m)).await;
                break (CloseCode::Size, "message too big");
            }
            WsIncoming::Stopping => break (CloseCode::Away, "the agent is shutting down"),
            WsIncoming::Gone | WsIncoming::Cancelled | WsIncoming::Stalled => {
                break (CloseCode::Normal, "")
            }
        };
        let permit = tokio::select! {
            _ = rx.stopping().cancelled() => break (CloseCode::Away, "the agent is shutting down"),
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (agent, out) = (agent.clone(), out.clone());
        requests.spawn(async move {
            handle_frame(&text, agent, out).await;
            drop(permit);
        });
        while requests.try_join_next().is_some() {}
    };
    while requests.join_next().await.is_some() {}
    (rx, close)
}

async fn send(out: &mpsc::Sender<Outgoing>, text: String) {
    let _ = out.send(Outgoing { text, sent: None }).await;
}

async fn handle_frame(text: &str, agent: Arc<IntervirtAgent>, tx: mpsc::Sender<Outgoing>) {
    let strict = agent.strict_client();
    let (ref_id, request) = match protocol::parse(text) {
        Ok(x) => x,
        Err(r) => return send(&tx, protocol::error(&r.ref_id, r.code, &r.message)).await,
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
        // The real client reads only the first reply of a RemoveContainer: for it (strict),
        // that one reply is the final result, without progress before it.
        Req::RemoveContainer(r) if out.strict => {
            let r = agent.remove_container(&r.id, ProgressSink::default()).await;
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
