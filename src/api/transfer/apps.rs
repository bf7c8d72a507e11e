//! "Transfer Technology - Main Transfer API": importing, listing, starting, stopping and
//! removing app instances. PascalCase JSON per COMPAT-NOTES section 1.

use std::sync::Arc;

use hyper::header::{HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, StatusCode};
use serde::Serialize;

use super::{Call, Handler, Problem, Reply};
use crate::api::http::{self, declared_too_large, Response};
use crate::api::router::Routes;
use crate::core::apps::bundle::BundleKind;
use crate::core::apps::import::ImportOptions;
use crate::core::apps::lifecycle::{
    AppStatus, AppView, ProcessOutcome, RemoveOptions, StopOptions,
};
use crate::core::apps::store::StoredApp;
use crate::core::apps::stream::UploadSender;
use crate::core::apps::{AppConfig, AppId};
use crate::core::ops::apps::{ImportOperation, ImportSource};
use crate::core::ops::Start;
use crate::core::tasks::TaskKind;
use crate::core::view::now_ns;
use crate::core::{Core, CoreResult, ErrorKind};

pub fn register(r: &mut Routes<Handler>) {
    r.add(Method::POST, "/transfer/import", |c| Box::pin(import(c)))
        .add(Method::GET, "/transfer/apps", |c| Box::pin(list(c)))
        .add(Method::GET, "/transfer/apps/{id}", |c| Box::pin(get(c)))
        .add(Method::DELETE, "/transfer/apps/{id}", |c| {
            Box::pin(remove(c))
        })
        .add(Method::GET, "/transfer/apps/{id}/icon", |c| {
            Box::pin(icon(c))
        })
        .add(Method::GET, "/transfer/apps/{id}/readme", |c| {
            Box::pin(readme(c))
        })
        .add(Method::PUT, "/transfer/apps/{id}/start", |c| {
            Box::pin(start(c))
        })
        .add(Method::PUT, "/transfer/apps/{id}/stop", |c| {
            Box::pin(stop(c))
        })
        .add(Method::GET, "/transfer/apps/{id}/logs", |c| {
            Box::pin(logs(c))
        })
        .add(Method::GET, "/transfer/export/{id}", |c| {
            Box::pin(export(c))
        })
        .add(Method::PUT, "/transfer/refresh/apps", |c| {
            Box::pin(refresh_all(c))
        })
        .add(Method::GET, "/transfer/refresh/apps", |c| {
            Box::pin(refreshing(c))
        })
        .add(Method::PUT, "/transfer/apps/{id}/refresh", |c| {
            Box::pin(refresh(c))
        })
        .add(Method::GET, "/transfer/recognize/apps", |c| {
            Box::pin(recognize(c))
        });
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct AppInstance<'a> {
    id: &'a str,
    app: AppJson<'a>,
    instance_number: u32,
    busy: bool,
    status: &'static str,
    images: Vec<ContainerImage<'a>>,
    containers: Vec<Container<'a>>,
    last_modified: &'a str,
}

/// AppConfig plus the import time, which older clients read as `Imported`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct AppJson<'a> {
    #[serde(flatten)]
    config: &'a AppConfig,
    imported: &'a str,
}

impl<'a> AppJson<'a> {
    pub(super) fn of(app: &'a StoredApp) -> Self {
        AppJson {
            config: app.config(),
            imported: &app.record.imported,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerImage<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Container<'a> {
    name: &'a str,
    id: &'a str,
    image_id: &'a str,
    image_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<i64>,
    status: &'a str,
    running: bool,
    started: bool,
    port_mappings: &'a [String],
}

fn status_word(s: AppStatus) -> &'static str {
    match s {
        AppStatus::Running => "Running",
        AppStatus::PartiallyRunning => "Partially Running",
        AppStatus::Stopped => "Stopped",
        AppStatus::Unknown => "Unknown",
    }
}

pub(super) fn instance(v: &AppView) -> AppInstance<'_> {
    AppInstance {
        id: v.app.id().as_str(),
        app: AppJson::of(&v.app),
        instance_number: 1,
        busy: v.busy,
        status: status_word(v.status),
        images: v
            .images
            .iter()
            .map(|i| ContainerImage {
                name: &i.name,
                id: i.id.as_deref(),
                created: i.created.as_deref(),
                platform: i.platform.as_deref(),
                size: i.size,
            })
            .collect(),
        containers: v
            .containers
            .iter()
            .map(|c| Container {
                name: &c.name,
                id: &c.id,
                image_id: &c.image_id,
                image_name: &c.image,
                created: c.created,
                status: &c.status,
                running: c.running,
                started: c.running,
                port_mappings: &c.ports,
            })
            .collect(),
        last_modified: &v.app.record.imported,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ProcessLine<'a> {
    line: &'a str,
    raw_line: &'a str,
    is_stdout: bool,
    is_stderr: bool,
}

/// docker-compose writes its progress to stderr; the lines say so as the original did.
pub(super) fn process_lines(lines: &[String]) -> Vec<ProcessLine<'_>> {
    lines
        .iter()
        .map(|l| ProcessLine {
            line: l.trim_end(),
            raw_line: l,
            is_stdout: false,
            is_stderr: true,
        })
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ProcessResult<'a> {
    exit_code: i32,
    command: &'a str,
    lines: Vec<ProcessLine<'a>>,
    success_estimate: bool,
    duration_ms: u128,
    raw_output: String,
}

