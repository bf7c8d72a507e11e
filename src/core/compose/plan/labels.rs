//! The labels compose puts on what it creates, which make `docker-compose -p <project> ps`
//! see gantry's containers, and the config hash that tells `up` what changed. The project
//! label holds the app id's slug ([`crate::core::compose::project_slug`]), `io.gantry.app-id`
//! the id itself.

use std::collections::HashMap;

use docker_compose_types::Labels;
use indexmap::IndexMap;

use super::PlanContext;

/// The version label says whose semantics the objects follow: docker-compose 1.29.2's, and
/// 1.29.2 itself parses it (objects with a version below 1.21 get its legacy name handling).
pub const COMPOSE_VERSION: &str = "1.29.2";
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
pub const LABEL_VERSION: &str = "com.docker.compose.version";
pub const LABEL_APP_ID: &str = "io.gantry.app-id";

/// The labels every object of the project carries.
pub(super) fn compose_labels(ctx: &PlanContext<'_>) -> Vec<(String, String)> {
    vec![
        (LABEL_PROJECT.into(), ctx.project.into()),
        (LABEL_VERSION.into(), COMPOSE_VERSION.into()),
        (LABEL_APP_ID.into(), ctx.app_id.into()),
    ]
}

pub const LABEL_NETWORK: &str = "com.docker.compose.network";
pub const LABEL_VOLUME: &str = "com.docker.compose.volume";

/// The file's `labels` of a network or volume, then the project's and `extra`.
pub(super) fn object_labels(
    labels: &Labels,
    ctx: &PlanContext<'_>,
    extra: (&str, &str),
) -> HashMap<String, String> {
    let mut all: HashMap<String, String> = labels_map(labels).into_iter().collect();
    all.extend(compose_labels(ctx));
    all.insert(extra.0.into(), extra.1.into());
    all
}

pub const LABEL_SERVICE: &str = "com.docker.compose.service";
pub const LABEL_ONEOFF: &str = "com.docker.compose.oneoff";
pub const LABEL_CONTAINER_NUMBER: &str = "com.docker.compose.container-number";
pub const LABEL_CONFIG_HASH: &str = "com.docker.compose.config-hash";
pub const LABEL_WORKING_DIR: &str = "com.docker.compose.project.working_dir";
pub const LABEL_CONFIG_FILES: &str = "com.docker.compose.project.config_files";

/// A service container's labels: the file's, then compose's (which win). The config hash is
/// added when applying.
pub(super) fn service_labels(
    service: &str,
    labels: &Labels,
    ctx: &PlanContext<'_>,
) -> HashMap<String, String> {
    let mut all = object_labels(labels, ctx, (LABEL_SERVICE, service));
    let dir = ctx.dir.to_string_lossy().into_owned();
    let file = ctx.compose_file.to_string_lossy().into_owned();
    all.extend([
        (LABEL_ONEOFF.into(), "False".into()),
        (LABEL_CONTAINER_NUMBER.into(), "1".into()),
        (LABEL_WORKING_DIR.into(), dir),
        (LABEL_CONFIG_FILES.into(), file),
    ]);
    all
}

pub(super) fn labels_map(labels: &Labels) -> IndexMap<String, String> {
    match labels {
        Labels::List(items) => items
            .iter()
            .map(|l| match l.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect(),
        Labels::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// A stable, dependency-free hash: FNV-1a 64 over the canonical (sorted-keys) JSON of the
/// container's configuration, the image id and the ids it joins. Any change recreates.
pub fn config_hash(config: &serde_json::Value) -> String {
    let mut canonical = String::new();
    write_canonical(config, &mut canonical);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn write_canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[*k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}
