//! "Transfer Technology - Container System Module": images, containers and volumes.
//! Bodies are Docker's own models; the status codes are the spec's.

use std::sync::atomic::Ordering;

use hyper::header::{HeaderValue, CONTENT_LENGTH, LOCATION};
use hyper::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Serialize;

use super::{Call, Handler, Problem, Reply};
use crate::api::http::{self, declared_too_large, upload_stream, Response};
use crate::api::router::Routes;
use crate::core::engine::Effect;
use crate::core::ops::images::LoadSource;
use crate::core::view::{now_ns, Snapshot};
use crate::core::{CoreError, ErrorKind};

pub fn register(r: &mut Routes<Handler>) {
    r.add(Method::GET, "/system/images", |c| Box::pin(list_images(c)))
        .add(Method::POST, "/system/images", |c| {
            Box::pin(upload_image(c))
        })
        .add(Method::GET, "/system/images/{id}", |c| {
            Box::pin(get_image(c))
        })
        .add(Method::GET, "/system/images/{id}/export", |c| {
            Box::pin(export_image(c))
        })
        .add(Method::DELETE, "/system/images/{id}", |c| {
            Box::pin(delete_image(c))
        })
        .add(Method::DELETE, "/system/prune/images", |c| {
            Box::pin(prune_images(c))
        })
        .add(Method::GET, "/system/containers", |c| {
            Box::pin(list_containers(c))
        })
        .add(Method::GET, "/system/containers/{id}", |c| {
            Box::pin(get_container(c))
        })
        .add(Method::PUT, "/system/containers/{id}/start", |c| {
            Box::pin(start_container(c))
        })
        .add(Method::PUT, "/system/containers/{id}/stop", |c| {
            Box::pin(stop_container(c))
        })
        .add(Method::PUT, "/system/containers/{id}/restart", |c| {
            Box::pin(restart_container(c))
        })
        .add(Method::DELETE, "/system/containers/{id}", |c| {
            Box::pin(delete_container(c))
        })
        .add(Method::DELETE, "/system/prune/containers", |c| {
            Box::pin(prune_containers(c))
        })
        .add(Method::GET, "/system/volumes", |c| {
            Box::pin(list_volumes(c))
        })
        .add(Method::GET, "/system/volumes/{name}", |c| {
            Box::pin(get_volume(c))
        })
        .add(Method::DELETE, "/system/volumes/{name}", |c| {
            Box::pin(delete_volume(c))
        })
        .add(Method::DELETE, "/system/prune/volumes", |c| {
            Box::pin(prune_volumes(c))
        });
}

/// Prunes answer 304 when nothing was removed.
fn pruned(ids: Vec<String>) -> Response {
    if ids.is_empty() {
        http::empty(StatusCode::NOT_MODIFIED)
    } else {
        http::json(StatusCode::OK, &ids)
    }
}

/// The system module reports "could not be removed" as 400, not 409.
fn conflict_is_bad_request(e: CoreError) -> Problem {
    match e.kind() {
        ErrorKind::Conflict => Problem::bad_request(e.to_string()),
        _ => e.into(),
    }
}

fn effect(effect: Effect, body: Response) -> Response {
    match effect {
        Effect::Changed => body,
        Effect::NoEffect => http::empty(StatusCode::NOT_MODIFIED),
    }
}

/// A list from the live view, rendered once per change of the view (and second).
async fn memo_list<T: Serialize>(
    c: &Call,
    key: &'static str,
    items: impl FnOnce(&Snapshot) -> Vec<T>,
) -> Reply {
    let view = &c.core.view;
    let snap = view.current().await?;
    let body = view.memo(key, &snap, || http::json_list(&items(&snap)));
    Ok(http::list_response(body))
}

async fn list_images(c: Call) -> Reply {
    memo_list(&c, "transfer.images", |s| s.images_newest_first()).await
}

async fn get_image(c: Call) -> Reply {
    let image = c.core.system.image(c.param("id")).await?;
    Ok(http::json(StatusCode::OK, &image))
}

