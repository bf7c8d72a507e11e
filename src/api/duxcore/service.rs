//! `POST /service`, `POST /service/{id}/ctl`, `GET /service/{id}`, `GET /service/{id}/stats`,
//! `PATCH /service/{id}/env`, `DELETE /service/{id}` and `POST /docker/image`: the wire shapes
//! of the original daemon, mapped onto the core's services.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bollard::models::{PortBinding, PortMap};
use futures_util::TryStreamExt;
use hyper::header::CONTENT_LENGTH;
use hyper::{Method, StatusCode};
use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::{keyed, Call, Failure, Reply, Route};
use crate::api::http::{self, declared_too_large, upload_stream};
use crate::api::router::Routes;
use crate::core::ops::Start;
use crate::core::services::spec::ServiceSpec;
use crate::core::services::{CtlOp, Env};

pub fn register(r: &mut Routes<Route>) {
    keyed(r, Method::POST, "/service", |c| Box::pin(create(c)));
    keyed(r, Method::GET, "/service/{id}", |c| Box::pin(inspect(c)));
    keyed(r, Method::DELETE, "/service/{id}", |c| Box::pin(delete(c)));
    keyed(r, Method::POST, "/service/{id}/ctl", |c| Box::pin(ctl(c)));
    keyed(r, Method::GET, "/service/{id}/stats", |c| {
        Box::pin(stats(c))
    });
    keyed(r, Method::PATCH, "/service/{id}/env", |c| Box::pin(env(c)));
    keyed(r, Method::POST, "/docker/image", |c| {
        Box::pin(import_image(c))
    });
}

/// The JSON body of a request, at most `http.max_body_bytes`, failing when it stalls for
/// `http.body_read_timeout_secs`.
async fn body_json<T: DeserializeOwned>(c: Call, what: &str) -> Result<T, Failure> {
    let limit = c.limits.max_body_bytes;
    let too_large = || Failure {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("the body exceeds the limit of {limit} bytes (http.max_body_bytes)"),
    };
    if declared_too_large(c.req.headers(), limit) {
        return Err(too_large());
    }
    let (body, exceeded) = upload_stream(c.req.into_body(), limit, c.limits.body_read_timeout);
    let read = body.try_fold(Vec::new(), |mut all, chunk| async move {
        all.extend_from_slice(&chunk);
        Ok(all)
    });
    let bytes = match read.await {
        Ok(b) => b,
        Err(_) if exceeded.load(Ordering::SeqCst) => return Err(too_large()),
        Err(e) => return Err(Failure::bad_request(format!("cannot read the body: {e}"))),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure::bad_request(format!("the body is not {what}: {e}")))
}

/// A list of strings, or one string (a list of one).
#[derive(Deserialize)]
#[serde(untagged)]
enum Strings {
    One(String),
    Many(Vec<String>),
}

impl From<Strings> for Vec<String> {
    fn from(s: Strings) -> Self {
        match s {
            Strings::One(s) => vec![s],
            Strings::Many(v) => v,
        }
    }
}

/// `HostPort` as a string (Docker's PortMap) or a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Port {
    Text(String),
    Number(u64),
}

#[derive(Deserialize)]
struct HostMapEntry {
    #[serde(rename = "HostIp", alias = "host_ip")]
    host_ip: Option<String>,
    #[serde(rename = "HostPort", alias = "host_port")]
    host_port: Option<Port>,
}

/// `port_map` values: Docker's PortMap has a list per key, the document shows one object.
#[derive(Deserialize)]
#[serde(untagged)]
enum PortEntries {
    Many(Vec<HostMapEntry>),
    One(HostMapEntry),
}

/// `env` at creation: the original's `["KEY=value"]`, or an object like `PATCH .../env`.
#[derive(Deserialize)]
#[serde(untagged)]
enum EnvParam {
    List(Vec<String>),
    Map(IndexMap<String, String>),
}

/// The document's RawConfig params; unknown fields are ignored.
#[derive(Deserialize)]
struct RawParams {
    id: String,
    image: String,
    bind_dir: String,
    bind_contents: Option<String>,
    cmd: Option<Strings>,
    shell: Option<Strings>,
    user: Option<String>,
    working_dir: Option<String>,
    env: Option<EnvParam>,
    open_stdin: Option<bool>,
    tty: Option<bool>,
    hostname: Option<String>,
    port_map: Option<HashMap<String, Option<PortEntries>>>,
    network_disabled: Option<bool>,
    max_cpu: Option<u64>,
    max_ram: Option<u64>,
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(rename = "type")]
    kind: String,
    params: RawParams,
}

fn port_map(raw: HashMap<String, Option<PortEntries>>) -> PortMap {
    let binding = |e: HostMapEntry| PortBinding {
        host_ip: e.host_ip,
        host_port: e.host_port.map(|p| match p {
            Port::Text(s) => s,
            Port::Number(n) => n.to_string(),
        }),
    };
    raw.into_iter()
        .map(|(port, entries)| {
            let list = entries.map(|e| match e {
                PortEntries::Many(v) => v.into_iter().map(binding).collect(),
                PortEntries::One(e) => vec![binding(e)],
            });
            (port, list)
        })
        .collect()
}

fn env_of(raw: Option<EnvParam>) -> Result<Env, Failure> {
    let list = match raw {
        None => return Ok(Env::new()),
        Some(EnvParam::Map(m)) => return Ok(m),
        Some(EnvParam::List(l)) => l,
    };
    list.into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(Failure::bad_request(format!(
                "env entry {kv:?} is not KEY=value"
            ))),
        })
        .collect()
}

