//! Server-sent events (`GET /api/events`, `/api/1/events`, legacy `/events`) end to end: a
//! raw HTTP/1.1 SSE client against the gantry binary and the test dockerd sees Import, App
//! (including a container stopped with the Docker CLI behind gantry's back), Refresh and
//! Remove events, keep-alive comments, a laggard being dropped without holding others up,
//! and every stream ending cleanly on SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::bundle::{import, zip_of};
use common::ws::Ws;
use common::{docker_ok, enc, test_image, unique, Gantry};
use serde_json::Value;

/// Guards every wait so a broken server fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
enum Item {
    Event {
        name: String,
        data: String,
    },
    Comment(String),
    /// The stream ended: `clean` when the chunked body was properly terminated.
    End {
        clean: bool,
    },
}

/// An SSE client: a thread reads the chunked body and parses it into items.
struct Sse {
    rx: mpsc::Receiver<Item>,
    /// Items seen so far (for failure messages).
    seen: Vec<Item>,
}

fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut status_line = String::new();
    r.read_line(&mut status_line).expect("no status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("headers cut short");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').expect("bad header line");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    (status, headers)
}

/// De-chunks the body and parses SSE lines; sends End when the stream stops.
fn pump(mut r: BufReader<TcpStream>, tx: mpsc::Sender<Item>) {
    let mut pending = Vec::new();
    let mut event = String::new();
    let mut data = String::new();
    let clean = loop {
        let mut size_line = String::new();
        match r.read_line(&mut size_line) {
            Ok(0) | Err(_) => break false,
            Ok(_) => {}
        }
        let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
            break false;
        };
        if size == 0 {
            break true;
        }
        let mut chunk = vec![0u8; size + 2];
        if r.read_exact(&mut chunk).is_err() {
            break false;
        }
        pending.extend_from_slice(&chunk[..size]);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line[..i]).into_owned();
            let item = if line.is_empty() {
                if event.is_empty() && data.is_empty() {
                    continue;
                }
                Item::Event {
                    name: std::mem::take(&mut event),
                    data: std::mem::take(&mut data),
                }
            } else if let Some(c) = line.strip_prefix(':') {
                Item::Comment(c.trim().to_string())
            } else if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
                continue;
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim_start());
                continue;
            } else {
                continue;
            };
            if tx.send(item).is_err() {
                return;
            }
        }
    };
    let _ = tx.send(Item::End { clean });
}

impl Sse {
    fn connect(g: &Gantry, path: &str) -> Sse {
        Self::over(g.connect(), path)
    }

    fn over(mut s: TcpStream, path: &str) -> Sse {
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        Self::resume(s)
    }

    /// Reads the answer to a request already sent.
    fn resume(s: TcpStream) -> Sse {
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r);
        assert_eq!(status, 200, "{headers:?}");
        let header = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        assert_eq!(header("content-type"), "text/event-stream", "{headers:?}");
        assert_eq!(header("cache-control"), "no-cache", "{headers:?}");
        assert_eq!(header("transfer-encoding"), "chunked", "{headers:?}");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || pump(r, tx));
        let mut sse = Sse {
            rx,
            seen: Vec::new(),
        };
        // The first event says the stream is live.
        let (name, data) = sse.next_event();
        assert_eq!(name, "status", "{data}");
        let status: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(status["Status"], "Connected", "{data}");
        assert_eq!(status["Refreshing"], false, "{data}");
        sse
    }

    fn next_item(&mut self, limit: Duration) -> Option<Item> {
        let item = self.rx.recv_timeout(limit).ok()?;
        self.seen.push(item.clone());
        Some(item)
    }

    /// The next event, skipping comments; panics on the end of the stream.
    fn next_event(&mut self) -> (String, String) {
        let deadline = Instant::now() + GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left) {
                Some(Item::Event { name, data }) => return (name, data),
                Some(Item::Comment(_)) => continue,
                Some(Item::End { .. }) => panic!("the stream ended; seen {:?}", self.seen),
                None => panic!("no event within {GUARD:?}; seen {:?}", self.seen),
            }
        }
    }

    /// Skips events until one on `channel` whose JSON data satisfies `pred`.
    fn wait_for(&mut self, channel: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + GUARD;
        while Instant::now() < deadline {
            let (name, data) = self.next_event();
            if name != channel {
                continue;
            }
            let v: Value = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("{channel} data is not JSON ({e}): {data}"));
            if pred(&v) {
                return v;
            }
        }
        panic!("no matching {channel} event; seen {:?}", self.seen)
    }

    /// Reads until the stream ends; returns whether it ended cleanly and the events on the
    /// way.
    fn until_end(&mut self) -> (bool, Vec<(String, String)>) {
        let deadline = Instant::now() + GUARD;
        let mut events = Vec::new();
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left) {
                Some(Item::End { clean }) => return (clean, events),
                Some(Item::Event { name, data }) => events.push((name, data)),
                Some(Item::Comment(_)) => {}
                None => break,
            }
        }
        panic!("the stream did not end; seen {:?}", self.seen)
    }
}

