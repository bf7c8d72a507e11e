//! The containers' unix sockets: gantry listens on `<socket_dir>/<name>.sock`, which is
//! mounted at the container's `/var/run/kawaflow.sock`. Frames both ways are a 4-byte
//! big-endian length and that many bytes of UTF-8 JSON.
//!
//! Each socket is served by its own tasks, so nothing a container does can hold up another
//! container, a client or the daemon: a container that never connects only makes sends fail
//! fast (`Connection`), one that stops reading makes its sends time out and its connection
//! reset (`Timeout`), and one that sends an oversize length, a stalled frame or bytes that
//! are not JSON has that frame refused (a `SocketFailed` event) and its connection reset. The
//! newest connection wins: a container that reconnects replaces its old connection.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::error::{FlowError, SocketFailure};
use super::{fdstore, FlowEvent};

/// Frames waiting for a container's writer; a sender waits (within its timeout) when full.
const QUEUE: usize = 16;

/// What every socket shares.
pub struct Hub {
    pub dir: PathBuf,
    max_frame: u32,
    timeout: Duration,
    events: broadcast::Sender<Arc<FlowEvent>>,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
    /// Listening sockets systemd passed at start, not yet claimed by a container.
    inherited: Mutex<HashMap<String, OwnedFd>>,
    stop: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One container's socket.
pub struct Endpoint {
    pub name: String,
    pub path: PathBuf,
    container: Mutex<String>,
    peer: Mutex<Option<Peer>>,
    last: Mutex<Option<SystemTime>>,
    generation: AtomicU64,
    close: CancellationToken,
}

#[derive(Clone)]
struct Peer {
    generation: u64,
    tx: mpsc::Sender<Outgoing>,
    reset: CancellationToken,
}

struct Outgoing {
    frame: Vec<u8>,
    done: oneshot::Sender<Result<(), SocketFailure>>,
}

fn setup_error(path: &Path, what: impl std::fmt::Display) -> FlowError {
    FlowError::socket(
        SocketFailure::Setup,
        format!(
            "cannot serve the container socket {}: {what}",
            path.display()
        ),
    )
}

/// Binds a new listening socket at `path`, replacing a stale socket file (never anything
/// else), readable and writable by the container's user whoever it is.
fn bind_fresh(path: &Path) -> Result<std::os::unix::net::UnixListener, FlowError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| setup_error(path, e))?;
        }
        Ok(_) => return Err(setup_error(path, "the path exists and is not a socket")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(setup_error(path, e)),
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| setup_error(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| setup_error(path, e))?;
    Ok(l)
}

impl Hub {
    pub fn new(
        dir: PathBuf,
        max_frame: u32,
        timeout: Duration,
        events: broadcast::Sender<Arc<FlowEvent>>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            dir,
            max_frame,
            timeout,
            events,
            endpoints: Mutex::default(),
            inherited: Mutex::new(fdstore::inherited()),
            stop,
        }
    }

    /// Where the socket of container `name` lives on the host.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Endpoint>> {
        lock(&self.endpoints).get(name).cloned()
    }

    /// The listener systemd kept for `name` when it still listens at `path`.
    fn adopt(&self, name: &str, path: &Path) -> Option<std::os::unix::net::UnixListener> {
        let fd = lock(&self.inherited).remove(name)?;
        let l = std::os::unix::net::UnixListener::from(fd);
        let bound = l.local_addr().ok()?.as_pathname().map(Path::to_path_buf);
        (bound.as_deref() == Some(path)).then_some(l)
    }

    /// Serves the socket of container `name` (id `container`) at `path`: the one systemd
    /// kept across a restart, or a new one.
    pub fn open(
        self: &Arc<Self>,
        name: &str,
        container: &str,
        path: &Path,
    ) -> Result<Arc<Endpoint>, FlowError> {
        if let Some(ep) = self.get(name) {
            ep.set_container(container);
            return Ok(ep);
        }
        let (std_listener, kept) = match self.adopt(name, path) {
            Some(l) => (l, true),
            None => (bind_fresh(path)?, false),
        };
        if !kept {
            fdstore::store(name, std_listener.as_fd());
        }
        std_listener
            .set_nonblocking(true)
            .map_err(|e| setup_error(path, e))?;
        let listener = UnixListener::from_std(std_listener).map_err(|e| setup_error(path, e))?;
        let ep = Arc::new(Endpoint {
            name: name.to_string(),
            path: path.to_path_buf(),
            container: Mutex::new(container.to_string()),
            peer: Mutex::default(),
            last: Mutex::default(),
            generation: AtomicU64::new(0),
            close: self.stop.child_token(),
        });
        lock(&self.endpoints).insert(name.to_string(), ep.clone());
        tokio::spawn(accept_loop(self.clone(), ep.clone(), listener));
        tracing::debug!(container = %name, socket = %path.display(), kept, "container socket open");
        Ok(ep)
    }

    /// Stops serving the socket of `name` and removes its file.
    pub fn close(&self, name: &str) {
        let Some(ep) = lock(&self.endpoints).remove(name) else {
            return;
        };
        ep.close.cancel();
        let _ = std::fs::remove_file(&ep.path);
        fdstore::remove(name);
    }

    /// Drops the sockets systemd kept for containers that are gone.
    pub fn forget_unclaimed(&self) {
        for (name, _fd) in lock(&self.inherited).drain() {
            tracing::info!(container = %name, "dropping the kept socket of a container that is gone");
            fdstore::remove(&name);
        }
    }

    fn fail(&self, ep: &Endpoint, failure: SocketFailure, message: String) {
        tracing::info!(container = %ep.name, %message, "container socket: frame refused");
        let _ = self.events.send(Arc::new(FlowEvent::SocketFailed {
            id: ep.container_id(),
            name: ep.name.clone(),
            error: FlowError::socket(failure, message),
        }));
    }
}