pub(super) fn process_result(o: &ProcessOutcome) -> ProcessResult<'_> {
    let mut raw_output = String::new();
    for l in &o.lines {
        raw_output.push_str(l);
        raw_output.push('\n');
    }
    ProcessResult {
        exit_code: if o.success { 0 } else { 1 },
        command: &o.command,
        lines: process_lines(&o.lines),
        success_estimate: o.success,
        duration_ms: o.duration.as_millis(),
        raw_output,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct UpResult<'a> {
    pub running_containers: &'a [String],
    pub pulled_images: &'a [String],
    #[serde(flatten)]
    pub process: ProcessResult<'a>,
}

impl<'a> UpResult<'a> {
    pub(super) fn of(outcome: &'a ProcessOutcome) -> Self {
        UpResult {
            running_containers: &outcome.running_containers,
            pulled_images: &outcome.pulled_images,
            process: process_result(outcome),
        }
    }
}

fn app_id(c: &Call) -> Result<AppId, Problem> {
    id_param(c, "app")
}

/// The path parameter `id`, an app's or template's (`what`) id.
pub(super) fn id_param(c: &Call, what: &str) -> Result<AppId, Problem> {
    let id = c.param("id");
    if id.trim().is_empty() {
        return Err(Problem::bad_request(format!("{what} id not given")));
    }
    Ok(AppId::from(id))
}

/// From the live view: rendered once per change of the view (and second of status texts),
/// then the same bytes for every read.
async fn list(c: Call) -> Reply {
    let view = &c.core.view;
    let Ok(snap) = view.current().await else {
        // Docker cannot be followed: the stored apps, status Unknown.
        let views = c.core.apps.list().await?;
        let body: Vec<_> = views.iter().map(instance).collect();
        return Ok(http::list_response(http::json_list(&body)));
    };
    let body = view.memo("transfer.apps", &snap, || {
        let views = snap.app_list(true, now_ns());
        http::json_list(&views.iter().map(instance).collect::<Vec<_>>())
    });
    Ok(http::list_response(body))
}

async fn get(c: Call) -> Reply {
    let view = c.core.apps.get(&app_id(&c)?).await?;
    Ok(http::json(StatusCode::OK, &instance(&view)))
}

/// `POST /transfer/import`: multipart/form-data with the ZIP in the field `app`. The file
/// streams to a temp file (size-capped), then runs through the import pipeline.
/// `?replace=true` replaces an app with the same id instead of answering 409.
/// The largest app upload: the listener's and the bundle checker's limits.
pub(super) fn import_limit(c: &Call) -> u64 {
    c.limits
        .max_upload_bytes
        .min(c.core.apps.max_upload_bytes())
}

async fn import(c: Call) -> Reply {
    let (core, stored, task) = upload_import(c, |core, source, options, start| {
        core.import_bundle(BundleKind::App, source, options, start)
    })
    .await?;
    let view = core.apps.get(stored.id()).await?;
    Ok(with_task(
        http::json(StatusCode::OK, &instance(&view)),
        &task,
    ))
}

