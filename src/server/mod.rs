//! HTTP serving: one accept loop per configured listener, authentication, `/healthz`, the
//! websocket layer, graceful shutdown and the systemd integration. Requests are handed to the
//! listener's [`Dialect`] (see [`dialect`] for the seam).

pub mod conn;
pub mod dialect;
pub mod guard;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod systemd;
pub mod tls;
pub mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::http::{self, Response};
use crate::config::{Auth, HttpLimits, Listener, NamedToken};
use crate::core::health::EngineStatus;
use crate::core::Core;
use conn::ConnectionAbort;
pub use dialect::{Cx, Dialect};
use limits::{ConnTable, Slot, Uploads};
use tls::Tls;
use ws::Sessions;

/// The authenticated status route every listener answers (what `/healthz` does not tell).
pub const STATUS_PATH: &str = "/gantry/status";

/// A listener whose socket is bound, ready to serve.
pub struct Bound {
    pub config: Listener,
    pub local_addr: SocketAddr,
    socket: TcpListener,
    /// Its TLS settings, loaded (reloaded on SIGHUP by [`tls::spawn_reload`]).
    pub tls: Option<Arc<Tls>>,
}

/// Binds every listener (and reads its TLS files) before anything is served, so a bad
/// address or certificate fails start-up as a whole.
pub async fn bind(listeners: &[Listener]) -> Result<Vec<Bound>, String> {
    let mut bound = Vec::with_capacity(listeners.len());
    for l in listeners {
        let tls = match &l.tls {
            Some(files) => Some(
                Tls::load(files)
                    .map_err(|e| format!("TLS of {} ({}): {e}", l.address, l.dialect))?,
            ),
            None => None,
        };
        let socket = TcpListener::bind(l.address)
            .await
            .map_err(|e| format!("cannot listen on {} ({}): {e}", l.address, l.dialect))?;
        let local_addr = socket.local_addr().map_err(|e| e.to_string())?;
        bound.push(Bound {
            config: l.clone(),
            local_addr,
            socket,
            tls,
        });
    }
    Ok(bound)
}

struct ListenerCtx {
    dialect: Arc<dyn Dialect>,
    cx: Cx,
    stats: Arc<metrics::ListenerStats>,
    conns: Arc<ConnTable>,
    tls: Option<Arc<Tls>>,
}

/// What the server knows of one connection.
struct ConnInfo {
    peer: SocketAddr,
    slot: Slot,
    /// The subject of the client's certificate, when it sent one that verified.
    identity: Option<String>,
    tls: bool,
}

/// Serves one listener with `dialect` until `stop` fires, then lets open requests and
/// websocket sessions finish for `grace`, then drops whatever is left.
pub async fn serve(
    bound: Bound,
    dialect: Arc<dyn Dialect>,
    core: Arc<Core>,
    limits: HttpLimits,
    stop: CancellationToken,
    grace: Duration,
) {
    let sessions = Sessions::new(limits.max_websocket_sessions, stop.clone())
        .with_idle_timeout(limits.websocket_idle_timeout);
    let stats = metrics::register(
        bound.config.dialect.name(),
        sessions.clone(),
        Arc::downgrade(&dialect),
    );
    let ctx = Arc::new(ListenerCtx {
        dialect,
        stats,
        cx: Cx {
            core,
            sessions,
            limits: limits.clone(),
            listener: Arc::new(bound.config.clone()),
            uploads: Uploads::new(limits.max_concurrent_uploads),
        },
        conns: ConnTable::new(limits.max_connections),
        tls: bound.tls.clone(),
    });
    // With port 0 this line is how a caller learns the port (README "Running"): keep its form.
    tracing::info!(dialect = %bound.config.dialect, address = %bound.local_addr, tls = bound.tls.is_some(), "listening");
    let mut conns = accept_loop(&bound.socket, &ctx, &limits, &stop).await;
    drop(bound.socket);
    let deadline = tokio::time::Instant::now() + grace;
    drain(&mut conns, deadline, "connections").await;
    // Websocket sessions only start from requests, and none are served any more.
    drain(&mut ctx.cx.sessions.take(), deadline, "websocket sessions").await;
}

/// Accepts connections until `stop` fires; returns the connections still open. At the
/// listener's connection cap the oldest idle connection is closed to make room.
async fn accept_loop(
    socket: &TcpListener,
    ctx: &Arc<ListenerCtx>,
    limits: &HttpLimits,
    stop: &CancellationToken,
) -> JoinSet<()> {
    let mut conns = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = socket.accept() => a,
        };
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                let abort = CancellationToken::new();
                let Some(slot) = ctx.conns.admit(abort.clone()) else {
                    tracing::debug!(%peer, "connection refused: the listener is at its cap");
                    continue;
                };
                let info = ConnInfo {
                    peer,
                    slot,
                    identity: None,
                    tls: ctx.tls.is_some(),
                };
                let task = connection(http.clone(), stream, info, abort, ctx.clone(), stop.clone());
                conns.spawn(task);
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    conns
}

