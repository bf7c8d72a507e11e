//! `gantry app logs ID [-f] [-n N]`: the last lines of an app's containers, and with
//! `--follow` the new ones as they come (the websocket `/events/transfer/apps/{id}/logs`),
//! until every container has stopped or Ctrl-C.

use futures_util::StreamExt;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::Method;
use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::apps::seg;
use super::client::{json_of, CliError, CliResult, Client};
use super::output::{json, print};
use super::{Exit, Opts};

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Line {
    line: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Logs {
    lines: Vec<Line>,
}

pub async fn run(
    client: &Client,
    opts: &Opts,
    id: &str,
    follow: bool,
    tail: i64,
) -> CliResult<Exit> {
    // -1 is all the lines; the daemon's default is not.
    let query = format!("?lines={}", if tail < 0 { -1 } else { tail.max(1) });
    if follow {
        return follow_logs(client, opts, id, &query).await;
    }
    let path = client.api(&format!("/transfer/apps/{}/logs{query}", seg(id)));
    let resp = client.call(Method::GET, &path).await?;
    let value: Value = json_of(resp).await?.unwrap_or(Value::Null);
    if opts.json {
        json(&value)?;
        return Ok(Exit::Ok);
    }
    let logs: Logs = serde_json::from_value(value)
        .map_err(|e| CliError::io("the daemon's answer is not the JSON expected", e))?;
    let text: String = logs.lines.iter().map(|l| format!("{}\n", l.line)).collect();
    print(&text)?;
    Ok(Exit::Ok)
}

async fn follow_logs(client: &Client, opts: &Opts, id: &str, query: &str) -> CliResult<Exit> {
    // Ask the REST route first: an unknown app is then a plain 404 with its detail.
    let path = client.api(&format!("/transfer/apps/{}", seg(id)));
    client.call(Method::GET, &path).await?;
    let path = client.events(&format!("/transfer/apps/{}/logs{query}", seg(id)));
    let mut req = format!("ws://{}{path}", client.host())
        .into_client_request()
        .map_err(|e| CliError::io("websocket request", e))?;
    if let Some(t) = client.token() {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
            req.headers_mut().insert(AUTHORIZATION, v);
        }
    }
    let stream = client.connect().await?;
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| CliError::io("following the logs", e))?;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = &mut ctrl_c => return Ok(Exit::Ok),
        };
        match msg {
            Some(Ok(Message::Text(text))) => {
                if opts.json {
                    print(&format!("{text}\n"))?;
                } else if let Ok(l) = serde_json::from_str::<Line>(&text) {
                    print(&format!("{}\n", l.line))?;
                }
            }
            Some(Ok(Message::Close(_))) | None => return Ok(Exit::Ok),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(CliError::io("following the logs", e)),
        }
    }
}
