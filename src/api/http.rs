//! HTTP plumbing shared by the dialects: body types, response builders, query parsing and
//! size-limited request bodies.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{HeaderMap, StatusCode};
use serde::Serialize;

use crate::core::engine::ByteStream;

pub type Body = UnsyncBoxBody<Bytes, io::Error>;
pub type Response = hyper::Response<Body>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub fn empty_body() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

pub fn stream_body(stream: ByteStream) -> Body {
    StreamBody::new(stream.map_ok(Frame::data)).boxed_unsync()
}

pub fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(empty_body());
    *r.status_mut() = status;
    r
}

pub fn with_type(status: StatusCode, content_type: &'static str, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A 200 download of `stream` that clients save as `{name}.{extension}`, with every character
/// of `name` but ASCII letters, digits, `.` and `-` replaced by `_`.
pub fn attachment(
    content_type: &'static str,
    stream: ByteStream,
    name: &str,
    extension: &str,
) -> Response {
    let mut resp = with_type(StatusCode::OK, content_type, stream_body(stream));
    let file: String = name
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '.' || ch == '-' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}.{extension}\"")) {
        resp.headers_mut().insert(CONTENT_DISPOSITION, v);
    }
    resp
}

pub fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_type(status, "application/json", full(bytes)),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise a response");
            empty(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// A JSON list, as bytes to keep (e.g. in the live view's memo): empty for an empty list.
pub fn json_list<T: Serialize>(items: &[T]) -> Bytes {
    if items.is_empty() {
        return Bytes::new();
    }
    match serde_json::to_vec(items) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialise a response");
            Bytes::new()
        }
    }
}

/// 200 with a JSON list made by [`json_list`], or 204 for an empty one (the Transfer
/// dialect's rule for collections).
pub fn list_response(body: Bytes) -> Response {
    if body.is_empty() {
        empty(StatusCode::NO_CONTENT)
    } else {
        with_type(StatusCode::OK, "application/json", full(body))
    }
}

/// Decoded query parameters of a request.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter: `true`/`false`/`1`/`0` (a bare `?force` means true).
    pub fn bool(&self, name: &str, default: bool) -> Result<bool, String> {
        match self.get(name) {
            None => Ok(default),
            Some("true" | "1" | "") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(other) => Err(format!(
                "query parameter '{name}' must be true or false, not \"{other}\""
            )),
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
}

/// The declared Content-Length, when it already exceeds `limit`.
pub fn declared_too_large(headers: &HeaderMap, limit: u64) -> bool {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit)
}

/// Turns a request body into a byte stream that fails once more than `limit` bytes arrived,
/// or when nothing arrived for `stall`. The flag tells the handler afterwards that the
/// failure was the size limit.
pub fn upload_stream(
    body: Incoming,
    limit: u64,
    stall: std::time::Duration,
) -> (ByteStream, Arc<AtomicBool>) {
    let exceeded = Arc::new(AtomicBool::new(false));
    let flag = exceeded.clone();
    let mut seen: u64 = 0;
    let stream = crate::server::limits::timed_body(body, stall).map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if seen > limit {
            flag.store(true, Ordering::SeqCst);
            return Err(io::Error::other(BodyError::TooLarge(limit)));
        }
        Ok(chunk)
    });
    (Box::pin(stream), exceeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_booleans() {
        let q = Query::parse(Some("force=true&all=0&bare&bad=maybe&x=%2F"));
        assert_eq!(q.bool("force", false), Ok(true));
        assert_eq!(q.bool("all", true), Ok(false));
        assert_eq!(q.bool("bare", false), Ok(true));
        assert_eq!(q.bool("missing", true), Ok(true));
        assert!(q.bool("bad", false).unwrap_err().contains("'bad'"));
        assert_eq!(q.get("x"), Some("/"));
    }
}
