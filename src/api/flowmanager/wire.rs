//! The Flow Manager's wire format: request payloads read into core types, replies,
//! broadcasts, errors and activity logs as the document (and kawaflow's implementation)
//! spell them.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::core::apps::store::rfc3339;
use crate::core::flow::{
    ContainerInfo, ContainerSpec, ContainerStatus, FlowError, FlowEvent, HealthCheck,
    ResourceUsage, SocketFailure,
};
use crate::core::{CoreError, ErrorKind};

/// `2025-07-21T10:30:00Z`.
pub fn iso(t: SystemTime) -> String {
    rfc3339(t)
}

/// Seconds since the epoch, as the document's float timestamps.
pub fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Why a request's data cannot be used; answered as a `validation_error`.
pub fn invalid(message: impl Into<String>) -> CoreError {
    CoreError::Invalid(message.into())
}

/// The request's data as an object (missing data is an empty object).
pub fn object(data: &Value) -> Result<&Map<String, Value>, CoreError> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match data {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(EMPTY.get_or_init(Map::new)),
        _ => Err(invalid("the event data must be a JSON object")),
    }
}

pub fn string(m: &Map<String, Value>, key: &str) -> Result<String, CoreError> {
    match m.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(invalid(format!("{key} is required")))
        }
        Some(_) => Err(invalid(format!("{key} must be a string"))),
    }
}

fn optional_string(m: &Map<String, Value>, key: &str) -> Result<Option<String>, CoreError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(m, key).map(Some),
    }
}

/// A string, number or boolean as text (environment values).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn pairs<T>(
    m: &Map<String, Value>,
    key: &str,
    each: impl Fn(&Value) -> Option<T>,
    what: &str,
) -> Result<Vec<(String, T)>, CoreError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, v)| {
                each(v)
                    .map(|v| (k.clone(), v))
                    .ok_or_else(|| invalid(format!("{key}.{k} must be {what}")))
            })
            .collect(),
        Some(_) => Err(invalid(format!("{key} must be an object"))),
    }
}

fn port(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>, CoreError> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(format!("{key} must list strings")))
            })
            .collect(),
        _ => Err(invalid(format!("{key} must be a list of strings"))),
    }
}

fn seconds(h: &Map<String, Value>, key: &str) -> Result<Option<std::time::Duration>, CoreError> {
    match h.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Some(std::time::Duration::from_secs_f64(s)))
            .ok_or_else(|| invalid(format!("healthcheck.{key} must be a number of seconds"))),
    }
}

fn healthcheck(m: &Map<String, Value>) -> Result<Option<HealthCheck>, CoreError> {
    let h = match m.get("healthcheck") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(h)) => h,
        Some(_) => return Err(invalid("healthcheck must be an object")),
    };
    let test = match h.get("test") {
        Some(Value::String(s)) => vec!["CMD-SHELL".to_string(), s.clone()],
        Some(v) => strings(v, "healthcheck.test")?,
        None => return Err(invalid("healthcheck.test is required")),
    };
    let retries = match h.get("retries") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .ok_or_else(|| invalid("healthcheck.retries must be a number"))?,
        ),
    };
    Ok(Some(HealthCheck {
        test,
        interval: seconds(h, "interval")?,
        timeout: seconds(h, "timeout")?,
        retries,
        start_period: seconds(h, "start_period")?,
    }))
}

/// `create_container`'s data: the document's fields, plus `command`, `working_dir` (as
/// kawaflow's model has them) and `healthcheck`.
pub fn spec(m: &Map<String, Value>) -> Result<ContainerSpec, CoreError> {
    let command = match m.get("command") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(vec!["/bin/sh".into(), "-c".into(), s.clone()]),
        Some(v) => Some(strings(v, "command")?),
    };
    Ok(ContainerSpec {
        image: string(m, "image")?,
        name: optional_string(m, "name")?,
        environment: pairs(m, "environment", scalar, "a string")?,
        volumes: pairs(m, "volumes", |v| v.as_str().map(str::to_string), "a path")?,
        ports: pairs(m, "ports", port, "a port number")?,
        command,
        working_dir: optional_string(m, "working_dir")?,
        healthcheck: healthcheck(m)?,
    })
}

