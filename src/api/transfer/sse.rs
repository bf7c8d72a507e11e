//! `GET /api/events` (any version form) and legacy `GET /events`: server-sent events from
//! the core's event bus (src/core/events.rs).
//!
//! Wire format (docs/DECISIONS.md, "SSE events"): `event: <Channel>` and one `data:` line of
//! compact PascalCase JSON per event; channels App, Import, Remove (an AppInstance exactly as
//! the REST routes render it) and Refresh (`true`/`false`); a first `status` event
//! `{"Status":"Connected","Refreshing":<bool>}` on connect and a last `{"Status":
//! "ShuttingDown"}` when the server stops; `: keep-alive` comment lines every
//! `http.sse_keepalive_secs`.
//!
//! A client is never waited for: the bus keeps a fixed ring of events, and a client more
//! than `http.sse_queue_events` events behind (its socket buffers are full, it is not
//! reading) has its connection closed by the server (`ConnectionAbort`).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CACHE_CONTROL};
use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::apps::instance;
use super::{Call, Handler, Reply};
use crate::api::http;
use crate::api::router::Routes;
use crate::core::events::{AppEvent, Subscription};
use crate::server::conn::ConnectionAbort;

pub fn register(r: &mut Routes<Handler>) {
    r.add(Method::GET, "/events", |c| Box::pin(events(c)));
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Status {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    refreshing: Option<bool>,
}

pub(super) fn frame(channel: &str, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(channel.len() + data.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn status_frame(status: &Status) -> Bytes {
    frame("status", &serde_json::to_vec(status).unwrap_or_default())
}

fn render(event: &AppEvent) -> Bytes {
    let (channel, json) = match event {
        AppEvent::App(v) => ("App", serde_json::to_vec(&instance(v))),
        AppEvent::Import(v) => ("Import", serde_json::to_vec(&instance(v))),
        AppEvent::Remove(v) => ("Remove", serde_json::to_vec(&instance(v))),
        AppEvent::Refresh(b) => ("Refresh", serde_json::to_vec(b)),
    };
    frame(channel, &json.unwrap_or_default())
}

/// Every client renders the same events in the same order: the last few renderings are
/// kept (with their events, so a pointer is never reused while cached) and shared.
fn rendered(event: &Arc<AppEvent>) -> Bytes {
    const KEEP: usize = 8;
    static CACHE: Mutex<Vec<(Arc<AppEvent>, Bytes)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, b)) = cache.iter().find(|(e, _)| Arc::ptr_eq(e, event)) {
        return b.clone();
    }
    let bytes = render(event);
    if cache.len() >= KEEP {
        cache.remove(0);
    }
    cache.push((event.clone(), bytes.clone()));
    bytes
}

struct Feed {
    first: Option<Bytes>,
    events: Subscription,
    keepalive: tokio::time::Interval,
    stop: CancellationToken,
    done: bool,
}

async fn next_chunk(mut feed: Feed) -> Option<(Result<Frame<Bytes>, std::io::Error>, Feed)> {
    if feed.done {
        return None;
    }
    if let Some(first) = feed.first.take() {
        return Some((Ok(Frame::data(first)), feed));
    }
    let bytes = tokio::select! {
        biased;
        _ = feed.stop.cancelled() => {
            feed.done = true;
            status_frame(&Status { status: "ShuttingDown", refreshing: None })
        }
        e = feed.events.next() => match e {
            Ok(event) => rendered(&event),
            // Dropped for lagging (the connection is being aborted) or the bus is gone.
            Err(_) => return None,
        },
        _ = feed.keepalive.tick() => Bytes::from_static(b": keep-alive\n\n"),
    };
    Some((Ok(Frame::data(bytes)), feed))
}

async fn events(c: Call) -> Reply {
    // Without the server's abort handle (never in practice) a laggard's subscription still
    // ends when it next polls.
    let abort = c
        .req
        .extensions()
        .get::<ConnectionAbort>()
        .map(|a| a.0.clone())
        .unwrap_or_default();
    let events = c.core.apps.events().subscribe(abort);
    let first = status_frame(&Status {
        status: "Connected",
        refreshing: Some(c.core.apps.is_refreshing_all()),
    });
    let period = c.limits.sse_keepalive;
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let feed = Feed {
        first: Some(first),
        events,
        keepalive,
        stop: c.sessions.stopping().clone(),
        done: false,
    };
    let stream = futures_util::stream::unfold(feed, next_chunk).boxed();
    let body = StreamBody::new(stream).boxed_unsync();
    let mut resp = http::with_type(StatusCode::OK, "text/event-stream", body);
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) must pass events on at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_follow_the_sse_format() {
        assert_eq!(
            &render(&AppEvent::Refresh(true))[..],
            b"event: Refresh\ndata: true\n\n"
        );
        assert_eq!(
            &status_frame(&Status {
                status: "Connected",
                refreshing: Some(false)
            })[..],
            b"event: status\ndata: {\"Status\":\"Connected\",\"Refreshing\":false}\n\n"
        );
    }

    fn feed(bus: &crate::core::events::EventBus, stop: &CancellationToken) -> Feed {
        let period = std::time::Duration::from_millis(50);
        Feed {
            first: Some(Bytes::from_static(b"first")),
            events: bus.subscribe(CancellationToken::new()),
            keepalive: tokio::time::interval_at(tokio::time::Instant::now() + period, period),
            stop: stop.clone(),
            done: false,
        }
    }

    async fn chunk(f: Feed) -> Option<(Bytes, Feed)> {
        let (frame, f) = next_chunk(f).await?;
        Some((frame.unwrap().into_data().unwrap(), f))
    }

    #[tokio::test]
    async fn events_then_keepalives_then_a_last_status_on_stop() {
        let bus = crate::core::events::EventBus::new(4);
        let stop = CancellationToken::new();
        let f = feed(&bus, &stop);
        let (b, f) = chunk(f).await.unwrap();
        assert_eq!(&b[..], b"first");
        bus.publish(AppEvent::Refresh(true));
        let (b, f) = chunk(f).await.unwrap();
        assert_eq!(&b[..], b"event: Refresh\ndata: true\n\n");
        // Nothing happens until the keep-alive is due.
        let (b, f) = chunk(f).await.unwrap();
        assert_eq!(&b[..], b": keep-alive\n\n");
        stop.cancel();
        bus.publish(AppEvent::Refresh(false));
        let (b, f) = chunk(f).await.unwrap();
        assert_eq!(
            &b[..],
            b"event: status\ndata: {\"Status\":\"ShuttingDown\"}\n\n"
        );
        assert!(chunk(f).await.is_none());
    }

    #[test]
    fn renderings_are_shared_per_event() {
        let e = Arc::new(AppEvent::Refresh(false));
        let a = rendered(&e);
        let b = rendered(&e);
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(&a[..], b"event: Refresh\ndata: false\n\n");
    }
}