impl Endpoint {
    pub fn container_id(&self) -> String {
        lock(&self.container).clone()
    }

    pub fn set_container(&self, id: &str) {
        *lock(&self.container) = id.to_string();
    }

    pub fn connected(&self) -> bool {
        lock(&self.peer).is_some()
    }

    pub fn last_communication(&self) -> Option<SystemTime> {
        *lock(&self.last)
    }

    fn touch(&self) {
        *lock(&self.last) = Some(SystemTime::now());
    }

    /// Writes `frame` (length included) to the connected container within `timeout`.
    pub async fn send(&self, frame: Vec<u8>, timeout: Duration) -> Result<(), FlowError> {
        let not_connected = || {
            FlowError::socket(
                SocketFailure::Connection,
                format!(
                    "container {} is not connected to its socket {}",
                    self.name,
                    self.path.display()
                ),
            )
        };
        let timed_out = || {
            FlowError::socket(
                SocketFailure::Timeout,
                format!(
                    "container {} did not read the message within {} s",
                    self.name,
                    timeout.as_secs_f32()
                ),
            )
        };
        let Some(peer) = lock(&self.peer).clone() else {
            return Err(not_connected());
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let (done, result) = oneshot::channel();
        match tokio::time::timeout_at(deadline, peer.tx.send(Outgoing { frame, done })).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => return Err(not_connected()),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, result).await {
            Err(_) | Ok(Ok(Err(SocketFailure::Timeout))) => Err(timed_out()),
            Ok(Ok(Ok(()))) => {
                self.touch();
                Ok(())
            }
            Ok(_) => Err(not_connected()),
        }
    }

    /// Takes a new connection: the previous one (if any) is reset.
    fn attach(self: &Arc<Self>, hub: &Arc<Hub>, stream: UnixStream) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let (tx, rx) = mpsc::channel(QUEUE);
        let reset = self.close.child_token();
        let previous = lock(&self.peer).replace(Peer {
            generation,
            tx,
            reset: reset.clone(),
        });
        if let Some(p) = previous {
            p.reset.cancel();
        }
        let (rd, wr) = stream.into_split();
        tokio::spawn(write_frames(wr, rx, reset.clone(), hub.timeout));
        let (hub, ep) = (hub.clone(), self.clone());
        tokio::spawn(async move {
            read_frames(&hub, &ep, rd, &reset).await;
            reset.cancel();
            let mut peer = lock(&ep.peer);
            if peer.as_ref().is_some_and(|p| p.generation == generation) {
                *peer = None;
            }
        });
    }
}

/// Encodes one frame: the body's length (big-endian) and the body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

