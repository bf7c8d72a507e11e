//! Live operations over websockets (`[prefix]/events/...`, no `/api`), `PUT
//! /api/cancel/{id}` and `GET /api/tasks`.
//!
//! Every session first announces its operation's CancelID, then reports TransferProgress
//! steps (PascalCase JSON text messages) and ends with a close frame. The operations belong
//! to the core: a session only translates their progress, and drops its handle when its
//! client is gone (the core decides what that does to the operation). See
//! docs/DECISIONS.md ("Live operations") for the step mapping.

mod logs;
mod steps;
mod upload;

use std::sync::Arc;

use tempfile::NamedTempFile;

use hyper::{Method, StatusCode};
use serde::Serialize;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::apps::{import_limit, process_result, UpResult};
use super::{Call, Handler, Problem, Reply};
use crate::api::http;
use crate::api::router::Routes;
use crate::core::apps::bundle::BundleKind;
use crate::core::apps::import::{ImportOptions, ImportProgress};
use crate::core::apps::lifecycle::{ProcessOutcome, StopOptions};
use crate::core::apps::stream::UploadReader;
use crate::core::apps::AppId;
use crate::core::ops::apps::{AppOperation, ImportSource, OutputLine};
use crate::core::ops::images::LoadSource;
use crate::core::ops::{Event, Operation, Start};
use crate::core::{Core, CoreError};
use crate::server::ws::{self, WsConfig, WsSession};
use steps::{failed_step, import_steps, line_step, load_step, NameValue, Step};

/// Largest single websocket message (and frame); a ZIP may come in several.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// REST routes under `/api`.
pub fn register(r: &mut Routes<Handler>) {
    r.add(Method::PUT, "/cancel/{id}", |c| Box::pin(cancel(c)))
        .add(Method::PUT, "/cancel", |c| Box::pin(cancel(c)))
        .add(Method::PUT, "/cancel/", |c| Box::pin(cancel(c)))
        .add(Method::GET, "/tasks", |c| Box::pin(tasks(c)));
}

/// Websocket routes under `/events`.
pub fn register_ws(r: &mut Routes<Handler>) {
    r.add(Method::GET, "/transfer/import", |c| Box::pin(ws_import(c)))
        .add(Method::GET, "/import", |c| Box::pin(ws_import(c)))
        .add(Method::GET, "/transfer/apps/{id}/start", |c| {
            Box::pin(ws_start(c))
        })
        .add(Method::GET, "/start", |c| Box::pin(ws_start(c)))
        .add(Method::GET, "/transfer/apps/{id}/stop", |c| {
            Box::pin(ws_stop(c))
        })
        .add(Method::GET, "/system/loadimage", |c| {
            Box::pin(ws_load_image(c))
        })
        .add(Method::GET, "/transfer/apps/{id}/logs", |c| {
            Box::pin(logs::ws_logs(c))
        });
}

/// `PUT /api/cancel/{id}`: 200 cancelled, 400 no id, 404 unknown or already finished.
async fn cancel(c: Call) -> Reply {
    let id = c.param("id").trim();
    if id.is_empty() {
        return Err(Problem::bad_request(
            "no operation id given: use PUT /api/cancel/{id} with the CancelID the websocket \
             sent, or the cancel_id the request named",
        ));
    }
    c.core
        .tasks
        .cancel(&id.to_ascii_lowercase())
        .map_err(|e| Problem::new(StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(http::empty(StatusCode::OK))
}

/// `GET /api/tasks`: the running operations, oldest first; 204 when none.
async fn tasks(c: Call) -> Reply {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Task<'a> {
        id: &'a str,
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        app: Option<&'a str>,
        /// Seconds since the Unix epoch.
        started: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        progress: Option<f64>,
        step: &'a str,
    }
    let list = c.core.tasks.list();
    if list.is_empty() {
        return Ok(http::empty(StatusCode::NO_CONTENT));
    }
    let body: Vec<Task> = list
        .iter()
        .map(|t| Task {
            id: &t.id,
            kind: t.kind.name(),
            app: t.app.as_deref(),
            started: t
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            progress: t.fraction,
            step: &t.step,
        })
        .collect();
    Ok(http::json(StatusCode::OK, &body))
}

/// Answers the handshake and runs `session` on the upgraded connection.
fn upgrade<F, Fut>(mut c: Call, session: F) -> Reply
where
    F: FnOnce(Arc<Core>, WsSession) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let config = WsConfig {
        max_message: MAX_MESSAGE_BYTES,
        // Bytes may stall this long before an upload fails.
        idle: Some(c.limits.header_read_timeout),
    };
    let core = c.core.clone();
    Ok(ws::accept(&mut c.req, &c.sessions, config, move |s| {
        session(core, s)
    })?)
}

