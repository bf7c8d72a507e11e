//! The spec's upload protocol over a websocket: `{"Name":"Length","Value":n}`, then n bytes
//! in one or more binary messages, each acknowledged with a DATA_TRANSFER step. The bytes go
//! into the operation's upload pipe as they arrive (never more than a message in memory).

use std::future::Future;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::steps::{percent, Step};
use crate::core::apps::stream::UploadSender;
use crate::server::ws::{Incoming, WsSession};

/// How an upload ended.
pub(super) enum Upload {
    Done,
    Failed(String),
    Cancelled,
    /// The server is stopping.
    Stopping,
    Gone,
}

const EXPECTED: &str =
    "expected {\"Name\":\"Length\",\"Value\":<size in bytes>} as the first message";

pub(super) fn parse_length(text: &str) -> Result<u64, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|_| format!("{EXPECTED}, got text that is not JSON"))?;
    let name = v
        .get("Name")
        .or_else(|| v.get("name"))
        .and_then(|n| n.as_str());
    if name != Some("Length") {
        return Err(format!("{EXPECTED}, got {}", shorten(text)));
    }
    let value = v.get("Value").or_else(|| v.get("value"));
    value
        .and_then(|n| {
            n.as_u64()
                .or_else(|| n.as_str().and_then(|s| s.trim().parse().ok()))
        })
        .ok_or_else(|| format!("{EXPECTED}: Value must be a whole number of bytes"))
}

fn idle_secs(ws: &WsSession) -> u64 {
    ws.rx.idle_limit().map_or(0, |d| d.as_secs())
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(80).collect::<String>())
    } else {
        s.to_string()
    }
}

/// What an upload's reading ended with, when it was not a message.
fn ended(incoming: Incoming, stalled: String) -> Upload {
    match incoming {
        Incoming::Msg(_) => unreachable!("messages are handled by the caller"),
        Incoming::Stalled => Upload::Failed(stalled),
        Incoming::Invalid(m) => Upload::Failed(m),
        Incoming::Gone => Upload::Gone,
        Incoming::Cancelled => Upload::Cancelled,
        Incoming::Stopping => Upload::Stopping,
    }
}

/// The announced length, checked against `limit`.
async fn receive_length<F: Future<Output = ()>>(
    ws: &mut WsSession,
    cancelled: F,
    limit: u64,
) -> Result<u64, Upload> {
    let length = match ws.rx.next(cancelled).await {
        Incoming::Msg(Message::Text(t)) => parse_length(t.as_str()).map_err(Upload::Failed)?,
        Incoming::Msg(_) => {
            return Err(Upload::Failed(format!(
                "{EXPECTED}, as a text message, got binary data: send the Length before the data"
            )))
        }
        other => {
            let stalled = format!(
                "no {{\"Name\":\"Length\",...}} message arrived within {} s",
                idle_secs(ws)
            );
            return Err(ended(other, stalled));
        }
    };
    if length == 0 {
        return Err(Upload::Failed("Length is 0: nothing to upload".into()));
    }
    if length > limit {
        return Err(Upload::Failed(format!(
            "the upload of {length} bytes exceeds the limit of {limit} bytes"
        )));
    }
    Ok(length)
}

/// Receives Length and that many bytes into `sender`, reporting DATA_TRANSFER steps;
/// `cancelled` makes a future that resolves when the operation is cancelled.
pub(super) async fn receive<C, F>(
    ws: &mut WsSession,
    cancelled: C,
    limit: u64,
    sender: &UploadSender,
) -> Upload
where
    C: Fn() -> F,
    F: Future<Output = ()>,
{
    let length = match receive_length(ws, cancelled(), limit).await {
        Ok(n) => n,
        Err(end) => return end,
    };
    let mut got: u64 = 0;
    while got < length {
        let data = match ws.rx.next(cancelled()).await {
            Incoming::Msg(Message::Binary(b)) => b,
            Incoming::Msg(_) => {
                return Upload::Failed(format!(
                    "expected the data as binary messages, got a text message after {got} of {length} bytes"
                ))
            }
            other => {
                let stalled = format!(
                    "only {got} of the {length} bytes announced by Length arrived; nothing more came for {} s",
                    idle_secs(ws)
                );
                return ended(other, stalled);
            }
        };
        got += data.len() as u64;
        if got > length {
            return Upload::Failed(format!(
                "received {got} bytes, more than the {length} bytes announced by Length: send exactly Length bytes"
            ));
        }
        if !sender.send(data).await {
            return Upload::Failed("the upload could not be stored".into());
        }
        let step = Step::ok("DATA_TRANSFER", None, percent(got, length)).details(got.to_string());
        ws.tx.send_json(&step).await;
    }
    Upload::Done
}

/// Sends the step an unfinished upload ends with; the close code when the session should
/// end here.
pub(super) async fn outcome(ws: &mut WsSession, end: Upload, what: &str) -> Result<(), CloseCode> {
    let (step, code) = match end {
        Upload::Done => return Ok(()),
        Upload::Failed(m) => (Step::fail("DATA_TRANSFER", None, m), CloseCode::Policy),
        Upload::Cancelled => (
            Step::fail(
                "CANCEL",
                None,
                format!("the {what} was cancelled during the upload"),
            ),
            CloseCode::Normal,
        ),
        Upload::Stopping => (
            Step::fail(
                "CANCEL",
                None,
                format!("the server is shutting down; the {what} was not done: try again later"),
            ),
            CloseCode::Away,
        ),
        Upload::Gone => return Err(CloseCode::Away),
    };
    ws.tx.send_json(&step).await;
    Err(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_message_is_checked() {
        assert_eq!(parse_length(r#"{"Name":"Length","Value":12}"#), Ok(12));
        assert_eq!(parse_length(r#"{"Name":"Length","Value":"12"}"#), Ok(12));
        assert!(parse_length(r#"{"Name":"Size","Value":12}"#).is_err());
        assert!(parse_length(r#"{"Name":"Length","Value":-1}"#).is_err());
        assert!(parse_length("hello").is_err());
    }
}
