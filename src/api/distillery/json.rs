//! The JSON API: who the token is (`auth`), the app instances (`systems`), recent app
//! events (`news`) and the snapshots written (`snapshots`, gantry's addition). Field names
//! are PascalCase, as the original's Go structs marshal.

use hyper::StatusCode;
use serde::Serialize;

use super::status_of;
use crate::api::http::{self, Response};
use crate::core::apps::lifecycle::{AppStatus, AppView};
use crate::core::apps::store::rfc3339;
use crate::core::events::AppEvent;
use crate::core::{Core, CoreError};
use crate::server::ws::Refusal;

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct System {
    /// The compose project slug, which calls accept besides the id.
    slug: String,
    id: String,
    name: String,
    version: String,
    status: &'static str,
    busy: bool,
    containers: Vec<Container>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Container {
    name: String,
    image: String,
    running: bool,
    /// Docker's status text (`Up 3 minutes (healthy)`).
    status: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NewsItem {
    time: String,
    /// `App` (a status change), `Import`, `Remove` or `Refresh`.
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<System>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refreshing: Option<bool>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Listed {
    name: String,
    time: String,
    size: u64,
    backup: bool,
}

fn refusal(e: CoreError) -> Refusal {
    Refusal {
        status: status_of(e.kind()),
        message: e.to_string(),
    }
}

fn status_name(s: AppStatus) -> &'static str {
    match s {
        AppStatus::Running => "Running",
        AppStatus::PartiallyRunning => "Partially Running",
        AppStatus::Stopped => "Stopped",
        AppStatus::Unknown => "Unknown",
    }
}

fn system(v: &AppView) -> System {
    let config = v.app.config();
    System {
        slug: v.app.id().slug(),
        id: v.app.id().to_string(),
        name: config.name.clone(),
        version: config.version.clone(),
        status: status_name(v.status),
        busy: v.busy,
        containers: v
            .containers
            .iter()
            .map(|c| Container {
                name: c.name.clone(),
                image: c.image.clone(),
                running: c.running,
                status: c.status.clone(),
            })
            .collect(),
    }
}

/// `{"Name": <the token's name>}`.
pub fn auth(client: &str) -> Response {
    http::json(StatusCode::OK, &serde_json::json!({ "Name": client }))
}

/// Every app instance with its status.
pub async fn systems(core: &Core) -> Result<Response, Refusal> {
    let apps = core.apps.list().await.map_err(refusal)?;
    let systems: Vec<System> = apps.iter().map(system).collect();
    Ok(http::json(StatusCode::OK, &systems))
}

/// The recent app events, newest first.
pub fn news(core: &Core) -> Response {
    let items: Vec<NewsItem> = core
        .apps
        .events()
        .recent()
        .into_iter()
        .rev()
        .map(|(time, event)| {
            let (kind, view, refreshing) = match &*event {
                AppEvent::App(v) => ("App", Some(v), None),
                AppEvent::Import(v) => ("Import", Some(v), None),
                AppEvent::Remove(v) => ("Remove", Some(v), None),
                AppEvent::Refresh(r) => ("Refresh", None, Some(*r)),
            };
            NewsItem {
                time: rfc3339(time),
                kind,
                system: view.map(system),
                refreshing,
            }
        })
        .collect();
    http::json(StatusCode::OK, &items)
}

/// The snapshots and backups written, oldest first.
pub fn snapshots(core: &Core) -> Result<Response, Refusal> {
    let Some(dir) = &core.snapshots else {
        return Ok(http::json(StatusCode::OK, &Vec::<Listed>::new()));
    };
    let list: Vec<Listed> = dir
        .list()
        .map_err(refusal)?
        .into_iter()
        .map(|s| Listed {
            name: s.name,
            time: rfc3339(s.created),
            size: s.size,
            backup: s.backup,
        })
        .collect();
    Ok(http::json(StatusCode::OK, &list))
}
