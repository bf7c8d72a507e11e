//! The SCALE it Transfer App dialect: `[prefix]/api[/{version}]/...`, PascalCase JSON and
//! RFC 7807 problem details for errors.

mod apps;
mod files;
mod general;
mod legacy;
mod live;
mod logs;
mod openapi;
#[cfg(feature = "pool")]
mod pool;
mod settings;
mod sse;
mod system;
mod templates;
mod ui;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;

use super::http::{self, Query, Response};
use super::router::{Lookup, Routes};
use crate::config::HttpLimits;
use crate::core::{Core, CoreError, ErrorKind};
use crate::server::ws::{Refusal, Sessions};
use crate::server::{Cx, Dialect};

/// The Transfer dialect: errors are RFC 7807 problem details.
pub struct Transfer;

#[async_trait]
impl Dialect for Transfer {
    async fn serve(&self, req: Request<Incoming>, cx: Cx) -> Response {
        handle(req, cx).await
    }

    fn error(&self, status: StatusCode, message: &str, path: &str) -> Response {
        Problem::new(status, message).render(path)
    }

    fn public(&self, req: &Request<Incoming>, cx: &Cx) -> Option<Response> {
        ui::serve(req, cx)
    }
}

/// A request as handlers see it: already routed, parameters decoded.
pub struct Call {
    pub core: Arc<Core>,
    pub req: Request<Incoming>,
    pub params: Vec<(String, String)>,
    pub query: Query,
    pub limits: HttpLimits,
    /// The listener's path prefix before `/api` ("" = none), for links in answers.
    pub prefix: String,
    /// The listener's websocket sessions, and its stop signal.
    pub sessions: Sessions,
    /// The listener's uploads in flight (capped).
    pub uploads: crate::server::limits::Uploads,
}

impl Call {
    /// A place for one more upload, or 503 naming `http.max_concurrent_uploads`.
    pub fn begin_upload(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Problem> {
        self.uploads
            .begin()
            .map_err(|m| Problem::new(StatusCode::SERVICE_UNAVAILABLE, m))
    }
}

impl Call {
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool, Problem> {
        self.query.bool(name, default).map_err(Problem::bad_request)
    }
}

pub type Reply = Result<Response, Problem>;

/// Registers handlers, a path a line: `route_table!(r; "/x/{id}" => GET get, DELETE remove;)`.
macro_rules! route_table {
    ($r:expr; $($path:literal => $($method:ident $handler:ident),+;)*) => {
        $($($r.add(hyper::Method::$method, $path, |c| Box::pin($handler(c)));)+)*
    };
}
pub(crate) use route_table;
pub type Handler = fn(Call) -> Pin<Box<dyn Future<Output = Reply> + Send>>;

/// An error answer; rendered as `application/problem+json` with the request path as instance.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn render(&self, instance: &str) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            r#type: &'static str,
            title: &'a str,
            status: u16,
            detail: &'a str,
            instance: &'a str,
        }
        let body = Body {
            r#type: "about:blank",
            title: self.status.canonical_reason().unwrap_or("Error"),
            status: self.status.as_u16(),
            detail: &self.detail,
            instance,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        http::with_type(self.status, "application/problem+json", http::full(bytes))
    }
}

/// The Transfer dialect's one mapping of error kinds to HTTP status codes.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid | ErrorKind::Busy => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict | ErrorKind::Cancelled => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Refusal> for Problem {
    fn from(r: Refusal) -> Self {
        Problem::new(r.status, r.message)
    }
}

impl From<CoreError> for Problem {
    fn from(e: CoreError) -> Self {
        Problem::new(status_of(e.kind()), e.to_string())
    }
}

/// API versions this server implements; `/api/1/...` resolves to the highest 1.x.
pub const VERSIONS: &[&str] = &["1.0"];

fn routes() -> &'static Routes<Handler> {
    static ROUTES: OnceLock<Routes<Handler>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let mut r = Routes::default();
        system::register(&mut r);
        apps::register(&mut r);
        live::register(&mut r);
        files::register(&mut r);
        legacy::register(&mut r);
        settings::register(&mut r);
        sse::register(&mut r);
        general::register(&mut r);
        templates::register(&mut r);
        #[cfg(feature = "pool")]
        pool::register(&mut r);
        r
    })
}

