//! Fetching a file over HTTP (an app bundle to provision): `GET` with a few redirects
//! followed, the body streamed on as it arrives, its size capped and every wait bounded.
//! Plain `http://` only: this build has no TLS stack.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HOST, LOCATION, USER_AGENT};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use super::apps::stream::UploadSender;
use super::{CoreError, CoreResult};

/// How long connecting and receiving the response headers may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the body may pause.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 5;

/// A response whose body is still to come.
pub struct Download {
    pub url: String,
    /// The announced length, if any.
    pub length: Option<u64>,
    body: Incoming,
}

/// `GET url`: the response of the last redirect, once it answered 200 with a body of at most
/// `max` bytes (as far as it announces its length).
pub async fn get(url: &str, max: u64) -> CoreResult<Download> {
    let mut url = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let uri = http_uri(&url)?;
        let resp = tokio::time::timeout(CONNECT_TIMEOUT, request(&uri))
            .await
            .map_err(|_| {
                CoreError::Failed(format!(
                    "{url} did not answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })??;
        let status = resp.status();
        if status.is_redirection() {
            url = redirect(&uri, &resp)?;
            continue;
        }
        if status != StatusCode::OK {
            return Err(CoreError::Failed(format!("GET {url} answered {status}")));
        }
        let length = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length.is_some_and(|n| n > max) {
            return Err(CoreError::Invalid(format!(
                "{url} is {} bytes, more than the limit of {max}",
                length.unwrap_or_default()
            )));
        }
        return Ok(Download {
            url,
            length,
            body: resp.into_body(),
        });
    }
    Err(CoreError::Failed(format!(
        "{url}: more than {MAX_REDIRECTS} redirects"
    )))
}

/// `url` as an `http://` URI with a host.
fn http_uri(url: &str) -> CoreResult<Uri> {
    let uri: Uri = url
        .parse()
        .map_err(|e| CoreError::Invalid(format!("\"{url}\" is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(uri),
        Some("https") => Err(CoreError::Invalid(format!(
            "{url}: https is not supported by this build of gantry; use http:// or a path \
             on the device"
        ))),
        _ => Err(CoreError::Invalid(format!(
            "\"{url}\" is not an http:// URL"
        ))),
    }
}

/// Where a redirect points: an absolute URL, or a path on the same server.
fn redirect(from: &Uri, resp: &Response<Incoming>) -> CoreResult<String> {
    let location = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| CoreError::Failed(format!("{from} redirects without a Location")))?;
    if location.starts_with('/') {
        let authority = from.authority().map(|a| a.as_str()).unwrap_or_default();
        return Ok(format!("http://{authority}{location}"));
    }
    Ok(location.to_string())
}

async fn request(uri: &Uri) -> CoreResult<Response<Incoming>> {
    let failed = |e: &dyn std::fmt::Display| CoreError::Failed(format!("GET {uri}: {e}"));
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| failed(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| failed(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "download connection ended");
        }
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(path)
        .header(HOST, uri.authority().map(|a| a.as_str()).unwrap_or(host))
        .header(USER_AGENT, concat!("gantry/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed(&e))?;
    sender.send_request(req).await.map_err(|e| failed(&e))
}

impl Download {
    /// Hands the body to `sender` as it arrives and says how it ended: more than `max`
    /// bytes, a pause longer than [`IDLE_TIMEOUT`] or a broken transfer end it as failed.
    /// Stops early when the receiver no longer reads.
    pub async fn pump(mut self, sender: UploadSender, max: u64) {
        let mut total = 0u64;
        let end = loop {
            let frame = match tokio::time::timeout(IDLE_TIMEOUT, self.body.frame()).await {
                Err(_) => {
                    break Err(format!(
                        "{}: no data for {}s",
                        self.url,
                        IDLE_TIMEOUT.as_secs()
                    ))
                }
                Ok(None) => break Ok(()),
                Ok(Some(Err(e))) => break Err(format!("{}: {e}", self.url)),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total += data.len() as u64;
            if total > max {
                break Err(format!(
                    "{} is larger than the limit of {max} bytes",
                    self.url
                ));
            }
            if !sender.send(data).await {
                return;
            }
        };
        sender.finish(end);
    }
}
