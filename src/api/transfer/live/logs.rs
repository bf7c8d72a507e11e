//! `GET /events/transfer/apps/{id}/logs?lines=N`: an app's logs as they are written
//! (`docker-compose logs -f`). One text message per line, `{"Line", "IsStderr"}`, starting
//! with the last `lines` lines of each container; the session ends (1000) when every
//! container has stopped, or when the server stops (1001).

use futures_util::StreamExt;
use serde::Serialize;

use super::super::apps::lines_param;
use super::super::{Call, Problem, Reply};
use crate::core::apps::AppId;
use crate::core::engine::LineStream;
use crate::server::ws::{self, WsConfig, WsSession};

/// A log line is small; nothing the client sends is read beyond close frames.
const MAX_MESSAGE_BYTES: usize = 64 << 10;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LogMessage<'a> {
    line: &'a str,
    is_stderr: bool,
}

pub async fn ws_logs(mut c: Call) -> Reply {
    let id = c.param("id");
    if id.trim().is_empty() {
        return Err(Problem::bad_request("app id not given"));
    }
    let id = AppId::from(id);
    let lines = lines_param(&c)?;
    // An unknown app is a 404 before the upgrade, as for start and stop.
    let stream = c.core.apps.log_stream(&id, lines).await?;
    let config = WsConfig {
        max_message: MAX_MESSAGE_BYTES,
        idle: None,
    };
    Ok(ws::accept(&mut c.req, &c.sessions, config, move |s| {
        session(s, stream)
    })?)
}

async fn session(mut ws: WsSession, mut lines: LineStream) {
    let stopping = ws.rx.stopping().clone();
    loop {
        let next = tokio::select! {
            l = lines.next() => l,
            gone = ws.rx.client_gone() => if gone { return } else { continue },
            _ = stopping.cancelled() => break,
        };
        match next {
            Some(Ok(l)) => {
                let msg = LogMessage {
                    line: &l.text,
                    is_stderr: !l.stdout,
                };
                if !ws.tx.send_json(&msg).await {
                    return;
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "following logs failed");
                ws.end("the log stream failed").await;
                return;
            }
            None => break,
        }
    }
    ws.end("").await;
}