async fn accept_loop(hub: Arc<Hub>, ep: Arc<Endpoint>, listener: UnixListener) {
    loop {
        let accepted = tokio::select! {
            _ = ep.close.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                tracing::debug!(container = %ep.name, "container connected to its socket");
                ep.attach(&hub, stream);
            }
            Err(e) => {
                tracing::warn!(container = %ep.name, error = %e, "accept on a container socket failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads frames until the connection ends, is reset, or sends something that is not a frame.
async fn read_frames(hub: &Hub, ep: &Endpoint, mut rd: OwnedReadHalf, reset: &CancellationToken) {
    loop {
        let mut len = [0u8; 4];
        tokio::select! {
            _ = reset.cancelled() => return,
            r = rd.read_exact(&mut len) => if r.is_err() { return },
        }
        let n = u32::from_be_bytes(len);
        if n > hub.max_frame {
            let m = format!(
                "the container sent a frame of {n} bytes, over the limit of {}",
                hub.max_frame
            );
            return hub.fail(ep, SocketFailure::Communication, m);
        }
        let mut body = vec![0u8; n as usize];
        let started = Instant::now();
        let read = tokio::select! {
            _ = reset.cancelled() => return,
            r = tokio::time::timeout(hub.timeout, rd.read_exact(&mut body)) => r,
        };
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                let m = format!(
                    "the container stalled inside a frame of {n} bytes for {:?}",
                    started.elapsed()
                );
                return hub.fail(ep, SocketFailure::Timeout, m);
            }
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(message) => deliver(hub, ep, message),
            Err(e) => {
                let m = format!("the container sent a frame that is not UTF-8 JSON: {e}");
                return hub.fail(ep, SocketFailure::Communication, m);
            }
        }
    }
}

fn deliver(hub: &Hub, ep: &Endpoint, message: Value) {
    ep.touch();
    let _ = hub.events.send(Arc::new(FlowEvent::MessageReceived {
        id: ep.container_id(),
        name: ep.name.clone(),
        message,
        at: SystemTime::now(),
    }));
}

/// Writes queued frames, each within `timeout`; a frame that cannot be written in time or at
/// all ends the connection (a half-written frame leaves nothing usable on it).
async fn write_frames(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    reset: CancellationToken,
    timeout: Duration,
) {
    loop {
        let out = tokio::select! {
            _ = reset.cancelled() => break,
            o = rx.recv() => match o { Some(o) => o, None => break },
        };
        if out.done.is_closed() {
            continue;
        }
        let result = match tokio::time::timeout(timeout, wr.write_all(&out.frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SocketFailure::Connection),
            Err(_) => Err(SocketFailure::Timeout),
        };
        let _ = out.done.send(result);
        if let Err(f) = result {
            // Frames queued behind this one fail the same way.
            reset.cancel();
            drain(&mut rx, f);
            return;
        }
    }
    drain(&mut rx, SocketFailure::Connection);
}

fn drain(rx: &mut mpsc::Receiver<Outgoing>, failure: SocketFailure) {
    rx.close();
    while let Ok(o) = rx.try_recv() {
        let _ = o.done.send(Err(failure));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn hub(dir: &Path) -> (Arc<Hub>, broadcast::Receiver<Arc<FlowEvent>>) {
        let (tx, rx) = broadcast::channel(16);
        let hub = Hub::new(
            dir.to_path_buf(),
            64,
            Duration::from_millis(300),
            tx,
            CancellationToken::new(),
        );
        (Arc::new(hub), rx)
    }

    async fn connected(ep: &Endpoint, path: &Path) -> UnixStream {
        let s = UnixStream::connect(path).await.unwrap();
        for _ in 0..100 {
            if ep.connected() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the endpoint did not take the connection");
    }

    #[tokio::test]
    async fn frames_flow_both_ways_and_garbage_resets_only_that_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, mut events) = hub(dir.path()).await;
        let path = hub.path_of("c1");
        let ep = hub.open("c1", "id1", &path).unwrap();
        let e = ep
            .send(frame(b"{}"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                FlowError::Socket {
                    failure: SocketFailure::Connection,
                    ..
                }
            ),
            "{e}"
        );
        let mut peer = connected(&ep, &path).await;
        ep.send(frame(br#"{"a":1}"#), Duration::from_secs(1))
            .await
            .unwrap();
        let mut got = [0u8; 11];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\0\0\0\x07{\"a\":1}");
        peer.write_all(&frame(b"[1,2]")).await.unwrap();
        match &*events.recv().await.unwrap() {
            FlowEvent::MessageReceived { id, message, .. } => {
                assert_eq!((id.as_str(), message), ("id1", &serde_json::json!([1, 2])));
            }
            other => panic!("{other:?}"),
        }
        // Over the limit: refused, the connection reset.
        peer.write_all(&1000u32.to_be_bytes()).await.unwrap();
        match &*events.recv().await.unwrap() {
            FlowEvent::SocketFailed { error, .. } => {
                assert!(error.to_string().contains("over the limit"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(peer.read(&mut got).await.unwrap(), 0, "reset");
        // Not JSON, and a stalled frame: the same.
        for bad in [&frame(b"nope")[..], &[0, 0, 0, 9, b'{'][..]] {
            let mut peer = connected(&ep, &path).await;
            peer.write_all(bad).await.unwrap();
            assert!(matches!(
                *events.recv().await.unwrap(),
                FlowEvent::SocketFailed { .. }
            ));
            assert_eq!(peer.read(&mut got).await.unwrap(), 0, "reset");
        }
        hub.close("c1");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_peer_that_does_not_read_times_out_without_holding_up_another() {
        let dir = tempfile::tempdir().unwrap();
        let (hub, _events) = hub(dir.path()).await;
        let (slow_path, fast_path) = (hub.path_of("slow"), hub.path_of("fast"));
        let slow = hub.open("slow", "s", &slow_path).unwrap();
        let fast = hub.open("fast", "f", &fast_path).unwrap();
        let _slow_peer = connected(&slow, &slow_path).await;
        let mut fast_peer = connected(&fast, &fast_path).await;
        let big = frame(&vec![b' '; 4 << 20]);
        let started = std::time::Instant::now();
        let (stuck, quick) = tokio::join!(slow.send(big, Duration::from_secs(2)), async {
            fast.send(frame(b"1"), Duration::from_secs(2))
                .await
                .unwrap();
            let mut b = [0u8; 5];
            fast_peer.read_exact(&mut b).await.unwrap();
            started.elapsed()
        });
        let timed_out = matches!(
            stuck,
            Err(FlowError::Socket {
                failure: SocketFailure::Timeout,
                ..
            })
        );
        assert!(timed_out, "{stuck:?}");
        assert!(
            quick < Duration::from_secs(1),
            "the other socket waited {quick:?}"
        );
        for _ in 0..100 {
            if !slow.connected() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the slow reader's connection is not reset");
    }
}
