//! What keeps one listener from being starved: a cap on open connections that closes the
//! oldest idle one to make room (so `/healthz` and a real request still get in while
//! thousands of stalled connections knock), a few connections beyond the cap that may only
//! ask `/healthz`, a cap on concurrent uploads, a stall timeout for request bodies, and the
//! process's file descriptor limit raised to what systemd's `LimitNOFILE=` allows.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::api::http::Body;

/// Connections accepted beyond the cap when none is idle: they are answered `/healthz` only.
pub const OVERLOAD_RESERVE: usize = 16;

/// One open connection, as the table sees it.
struct Entry {
    /// Requests in flight (a response body still streaming counts).
    busy: AtomicUsize,
    /// When it last became idle (a counter, larger is later).
    stamp: AtomicU64,
    /// Closes the connection.
    abort: CancellationToken,
}

/// The open connections of one listener.
pub struct ConnTable {
    cap: usize,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Entry>>>,
    overload: AtomicUsize,
}

/// A connection's place in its table; leaves it when dropped.
pub struct Slot {
    table: Arc<ConnTable>,
    id: u64,
    entry: Arc<Entry>,
    /// Beyond the cap: only `/healthz` is served.
    pub overload: bool,
}

impl ConnTable {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            next: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
            overload: AtomicUsize::new(0),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection whose closing is `abort`: at the cap, the oldest idle
    /// connection is closed to make room; with none idle, a place beyond the cap (overload)
    /// while [`OVERLOAD_RESERVE`] allows; else None (the caller drops the connection).
    pub fn admit(self: &Arc<Self>, abort: CancellationToken) -> Option<Slot> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            busy: AtomicUsize::new(0),
            stamp: AtomicU64::new(id),
            abort,
        });
        let mut open = self.map();
        let mut overload = false;
        if open.len() >= self.cap {
            match oldest_idle(&open) {
                Some(victim) => {
                    if let Some(e) = open.remove(&victim) {
                        e.abort.cancel();
                    }
                }
                None if self.overload.load(Ordering::SeqCst) < OVERLOAD_RESERVE => overload = true,
                None => return None,
            }
        }
        if overload {
            self.overload.fetch_add(1, Ordering::SeqCst);
        } else {
            open.insert(id, entry.clone());
        }
        drop(open);
        Some(Slot {
            table: self.clone(),
            id,
            entry,
            overload,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

fn oldest_idle(open: &HashMap<u64, Arc<Entry>>) -> Option<u64> {
    open.iter()
        .filter(|(_, e)| e.busy.load(Ordering::SeqCst) == 0)
        .min_by_key(|(_, e)| e.stamp.load(Ordering::SeqCst))
        .map(|(id, _)| *id)
}

impl Slot {
    /// Marks a request in flight until the returned guard (held by its response body) drops.
    pub fn busy(&self) -> BusyGuard {
        self.entry.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard {
            entry: self.entry.clone(),
            table: self.table.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.overload {
            self.table.overload.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.table.map().remove(&self.id);
        }
    }
}

/// A request in flight on a connection.
pub struct BusyGuard {
    entry: Arc<Entry>,
    table: Arc<ConnTable>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let now = self.table.next.fetch_add(1, Ordering::Relaxed);
        self.entry.stamp.store(now, Ordering::SeqCst);
        self.entry.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its connection busy until it ended or was dropped.
struct Guarded {
    inner: Body,
    _busy: BusyGuard,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `body`, keeping `busy` until it is done.
pub fn guard_body(body: Body, busy: BusyGuard) -> Body {
    Guarded {
        inner: body,
        _busy: busy,
    }
    .boxed_unsync()
}

/// At most `cap` uploads at once on a listener.
#[derive(Clone)]
pub struct Uploads {
    permits: Arc<Semaphore>,
    cap: usize,
}

impl Uploads {
    pub fn new(cap: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(cap)),
            cap,
        }
    }

    /// A place for one upload, held until dropped; the message says why there is none.
    pub fn begin(&self) -> Result<OwnedSemaphorePermit, String> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            format!(
                "this listener already receives {} uploads, its limit \
                 (http.max_concurrent_uploads): try again when one has ended",
                self.cap
            )
        })
    }
}

/// The data of a request body, failing with `TimedOut` when nothing arrives for `stall`.
pub fn timed_body(
    body: Incoming,
    stall: Duration,
) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static {
    let mut body = body;
    let mut sleep = Box::pin(tokio::time::sleep(stall));
    futures_util::stream::poll_fn(move |cx| loop {
        match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                sleep.as_mut().reset(tokio::time::Instant::now() + stall);
                match frame.into_data() {
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    Err(_) => continue, // trailers
                }
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(io::Error::other(e)))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the request body sent nothing for {} s (http.body_read_timeout_secs)",
                            stall.as_secs()
                        ),
                    ))));
                }
                return Poll::Pending;
            }
        }
    })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (systemd's `LimitNOFILE=` sets both):
/// every connection is a descriptor, and the default soft limit of 1024 would make the
/// connection cap unreachable.
pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_makes_room() {
        let t = ConnTable::new(3);
        let tokens: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
        let slots: Vec<Slot> = tokens.iter().map(|a| t.admit(a.clone()).unwrap()).collect();
        // The first is busy: the second is the oldest idle one.
        let busy = slots[0].busy();
        let fourth = CancellationToken::new();
        let s4 = t.admit(fourth.clone()).unwrap();
        assert!(!s4.overload);
        assert!(!tokens[0].is_cancelled() && tokens[1].is_cancelled());
        assert_eq!(t.len(), 3);
        // The first, idle again, became the newest idle one: the third goes next.
        drop(busy);
        let _s5 = t.admit(CancellationToken::new()).unwrap();
        assert!(tokens[2].is_cancelled() && !tokens[0].is_cancelled());
    }

    #[test]
    fn with_every_connection_busy_a_few_get_in_for_healthz_only() {
        let t = ConnTable::new(1);
        let first = t.admit(CancellationToken::new()).unwrap();
        let _busy = first.busy();
        let extra: Vec<Slot> = (0..OVERLOAD_RESERVE)
            .map(|_| t.admit(CancellationToken::new()).unwrap())
            .collect();
        assert!(extra.iter().all(|s| s.overload));
        assert!(t.admit(CancellationToken::new()).is_none());
        drop(extra);
        assert!(t.admit(CancellationToken::new()).unwrap().overload);
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_one() {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // A lower soft limit, as a shell or a unit without LimitNOFILE= gives.
        let low = hard.min(1024) / 2;
        setrlimit(Resource::RLIMIT_NOFILE, low, hard).unwrap();
        raise_nofile();
        let raised = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
        assert_eq!(raised, (hard, hard));
    }

    #[test]
    fn uploads_are_capped() {
        let u = Uploads::new(2);
        let a = u.begin().unwrap();
        let _b = u.begin().unwrap();
        assert!(u.begin().unwrap_err().contains("max_concurrent_uploads"));
        drop(a);
        assert!(u.begin().is_ok());
    }
}