/// One connection: the TLS handshake first when the listener has TLS (bounded by the header
/// read timeout), then HTTP.
async fn connection(
    http: http1::Builder,
    stream: tokio::net::TcpStream,
    mut info: ConnInfo,
    abort: CancellationToken,
    ctx: Arc<ListenerCtx>,
    stop: CancellationToken,
) {
    let Some(tls) = ctx.tls.clone() else {
        return serve_io(&http, TokioIo::new(stream), info, abort, ctx, stop).await;
    };
    let handshake = tokio::time::timeout(
        ctx.cx.limits.header_read_timeout,
        tls.acceptor().accept(stream),
    );
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(peer = %info.peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => return,
        },
        _ = abort.cancelled() => return,
        _ = stop.cancelled() => return,
    };
    info.identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| tls::subject(c));
    serve_io(&http, TokioIo::new(stream), info, abort, ctx, stop).await
}

/// Serves HTTP on one connection. On shutdown the request in flight finishes, then the
/// connection closes instead of staying alive; an aborted connection (shed at the cap, or a
/// client that stopped reading an event stream) is dropped, which closes its socket.
async fn serve_io<I>(
    http: &http1::Builder,
    io: I,
    info: ConnInfo,
    abort: CancellationToken,
    ctx: Arc<ListenerCtx>,
    stop: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn_abort = ConnectionAbort(abort.clone());
    let _open = ctx.stats.connection();
    let info = Arc::new(info);
    let svc = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(conn_abort.clone());
        dispatch(req, ctx.clone(), info.clone())
    });
    let conn = http.serve_connection(io, svc).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        _ = abort.cancelled() => return,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn => r,
                _ = abort.cancelled() => return,
            }
        }
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Waits for `tasks` until `deadline`, then ends what is left.
async fn drain(tasks: &mut JoinSet<()>, deadline: tokio::time::Instant, what: &str) {
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, all).await.is_err() {
        tracing::warn!(
            open = tasks.len(),
            "shutdown grace period over; dropping open {what}"
        );
    }
    tasks.shutdown().await;
}

/// The name of the token a request of a `tokens` listener authenticated with, in the
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenName(pub String);

/// Every request: the connection counts as busy until its response body is done.
async fn dispatch(
    req: Request<Incoming>,
    ctx: Arc<ListenerCtx>,
    info: Arc<ConnInfo>,
) -> Result<Response, Infallible> {
    let busy = info.slot.busy();
    let with_body = has_body(&req);
    let mut resp = close_after_refused_body(with_body, admit(req, &ctx, &info).await);
    let body = std::mem::replace(resp.body_mut(), http::empty_body());
    *resp.body_mut() = limits::guard_body(body, busy);
    Ok(resp)
}

