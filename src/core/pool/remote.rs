//! The pool's client of other gantrys (its servers), over their Transfer API: versions (the
//! health probe), an app's status, start, stop, delete, and the import of a bundle streamed
//! from the pool's storage (multipart, never held in memory). Every call has a bound: short
//! calls `pool.request_timeout_secs`; a transfer fails when no byte moves for
//! `pool.idle_timeout_secs`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::PoolConfig;
use crate::core::apps::AppId;
use crate::core::{CoreError, CoreResult};

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Online { version: String },
    Offline(String),
    Unauthorized,
    Incompatible(String),
}

/// A server to call: its Transfer base URL and token.
pub struct Target<'a> {
    pub url: &'a str,
    pub token: Option<String>,
}

pub struct Remote {
    http: reqwest::Client,
    request_timeout: Duration,
    idle_timeout: Duration,
}

/// The major API version the pool speaks to its servers.
const API: &str = "/api/1";

fn enc(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A failed call: unreachable and timed out are `Unavailable`, as is a server that refuses
/// the token or answers 503; what the server refused keeps its kind.
fn call_error(server: &str, e: reqwest::Error) -> CoreError {
    CoreError::Unavailable(format!("server {server} cannot be reached: {e}"))
}

fn answer_error(server: &str, status: StatusCode, body: &[u8]) -> CoreError {
    let detail = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    let m = format!("server {server} answered {}: {detail}", status.as_u16());
    match status.as_u16() {
        401 | 403 | 502 | 503 | 504 => CoreError::Unavailable(m),
        400 | 413 | 422 => CoreError::Invalid(m),
        404 => CoreError::NotFound(m),
        409 => CoreError::Conflict(m),
        _ => CoreError::Failed(m),
    }
}

impl Remote {
    pub fn new(config: &PoolConfig) -> CoreResult<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .map_err(|e| CoreError::Failed(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            request_timeout: config.request_timeout,
            idle_timeout: config.idle_timeout,
        })
    }

    fn request(&self, t: &Target<'_>, method: Method, path: &str) -> reqwest::RequestBuilder {
        let b = self.http.request(method, format!("{}{API}{path}", t.url));
        match &t.token {
            Some(token) => b.bearer_auth(token),
            None => b,
        }
    }

    /// A short call: status and body, bounded by the request timeout.
    async fn call(
        &self,
        t: &Target<'_>,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> CoreResult<(StatusCode, Bytes)> {
        let send = async {
            let resp = self.request(t, method, path).send().await?;
            let status = resp.status();
            Ok::<_, reqwest::Error>((status, resp.bytes().await?))
        };
        match tokio::time::timeout(timeout, send).await {
            Ok(r) => r.map_err(|e| call_error(t.url, e)),
            Err(_) => Err(CoreError::Unavailable(format!(
                "server {} did not answer {path} within {} s",
                t.url,
                timeout.as_secs()
            ))),
        }
    }

    /// `GET /api/versions`: online when it lists a 1.x version.
    pub async fn probe(&self, t: &Target<'_>) -> Probe {
        let url = format!("{}/api/versions", t.url);
        let mut b = self.http.get(url);
        if let Some(token) = &t.token {
            b = b.bearer_auth(token);
        }
        let got = tokio::time::timeout(self.request_timeout, async {
            let r = b.send().await?;
            let status = r.status();
            Ok::<_, reqwest::Error>((status, r.bytes().await?))
        })
        .await;
        let (status, body) = match got {
            Err(_) => return Probe::Offline("no answer in time".into()),
            Ok(Err(e)) => return Probe::Offline(e.to_string()),
            Ok(Ok(x)) => x,
        };
        match status.as_u16() {
            401 | 403 => Probe::Unauthorized,
            200 => versions_probe(&body),
            s => Probe::Offline(format!("GET /api/versions answered {s}")),
        }
    }

    /// The app's Status on the server ("Running", ...); None when the server has no such app.
    pub async fn app_status(&self, t: &Target<'_>, app: &AppId) -> CoreResult<Option<String>> {
        let path = format!("/transfer/apps/{}", enc(app.as_str()));
        let (status, body) = self
            .call(t, Method::GET, &path, self.request_timeout)
            .await?;
        match status {
            StatusCode::OK => Ok(serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["Status"].as_str().map(str::to_string))
                .or_else(|| Some("Unknown".into()))),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(answer_error(t.url, s, &body)),
        }
    }

    /// `PUT /transfer/apps/{id}/start|stop` (`action`); the server's answer.
    pub async fn act(&self, t: &Target<'_>, app: &AppId, action: &str) -> CoreResult<Value> {
        let path = format!("/transfer/apps/{}/{action}", enc(app.as_str()));
        // Starting and stopping wait for the containers: allow them longer than a listing.
        let (status, body) = self
            .call(t, Method::PUT, &path, self.request_timeout * 5)
            .await?;
        if status != StatusCode::OK {
            return Err(answer_error(t.url, status, &body));
        }
        serde_json::from_slice(&body)
            .map_err(|e| CoreError::Failed(format!("server {} answered no JSON: {e}", t.url)))
    }

    /// `DELETE /transfer/apps/{id}`; an app the server does not have is no error.
    pub async fn delete(&self, t: &Target<'_>, app: &AppId) -> CoreResult<()> {
        let path = format!("/transfer/apps/{}", enc(app.as_str()));
        let (status, body) = self
            .call(t, Method::DELETE, &path, self.request_timeout * 5)
            .await?;
        match status {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            s => Err(answer_error(t.url, s, &body)),
        }
    }

    /// Streams the bundle at `bundle` into the server's `POST /transfer/import`; `sent` counts
    /// the bytes as they go. `Conflict` when the server has the app already.
    pub async fn import(
        &self,
        t: &Target<'_>,
        bundle: &Path,
        sent: Arc<AtomicU64>,
        cancel: &CancellationToken,
    ) -> CoreResult<()> {
        // Not through a symlink, as every file below an app store's directories.
        let cannot =
            |e: std::io::Error| CoreError::io(format!("cannot open {}", bundle.display()), e);
        let (Some(dir), Some(name)) = (bundle.parent(), bundle.file_name()) else {
            return Err(cannot(std::io::ErrorKind::InvalidInput.into()));
        };
        let file = crate::core::safe_fs::open_file(dir, Path::new(name))
            .map(tokio::fs::File::from_std)
            .map_err(|e| cannot(e.into()))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| CoreError::io("cannot read the bundle's size", e))?
            .len();
        let boundary = "gantry-pool-7c1f4b2a9d3e";
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"app\"; filename=\"app.zip\"\r\nContent-Type: application/zip\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let length = head.len() as u64 + size + tail.len() as u64;
        let finished = Arc::new(AtomicBool::new(false));
        let body = multipart_body(head, file, tail, sent.clone(), finished.clone());
        let request = self
            .request(t, Method::POST, "/transfer/import")
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .header("Content-Length", length)
            .body(reqwest::Body::wrap_stream(body))
            .send();
        let (status, bytes) = self.watch(t.url, request, &sent, &finished, cancel).await?;
        if status.is_success() {
            return Ok(());
        }
        Err(answer_error(t.url, status, &bytes))
    }

    /// Runs a transfer, failing it when no byte moved for the idle timeout while sending, or
    /// no answer came within the request timeout after the last byte.
    async fn watch(
        &self,
        server: &str,
        request: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
        sent: &AtomicU64,
        finished: &AtomicBool,
        cancel: &CancellationToken,
    ) -> CoreResult<(StatusCode, Bytes)> {
        let answer = async {
            let r = request.await?;
            let status = r.status();
            Ok::<_, reqwest::Error>((status, r.bytes().await?))
        };
        tokio::pin!(answer);
        let (mut last, mut moved_at) = (sent.load(Ordering::Relaxed), Instant::now());
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                r = &mut answer => return r.map_err(|e| call_error(server, e)),
                _ = cancel.cancelled() => {
                    return Err(CoreError::Cancelled(format!("the transfer to {server} was cancelled")))
                }
                _ = tick.tick() => {}
            }
            let now = sent.load(Ordering::Relaxed);
            if now != last {
                (last, moved_at) = (now, Instant::now());
            }
            let limit = if finished.load(Ordering::Relaxed) {
                self.request_timeout
            } else {
                self.idle_timeout
            };
            if moved_at.elapsed() > limit {
                return Err(CoreError::Unavailable(format!(
                    "the transfer to {server} made no progress for {} s",
                    limit.as_secs()
                )));
            }
        }
    }
}

