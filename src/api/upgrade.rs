//! Connections that left hyper through an upgrade (websockets). hyper's connection future
//! ends at the upgrade, so the server tracks these tasks itself and waits for them at
//! shutdown within the same grace period as any connection.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Closes one HTTP connection at once when cancelled, whether or not hyper is currently
/// polling it (a stream whose client stopped reading is never polled again). The server
/// puts one in every request's extensions.
#[derive(Clone, Default)]
pub struct ConnectionAbort(pub CancellationToken);

#[derive(Clone)]
pub struct Upgrades {
    tasks: Arc<Mutex<JoinSet<()>>>,
    /// Fires when the server stops: upgraded connections close after their work in flight.
    pub stop: CancellationToken,
}

impl Upgrades {
    pub fn new(stop: CancellationToken) -> Self {
        Self {
            tasks: Arc::new(Mutex::new(JoinSet::new())),
            stop,
        }
    }

    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// Takes the tasks spawned so far (for the server to wait for, then abort).
    pub fn take(&self) -> JoinSet<()> {
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