/// The body is sniffed, not trusted by its Content-Type: clients send `docker save` output
/// as application/x-tar, application/octet-stream or whatever curl picks.
async fn upload_image(c: Call) -> Reply {
    let limit = c.limits.max_upload_bytes;
    if declared_too_large(c.req.headers(), limit) {
        return Err(too_large(limit));
    }
    let total = c
        .req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let start = super::apps::op_start(&c);
    let _upload = c.begin_upload()?;
    let (stream, exceeded) = upload_stream(c.req.into_body(), limit, c.limits.body_read_timeout);
    let op = c
        .core
        .load_image(LoadSource::Stream { stream, total }, &start)?;
    let task = op.id().to_string();
    let loaded = match op.finish().await {
        Ok(l) => l,
        Err(_) if exceeded.load(Ordering::SeqCst) => return Err(too_large(limit)),
        Err(e) => return Err(e.into()),
    };
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Loaded<'a> {
        id: &'a str,
        loaded: &'a [String],
    }
    let mut resp = http::json(
        StatusCode::CREATED,
        &Loaded {
            id: &loaded.id,
            loaded: &loaded.references,
        },
    );
    let location = format!(
        "{}/api/1/system/images/{}",
        c.prefix,
        utf8_percent_encode(&loaded.id, NON_ALPHANUMERIC)
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    Ok(super::apps::with_task(resp, &task))
}

fn too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload exceeds the limit of {limit} bytes"),
    )
}

async fn export_image(c: Call) -> Reply {
    let id = c.param("id");
    let stream = c.core.system.export_image(id).await?;
    Ok(http::attachment("application/x-tar", stream, id, "tar"))
}

async fn delete_image(c: Call) -> Reply {
    let force = c.bool("force", false)?;
    let items = c
        .core
        .system
        .remove_image(c.param("id"), force)
        .await
        .map_err(conflict_is_bad_request)?;
    Ok(http::json(StatusCode::OK, &items))
}

async fn prune_images(c: Call) -> Reply {
    let all = c.bool("all", false)?;
    Ok(pruned(c.core.system.prune_images(all).await?))
}

async fn list_containers(c: Call) -> Reply {
    memo_list(&c, "transfer.containers", |s| {
        s.containers_newest_first(now_ns())
    })
    .await
}

async fn get_container(c: Call) -> Reply {
    let container = c.core.system.container(c.param("id")).await?;
    Ok(http::json(StatusCode::OK, &container))
}

async fn start_container(c: Call) -> Reply {
    let (e, state) = c.core.system.start_container(c.param("id")).await?;
    Ok(effect(e, http::json(StatusCode::OK, &state)))
}

async fn stop_container(c: Call) -> Reply {
    let (e, state) = c.core.system.stop_container(c.param("id")).await?;
    Ok(effect(e, http::json(StatusCode::OK, &state)))
}

async fn restart_container(c: Call) -> Reply {
    let state = c.core.system.restart_container(c.param("id")).await?;
    Ok(http::json(StatusCode::OK, &state))
}

async fn delete_container(c: Call) -> Reply {
    let force = c.bool("force", false)?;
    let volumes = c.bool("volumes", false)?;
    c.core
        .system
        .remove_container(c.param("id"), force, volumes)
        .await
        .map_err(conflict_is_bad_request)?;
    Ok(http::empty(StatusCode::OK))
}

async fn prune_containers(c: Call) -> Reply {
    // `force` is accepted for compatibility: like `docker container prune --force` it only
    // skips a confirmation prompt, which an API does not have.
    c.bool("force", false)?;
    Ok(pruned(c.core.system.prune_containers().await?))
}

async fn list_volumes(c: Call) -> Reply {
    memo_list(&c, "transfer.volumes", |s| s.volumes_by_name()).await
}

async fn get_volume(c: Call) -> Reply {
    let volume = c.core.system.volume(c.param("name")).await?;
    Ok(http::json(StatusCode::OK, &volume))
}

async fn delete_volume(c: Call) -> Reply {
    let force = c.bool("force", false)?;
    c.core
        .system
        .remove_volume(c.param("name"), force)
        .await
        .map_err(conflict_is_bad_request)?;
    Ok(http::empty(StatusCode::OK))
}

async fn prune_volumes(c: Call) -> Reply {
    Ok(pruned(c.core.system.prune_volumes().await?))
}
