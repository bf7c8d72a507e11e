//! Long REST calls (import, start, stop, image load) as the CLI runs them: each is named by
//! a fresh `?cancel_id=`, its server steps come from `GET /api/tasks` while it runs, the
//! bytes sent from the upload body, and Ctrl-C cancels it (`PUT /api/cancel/{id}`) and then
//! waits for the daemon's rollback to answer.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt, TryStreamExt};
use hyper::body::Incoming;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use super::client::{ok, CliError, CliResult, Client};
use super::progress::Progress;
use super::Exit;
use crate::api::http::{self, Body};

/// A running operation as `GET /api/tasks` lists it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Task {
    id: String,
    #[serde(default)]
    progress: Option<f64>,
    #[serde(default)]
    step: String,
}

/// How often the task list is asked while an operation runs.
const POLL: Duration = Duration::from_millis(400);

/// A request body and what the progress shows of it.
pub struct Upload {
    pub body: Body,
    pub content_type: String,
    pub length: u64,
    /// Bytes of the body sent so far.
    pub sent: Arc<AtomicU64>,
}

impl Upload {
    /// `file` as the body, between `head` and `tail` (a multipart envelope, or nothing).
    pub async fn file(
        path: &Path,
        content_type: &str,
        head: Vec<u8>,
        tail: Vec<u8>,
    ) -> CliResult<Self> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| CliError::io(&path.display().to_string(), e))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| CliError::io(&path.display().to_string(), e))?
            .len();
        let length = head.len() as u64 + size + tail.len() as u64;
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let data = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10);
        let body = stream::once(async { Ok(Bytes::from(head)) })
            .chain(data)
            .chain(stream::once(async { Ok(Bytes::from(tail)) }))
            .inspect_ok(move |b| {
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
            });
        Ok(Upload {
            body: http::stream_body(Box::pin(body)),
            content_type: content_type.to_string(),
            length,
            sent,
        })
    }

    /// `file` as the form field `app` of a multipart/form-data body.
    pub async fn multipart(path: &Path, field: &str) -> CliResult<Self> {
        let boundary = format!("gantry-{}", crate::core::tasks::new_id());
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().replace(['"', '\r', '\n'], "_"))
            .unwrap_or_else(|| "upload".into());
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; \
             filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let content_type = format!("multipart/form-data; boundary={boundary}");
        Self::file(path, &content_type, head.into_bytes(), tail.into_bytes()).await
    }
}

/// Runs `method path` as a named operation; the answer on success, else the error.
pub async fn run(
    client: &Client,
    method: Method,
    path: &str,
    upload: Option<Upload>,
    progress: &mut Progress,
) -> CliResult<hyper::Response<Incoming>> {
    let id = crate::core::tasks::new_id();
    let sep = if path.contains('?') { '&' } else { '?' };
    let path = format!("{path}{sep}cancel_id={id}");
    let (body, content, sent) = match upload {
        Some(u) => (u.body, Some((u.content_type, u.length)), Some(u.sent)),
        None => (http::empty_body(), None, None),
    };
    let content = content.as_ref().map(|(t, n)| (t.as_str(), *n));
    let call = client.send(method, &path, body, content);
    let mut call = std::pin::pin!(call);
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut tick = tokio::time::interval(POLL);
    let mut interrupted = false;
    loop {
        tokio::select! {
            r = &mut call => {
                if let Some(s) = &sent {
                    progress.bytes(s.load(Ordering::Relaxed));
                }
                progress.finish();
                return answer(r?, interrupted).await;
            }
            _ = tick.tick() => {
                if let Some(s) = &sent {
                    progress.bytes(s.load(Ordering::Relaxed));
                }
                if let Some(t) = task(client, &id).await {
                    progress.step(&t.step, t.progress);
                }
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                progress.step("cancelling", None);
                cancel(client, &id).await?;
            }
        }
    }
}

async fn answer(
    resp: hyper::Response<Incoming>,
    interrupted: bool,
) -> CliResult<hyper::Response<Incoming>> {
    match ok(resp).await {
        Err(e) if interrupted && e.status == Some(StatusCode::CONFLICT) => Err(CliError::new(
            Exit::Interrupted,
            format!("interrupted: {}", e.message),
        )),
        other => other,
    }
}

/// Our task in the daemon's list, if it is still running.
async fn task(client: &Client, id: &str) -> Option<Task> {
    let tasks: Vec<Task> = client.get_json(&client.api("/tasks")).await.ok()??;
    tasks.into_iter().find(|t| t.id == id)
}

/// Asks the daemon to cancel the operation `id`; one that already ended is no error.
pub async fn cancel(client: &Client, id: &str) -> CliResult<()> {
    match client
        .call(Method::PUT, &client.api(&format!("/cancel/{id}")))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.status == Some(StatusCode::NOT_FOUND) => Ok(()),
        Err(e) => Err(e),
    }
}
