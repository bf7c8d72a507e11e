//! gantry's core: behaviour and state, with no knowledge of HTTP or any wire format.

pub mod apps;
pub mod compose;
pub mod docker;
pub mod engine;
pub mod events;
pub mod health;
pub mod intervirt;
pub mod network;
pub mod power;
pub mod prefs;
pub mod system;
pub mod tasks;

use std::sync::Arc;

use engine::{ContainerEngine, EngineError};

/// Errors the core reports to the API dialects, which map them to their own formats.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CoreError {
    /// The caller sent something unusable (bad id, not a tar, ...).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with current state (image in use, container running, ...).
    #[error("{0}")]
    Conflict(String),
    /// A dependency (Docker) cannot be reached right now; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
    /// Another operation on the same object is in flight.
    #[error("{0}")]
    Busy(String),
    /// The caller cancelled the operation; it was rolled back.
    #[error("{0}")]
    Cancelled(String),
}

impl From<EngineError> for CoreError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(m) => CoreError::NotFound(m),
            EngineError::Conflict(m) => CoreError::Conflict(m),
            EngineError::Rejected(m) => CoreError::Invalid(m),
            e @ EngineError::Unavailable(_) => CoreError::Unavailable(e.to_string()),
            e @ EngineError::Failed(_) => CoreError::Failed(e.to_string()),
        }
    }
}

pub type CoreResult<T> = Result<T, CoreError>;

/// Everything the dialects call into, built once at start.
pub struct Core {
    pub system: system::SystemModule,
    pub apps: apps::lifecycle::Apps,
    pub engine_health: health::EngineHealth,
    /// The Intervirt guest agent, when an Intervirt listener is configured.
    pub intervirt: Option<Arc<intervirt::IntervirtAgent>>,
    /// Long operations in flight, cancellable by id (`PUT /api/cancel/{id}`).
    pub tasks: tasks::TaskRegistry,
    /// The device name and key/value settings (persisted in the state directory).
    pub prefs: prefs::Prefs,
}

impl Core {
    pub fn new(
        engine: Arc<dyn ContainerEngine>,
        engine_health: health::EngineHealth,
        apps: apps::lifecycle::Apps,
    ) -> Self {
        Self {
            system: system::SystemModule::new(engine),
            apps,
            engine_health,
            intervirt: None,
            tasks: tasks::TaskRegistry::default(),
            prefs: prefs::Prefs::in_memory(),
        }
    }

    pub fn with_prefs(mut self, prefs: prefs::Prefs) -> Self {
        self.prefs = prefs;
        self
    }

    pub fn with_intervirt(mut self, agent: Option<Arc<intervirt::IntervirtAgent>>) -> Self {
        self.intervirt = agent;
        self
    }
}
