//! "App Pool": the store side (`/pool/...`: apps the store offers and the pool keeps) and
//! the transfer side (`/servers`, `/deployments`), and the pool's configuration
//! (`/configure`). The behaviour is the core's (`core::pool`, `core::ops::pool`); see
//! docs/DECISIONS.md ("App Pool") for the wire shapes.

use std::path::PathBuf;

use futures_util::StreamExt;
use hyper::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::apps::{id_param, op_start, with_task};
use super::{Call, Handler, Problem, Reply};
use crate::api::http::{self, declared_too_large};
use crate::api::router::Routes;
use crate::core::apps::AppId;
use crate::core::ops::pool::DeploymentView;
use crate::core::pool::registry::IndexEntry;
use crate::core::pool::servers::ServerView;
use crate::core::pool::PoolApp;
use crate::core::Core;

pub fn register(r: &mut Routes<Handler>) {
    super::route_table!(r;
        "/pool/apps" => GET apps;
        "/pool/apps/{id}" => PUT install, DELETE uninstall;
        "/pool/refresh" => PUT refresh;
        "/pool/clear" => PUT clear;
        "/pool/publish/{id}" => PUT publish;
        "/configure" => GET configuration, PUT configure;
        "/servers" => GET servers, POST add_server;
        "/servers/{id}" => DELETE remove_server;
        "/deployments" => GET deployments, POST deploy;
        "/deployments/{id}" => GET deployment, DELETE undeploy;
        "/deployments/{id}/start" => PUT start;
        "/deployments/{id}/stop" => PUT stop;
    );
}

/// A JSON list, or 204 when empty.
fn list_or_empty(items: Vec<Value>) -> Reply {
    if items.is_empty() {
        return Ok(http::empty(StatusCode::NO_CONTENT));
    }
    Ok(http::json(StatusCode::OK, &items))
}

/// The request body as JSON of type `T`, at most `http.max_body_bytes`; a body that sends
/// nothing for `http.body_read_timeout_secs` fails.
async fn body<T: DeserializeOwned>(c: Call) -> Result<T, Problem> {
    let limit = c.limits.max_body_bytes;
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body exceeds the limit of {limit} bytes"),
        )
    };
    if declared_too_large(c.req.headers(), limit) {
        return Err(too_large());
    }
    let stall = c.limits.body_read_timeout;
    let (mut chunks, exceeded) = http::upload_stream(c.req.into_body(), limit, stall);
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(_) if exceeded.load(std::sync::atomic::Ordering::SeqCst) => return Err(too_large()),
            Err(e) => return Err(Problem::bad_request(format!("cannot read the body: {e}"))),
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| Problem::bad_request(format!("bad JSON body: {e}")))
}

// ---- store side

fn pool_app(a: &PoolApp) -> Value {
    json!({
        "Id": a.id.as_str(),
        "App": a.config,
        "Installed": a.installed,
        "Available": a.available,
        "Size": a.bundle.as_ref().map(|b| b.0),
        "Digest": a.bundle.as_ref().map(|b| &b.1),
    })
}

async fn apps(c: Call) -> Reply {
    let apps = c.core.pool()?.list()?;
    list_or_empty(apps.iter().map(pool_app).collect())
}

/// `PUT /pool/apps/{id}`: downloads the app from the store (resumable, digest-checked,
/// checked as an import is) and answers its PoolApp; `?cancel_id` names the operation.
async fn install(c: Call) -> Reply {
    let id = id_param(&c, "app")?;
    let op = c.core.install_pool_app(id.clone(), &op_start(&c))?;
    let task = op.id().to_string();
    op.finish().await?;
    let apps = c.core.pool()?.list()?;
    let app = apps.iter().find(|a| a.id == id).map(pool_app);
    Ok(with_task(http::json(StatusCode::OK, &app), &task))
}

async fn uninstall(c: Call) -> Reply {
    let id = id_param(&c, "app")?;
    c.core.pool()?.remove(&id)?;
    Ok(http::empty(StatusCode::OK))
}

async fn refresh(c: Call) -> Reply {
    let apps = c.core.pool()?.refresh().await?;
    list_or_empty(apps.iter().map(pool_app).collect())
}

async fn clear(c: Call) -> Reply {
    c.core.pool()?.clear()?;
    Ok(http::empty(StatusCode::OK))
}

fn published(e: &IndexEntry) -> Value {
    json!({
        "Id": e.id.as_str(),
        "App": e.config,
        "Repository": e.repository,
        "Tag": e.tag,
        "Digest": e.digest,
        "Size": e.size,
    })
}

/// `PUT /pool/publish/{id}`: the stored app `id` (`/transfer/apps`) goes to the store, with
/// its images unless `with_images=false`; `replace=true` overwrites the same version.
async fn publish(c: Call) -> Reply {
    let id = id_param(&c, "app")?;
    let with_images = c.bool("with_images", true)?;
    let replace = c.bool("replace", false)?;
    let op = c
        .core
        .publish_app(id, with_images, replace, &op_start(&c))?;
    let task = op.id().to_string();
    let entry = op.finish().await?;
    Ok(with_task(
        http::json(StatusCode::OK, &published(&entry)),
        &task,
    ))
}

// ---- configuration