/// An app of one service running the test image (already in Docker, so the bundle carries
/// no image); `description` pads its AppInstance.
fn app_bundle(name: &str, description: &str) -> Vec<u8> {
    let compose = format!(
        "services:\n  main:\n    image: {}\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 1s\n",
        test_image()
    );
    let config = format!("Name: {name}\nVersion: 1.0\nDescription: {description}\n");
    zip_of(&[
        ("config.yml", config.as_bytes()),
        ("docker-compose.yml", compose.as_bytes()),
    ])
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn sse_reports_imports_status_changes_refreshes_and_removals() {
    let host = require_docker!();
    let g = Gantry::builder()
        .docker_host(&host)
        .http("sse_keepalive_secs = 1")
        .start();
    let mut sse = Sse::connect(&g, "/api/events");
    let mut versioned = Sse::connect(&g, "/api/1/events");
    let mut legacy = Sse::connect(&g, "/events");

    // A keep-alive comment arrives on an idle stream.
    let deadline = Instant::now() + GUARD;
    let mut keepalive = false;
    while !keepalive && Instant::now() < deadline {
        match sse.next_item(GUARD) {
            Some(Item::Comment(c)) => keepalive = c == "keep-alive",
            other => panic!("expected a keep-alive comment first, got {other:?}"),
        }
    }
    assert!(keepalive);

    let name = unique("SSE App");
    let id = format!("{name}:1.0");
    let path = format!("/api/1/transfer/apps/{}", enc(&id));
    let app = import(&g, &app_bundle(&name, "events")).expect_json(200);
    assert_eq!(app["Id"], id.as_str());
    let mut imported = Value::Null;
    for client in [&mut sse, &mut versioned, &mut legacy] {
        imported = client.wait_for("Import", |v| v["Id"] == id.as_str());
        assert_eq!(imported["App"]["Name"], name.as_str());
        assert_eq!(imported["Status"], "Stopped");
        assert_eq!(imported["Busy"], false);
        assert!(imported["Containers"].is_array(), "{imported}");
    }
    // The same AppInstance the REST routes render.
    assert_eq!(imported, app);
    assert_eq!(imported, g.get(&path).expect_json(200));

    // Started by gantry: busy first, then running and free.
    let up = g.put(&format!("{path}/start")).expect_json(200);
    assert_eq!(up["ExitCode"], 0, "{up}");
    let container = up["RunningContainers"][0].as_str().unwrap().to_string();
    let running = sse.wait_for("App", |v| {
        v["Id"] == id.as_str() && v["Status"] == "Running" && v["Busy"] == false
    });
    assert_eq!(running["Containers"][0]["Running"], true, "{running}");
    legacy.wait_for("App", |v| v["Status"] == "Running" && v["Busy"] == false);

    // Stopped behind gantry's back with the Docker CLI: gantry sees it through Docker's events.
    docker_ok(&["stop", "-t", "1", &container]);
    let stopped = sse.wait_for("App", |v| {
        v["Id"] == id.as_str() && v["Status"] == "Stopped"
    });
    assert_eq!(stopped["Containers"][0]["Running"], false, "{stopped}");
    versioned.wait_for("App", |v| v["Status"] == "Stopped");
    // And started again the same way.
    docker_ok(&["start", &container]);
    let again = sse.wait_for("App", |v| {
        v["Id"] == id.as_str() && v["Status"] == "Running"
    });
    assert_eq!(again["Busy"], false, "{again}");

    // Stopped by gantry.
    let down = g.put(&format!("{path}/stop")).expect_json(200);
    assert_eq!(down["ExitCode"], 0, "{down}");
    sse.wait_for("App", |v| {
        v["Id"] == id.as_str() && v["Status"] == "Stopped" && v["Busy"] == false
    });

    // Refresh all: true, the apps, false.
    g.put("/api/1/transfer/refresh/apps").expect_empty(202);
    // Docker events of the stop may still trail in as App events before the refresh.
    let (mut channel, mut data) = sse.next_event();
    while channel == "App" {
        (channel, data) = sse.next_event();
    }
    assert_eq!((channel.as_str(), data.as_str()), ("Refresh", "true"));
    let listed = sse.wait_for("App", |v| v["Id"] == id.as_str());
    assert_eq!(listed["Status"], "Stopped");
    let (n, d) = sse.next_event();
    assert_eq!((n.as_str(), d.as_str()), ("Refresh", "false"));

    // Removed.
    g.delete(&path).expect_empty(200);
    let removed = sse.wait_for("Remove", |v| v["Id"] == id.as_str());
    assert_eq!(removed["App"]["Name"], name.as_str());
    legacy.wait_for("Remove", |v| v["Id"] == id.as_str());
}

/// A TCP connection with a tiny receive window, so the server's send buffer fills quickly.
fn small_window_connect(g: &Gantry) -> TcpStream {
    use nix::sys::socket::{connect, setsockopt, socket, sockopt, AddressFamily, SockFlag};
    use nix::sys::socket::{SockType, SockaddrIn};
    let std::net::SocketAddr::V4(a) = g.addr else {
        panic!("IPv4 listener expected")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    // Before connecting, so the window is small from the handshake on.
    setsockopt(&fd, sockopt::RcvBuf, &4096).expect("SO_RCVBUF");
    connect(fd.as_raw_fd(), &SockaddrIn::from(a)).expect("connect");
    TcpStream::from(fd)
}

#[test]
#[ignore = "needs the test dockerd (run scripts/test.sh)"]
fn a_client_that_never_reads_is_dropped_without_holding_others_up() {
    let host = require_docker!();
    let g = Gantry::builder()
        .docker_host(&host)
        .http("sse_queue_events = 4")
        .start();
    // Large events fill a stalled client's buffers after a few rounds.
    let name = unique("SSE Big");
    let id = format!("{name}:1.0");
    import(&g, &app_bundle(&name, &"x".repeat(64 << 10))).expect_json(200);

    // The laggard sends its request and reads nothing until the end.
    let mut laggard = small_window_connect(&g);
    write!(
        laggard,
        "GET /api/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut reader = Sse::connect(&g, "/api/events");
    // Let the server subscribe the laggard before the rounds start.
    std::thread::sleep(Duration::from_millis(500));

    let mut rounds = 0;
    let mut received = 0usize;
    while rounds < 200 && !g.stderr().contains("dropping an event subscriber") {
        rounds += 1;
        g.put("/api/1/transfer/refresh/apps").expect_empty(202);
        // The reader sees every round completely and in order, whatever the laggard does.
        let (n, d) = reader.next_event();
        assert_eq!(
            (n.as_str(), d.as_str()),
            ("Refresh", "true"),
            "round {rounds}"
        );
        let (n, d) = reader.next_event();
        assert_eq!(n, "App", "round {rounds}");
        received += d.len();
        let v: Value = serde_json::from_str(&d).unwrap();
        assert_eq!(v["Id"], id.as_str());
        let (n, d) = reader.next_event();
        assert_eq!(
            (n.as_str(), d.as_str()),
            ("Refresh", "false"),
            "round {rounds}"
        );
    }
    eprintln!("the laggard was dropped after {rounds} rounds ({received} bytes of App events)");
    assert!(
        g.stderr().contains("dropping an event subscriber"),
        "the laggard was not dropped after {rounds} rounds ({received} bytes of App events)"
    );
    // The server closed the laggard's connection: reading it now gets what was buffered,
    // then the end, not a terminated body: the stream was cut, never completed.
    let mut laggard_sse = Sse::resume(laggard);
    let (clean, events) = laggard_sse.until_end();
    assert!(!clean, "the laggard's stream ended like a normal response");
    let refreshes = events.iter().filter(|(n, _)| n == "Refresh").count();
    assert!(
        refreshes < 2 * rounds,
        "the laggard received all {refreshes} Refresh events of {rounds} rounds"
    );
    // And the reader carries on.
    g.put("/api/1/transfer/refresh/apps").expect_empty(202);
    let (n, d) = reader.next_event();
    assert_eq!((n.as_str(), d.as_str()), ("Refresh", "true"));
}

#[test]
fn sigterm_ends_open_streams_and_websockets_and_the_daemon_exits() {
    // No Docker needed: the streams and websockets do not depend on it.
    let mut g = Gantry::builder()
        .shutdown_timeout_secs(10)
        .http("header_read_timeout_secs = 60")
        .start();
    let mut a = Sse::connect(&g, "/api/events");
    let mut b = Sse::connect(&g, "/events");
    // An import websocket waiting for the client's Length message.
    let mut ws = Ws::connect(&g, "/events/transfer/import");

    let t0 = Instant::now();
    g.signal(common::Signal::SIGTERM);
    for sse in [&mut a, &mut b] {
        let (clean, events) = sse.until_end();
        assert!(clean, "the stream was cut, not ended: {:?}", sse.seen);
        let last = events.last().expect("no event before the end");
        assert_eq!(last.0, "status");
        let v: Value = serde_json::from_str(&last.1).unwrap();
        assert_eq!(v["Status"], "ShuttingDown");
    }
    // 1001 Going Away, after a CANCEL step saying why.
    let steps = ws.rest();
    assert_eq!(ws.close_code, Some(1001), "{steps:?}");
    let last = steps.last().unwrap();
    assert_eq!(last["StepType"], "CANCEL", "{last}");
    assert!(
        last["Message"].as_str().unwrap().contains("shutting down"),
        "{last}"
    );
    let st = g
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("gantry did not exit after SIGTERM:\n{}", g.stderr()));
    assert_eq!(st.code(), Some(0), "{}", g.stderr());
    // Everything ended by itself, not by the grace period running out.
    let log = g.stderr();
    assert!(!log.contains("grace period over"), "{log}");
    eprintln!("gantry exited {:?} after SIGTERM", t0.elapsed());
}
