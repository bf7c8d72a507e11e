//! General Interfaces `GET /settings` and `PUT /settings`: key/value settings (the App Pool
//! reuses them), persisted by the core (`core::prefs`).
//!
//! The body is a JSON object of setting name to any JSON value. `PUT` merges (a shallow JSON
//! merge patch): named keys are set, a `null` value removes its key, other keys stay; it
//! answers the settings as stored. `GET` answers the object, `{}` when nothing is set. A body
//! over `http.max_body_bytes` is 413.

use http_body_util::{BodyExt, Limited};
use hyper::{Method, StatusCode};
use serde_json::Value;

use super::{Call, Handler, Problem, Reply};
use crate::api::http::{self, declared_too_large};
use crate::api::router::Routes;

pub fn register(r: &mut Routes<Handler>) {
    r.add(Method::GET, "/settings", |c| Box::pin(get(c)))
        .add(Method::PUT, "/settings", |c| Box::pin(put(c)));
}

async fn get(c: Call) -> Reply {
    Ok(http::json(StatusCode::OK, &c.core.prefs.settings()))
}

fn too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the settings body exceeds the limit of {limit} bytes"),
    )
}

/// An oversize body that is still small enough is read to its end (and dropped) before the
/// 413 goes out: a client that is still writing would otherwise see the connection reset
/// instead of the answer. Anything bigger, or slower than this, is cut off.
const DRAIN_BYTES: usize = 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

async fn drain_then_too_large(body: hyper::body::Incoming, limit: u64) -> Problem {
    let _ = tokio::time::timeout(DRAIN_TIME, Limited::new(body, DRAIN_BYTES).collect()).await;
    too_large(limit)
}

async fn put(c: Call) -> Reply {
    let limit = c.limits.max_body_bytes;
    if declared_too_large(c.req.headers(), limit) {
        if declared_too_large(c.req.headers(), DRAIN_BYTES as u64) {
            return Err(too_large(limit));
        }
        return Err(drain_then_too_large(c.req.into_body(), limit).await);
    }
    let mut body = c.req.into_body();
    let mut buf = Vec::new();
    let stall = c.limits.body_read_timeout;
    while let Some(frame) = tokio::time::timeout(stall, body.frame())
        .await
        .map_err(|_| {
            Problem::bad_request("the request body stalled (http.body_read_timeout_secs)")
        })?
    {
        let frame = frame
            .map_err(|e| Problem::bad_request(format!("cannot read the request body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            buf.extend_from_slice(data);
            if buf.len() as u64 > limit {
                return Err(drain_then_too_large(body, limit).await);
            }
        }
    }
    let body = buf;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(format!("the body must be a JSON object of settings: {e}"))
    })?;
    let Value::Object(changes) = value else {
        return Err(Problem::bad_request(
            "the body must be a JSON object of settings (name to value)",
        ));
    };
    let core = c.core.clone();
    let stored = tokio::task::spawn_blocking(move || core.prefs.merge_settings(changes))
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(http::json(StatusCode::OK, &stored))
}
