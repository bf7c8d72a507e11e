//! The apps event bus: typed events for live clients (the Transfer App's SSE stream).
//!
//! Bounded by construction: the bus keeps the last `capacity` events in a ring (tokio's
//! broadcast channel) shared by all subscribers, so a publisher never waits and memory does
//! not grow with slow subscribers. A subscriber that falls more than `capacity` events
//! behind is dropped: its `on_drop` token fires at once (so its owner can close the
//! connection even while nothing polls the subscription) and its next receive ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::apps::lifecycle::AppView;

/// What happened to apps. Views are snapshots taken when the event was published.
#[derive(Debug, Clone)]
pub enum AppEvent {
    /// An app's status changed (running state, busy flag or its containers), by gantry or
    /// behind its back.
    App(AppView),
    /// An app was imported successfully.
    Import(AppView),
    /// An app was removed; the view is its last state before removal.
    Remove(AppView),
    /// Refreshing all apps started (true) or finished (false).
    Refresh(bool),
}

/// Default number of events the ring keeps (and a subscriber may fall behind by).
pub const DEFAULT_CAPACITY: usize = 256;

/// Events kept for [`EventBus::recent`] (the Distillery dialect's news).
pub const RECENT_EVENTS: usize = 64;

/// An event as [`EventBus::recent`] keeps it: when it was published, and the event.
pub type Recorded = (std::time::SystemTime, Arc<AppEvent>);

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The subscriber fell behind by more than the bus's capacity.
    Lagged,
    /// The bus is gone.
    Closed,
}

struct SubState {
    /// Sequence number of the last event this subscriber received.
    seen: AtomicU64,
    on_drop: CancellationToken,
}

struct Shared {
    /// Sequence number of the last event published (events count from 1).
    published: AtomicU64,
    subscribers: Mutex<Vec<Weak<SubState>>>,
    capacity: u64,
    /// The last [`RECENT_EVENTS`] events, oldest first.
    recent: Mutex<std::collections::VecDeque<Recorded>>,
}

#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<(u64, Arc<AppEvent>)>,
    shared: Arc<Shared>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        Self {
            tx,
            shared: Arc::new(Shared {
                published: AtomicU64::new(0),
                subscribers: Mutex::new(Vec::new()),
                capacity: capacity as u64,
                recent: Mutex::new(std::collections::VecDeque::new()),
            }),
        }
    }

    fn subscribers(&self) -> std::sync::MutexGuard<'_, Vec<Weak<SubState>>> {
        self.shared
            .subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes to every subscriber; never waits. Subscribers now more than `capacity`
    /// events behind are dropped.
    pub fn publish(&self, event: AppEvent) {
        // The lock orders sequence numbers with the ring's order.
        let mut subs = self.subscribers();
        let seq = self.shared.published.fetch_add(1, Ordering::SeqCst) + 1;
        let event = Arc::new(event);
        self.record(event.clone());
        let _ = self.tx.send((seq, event));
        subs.retain(|w| {
            let Some(s) = w.upgrade() else {
                return false;
            };
            if seq.saturating_sub(s.seen.load(Ordering::SeqCst)) > self.shared.capacity {
                tracing::info!("dropping an event subscriber that fell behind");
                s.on_drop.cancel();
                return false;
            }
            true
        });
    }

    fn record(&self, event: Arc<AppEvent>) {
        let mut recent = self.shared.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back((std::time::SystemTime::now(), event));
    }

    /// The last events published (at most [`RECENT_EVENTS`]), oldest first.
    pub fn recent(&self) -> Vec<Recorded> {
        let recent = self.shared.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().cloned().collect()
    }

    /// A subscription to events published from now on. `on_drop` fires when the bus drops
    /// the subscriber for lagging.
    pub fn subscribe(&self, on_drop: CancellationToken) -> Subscription {
        let mut subs = self.subscribers();
        let state = Arc::new(SubState {
            seen: AtomicU64::new(self.shared.published.load(Ordering::SeqCst)),
            on_drop,
        });
        subs.retain(|w| w.strong_count() > 0);
        subs.push(Arc::downgrade(&state));
        Subscription {
            rx: self.tx.subscribe(),
            state,
        }
    }

    /// Live subscribers.
    #[cfg(test)]
    pub fn subscriber_count(&self) -> usize {
        let mut subs = self.subscribers();
        subs.retain(|w| w.strong_count() > 0);
        subs.len()
    }
}

