//! gantry's core: behaviour and state, with no knowledge of HTTP or any wire format.

pub mod apps;
pub mod compose;
pub mod docker;
pub mod engine;
pub mod error;
pub mod events;
pub mod fetch;
pub mod flow;
pub mod health;
pub mod intervirt;
pub mod loglines;
pub mod metrics;
pub mod network;
pub mod ops;
#[cfg(feature = "pool")]
pub mod pool;
pub mod power;
pub mod prefs;
pub mod recovery;
pub mod safe_fs;
pub mod services;
pub mod system;
pub mod tasks;
pub mod templates;
pub mod view;

use std::sync::Arc;

use engine::ContainerEngine;
pub use error::{CoreError, CoreResult, ErrorKind};

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
    /// App templates, built on the device (none when not opened).
    pub templates: Option<Arc<templates::Templates>>,
    /// The App Pool (none when not opened).
    #[cfg(feature = "pool")]
    pub pool: Option<Arc<pool::Pool>>,
    /// What every read is served from: apps, containers, images, volumes, kept current from
    /// Docker's events (`view::sync::run` follows them).
    pub view: Arc<view::LiveView>,
    /// Services of the duxcore dialect, when a duxcore listener is configured.
    pub services: Option<Arc<services::Services>>,
    /// Where snapshots and backups of apps go, when configured.
    pub snapshots: Option<Arc<apps::snapshots::Snapshots>>,
    /// The Flow Manager, when a flowmanager listener is configured.
    pub flow: Option<Arc<flow::FlowManager>>,
}

/// A part of the core that may be missing (not configured, or not in this build).
pub fn part<'a, T>(slot: &'a Option<Arc<T>>, missing: &str) -> CoreResult<&'a Arc<T>> {
    slot.as_ref()
        .ok_or_else(|| CoreError::NotFound(missing.to_string()))
}

impl Core {
    pub fn new(
        engine: Arc<dyn ContainerEngine>,
        engine_health: health::EngineHealth,
        apps: apps::lifecycle::Apps,
    ) -> Self {
        let view = apps.view().clone();
        view.follow_health(engine_health.subscribe());
        Self {
            system: system::SystemModule::new(engine, view.clone()),
            view,
            apps,
            engine_health,
            intervirt: None,
            tasks: tasks::TaskRegistry::default(),
            prefs: prefs::Prefs::in_memory(),
            templates: None,
            #[cfg(feature = "pool")]
            pool: None,
            services: None,
            snapshots: None,
            flow: None,
        }
    }

    pub fn with_prefs(mut self, prefs: prefs::Prefs) -> Self {
        self.prefs = prefs;
        self
    }

    /// The templates, when this gantry keeps them.
    pub fn templates(&self) -> CoreResult<&Arc<templates::Templates>> {
        part(&self.templates, "this gantry keeps no templates")
    }

    /// The App Pool.
    #[cfg(feature = "pool")]
    pub fn pool(&self) -> CoreResult<&Arc<pool::Pool>> {
        part(&self.pool, "this gantry runs no app pool")
    }

    pub fn with_templates(mut self, templates: templates::Templates) -> Self {
        self.templates = Some(Arc::new(templates));
        self
    }

    #[cfg(feature = "pool")]
    pub fn with_pool(mut self, pool: pool::Pool) -> Self {
        self.pool = Some(Arc::new(pool));
        self
    }

    pub fn with_services(mut self, services: Option<Arc<services::Services>>) -> Self {
        self.services = services;
        self
    }

    /// The duxcore services, or why there are none.
    pub fn services(&self) -> CoreResult<&Arc<services::Services>> {
        self.services.as_ref().ok_or_else(|| {
            CoreError::Failed("no duxcore listener is configured, so services are off".into())
        })
    }

    pub fn with_snapshots(mut self, snapshots: apps::snapshots::Snapshots) -> Self {
        self.snapshots = Some(Arc::new(snapshots));
        self
    }

    pub fn with_flow(mut self, flow: Option<Arc<flow::FlowManager>>) -> Self {
        self.flow = flow;
        self
    }

    pub fn with_intervirt(mut self, agent: Option<Arc<intervirt::IntervirtAgent>>) -> Self {
        if let Some(a) = &agent {
            a.follow_view(self.view.clone());
        }
        self.intervirt = agent;
        self
    }
}
