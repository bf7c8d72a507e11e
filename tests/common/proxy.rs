//! A proxy between gantry and the test dockerd's socket: it counts the API requests gantry
//! makes and can cut every connection (and refuse new ones) until it is restored, as a
//! dockerd that went away would.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    /// `METHOD path` of every request seen, in order.
    requests: Mutex<Vec<String>>,
    open: Mutex<Vec<UnixStream>>,
    cut: AtomicBool,
    stop: AtomicBool,
}

pub struct DockerProxy {
    shared: Arc<Shared>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl DockerProxy {
    /// Listens on a fresh socket and forwards to `target` (a unix socket path).
    pub fn start(target: &Path) -> DockerProxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared::default());
        let (s, target) = (shared.clone(), target.to_path_buf());
        std::thread::spawn(move || accept_loop(listener, target, s));
        DockerProxy {
            shared,
            path,
            _dir: dir,
        }
    }

    /// `unix://` address for gantry's config.
    pub fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// The requests seen so far (`GET /containers/json`, ...).
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.shared.requests.lock().unwrap().clear();
    }

    /// Closes every connection and refuses new ones until [`DockerProxy::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for s in self.shared.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn accept_loop(listener: UnixListener, target: PathBuf, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        if shared.cut.load(Ordering::SeqCst) {
            continue; // dropped: refused
        }
        client.set_nonblocking(false).unwrap();
        let Ok(server) = UnixStream::connect(&target) else {
            continue;
        };
        {
            let mut open = shared.open.lock().unwrap();
            open.push(client.try_clone().unwrap());
            open.push(server.try_clone().unwrap());
        }
        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let s = shared.clone();
        std::thread::spawn(move || upstream(client, server, s));
        std::thread::spawn(move || copy(s2, c2));
    }
}

/// Client to dockerd, noting each request line.
fn upstream(mut from: UnixStream, mut to: UnixStream, shared: Arc<Shared>) {
    let mut parser = Requests::default();
    let mut buf = [0u8; 16384];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for r in parser.feed(&buf[..n]) {
            shared.requests.lock().unwrap().push(r);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn copy(mut from: UnixStream, mut to: UnixStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Finds request heads in a client's byte stream: a head, then a body of Content-Length
/// bytes (a chunked body ends the counting for that connection: none is sent by reads).
#[derive(Default)]
struct Requests {
    pending: Vec<u8>,
    skip: usize,
    lost: bool,
}

impl Requests {
    fn feed(&mut self, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        if self.lost {
            return out;
        }
        let mut data = data;
        let skipped = self.skip.min(data.len());
        self.skip -= skipped;
        data = &data[skipped..];
        self.pending.extend_from_slice(data);
        while let Some(end) = find(&self.pending, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
            let rest = self.pending.split_off(end + 4);
            self.pending = rest;
            let line = head.lines().next().unwrap_or_default();
            let mut parts = line.split_whitespace();
            out.push(format!(
                "{} {}",
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("")
            ));
            let lower = head.to_ascii_lowercase();
            if lower.contains("transfer-encoding: chunked") {
                self.lost = true;
                return out;
            }
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let now = length.min(self.pending.len());
            self.pending.drain(..now);
            self.skip = length - now;
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
