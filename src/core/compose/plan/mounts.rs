//! Volumes, binds and tmpfs: the project's named volumes, and each service's mounts in the
//! shapes docker-compose 1.29.2 sends (short syntax as `Binds`, long syntax as `Mounts`),
//! with every host path checked against the app directory and the allowed paths.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use bollard::models::{
    Mount, MountBindOptions, MountBindOptionsPropagationEnum, MountTmpfsOptions, MountType,
    MountVolumeOptions, VolumeCreateRequest,
};
use docker_compose_types::{AdvancedVolumes, ExternalVolume, Tmpfs, Volumes};

use super::labels::{object_labels, LABEL_VOLUME};
use super::{invalid, opts_map, refused, PlanContext, VolumePlan};
use crate::core::compose::parse::ComposeModel;
use crate::core::compose::ComposeError;
use crate::core::safe_fs;

/// Every declared volume (compose creates them all, used or not).
pub(super) fn plan_volumes(
    model: &ComposeModel,
    ctx: &PlanContext<'_>,
) -> Result<Vec<VolumePlan>, ComposeError> {
    model
        .volumes
        .iter()
        .map(|(key, def)| {
            if let Some(d) = def {
                super::policy::volume(&format!("volume \"{key}\""), d, ctx.policy)?;
            }
            Ok(volume_plan(key, def.as_ref(), ctx))
        })
        .collect()
}

fn volume_plan(
    key: &str,
    def: Option<&docker_compose_types::ComposeVolume>,
    ctx: &PlanContext<'_>,
) -> VolumePlan {
    let (external, external_name) = match def.and_then(|d| d.external.as_ref()) {
        Some(ExternalVolume::Bool(b)) => (*b, None),
        Some(ExternalVolume::Name { name }) => (true, Some(name.clone())),
        None => (false, None),
    };
    let name = match (external_name, def.and_then(|d| d.name.clone())) {
        (Some(n), _) => n,
        (None, Some(n)) => n,
        (None, None) if external => key.to_string(),
        (None, None) => format!("{}_{key}", ctx.project),
    };
    let labels = def.map(|d| d.labels.clone()).unwrap_or_default();
    VolumePlan {
        key: key.to_string(),
        name: name.clone(),
        external,
        request: VolumeCreateRequest {
            name: Some(name),
            driver: def.and_then(|d| d.driver.clone()),
            driver_opts: def.and_then(|d| opts_map(&d.driver_opts)),
            labels: Some(object_labels(&labels, ctx, (LABEL_VOLUME, key))),
            ..Default::default()
        },
    }
}

/// A service's mounts.
#[derive(Default)]
pub(super) struct ServiceMounts {
    /// Short-syntax volumes with a source: `source:target:mode`.
    pub binds: Vec<String>,
    /// Every short-syntax target (the container config's `Volumes`).
    pub config_volumes: Vec<String>,
    /// Long-syntax volumes.
    pub mounts: Vec<Mount>,
}

pub(super) fn service_mounts(
    scope: &str,
    volumes: &[Volumes],
    declared: &[VolumePlan],
    ctx: &PlanContext<'_>,
) -> Result<ServiceMounts, ComposeError> {
    let mut out = ServiceMounts::default();
    for v in volumes {
        match v {
            Volumes::Simple(spec) => short_volume(scope, spec, declared, ctx, &mut out)?,
            Volumes::Advanced(a) => out.mounts.push(long_volume(scope, a, declared, ctx)?),
        }
    }
    Ok(out)
}

/// The Docker name of the declared volume `key` (`spec` names it in errors).
fn volume_name(
    scope: &str,
    key: &str,
    spec: &str,
    declared: &[VolumePlan],
) -> Result<String, ComposeError> {
    declared
        .iter()
        .find(|v| v.key == key)
        .map(|v| v.name.clone())
        .ok_or_else(|| {
            invalid(
                scope,
                format!(
                    "named volume \"{spec}\" is used but no declaration was found in the volumes section"
                ),
            )
        })
}

/// `[source:]target[:mode]`.
fn short_volume(
    scope: &str,
    spec: &str,
    declared: &[VolumePlan],
    ctx: &PlanContext<'_>,
    out: &mut ServiceMounts,
) -> Result<(), ComposeError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, m] => (Some(*s), *t, Some(*m)),
        _ => return Err(invalid(scope, format!("invalid volume \"{spec}\""))),
    };
    if !target.starts_with('/') {
        return Err(invalid(
            scope,
            format!("volume \"{spec}\": the container path must be absolute"),
        ));
    }
    if !out.config_volumes.iter().any(|c| c == target) {
        out.config_volumes.push(target.to_string());
    }
    let Some(source) = source else {
        return Ok(());
    };
    let host = if is_path(source) {
        resolve_bind(scope, source, ctx)?
            .to_string_lossy()
            .into_owned()
    } else {
        volume_name(scope, source, spec, declared)?
    };
    let bind = format!("{host}:{target}:{}", mode.unwrap_or("rw"));
    if !out.binds.contains(&bind) {
        out.binds.push(bind);
    }
    Ok(())
}

