//! HTTP serving: one accept loop per configured listener, authentication, `/healthz`, and
//! graceful shutdown. Requests are handed to the listener's dialect.

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
use crate::api::upgrade::{ConnectionAbort, Upgrades};
use crate::api::{intervirt, transfer};
use crate::config::{Auth, Dialect, HttpLimits, Listener};
use crate::core::health::EngineStatus;
use crate::core::Core;

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
    dialect: Dialect,
    auth: Auth,
    core: Arc<Core>,
    limits: HttpLimits,
    /// Path prefix of the transfer dialect ("" = none).
    prefix: String,
    /// Websocket connections, tracked past hyper's connection task.
    upgrades: Upgrades,
}

/// Serves one listener until `stop` fires, then lets open requests finish for `grace`, then
/// drops whatever is left.
pub async fn serve(
    bound: Bound,
    core: Arc<Core>,
    limits: HttpLimits,
    stop: CancellationToken,
    grace: Duration,
) {
    let ctx = Arc::new(ListenerCtx {
        dialect: bound.config.dialect,
        auth: bound.config.auth.clone(),
        core,
        limits: limits.clone(),
        prefix: bound.config.prefix.clone(),
        upgrades: Upgrades::new(stop.clone()),
    });
    let mut conns = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    // With port 0 this line is how a caller learns the port (README "Running"): keep its form.
    tracing::info!(dialect = %ctx.dialect, address = %bound.local_addr, "listening");
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = bound.socket.accept() => a,
        };
        while conns.try_join_next().is_some() {}
        let (stream, _peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let abort = CancellationToken::new();
        let conn_abort = ConnectionAbort(abort.clone());
        let svc = service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(conn_abort.clone());
            dispatch(req, ctx.clone())
        });
        let conn = http
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        let stop = stop.clone();
        conns.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            // On shutdown, finish the request in flight, then close instead of keeping alive.
            // An aborted connection (a client that stopped reading an event stream) is
            // dropped, which closes its socket.
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
        });
    }
    drop(bound.socket);
    let deadline = tokio::time::Instant::now() + grace;
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, drain).await.is_err() {
        tracing::warn!(
            open = conns.len(),
            "shutdown grace period over; dropping open connections"
        );
    }
    conns.shutdown().await;
    // Upgraded connections only start from requests, and none are served any more.
    let mut sockets = ctx.upgrades.take();
    let drain = async { while sockets.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, drain).await.is_err() {
        tracing::warn!(
            open = sockets.len(),
            "shutdown grace period over; dropping open websocket connections"
        );
    }
    sockets.shutdown().await;
}

async fn dispatch(req: Request<Incoming>, ctx: Arc<ListenerCtx>) -> Result<Response, Infallible> {
    if req.uri().path() == "/healthz" && matches!(*req.method(), Method::GET | Method::HEAD) {
        return Ok(healthz(&ctx.core.engine_health.current()));
    }
    if let Auth::Token { token } = &ctx.auth {
        if !bearer_matches(&req, token) {
            return Ok(unauthorized(ctx.dialect, req.uri().path()));
        }
    }
    Ok(match ctx.dialect {
        Dialect::Transfer => {
            transfer::handle(
                req,
                ctx.core.clone(),
                ctx.limits.clone(),
                &ctx.upgrades,
                &ctx.prefix,
            )
            .await
        }
        Dialect::Intervirt => intervirt::handle(req, ctx.core.intervirt.clone(), &ctx.upgrades),
    })
}

fn bearer_matches(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.trim().as_bytes().ct_eq(token.as_bytes()).into()
}

fn unauthorized(dialect: Dialect, path: &str) -> Response {
    let mut resp = match dialect {
        Dialect::Transfer => transfer::Problem::new(
            StatusCode::UNAUTHORIZED,
            "this listener requires Authorization: Bearer <token>",
        )
        .render(path),
        Dialect::Intervirt => http::json(
            StatusCode::UNAUTHORIZED,
            &serde_json::json!({"type": "General", "refID": "", "code": 1,
                "error": "this listener requires Authorization: Bearer <token>"}),
        ),
    };
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
