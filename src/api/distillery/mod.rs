//! The Distillery dialect: the interactive websocket of Wisski Distillery's API
//! (`/api/v1/ws`, one call per socket) and its small JSON API (`/api/v1/auth`, `systems`,
//! `news`, also under `/api/v1/http/`), mapped onto app instances of the core. Every client
//! authenticates with one of the listener's named tokens before anything else (the server
//! checks it; see `auth = "tokens"`).

mod json;
mod protocol;
mod session;

use async_trait::async_trait;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use super::http::{self, Response};
use super::router::{Lookup, Routes};
use crate::core::ErrorKind;
use crate::server::ws::{self, Refusal, WsConfig};
use crate::server::{Cx, Dialect, TokenName};

/// Largest frame a client may send: a call or a line of input.
const MAX_MESSAGE: usize = 1 << 20;

pub struct Distillery;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Ws,
    Auth,
    Systems,
    News,
    Snapshots,
}

fn routes() -> &'static Routes<Route> {
    static ROUTES: std::sync::OnceLock<Routes<Route>> = std::sync::OnceLock::new();
    ROUTES.get_or_init(|| {
        let mut r = Routes::default();
        r.add(Method::GET, "/api/v1/ws", Route::Ws)
            .add(Method::GET, "/api/v1/ws/", Route::Ws);
        for (path, route) in [
            ("auth", Route::Auth),
            ("systems", Route::Systems),
            ("news", Route::News),
            ("snapshots", Route::Snapshots),
        ] {
            let plain: &'static str = format!("/api/v1/{path}").leak();
            let http: &'static str = format!("/api/v1/http/{path}").leak();
            r.add(Method::GET, plain, route)
                .add(Method::GET, http, route);
        }
        r
    })
}

#[async_trait]
impl Dialect for Distillery {
    async fn serve(&self, req: Request<Incoming>, cx: Cx) -> Response {
        let path = req.uri().path().to_string();
        let lookup = routes().find(req.method(), &path);
        if let Some(resp) = lookup.unrouted(&path, |status, m| self.error(status, &m, &path)) {
            return resp;
        }
        let Lookup::Route { handler, .. } = lookup else {
            unreachable!("unrouted answers every other lookup")
        };
        let client = req
            .extensions()
            .get::<TokenName>()
            .map(|t| t.0.clone())
            .unwrap_or_default();
        let result = match handler {
            Route::Ws => upgrade(req, cx, client),
            Route::Auth => Ok(json::auth(&client)),
            Route::Systems => json::systems(&cx.core).await,
            Route::News => Ok(json::news(&cx.core)),
            Route::Snapshots => json::snapshots(&cx.core),
        };
        result.unwrap_or_else(|r| self.error(r.status, &r.message, &path))
    }

    fn error(&self, status: StatusCode, message: &str, _path: &str) -> Response {
        #[derive(Serialize)]
        struct Error<'a> {
            success: bool,
            status: u16,
            message: &'a str,
        }
        http::json(
            status,
            &Error {
                success: false,
                status: status.as_u16(),
                message,
            },
        )
    }
}

/// The HTTP status of a core error in the JSON API (the websocket only has messages).
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict | ErrorKind::Busy | ErrorKind::Cancelled => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Upgrades `/api/v1/ws` and runs the call on the session.
fn upgrade(mut req: Request<Incoming>, cx: Cx, client: String) -> Result<Response, Refusal> {
    let config = WsConfig {
        max_message: MAX_MESSAGE,
        idle: None,
    };
    let core = cx.core.clone();
    ws::accept(&mut req, &cx.sessions, config, move |session| {
        session::run(session, core, client)
    })
}