pub struct Subscription {
    rx: broadcast::Receiver<(u64, Arc<AppEvent>)>,
    state: Arc<SubState>,
}

impl Subscription {
    /// The next event; after `Err` the subscription is over.
    pub async fn next(&mut self) -> Result<Arc<AppEvent>, Ended> {
        if self.state.on_drop.is_cancelled() {
            return Err(Ended::Lagged);
        }
        match self.rx.recv().await {
            Ok((seq, event)) => {
                self.state.seen.store(seq, Ordering::SeqCst);
                Ok(event)
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.state.on_drop.cancel();
                Err(Ended::Lagged)
            }
            Err(broadcast::error::RecvError::Closed) => Err(Ended::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let bus = EventBus::new(8);
        let mut a = bus.subscribe(CancellationToken::new());
        let mut b = bus.subscribe(CancellationToken::new());
        bus.publish(AppEvent::Refresh(true));
        bus.publish(AppEvent::Refresh(false));
        for s in [&mut a, &mut b] {
            assert!(matches!(*s.next().await.unwrap(), AppEvent::Refresh(true)));
            assert!(matches!(*s.next().await.unwrap(), AppEvent::Refresh(false)));
        }
        assert_eq!(bus.subscriber_count(), 2);
        drop(a);
        assert_eq!(bus.subscriber_count(), 1);
    }

    #[tokio::test]
    async fn a_laggard_is_dropped_without_blocking_the_publisher_or_others() {
        let bus = EventBus::new(4);
        let lag_token = CancellationToken::new();
        let mut laggard = bus.subscribe(lag_token.clone());
        let mut reader = bus.subscribe(CancellationToken::new());
        // Within capacity: nobody is dropped.
        for _ in 0..4 {
            bus.publish(AppEvent::Refresh(true));
            assert!(reader.next().await.is_ok());
        }
        assert!(!lag_token.is_cancelled());
        // One more than the laggard can be behind: it is dropped at publish time, before
        // it ever polls; the publisher did not wait and the reader carries on.
        for i in 0..1000 {
            bus.publish(AppEvent::Refresh(i % 2 == 0));
            assert!(
                matches!(*reader.next().await.unwrap(), AppEvent::Refresh(b) if b == (i % 2 == 0))
            );
        }
        assert!(lag_token.is_cancelled());
        assert_eq!(laggard.next().await.unwrap_err(), Ended::Lagged);
        assert_eq!(bus.subscriber_count(), 1);
    }

    #[tokio::test]
    async fn the_ring_stays_bounded() {
        let bus = EventBus::new(4);
        let _idle = bus.subscribe(CancellationToken::new());
        for _ in 0..100 {
            bus.publish(AppEvent::Refresh(true));
        }
        // tokio's broadcast keeps at most `capacity` values, whoever lags.
        assert!(bus.tx.len() <= 4);
    }

    #[test]
    fn the_last_events_are_kept_for_late_readers() {
        let bus = EventBus::new(4);
        assert!(bus.recent().is_empty());
        for i in 0..RECENT_EVENTS + 3 {
            bus.publish(AppEvent::Refresh(i % 2 == 0));
        }
        let recent = bus.recent();
        assert_eq!(recent.len(), RECENT_EVENTS);
        // The three oldest went: the first kept is the fourth published (odd: false).
        assert!(matches!(*recent[0].1, AppEvent::Refresh(false)));
        assert!(recent.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[tokio::test]
    async fn closing_the_bus_ends_subscriptions() {
        let bus = EventBus::new(4);
        let mut s = bus.subscribe(CancellationToken::new());
        drop(bus);
        assert_eq!(s.next().await.unwrap_err(), Ended::Closed);
    }
}
