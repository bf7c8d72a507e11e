//! Small network helpers of the Distillery tests: an HTTP file server on loopback (the
//! bundles `provision` downloads), a raw SSE reader of the Transfer API's events, and a
//! plain HTTP GET.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::wait_for;

/// Serves one file as `/app.zip` (404 for anything else) on 127.0.0.1, port picked by the
/// kernel; with a pause, in 64 KiB pieces with that pause between them.
pub struct Files {
    addr: SocketAddr,
}

impl Files {
    pub fn start(body: Vec<u8>, pause: Option<Duration>) -> Files {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(body);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let body = body.clone();
                std::thread::spawn(move || answer(conn, &body, pause));
            }
        });
        Files { addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn answer(conn: TcpStream, body: &[u8], pause: Option<Duration>) {
    let mut r = BufReader::new(conn);
    let mut request = String::new();
    if r.read_line(&mut request).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
    }
    let mut conn = r.into_inner();
    if !request.starts_with("GET /app.zip ") {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/zip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    for piece in body.chunks(64 << 10) {
        if conn.write_all(piece).is_err() {
            return;
        }
        if let Some(p) = pause {
            std::thread::sleep(p);
        }
    }
}

/// The raw text of an SSE stream, read by a thread, searchable while it grows.
pub struct Sse {
    text: Arc<Mutex<String>>,
}

impl Sse {
    pub fn connect(addr: SocketAddr, path: &str) -> Sse {
        let mut s = TcpStream::connect(addr).unwrap();
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16 << 10];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let sse = Sse { text };
        sse.wait_for(&["event: status"]);
        sse
    }

    /// Waits until one `data:` line holds every one of `parts`.
    pub fn wait_for(&self, parts: &[&str]) {
        let found = wait_for(Duration::from_secs(30), Duration::from_millis(50), || {
            let text = self.text.lock().unwrap();
            text.lines()
                .any(|l| parts.iter().all(|p| l.contains(p)))
                .then_some(())
        });
        assert!(
            found.is_some(),
            "no event with {parts:?} in:\n{}",
            self.text.lock().unwrap()
        );
    }
}

/// The body of `GET http://127.0.0.1:port/`, once it answers 200.
pub fn http_body(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}