/// Starts an import operation (`begin`: of an app or a template) and feeds it the multipart
/// upload as it arrives; answers the stored bundle and the operation's id.
pub(super) async fn upload_import(
    c: Call,
    begin: fn(&Arc<Core>, ImportSource, ImportOptions, &Start) -> CoreResult<ImportOperation>,
) -> Result<(Arc<Core>, StoredApp, String), Problem> {
    let replace = c.bool("replace", false)?;
    let limit = import_limit(&c);
    if declared_too_large(c.req.headers(), limit) {
        return Err(too_large(limit));
    }
    let content_type = c
        .req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        Problem::bad_request("expected multipart/form-data with the ZIP in the form field \"app\"")
    })?;
    let expected = c
        .req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let start = op_start(&c);
    // The import reads the upload as it arrives: image tarballs load into Docker while the
    // rest still comes (docs/DESIGN-apps.md, stream.rs). Should this handler be dropped
    // midway (the client went away), the pipe tells the import, which rolls back.
    let _upload = c.begin_upload()?;
    let (file, sender, reader) = c.core.apps.upload_pipe()?;
    let source = ImportSource::Streaming {
        file,
        reader,
        expected,
    };
    let op = begin(&c.core, source, ImportOptions { replace }, &start)?;
    let task = op.id().to_string();
    let stall = c.limits.body_read_timeout;
    let received = receive_app(c.req.into_body(), stall, boundary, limit, &sender).await;
    sender.finish(match &received {
        Ok(()) => Ok(()),
        Err(p) => Err(format!("{p:?}")),
    });
    // The import rolls back by itself when the upload failed; answer once it has.
    let imported = op.finish().await;
    received?;
    Ok((c.core, imported?, task))
}

/// Receives the form field `app` of a multipart body into the import's pipe. When the import
/// stops reading (it failed: its error is the answer), the rest of the body is read and
/// dropped, so that the client hears the answer after its upload, as before.
async fn receive_app(
    body: hyper::body::Incoming,
    stall: std::time::Duration,
    boundary: String,
    limit: u64,
    sender: &UploadSender,
) -> Result<(), Problem> {
    // Other fields are skipped unread (multer discards them), so no field allow-list.
    let constraints = multer::Constraints::new()
        .size_limit(multer::SizeLimit::new().whole_stream(limit.saturating_add(64 << 10)));
    let body = crate::server::limits::timed_body(body, stall);
    let mut multipart = multer::Multipart::with_constraints(body, boundary, constraints);
    let mut found = false;
    let mut received: u64 = 0;
    let mut importing = true;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(multer::Error::StreamSizeExceeded { .. }) => return Err(too_large(limit)),
            Err(e) => return Err(Problem::bad_request(format!("bad multipart body: {e}"))),
        };
        if field.name() != Some("app") {
            continue;
        }
        found = true;
        let mut field = field;
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    received += chunk.len() as u64;
                    if received > limit {
                        return Err(too_large(limit));
                    }
                    if importing && !sender.send(chunk).await {
                        importing = false;
                    }
                }
                Ok(None) => break,
                Err(multer::Error::StreamSizeExceeded { .. })
                | Err(multer::Error::FieldSizeExceeded { .. }) => return Err(too_large(limit)),
                Err(e) => return Err(Problem::bad_request(format!("upload interrupted: {e}"))),
            }
        }
    }
    if !found {
        return Err(Problem::bad_request(
            "the multipart body has no form field \"app\" with the app ZIP",
        ));
    }
    Ok(())
}

fn too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload exceeds the limit of {limit} bytes"),
    )
}

async fn remove(c: Call) -> Reply {
    let id = app_id(&c)?;
    let options = RemoveOptions {
        force: c.bool("force", false)?,
        remove_images: c.bool("remove_images", true)?,
        remove_volumes: c.bool("remove_volumes", false)?,
    };
    c.core.apps.remove(&id, options).await?;
    Ok(http::empty(StatusCode::OK))
}

async fn icon(c: Call) -> Reply {
    let Some(path) = c.core.apps.icon(&app_id(&c)?)? else {
        return Ok(http::empty(StatusCode::NO_CONTENT));
    };
    let content_type = match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "image/jpeg",
    };
    let bytes = read_file(&path).await?;
    Ok(http::with_type(
        StatusCode::OK,
        content_type,
        http::full(bytes),
    ))
}

async fn read_file(path: &std::path::Path) -> Result<Vec<u8>, Problem> {
    Ok(crate::core::apps::lifecycle::Apps::read_small_file(path.to_path_buf()).await?)
}

/// The readme as text/plain, or as a JSON string when the client asks for
/// application/json.
async fn readme(c: Call) -> Reply {
    let wants_json = c
        .req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let Some(path) = c.core.apps.readme(&app_id(&c)?)? else {
        return Ok(http::empty(StatusCode::NO_CONTENT));
    };
    let text = String::from_utf8_lossy(&read_file(&path).await?).into_owned();
    if wants_json {
        Ok(http::json(StatusCode::OK, &text))
    } else {
        let mut resp = http::with_type(StatusCode::OK, "text/plain", http::full(text));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok(resp)
    }
}

async fn start(c: Call) -> Reply {
    start_app(&c, app_id(&c)?).await
}

