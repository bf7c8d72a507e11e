//! Fetching a `bind_contents` archive: a plain HTTP GET (hyper's client, already in the build
//! through bollard) written to a file, with a size cap and one timeout for all of it. https is
//! not supported: gantry carries no TLS stack.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{CONTENT_LENGTH, LOCATION};
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;

use crate::core::apps::bundle::ByteSize;
use crate::core::{CoreError, CoreResult};

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
}

fn refused(url: &str, why: impl std::fmt::Display) -> CoreError {
    CoreError::Invalid(format!("cannot fetch bind_contents {url}: {why}"))
}

/// Downloads `url` into `dest` (created or truncated); returns the bytes written.
pub async fn download(url: &str, dest: &Path, limits: FetchLimits) -> CoreResult<u64> {
    let secs = limits.timeout.as_secs();
    tokio::time::timeout(
        limits.timeout,
        download_unbounded(url, dest, limits.max_bytes),
    )
    .await
    .unwrap_or_else(|_| Err(refused(url, format!("no complete answer within {secs} s"))))
}

fn parse(url: &str) -> CoreResult<Uri> {
    let uri: Uri = url.parse().map_err(|e| refused(url, e))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(uri),
        Some("https") => Err(refused(
            url,
            "https is not supported (gantry has no TLS client): serve the archive over http",
        )),
        _ => Err(refused(url, "not an http:// URL")),
    }
}

/// Where a redirect leads: an absolute URL, or a path on the same server.
fn follow(from: &Uri, location: &str) -> Option<String> {
    if location.starts_with('/') {
        let authority = from.authority()?;
        return Some(format!("http://{authority}{location}"));
    }
    Some(location.to_string())
}

async fn download_unbounded(url: &str, dest: &Path, max: u64) -> CoreResult<u64> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut current = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let uri = parse(&current)?;
        let resp = client
            .get(uri.clone())
            .await
            .map_err(|e| refused(url, error_chain(&e)))?;
        let status = resp.status();
        if status.is_redirection() {
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| follow(&uri, l));
            current = next.ok_or_else(|| refused(url, format!("{status} without a Location")))?;
            continue;
        }
        if status != StatusCode::OK {
            return Err(refused(url, format!("the server answered {status}")));
        }
        let declared = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(too_large(url, max));
        }
        return save(url, resp.into_body(), dest, max).await;
    }
    Err(refused(url, format!("more than {MAX_REDIRECTS} redirects")))
}

fn too_large(url: &str, max: u64) -> CoreError {
    refused(
        url,
        format!(
            "the archive is larger than {} (duxcore.bind_contents_max_bytes)",
            ByteSize(max)
        ),
    )
}

/// hyper's errors say little at the top ("client error (Connect)"): name the causes too.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn save(
    url: &str,
    mut body: hyper::body::Incoming,
    dest: &Path,
    max: u64,
) -> CoreResult<u64> {
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| CoreError::io(format!("cannot create {}", dest.display()), e))?;
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| refused(url, error_chain(&e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        written += data.len() as u64;
        if written > max {
            return Err(too_large(url, max));
        }
        file.write_all(&data)
            .await
            .map_err(|e| CoreError::io(format!("cannot write {}", dest.display()), e))?;
    }
    file.flush()
        .await
        .map_err(|e| CoreError::io(format!("cannot write {}", dest.display()), e))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_are_fetched() {
        assert!(parse("http://127.0.0.1:8080/a.tar.gz").is_ok());
        for bad in [
            "https://x/a",
            "ftp://x/a",
            "/a.tar.gz",
            "http:///a",
            "not a url",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let from: Uri = "http://h:1/a/b".parse().unwrap();
        assert_eq!(follow(&from, "/c").as_deref(), Some("http://h:1/c"));
        assert_eq!(follow(&from, "http://o/d").as_deref(), Some("http://o/d"));
    }
}
