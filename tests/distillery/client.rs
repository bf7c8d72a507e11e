//! A Distillery websocket client (binary control frames, text lines) and a gantry with a
//! distillery listener beside its transfer listener.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::{listening_address_of, wait_for, Gantry, GantryBuilder};

/// The admin's token in the tokens file of [`Dist`].
pub const TOKEN: &str = "0123456789abcdef-admin";
/// A second named token.
pub const CI_TOKEN: &str = "fedcba9876543210-ci-bot";

/// Guards every read so a broken server fails the test instead of hanging it.
const READ_GUARD: Duration = Duration::from_secs(180);

/// gantry with a transfer listener and a distillery listener (tokens `admin` and `ci`).
pub struct Dist {
    pub g: Gantry,
    pub addr: SocketAddr,
    _tokens: tempfile::TempDir,
}

impl Dist {
    pub fn start(host: &str) -> Dist {
        Self::with(Gantry::builder().docker_host(host), "")
    }

    /// Starts `builder` with a distillery listener; `extra` goes into its table.
    pub fn with(builder: GantryBuilder, extra: &str) -> Dist {
        let tokens = tempfile::tempdir().unwrap();
        let file = tokens.path().join("tokens");
        std::fs::write(
            &file,
            format!("# name token\nadmin {TOKEN}\nci {CI_TOKEN}\n"),
        )
        .unwrap();
        let table = format!(
            "dialect = \"distillery\"\naddress = \"127.0.0.1:0\"\ntoken_file = {:?}\n{extra}",
            file.display().to_string()
        );
        let g = builder.extra_listener(&table).start();
        let addr = wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            listening_address_of(&g.stderr(), "distillery")
        })
        .expect("the distillery listener never reported its address");
        Dist {
            g,
            addr,
            _tokens: tokens,
        }
    }

    /// `GET path` on the distillery listener with `token`: status and body.
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut req = crate::common::agent().get(format!("http://{}{path}", self.addr));
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.call().expect("request failed");
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap_or_default())
    }

    pub fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path, Some(TOKEN));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn ws(&self) -> Dws {
        Dws::connect(self.addr, Some(TOKEN)).expect("the upgrade was refused")
    }

    /// Runs one call to its end: the text lines and the result.
    pub fn call(&self, call: &str, params: &[&str]) -> (Vec<String>, Value) {
        let mut ws = self.ws();
        ws.call(call, params);
        ws.rest()
    }
}

impl Drop for Dist {
    /// Leaves nothing running in the test dockerd, also after a failure: every app is removed
    /// (stopped first) with its volumes.
    fn drop(&mut self) {
        if crate::common::docker_host().is_none() {
            return;
        }
        let list = self.g.get("/api/1/transfer/apps");
        if list.status != 200 {
            return;
        }
        for app in list.json().as_array().cloned().unwrap_or_default() {
            let id = app["Id"].as_str().unwrap_or_default();
            let path = format!(
                "/api/1/transfer/apps/{}?force=true&remove_volumes=true",
                crate::common::enc(id)
            );
            let _ = self.g.delete(&path);
        }
    }
}

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Line(String),
    Result(Value),
    /// The server closed the socket.
    Closed,
}

pub struct Dws {
    rt: tokio::runtime::Runtime,
    ws: WebSocketStream<tokio::net::TcpStream>,
}

impl Dws {
    /// Connects to `/api/v1/ws` with `token`; the HTTP status when the upgrade is refused.
    pub fn connect(addr: SocketAddr, token: Option<&str>) -> Result<Dws, u16> {
        Self::connect_path(addr, "/api/v1/ws", token)
    }

    pub fn connect_path(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<Dws, u16> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {t}").parse().unwrap());
        }
        let ws = rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            match tokio_tungstenite::client_async(req, tcp).await {
                Ok((ws, _)) => Ok(ws),
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                    Err(resp.status().as_u16())
                }
                Err(e) => panic!("websocket handshake failed: {e}"),
            }
        })?;
        Ok(Dws { rt, ws })
    }

    pub fn send(&mut self, m: Message) {
        let Dws { rt, ws } = self;
        rt.block_on(ws.send(m)).expect("websocket send failed");
    }

    pub fn call(&mut self, call: &str, params: &[&str]) {
        let msg = json!({"call": call, "params": params});
        self.send(Message::binary(msg.to_string().into_bytes()));
    }

    pub fn cancel(&mut self) {
        self.send(Message::binary(br#"{"signal":"cancel"}"#.to_vec()));
    }

    pub fn input(&mut self, line: &str) {
        self.send(Message::text(line));
    }

    /// The next frame.
    pub fn next(&mut self) -> Frame {
        let Dws { rt, ws } = self;
        loop {
            let m = rt
                .block_on(async { tokio::time::timeout(READ_GUARD, ws.next()).await })
                .expect("no websocket message for a long time");
            match m {
                Some(Ok(Message::Text(t))) => return Frame::Line(t.as_str().to_string()),
                Some(Ok(Message::Binary(b))) => {
                    return Frame::Result(serde_json::from_slice(&b).expect("a JSON result"))
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Frame::Closed,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Lines until one satisfies `pred` (returned with the lines before it).
    pub fn until(&mut self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.next() {
                Frame::Line(l) => {
                    let hit = pred(&l);
                    seen.push(l);
                    if hit {
                        return seen;
                    }
                }
                other => panic!("{other:?} before the expected line; lines: {seen:#?}"),
            }
        }
    }

    /// Every line up to the result, the result, and then the close (asserted).
    pub fn rest(&mut self) -> (Vec<String>, Value) {
        let mut lines = Vec::new();
        loop {
            match self.next() {
                Frame::Line(l) => lines.push(l),
                Frame::Result(r) => {
                    assert_eq!(self.next(), Frame::Closed, "more after the result");
                    return (lines, r);
                }
                Frame::Closed => panic!("closed without a result; lines: {lines:#?}"),
            }
        }
    }

    /// Drops the connection without a close frame.
    pub fn vanish(self) {
        drop(self);
    }
}

/// Asserts a failure result whose message contains `hint`.
pub fn assert_failed(result: &Value, hint: &str) {
    assert_eq!(result["success"], false, "{result}");
    let m = result["message"].as_str().unwrap_or_default();
    assert!(
        m.contains(hint),
        "the failure {m:?} does not mention {hint:?}"
    );
}

pub fn assert_success(result: &Value, lines: &[String]) {
    assert_eq!(result, &json!({"success": true}), "lines: {lines:#?}");
}
