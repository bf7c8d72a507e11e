//! The duxcore daemon dialect: services over HTTP for a remote core, authenticated by the
//! core key (`X-Duxcore-CoreKey`), every route with and without `/v1`, plus the original's
//! attach and stats websocket (its port 8001) on the same listener at `/ws`.
//!
//! Errors are JSON in the shape of the original's (Rocket's) catcher:
//! `{"error":{"code","reason","description"}}`; a failure of Docker or of the request is 400
//! as there.

mod service;
mod ws;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use super::http::{self, Response};
use super::router::{Lookup, Routes};
use crate::config::HttpLimits;
use crate::core::services::Services;
use crate::core::{Core, CoreError, ErrorKind};
use crate::server::ws::{Refusal, Sessions};
use crate::server::{Cx, Dialect};

/// The header carrying the core key (standard base64 of the key file's bytes).
pub const COREKEY_HEADER: &str = "x-duxcore-corekey";
/// The description of every 401 for a missing, wrong or undecodable core key.
pub const UNAUTHORIZED: &str = "Accessing this daemon requires core authorization.";

pub struct Duxcore;

/// A request as handlers see it: routed, parameters decoded, the core key checked.
pub struct Call {
    pub core: Arc<Core>,
    pub services: Arc<Services>,
    pub req: Request<Incoming>,
    /// The service id of a `/service/{id}...` route ("" on others).
    pub id: String,
    pub limits: HttpLimits,
    pub sessions: Sessions,
    /// The listener's uploads in flight (image imports count).
    pub uploads: crate::server::limits::Uploads,
}

/// An error answer: a status and what went wrong.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl Failure {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<CoreError> for Failure {
    fn from(e: CoreError) -> Self {
        Self {
            status: status_of(e.kind()),
            message: e.to_string(),
        }
    }
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Self {
        Self {
            status: r.status,
            message: r.message,
        }
    }
}

pub type Reply = Result<Response, Failure>;
type Handler = fn(Call) -> Pin<Box<dyn Future<Output = Reply> + Send>>;

/// A route and whether it needs the core key header (websockets check the key in their
/// first message instead).
pub struct Route {
    handler: Handler,
    keyed: bool,
}

/// This dialect's one mapping of error kinds to HTTP statuses. The original answers every
/// failure (Docker's, I/O, a bad request) with 400, and its client relies on no other code.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid
        | ErrorKind::NotFound
        | ErrorKind::Conflict
        | ErrorKind::Busy
        | ErrorKind::Unavailable
        | ErrorKind::Cancelled
        | ErrorKind::Failed => StatusCode::BAD_REQUEST,
    }
}

/// The error body: the original's catcher shape, its keys in its order.
pub fn error(status: StatusCode, message: &str) -> Response {
    #[derive(Serialize)]
    struct Detail<'a> {
        code: u16,
        reason: &'a str,
        description: &'a str,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        error: Detail<'a>,
    }
    let body = Body {
        error: Detail {
            code: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            description: message,
        },
    };
    http::json(status, &body)
}

fn routes() -> &'static Routes<Route> {
    static ROUTES: OnceLock<Routes<Route>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let mut r = Routes::default();
        service::register(&mut r);
        ws::register(&mut r);
        r
    })
}

/// Adds a route that needs the core key header.
fn keyed(r: &mut Routes<Route>, method: Method, pattern: &'static str, handler: Handler) {
    r.add(
        method,
        pattern,
        Route {
            handler,
            keyed: true,
        },
    );
}

/// Adds a websocket route (the key comes in its first message).
fn unkeyed(r: &mut Routes<Route>, method: Method, pattern: &'static str, handler: Handler) {
    r.add(
        method,
        pattern,
        Route {
            handler,
            keyed: false,
        },
    );
}

/// The path without the `/v1` the real client puts before every route.
fn unversioned(path: &str) -> &str {
    match path.strip_prefix("/v1") {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    }
}

#[async_trait]
impl Dialect for Duxcore {
    async fn serve(&self, req: Request<Incoming>, cx: Cx) -> Response {
        let path = req.uri().path().to_string();
        let lookup = routes().find(req.method(), unversioned(&path));
        if let Some(resp) = lookup.unrouted(&path, |status, m| error(status, &m)) {
            return resp;
        }
        let Lookup::Route { handler, params } = lookup else {
            unreachable!("unrouted answers every other lookup")
        };
        let services = match cx.core.services() {
            Ok(s) => s.clone(),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
        let key = req.headers().get(COREKEY_HEADER).map(|v| v.as_bytes());
        if handler.keyed && !services.key().matches(key) {
            return error(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
        }
        let id = params.into_iter().find(|(k, _)| k == "id").map(|(_, v)| v);
        let call = Call {
            core: cx.core,
            services,
            req,
            id: id.unwrap_or_default(),
            limits: cx.limits,
            sessions: cx.sessions,
            uploads: cx.uploads,
        };
        (handler.handler)(call)
            .await
            .unwrap_or_else(|f| error(f.status, &f.message))
    }

    fn error(&self, status: StatusCode, message: &str, _path: &str) -> Response {
        error(status, message)
    }

    /// The core key, as on every keyed route.
    fn admits(&self, req: &Request<Incoming>, cx: &Cx) -> bool {
        let key = req.headers().get(COREKEY_HEADER).map(|v| v.as_bytes());
        cx.core.services().is_ok_and(|s| s.key().matches(key))
    }
}

/// Every route of this dialect (method, pattern), for tests.
#[cfg(test)]
pub fn route_list() -> Vec<(Method, &'static str)> {
    routes().iter().map(|(m, p)| (m.clone(), p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_is_optional() {
        for (path, route) in [
            ("/v1/service", "/service"),
            ("/service", "/service"),
            ("/v1", "/"),
            ("/v1/", "/"),
            ("/v10/service", "/v10/service"),
        ] {
            assert_eq!(unversioned(path), route, "{path}");
        }
    }

    /// The documented routes, and the websocket's: all of them and no others.
    #[test]
    fn the_route_table_is_the_documented_one() {
        let mut list: Vec<String> = route_list()
            .iter()
            .map(|(m, p)| format!("{m} {p}"))
            .collect();
        list.sort();
        let want = [
            "DELETE /service/{id}",
            "GET /",
            "GET /service/{id}",
            "GET /service/{id}/ctl",
            "GET /service/{id}/stats",
            "GET /ws",
            "PATCH /service/{id}/env",
            "POST /docker/image",
            "POST /service",
            "POST /service/{id}/ctl",
        ];
        assert_eq!(list, want);
    }

    #[test]
    fn every_kind_is_a_400_in_the_originals_shape() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::Unavailable,
            ErrorKind::Failed,
        ] {
            assert_eq!(status_of(kind), StatusCode::BAD_REQUEST, "{kind:?}");
        }
        let r = error(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}
