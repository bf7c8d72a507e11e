//! The original daemon's websocket (its port 8001, `daemon/docs/ws.md`), here on the same
//! listener at `/ws` (also `/`, where the original's example clients connect, and
//! `/service/{id}/ctl`, where its TypeScript core connects; each with or without `/v1`).
//!
//! The first message (text, JSON, within [`INIT_TIMEOUT`]) names the key and the command:
//! `{"corekey", "command": {"type": "attach"|"stats", "data": id}}` as the document says, or
//! flat `{"corekey", "type", "data"}` as the original's code and clients send it; `data` is
//! the service id, or `{"service_id", "logs"}`. `attach` connects to the service's tty
//! (starting it when needed): its output goes out as binary messages, every message in goes
//! to its stdin; closing the socket detaches and leaves the service running. `stats` sends
//! Docker's samples as JSON text messages until the client closes.

use std::time::Duration;

use futures_util::StreamExt;
use hyper::Method;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::{unkeyed, Call, Reply, Route, UNAUTHORIZED};
use crate::api::router::Routes;
use crate::core::services::Services;
use crate::server::ws::{self, Incoming, WsConfig, WsReceiver, WsSender, WsSession};

/// How long a client has for its first message.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message a client may send (stdin input, the first message).
const MAX_MESSAGE: usize = 1 << 20;

pub fn register(r: &mut Routes<Route>) {
    for pattern in ["/ws", "/", "/service/{id}/ctl"] {
        unkeyed(r, Method::GET, pattern, |c| Box::pin(upgrade(c)));
    }
}

async fn upgrade(mut c: Call) -> Reply {
    let services = c.services.clone();
    let config = WsConfig {
        max_message: MAX_MESSAGE,
        idle: None,
    };
    let resp = ws::accept(&mut c.req, &c.sessions, config, move |session| {
        serve(session, services)
    })?;
    Ok(resp)
}

/// A service id as clients send it: a string (or a number).
#[derive(Deserialize)]
#[serde(untagged)]
enum Id {
    Text(String),
    Number(u64),
}