async fn announce(ws: &mut WsSession, id: &str) {
    ws.tx
        .send_json(&NameValue {
            name: "CancelID",
            value: id,
        })
        .await;
}

/// An operation that could not even start: its step, then the close.
async fn refuse<T>(mut ws: WsSession, step_type: &'static str, e: CoreError) -> Option<T> {
    ws.tx
        .send_json(&Step::fail(step_type, None, e.to_string()))
        .await;
    ws.close(CloseCode::Error, "not started").await;
    None
}

/// The opening of an upload session (an import, an image load): the operation `start`
/// makes of the upload pipe, its CancelID, then the upload itself. None when the session
/// ended there (the client heard why).
async fn open_upload<P, T>(
    core: &Core,
    mut ws: WsSession,
    limit: u64,
    what: &str,
    start: impl FnOnce(NamedTempFile, UploadReader) -> Result<Operation<P, T>, CoreError>,
) -> Option<(WsSession, Operation<P, T>)> {
    let started = core
        .apps
        .upload_pipe()
        .and_then(|(file, sender, reader)| Ok((start(file, reader)?, sender)));
    let (op, sender) = match started {
        Ok(x) => x,
        Err(e) => return refuse(ws, "DATA_TRANSFER", e).await,
    };
    announce(&mut ws, op.id()).await;
    let end = upload::receive(&mut ws, || op.cancelled(), limit, &sender).await;
    let ok = matches!(end, upload::Upload::Done);
    sender.finish(if ok {
        Ok(())
    } else {
        Err(format!("the {what} upload broke off"))
    });
    match upload::outcome(&mut ws, end, what).await {
        Ok(()) => Some((ws, op)),
        Err(code) => {
            ws.close(code, &format!("{what} failed")).await;
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Import

async fn ws_import(c: Call) -> Reply {
    let replace = c.bool("replace", false)?;
    let limit = import_limit(&c);
    let upload = c.begin_upload()?;
    upgrade(c, move |core, ws| async move {
        let _upload = upload;
        import_session(core, ws, limit, replace).await
    })
}

async fn import_session(core: Arc<Core>, ws: WsSession, limit: u64, replace: bool) {
    let opened = open_upload(&core, ws, limit, "import", |file, reader| {
        let source = ImportSource::Buffered { file, reader };
        core.import_bundle(
            BundleKind::App,
            source,
            ImportOptions { replace },
            &Start::default(),
        )
    });
    let Some((mut ws, mut op)) = opened.await else {
        return;
    };
    let checking = Step::ok("ANNOUNCEMENT", Some("Import"), "Checking ZIP Format");
    ws.tx.send_json(&checking).await;
    let mut images_announced = false;
    let result = loop {
        let p: ImportProgress = match relay(&mut ws, &mut op).await {
            Some(Event::Progress(p)) => p,
            Some(Event::Done(r)) => break r,
            // The client is gone: dropping the operation applies the core's policy.
            None => return,
        };
        for step in import_steps(p, &mut images_announced, op.is_cancelled()) {
            ws.tx.send_json(&step).await;
        }
    };
    match result {
        Ok(stored) => {
            let id = stored.id().to_string();
            let done = Step::ok(
                "ANNOUNCEMENT",
                Some("Import"),
                format!("Successfully imported App Instance {id}"),
            );
            ws.tx.send_json(&done.optional().details(id)).await;
            ws.end("").await;
        }
        Err(e) => {
            tracing::info!(task = %op.id(), error = %e, "websocket import failed");
            ws.end("import failed").await;
        }
    }
}

/// The operation's next report while watching the client: None when the client is gone
/// (closed, or stopped reading).
async fn relay<P, T>(ws: &mut WsSession, op: &mut Operation<P, T>) -> Option<Event<P, T>> {
    loop {
        if ws.tx.is_gone() {
            return None;
        }
        tokio::select! {
            biased;
            e = op.next() => return Some(e),
            gone = ws.rx.client_gone() => if gone { return None },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Start and stop

/// The app a start session names: `{id}` in the path, or the legacy `?name=&version=`.
fn start_target(c: &Call) -> Result<AppId, Problem> {
    if c.params.is_empty() {
        let name = c.query.get("name").unwrap_or("").trim();
        let version = c.query.get("version").unwrap_or("").trim();
        if name.is_empty() || version.is_empty() {
            return Err(Problem::bad_request(
                "query parameters 'name' and 'version' are required",
            ));
        }
        return Ok(AppId::new(name, version));
    }
    let id = c.param("id");
    if id.trim().is_empty() {
        return Err(Problem::bad_request("app id not given"));
    }
    Ok(AppId::from(id))
}

async fn ws_start(c: Call) -> Reply {
    let id = start_target(&c)?;
    // An unknown app is an HTTP 404 before the upgrade, like the REST route.
    c.core.apps.get(&id).await?;
    upgrade(c, move |core, ws| {
        let op = core.start_app(id.clone(), &Start::default());
        app_session(ws, op, AppAction::Start(id))
    })
}

/// `/events/transfer/apps/{id}/stop?remove_images=&remove_volumes=` (as the REST stop).
async fn ws_stop(c: Call) -> Reply {
    let id = c.param("id");
    if id.trim().is_empty() {
        return Err(Problem::bad_request("app id not given"));
    }
    let id = AppId::from(id);
    let options = StopOptions {
        remove_images: c.bool("remove_images", false)?,
        remove_volumes: c.bool("remove_volumes", false)?,
    };
    c.core.apps.get(&id).await?;
    upgrade(c, move |core, ws| {
        let op = core.stop_app(id.clone(), options, &Start::default());
        app_session(ws, op, AppAction::Stop(id))
    })
}

enum AppAction {
    Start(AppId),
    Stop(AppId),
}

impl AppAction {
    fn doing(&self) -> String {
        match self {
            AppAction::Start(id) => format!("Starting App {id}"),
            AppAction::Stop(id) => format!("Stopping App {id}"),
        }
    }

    /// The ANNOUNCEMENT and PROCESS_PROGRESS steps of an operation that ran to its end.
    fn outcome(&self, outcome: &ProcessOutcome) -> [Step; 2] {
        let (announcement, command, result) = match self {
            AppAction::Start(id) => {
                let a = if outcome.success {
                    Step::ok(
                        "ANNOUNCEMENT",
                        None,
                        format!("Successfully started App {id}"),
                    )
                    .optional()
                } else {
                    let why = outcome
                        .lines
                        .last()
                        .map_or("see the process result", String::as_str);
                    Step::fail(
                        "ANNOUNCEMENT",
                        None,
                        format!("Starting App {id} failed: {why}"),
                    )
                };
                (a, "up", serde_json::to_value(UpResult::of(outcome)))
            }
            AppAction::Stop(id) => {
                let a = Step::ok(
                    "ANNOUNCEMENT",
                    None,
                    format!("Successfully stopped App {id}"),
                );
                (
                    a.optional(),
                    "down",
                    serde_json::to_value(process_result(outcome)),
                )
            }
        };
        let message = format!("Process result of docker-compose {command}");
        let mut last = Step::ok("PROCESS_PROGRESS", None, message).optional();
        last.success = outcome.success;
        last.process_result = result.ok();
        [announcement, last]
    }
}

/// A start or stop session: the CancelID, the announcement, each output line as a
/// PROCESS_PROGRESS step, then the outcome. A client going away does not interrupt the
/// operation (the core lets it finish); only a cancel undoes it.
async fn app_session(mut ws: WsSession, op: Result<AppOperation, CoreError>, action: AppAction) {
    let mut op = match op {
        Ok(op) => op,
        Err(e) => return refuse(ws, "ANNOUNCEMENT", e).await.unwrap_or(()),
    };
    announce(&mut ws, op.id()).await;
    let what = match &action {
        AppAction::Start(id) => format!("Starting App instance {id}"),
        AppAction::Stop(id) => format!("Stopping App instance {id}"),
    };
    ws.tx.send_json(&Step::ok("ANNOUNCEMENT", None, what)).await;
    let result = loop {
        match relay(&mut ws, &mut op).await {
            Some(Event::Progress(OutputLine(line))) => {
                ws.tx.send_json(&line_step(line)).await;
            }
            Some(Event::Done(r)) => break r,
            None => return,
        }
    };
    match result {
        Ok(outcome) => {
            for step in action.outcome(&outcome) {
                ws.tx.send_json(&step).await;
            }
        }
        Err(e) => {
            ws.tx.send_json(&failed_step(e, &action.doing())).await;
        }
    }
    ws.end("").await;
}

// ---------------------------------------------------------------------------------------
// Image load

async fn ws_load_image(c: Call) -> Reply {
    let limit = c.limits.max_upload_bytes;
    let upload = c.begin_upload()?;
    upgrade(c, move |core, ws| async move {
        let _upload = upload;
        load_image_session(core, ws, limit).await
    })
}

async fn load_image_session(core: Arc<Core>, ws: WsSession, limit: u64) {
    let opened = open_upload(&core, ws, limit, "image load", |file, reader| {
        core.load_image(LoadSource::Buffered { file, reader }, &Start::default())
    });
    let Some((mut ws, mut op)) = opened.await else {
        return;
    };
    let loading = Step::ok("ANNOUNCEMENT", Some("Image"), "Loading image");
    ws.tx.send_json(&loading).await;
    let result = loop {
        match relay(&mut ws, &mut op).await {
            Some(Event::Progress(p)) => {
                if let Some(step) = load_step(p) {
                    ws.tx.send_json(&step).await;
                }
            }
            Some(Event::Done(r)) => break r,
            None => return,
        }
    };
    for step in loaded_steps(result) {
        ws.tx.send_json(&step).await;
    }
    ws.end("").await;
}

/// The steps an image load ends with.
fn loaded_steps(result: Result<crate::core::system::LoadedImage, CoreError>) -> Vec<Step> {
    match result {
        Ok(loaded) => {
            let refs = if loaded.references.is_empty() {
                loaded.id.clone()
            } else {
                loaded.references.join(", ")
            };
            let done = format!("Successfully loaded image {refs}");
            vec![
                Step::ok("LOAD_IMAGE", Some("Image"), "100").details(refs),
                Step::ok("ANNOUNCEMENT", Some("Image"), done)
                    .optional()
                    .details(loaded.id),
            ]
        }
        Err(e) if e.is(crate::core::ErrorKind::Cancelled) => {
            vec![Step::fail("CANCEL", Some("Image"), e.to_string())]
        }
        Err(e) => vec![Step::fail("LOAD_IMAGE", Some("Image"), e.to_string())],
    }
}