fn ports(p: &[(String, u16)]) -> Value {
    Value::Object(p.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// A container as `container_created` and `container_list` show it, its id under `id_key`.
fn info(c: &ContainerInfo, id_key: &str) -> Value {
    let mut v = json!({
        "name": c.name,
        "image": c.image,
        "status": c.state,
        "socket_path": c.socket_path.display().to_string(),
        "ports": ports(&c.ports),
    });
    v[id_key] = json!(c.id);
    v
}

pub fn created(c: &ContainerInfo) -> Value {
    info(c, "container_id")
}

pub fn listed(c: &ContainerInfo) -> Value {
    let mut v = info(c, "id");
    v["created"] = json!(c.created);
    v
}

fn resources(r: &Option<ResourceUsage>) -> Value {
    let Some(r) = r else {
        return json!({});
    };
    json!({
        "cpu_percent": r.cpu_percent,
        "memory_usage": r.memory_usage,
        "memory_limit": r.memory_limit,
        "memory_percent": r.memory_percent,
        "network_rx_bytes": r.network_rx_bytes,
        "network_tx_bytes": r.network_tx_bytes,
        "disk_read_bytes": r.disk_read_bytes,
        "disk_write_bytes": r.disk_write_bytes,
        "timestamp": iso(r.at),
    })
}

/// The status fields both `container_status` and `container_status_update` carry.
fn status_fields(s: &ContainerStatus) -> Value {
    json!({
        "state": s.state,
        "health": s.health,
        "uptime": s.uptime,
        "socket_connected": s.socket_connected,
        "resource_usage": resources(&s.resources),
    })
}

/// `container_status`'s payload (the caller's container id).
pub fn status(container_id: &str, s: &ContainerStatus) -> Value {
    let mut v = status_fields(s);
    v["container_id"] = json!(container_id);
    v["last_communication"] = json!(s.last_communication.map(iso));
    v
}

fn status_update(s: &ContainerStatus) -> Value {
    json!({"container_id": s.id, "status": status_fields(s)})
}

/// The error type of a failed request, from the error's kind (and, where the kind is too
/// coarse, which part of the core failed): the one mapping of this dialect.
pub fn error_type(e: &CoreError) -> &'static str {
    match e.root() {
        CoreError::Flow(FlowError::ImageNotFound(_)) => "image_not_found",
        CoreError::Flow(FlowError::ContainerNotFound(_)) => "container_not_found",
        CoreError::Flow(FlowError::Socket { failure, .. }) => socket_error_type(*failure),
        CoreError::Engine(_) | CoreError::Compose(_) => "docker_api_error",
        root => match root.kind() {
            ErrorKind::Invalid => "validation_error",
            ErrorKind::NotFound => "container_not_found",
            ErrorKind::Conflict | ErrorKind::Busy | ErrorKind::Unavailable => "docker_api_error",
            ErrorKind::Cancelled | ErrorKind::Failed => "system_error",
        },
    }
}

fn socket_error_type(f: SocketFailure) -> &'static str {
    match f {
        SocketFailure::Setup => "socket_error",
        SocketFailure::Connection => "socket_connection_error",
        SocketFailure::Timeout => "socket_timeout_error",
        SocketFailure::Communication => "socket_communication_error",
    }
}

/// The `error` payload: `details` names the operation and carries the request's data.
pub fn error(
    error_type: &str,
    message: &str,
    operation: &str,
    container_id: Option<&str>,
    data: &Value,
) -> Value {
    let mut details = json!({ "operation": operation, "data": data });
    if let Some(id) = container_id {
        details["container_id"] = json!(id);
    }
    json!({
        "error": true,
        "error_type": error_type,
        "message": message,
        "details": details,
        "timestamp": iso(SystemTime::now()),
    })
}

/// An `activity_log` payload: kawaflow sends `type`, the document `activity_type`; both.
pub fn activity(kind: &str, container_id: &str, message: String, details: Value) -> Value {
    json!({
        "type": kind,
        "activity_type": kind,
        "container_id": container_id,
        "message": message,
        "details": details,
        "timestamp": iso(SystemTime::now()),
    })
}

/// The activity log that follows an error.
pub fn error_activity(
    container_id: &str,
    operation: &str,
    error_type: &str,
    message: &str,
) -> Value {
    let details = json!({
        "container_id": container_id,
        "error": true,
        "operation": operation,
        "error_type": error_type,
        "timestamp": iso(SystemTime::now()),
    });
    activity(
        "container_error",
        container_id,
        format!("Error during {operation}: {message}"),
        details,
    )
}