fn spec_of(p: RawParams) -> Result<ServiceSpec, Failure> {
    Ok(ServiceSpec {
        env: env_of(p.env)?,
        id: p.id,
        image: p.image,
        bind_dir: p.bind_dir,
        bind_contents: p.bind_contents,
        cmd: p.cmd.map(Into::into),
        shell: p.shell.map(Into::into),
        user: p.user,
        working_dir: p.working_dir,
        open_stdin: p.open_stdin.unwrap_or(true),
        tty: p.tty.unwrap_or(true),
        hostname: p.hostname,
        port_map: p.port_map.map(port_map),
        network_disabled: p.network_disabled,
        max_cpu: p.max_cpu,
        max_ram: p.max_ram,
    })
}

async fn create(c: Call) -> Reply {
    let core = c.core.clone();
    let body: CreateBody =
        body_json(c, "a service config ({\"type\":\"raw\",\"params\":{...}})").await?;
    if body.kind != "raw" {
        return Err(Failure::bad_request(format!(
            "service type {:?} is not supported (only \"raw\")",
            body.kind
        )));
    }
    let spec = spec_of(body.params)?;
    // Dropping the operation (the client left) rolls the creation back.
    let created = core
        .create_service(spec, &Start::default())?
        .finish()
        .await?;
    let answer = json!({"id": created.id, "type": "raw", "internal_id": created.container_id});
    Ok(http::json(StatusCode::OK, &answer))
}

async fn inspect(c: Call) -> Reply {
    let inspect = c.services.inspect(&c.id).await?;
    Ok(http::json(StatusCode::OK, &inspect))
}

async fn stats(c: Call) -> Reply {
    let sample = c.services.stats(&c.id).await?;
    Ok(http::json(StatusCode::OK, &sample))
}

async fn delete(c: Call) -> Reply {
    let id = c.id.clone();
    c.services.delete(&id).await?;
    Ok(http::json(StatusCode::OK, &json!({ "id": id })))
}

#[derive(Deserialize)]
struct CtlBody {
    op: String,
}

async fn ctl(c: Call) -> Reply {
    let (services, id) = (c.services.clone(), c.id.clone());
    let body: CtlBody =
        body_json(c, "{\"op\": \"start\" | \"stop\" | \"restart\" | \"kill\"}").await?;
    let op = match body.op.as_str() {
        "start" => CtlOp::Start,
        "stop" => CtlOp::Stop,
        "restart" => CtlOp::Restart,
        "kill" => CtlOp::Kill,
        other => {
            return Err(Failure::bad_request(format!(
                "op {other:?} is not one of start, stop, restart, kill"
            )))
        }
    };
    services.ctl(&id, op).await?;
    Ok(http::json(
        StatusCode::OK,
        &json!({"id": id, "op": body.op}),
    ))
}

async fn env(c: Call) -> Reply {
    let (services, id) = (c.services.clone(), c.id.clone());
    let env: Env = body_json(c, "an object of environment variables (name to string)").await?;
    let env = services.set_env(&id, env).await?;
    Ok(http::json(StatusCode::OK, &json!({"id": id, "env": env})))
}

/// `POST /docker/image`: the body streams into Docker's import, capped at
/// `duxcore.max_image_bytes`.
async fn import_image(c: Call) -> Reply {
    let limit = c.services.max_image_bytes();
    let too_large = || Failure {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("the image exceeds the limit of {limit} bytes (duxcore.max_image_bytes)"),
    };
    if declared_too_large(c.req.headers(), limit) {
        return Err(too_large());
    }
    let total = c
        .req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let _upload = c.uploads.begin().map_err(|message| Failure {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message,
    })?;
    let (stream, exceeded) = upload_stream(c.req.into_body(), limit, c.limits.body_read_timeout);
    let op = c.core.import_rootfs(stream, total, &Start::default())?;
    match op.finish().await {
        Ok(image_id) => Ok(http::json(StatusCode::OK, &json!({ "image_id": image_id }))),
        Err(_) if exceeded.load(Ordering::SeqCst) => Err(too_large()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: serde_json::Value) -> ServiceSpec {
        let body: CreateBody = serde_json::from_value(v).unwrap();
        spec_of(body.params).unwrap()
    }

    #[test]
    fn both_port_map_shapes_defaults_and_unknown_fields() {
        let s = params(json!({"type": "raw", "params": {
            "id": "a1", "image": "busybox", "bind_dir": "data", "future_field": 1,
            "port_map": {
                "80/tcp": {"HostPort": "8080"},
                "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}, {"HostPort": 5354}],
                "9/tcp": null
            },
            "cmd": "sh", "env": ["A=b=c", "E="]
        }}));
        assert!(s.open_stdin && s.tty);
        let pm = s.port_map.unwrap();
        assert_eq!(
            pm["80/tcp"].as_ref().unwrap()[0].host_port.as_deref(),
            Some("8080")
        );
        let udp = pm["53/udp"].as_ref().unwrap();
        assert_eq!(udp[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(udp[1].host_port.as_deref(), Some("5354"));
        assert!(pm["9/tcp"].is_none());
        assert_eq!(s.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(s.env["A"], "b=c");
        assert_eq!(s.env["E"], "");
        let s = params(json!({"type": "raw", "params": {
            "id": "a1", "image": "i", "bind_dir": "d", "tty": false, "open_stdin": false,
            "env": {"K": "v"}
        }}));
        assert!(!s.open_stdin && !s.tty);
        assert_eq!(s.env["K"], "v");
    }
}