fn long_volume(
    scope: &str,
    a: &AdvancedVolumes,
    declared: &[VolumePlan],
    ctx: &PlanContext<'_>,
) -> Result<Mount, ComposeError> {
    if !a.target.starts_with('/') {
        return Err(invalid(
            scope,
            format!("volume target \"{}\" must be absolute", a.target),
        ));
    }
    let m = Mount {
        target: Some(a.target.clone()),
        read_only: a.read_only.then_some(true),
        ..Default::default()
    };
    match a._type.as_str() {
        "volume" => volume_mount(scope, a, declared, m),
        "bind" => bind_mount(scope, a, ctx, m),
        "tmpfs" => Ok(Mount {
            typ: Some(MountType::TMPFS),
            tmpfs_options: a.tmpfs.as_ref().map(|t| MountTmpfsOptions {
                size_bytes: i64::try_from(t.size).ok(),
                ..Default::default()
            }),
            ..m
        }),
        other => Err(invalid(
            scope,
            format!("unsupported volume type \"{other}\""),
        )),
    }
}

fn volume_mount(
    scope: &str,
    a: &AdvancedVolumes,
    declared: &[VolumePlan],
    mut m: Mount,
) -> Result<Mount, ComposeError> {
    m.typ = Some(MountType::VOLUME);
    if let Some(src) = a.source.as_deref().filter(|s| !s.is_empty()) {
        m.source = Some(volume_name(scope, src, src, declared)?);
    }
    if let Some(nocopy) = a.volume.as_ref().and_then(|v| v.nocopy) {
        m.volume_options = Some(MountVolumeOptions {
            no_copy: Some(nocopy),
            ..Default::default()
        });
    }
    Ok(m)
}

fn bind_mount(
    scope: &str,
    a: &AdvancedVolumes,
    ctx: &PlanContext<'_>,
    mut m: Mount,
) -> Result<Mount, ComposeError> {
    m.typ = Some(MountType::BIND);
    let src = a
        .source
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(scope, "a bind mount needs a source"))?;
    m.source = Some(
        resolve_bind(scope, src, ctx)?
            .to_string_lossy()
            .into_owned(),
    );
    if let Some(p) = a.bind.as_ref().and_then(|b| b.propagation.as_deref()) {
        m.bind_options = Some(MountBindOptions {
            propagation: Some(propagation(scope, p)?),
            ..Default::default()
        });
    }
    Ok(m)
}

fn propagation(scope: &str, p: &str) -> Result<MountBindOptionsPropagationEnum, ComposeError> {
    use MountBindOptionsPropagationEnum as P;
    Ok(match p {
        "private" => P::PRIVATE,
        "rprivate" => P::RPRIVATE,
        "shared" => P::SHARED,
        "rshared" => P::RSHARED,
        "slave" => P::SLAVE,
        "rslave" => P::RSLAVE,
        _ => return Err(invalid(scope, format!("invalid bind propagation \"{p}\""))),
    })
}

/// The service's `tmpfs` key: `path[:options]` entries.
pub(super) fn tmpfs(t: Option<&Tmpfs>) -> HashMap<String, String> {
    let items: Vec<String> = match t {
        None => return HashMap::new(),
        Some(Tmpfs::Simple(s)) => vec![s.clone()],
        Some(Tmpfs::List(v)) => v.clone(),
    };
    items
        .iter()
        .map(|i| match i.split_once(':') {
            Some((p, o)) => (p.to_string(), o.to_string()),
            None => (i.to_string(), String::new()),
        })
        .collect()
}

/// compose 1.29 treats a volume source as a host path when it starts with `.`, `/` or `~`.
fn is_path(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/') || source.starts_with('~')
}

/// Lexical normalisation; None when `..` climbs above the root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Resolves a bind source (relative to the app directory), checks it stays inside the app
/// directory or one of the allowed paths, and that no part of it that exists is a symlink
/// (a container may have planted one in a directory it has bind-mounted).
fn resolve_bind(scope: &str, source: &str, ctx: &PlanContext<'_>) -> Result<PathBuf, ComposeError> {
    let r = resolve_host_path(scope, "bind mount source", source, ctx)?;
    if ctx.policy.skip_host_files {
        return Ok(r.full);
    }
    match safe_fs::check_no_symlink(&r.base, &r.rel) {
        Ok(()) => Ok(r.full),
        // The app directory does not exist yet while an import plans it.
        Err(e) if e.is_not_found() => Ok(r.full),
        Err(e) => Err(refused(
            scope,
            format!("bind mount source \"{source}\": {e}"),
        )),
    }
}

/// A host path an app may use: `full`, which is `rel` below `base` (the app directory or
/// one of the allowed paths).
pub(super) struct HostPath {
    pub full: PathBuf,
    pub base: PathBuf,
    pub rel: PathBuf,
}

/// `what` names the path in errors ("bind mount source", "env file").
pub(super) fn resolve_host_path(
    scope: &str,
    what: &str,
    source: &str,
    ctx: &PlanContext<'_>,
) -> Result<HostPath, ComposeError> {
    if source.starts_with('~') {
        return Err(refused(
            scope,
            format!("{what} \"{source}\": home-relative paths are not allowed"),
        ));
    }
    let joined = if source.starts_with('/') {
        PathBuf::from(source)
    } else {
        ctx.dir.join(source)
    };
    let resolved = normalize(&joined).ok_or_else(|| {
        refused(
            scope,
            format!("{what} \"{source}\" leaves the file system root"),
        )
    })?;
    let bases =
        std::iter::once(ctx.dir).chain(ctx.policy.allowed_bind_paths.iter().map(PathBuf::as_path));
    for base in bases.filter_map(normalize) {
        if let Ok(rel) = resolved.strip_prefix(&base) {
            let rel = rel.to_path_buf();
            return Ok(HostPath {
                full: resolved,
                base,
                rel,
            });
        }
    }
    Err(refused(
        scope,
        format!(
            "{what} \"{source}\" ({}) is outside the app directory and the allowed paths",
            resolved.display()
        ),
    ))
}