/// Whether the request announces a body (a length above 0, or chunks).
fn has_body(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    h.contains_key(TRANSFER_ENCODING)
        || h.get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// An error may be answered before the request's body was read (a refused key, Origin or
/// Host, an unknown route, a body over its limit). hyper then cannot drain a body still
/// arriving and drops the connection after the answer, so the answer says
/// `Connection: close`: a client that reused the connection would otherwise see it reset
/// under its next request.
fn close_after_refused_body(with_body: bool, mut resp: Response) -> Response {
    let status = resp.status();
    if with_body && (status.is_client_error() || status.is_server_error()) {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn is_healthz<B>(req: &Request<B>) -> bool {
    req.uri().path() == "/healthz" && matches!(*req.method(), Method::GET | Method::HEAD)
}

/// The checks every request passes (peer, Host, Origin, auth), then the server's own routes,
/// then the dialect.
async fn admit(mut req: Request<Incoming>, ctx: &ListenerCtx, info: &ConnInfo) -> Response {
    let path = req.uri().path().to_string();
    let health = is_healthz(&req);
    if info.slot.overload && !health {
        let mut resp = ctx.dialect.error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this listener is at its connection limit (http.max_connections): try again",
            &path,
        );
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let listener = &ctx.cx.listener;
    let cors = match guard::judge(&req, &listener.access, info.tls, info.peer.ip(), health) {
        guard::Verdict::Refuse(why) => {
            tracing::info!(peer = %info.peer, path = %path, reason = %why, "request refused");
            return ctx.dialect.error(StatusCode::FORBIDDEN, &why, &path);
        }
        guard::Verdict::Preflight(allow) => return guard::preflight(&req, allow),
        guard::Verdict::Pass(cors) => cors,
    };
    if health {
        return healthz(&ctx.cx.core.engine_health.current());
    }
    if let Some(resp) = ctx.dialect.public(&req, &ctx.cx) {
        return resp;
    }
    if let Some(refused) = authenticate(&mut req, ctx, info) {
        return refused;
    }
    let readable = matches!(*req.method(), Method::GET | Method::HEAD);
    if path == STATUS_PATH && readable {
        return status(&ctx.cx.core.engine_health.current());
    }
    if path == "/metrics" && readable && listener.metrics {
        return metrics_page(&req, ctx).await;
    }
    if let (Auth::ClientCert, Some(who)) = (&listener.auth, &info.identity) {
        if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
            tracing::info!(client = %who, method = %req.method(), path = %path, "request");
        }
    }
    let mut resp = ctx.dialect.serve(req, ctx.cx.clone()).await;
    guard::allow_origin(&mut resp, cors);
    resp
}

/// `/metrics`, once the listener's auth passed: also behind the dialect's own credentials
/// (the duxcore core key), for a listener whose auth is `none`.
async fn metrics_page(req: &Request<Incoming>, ctx: &ListenerCtx) -> Response {
    if !ctx.dialect.admits(req, &ctx.cx) {
        return ctx.dialect.error(
            StatusCode::UNAUTHORIZED,
            "/metrics needs the credentials this listener's dialect asks of its clients",
            req.uri().path(),
        );
    }
    let text = metrics::render(&ctx.cx.core).await;
    http::with_type(StatusCode::OK, metrics::CONTENT_TYPE, http::full(text))
}

/// The listener's authentication: None when the request may pass (a `tokens` listener's
/// request then carries its [`TokenName`]), else the refusal.
fn authenticate(
    req: &mut Request<Incoming>,
    ctx: &ListenerCtx,
    info: &ConnInfo,
) -> Option<Response> {
    let path = req.uri().path();
    match &ctx.cx.listener.auth {
        Auth::Token { token } if !bearer_matches(req, token) => {
            Some(unauthorized(ctx.dialect.as_ref(), path))
        }
        Auth::Tokens { tokens } => match named_bearer(req, tokens) {
            Some(name) => {
                req.extensions_mut().insert(TokenName(name));
                None
            }
            None => Some(unauthorized(ctx.dialect.as_ref(), path)),
        },
        Auth::ClientCert if info.identity.is_none() => Some(ctx.dialect.error(
            StatusCode::UNAUTHORIZED,
            "this listener requires a client certificate signed by its client_ca_file",
            path,
        )),
        _ => None,
    }
}

fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn bearer_matches(req: &Request<Incoming>, token: &str) -> bool {
    bearer(req).is_some_and(|given| given.as_bytes().ct_eq(token.as_bytes()).into())
}

/// The name of the token the request carries; every token is compared (in constant time
/// each), so the time taken does not tell which one came close.
fn named_bearer(req: &Request<Incoming>, tokens: &[NamedToken]) -> Option<String> {
    let given = bearer(req)?;
    let mut found = None;
    for t in tokens {
        if bool::from(given.as_bytes().ct_eq(t.token.as_bytes())) {
            found = Some(t.name.clone());
        }
    }
    found
}

fn unauthorized(dialect: &dyn Dialect, path: &str) -> Response {
    let mut resp = dialect.error(
        StatusCode::UNAUTHORIZED,
        "this listener requires Authorization: Bearer <token>",
        path,
    );
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// `/healthz`, without auth: only whether gantry serves and Docker answers. Versions and
/// error texts are for the authenticated [`STATUS_PATH`] and the journal.
fn healthz(status: &EngineStatus) -> Response {
    #[derive(Serialize)]
    struct Health {
        status: &'static str,
    }
    let status = if status.is_reachable() {
        "ok"
    } else {
        "degraded"
    };
    http::json(StatusCode::OK, &Health { status })
}

/// [`STATUS_PATH`], behind the listener's auth: gantry's version and Docker's state.
fn status(status: &EngineStatus) -> Response {
    #[derive(Serialize)]
    struct Docker<'a> {
        reachable: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        version: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        api_version: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Health<'a> {
        status: &'static str,
        version: &'static str,
        docker: Docker<'a>,
    }
    let docker = match status {
        EngineStatus::Reachable(v) => Docker {
            reachable: true,
            version: Some(&v.version),
            api_version: Some(&v.api_version),
            error: None,
        },
        EngineStatus::Unreachable(e) => Docker {
            reachable: false,
            version: None,
            api_version: None,
            error: Some(e),
        },
        EngineStatus::Unknown => Docker {
            reachable: false,
            version: None,
            api_version: None,
            error: Some("not probed yet"),
        },
    };
    let body = Health {
        status: if status.is_reachable() {
            "ok"
        } else {
            "degraded"
        },
        version: env!("CARGO_PKG_VERSION"),
        docker,
    };
    http::json(StatusCode::OK, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: StatusCode) -> Response {
        let mut r = Response::new(Default::default());
        *r.status_mut() = status;
        r
    }

    #[test]
    fn an_error_to_a_request_with_a_body_closes_the_connection() {
        let close = |with_body, status| {
            close_after_refused_body(with_body, answer(status))
                .headers()
                .get(CONNECTION)
                .is_some()
        };
        assert!(close(true, StatusCode::UNAUTHORIZED));
        assert!(close(true, StatusCode::FORBIDDEN));
        assert!(close(true, StatusCode::PAYLOAD_TOO_LARGE));
        assert!(close(true, StatusCode::SERVICE_UNAVAILABLE));
        assert!(!close(true, StatusCode::OK));
        assert!(!close(false, StatusCode::UNAUTHORIZED));
    }
}