/// Websocket routes, under `[prefix]/events` (no `/api`, no version).
fn ws_routes() -> &'static Routes<Handler> {
    static ROUTES: OnceLock<Routes<Handler>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let mut r = Routes::default();
        live::register_ws(&mut r);
        r
    })
}

/// Every REST route of this dialect, for the documentation and coverage tests.
#[cfg(test)]
pub fn route_list() -> Vec<(hyper::Method, &'static str)> {
    routes().iter().map(|(m, p)| (m.clone(), p)).collect()
}

/// A version segment as a client writes it: digits and dots (`1`, `1.0`).
fn looks_like_version(seg: &str) -> bool {
    !seg.is_empty() && seg.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// The highest supported version that `seg` names: `1` is the highest 1.x, `1.0` is 1.0.
fn resolve_version(seg: &str) -> Option<&'static str> {
    let parts: Vec<&str> = seg.split('.').collect();
    VERSIONS
        .iter()
        .copied()
        .filter(|v| {
            let vp: Vec<&str> = v.split('.').collect();
            parts.len() <= vp.len() && parts.iter().zip(&vp).all(|(a, b)| a == b)
        })
        .max_by_key(|v| version_key(v))
}

/// Numeric sort key of a version (`1.10` after `1.9`).
fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

fn unsupported_version(seg: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        format!(
            "API version {seg} is not supported (supported: {}; see GET /api/versions)",
            VERSIONS.join(", ")
        ),
    )
}

/// Strips `/api` and an optional version segment; `Err` names an unsupported version.
fn api_path(path: &str) -> Option<Result<&str, Problem>> {
    let rest = path.strip_prefix("/api")?;
    if !rest.starts_with('/') {
        return None;
    }
    let seg_end = rest[1..].find('/').map_or(rest.len(), |i| i + 1);
    let seg = &rest[1..seg_end];
    if !looks_like_version(seg) {
        return Some(Ok(rest));
    }
    match resolve_version(seg) {
        Some(_) => Some(Ok(&rest[seg_end..])),
        None => Some(Err(unsupported_version(seg))),
    }
}

/// The part of `full` after the listener's prefix, starting with `/`; `None` when the path
/// does not start with the prefix (such paths answer 404).
fn strip_listener_prefix<'a>(full: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(full);
    }
    full.strip_prefix(prefix)
        .filter(|rest| rest.starts_with('/'))
}

async fn handle(req: Request<Incoming>, cx: Cx) -> Response {
    let path = req.uri().path().to_string();
    let prefix = cx.listener.prefix.as_str();
    let Some(local) = strip_listener_prefix(&path, prefix) else {
        return not_found(&path);
    };
    if let Some(rest) = local.strip_prefix("/apidoc/") {
        return general::apidoc(req.method(), rest, prefix, &path);
    }
    let (table, inner) = match local.strip_prefix("/events") {
        Some(rest) if rest.starts_with('/') => (ws_routes(), rest.to_string()),
        // Legacy SSE: exactly `[prefix]/events` is the stream `/api/events` serves.
        Some("") => (routes(), local.to_string()),
        _ => match api_path(local) {
            Some(Ok(p)) => (routes(), p.to_string()),
            Some(Err(problem)) => return problem.render(&path),
            None => return not_found(&path),
        },
    };
    let lookup = table.find(req.method(), &inner);
    if let Some(resp) = lookup.unrouted(&path, |status, m| Problem::new(status, m).render(&path)) {
        return resp;
    }
    let Lookup::Route { handler, params } = lookup else {
        unreachable!("unrouted answers every other lookup")
    };
    let call = Call {
        query: Query::parse(req.uri().query()),
        prefix: prefix.to_string(),
        core: cx.core,
        req,
        params,
        limits: cx.limits,
        sessions: cx.sessions,
        uploads: cx.uploads,
    };
    handler(call).await.unwrap_or_else(|p| p.render(&path))
}

