//! Routes of older Transfer App versions that clients still speak:
//! v2.2.2-inst-dev `PUT /compose/start|stop?name=&version=` (its `POST /transfer/import` and
//! `GET /transfer/apps` are the v1 routes, reached version-less through `/api/...`), and
//! v3.1 `GET/PUT /devicename` and `GET /transfer/recognize` (DockerApp).

use hyper::{Method, StatusCode};
use serde::Serialize;

use super::apps::{start_app, stop_app};
use super::{Call, Handler, Problem, Reply};
use crate::api::http;
use crate::api::router::Routes;
use crate::core::apps::lifecycle::StopOptions;
use crate::core::apps::recognize::AppContainer;
use crate::core::apps::AppId;

pub fn register(r: &mut Routes<Handler>) {
    r.add(Method::PUT, "/compose/start", |c| {
        Box::pin(compose_start(c))
    })
    .add(Method::PUT, "/compose/stop", |c| Box::pin(compose_stop(c)))
    .add(Method::GET, "/devicename", |c| Box::pin(device_name(c)))
    .add(Method::PUT, "/devicename", |c| Box::pin(set_device_name(c)))
    .add(Method::GET, "/transfer/recognize", |c| {
        Box::pin(recognize(c))
    });
}

/// `?name=&version=` -> the app id `{name}:{version}`; either missing or blank is 400.
fn named_app(c: &Call) -> Result<AppId, Problem> {
    let get = |key: &str| {
        c.query
            .get(key)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| Problem::bad_request(format!("query parameter '{key}' not given")))
    };
    let name = get("name")?;
    let version = get("version")?;
    Ok(AppId::new(name, version))
}

/// v2.2.2 `PUT /compose/start?name=&version=`: DockerComposeUpResult, as the v1 start.
async fn compose_start(c: Call) -> Reply {
    start_app(&c, named_app(&c)?).await
}

/// v2.2.2 `PUT /compose/stop?name=&version=`: ProcessResult (`down`, images and volumes kept).
async fn compose_stop(c: Call) -> Reply {
    stop_app(&c, named_app(&c)?, StopOptions::default()).await
}

/// v3.1: the name set, else the host name, as a JSON string; 204 when neither is known.
async fn device_name(c: Call) -> Reply {
    match c.core.prefs.device_name() {
        Some(name) => Ok(http::json(StatusCode::OK, &name)),
        None => Ok(http::empty(StatusCode::NO_CONTENT)),
    }
}

/// v3.1 `PUT /devicename?name=`: 200 with the name as stored (a JSON string).
async fn set_device_name(c: Call) -> Reply {
    let Some(name) = c.query.get("name") else {
        return Err(Problem::bad_request("query parameter 'name' not given"));
    };
    let name = name.to_string();
    let core = c.core.clone();
    let stored = name.clone();
    tokio::task::spawn_blocking(move || core.prefs.set_device_name(&stored))
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(http::json(StatusCode::OK, &name))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AppContainerJson<'a> {
    image: &'a str,
    ports: &'a [u16],
    status: &'a str,
    container_id: &'a str,
    names: &'a [String],
}

/// DockerApp, plus `Name` (the compose project) so that clients can tell apps apart.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct DockerApp<'a> {
    name: &'a str,
    frontend: Option<AppContainerJson<'a>>,
    middlelayer: Option<AppContainerJson<'a>>,
}

fn app_container(c: &AppContainer) -> AppContainerJson<'_> {
    AppContainerJson {
        image: &c.image,
        ports: &c.ports,
        status: &c.status,
        container_id: &c.id,
        names: &c.names,
    }
}

/// v3.1 `GET /transfer/recognize`: DockerApp[] (one per compose project); 204 when none.
async fn recognize(c: Call) -> Reply {
    let apps = c.core.apps.recognize_apps().await?;
    if apps.is_empty() {
        return Ok(http::empty(StatusCode::NO_CONTENT));
    }
    let body: Vec<DockerApp> = apps
        .iter()
        .map(|a| DockerApp {
            name: &a.project,
            frontend: a.frontend.as_ref().map(app_container),
            middlelayer: a.middlelayer.as_ref().map(app_container),
        })
        .collect();
    Ok(http::json(StatusCode::OK, &body))
}
