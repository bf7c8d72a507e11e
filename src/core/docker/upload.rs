//! A Docker client for request bodies streamed into dockerd (an image import): each request on
//! a connection of its own to the unix socket, written with vectored writes.
//!
//! bollard's own unix client goes through hyperlocal, whose stream does not tell hyper that it
//! can write vectored; hyper then copies every body chunk into its write buffer before the
//! socket gets it. Over tokio's `UnixStream` hyper queues the chunks and hands them to
//! `writev` as they are: one copy less of every byte uploaded.

use std::path::{Path, PathBuf};

use bollard::errors::Error as BollardError;
use bollard::{BollardRequest, Docker, API_DEFAULT_VERSION};
use hyper::body::Incoming;
use hyper::http::header::{HeaderValue, HOST};
use hyper::http::uri::Uri;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// What bollard puts before a path; only the path and query go out, `Host` names it.
const BASE: &str = "http://localhost";

/// A client for dockerd's socket at `path`; `timeout_secs` bounds each call until the
/// response headers, as for bollard's own clients.
pub(super) fn connect(path: &str, timeout_secs: u64) -> Result<Docker, BollardError> {
    let path = PathBuf::from(path);
    Docker::connect_with_custom_transport(
        move |req: BollardRequest| send(path.clone(), req),
        Some(BASE),
        timeout_secs,
        API_DEFAULT_VERSION,
    )
}

async fn send(path: PathBuf, req: BollardRequest) -> Result<Response<Incoming>, BollardError> {
    let stream = open(&path).await?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .writev(true)
        .handshake(TokioIo::new(stream))
        .await?;
    // The connection ends with the exchange: when the body and the answer are through, or
    // when the body fails (the upload was abandoned), which closes the socket and makes
    // dockerd discard what it got.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upload connection to Docker ended");
        }
    });
    let (mut parts, body) = req.into_parts();
    if let Some(target) = parts.uri.path_and_query().cloned() {
        parts.uri = Uri::from(target);
    }
    parts
        .headers
        .insert(HOST, HeaderValue::from_static("localhost"));
    Ok(sender
        .send_request(Request::from_parts(parts, body))
        .await?)
}

/// The socket's send buffer: what dockerd can read on while gantry waits for the CPU. With
/// the default (208 KiB, `net.core.wmem_max`), dockerd, which takes an import's bytes at
/// about 250 KiB a millisecond, runs dry whenever gantry is not scheduled for a moment.
/// Kernel memory, taken only as far as dockerd lags behind.
const SEND_BUFFER: usize = 4 << 20;

async fn open(path: &Path) -> Result<tokio::net::UnixStream, BollardError> {
    use nix::sys::socket::{setsockopt, sockopt};
    let stream = tokio::net::UnixStream::connect(path).await?;
    // Past `wmem_max` only with CAP_NET_ADMIN (gantry runs as root); else as far as allowed.
    if let Err(e) = setsockopt(&stream, sockopt::SndBufForce, &SEND_BUFFER) {
        tracing::debug!(error = %e, "no larger send buffer for the upload to Docker");
        let _ = setsockopt(&stream, sockopt::SndBuf, &SEND_BUFFER);
    }
    Ok(stream)
}