impl Id {
    fn text(self) -> String {
        match self {
            Id::Text(s) => s,
            Id::Number(n) => n.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Data {
    Id(Id),
    Object {
        service_id: Id,
        #[serde(default)]
        logs: bool,
    },
}

#[derive(Deserialize)]
struct Command {
    #[serde(rename = "type")]
    kind: String,
    data: Data,
}

#[derive(Deserialize)]
struct Init {
    corekey: Option<String>,
    command: Option<Command>,
    #[serde(rename = "type")]
    kind: Option<String>,
    data: Option<Data>,
}

#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Attach { id: String, logs: bool },
    Stats { id: String },
}

/// The key and the command of a first message, or why it cannot be used.
fn parse_init(text: &str) -> Result<(Option<String>, Wanted), String> {
    let init: Init = serde_json::from_str(text).map_err(|e| {
        format!("the first message must be {{corekey, command: {{type, data}}}}: {e}")
    })?;
    let command = match (init.command, init.kind, init.data) {
        (Some(c), _, _) => c,
        (None, Some(kind), Some(data)) => Command { kind, data },
        _ => return Err("the first message names no command (type and data)".into()),
    };
    let (id, logs) = match command.data {
        Data::Id(id) => (id.text(), false),
        Data::Object { service_id, logs } => (service_id.text(), logs),
    };
    let wanted = match command.kind.as_str() {
        "attach" => Wanted::Attach { id, logs },
        "stats" => Wanted::Stats { id },
        other => return Err(format!("unknown command {other:?} (attach or stats)")),
    };
    Ok((init.corekey, wanted))
}

async fn close(tx: WsSender, rx: WsReceiver, code: CloseCode, reason: &str) {
    WsSession { tx, rx }.close(code, reason).await
}

async fn serve(session: WsSession, services: std::sync::Arc<Services>) {
    let WsSession { tx, mut rx } = session;
    let text = match rx.next(tokio::time::sleep(INIT_TIMEOUT)).await {
        Incoming::Msg(Message::Text(t)) => t.as_str().to_string(),
        Incoming::Msg(Message::Binary(b)) => String::from_utf8_lossy(&b).into_owned(),
        Incoming::Cancelled | Incoming::Stalled => {
            let reason = format!("no first message within {} s", INIT_TIMEOUT.as_secs());
            return close(tx, rx, CloseCode::Policy, &reason).await;
        }
        Incoming::Invalid(m) => return close(tx, rx, CloseCode::Size, &m).await,
        Incoming::Stopping => return close(tx, rx, CloseCode::Away, "shutting down").await,
        Incoming::Msg(_) | Incoming::Gone => return,
    };
    let (key, wanted) = match parse_init(&text) {
        Ok(x) => x,
        Err(why) => return close(tx, rx, CloseCode::Policy, &why).await,
    };
    if !services.key().matches(key.as_deref().map(str::as_bytes)) {
        let reason = format!("Unauthorized: {UNAUTHORIZED}");
        return close(tx, rx, CloseCode::Policy, &reason).await;
    }
    match wanted {
        Wanted::Attach { id, logs } => attach(tx, rx, &services, &id, logs).await,
        Wanted::Stats { id } => stats(tx, rx, &services, &id).await,
    }
}

/// How a relay ended: the client left (nothing more to send), or a close to send.
enum End {
    Gone,
    Close(CloseCode, String),
}

async fn finish(tx: WsSender, rx: WsReceiver, end: End) {
    if let End::Close(code, reason) = end {
        close(tx, rx, code, &reason).await;
    }
}

/// What the client's messages mean to a relay: stdin bytes, or the end.
fn from_client(incoming: Incoming) -> Result<Option<Vec<u8>>, End> {
    match incoming {
        Incoming::Msg(Message::Binary(b)) => Ok(Some(b.to_vec())),
        Incoming::Msg(Message::Text(t)) => Ok(Some(t.as_bytes().to_vec())),
        Incoming::Msg(_) => Ok(None),
        Incoming::Stopping => Err(End::Close(CloseCode::Away, "shutting down".into())),
        Incoming::Invalid(m) => Err(End::Close(CloseCode::Size, m)),
        Incoming::Gone | Incoming::Cancelled | Incoming::Stalled => Err(End::Gone),
    }
}

async fn attach(mut tx: WsSender, mut rx: WsReceiver, services: &Services, id: &str, logs: bool) {
    let mut attached = match services.attach(id, logs).await {
        Ok(a) => a,
        Err(e) => return close(tx, rx, CloseCode::Error, &e.to_string()).await,
    };
    let end = loop {
        tokio::select! {
            out = attached.output.next() => match out {
                Some(Ok(bytes)) => {
                    if !tx.send(Message::binary(bytes)).await {
                        break End::Gone;
                    }
                }
                Some(Err(e)) => break End::Close(CloseCode::Error, e.to_string()),
                None => break End::Close(CloseCode::Normal, format!("service {id} stopped")),
            },
            m = rx.next(std::future::pending()) => match from_client(m) {
                Ok(Some(bytes)) => {
                    let written = attached.input.write_all(&bytes).await;
                    if let Err(e) = written.and(attached.input.flush().await) {
                        break End::Close(CloseCode::Error, format!("stdin: {e}"));
                    }
                }
                Ok(None) => {}
                Err(end) => break end,
            },
        }
    };
    // Dropping the attachment detaches; the service keeps running.
    drop(attached);
    finish(tx, rx, end).await
}

async fn stats(mut tx: WsSender, mut rx: WsReceiver, services: &Services, id: &str) {
    let mut samples = match services.stats_stream(id).await {
        Ok(s) => s,
        Err(e) => return close(tx, rx, CloseCode::Error, &e.to_string()).await,
    };
    let end = loop {
        tokio::select! {
            sample = samples.next() => match sample {
                Some(Ok(s)) => {
                    if !tx.send_json(&s).await {
                        break End::Gone;
                    }
                }
                Some(Err(e)) => break End::Close(CloseCode::Error, e.to_string()),
                None => break End::Close(CloseCode::Normal, format!("service {id} is gone")),
            },
            m = rx.next(std::future::pending()) => match from_client(m) {
                Ok(_) => {}
                Err(end) => break end,
            },
        }
    };
    finish(tx, rx, end).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_and_the_real_clients_first_messages_parse() {
        let doc = r#"{"corekey":"a2V5","command":{"type":"attach","data":"svc"}}"#;
        assert_eq!(
            parse_init(doc).unwrap(),
            (
                Some("a2V5".into()),
                Wanted::Attach {
                    id: "svc".into(),
                    logs: false
                }
            )
        );
        let ts = r#"{"corekey":"k","type":"attach","data":{"service_id":"svc","logs":true}}"#;
        assert_eq!(
            parse_init(ts).unwrap().1,
            Wanted::Attach {
                id: "svc".into(),
                logs: true
            }
        );
        let stats = r#"{"corekey":"k","type":"stats","data":"svc"}"#;
        assert_eq!(
            parse_init(stats).unwrap().1,
            Wanted::Stats { id: "svc".into() }
        );
        assert_eq!(parse_init(r#"{"type":"stats","data":7}"#).unwrap().0, None);
        for bad in [
            "",
            "{}",
            r#"{"corekey":"k","type":"exec","data":"x"}"#,
            "[1]",
        ] {
            assert!(parse_init(bad).is_err(), "{bad}");
        }
    }
}
