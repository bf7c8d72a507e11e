//! HTTP serving: one accept loop per configured listener, authentication, `/healthz`, the
//! websocket layer, graceful shutdown and the systemd integration. Requests are handed to the
//! listener's [`Dialect`] (see [`dialect`] for the seam).

pub mod conn;
pub mod dialect;
pub mod memory;
pub mod metrics;
pub mod systemd;
pub mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
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
use ws::Sessions;

/// A listener whose socket is bound, ready to serve.
pub struct Bound {
    pub config: Listener,
    pub local_addr: SocketAddr,
    socket: TcpListener,
}

/// Binds every listener before anything is served, so a bad address fails start-up as a whole.
pub async fn bind(listeners: &[Listener]) -> Result<Vec<Bound>, String> {
    let mut bound = Vec::with_capacity(listeners.len());
    for l in listeners {
        let socket = TcpListener::bind(l.address)
            .await
            .map_err(|e| format!("cannot listen on {} ({}): {e}", l.address, l.dialect))?;
        let local_addr = socket.local_addr().map_err(|e| e.to_string())?;
        bound.push(Bound {
            config: l.clone(),
            local_addr,
            socket,
        });
    }
    Ok(bound)
}

struct ListenerCtx {
    dialect: Arc<dyn Dialect>,
    cx: Cx,
    stats: Arc<metrics::ListenerStats>,
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
    let sessions = Sessions::new(limits.max_websocket_sessions, stop.clone());
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
        },
    });
    // With port 0 this line is how a caller learns the port (README "Running"): keep its form.
    tracing::info!(dialect = %bound.config.dialect, address = %bound.local_addr, "listening");
    let mut conns = accept_loop(&bound.socket, &ctx, &limits, &stop).await;
    drop(bound.socket);
    let deadline = tokio::time::Instant::now() + grace;
    drain(&mut conns, deadline, "connections").await;
    // Websocket sessions only start from requests, and none are served any more.
    drain(&mut ctx.cx.sessions.take(), deadline, "websocket sessions").await;
}

/// Accepts connections until `stop` fires; returns the connections still open.
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
            Ok((stream, _peer)) => {
                conns.spawn(connection(&http, stream, ctx.clone(), stop.clone()));
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

/// Serves one connection. On shutdown the request in flight finishes, then the connection
/// closes instead of staying alive; an aborted connection (a client that stopped reading an
/// event stream) is dropped, which closes its socket.
fn connection(
    http: &http1::Builder,
    stream: tokio::net::TcpStream,
    ctx: Arc<ListenerCtx>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let abort = CancellationToken::new();
    let conn_abort = ConnectionAbort(abort.clone());
    let open = ctx.stats.connection();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(conn_abort.clone());
        dispatch(req, ctx.clone())
    });
    let conn = http
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    async move {
        let _open = open;
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

async fn dispatch(
    mut req: Request<Incoming>,
    ctx: Arc<ListenerCtx>,
) -> Result<Response, Infallible> {
    let readable = matches!(*req.method(), Method::GET | Method::HEAD);
    if req.uri().path() == "/healthz" && readable {
        return Ok(healthz(&ctx.cx.core.engine_health.current()));
    }
    if let Some(resp) = ctx.dialect.public(&req, &ctx.cx) {
        return Ok(resp);
    }
    match &ctx.cx.listener.auth {
        Auth::Token { token } if !bearer_matches(&req, token) => {
            return Ok(unauthorized(ctx.dialect.as_ref(), req.uri().path()));
        }
        Auth::Tokens { tokens } => match named_bearer(&req, tokens) {
            Some(name) => {
                req.extensions_mut().insert(TokenName(name));
            }
            None => return Ok(unauthorized(ctx.dialect.as_ref(), req.uri().path())),
        },
        _ => {}
    }
    if ctx.cx.listener.ui && !same_origin(&req) {
        return Ok(ctx.dialect.error(
            StatusCode::FORBIDDEN,
            "cross-origin requests are refused on a listener that serves the dashboard",
            req.uri().path(),
        ));
    }
    if req.uri().path() == "/metrics" && readable && ctx.cx.listener.metrics {
        if !ctx.dialect.admits(&req, &ctx.cx) {
            return Ok(ctx.dialect.error(
                StatusCode::UNAUTHORIZED,
                "/metrics needs the credentials this listener's dialect asks of its clients",
                req.uri().path(),
            ));
        }
        let text = metrics::render(&ctx.cx.core).await;
        return Ok(http::with_type(
            StatusCode::OK,
            metrics::CONTENT_TYPE,
            http::full(text),
        ));
    }
    Ok(ctx.dialect.serve(req, ctx.cx.clone()).await)
}

/// No `Origin` (not a browser, or a same-origin GET), or one naming the host the request
/// was sent to: a page of another site cannot drive a dashboard listener from the
/// operator's browser.
fn same_origin(req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(hyper::header::ORIGIN) else {
        return true;
    };
    let host = req.headers().get(hyper::header::HOST);
    match (origin.to_str(), host.and_then(|h| h.to_str().ok())) {
        (Ok(o), Some(h)) => o
            .strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
            .is_some_and(|rest| rest.eq_ignore_ascii_case(h)),
        _ => false,
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

fn healthz(status: &EngineStatus) -> Response {
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