/// A broadcast and the activity log that follows it.
type Pair = Vec<(&'static str, Value)>;

fn with_activity(
    event: &'static str,
    payload: Value,
    kind: &str,
    id: &str,
    message: String,
    details: Value,
) -> Pair {
    vec![
        (event, payload),
        ("activity_log", activity(kind, id, message, details)),
    ]
}

fn crashed(id: &str, name: &str, exit_code: i64, oom_killed: bool, logs: &[String]) -> Pair {
    let error = if oom_killed {
        "Out of memory".to_string()
    } else {
        format!("exited with code {exit_code}")
    };
    let details = json!({"error": error, "logs": logs.join("\n"), "log_lines": logs, "oom_killed": oom_killed, "name": name});
    let payload = json!({"container_id": id, "exit_code": exit_code, "crash_details": details, "timestamp": epoch(SystemTime::now())});
    let message = format!("Container crashed with exit code {exit_code}");
    let summary = json!({"name": name, "exit_code": exit_code, "crash_details": details});
    with_activity(
        "container_crashed",
        payload,
        "container_crash",
        id,
        message,
        summary,
    )
}

fn socket_failed(id: &str, name: &str, err: &FlowError) -> Pair {
    let t = socket_error_type(match err {
        FlowError::Socket { failure, .. } => *failure,
        _ => SocketFailure::Communication,
    });
    let message = err.to_string();
    let data = json!({"container_id": id, "name": name});
    vec![
        (
            "error",
            error(t, &message, "receive_message", Some(id), &data),
        ),
        (
            "activity_log",
            error_activity(id, "receive_message", t, &message),
        ),
    ]
}

/// The events a core event becomes: the broadcast, then its activity log (if any).
pub fn broadcast(e: &FlowEvent) -> Pair {
    let now = epoch(SystemTime::now());
    match e {
        FlowEvent::StatusChanged { id, name, old, new } => with_activity(
            "status_changed",
            json!({"container_id": id, "old_state": old, "new_state": new, "timestamp": now}),
            "status_change",
            id,
            format!("Container status changed from {old} to {new}"),
            json!({"name": name, "old_state": old, "new_state": new}),
        ),
        FlowEvent::HealthWarning { id, name, health } => with_activity(
            "container_health_warning",
            json!({"container_id": id, "health": health, "timestamp": now}),
            "health_warning",
            id,
            format!("Container health check failed: {health}"),
            json!({"name": name, "health": health}),
        ),
        FlowEvent::Crashed {
            id,
            name,
            exit_code,
            oom_killed,
            logs,
        } => crashed(id, name, *exit_code, *oom_killed, logs),
        FlowEvent::StatusUpdate(s) => vec![("container_status_update", status_update(s))],
        FlowEvent::MessageReceived {
            id,
            name,
            message,
            at,
        } => with_activity(
            "message_received",
            json!({"container_id": id, "message": message, "timestamp": iso(*at)}),
            "message_received",
            id,
            "Message received from container".into(),
            json!({"name": name, "direction": "received"}),
        ),
        FlowEvent::SocketFailed { id, name, error } => socket_failed(id, name, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::engine::EngineError;

    #[test]
    fn error_types_follow_the_core_error() {
        let flow = |e: FlowError| CoreError::from(e).context("doing it");
        let sock = |f| flow(FlowError::socket(f, "x"));
        let cases = [
            (CoreError::Invalid("x".into()), "validation_error"),
            (
                flow(FlowError::ImageNotFound("x".into())),
                "image_not_found",
            ),
            (
                flow(FlowError::ContainerNotFound("x".into())),
                "container_not_found",
            ),
            (
                CoreError::from(EngineError::Conflict("in use".into())),
                "docker_api_error",
            ),
            (
                CoreError::from(EngineError::Unavailable("down".into())).context("c"),
                "docker_api_error",
            ),
            (sock(SocketFailure::Setup), "socket_error"),
            (sock(SocketFailure::Connection), "socket_connection_error"),
            (sock(SocketFailure::Timeout), "socket_timeout_error"),
            (
                sock(SocketFailure::Communication),
                "socket_communication_error",
            ),
            (
                CoreError::io("x", std::io::Error::other("disk")),
                "system_error",
            ),
        ];
        for (e, t) in cases {
            assert_eq!(error_type(&e), t, "{e}");
        }
    }

    #[test]
    fn create_data_is_read_with_the_additions() {
        let v = serde_json::json!({
            "image": "flow:latest", "environment": {"A": 1, "B": true},
            "ports": {"8080": "18080"}, "command": "run", "healthcheck": {"test": "exit 0", "interval": 1.5},
        });
        let s = spec(object(&v).unwrap()).unwrap();
        assert_eq!(
            s.environment,
            vec![("A".into(), "1".into()), ("B".into(), "true".into())]
        );
        assert_eq!(s.ports, vec![("8080".into(), 18080)]);
        assert_eq!(s.command.unwrap(), vec!["/bin/sh", "-c", "run"]);
        let h = s.healthcheck.unwrap();
        assert_eq!(h.test, vec!["CMD-SHELL", "exit 0"]);
        assert_eq!(h.interval, Some(std::time::Duration::from_millis(1500)));
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"image": 3}),
            serde_json::json!({"image": "x", "ports": []}),
        ] {
            assert!(spec(object(&bad).unwrap()).is_err(), "{bad}");
        }
        assert!(object(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn activity_logs_carry_both_key_spellings() {
        let a = activity("container_started", "id", "m".into(), serde_json::json!({}));
        assert_eq!(a["type"], "container_started");
        assert_eq!(a["activity_type"], "container_started");
    }
}
