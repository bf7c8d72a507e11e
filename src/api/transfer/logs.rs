//! An app's logs as a ProcessResult (`GET /transfer/apps/{id}/logs`), written as the lines
//! arrive from Docker: memory stays at a few chunks whatever the logs' size. `Lines` comes
//! first; `RawOutput` (the same lines again) is spooled to a temp file meanwhile and sent
//! from it; `DurationMs` comes last.

use std::io::{Read, Seek, Write};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::StatusCode;
use serde::Serialize;

use crate::api::http::{self, Response};
use crate::core::apps::lifecycle::LogLines;

/// Lines per container when the request names no `lines`.
pub const DEFAULT_LINES: u64 = 1000;

/// Bytes per chunk of the response.
const CHUNK: usize = 64 << 10;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Line<'a> {
    line: &'a str,
    raw_line: &'a str,
    is_stdout: bool,
    is_stderr: bool,
}

type Tx = tokio::sync::mpsc::Sender<std::io::Result<Bytes>>;

/// The streamed answer; a failure after the first byte breaks the transfer (the client sees
/// a cut response, never a short valid-looking one).
pub fn process_result(log: LogLines, started: Instant) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        if let Err(e) = write_result(log, started, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    http::with_type(
        StatusCode::OK,
        "application/json",
        http::stream_body(Box::pin(stream)),
    )
}

async fn send(tx: &Tx, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let chunk = Bytes::from(std::mem::take(buf));
    tx.send(Ok(chunk))
        .await
        .map_err(|_| std::io::Error::other("the client is gone"))
}

async fn write_result(mut log: LogLines, started: Instant, tx: &Tx) -> std::io::Result<()> {
    let mut raw = std::io::BufWriter::new(tempfile::tempfile()?);
    let mut buf =
        br#"{"ExitCode":0,"Command":"docker-compose logs","SuccessEstimate":true,"Lines":["#
            .to_vec();
    let mut first = true;
    while let Some(line) = log.next().await {
        let line = line.map_err(std::io::Error::other)?;
        if !first {
            buf.push(b',');
            raw.write_all(b"\\n")?;
        }
        first = false;
        let entry = Line {
            line: &line.text,
            raw_line: &line.text,
            is_stdout: line.stdout,
            is_stderr: !line.stdout,
        };
        serde_json::to_writer(&mut buf, &entry)?;
        let quoted = serde_json::to_string(&line.text)?;
        raw.write_all(&quoted.as_bytes()[1..quoted.len() - 1])?;
        if buf.len() >= CHUNK {
            send(tx, &mut buf).await?;
        }
    }
    buf.extend_from_slice(br#"],"RawOutput":""#);
    let mut raw = raw.into_inner().map_err(|e| e.into_error())?;
    raw.rewind()?;
    loop {
        let mut part = vec![0u8; CHUNK];
        let n = raw.read(&mut part)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&part[..n]);
        send(tx, &mut buf).await?;
    }
    let ms = started.elapsed().as_millis();
    buf.extend_from_slice(format!(r#"","DurationMs":{ms}}}"#).as_bytes());
    send(tx, &mut buf).await
}