pub fn not_found(path: &str) -> Response {
    Problem::new(StatusCode::NOT_FOUND, format!("no route for {path}")).render(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    #[test]
    fn version_prefixes_resolve() {
        let ok = |p| match api_path(p) {
            Some(Ok(rest)) => Some(rest),
            _ => None,
        };
        assert_eq!(ok("/api/1/system/images"), Some("/system/images"));
        assert_eq!(ok("/api/1.0/system/images"), Some("/system/images"));
        assert_eq!(ok("/api/system/images"), Some("/system/images"));
        assert_eq!(ok("/api/versions"), Some("/versions"));
        assert_eq!(ok("/api/1/versions"), Some("/versions"));
        assert!(matches!(api_path("/api/2/system/images"), Some(Err(_))));
        assert!(matches!(api_path("/api/1.7/system"), Some(Err(_))));
        assert!(matches!(api_path("/api/1.0.0/system"), Some(Err(_))));
        assert!(matches!(api_path("/api/10/system"), Some(Err(_))));
        assert!(api_path("/apix/system").is_none());
        assert!(api_path("/system/images").is_none());
    }

    #[test]
    fn versions_resolve_to_the_highest_match() {
        assert_eq!(resolve_version("1"), Some("1.0"));
        assert_eq!(resolve_version("1.0"), Some("1.0"));
        assert_eq!(resolve_version("1."), None);
        assert_eq!(resolve_version("0"), None);
        assert_eq!(resolve_version("2"), None);
        assert!(version_key("1.10") > version_key("1.9"));
    }

    #[test]
    fn listener_prefix_is_stripped_exactly() {
        assert_eq!(strip_listener_prefix("/api/x", ""), Some("/api/x"));
        assert_eq!(strip_listener_prefix("/s/api/x", "/s"), Some("/api/x"));
        assert_eq!(strip_listener_prefix("/api/x", "/s"), None);
        assert_eq!(strip_listener_prefix("/sx/api/x", "/s"), None);
        assert_eq!(strip_listener_prefix("/s", "/s"), None);
    }

    #[test]
    fn every_system_route_is_registered() {
        let list = route_list();
        for (m, p) in [
            (Method::GET, "/system/images"),
            (Method::POST, "/system/images"),
            (Method::GET, "/system/images/{id}"),
            (Method::GET, "/system/images/{id}/export"),
            (Method::DELETE, "/system/images/{id}"),
            (Method::DELETE, "/system/prune/images"),
            (Method::GET, "/system/containers"),
            (Method::GET, "/system/containers/{id}"),
            (Method::PUT, "/system/containers/{id}/start"),
            (Method::PUT, "/system/containers/{id}/stop"),
            (Method::PUT, "/system/containers/{id}/restart"),
            (Method::DELETE, "/system/containers/{id}"),
            (Method::DELETE, "/system/prune/containers"),
            (Method::GET, "/system/volumes"),
            (Method::GET, "/system/volumes/{name}"),
            (Method::DELETE, "/system/volumes/{name}"),
            (Method::DELETE, "/system/prune/volumes"),
        ] {
            assert!(list.contains(&(m.clone(), p)), "{m} {p} missing");
        }
    }

    #[test]
    fn every_files_legacy_and_settings_route_is_registered() {
        let list = route_list();
        for (m, p) in [
            (Method::GET, "/files"),
            (Method::GET, "/files/{id}"),
            (Method::PUT, "/compose/start"),
            (Method::PUT, "/compose/stop"),
            (Method::GET, "/devicename"),
            (Method::PUT, "/devicename"),
            (Method::GET, "/transfer/recognize"),
            (Method::GET, "/settings"),
            (Method::PUT, "/settings"),
            // v2.2.2's import and app list are the v1 routes, reached version-less.
            (Method::POST, "/transfer/import"),
            (Method::GET, "/transfer/apps"),
        ] {
            assert!(list.contains(&(m.clone(), p)), "{m} {p} missing");
        }
        assert!(matches!(
            api_path("/api/compose/start"),
            Some(Ok("/compose/start"))
        ));
        assert!(matches!(
            api_path("/api/1/devicename"),
            Some(Ok("/devicename"))
        ));
    }
}
