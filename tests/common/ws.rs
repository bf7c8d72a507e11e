//! A websocket client for the Transfer App's websockets (import, load image, start, stop):
//! JSON text messages in and out, on its own current-thread runtime, used synchronously.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::Gantry;

/// Guards every read so a broken server fails the test instead of hanging it.
const READ_GUARD: Duration = Duration::from_secs(180);

pub struct Ws {
    rt: tokio::runtime::Runtime,
    ws: WebSocketStream<tokio::net::TcpStream>,
    /// The server sent a close frame.
    pub closed: bool,
    /// The code of the server's close frame, when it carried one.
    pub close_code: Option<u16>,
}

impl Ws {
    /// Connects to `path` and asserts the upgrade (101).
    pub fn connect(g: &Gantry, path: &str) -> Ws {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let addr = g.addr;
        let url = format!("ws://{addr}{path}");
        let ws = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (ws, resp) = tokio_tungstenite::client_async(url.as_str(), tcp)
                .await
                .unwrap_or_else(|e| panic!("websocket handshake for {path} failed: {e}"));
            assert_eq!(resp.status().as_u16(), 101);
            ws
        });
        Ws {
            rt,
            ws,
            closed: false,
            close_code: None,
        }
    }

    pub fn send(&mut self, m: Message) {
        let Ws { rt, ws, .. } = self;
        rt.block_on(ws.send(m)).expect("websocket send failed");
    }

    pub fn text(&mut self, v: Value) {
        self.send(Message::text(v.to_string()));
    }

    pub fn binary(&mut self, b: &[u8]) {
        self.send(Message::binary(b.to_vec()));
    }

    /// The upload's `Length` message.
    pub fn length(&mut self, n: usize) {
        self.text(json!({"Name": "Length", "Value": n}));
    }

    /// The next JSON message; None once the server closed (or the connection ended).
    pub fn recv(&mut self) -> Option<Value> {
        let Ws {
            rt,
            ws,
            closed,
            close_code,
        } = self;
        loop {
            let m = rt
                .block_on(async { tokio::time::timeout(READ_GUARD, ws.next()).await })
                .expect("no websocket message for a long time");
            match m {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("a JSON message"))
                }
                Some(Ok(Message::Close(frame))) => {
                    *closed = true;
                    *close_code = frame.map(|f| u16::from(f.code));
                    // Answer the close and read to the end.
                    let _ = rt.block_on(async {
                        tokio::time::timeout(READ_GUARD, async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await
                    });
                    return None;
                }
                Some(Ok(Message::Binary(_))) => panic!("unexpected binary message"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Every message until the server closes.
    pub fn rest(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        for _ in 0..1_000_000 {
            match self.recv() {
                Some(v) => out.push(v),
                None => return out,
            }
        }
        panic!("the server never closed the websocket");
    }

    /// Reads the first message, which must be the task's `CancelID`; returns the id.
    pub fn cancel_id(&mut self) -> String {
        let first = self.recv().expect("the CancelID message");
        assert_eq!(first["Name"], "CancelID", "{first}");
        let id = first["Value"].as_str().expect("CancelID is a string");
        assert_eq!(id.len(), 36, "{id}");
        id.to_string()
    }

    /// Connects to `path`, reads the `CancelID` and uploads `data` in one binary message
    /// after its `Length`; returns the socket and the cancel id.
    pub fn upload(g: &Gantry, path: &str, data: &[u8]) -> (Ws, String) {
        let mut ws = Ws::connect(g, path);
        let cancel_id = ws.cancel_id();
        ws.length(data.len());
        ws.binary(data);
        (ws, cancel_id)
    }
}