fn configuration_json(core: &Core) -> Result<Value, Problem> {
    let pool = core.pool()?;
    let view = pool.store();
    let store = view.store.as_ref().map(|s| {
        json!({
            "Registry": s.registry,
            "Namespace": s.namespace,
            "Authenticated": s.credentials.is_some(),
        })
    });
    let config = pool.config();
    let servers: Vec<Value> = pool.servers.list().iter().map(server_json).collect();
    Ok(json!({
        "Store": store,
        "StoreSource": if view.from_api { "api" } else { "file" },
        "Servers": servers,
        "ProbeIntervalSecs": config.probe_interval.as_secs(),
        "MaxParallel": config.max_parallel,
        "ConnectTimeoutSecs": config.connect_timeout.as_secs(),
        "RequestTimeoutSecs": config.request_timeout.as_secs(),
        "IdleTimeoutSecs": config.idle_timeout.as_secs(),
        "DownloadRetrySecs": config.download_retry.as_secs(),
        "TokenDir": config.token_dir,
    }))
}

async fn configuration(c: Call) -> Reply {
    Ok(http::json(StatusCode::OK, &configuration_json(&c.core)?))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Configure {
    store: Option<StoreBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct StoreBody {
    registry: String,
    #[serde(default = "default_namespace")]
    namespace: String,
}

fn default_namespace() -> String {
    "gantry-apps".into()
}

/// `PUT /configure` `{"Store": {"Registry", "Namespace"}}` sets the store (persisted; it
/// wins over the config file's), `{"Store": null}` returns to the config file's.
async fn configure(c: Call) -> Reply {
    let core = c.core.clone();
    let body: Configure = body(c).await?;
    let store = match body.store {
        None => None,
        Some(s) => {
            let registry =
                crate::config::pool::registry_url(&s.registry).map_err(Problem::bad_request)?;
            if !crate::config::pool::valid_namespace(&s.namespace) {
                return Err(Problem::bad_request(format!(
                    "Namespace \"{}\": lowercase path components of a-z, 0-9, '.', '_' and '-'",
                    s.namespace
                )));
            }
            Some((registry, s.namespace))
        }
    };
    let pool = core.pool()?;
    pool.set_store(store)?;
    // A new store's offer, fetched in the background (GET /pool/apps lists it once there).
    let refreshing = pool.clone();
    tokio::spawn(async move {
        if let Err(e) = refreshing.refresh().await {
            tracing::warn!(error = %e, "cannot fetch the new store's index");
        }
    });
    Ok(http::json(StatusCode::OK, &configuration_json(&core)?))
}

// ---- transfer side

fn server_json(v: &ServerView) -> Value {
    json!({
        "Id": v.server.id,
        "Server": v.server.url,
        "Status": v.status.name(),
        "Detail": v.detail,
        "Source": if v.from_config { "file" } else { "api" },
    })
}

async fn servers(c: Call) -> Reply {
    let list = c.core.pool()?.servers.list();
    list_or_empty(list.iter().map(server_json).collect())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct NewServer {
    server: String,
    token_file: Option<PathBuf>,
}

/// `POST /servers` `{"Server": url, "TokenFile": path}`: 201 once `GET /api/versions`
/// found it online; 400 naming why not (offline, unauthorized, incompatible version).
async fn add_server(c: Call) -> Reply {
    let core = c.core.clone();
    let s: NewServer = body(c).await?;
    let view = core.add_server(&s.server, s.token_file).await?;
    Ok(http::json(StatusCode::CREATED, &server_json(&view)))
}

async fn remove_server(c: Call) -> Reply {
    c.core.remove_server(c.param("id"))?;
    Ok(http::empty(StatusCode::OK))
}

fn deployment_json(v: &DeploymentView) -> Value {
    let d = &v.deployment;
    json!({
        "Id": d.id,
        "Server": d.server,
        "App": d.app.as_str(),
        "Status": v.status,
        "State": d.state.name(),
        "Error": d.error,
        "Progress": v.progress.map(|(sent, size)| json!({"Sent": sent, "Size": size})),
        "Created": d.created,
    })
}

async fn deployments(c: Call) -> Reply {
    let views = c.core.deployment_views().await?;
    list_or_empty(views.iter().map(deployment_json).collect())
}

async fn deployment(c: Call) -> Reply {
    let id = c.param("id").to_string();
    let views = c.core.deployment_views().await?;
    let view = views
        .iter()
        .find(|v| v.deployment.id == id)
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, format!("no deployment {id}")))?;
    Ok(http::json(StatusCode::OK, &deployment_json(view)))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct NewDeployment {
    server: String,
    app: String,
}

/// `POST /deployments` `{"Server": id or URL, "App": app id}`: 202 with the Deployment,
/// `Pending` until its server is online and took the bundle.
async fn deploy(c: Call) -> Reply {
    let core = c.core.clone();
    let d: NewDeployment = body(c).await?;
    let dep = core.request_deployment(&d.server, &AppId::from(d.app))?;
    let view = DeploymentView {
        status: dep.state.name().to_string(),
        deployment: dep,
        progress: None,
    };
    Ok(http::json(StatusCode::ACCEPTED, &deployment_json(&view)))
}

/// 200 when the deployment is gone, 202 when its removal waits for its server.
async fn undeploy(c: Call) -> Reply {
    let done = c.core.delete_deployment(c.param("id")).await?;
    let status = if done {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(http::empty(status))
}

async fn start(c: Call) -> Reply {
    let answer = c.core.deployment_action(c.param("id"), "start").await?;
    Ok(http::json(StatusCode::OK, &answer))
}

async fn stop(c: Call) -> Reply {
    let answer = c.core.deployment_action(c.param("id"), "stop").await?;
    Ok(http::json(StatusCode::OK, &answer))
}