/// The operation id a long REST call names (`?cancel_id=<UUID>`), so that it can be
/// cancelled (`PUT /api/cancel/{id}`) while the call is still waiting for its answer.
pub(super) fn op_start(c: &Call) -> Start {
    Start::with_id(c.query.get("cancel_id"))
}

/// `resp` naming the operation it answers in `X-Cancel-Id`.
pub(super) fn with_task(mut resp: Response, task: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(task) {
        resp.headers_mut().insert(CANCEL_ID_HEADER, v);
    }
    resp
}

/// Starts the app `id`: DockerComposeUpResult (the v1 start and the v2.2.2 compose start).
/// The start is an operation of the core: a client going away does not interrupt it.
pub(super) async fn start_app(c: &Call, id: AppId) -> Reply {
    let op = c.core.start_app(id, &op_start(c))?;
    let task = op.id().to_string();
    let outcome = op.finish().await?;
    Ok(with_task(
        http::json(StatusCode::OK, &UpResult::of(&outcome)),
        &task,
    ))
}

async fn stop(c: Call) -> Reply {
    let options = StopOptions {
        remove_images: c.bool("remove_images", false)?,
        remove_volumes: c.bool("remove_volumes", false)?,
    };
    stop_app(&c, app_id(&c)?, options).await
}

/// Stops the app `id`: ProcessResult (the v1 stop and the v2.2.2 compose stop). The stop is
/// an operation of the core: a client going away does not interrupt it.
pub(super) async fn stop_app(c: &Call, id: AppId, options: StopOptions) -> Reply {
    let op = c.core.stop_app(id, options, &op_start(c))?;
    let task = op.id().to_string();
    let outcome = op.finish().await?;
    Ok(with_task(
        http::json(StatusCode::OK, &process_result(&outcome)),
        &task,
    ))
}

/// `?lines=N` per container (default [`super::logs::DEFAULT_LINES`], -1 = all); 0 and
/// values below -1 are 400.
pub(super) fn lines_param(c: &Call) -> Result<Option<u64>, Problem> {
    match c.query.get("lines") {
        None => Ok(Some(super::logs::DEFAULT_LINES)),
        Some(v) => match v.parse::<i64>() {
            Ok(-1) => Ok(None),
            Ok(n) if n > 0 => Ok(Some(n as u64)),
            _ => Err(Problem::bad_request(format!(
                "query parameter 'lines' must be -1 or a positive number, not \"{v}\""
            ))),
        },
    }
}

/// The app's logs as a ProcessResult, streamed as the lines arrive.
async fn logs(c: Call) -> Reply {
    let id = app_id(&c)?;
    let lines = lines_param(&c)?;
    let started = std::time::Instant::now();
    let log = c.core.apps.logs(&id, lines).await?;
    Ok(super::logs::process_result(log, started))
}

/// `GET /transfer/export/{id}?with_images=bool`: the bundle as a streamed ZIP.
async fn export(c: Call) -> Reply {
    let id = app_id(&c)?;
    let with_images = c.bool("with_images", false)?;
    let stream = c.core.apps.export(&id, with_images).await?;
    Ok(http::attachment(
        "application/zip",
        stream,
        id.as_str(),
        "zip",
    ))
}

/// The response header naming the task of an operation answered before it ended, for
/// `PUT /api/cancel/{id}`.
pub const CANCEL_ID_HEADER: &str = "x-cancel-id";

/// 202 and the refresh runs in the background as a task whose id is in `X-Cancel-Id`; 409
/// while one already runs.
async fn refresh_all(c: Call) -> Reply {
    let op = c.core.refresh_apps(&op_start(&c))?;
    // Nobody waits for it: the core lets a refresh run on without its client.
    let task = op.id().to_string();
    drop(op);
    Ok(with_task(http::empty(StatusCode::ACCEPTED), &task))
}

async fn refreshing(c: Call) -> Reply {
    Ok(http::json(StatusCode::OK, &c.core.apps.is_refreshing_all()))
}

/// A short task: listed (and cancellable) while it reads the app.
async fn refresh(c: Call) -> Reply {
    let id = app_id(&c)?;
    let task = c.core.tasks.start(TaskKind::Refresh);
    let view = c
        .core
        .apps
        .refresh(&id, &task.cancel)
        .await
        .map_err(|e| match e {
            e if e.is(ErrorKind::Busy) => Problem::bad_request(e.to_string()),
            other => other.into(),
        })?;
    drop(task);
    Ok(http::json(StatusCode::OK, &instance(&view)))
}

/// Containers of compose projects on the host (Docker's ContainerSummary); 204 when none.
async fn recognize(c: Call) -> Reply {
    let containers = c.core.apps.recognize().await?;
    Ok(http::list_response(http::json_list(&containers)))
}