/// `[{"Version": "1.0", ...}]` must name a 1.x version.
fn versions_probe(body: &[u8]) -> Probe {
    let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(body) else {
        return Probe::Incompatible("GET /api/versions answered no version list".into());
    };
    let versions: Vec<&str> = list.iter().filter_map(|v| v["Version"].as_str()).collect();
    match versions.iter().find(|v| v.split('.').next() == Some("1")) {
        Some(v) => Probe::Online {
            version: v.to_string(),
        },
        None => Probe::Incompatible(format!(
            "the server speaks API versions {versions:?}, the pool needs 1.x"
        )),
    }
}

/// The multipart body: `head`, the file in 64 KiB chunks (counted in `sent`), `tail`.
fn multipart_body(
    head: String,
    file: tokio::fs::File,
    tail: String,
    sent: Arc<AtomicU64>,
    finished: Arc<AtomicBool>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let data = tokio_util::io::ReaderStream::with_capacity(file, 64 << 10).map(move |chunk| {
        if let Ok(c) = &chunk {
            sent.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        chunk
    });
    let end = futures_util::stream::once(async move {
        finished.store(true, Ordering::Relaxed);
        Ok(Bytes::from(tail))
    });
    futures_util::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(data)
        .chain(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_decide_compatibility() {
        let ok = br#"[{"Version":"1.0","BasePath":"/api/1.0","ApiDoc":"x"}]"#;
        assert_eq!(
            versions_probe(ok),
            Probe::Online {
                version: "1.0".into()
            }
        );
        assert!(matches!(
            versions_probe(br#"[{"Version":"2.0"}]"#),
            Probe::Incompatible(_)
        ));
        assert!(matches!(versions_probe(b"<html>"), Probe::Incompatible(_)));
    }

    #[test]
    fn answers_keep_their_kind() {
        use crate::core::ErrorKind;
        let body = br#"{"detail":"bad zip"}"#;
        let e = answer_error("s", StatusCode::BAD_REQUEST, body);
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.to_string().contains("bad zip"));
        for (status, kind) in [
            (401, ErrorKind::Unavailable),
            (503, ErrorKind::Unavailable),
            (409, ErrorKind::Conflict),
            (500, ErrorKind::Failed),
        ] {
            let s = StatusCode::from_u16(status).unwrap();
            assert_eq!(answer_error("s", s, b"").kind(), kind, "{status}");
        }
    }
}
