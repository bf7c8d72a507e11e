//! The request events: each is answered to its caller with its named reply and followed by
//! an `activity_log` for every client, or answered with an `error` and an `activity_log` of
//! type `container_error`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use socketioxide::extract::SocketRef;
use socketioxide::SocketIo;

use super::wire;
use crate::core::flow::{ContainerStatus, FlowManager};
use crate::core::ops::Start;
use crate::core::{Core, CoreError, CoreResult};

/// What the handlers share.
pub struct Ctx {
    pub core: Arc<Core>,
    pub flow: Arc<FlowManager>,
    pub io: SocketIo,
}

/// A reply: its event, its payload, and the activity log that follows (type, container,
/// message, details).
struct Reply {
    event: &'static str,
    payload: Value,
    activity: Option<(&'static str, String, String, Value)>,
}

/// Answers one request event.
pub async fn handle(ctx: Arc<Ctx>, s: SocketRef, event: String, data: Value) {
    let container_id = data
        .get("container_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    let result = match event.as_str() {
        "create_container" => create(&ctx, &data).await,
        "start_container" | "stop_container" | "restart_container" => {
            lifecycle(&ctx, &event, &data).await
        }
        "update_container" => update(&ctx, &data).await,
        "delete_container" => delete(&ctx, &data).await,
        "send_message" => send(&ctx, &data).await,
        "get_container_status" => status(&ctx, &data).await,
        "list_containers" => list(&ctx).await,
        _ => return,
    };
    until_connected(&s).await;
    match result {
        Ok(reply) => {
            let _ = s.emit(reply.event, &reply.payload);
            if let Some((kind, id, message, details)) = reply.activity {
                let _ = ctx
                    .io
                    .emit("activity_log", &wire::activity(kind, &id, message, details))
                    .await;
            }
        }
        Err(e) => fail(&ctx, &s, &event, container_id.as_deref(), &data, &e).await,
    }
}

/// How long an answer waits for its socket to be marked connected.
const CONNECT_WAIT: Duration = Duration::from_secs(1);

/// socketioxide sends a client's CONNECT acknowledgement just before it marks the socket
/// connected (the next statement of the same task), and `emit` refuses a socket that is not
/// marked. A request the client sends at once after the acknowledgement can be answered in
/// between when the thread connecting the socket was preempted there, and the answer would be
/// lost: it waits for the mark. A socket that is gone is not waited for longer than
/// `CONNECT_WAIT`.
async fn until_connected(s: &SocketRef) {
    let until = Instant::now() + CONNECT_WAIT;
    while !s.connected() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn fail(
    ctx: &Ctx,
    s: &SocketRef,
    operation: &str,
    id: Option<&str>,
    data: &Value,
    e: &CoreError,
) {
    let t = wire::error_type(e);
    let message = e.to_string();
    tracing::debug!(operation, error_type = t, %message, "flowmanager request failed");
    let _ = s.emit("error", &wire::error(t, &message, operation, id, data));
    let activity = wire::error_activity(id.unwrap_or("unknown"), operation, t, &message);
    let _ = ctx.io.emit("activity_log", &activity).await;
}

fn container_id(data: &Value) -> CoreResult<String> {
    wire::string(wire::object(data)?, "container_id")
}

async fn create(ctx: &Ctx, data: &Value) -> CoreResult<Reply> {
    let spec = wire::spec(wire::object(data)?)?;
    let c = ctx
        .core
        .flow_create(spec, &Start::default())?
        .finish()
        .await?;
    Ok(Reply {
        event: "container_created",
        payload: wire::created(&c),
        activity: Some((
            "container_created",
            c.id.clone(),
            format!("Container '{}' created successfully", c.name),
            json!({"name": c.name, "image": c.image, "status": "created"}),
        )),
    })
}

async fn lifecycle(ctx: &Ctx, event: &str, data: &Value) -> CoreResult<Reply> {
    let id = container_id(data)?;
    let (reply, status, verb) = match event {
        "start_container" => ("container_started", "running", "started"),
        "stop_container" => ("container_stopped", "stopped", "stopped"),
        _ => ("container_restarted", "running", "restarted"),
    };
    let c = match event {
        "start_container" => ctx.flow.start(&id).await?,
        "stop_container" => ctx.flow.stop(&id).await?,
        _ => ctx.flow.restart(&id).await?,
    };
    let name = crate::core::flow::name_of(&c);
    Ok(Reply {
        event: reply,
        payload: json!({"container_id": id, "status": status}),
        activity: Some((
            activity_kind(verb),
            crate::core::flow::id_of(&c),
            format!("Container '{name}' {verb}"),
            json!({"name": name, "status": status}),
        )),
    })
}

fn activity_kind(verb: &str) -> &'static str {
    match verb {
        "started" => "container_started",
        "stopped" => "container_stopped",
        _ => "container_restarted",
    }
}

async fn update(ctx: &Ctx, data: &Value) -> CoreResult<Reply> {
    let m = wire::object(data)?;
    let id = wire::string(m, "container_id")?;
    let code_path = wire::string(m, "code_path")?;
    let op = ctx
        .core
        .flow_update(&id, PathBuf::from(&code_path), &Start::default())?;
    let u = op.finish().await?;
    Ok(Reply {
        event: "container_updated",
        payload: json!({"container_id": u.id, "code_path": code_path, "status": "updated", "previous_container_id": u.previous_id}),
        activity: Some((
            "container_updated",
            u.id.clone(),
            format!("Container '{}' updated with new code", u.name),
            json!({"name": u.name, "status": "updated", "previous_container_id": u.previous_id}),
        )),
    })
}

async fn delete(ctx: &Ctx, data: &Value) -> CoreResult<Reply> {
    let id = container_id(data)?;
    let (full, name) = ctx
        .core
        .flow_delete(&id, &Start::default())?
        .finish()
        .await?;
    Ok(Reply {
        event: "container_deleted",
        payload: json!({"container_id": id, "status": "deleted"}),
        activity: Some((
            "container_deleted",
            full,
            format!("Container '{name}' deleted and resources cleaned up"),
            json!({"name": name, "status": "deleted"}),
        )),
    })
}

async fn send(ctx: &Ctx, data: &Value) -> CoreResult<Reply> {
    let m = wire::object(data)?;
    let id = wire::string(m, "container_id")?;
    let message = match m.get("message") {
        None | Some(Value::Null) => return Err(wire::invalid("message is required")),
        Some(v) => v,
    };
    let c = ctx.flow.send_message(&id, message).await?;
    let kind = message
        .get("command")
        .or_else(|| message.get("type"))
        .cloned()
        .unwrap_or(json!("unknown"));
    Ok(Reply {
        event: "message_sent",
        payload: json!({"container_id": id, "message": message, "status": "sent"}),
        activity: Some((
            "message_sent",
            crate::core::flow::id_of(&c),
            "Message sent to container".into(),
            json!({"name": crate::core::flow::name_of(&c), "direction": "sent", "message_type": kind}),
        )),
    })
}

async fn status(ctx: &Ctx, data: &Value) -> CoreResult<Reply> {
    let id = container_id(data)?;
    let s: ContainerStatus = ctx.flow.status(&id, true).await?;
    Ok(Reply {
        event: "container_status",
        payload: wire::status(&id, &s),
        activity: None,
    })
}

async fn list(ctx: &Ctx) -> CoreResult<Reply> {
    let all = ctx.flow.list().await?;
    let containers: Vec<Value> = all.iter().map(wire::listed).collect();
    Ok(Reply {
        event: "container_list",
        payload: json!({"count": containers.len(), "containers": containers}),
        activity: None,
    })
}
