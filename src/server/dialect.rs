//! The seam a dialect plugs into: one trait, implemented once per dialect in `src/api/`.
//!
//! The server accepts connections, answers `/healthz`, checks the listener's authentication
//! and hands every other request to the listener's [`Dialect`] with a [`Cx`]. The server
//! knows no dialect's paths or JSON: errors it must answer itself (a failed authentication)
//! are rendered by [`Dialect::error`], and websocket sessions go through [`super::ws`].

use std::sync::Arc;

use async_trait::async_trait;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::ws::Sessions;
use crate::api::http::Response;
use crate::config::{HttpLimits, Listener};
use crate::core::Core;

/// What a dialect's handlers get besides the request.
#[derive(Clone)]
pub struct Cx {
    pub core: Arc<Core>,
    pub limits: HttpLimits,
    /// The listener's configuration (address, auth, path prefix).
    pub listener: Arc<Listener>,
    /// The listener's websocket sessions (capped, tracked for shutdown).
    pub sessions: Sessions,
    /// The listener's uploads in flight (capped: `http.max_concurrent_uploads`).
    pub uploads: super::limits::Uploads,
}

/// One API dialect: its routes, its error format and its websocket sessions.
#[async_trait]
pub trait Dialect: Send + Sync + 'static {
    /// Answers a request that passed the listener's authentication.
    async fn serve(&self, req: Request<Incoming>, cx: Cx) -> Response;

    /// An error answer in this dialect's format; `path` is the request's path.
    fn error(&self, status: StatusCode, message: &str, path: &str) -> Response;

    /// Answers a request that needs no authentication (static dashboard assets), before
    /// the listener's auth is checked; `None` for every other request.
    fn public(&self, _req: &Request<Incoming>, _cx: &Cx) -> Option<Response> {
        None
    }

    /// Whether a request that passed the listener's auth also carries the credentials this
    /// dialect asks of its own clients (a key header), for what the server answers itself
    /// beside the dialect's routes (`/metrics`).
    fn admits(&self, _req: &Request<Incoming>, _cx: &Cx) -> bool {
        true
    }

    /// The clients this dialect serves outside the websocket layer (Socket.IO), by
    /// transport, for `/metrics`; None when it has no clients of its own.
    fn live_clients(&self) -> Option<LiveClients> {
        None
    }
}

/// Connected clients of a dialect's own session layer, by transport.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LiveClients {
    /// Clients on HTTP long-polling.
    pub polling: usize,
    /// Clients on a websocket (counted among the websocket sessions too).
    pub websocket: usize,
}
